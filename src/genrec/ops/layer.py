"""One whole HSTU layer at inference, fused per sequence on CPU.

Shape legend: T tokens, B sequences, d model width, H heads, dqk / dv per-head widths.

    U, V, Q, K = split(SiLU(LayerNorm(x) W1ᵀ))                     W1 [H(2dv + 2dqk), d]
    AV         = seq_scale ⊙ hstu_attention(Q, K, V, …)             [T, H, dv]
    out        = x + (LayerNorm(AV) ⊙ U) W2ᵀ + b2                   W2 [d, H·dv], b2 [d]

``hstu_layer_reference`` writes it with the reference ops and is the specification.
``hstu_layer`` composes the fast ops (``genrec.ops.dense``, ``hstu_attention``), which is what
training differentiates; where nothing needs a gradient, the tensors are fp32 on the CPU and
there are at least 4 sequences per thread, one native call (``genrec_hstu_layer_forward_f32``
in ``csrc/attention.cpp``) runs the layer a sequence at a time instead: a thread projects
the sequence's rows, attends and applies the output step while its U, V, Q, K (160 KB for 200
tokens of HSTU-large) stay in its cache, where the unfused steps write and read them back as
[T, 200] buffers in memory. Same operations in the same order as the fast composition, so the
same bits; evaluation and serving take this path.

``hstu_layer_last`` is the layer for each sequence's last token only (``hstu_layer(…)[last]``),
the last layer of a model that ranks from its last position: keys and values of every token,
queries, attention and the output step for the last tokens. Natively, a task per sequence
projects its V, K into the thread's cache and attends from there
(``genrec_hstu_layer_last_f32``).
"""

from __future__ import annotations

import torch

from genrec.ops.attention import hstu_attention, hstu_attention_last
from genrec.ops.attention import native as native_attention
from genrec.ops.attention import pick_backend as attention_backend
from genrec.ops.attention.memo import last_batch
from genrec.ops.attention.reference import hstu_attention_reference
from genrec.ops.attention.validation import last_token_offsets, validate
from genrec.ops.dense import (
    layer_norm_gate_linear,
    layer_norm_gate_linear_reference,
    layer_norm_linear_silu,
    layer_norm_linear_silu_reference,
)

SEQUENCES_PER_THREAD = 4  # below this a task per sequence leaves threads idle: unfused steps


def hstu_layer_reference(x, uvqk_weight, output_weight, output_bias, seq_offsets,
                         max_seq_len, *, num_heads, attention_dim, linear_dim, alpha=1.0,
                         pos_weights=None, time_weights=None, timestamps=None,
                         query_timestamps=None, num_candidates=None, seq_scale=None,
                         causal=True, eps) -> torch.Tensor:
    """The layer written with the reference ops (any dtype, device, autograd)."""
    return _compose(x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len,
                    num_heads, attention_dim, linear_dim, alpha, pos_weights, time_weights,
                    timestamps, query_timestamps, num_candidates, seq_scale, causal, eps,
                    reference=True)


def hstu_layer(x: torch.Tensor, uvqk_weight: torch.Tensor, output_weight: torch.Tensor,
               output_bias: torch.Tensor | None, seq_offsets: torch.Tensor, max_seq_len: int, *,
               num_heads: int, attention_dim: int, linear_dim: int, alpha: float = 1.0,
               pos_weights: torch.Tensor | None = None,
               time_weights: torch.Tensor | None = None,
               timestamps: torch.Tensor | None = None,
               query_timestamps: torch.Tensor | None = None,
               num_candidates: torch.Tensor | None = None,
               seq_scale: torch.Tensor | None = None, causal: bool = True,
               eps: float) -> torch.Tensor:
    """out [T, d] = x + the HSTU layer's update (module docstring); differentiable.

    Args:
        x: [T, d] the layer's input; seq_offsets [B+1] delimits its sequences.
        uvqk_weight: [H·(2dv + 2dqk), d], rows in the order U, V, Q, K (bias-free).
        output_weight: [d, H·dv]; output_bias: [d] or None.
        max_seq_len … num_candidates, causal: as ``hstu_attention``.
        seq_scale: [B] or None: sequence b's attention output is multiplied by seq_scale[b]
            (cast to x's dtype), e.g. N / n_b for per-length normalisation.
        eps: the layer norms' epsilon.
    """
    _check_sizes("hstu_layer", num_heads, attention_dim, linear_dim)
    if _native_fits(x, uvqk_weight, output_weight, output_bias, seq_offsets, pos_weights,
                    time_weights, seq_scale):
        return _native(x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len,
                       num_heads, attention_dim, linear_dim, alpha, pos_weights, time_weights,
                       timestamps, query_timestamps, num_candidates, seq_scale, causal, eps)
    return _compose(x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len,
                    num_heads, attention_dim, linear_dim, alpha, pos_weights, time_weights,
                    timestamps, query_timestamps, num_candidates, seq_scale, causal, eps,
                    reference=False)


def _compose(x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len, heads, dqk,
             dv, alpha, pos_weights, time_weights, timestamps, query_timestamps,
             num_candidates, seq_scale, causal, eps, *, reference: bool) -> torch.Tensor:
    project = layer_norm_linear_silu_reference if reference else layer_norm_linear_silu
    attend = hstu_attention_reference if reference else hstu_attention
    tokens = x.shape[0]
    u, v, q, k = torch.split(project(x, uvqk_weight, eps),
                             [heads * dv, heads * dv, heads * dqk, heads * dqk], dim=-1)
    av = attend(q.reshape(tokens, heads, dqk), k.reshape(tokens, heads, dqk),
                v.reshape(tokens, heads, dv), seq_offsets, max_seq_len, alpha=alpha,
                pos_weights=pos_weights, time_weights=time_weights, timestamps=timestamps,
                query_timestamps=query_timestamps, num_candidates=num_candidates,
                causal=causal)
    if seq_scale is not None:
        lengths = seq_offsets[1:] - seq_offsets[:-1]
        rows = torch.repeat_interleave(seq_scale.to(av.dtype), lengths, output_size=tokens)
        av = av * rows[:, None, None]
    av = av.reshape(tokens, heads * dv)
    if reference:
        return layer_norm_gate_linear_reference(av, u, output_weight, output_bias, x, eps)
    return layer_norm_gate_linear(av, u, output_weight, output_bias, x, eps=eps)


def _native_fits(x, uvqk_weight, output_weight, output_bias, seq_offsets, pos_weights,
                 time_weights, seq_scale) -> bool:
    """fp32 CPU tensors, nothing to differentiate, not compiling, the CPU attention backend
    (``GENREC_ATTENTION_BACKEND`` may name another), the library built, and sequences enough
    for a task per sequence."""
    floats = [t for t in (x, uvqk_weight, output_weight, output_bias, pos_weights, time_weights)
              if t is not None]
    differentiable = floats if seq_scale is None else [*floats, seq_scale]
    return (native_attention.ENABLED and not torch.compiler.is_compiling()
            and all(isinstance(t, torch.Tensor) and t.dtype == torch.float32
                    and t.device.type == "cpu" for t in floats)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in differentiable))
            and (seq_scale is None or seq_scale.device.type == "cpu") and x.dim() == 2
            and (output_bias is None or output_bias.numel() != 1  # a broadcast bias: composed
                 or output_bias.shape == x.shape[1:])
            and attention_backend(None, x.device) == "cpu"  # GENREC_ATTENTION_BACKEND
            and isinstance(seq_offsets, torch.Tensor) and seq_offsets.device.type == "cpu"
            and seq_offsets.numel() - 1 >= SEQUENCES_PER_THREAD * torch.get_num_threads()
            and native_attention.library() is not None)


def _native(x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len, heads, dqk,
            dv, alpha, pos_weights, time_weights, timestamps, query_timestamps, num_candidates,
            seq_scale, causal, eps) -> torch.Tensor:
    tokens, d = x.shape
    batch = _check_inputs("hstu_layer", x, uvqk_weight, output_weight, output_bias,
                          seq_offsets, max_seq_len, heads, dqk, dv, pos_weights, time_weights,
                          timestamps, query_timestamps, num_candidates, seq_scale)
    layout = native_attention.layout_for(
        seq_offsets, num_candidates, timestamps, query_timestamps, causal=causal,
        num_buckets=0 if time_weights is None else time_weights.numel())
    x, w1, w2 = x.contiguous(), uvqk_weight.contiguous(), output_weight.contiguous()
    b2 = None if output_bias is None else output_bias.contiguous()
    pos = None if pos_weights is None else pos_weights.contiguous()
    time = None if time_weights is None else time_weights.contiguous()
    scale = None if seq_scale is None else seq_scale.to(torch.float32).contiguous()
    out = native_attention.new_output((tokens, d), x)
    if tokens == 0:
        return out
    pointer = native_attention.pointer
    native_attention.library().genrec_hstu_layer_forward_f32(
        x.data_ptr(), d, w1.data_ptr(), w2.data_ptr(), pointer(b2),
        layout.offsets.data_ptr(), batch, heads, dqk, dv, max_seq_len, alpha, int(causal),
        pointer(layout.first_candidate), pointer(pos), 0 if pos is None else pos.numel(),
        pointer(time), 0 if time is None else time.numel(), pointer(layout.buckets),
        layout.square_offsets.data_ptr(), pointer(scale), eps, out.data_ptr(),
        torch.get_num_threads())
    return out


def hstu_layer_last_reference(x, uvqk_weight, output_weight, output_bias, seq_offsets,
                              max_seq_len, *, num_heads, attention_dim, linear_dim, alpha=1.0,
                              pos_weights=None, time_weights=None, timestamps=None,
                              query_timestamps=None, seq_scale=None, eps) -> torch.Tensor:
    """[B, d]: ``hstu_layer_reference`` at each sequence's last token."""
    out = hstu_layer_reference(
        x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len,
        num_heads=num_heads, attention_dim=attention_dim, linear_dim=linear_dim, alpha=alpha,
        pos_weights=pos_weights, time_weights=time_weights, timestamps=timestamps,
        query_timestamps=query_timestamps, seq_scale=seq_scale, eps=eps)
    return out[seq_offsets[1:] - 1]


def hstu_layer_last(x: torch.Tensor, uvqk_weight: torch.Tensor, output_weight: torch.Tensor,
                    output_bias: torch.Tensor | None, seq_offsets: torch.Tensor,
                    max_seq_len: int, *, num_heads: int, attention_dim: int, linear_dim: int,
                    alpha: float = 1.0, pos_weights: torch.Tensor | None = None,
                    time_weights: torch.Tensor | None = None,
                    timestamps: torch.Tensor | None = None,
                    query_timestamps: torch.Tensor | None = None,
                    seq_scale: torch.Tensor | None = None, eps: float) -> torch.Tensor:
    """[B, d] = ``hstu_layer(...)[last]`` at each sequence's last token (causal, no
    candidates; every sequence has at least one token); arguments as ``hstu_layer``."""
    _check_sizes("hstu_layer_last", num_heads, attention_dim, linear_dim)
    heads, dqk, dv = num_heads, attention_dim, linear_dim
    hv, hqk = heads * dv, heads * dqk
    # checked on every call (not remembered with the batch): the last tokens are read by them
    seq_offsets = last_token_offsets("hstu_layer_last", seq_offsets, x.shape[0])
    last = seq_offsets[1:] - 1
    w_u, w_v, w_q, w_k = torch.split(uvqk_weight, [hv, hv, hqk, hqk])
    uq = layer_norm_linear_silu(x[last], torch.cat([w_u, w_q]), eps)  # [B, H·dv + H·dqk]
    if _native_fits(x, uvqk_weight, output_weight, output_bias, seq_offsets, pos_weights,
                    time_weights, seq_scale):
        return _native_last(x, uq, torch.cat([w_v, w_k]), output_weight, output_bias,
                            seq_offsets, max_seq_len, heads, dqk, dv, alpha, pos_weights,
                            time_weights, timestamps, query_timestamps, seq_scale, eps)
    u, q = torch.split(uq, [hv, hqk], dim=-1)
    v, k = torch.split(layer_norm_linear_silu(x, torch.cat([w_v, w_k]), eps), [hv, hqk], dim=-1)
    av = hstu_attention_last(
        q.reshape(-1, heads, dqk), k.reshape(-1, heads, dqk), v.reshape(-1, heads, dv),
        seq_offsets, max_seq_len, alpha=alpha, pos_weights=pos_weights,
        time_weights=time_weights, timestamps=timestamps, query_timestamps=query_timestamps)
    if seq_scale is not None:
        av = av * seq_scale.to(av.dtype)[:, None, None]
    return layer_norm_gate_linear(av.reshape(-1, hv), u, output_weight, output_bias, x[last],
                                  eps=eps)


def _native_last(x, uq, w_vk, output_weight, output_bias, seq_offsets, max_seq_len, heads, dqk,
                 dv, alpha, pos_weights, time_weights, timestamps, query_timestamps, seq_scale,
                 eps) -> torch.Tensor:
    """seq_offsets: int64, contiguous, checked by hstu_layer_last (``last_token_offsets``)."""
    d = x.shape[1]
    batch = _check_inputs("hstu_layer_last", x, None, output_weight, output_bias, seq_offsets,
                          max_seq_len, heads, dqk, dv, pos_weights, time_weights, timestamps,
                          query_timestamps, None, seq_scale)
    x, uq, w_vk, w2 = x.contiguous(), uq.contiguous(), w_vk.contiguous(), output_weight.contiguous()
    b2 = None if output_bias is None else output_bias.contiguous()
    pos = None if pos_weights is None else pos_weights.contiguous()
    time = None if time_weights is None else time_weights.contiguous()
    scale = None if seq_scale is None else seq_scale.to(torch.float32).contiguous()
    ts = qts = edges = None
    if time is not None:
        ts, qts = timestamps.long().contiguous(), query_timestamps.long().contiguous()
        edges = native_attention.thresholds()
    out = native_attention.new_output((batch, d), x)
    if batch == 0:
        return out
    pointer = native_attention.pointer
    native_attention.library().genrec_hstu_layer_last_f32(
        x.data_ptr(), d, w_vk.data_ptr(), uq.data_ptr(), uq.stride(0), w2.data_ptr(),
        pointer(b2), seq_offsets.data_ptr(), batch, heads, dqk, dv, max_seq_len, alpha,
        pointer(pos), 0 if pos is None else pos.numel(), pointer(time),
        0 if time is None else time.numel(), pointer(ts), pointer(qts), pointer(edges),
        0 if edges is None else edges.numel(), pointer(scale), eps, out.data_ptr(),
        torch.get_num_threads())
    return out


def _check_sizes(op: str, heads: int, dqk: int, dv: int) -> None:
    if min(heads, dqk, dv) < 1:
        raise ValueError(f"{op}: a layer needs at least one head and one feature per head, got "
                         f"num_heads={heads}, attention_dim={dqk}, linear_dim={dv}")


def _check_inputs(op, x, uvqk_weight, output_weight, output_bias, seq_offsets, max_seq_len,
                  heads, dqk, dv, pos_weights, time_weights, timestamps, query_timestamps,
                  num_candidates, seq_scale) -> int:
    """The weights' shapes, the attention's checks (on zero-stride stand-ins of Q, K, V's
    shapes) and seq_scale's; returns the number of sequences."""
    tokens, d = x.shape
    width = heads * (2 * dv + 2 * dqk)
    if uvqk_weight is not None and uvqk_weight.shape != (width, d):
        raise ValueError(f"{op}: uvqk_weight must be [H·(2dv + 2dqk), d] = [{width}, {d}], "
                         f"got {tuple(uvqk_weight.shape)}")
    if output_weight.shape != (d, heads * dv):
        raise ValueError(f"{op}: output_weight must be [d, H·dv] = [{d}, {heads * dv}], "
                         f"got {tuple(output_weight.shape)}")
    if output_bias is not None and output_bias.shape != (d,):
        raise ValueError(f"{op}: output_bias must be [d] = [{d}], "
                         f"got {tuple(output_bias.shape)}")
    # every layer of a model checks the same batch: the attention's checks run once for these
    # tensors and these sizes (the tables' too: each layer has its own, of one size and type)
    tables = tuple(None if t is None else (t.dim(), t.numel(), t.dtype, t.device)
                   for t in (pos_weights, time_weights))
    last_batch(_checked, (seq_offsets, timestamps, query_timestamps, num_candidates),
               (tokens, heads, dqk, dv, max_seq_len, x.dtype, x.device, tables),
               lambda: _check_attention_inputs(x, heads, dqk, dv, seq_offsets, max_seq_len,
                                               pos_weights, time_weights, timestamps,
                                               query_timestamps, num_candidates))
    batch = seq_offsets.numel() - 1
    if seq_scale is not None and seq_scale.shape != (batch,):
        raise ValueError(f"{op}: seq_scale must be [B] = [{batch}], "
                         f"got {tuple(seq_scale.shape)}")
    return batch


_checked: list = [None]


def _check_attention_inputs(x, heads, dqk, dv, seq_offsets, max_seq_len, pos_weights,
                            time_weights, timestamps, query_timestamps, num_candidates) -> bool:
    """``validate`` on zero-stride stand-ins of Q, K, V's shapes."""
    stand_in = x.new_zeros(1)
    q_like = stand_in.as_strided((x.shape[0], heads, dqk), (0, 0, 0))
    v_like = stand_in.as_strided((x.shape[0], heads, dv), (0, 0, 0))
    validate(q_like, q_like, v_like, seq_offsets, max_seq_len, pos_weights, time_weights,
             timestamps, query_timestamps, num_candidates)
    return True
