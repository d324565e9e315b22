"""Fused HSTU attention for fp32 on CPU, in C++ (``genrec/ops/csrc/attention.cpp``).

The same function as ``hstu_attention_reference`` and the length-grouped CPU path
(``cpu.py``), which it replaces for float32 CPU tensors when ``genrec.ops.native`` can build
its library: one task per (sequence, head) on the OpenMP threads; per block of 8 query rows
(4 without AVX-512), Q Kᵀ, the bias, mask and SiLU in whole vectors, and P V without leaving
the cache; nothing padded, no n × n buffer, and q, k, v read in place at their row strides
(the model's q, k, v are views of one projection).

The backward recomputes each block's logits (as fast as reading saved ones back from memory,
and HSTU-large's peak RSS 1.15–1.22 → 0.91–1.0 GB) and produces dQ row-block by row-block
and dK, dV as rank-8 (rank-4) updates; the tables' gradients are summed per task, then in
task order, so results do not depend on the thread count. Time buckets, one byte per pair
(0 where not allowed), are computed once per batch with exact integer comparisons
(``reference.bucket_thresholds``) and shared by a model's layers and the backward.

Both passes are custom ops opaque to torch.compile. With other dtypes or devices, no compiler,
``GENREC_NATIVE=0`` or ``GENREC_NATIVE_ATTENTION=0``, ``cpu.py``'s tiles run. Tests hold
both to the float64 reference.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch

from genrec.ops import native
from genrec.ops.attention.memo import last_batch
from genrec.ops.attention.reference import bucket_thresholds
from genrec.ops.attention.validation import validate

ENABLED = os.environ.get("GENREC_NATIVE_ATTENTION", "1") != "0"  # off: cpu.py's tiles run
THRESHOLD_COUNT = 192  # bucket edges up to 2**63 (bucket 145) and some room
BUCKET_SLACK = 64  # zero bytes after the time buckets (the kernel reads whole vectors)

_VP, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "genrec_hstu_time_buckets": [_VP, _VP, _VP, _I64, _VP, _VP, _I64, _I64, _INT, _VP, _INT],
    "genrec_hstu_forward_f32": [_VP, _I64, _VP, _I64, _VP, _I64, _VP, _I64, _I64, _I64, _I64,
                                _I64, _F32, _INT, _VP, _VP, _I64, _VP, _I64, _VP, _VP, _VP,
                                _INT],
    "genrec_hstu_forward_last_f32": [_VP, _I64, _VP, _I64, _VP, _I64, _VP, _I64, _I64, _I64,
                                     _I64, _I64, _F32, _VP, _I64, _VP, _I64, _VP, _VP, _VP,
                                     _I64, _VP, _INT],
    "genrec_hstu_layer_forward_f32": [_VP, _I64, _VP, _VP, _VP, _VP, _I64, _I64, _I64, _I64,
                                      _I64, _F32, _INT, _VP, _VP, _I64, _VP, _I64, _VP, _VP,
                                      _VP, _F32, _VP, _INT],
    "genrec_hstu_layer_last_f32": [_VP, _I64, _VP, _VP, _I64, _VP, _VP, _VP, _I64, _I64, _I64,
                                   _I64, _I64, _F32, _VP, _I64, _VP, _I64, _VP, _VP, _VP, _I64,
                                   _VP, _F32, _VP, _INT],
    "genrec_hstu_backward_f32": [_VP, _I64, _VP, _I64, _VP, _I64, _VP, _I64, _VP, _I64, _I64,
                                 _I64, _I64, _I64, _F32, _INT, _VP, _VP, _I64, _VP, _I64, _VP,
                                 _VP, _VP, _VP, _VP, _VP, _VP, _VP, _INT],
    "genrec_softmax_forward_f32": [_VP, _I64, _VP, _I64, _VP, _I64, _VP, _I64, _I64, _I64, _I64,
                                   _F32, _INT, _VP, ctypes.c_double, ctypes.c_uint64, _VP, _VP,
                                   _VP, _INT],
    "genrec_softmax_backward_f32": [_VP, _I64, _VP, _I64, _VP, _I64, _VP, _I64, _VP, _VP, _I64,
                                    _I64, _I64, _I64, _F32, _INT, _VP, ctypes.c_double,
                                    ctypes.c_uint64, _VP, _VP, _VP, _VP, _INT],
}


def library() -> ctypes.CDLL | None:
    """The built ``csrc/attention.cpp`` with its functions typed, or None."""
    lib = native.load("attention")
    if lib is not None and lib.genrec_hstu_forward_f32.argtypes is None:
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
    return lib


@torch.compiler.assume_constant_result  # decided once when torch.compile traces
def _built() -> bool:
    return library() is not None


def usable(q, k, v, pos_weights, time_weights) -> bool:
    """Whether the native op takes these inputs: all float32 on CPU, and the library built."""
    tensors = [t for t in (q, k, v, pos_weights, time_weights) if t is not None]
    return ENABLED and (all(isinstance(t, torch.Tensor) and t.dtype == torch.float32
                and t.device.type == "cpu" for t in tensors) and _built())


# -- per batch: offsets, candidates and time buckets, shared by a model's layers ---------------


@dataclass
class Layout:
    offsets: torch.Tensor  # [B+1] int64
    square_offsets: torch.Tensor  # [B+1] int64: Σ n_b² before sequence b
    first_candidate: torch.Tensor | None  # [B] int64: n_b − c_b
    buckets: torch.Tensor | None  # [Σ n_b² + BUCKET_SLACK] uint8, 0 where not allowed


def _layout(seq_offsets, num_candidates, timestamps, query_timestamps, *, causal: bool,
            num_buckets: int) -> Layout:
    # its own copy: a layout remembered for a batch stays consistent with its buckets whatever
    # later happens to the caller's tensor (memo.py)
    offsets = seq_offsets.to(torch.int64, copy=True).contiguous()
    lengths = offsets[1:] - offsets[:-1]
    squares = torch.zeros_like(offsets)
    torch.cumsum(lengths * lengths, 0, out=squares[1:])
    first = None if num_candidates is None else (lengths - num_candidates.long()).contiguous()
    buckets = None
    if num_buckets:
        # the kernel reads whole vectors of a row's buckets, up to 64 bytes past the last row
        buckets = torch.empty(int(squares[-1]) + BUCKET_SLACK, dtype=torch.uint8)
        buckets[-BUCKET_SLACK:] = 0
        edges = thresholds()
        ts, qts = timestamps.long().contiguous(), query_timestamps.long().contiguous()
        library().genrec_hstu_time_buckets(
            ts.data_ptr(), qts.data_ptr(), offsets.data_ptr(), lengths.numel(),
            squares.data_ptr(), edges.data_ptr(), edges.numel(), num_buckets, int(causal),
            buckets.data_ptr(), torch.get_num_threads())
    return Layout(offsets, squares, first, buckets)


_edges: list[torch.Tensor] = []


def thresholds() -> torch.Tensor:
    """The finite bucket edges (thresholds[k]: the smallest gap of bucket ≥ k)."""
    if not _edges:
        edges = bucket_thresholds(THRESHOLD_COUNT)
        _edges.append(edges[edges < torch.iinfo(torch.int64).max].contiguous())
    return _edges[0]


_slot: list = [None]


def layout_for(seq_offsets, num_candidates, timestamps, query_timestamps, *, causal: bool,
               num_buckets: int) -> Layout:
    """``_layout``, computed once for the batch every layer (and the backward) calls with."""
    return last_batch(_slot, (seq_offsets, num_candidates, timestamps, query_timestamps),
                      (causal, num_buckets),
                      lambda: _layout(seq_offsets, num_candidates, timestamps,
                                      query_timestamps, causal=causal, num_buckets=num_buckets))


def row_strided(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x [T, H, D] with each row's [H, D] contiguous, and its row stride."""
    heads, dim = x.shape[1], x.shape[2]
    if x.stride(2) != 1 or (heads > 1 and x.stride(1) != dim) or x.stride(0) < heads * dim:
        x = x.contiguous()
    return x, x.stride(0)


def new_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer that the kernel fills completely (tests poison it with NaN)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# -- the ops ---------------------------------------------------------------------------------------

_FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor seq_offsets, Tensor? pos_weights, "
    "Tensor? time_weights, Tensor? timestamps, Tensor? query_timestamps, "
    "Tensor? num_candidates, int max_seq_len, float alpha, bool causal) -> Tensor"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor seq_offsets, "
    "Tensor? pos_weights, Tensor? time_weights, Tensor? timestamps, Tensor? query_timestamps, "
    "Tensor? num_candidates, int max_seq_len, float alpha, bool causal, bool pos_grad, "
    "bool time_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("genrec::hstu_attention_native", mutates_args=(),
                         schema=_FORWARD_SCHEMA)
def _forward_op(q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
                num_candidates, max_seq_len, alpha, causal):
    """out [T, H, Dv]; the backward recomputes the logits, so nothing else is kept."""
    validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
             query_timestamps, num_candidates)
    tokens, heads, dqk = q.shape
    dv = v.shape[2]
    layout = layout_for(seq_offsets, num_candidates, timestamps, query_timestamps,
                        causal=causal, num_buckets=0 if time_weights is None
                        else time_weights.numel())
    out = new_output((tokens, heads, dv), q)
    if tokens == 0:
        return out
    (q, qs), (k, ks), (v, vs) = (row_strided(x) for x in (q, k, v))
    pos = None if pos_weights is None else pos_weights.contiguous()
    time = None if time_weights is None else time_weights.contiguous()
    library().genrec_hstu_forward_f32(
        q.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), vs, layout.offsets.data_ptr(),
        layout.offsets.numel() - 1, heads, dqk, dv, max_seq_len, alpha, int(causal),
        pointer(layout.first_candidate), pointer(pos), 0 if pos is None else pos.numel(),
        pointer(time), 0 if time is None else time.numel(), pointer(layout.buckets),
        layout.square_offsets.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


@_forward_op.register_fake
def _(q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
      num_candidates, max_seq_len, alpha, causal):
    return v.new_empty(q.shape[0], q.shape[1], v.shape[2])


@torch.library.custom_op("genrec::hstu_attention_native_backward", mutates_args=(),
                         schema=_BACKWARD_SCHEMA)
def _backward_op(grad_out, q, k, v, seq_offsets, pos_weights, time_weights, timestamps,
                 query_timestamps, num_candidates, max_seq_len, alpha, causal, pos_grad,
                 time_grad):
    """(dq, dk, dv, d pos_weights, d time_weights); a table's gradient is empty if not asked."""
    tokens, heads, dqk = q.shape
    dv = v.shape[2]
    num_buckets = 0 if time_weights is None else time_weights.numel()
    pos_size = 0 if pos_weights is None else pos_weights.numel()
    layout = layout_for(seq_offsets, num_candidates, timestamps, query_timestamps,
                        causal=causal, num_buckets=num_buckets)
    dq, dk, dvv = (new_output(tuple(x.shape), x) for x in (q, k, v))
    d_pos = q.new_zeros(pos_size if pos_grad else 0)
    d_time = q.new_zeros(num_buckets if time_grad else 0)
    if tokens == 0:
        return dq, dk, dvv, d_pos, d_time
    (g, gs), (q, qs), (k, ks), (v, vs) = (row_strided(x) for x in (grad_out, q, k, v))
    pos = None if pos_weights is None else pos_weights.contiguous()
    time = None if time_weights is None else time_weights.contiguous()
    part = (pos_size if pos_grad else 0) + (4 * num_buckets if time_grad else 0)
    partial = q.new_empty(max(1, (layout.offsets.numel() - 1) * heads * part))
    library().genrec_hstu_backward_f32(
        g.data_ptr(), gs, q.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), vs,
        layout.offsets.data_ptr(), layout.offsets.numel() - 1, heads, dqk, dv, max_seq_len,
        alpha, int(causal), pointer(layout.first_candidate), pointer(pos), pos_size,
        pointer(time), num_buckets, pointer(layout.buckets), layout.square_offsets.data_ptr(),
        dq.data_ptr(), dk.data_ptr(), dvv.data_ptr(), d_pos.data_ptr() if pos_grad else None,
        d_time.data_ptr() if time_grad else None, partial.data_ptr(), torch.get_num_threads())
    return dq, dk, dvv, d_pos, d_time


@_backward_op.register_fake
def _(grad_out, q, k, v, seq_offsets, pos_weights, time_weights, timestamps,
      query_timestamps, num_candidates, max_seq_len, alpha, causal, pos_grad, time_grad):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(pos_weights.numel() if pos_grad else 0),
            q.new_empty(time_weights.numel() if time_grad else 0))


def _setup_context(ctx, inputs, output):
    (q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
     num_candidates, max_seq_len, alpha, causal) = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, seq_offsets, pos_weights, time_weights, timestamps,
                          query_timestamps, num_candidates)
    ctx.scalars = (max_seq_len, alpha, causal)


def _autograd_backward(ctx, grad_out):
    if grad_out is None:  # the output did not reach the loss
        return (None,) * 12
    q, k, v, seq_offsets, pos_weights, time_weights, ts, qts, cands = ctx.saved_tensors
    needs = ctx.needs_input_grad
    pos_grad = pos_weights is not None and needs[4]
    time_grad = time_weights is not None and needs[5]
    dq, dk, dv, d_pos, d_time = torch.ops.genrec.hstu_attention_native_backward(
        grad_out, q, k, v, seq_offsets, pos_weights, time_weights, ts, qts, cands,
        *ctx.scalars, pos_grad, time_grad)
    return (dq, dk, dv, None, d_pos if pos_grad else None, d_time if time_grad else None,
            None, None, None, None, None, None)


_forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def hstu_attention_native(q, k, v, seq_offsets, max_seq_len, alpha, pos_weights=None,
                          time_weights=None, timestamps=None, query_timestamps=None,
                          num_candidates=None, causal=True) -> torch.Tensor:
    """``hstu_attention_reference`` for float32 CPU tensors, fused in C++; same arguments.

    Returns [T, H, Dv]; differentiable in q, k, v, pos_weights and time_weights (once).
    Callers check ``usable`` first (``cpu.hstu_attention_cpu`` does).
    """
    return torch.ops.genrec.hstu_attention_native(
        q, k, v, seq_offsets, pos_weights, time_weights, timestamps, query_timestamps,
        num_candidates, int(max_seq_len), float(alpha), bool(causal))


def hstu_attention_last(q_last, k, v, seq_offsets, max_seq_len, alpha, pos_weights, time_weights,
                        timestamps, query_timestamps) -> torch.Tensor:
    """[B, H, Dv] = ``last.hstu_attention_last`` for validated fp32 CPU inputs, no autograd:
    each sequence's last row of the forward kernel, its time buckets computed in O(n)."""
    batch, heads, dqk = q_last.shape
    dv = v.shape[2]
    out = new_output((batch, heads, dv), q_last)
    if batch == 0:
        return out
    offsets = seq_offsets.long().contiguous()
    (q_last, qs), (k, ks), (v, vs) = (row_strided(x) for x in (q_last, k, v))
    pos = None if pos_weights is None else pos_weights.contiguous()
    time = None if time_weights is None else time_weights.contiguous()
    ts = qts = edges = None
    if time is not None:
        ts, qts = timestamps.long().contiguous(), query_timestamps.long().contiguous()
        edges = thresholds()
    library().genrec_hstu_forward_last_f32(
        q_last.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), vs, offsets.data_ptr(), batch,
        heads, dqk, dv, max_seq_len, alpha, pointer(pos), 0 if pos is None else pos.numel(),
        pointer(time), 0 if time is None else time.numel(), pointer(ts), pointer(qts),
        pointer(edges), 0 if edges is None else edges.numel(), out.data_ptr(),
        torch.get_num_threads())
    return out
