"""Fast CPU twin of ``hstu_attention_reference``: same function, length-grouped and fused.

Shape legend:
    T tokens, B sequences, H heads, Dqk / Dv head dims (q, k [T, H, Dqk]; v [T, H, Dv])
    b sequences of one chunk, all padded to Lc (the chunk's longest); P = Σ b·Lc padded rows
    M query rows and K key columns of one tile (a block of a chunk's [Lc, Lc] logits);
    tiles are head-major, q [H, b, M, Dqk], so one gather of q.transpose(0, 1) makes them all

Why it is faster than the reference (NOTES.md, "CPU path", has the measurements):

- Length grouping. Sequences are sorted by length and cut into chunks of similar length, each
  padded to its own longest only, so a skewed batch pays Σ b·Lc² instead of B·L², and each
  chunk's [H, b, Lc, Lc] intermediates stay small enough for the cache.
- Causal tiles. Long causal chunks are split into query blocks whose keys stop at the block's
  last row: most of the upper triangle is never computed.
- Fusion. Around each tile's matmuls, one function builds the logits (both rab terms from the
  small tables, the mask, SiLU) and one builds dS in the backward; both are torch.compile'd
  (inductor's C++ backend fuses each into one pass) when a call is large enough to repay the
  seconds of compilation. GENREC_CPU_COMPILE=0 (or ``cpu.COMPILE = False``) runs them eagerly,
  as does a failed compilation (no C++ compiler).
- A hand-written backward that reuses the forward's logits (no matmul or rab recomputed) and
  reduces the rab gradients with deterministic index_add_ on the head-summed dS.

Time buckets equal the float64 reference's exactly: they are estimated in fp32 (off by at most
one bucket) and corrected with the exact integer edges of ``reference.bucket_thresholds``.
"""

from __future__ import annotations

import logging
import os
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genrec.ops.attention.reference import TIME_BUCKET_BASE, bucket_thresholds

log = logging.getLogger(__name__)

COMPILE = os.environ.get("GENREC_CPU_COMPILE", "1") != "0"
COMPILE_MIN_ELEMENTS = 1 << 18  # calls with fewer logits (H·Σ b·Lc²) run eagerly: tests, toys
CHUNK_ELEMENTS = 1 << 20  # cap on b·H·Lc² per chunk: a few MiB of fp32 logits per tile pass
CHUNK_MIN_FILL = 0.8  # a sequence joins a chunk only when its length is ≥ this × Lc
BLOCK_ROWS = 64  # causal chunks longer than this are split into query blocks of ~this many rows
THRESHOLD_COUNT = 192  # bucket edges up to 2**63 (bucket 145) and some room


# -- the plan: which sequences go together, which tiles each chunk is cut into ----------------


@dataclass
class Chunk:
    """b sequences padded to Lc: rows [start, start + b·Lc) of the padded layout."""

    start: int
    size: int  # b
    width: int  # Lc
    lengths: torch.Tensor  # [b, 1, 1] int64
    first_candidate: torch.Tensor  # [b, 1, 1] int64: n_b − c_b (n_b without candidates)
    tiles: list[tuple[int, int, int]]  # (first row, end row, end column) of each tile


@dataclass
class Plan:
    """Gather [P] token index into the padded layout, and [T] padded row of each token."""

    gather: torch.Tensor  # [P] int64 (padding rows point at a real token of their sequence)
    scatter: torch.Tensor  # [T] int64
    chunks: list[Chunk]


def plan_chunks(seq_offsets: torch.Tensor, num_candidates: torch.Tensor | None, heads: int,
                causal: bool) -> Plan:
    """Group the sequences by length into chunks and cut each chunk into tiles."""
    lengths = (seq_offsets[1:] - seq_offsets[:-1]).cpu().long()
    offsets = seq_offsets.cpu().long()
    cands = None if num_candidates is None else num_candidates.cpu().long()
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
    gathers, scatter, chunks, row = [], torch.empty(int(offsets[-1]), dtype=torch.int64), [], 0
    for start, end in groups:
        members = order[start:end]
        width = max(sorted_lengths[start], 2)  # no size-1 tile dims (compiled specialisation)
        n = lengths[members]  # [b]
        pos = torch.arange(width)
        valid = pos[None, :] < n[:, None]  # [b, Lc]
        gathers.append((offsets[members][:, None] + torch.minimum(pos, (n - 1)[:, None]))
                       .flatten())
        scatter[gathers[-1][valid.flatten()]] = row + valid.flatten().nonzero().flatten()
        first = n if cands is None else n - cands[members]
        chunks.append(Chunk(row, len(members), width, n[:, None, None], first[:, None, None],
                            _tiles(width, causal)))
        row += len(members) * width
    device = seq_offsets.device
    gather = torch.cat(gathers) if gathers else torch.empty(0, dtype=torch.int64)
    for chunk in chunks:
        chunk.lengths, chunk.first_candidate = (chunk.lengths.to(device),
                                                chunk.first_candidate.to(device))
    return Plan(gather.to(device), scatter.to(device), chunks)


def _tiles(width: int, causal: bool) -> list[tuple[int, int, int]]:
    """Query blocks of a chunk; causal blocks see keys up to their last row only."""
    blocks = max(1, round(width / BLOCK_ROWS)) if causal else 1
    edges = [round(width * r / blocks) for r in range(blocks + 1)]
    return [(lo, hi, hi if causal else width) for lo, hi in zip(edges, edges[1:], strict=False)]


# -- the fused elementwise part of one tile, forward and backward -----------------------------


def _time_buckets(gap: torch.Tensor, thresholds: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Exact ``reference.time_buckets`` from an fp32 estimate (±1) and the integer edges."""
    gap = gap.abs().clamp(min=1)
    top = min(num_buckets - 1, thresholds.numel() - 2)
    guess = torch.floor(torch.log(gap.to(torch.float32)) / TIME_BUCKET_BASE)
    guess = guess.clamp(0, top).to(torch.int64)
    exact = guess - (gap < thresholds[guess]).long() + (gap >= thresholds[guess + 1]).long()
    return exact.clamp(0, num_buckets - 1)


def _mask(rows, cols, lengths, first_candidate, causal, candidates):
    """[b, M, K] bool: may query row i attend to key column j."""
    i, j = rows[:, None], cols[None, :]  # [M, 1], [1, K]
    mask = (i < lengths) & (j < lengths)
    if causal:
        mask = mask & (j <= i)
    if candidates:
        mask = mask & ~((i >= first_candidate) & (j >= first_candidate) & (i != j))
    return mask


def tile_scores(qk, rows, cols, lengths, first_candidate, pos_bias, time_weights, qts, ts,
                thresholds, *, alpha, max_seq_len, causal, candidates, keep_buckets):
    """Forward of one tile from qk = Q Kᵀ [H, b, M, K] and the position term [M, K] (or None).

    Returns p = SiLU(s)·mask / N (the attention weights), s = alpha·qk + rab (the logits) and,
    if keep_buckets, the time buckets [b, M, K] int64 (for the time table's gradient).
    """
    bias = None if pos_bias is None else pos_bias[None]  # [1, M, K]
    buckets = None
    if time_weights is not None:
        buckets = _time_buckets(qts[:, :, None] - ts[:, None, :], thresholds,
                                time_weights.numel())  # [b, M, K]
        t = time_weights[buckets]
        bias = t if bias is None else bias + t
    s = qk * alpha if bias is None else qk * alpha + bias[None].to(qk.dtype)
    mask = _mask(rows, cols, lengths, first_candidate, causal, candidates)[None]
    p = torch.where(mask, F.silu(s), 0.0) * (1.0 / max_seq_len)
    return p, s, (buckets if keep_buckets else None)


def tile_score_grads(s, dp, rows, cols, lengths, first_candidate, *, max_seq_len, causal,
                     candidates, pos_grad, time_grad):
    """Backward of one tile: p, dS [H, b, M, K] from the logits s and dP = dO Vᵀ, and dS summed
    over heads and sequences [M, K] (if pos_grad) and over heads [b, M, K] (if time_grad)."""
    mask = _mask(rows, cols, lengths, first_candidate, causal, candidates)[None]
    sig = torch.sigmoid(s)
    p = torch.where(mask, s * sig, 0.0) * (1.0 / max_seq_len)
    ds = torch.where(mask, dp * (sig * (1 + s * (1 - sig))), 0.0) * (1.0 / max_seq_len)
    ds_heads = ds.sum(0) if time_grad else None
    ds_pos = ds.sum((0, 1)) if pos_grad else None
    return p, ds, ds_pos, ds_heads


# -- compiled or eager ---------------------------------------------------------------------------

_compiled: dict[tuple, object] = {}
_verified: set[tuple] = set()
_compile_broken = False


def _run(fn, use_compile, *args, **flags):
    """fn(*args, **flags), through torch.compile if use_compile; eager if compilation fails."""
    global _compile_broken
    if not use_compile or _compile_broken:
        return fn(*args, **flags)
    key = (fn.__name__, *sorted(flags.items()))
    compiled = _compiled.get(key)
    if compiled is None:
        # Dynamo keeps one cache (of 8 entries) per code object; a copy of the code per flag
        # set keeps the variants a process uses from evicting each other.
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
        compiled = _compiled[key] = torch.compile(copy, dynamic=True)
    if key in _verified:
        return compiled(*args, **flags)
    try:
        result = compiled(*args, **flags)
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

    plan: Plan
    max_seq_len: int
    alpha: float
    causal: bool
    candidates: bool
    timestamps: torch.Tensor | None  # [P] int64, in the padded layout
    query_timestamps: torch.Tensor | None  # [P] int64, in the padded layout
    thresholds: torch.Tensor | None  # [THRESHOLD_COUNT] int64
    compile: bool  # run the tile functions through torch.compile
    dqk: int  # q's and k's head dim

    def mask_inputs(self, chunk: Chunk, tile: tuple[int, int, int]):
        lo, hi, end = tile
        device = chunk.lengths.device
        return (torch.arange(lo, hi, device=device), torch.arange(end, device=device),
                chunk.lengths, chunk.first_candidate)

    def timestamps_of(self, chunk: Chunk, tile: tuple[int, int, int]):
        """query timestamps [b, M] and key timestamps [b, K] of a tile, or (None, None)."""
        if self.timestamps is None:
            return None, None
        lo, hi, end = tile
        rows = slice(chunk.start, chunk.start + chunk.size * chunk.width)
        qts = self.query_timestamps[rows].view(chunk.size, chunk.width)[:, lo:hi].contiguous()
        ts = self.timestamps[rows].view(chunk.size, chunk.width)[:, :end].contiguous()
        return qts, ts


def new_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer that the op fills completely (tests poison it with NaN)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _chunk_view(x: torch.Tensor, chunk: Chunk, heads: int, dim: int) -> torch.Tensor:
    """Flat chunk-major padded buffer [P·H·D] -> the chunk's contiguous [H, b, Lc, D] view.

    Chunk-major (each chunk's heads together) keeps [H, b] collapsible into one batch
    dimension, so the tiles' matmuls never copy their operands.
    """
    size = heads * dim
    flat = x[chunk.start * size:(chunk.start + chunk.size * chunk.width) * size]
    return flat.view(heads, chunk.size, chunk.width, dim)


def _padded(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """[T, H, D] jagged -> [P·H·D] flat chunk-major padded buffer."""
    tokens, heads, dim = x.shape
    # index_select of 2-D rows is a memcpy per row, several times faster than of [T, H, D]
    rows = x.reshape(tokens, heads * dim).index_select(0, plan.gather)  # [P, H·D]
    if heads == 1:
        return rows.view(-1)
    out = rows.new_empty(rows.numel())
    for chunk in plan.chunks:
        start, end = chunk.start, chunk.start + chunk.size * chunk.width
        _chunk_view(out, chunk, heads, dim).copy_(
            rows[start:end].view(chunk.size, chunk.width, heads, dim).permute(2, 0, 1, 3))
    return out


def _jagged(x: torch.Tensor, plan: Plan, heads: int, dim: int) -> torch.Tensor:
    """[P·H·D] flat chunk-major padded buffer -> [T, H, D]: each token from its own row."""
    rows = x.view(-1, heads * dim)
    if heads > 1:
        rows = torch.empty_like(rows)
        for chunk in plan.chunks:
            start, end = chunk.start, chunk.start + chunk.size * chunk.width
            rows[start:end].view(chunk.size, chunk.width, heads, dim).copy_(
                _chunk_view(x, chunk, heads, dim).permute(1, 2, 0, 3))
    return rows.index_select(0, plan.scatter).view(-1, heads, dim)


def _relative_positions(rows: torch.Tensor, cols: torch.Tensor, setup: Setup,
                        table_size: int) -> torch.Tensor:
    """[M, K] index j − i + N − 1 into the position table."""
    return (cols[None, :] - rows[:, None] + setup.max_seq_len - 1).clamp(0, table_size - 1)


def _forward(q, k, v, pos_weights, time_weights, setup: Setup, keep_buckets: bool):
    """out [T, H, Dv] and what the backward needs: padded q, k, v and per tile (s, buckets)."""
    heads, dqk, dv = q.shape[1], q.shape[2], v.shape[2]
    qp, kp, vp = _padded(q, setup.plan), _padded(k, setup.plan), _padded(v, setup.plan)
    op = new_output(vp.shape, vp)
    saved = []
    flags = dict(alpha=setup.alpha, max_seq_len=setup.max_seq_len, causal=setup.causal,
                 candidates=setup.candidates, keep_buckets=keep_buckets)
    for chunk in setup.plan.chunks:
        qc, kc = _chunk_view(qp, chunk, heads, dqk), _chunk_view(kp, chunk, heads, dqk)
        vc, oc = _chunk_view(vp, chunk, heads, dv), _chunk_view(op, chunk, heads, dv)
        for tile in chunk.tiles:
            lo, hi, end = tile
            rows, cols, lengths, first = setup.mask_inputs(chunk, tile)
            pos_bias = None if pos_weights is None else \
                pos_weights[_relative_positions(rows, cols, setup, pos_weights.numel())]
            qk = torch.matmul(qc[:, :, lo:hi], kc[:, :, :end].transpose(-1, -2))
            p, s, buckets = _run(tile_scores, setup.compile, qk, rows, cols, lengths, first,
                                 pos_bias, time_weights, *setup.timestamps_of(chunk, tile),
                                 setup.thresholds, **flags)
            oc[:, :, lo:hi] = torch.matmul(p, vc[:, :, :end])
            saved.append((s, buckets))
    return _jagged(op, setup.plan, heads, dv), (qp, kp, vp, saved)


def _backward(grad_out, pos_weights, time_weights, setup: Setup, saved, needs):
    """dq, dk, dv, d pos_weights, d time_weights (None where not needed)."""
    plan = setup.plan
    qp, kp, vp, saved = saved
    heads, dqk, dv = grad_out.shape[1], setup.dqk, grad_out.shape[2]
    gp = _padded(grad_out, plan)
    dqp, dkp, dvp = (new_output(x.shape, x) for x in (qp, kp, vp))
    pos_grad = pos_weights is not None and needs[3]
    time_grad = time_weights is not None and needs[4]
    d_pos = qp.new_zeros(pos_weights.shape) if pos_grad else None
    d_time = qp.new_zeros(time_weights.shape) if time_grad else None
    flags = dict(max_seq_len=setup.max_seq_len, causal=setup.causal,
                 candidates=setup.candidates, pos_grad=pos_grad, time_grad=time_grad)
    tiles = iter(saved)
    for chunk in plan.chunks:
        qc, kc, dqc, dkc = (_chunk_view(x, chunk, heads, dqk) for x in (qp, kp, dqp, dkp))
        vc, gc, dvc = (_chunk_view(x, chunk, heads, dv) for x in (vp, gp, dvp))
        # The last tile sees every key: it writes dK, dV, the tiles before it add to them.
        for tile, (s, buckets) in reversed(list(zip(chunk.tiles, tiles, strict=False))):
            lo, hi, end = tile
            rows, cols, lengths, first = setup.mask_inputs(chunk, tile)
            g = gc[:, :, lo:hi]
            dp = torch.matmul(g, vc[:, :, :end].transpose(-1, -2))
            p, ds, ds_pos, ds_heads = _run(tile_score_grads, setup.compile, s, dp, rows, cols,
                                           lengths, first, **flags)
            dqc[:, :, lo:hi] = torch.matmul(ds, kc[:, :, :end])
            dk_t = torch.matmul(ds.transpose(-1, -2), qc[:, :, lo:hi])
            dv_t = torch.matmul(p.transpose(-1, -2), g)
            if end == chunk.width:
                dkc[:], dvc[:] = dk_t, dv_t
            else:
                dkc[:, :, :end] += dk_t
                dvc[:, :, :end] += dv_t
            if pos_grad:
                rel = _relative_positions(rows, cols, setup, d_pos.numel())
                d_pos.index_add_(0, rel.flatten(), ds_pos.flatten())
            if time_grad:
                d_time.scatter_add_(0, buckets.flatten(), ds_heads.flatten())
    if setup.alpha != 1.0:
        dqp.mul_(setup.alpha)
        dkp.mul_(setup.alpha)
    grads = [_jagged(dqp, plan, heads, dqk), _jagged(dkp, plan, heads, dqk),
             _jagged(dvp, plan, heads, dv),
             None if d_pos is None else d_pos.to(pos_weights.dtype),
             None if d_time is None else d_time.to(time_weights.dtype)]
    return [g if need else None for g, need in zip(grads, needs, strict=False)]


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pos_weights, time_weights, setup):
        keep_buckets = time_weights is not None and time_weights.requires_grad
        out, saved = _forward(q, k, v, pos_weights, time_weights, setup, keep_buckets)
        # Autograd-visible tensors go through save_for_backward (version checks); the padded
        # copies and per-tile logits are ours alone, kept on ctx.
        ctx.save_for_backward(pos_weights, time_weights)
        ctx.setup, ctx.saved = setup, saved
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pos_weights, time_weights = ctx.saved_tensors
        grads = _backward(grad_out, pos_weights, time_weights, ctx.setup, ctx.saved,
                          ctx.needs_input_grad[:5])
        ctx.saved = None  # free the logits: a second backward through this graph is an error
        return (*grads, None)


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

    Returns [T, H, Dv]; differentiable in q, k, v, pos_weights and time_weights (once).
    """
    if q.shape[0] == 0:
        return q.new_zeros(0, q.shape[1], v.shape[2])
    plan = plan_chunks(seq_offsets, num_candidates, q.shape[1], causal)
    thresholds = ts = qts = None
    if time_weights is not None:
        thresholds = _thresholds.get(q.device)
        if thresholds is None:
            thresholds = _thresholds[q.device] = bucket_thresholds(THRESHOLD_COUNT).to(q.device)
        ts, qts = timestamps.long()[plan.gather], query_timestamps.long()[plan.gather]
    logits = q.shape[1] * sum(c.size * c.width ** 2 for c in plan.chunks)
    setup = Setup(plan, max_seq_len, float(alpha), causal, num_candidates is not None, ts, qts,
                  thresholds, COMPILE and logits >= COMPILE_MIN_ELEMENTS, q.shape[2])
    return _Attention.apply(q, k, v, pos_weights, time_weights, setup)
