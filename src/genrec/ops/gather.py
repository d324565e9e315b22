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

On CPU, with a C++ compiler at hand (``genrec.ops.native`` builds ``csrc/gather_dot.cpp``),
both directions are native kernels instead, opaque to torch.compile:

- forward: four ids per pass over a query, rows prefetched a few ids ahead (the reads are
  latency-bound); as fast as Inductor's fused loop, and it keeps Inductor from inlining the
  table's normalisation into every gathered element.
- backward: one pass, each thread adding its queries' rows into a private [R, d] table
  gradient, then the private tables summed in thread order. No sort, no atomics;
  deterministic for a given thread count. Used while the private tables stay small
  (``NATIVE_SCRATCH_LIMIT``); the embedding-bag path above is the fallback.

Without the native kernels the forward is the reference, fused by Inductor under
torch.compile (never materialising [T, K, d]) and run eagerly in chunks of queries that stay
in cache.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from genrec.ops import native

EAGER_CHUNK = 512  # queries per eager forward chunk: [512, K, d] gathered rows stay small
NATIVE_SCRATCH_LIMIT = 1 << 26  # bytes of private table gradients the native backward may use


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
        if _native_fits(queries, table, ids) and _native_built():
            return torch.ops.genrec.gather_dot_forward(queries, table, ids)
        if torch.compiler.is_compiling():
            return gather_dot_reference(queries, table, ids)  # fused by Inductor
        return _chunked_forward(queries, table, ids)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        queries, table, ids = ctx.saved_tensors
        grad_queries, grad_table = torch.ops.genrec.gather_dot_backward(grad, queries, table, ids)
        return grad_queries, grad_table, None


@torch.library.custom_op("genrec::gather_dot_forward", mutates_args=())
def _gather_dot_forward(queries: torch.Tensor, table: torch.Tensor,
                        ids: torch.Tensor) -> torch.Tensor:
    """The native forward (the chunked one if the library went away since tracing)."""
    lib = native.load("gather_dot") if _native_fits(queries, table, ids) else None
    if lib is None:
        return _chunked_forward(queries, table, ids)
    queries, table, ids = (x.contiguous() for x in (queries, table, ids))
    out = queries.new_empty(ids.shape)
    bad = _kernel(lib, "forward", table.dtype)(
        queries.data_ptr(), table.data_ptr(), ids.data_ptr(), out.data_ptr(), *ids.shape,
        table.shape[1], table.shape[0], torch.get_num_threads())
    _check_ids(bad, ids, table)
    return out


@_gather_dot_forward.register_fake
def _(queries, table, ids):
    return queries.new_empty(ids.shape)


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
    # An opaque op, so that torch.compile keeps this code as it is instead of lowering it
    # back into a scatter.
    kernel = _native_backward(grad, queries, table, ids)
    if kernel is not None:
        return _run_native_backward(kernel, grad, queries, table, ids)
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


def _native_fits(queries, table, ids, grad=None) -> bool:
    """Whether the native kernels take these tensors: one float type, int64 ids, CPU."""
    dtype, device = table.dtype, table.device
    return (dtype in (torch.float32, torch.float64) and device.type == "cpu"
            and queries.dtype == dtype and queries.device == device
            and (grad is None or (grad.dtype == dtype and grad.device == device))
            and ids.dtype == torch.int64 and ids.device == device
            and queries.dim() == 2 and table.dim() == 2 and queries.shape[1] == table.shape[1])


@torch.compiler.assume_constant_result  # decided once when torch.compile traces
def _native_built() -> bool:
    return native.load("gather_dot") is not None


def _native_backward(grad, queries, table, ids):
    """The native backward kernel for these tensors, or None (the embedding-bag path)."""
    if not _native_fits(queries, table, ids, grad):
        return None
    threads = torch.get_num_threads()
    if (threads - 1) * table.numel() * table.element_size() > NATIVE_SCRATCH_LIMIT:
        return None
    lib = native.load("gather_dot")
    return None if lib is None else _kernel(lib, "backward", table.dtype)


_ARGUMENTS = {"forward": 4 * [ctypes.c_void_p] + 4 * [ctypes.c_int64] + [ctypes.c_int],
              "backward": 7 * [ctypes.c_void_p] + 4 * [ctypes.c_int64] + [ctypes.c_int]}


def _kernel(lib: ctypes.CDLL, which: str, dtype: torch.dtype):
    """A kernel of the library, typed; it returns -1 or the flat index of an id outside."""
    kernel = getattr(lib, f"genrec_gather_dot_{which}_{'f32' if dtype == torch.float32 else 'f64'}")
    kernel.argtypes, kernel.restype = _ARGUMENTS[which], ctypes.c_int64
    return kernel


def _check_ids(bad: int, ids: torch.Tensor, table: torch.Tensor) -> None:
    if bad >= 0:
        row, column = divmod(bad, ids.shape[1])
        raise IndexError(f"gather_dot: ids[{row}, {column}] = {int(ids[row, column])} is "
                         f"outside the table's {table.shape[0]} rows")


def _run_native_backward(kernel, grad, queries, table, ids):
    grad, queries, table, ids = (x.contiguous() for x in (grad, queries, table, ids))
    threads = torch.get_num_threads()
    grad_queries, grad_table = torch.empty_like(queries), torch.empty_like(table)
    scratch = table.new_empty((max(threads - 1, 0),) + tuple(table.shape))
    bad = kernel(grad.data_ptr(), queries.data_ptr(), table.data_ptr(), ids.data_ptr(),
                 grad_queries.data_ptr(), grad_table.data_ptr(), scratch.data_ptr(),
                 *ids.shape, table.shape[1], table.shape[0], threads)
    _check_ids(bad, ids, table)
    return grad_queries, grad_table


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
