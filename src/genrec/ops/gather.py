"""Dot products of queries with gathered table rows: the logits of per-position sampled softmax.

    out[t, k] = <queries[t], table[ids[t, k]]>

Shape legend: T queries, K ids per query, R table rows, d width.

The reference is ``(table[ids] * queries[:, None, :]).sum(-1)``. Its autograd backward
scatter-adds T·K rows of width d into the table gradient (``index_put`` with accumulate),
which on CPU is serial or atomic and dominated a whole training step (0.23 s of 0.5 s on
ML-1M: T ≈ 13k, K = 129, d = 50). Here both gradients are gathers instead, done by
``embedding_bag`` with per-sample weights (FBGEMM on CPU):

    grad_queries[t] = Σ_k grad[t, k] · table[ids[t, k]]             one bag per query
    grad_table[r]   = Σ_{(t, k): ids[t, k] = r} grad[t, k] · queries[t]   one bag per row,
                      after a stable sort of the ids (which makes it deterministic too).

The forward never materialises [T, K, d] under torch.compile (Inductor fuses gather, multiply
and sum into one loop); eagerly it runs in chunks of queries that stay in cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EAGER_CHUNK = 512  # queries per eager forward chunk: [512, K, d] gathered rows stay small


def gather_dot_reference(queries: torch.Tensor, table: torch.Tensor,
                         ids: torch.Tensor) -> torch.Tensor:
    """[T, K] = <queries[t], table[ids[t, k]]>, written plainly (the specification)."""
    return (table[ids] * queries.unsqueeze(1)).sum(-1)


def gather_dot(queries: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[T, K] dot products of queries [T, d] with table [R, d] rows ids [T, K] (int64).

    Differentiable in queries and table, with gather-only backward passes (see module doc).
    """
    if ids.dim() != 2 or queries.dim() != 2 or ids.shape[0] != queries.shape[0]:
        raise ValueError(f"gather_dot: queries [T, d] and ids [T, K] expected, got "
                         f"{tuple(queries.shape)} and {tuple(ids.shape)}")
    return _GatherDot.apply(queries, table, ids)


class _GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries: torch.Tensor, table: torch.Tensor,  # type: ignore[override]
                ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(queries, table, ids)
        if torch.compiler.is_compiling():
            return gather_dot_reference(queries, table, ids)  # fused by Inductor
        return _chunked_forward(queries, table, ids)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        queries, table, ids = ctx.saved_tensors
        grad_queries, grad_table = torch.ops.genrec.gather_dot_backward(grad, queries, table, ids)
        return grad_queries, grad_table, None


def _chunked_forward(queries: torch.Tensor, table: torch.Tensor,
                     ids: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(queries.dtype, table.dtype)
    out = torch.empty(ids.shape, dtype=dtype, device=queries.device)
    for start in range(0, ids.shape[0], EAGER_CHUNK):
        rows = F.embedding(ids[start:start + EAGER_CHUNK], table).to(dtype)  # [c, K, d]
        torch.bmm(rows, queries[start:start + EAGER_CHUNK, :, None].to(dtype),
                  out=out[start:start + EAGER_CHUNK, :, None])
    return out


@torch.library.custom_op("genrec::gather_dot_backward", mutates_args=())
def _gather_dot_backward(grad: torch.Tensor, queries: torch.Tensor, table: torch.Tensor,
                         ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # An opaque op, so that torch.compile keeps these two embedding bags as they are instead
    # of lowering them back into a scatter.
    num_queries, per_query = ids.shape
    grad_queries = F.embedding_bag(ids, table, mode="sum",
                                   per_sample_weights=grad.to(table.dtype))  # [T, d]
    # narrow keys sort faster (2.6M ids: int16 11 ms, int32 19-25 ms, int64 38 ms on CPU-2)
    sorted_ids, order = torch.sort(ids.reshape(-1).to(_key_dtype(table.shape[0])), stable=True)
    counts = torch.bincount(sorted_ids, minlength=table.shape[0])  # [R]
    offsets = torch.cumsum(counts, 0) - counts  # start of each row's bag
    grad_table = F.embedding_bag(
        _row_of(order, per_query), queries, offsets, mode="sum",
        per_sample_weights=torch.gather(grad.reshape(-1), 0, order).to(queries.dtype),
    )  # [R, d]
    return grad_queries.to(queries.dtype), grad_table.to(table.dtype)


def _row_of(flat: torch.Tensor, per_row: int) -> torch.Tensor:
    """flat // per_row for flat indices into a [rows, per_row] matrix (int64, ≥ 0).

    A multiply and a shift instead of an integer division, which has no SIMD form on x86
    (1.8M indices: 0.6 vs 1.8 ms on CPU-2). Exact for flat < ``_row_of_bound(per_row)``:
    with m = ⌈2³² / K⌉ = (2³² + e) / K, 0 ≤ e < K, and flat = qK + r, flat·m / 2³² =
    q + (r + flat·e / 2³²) / K, whose fraction stays below 1 when flat·e < 2³²; and
    flat·m < 2⁶³ does not overflow.
    """
    if flat.numel() > _row_of_bound(per_row):  # indices run up to numel - 1
        return torch.div(flat, per_row, rounding_mode="floor")
    return (flat * -(-(1 << 32) // per_row)) >> 32


def _row_of_bound(per_row: int) -> int:
    """Flat indices below this map to rows exactly by ``_row_of``'s multiply and shift."""
    return min((1 << 32) // per_row, 1 << 31)


def _key_dtype(rows: int) -> torch.dtype:
    """The narrowest signed integer type that holds row ids 0..rows-1, for the sort."""
    return torch.int16 if rows <= 1 << 15 else torch.int32 if rows <= 1 << 31 else torch.int64


@_gather_dot_backward.register_fake
def _(grad, queries, table, ids):
    return torch.empty_like(queries), torch.empty_like(table)
