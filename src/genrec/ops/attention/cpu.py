"""Fast CPU twin of ``hstu_attention_reference``: same function, length-grouped and fused.

Shape legend:
    T tokens, B sequences, H heads, Dqk / Dv head dims (q, k [T, H, Dqk]; v [T, H, Dv])
    b sequences of one chunk, all padded to Lc (the chunk's longest)
    M query rows and K key columns of one tile (a block of a chunk's [Lc, Lc] logits);
    tiles are head-major: q [H, b, M, Dqk], so one gather of q.transpose(0, 1) makes them

Why it is faster than the reference (NOTES.md, "CPU path", has the measurements):

- Length grouping. Sequences are sorted by length and cut into chunks of similar length, each
  padded to its own longest only, so a skewed batch pays Σ b·Lc² instead of B·L², and each
  chunk's [b, H, Lc, Lc] intermediates stay small enough for the cache.
- Causal tiles. Long causal chunks are split into query blocks whose keys stop at the block's
  last row: the upper triangle (about half the work) is never computed.
- Fusion. Logits, both rab terms (computed from the small tables inside the tile), the mask,
  SiLU and the backward's σ' run as one torch.compile'd function per direction (inductor's C++
  backend), around the matmuls; set GENREC_CPU_COMPILE=0 (or ``cpu.COMPILE = False``) for
  eager PyTorch, which is also the fallback when compilation fails (no C++ compiler).
- A hand-written backward that recomputes the logits per tile instead of saving [B, H, L, L]
  tensors, and reduces the rab gradients with deterministic index_add_ on the head-summed dS.

Time buckets equal the float64 reference's exactly: they are estimated in fp32 (off by at most
one bucket) and corrected with the exact integer edges of ``reference.bucket_thresholds``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial

import torch

from genrec.ops.attention.reference import TIME_BUCKET_BASE, bucket_thresholds

log = logging.getLogger(__name__)

COMPILE = os.environ.get("GENREC_CPU_COMPILE", "1") != "0"
CHUNK_ELEMENTS = 1 << 20  # cap on b·H·Lc² per chunk: a few MiB of fp32 logits per tile pass
CHUNK_MIN_FILL = 0.8  # a sequence joins a chunk only when its length is ≥ this × Lc
BLOCK_ROWS = 64  # causal chunks longer than this are split into query blocks of ~this many rows
THRESHOLD_COUNT = 192  # bucket edges up to 2**63 (bucket 145) and some room


# -- the plan: which sequences go together, which tiles each chunk is cut into ----------------


@dataclass
class Chunk:
    """Sequences padded together: gather [b, Lc] token indices, scatter back the valid ones."""

    index: torch.Tensor  # [b, Lc] int64 token index (padding points at a real token)
    lengths: torch.Tensor  # [b, 1, 1] int64
    first_candidate: torch.Tensor  # [b, 1, 1] int64: n_b − c_b
    valid: torch.Tensor  # [b·Lc] bool, row-major over [b, Lc]
    tokens: torch.Tensor  # [Σ n_b] int64 = index.flatten()[valid]
    tiles: list[tuple[int, int, int]]  # (first row, end row, end column) of each tile


def plan_chunks(seq_offsets: torch.Tensor, num_candidates: torch.Tensor | None, heads: int,
                causal: bool) -> list[Chunk]:
    """Group the sequences by length into chunks and cut each chunk into tiles."""
    lengths = (seq_offsets[1:] - seq_offsets[:-1]).cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    groups, start = [], 0
    while start < len(sorted_lengths) and sorted_lengths[start] > 0:
        longest = sorted_lengths[start]
        cap = max(2, CHUNK_ELEMENTS // (heads * longest * longest))
        end = start + 1
        while (end < len(sorted_lengths) and end - start < cap
               and sorted_lengths[end] >= CHUNK_MIN_FILL * longest and sorted_lengths[end] > 0):
            end += 1
        groups.append((start, end))
        start = end
    # A lone sequence makes a batch dimension of 1, which the compiled tiles would specialise
    # on (a recompilation); let it join the chunk before it instead.
    if len(groups) > 1 and groups[-1][1] - groups[-1][0] == 1:
        groups[-2:] = [(groups[-2][0], groups[-1][1])]
    device = seq_offsets.device
    offsets = seq_offsets.to(device=device, dtype=torch.int64)
    cands = None if num_candidates is None else num_candidates.to(device=device,
                                                                  dtype=torch.int64)
    chunks = []
    for start, end in groups:
        members = order[start:end].to(device)
        width = max(sorted_lengths[start], 2)  # no size-1 tile dims (compiled specialisation)
        n = lengths[order[start:end]].to(device)  # [b]
        pos = torch.arange(width, device=device)
        valid = pos[None, :] < n[:, None]  # [b, Lc]
        index = offsets[members][:, None] + torch.minimum(pos[None, :], (n - 1)[:, None])
        first = n if cands is None else n - cands[members]
        chunks.append(Chunk(index, n[:, None, None], first[:, None, None], valid.flatten(),
                            index[valid], _tiles(width, causal)))
    return chunks


def _tiles(width: int, causal: bool) -> list[tuple[int, int, int]]:
    """Query blocks of a chunk; causal blocks see keys up to their last row only."""
    blocks = max(1, round(width / BLOCK_ROWS)) if causal else 1
    edges = [round(width * r / blocks) for r in range(blocks + 1)]
    return [(lo, hi, hi if causal else width) for lo, hi in zip(edges, edges[1:], strict=False)]


# -- one tile: logits with bias and mask, forward and backward --------------------------------


def _time_buckets(gap: torch.Tensor, thresholds: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Exact ``reference.time_buckets`` from an fp32 estimate (±1) and the integer edges."""
    gap = gap.abs().clamp(min=1)
    top = min(num_buckets - 1, thresholds.numel() - 2)
    guess = torch.floor(torch.log(gap.to(torch.float32)) / TIME_BUCKET_BASE)
    guess = guess.clamp(0, top).to(torch.int64)
    exact = guess - (gap < thresholds[guess]).long() + (gap >= thresholds[guess + 1]).long()
    return exact.clamp(0, num_buckets - 1)


def _bias_and_mask(rows, cols, lengths, first_candidate, pos_weights, time_weights, qts, ts,
                   thresholds, *, max_seq_len, causal, candidates):
    """bias [b or 1, M, K] (or None), mask [b, M, K], time buckets [b, M, K] (or None)."""
    i, j = rows[:, None], cols[None, :]  # [M, 1], [1, K]
    mask = (i < lengths) & (j < lengths)
    if causal:
        mask = mask & (j <= i)
    if candidates:
        mask = mask & ~((i >= first_candidate) & (j >= first_candidate) & (i != j))
    bias = buckets = None
    if pos_weights is not None:
        rel = (j - i + max_seq_len - 1).clamp(0, pos_weights.numel() - 1)
        bias = pos_weights[rel][None]
    if time_weights is not None:
        buckets = _time_buckets(qts[:, :, None] - ts[:, None, :], thresholds,
                                time_weights.numel())
        t = time_weights[buckets]
        bias = t if bias is None else bias + t
    return bias, mask, buckets


def _logits(q, k, bias, alpha):
    s = torch.matmul(q, k.transpose(-1, -2)) * alpha  # [H, b, M, K]
    return s if bias is None else s + bias[None].to(s.dtype)


def tile_forward(q, k, v, rows, cols, lengths, first_candidate, pos_weights, time_weights,
                 qts, ts, thresholds, *, alpha, max_seq_len, causal, candidates):
    """out [H, b, M, Dv] of one tile: q [H, b, M, Dqk], k [H, b, K, Dqk], v [H, b, K, Dv]."""
    bias, mask, _ = _bias_and_mask(rows, cols, lengths, first_candidate, pos_weights,
                                   time_weights, qts, ts, thresholds, max_seq_len=max_seq_len,
                                   causal=causal, candidates=candidates)
    s = _logits(q, k, bias, alpha)
    p = torch.where(mask[None], torch.nn.functional.silu(s), 0.0) * (1.0 / max_seq_len)
    return torch.matmul(p, v)


def tile_backward(grad_out, q, k, v, rows, cols, lengths, first_candidate, pos_weights,
                  time_weights, qts, ts, thresholds, *, alpha, max_seq_len, causal, candidates,
                  bias_grad):
    """dq [H,b,M,Dqk], dk, dv [H,b,K,·], and (if bias_grad) dS summed over heads [b,M,K] and
    the time buckets [b,M,K] (or None) of one tile, recomputing the logits."""
    bias, mask, buckets = _bias_and_mask(rows, cols, lengths, first_candidate, pos_weights,
                                         time_weights, qts, ts, thresholds,
                                         max_seq_len=max_seq_len, causal=causal,
                                         candidates=candidates)
    s = _logits(q, k, bias, alpha)
    sig = torch.sigmoid(s)
    keep = mask[None]
    p = torch.where(keep, s * sig, 0.0) * (1.0 / max_seq_len)
    dp = torch.matmul(grad_out, v.transpose(-1, -2))
    ds = torch.where(keep, dp * (sig * (1 + s * (1 - sig))), 0.0) * (1.0 / max_seq_len)
    dv = torch.matmul(p.transpose(-1, -2), grad_out)
    dq = torch.matmul(ds, k) * alpha
    dk = torch.matmul(ds.transpose(-1, -2), q) * alpha
    dbias = ds.sum(0) if bias_grad else None
    return dq, dk, dv, dbias, buckets


# -- compiled or eager ---------------------------------------------------------------------------

_compiled: dict[tuple, object] = {}
_verified: set[tuple] = set()
_compile_broken = False


def _run(fn, *args, **flags):
    """fn(*args, **flags), through torch.compile when COMPILE; eager if compilation fails."""
    global _compile_broken
    if not COMPILE or _compile_broken:
        return fn(*args, **flags)
    key = (fn.__name__, *sorted(flags.items()))
    compiled = _compiled.get(key)
    if compiled is None:  # one compiled function per flag set: its own recompilation budget
        compiled = _compiled[key] = torch.compile(partial(fn, **flags), dynamic=True)
    if key in _verified:
        return compiled(*args)
    try:
        result = compiled(*args)
    except Exception as err:  # no C++ compiler, unsupported platform, ...
        _compile_broken = True
        log.warning("hstu_attention (cpu): torch.compile failed (%s: %s); running eagerly. "
                    "Set GENREC_CPU_COMPILE=0 to skip the attempt.", type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
        return fn(*args, **flags)
    _verified.add(key)
    return result


# -- the op ------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything of one call that is not differentiated."""

    chunks: list[Chunk]
    max_seq_len: int
    alpha: float
    causal: bool
    candidates: bool
    timestamps: torch.Tensor | None  # [T]
    query_timestamps: torch.Tensor | None  # [T]
    thresholds: torch.Tensor | None  # [THRESHOLD_COUNT] int64

    def flags(self) -> dict:
        return dict(alpha=self.alpha, max_seq_len=self.max_seq_len, causal=self.causal,
                    candidates=self.candidates)

    def tile_inputs(self, chunk: Chunk, tile: tuple[int, int, int], pos_weights, time_weights):
        """(rows, cols, lengths, first_candidate, pos, time, qts, ts, thresholds) of a tile."""
        lo, hi, end = tile
        device = chunk.index.device
        rows, cols = torch.arange(lo, hi, device=device), torch.arange(end, device=device)
        qts = ts = None
        if time_weights is not None:
            qts = self.query_timestamps[chunk.index[:, lo:hi]]  # [b, M]
            ts = self.timestamps[chunk.index[:, :end]]  # [b, K]
        return (rows, cols, chunk.lengths, chunk.first_candidate, pos_weights, time_weights,
                qts, ts, self.thresholds)


def _unpad(x: torch.Tensor, chunk: Chunk) -> torch.Tensor:
    """[H, b, Lc, D] -> [Σ n_b, H, D], the valid rows in the chunk's token order."""
    heads, b, width, dim = x.shape
    return x.permute(1, 2, 0, 3).reshape(b * width, heads, dim)[chunk.valid]


def _forward(q, k, v, pos_weights, time_weights, setup: Setup) -> torch.Tensor:
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])  # [T, H, Dv]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, T, D]
    for chunk in setup.chunks:
        qp, kp, vp = qh[:, chunk.index], kh[:, chunk.index], vh[:, chunk.index]  # [H, b, Lc, D]
        op = vp.new_empty(vp.shape)
        for tile in chunk.tiles:
            lo, hi, end = tile
            op[:, :, lo:hi] = _run(
                tile_forward, qp[:, :, lo:hi], kp[:, :, :end], vp[:, :, :end],
                *setup.tile_inputs(chunk, tile, pos_weights, time_weights), **setup.flags())
        out[chunk.tokens] = _unpad(op, chunk)
    return out


def _backward(grad_out, q, k, v, pos_weights, time_weights, setup: Setup, table_grads):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    d_pos = None if pos_weights is None else q.new_zeros(pos_weights.shape)
    d_time = None if time_weights is None else q.new_zeros(time_weights.shape)
    gh = grad_out.transpose(0, 1)
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, T, D]
    for chunk in setup.chunks:
        qp, kp, vp = qh[:, chunk.index], kh[:, chunk.index], vh[:, chunk.index]  # [H, b, Lc, D]
        gp = gh[:, chunk.index]
        dqp, dkp, dvp = torch.empty_like(qp), torch.zeros_like(kp), torch.zeros_like(vp)
        for tile in chunk.tiles:
            lo, hi, end = tile
            inputs = setup.tile_inputs(chunk, tile, pos_weights, time_weights)
            dq_t, dk_t, dv_t, dbias, buckets = _run(
                tile_backward, gp[:, :, lo:hi], qp[:, :, lo:hi], kp[:, :, :end],
                vp[:, :, :end], *inputs, bias_grad=table_grads, **setup.flags())
            dqp[:, :, lo:hi] = dq_t
            dkp[:, :, :end] += dk_t
            dvp[:, :, :end] += dv_t
            if d_pos is not None and table_grads:
                rows, cols = inputs[0], inputs[1]
                rel = (cols[None, :] - rows[:, None] + setup.max_seq_len - 1)
                d_pos.index_add_(0, rel.clamp(0, d_pos.numel() - 1).flatten(),
                                 dbias.sum(0).flatten())
            if d_time is not None and table_grads:
                d_time.index_add_(0, buckets.flatten(), dbias.flatten())
        dq[chunk.tokens] = _unpad(dqp, chunk)
        dk[chunk.tokens] = _unpad(dkp, chunk)
        dv[chunk.tokens] = _unpad(dvp, chunk)
    cast = [None if d is None else d.to(t.dtype)
            for d, t in ((d_pos, pos_weights), (d_time, time_weights))]
    return dq, dk, dv, *cast


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pos_weights, time_weights, setup):
        ctx.save_for_backward(q, k, v, pos_weights, time_weights)
        ctx.setup = setup
        return _forward(q, k, v, pos_weights, time_weights, setup)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, pos_weights, time_weights = ctx.saved_tensors
        table_grads = bool(ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
        grads = _backward(grad_out.contiguous(), q, k, v, pos_weights, time_weights, ctx.setup,
                          table_grads)
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad,
                                                          strict=False)), None)


_thresholds: dict[torch.device, torch.Tensor] = {}


@torch.compiler.disable
def hstu_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    alpha: float,
    pos_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    query_timestamps: torch.Tensor | None = None,
    num_candidates: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """``hstu_attention_reference``, length-grouped, causal-tiled and fused; same arguments.

    Returns [T, H, Dv]; differentiable in q, k, v, pos_weights and time_weights.
    """
    chunks = plan_chunks(seq_offsets, num_candidates, q.shape[1], causal)
    thresholds = None
    if time_weights is not None:
        thresholds = _thresholds.get(q.device)
        if thresholds is None:
            thresholds = _thresholds[q.device] = bucket_thresholds(THRESHOLD_COUNT).to(q.device)
    setup = Setup(chunks, max_seq_len, float(alpha), causal, num_candidates is not None,
                  timestamps, query_timestamps, thresholds)
    return _Attention.apply(q, k, v, pos_weights, time_weights, setup)
