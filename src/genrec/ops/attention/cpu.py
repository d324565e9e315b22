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
import numbers
import os
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genrec.ops.attention import native as native_attention
from genrec.ops.attention.cpu_plan import (  # noqa: F401  (Chunk: re-exported)
    Chunk,
    Plan,
    _chunk_view,
    _jagged,
    _padded,
    plan_chunks,
)
from genrec.ops.attention.memo import last_batch
from genrec.ops.attention.reference import TIME_BUCKET_BASE, bucket_thresholds
from genrec.ops.attention.validation import validate

log = logging.getLogger(__name__)

COMPILE = os.environ.get("GENREC_CPU_COMPILE", "1") != "0"
COMPILE_MIN_ELEMENTS = 1 << 18  # calls with fewer logits (H·Σ b·Lc²) run eagerly: tests, toys
THRESHOLD_COUNT = 192  # bucket edges up to 2**63 (bucket 145) and some room


# -- the fused elementwise part of one tile, forward and backward -----------------------------


def _time_buckets(gap: torch.Tensor, thresholds: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Exact ``reference.time_buckets`` from an fp32 estimate and one integer edge.

    The fp32 estimate of log(gap) / 0.301 is within 3e-5 of the float64 value for gaps below
    2**53 (gap to fp32: 6e-8 relative; log and division: a few ulp of values ≤ 122). Floored
    after subtracting 1/2, it is the exact bucket b or b − 1, never more; one compare with the
    integer edge of bucket guess + 1 decides which.
    """
    gap = gap.abs().clamp(min=1)
    top = min(num_buckets - 1, thresholds.numel() - 2)
    guess = torch.floor(torch.log(gap.to(torch.float32)) / TIME_BUCKET_BASE - 0.5)
    guess = guess.clamp(0, top).to(torch.int64)
    exact = guess + (gap >= thresholds[guess + 1]).long()
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


def tile_scores(qk, rows, cols, lengths, first_candidate, pos_bias, time_weights, buckets, *,
                alpha, max_seq_len, causal, candidates):
    """Forward of one tile from qk = Q Kᵀ [H, b, M, K], the position term [M, K] (or None) and
    the time buckets [b, M, K] (or None).

    Returns p = SiLU(s)·mask / N (the attention weights) and s = alpha·qk + rab (the logits).
    """
    bias = None if pos_bias is None else pos_bias[None]  # [1, M, K]
    if time_weights is not None:
        t = time_weights[buckets]  # [b, M, K]
        bias = t if bias is None else bias + t
    s = qk * alpha if bias is None else qk * alpha + bias[None].to(qk.dtype)
    mask = _mask(rows, cols, lengths, first_candidate, causal, candidates)[None]
    p = torch.where(mask, F.silu(s), 0.0) * (1.0 / max_seq_len)
    return p, s


def tile_buckets(qts, ts, thresholds, *, num_buckets):
    """[b, M, K] time buckets of a tile from its query [b, M] and key [b, K] timestamps."""
    return _time_buckets(qts[:, :, None] - ts[:, None, :], thresholds, num_buckets)


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


# -- per batch: the plan and the rab indices, the same for every layer ----------------------


@dataclass
class Prepared:
    """What a call needs besides q, k, v and the tables; one batch's layers share it.

    Per tile, in the order the forward visits them: query rows and key columns (aranges), the
    position-table index [M, K] and the time buckets [b, M, K] (None when that table is off),
    and where the tile's logits start in the flat buffer saved for the backward.
    """

    plan: Plan
    max_seq_len: int
    causal: bool
    candidates: bool
    compile: bool  # run the tile functions through torch.compile
    rows_cols: list[tuple[torch.Tensor, torch.Tensor]]
    positions: list[torch.Tensor | None]
    buckets: list[torch.Tensor | None]
    logit_offsets: list[int]  # len = tiles + 1


def prepare(seq_offsets, num_candidates, timestamps, query_timestamps, *, heads: int,
            max_seq_len: int, causal: bool, pos_size: int, num_time_buckets: int) -> Prepared:
    """Plan the chunks and tiles of a batch and compute its rab indices once."""
    plan = plan_chunks(seq_offsets, num_candidates, heads, causal)
    logits = heads * sum(c.size * c.width ** 2 for c in plan.chunks)
    use_compile = COMPILE and logits >= COMPILE_MIN_ELEMENTS
    device = seq_offsets.device
    if num_time_buckets:
        thresholds = _thresholds.get(device)
        if thresholds is None:
            thresholds = _thresholds[device] = bucket_thresholds(THRESHOLD_COUNT).to(device)
        ts, qts = timestamps.long()[plan.gather], query_timestamps.long()[plan.gather]
    rows_cols, positions, buckets, offsets = [], [], [], [0]
    for chunk in plan.chunks:
        padded = slice(chunk.start, chunk.start + chunk.size * chunk.width)
        for lo, hi, end in chunk.tiles:
            rows = torch.arange(lo, hi, device=device)
            cols = torch.arange(end, device=device)
            rows_cols.append((rows, cols))
            positions.append((cols[None, :] - rows[:, None] + max_seq_len - 1)
                             .clamp(0, pos_size - 1) if pos_size else None)
            tile_time = None
            if num_time_buckets:
                qts_tile = qts[padded].view(chunk.size, chunk.width)[:, lo:hi].contiguous()
                ts_tile = ts[padded].view(chunk.size, chunk.width)[:, :end].contiguous()
                tile_time = _run(tile_buckets, use_compile, qts_tile, ts_tile, thresholds,
                                 num_buckets=num_time_buckets)
            buckets.append(tile_time)
            offsets.append(offsets[-1] + heads * chunk.size * (hi - lo) * end)
    return Prepared(plan, max_seq_len, causal, num_candidates is not None, use_compile,
                    rows_cols, positions, buckets, offsets)


_thresholds: dict[torch.device, torch.Tensor] = {}
_last: list = [None]  # the last batch's (weak references, key, Prepared)


def prepared_for(seq_offsets, num_candidates, timestamps, query_timestamps,
                 **flags) -> Prepared:
    """``prepare``, remembered for the last batch (``memo.last_batch``): the plan and the time
    buckets are computed once per batch instead of once per layer and pass."""
    tensors = (seq_offsets, num_candidates, timestamps, query_timestamps)
    # the key: the flags and the module switches the tests flip
    key = (tuple(sorted(flags.items())), COMPILE, COMPILE_MIN_ELEMENTS)
    return last_batch(_last, tensors, key, lambda: prepare(*tensors, **flags))


def new_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer that the op fills completely (tests poison it with NaN)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


# -- forward and backward over the tiles ----------------------------------------------------------


def _forward(q, k, v, pos_weights, time_weights, prep: Prepared, alpha: float, save: bool):
    """out [T, H, Dv], the padded q, k, v and (if save) every tile's logits, flat."""
    heads, dqk, dv = q.shape[1], q.shape[2], v.shape[2]
    qp, kp, vp = _padded(q, prep.plan), _padded(k, prep.plan), _padded(v, prep.plan)
    op = new_output(vp.shape, vp)
    logits = q.new_empty(prep.logit_offsets[-1] if save else 0)
    flags = dict(alpha=alpha, max_seq_len=prep.max_seq_len, causal=prep.causal,
                 candidates=prep.candidates)
    index = 0
    for chunk in prep.plan.chunks:
        qc, kc = _chunk_view(qp, chunk, heads, dqk), _chunk_view(kp, chunk, heads, dqk)
        vc, oc = _chunk_view(vp, chunk, heads, dv), _chunk_view(op, chunk, heads, dv)
        for lo, hi, end in chunk.tiles:
            rows, cols = prep.rows_cols[index]
            pos_bias = None if pos_weights is None else pos_weights[prep.positions[index]]
            qk = torch.matmul(qc[:, :, lo:hi], kc[:, :, :end].transpose(-1, -2))
            p, s = _run(tile_scores, prep.compile, qk, rows, cols, chunk.lengths,
                        chunk.first_candidate, pos_bias, time_weights,
                        None if time_weights is None else prep.buckets[index], **flags)
            oc[:, :, lo:hi] = torch.matmul(p, vc[:, :, :end])
            if save:
                logits[prep.logit_offsets[index]:prep.logit_offsets[index + 1]] = s.flatten()
            index += 1
    return _jagged(op, prep.plan, heads, dv), qp, kp, vp, logits


def _backward(grad_out, qp, kp, vp, logits, pos_weights, time_weights, prep: Prepared,
              alpha: float, dqk: int, pos_grad: bool, time_grad: bool):
    """dq, dk, dv, d pos_weights, d time_weights (the last two empty when not asked for)."""
    plan = prep.plan
    heads, dv = grad_out.shape[1], grad_out.shape[2]
    gp = _padded(grad_out, plan)
    dqp, dkp, dvp = (new_output(x.shape, x) for x in (qp, kp, vp))
    d_pos = qp.new_zeros(pos_weights.shape) if pos_grad else qp.new_zeros(0)
    d_time = qp.new_zeros(time_weights.shape) if time_grad else qp.new_zeros(0)
    flags = dict(max_seq_len=prep.max_seq_len, causal=prep.causal,
                 candidates=prep.candidates, pos_grad=pos_grad, time_grad=time_grad)
    index = 0
    for chunk in plan.chunks:
        qc, kc, dqc, dkc = (_chunk_view(x, chunk, heads, dqk) for x in (qp, kp, dqp, dkp))
        vc, gc, dvc = (_chunk_view(x, chunk, heads, dv) for x in (vp, gp, dvp))
        first = index
        index += len(chunk.tiles)
        # The last tile sees every key: it writes dK, dV, the tiles before it add to them.
        for t in reversed(range(first, index)):
            lo, hi, end = chunk.tiles[t - first]
            rows, cols = prep.rows_cols[t]
            s = logits[prep.logit_offsets[t]:prep.logit_offsets[t + 1]].view(
                heads, chunk.size, hi - lo, end)
            g = gc[:, :, lo:hi]
            dp = torch.matmul(g, vc[:, :, :end].transpose(-1, -2))
            p, ds, ds_pos, ds_heads = _run(tile_score_grads, prep.compile, s, dp, rows, cols,
                                           chunk.lengths, chunk.first_candidate, **flags)
            dqc[:, :, lo:hi] = torch.matmul(ds, kc[:, :, :end])
            dk_t = torch.matmul(ds.transpose(-1, -2), qc[:, :, lo:hi])
            dv_t = torch.matmul(p.transpose(-1, -2), g)
            if end == chunk.width:
                dkc[:], dvc[:] = dk_t, dv_t
            else:
                dkc[:, :, :end] += dk_t
                dvc[:, :, :end] += dv_t
            if pos_grad:
                d_pos.index_add_(0, prep.positions[t].flatten(), ds_pos.flatten())
            if time_grad:
                d_time.scatter_add_(0, prep.buckets[t].flatten(), ds_heads.flatten())
    if alpha != 1.0:
        dqp.mul_(alpha)
        dkp.mul_(alpha)
    return (_jagged(dqp, plan, heads, dqk), _jagged(dkp, plan, heads, dqk),
            _jagged(dvp, plan, heads, dv), d_pos, d_time)


# -- the op: custom ops, opaque to torch.compile, so a model compiles in one graph ----------------


def _prepare_flags(q, pos_weights, time_weights, max_seq_len, causal) -> dict:
    return dict(heads=q.shape[1], max_seq_len=max_seq_len, causal=causal,
                pos_size=0 if pos_weights is None else pos_weights.numel(),
                num_time_buckets=0 if time_weights is None else time_weights.numel())


_FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, Tensor? pos_weights, "
    "Tensor? time_weights, Tensor? timestamps, Tensor? query_timestamps, "
    "Tensor? num_candidates, int max_seq_len, float alpha, bool causal, bool save) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor qp, Tensor kp, Tensor vp, Tensor logits, Tensor seq_offsets, "
    "Tensor? pos_weights, Tensor? time_weights, Tensor? timestamps, Tensor? query_timestamps, "
    "Tensor? num_candidates, int max_seq_len, float alpha, bool causal, int dqk, "
    "bool pos_grad, bool time_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("genrec::hstu_attention_cpu", mutates_args=(), schema=_FORWARD_SCHEMA)
def _forward_op(q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
                num_candidates, max_seq_len, alpha, causal, save):
    """(out [T, H, Dv], padded q, k, v, flat logits): the last four saved for the backward."""
    validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
             query_timestamps, num_candidates)
    prep = prepared_for(seq_offsets, num_candidates, timestamps, query_timestamps,
                        **_prepare_flags(q, pos_weights, time_weights, max_seq_len, causal))
    return _forward(q, k, v, pos_weights, time_weights, prep, alpha, save)


@_forward_op.register_fake
def _(q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
      num_candidates, max_seq_len, alpha, causal, save):
    ctx = torch.library.get_ctx()
    rows, heads = ctx.new_dynamic_size(), q.shape[1]  # padded rows P: data-dependent
    logits = ctx.new_dynamic_size() if save else 0
    return (v.new_empty(q.shape[0], heads, v.shape[2]), q.new_empty(rows * heads * q.shape[2]),
            k.new_empty(rows * heads * k.shape[2]), v.new_empty(rows * heads * v.shape[2]),
            q.new_empty(logits))


@torch.library.custom_op("genrec::hstu_attention_cpu_backward", mutates_args=(),
                         schema=_BACKWARD_SCHEMA)
def _backward_op(grad_out, qp, kp, vp, logits, seq_offsets, pos_weights, time_weights,
                 timestamps, query_timestamps, num_candidates, max_seq_len, alpha, causal, dqk,
                 pos_grad, time_grad):
    """(dq, dk, dv, d pos_weights, d time_weights); a table's gradient is empty if not asked."""
    flags = _prepare_flags(grad_out, pos_weights, time_weights, max_seq_len, causal)
    prep = prepared_for(seq_offsets, num_candidates, timestamps, query_timestamps, **flags)
    dq, dk, dv, d_pos, d_time = _backward(grad_out.contiguous(), qp, kp, vp, logits,
                                          pos_weights, time_weights, prep, alpha, dqk,
                                          pos_grad, time_grad)
    return (dq, dk, dv, d_pos.to(pos_weights.dtype) if pos_grad else d_pos,
            d_time.to(time_weights.dtype) if time_grad else d_time)


@_backward_op.register_fake
def _(grad_out, qp, kp, vp, logits, seq_offsets, pos_weights, time_weights, timestamps,
      query_timestamps, num_candidates, max_seq_len, alpha, causal, dqk, pos_grad, time_grad):
    tokens, heads = grad_out.shape[:2]
    return (qp.new_empty(tokens, heads, dqk), kp.new_empty(tokens, heads, dqk),
            vp.new_empty(grad_out.shape),
            pos_weights.new_empty(pos_weights.shape) if pos_grad else qp.new_empty(0),
            time_weights.new_empty(time_weights.shape) if time_grad else qp.new_empty(0))


def _setup_context(ctx, inputs, output):
    (q, _, _, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
     num_candidates, max_seq_len, alpha, causal, _) = inputs
    _, qp, kp, vp, logits = output
    # saved buffers, not results: no gradient flows into them, and none is zero-filled for them
    ctx.mark_non_differentiable(qp, kp, vp, logits)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(qp, kp, vp, logits, seq_offsets, pos_weights, time_weights,
                          timestamps, query_timestamps, num_candidates)
    ctx.scalars = (max_seq_len, alpha, causal, q.shape[2])


def _autograd_backward(ctx, grad_out, *_):
    if grad_out is None:  # the output did not reach the loss
        return (None,) * 13
    qp, kp, vp, logits, seq_offsets, pos_weights, time_weights, ts, qts, cands = \
        ctx.saved_tensors
    needs = ctx.needs_input_grad
    pos_grad = pos_weights is not None and needs[4]
    time_grad = time_weights is not None and needs[5]
    dq, dk, dv, d_pos, d_time = torch.ops.genrec.hstu_attention_cpu_backward(
        grad_out, qp, kp, vp, logits, seq_offsets, pos_weights, time_weights, ts, qts, cands,
        *ctx.scalars, pos_grad, time_grad)
    return (dq, dk, dv, None, d_pos if pos_grad else None, d_time if time_grad else None,
            None, None, None, None, None, None, None)


_forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


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

    float32 inputs run the C++ kernel of ``native.py`` when it builds; others the tiles here.

    Returns [T, H, Dv]; differentiable in q, k, v, pos_weights and time_weights (once).
    A custom op (``torch.ops.genrec.hstu_attention_cpu``): torch.compile traces a model
    through it without a graph break, and inputs are validated when it runs.
    """
    tensors = (q, k, v, seq_offsets)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or isinstance(max_seq_len, bool) \
            or not isinstance(max_seq_len, numbers.Integral):
        validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
                 query_timestamps, num_candidates)  # raises the error that names the argument
    if native_attention.usable(q, k, v, pos_weights, time_weights):
        return native_attention.hstu_attention_native(
            q, k, v, seq_offsets, max_seq_len, alpha, pos_weights, time_weights, timestamps,
            query_timestamps, num_candidates, causal)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, pos_weights, time_weights))
    out, *_ = torch.ops.genrec.hstu_attention_cpu(
        q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
        num_candidates, int(max_seq_len), float(alpha), bool(causal), save)
    return out
