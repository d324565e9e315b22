"""HSTU attention at each sequence's last token only: ``hstu_attention(...)[last rows]``.

Shape legend: T tokens, B sequences (n_b tokens each, L the longest), H heads, Dqk / Dv head
dims. The last token i = n_b − 1 of sequence b sees every token of its sequence (causal):

    out_b = Σ_{j < n_b} SiLU(alpha · q_b·k_j + bias(n_b − 1, j)) / max_seq_len · v_j

The last layer of a retrieval model needs nothing else at evaluation and serving time (every
key and value, but one query per user), so this costs O(T) instead of the O(Σ n_b²) of the
full op. Plain PyTorch on a [B, L] padding: any device, float64-capable, differentiable. When
nothing needs a gradient and the inputs are fp32 on the CPU (evaluation, serving), the native
kernel's last-row function runs instead. Tests hold both to ``hstu_attention_reference`` on
random inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.ops.attention import native
from genrec.ops.attention.reference import time_buckets
from genrec.ops.attention.validation import _fail, last_token_offsets, validate
from genrec.ops.jagged import padded_index


def hstu_attention_last(
    q_last: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    *,
    alpha: float,
    pos_weights: torch.Tensor | None = None,
    time_weights: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    query_timestamps: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, H, Dv]: causal ``hstu_attention`` output at the last token of each sequence.

    Args:
        q_last: [B, H, Dqk] the query of each sequence's last token.
        k: [T, H, Dqk], v: [T, H, Dv], seq_offsets: [B+1]: every token's key and value.
        max_seq_len, alpha, pos_weights, time_weights, timestamps ([T]): as ``hstu_attention``.
        query_timestamps: [T] as ``hstu_attention`` (only the last token's entry is read).
    Every sequence must have at least one token. No candidates: a last token sees all of its
    sequence.
    """
    longest = validate(k, k, v, seq_offsets, max_seq_len, pos_weights, time_weights,
                       timestamps, query_timestamps, None)
    batch = seq_offsets.numel() - 1
    if not isinstance(q_last, torch.Tensor) or q_last.shape != (batch, *k.shape[1:]):
        got = tuple(q_last.shape) if isinstance(q_last, torch.Tensor) else type(q_last).__name__
        _fail(f"q_last must be [B, H, Dqk] = {(batch, *k.shape[1:])}, got {got}")
    if q_last.dtype != k.dtype or q_last.device != k.device:
        _fail(f"q_last must match k's dtype and device ({k.dtype}, {k.device}), got "
              f"{q_last.dtype}, {q_last.device}")
    seq_offsets = last_token_offsets("hstu_attention", seq_offsets, k.shape[0])
    lengths = seq_offsets[1:] - seq_offsets[:-1]  # [B]
    tensors = [t for t in (q_last, k, v, pos_weights, time_weights) if t is not None]
    if native.usable(q_last, k, v, pos_weights, time_weights) and not (
            torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return native.hstu_attention_last(q_last, k, v, seq_offsets, max_seq_len, alpha,
                                          pos_weights, time_weights, timestamps,
                                          query_timestamps)
    index, valid = padded_index(seq_offsets, longest)  # [B, L]
    logits = alpha * torch.einsum("bhd,blhd->bhl", q_last, k[index])  # [B, H, L]
    bias = None
    if pos_weights is not None:  # j − i + N − 1 with i = n_b − 1
        rel = torch.arange(longest, device=k.device)[None, :] - lengths[:, None] + max_seq_len
        bias = pos_weights[rel.clamp(0, pos_weights.numel() - 1)]  # [B, L]
    if time_weights is not None:
        last = seq_offsets[1:] - 1
        gap = query_timestamps[last].long()[:, None] - timestamps[index].long()  # [B, L]
        term = time_weights[time_buckets(gap, time_weights.numel())]
        bias = term if bias is None else bias + term
    if bias is not None:
        logits = logits + bias[:, None].to(logits.dtype)
    weights = F.silu(logits) * (valid[:, None].to(logits.dtype) / max_seq_len)
    return torch.einsum("bhl,blhd->bhd", weights, v[index])
