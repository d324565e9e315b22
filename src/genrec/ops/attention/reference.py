"""PyTorch reference of HSTU attention: the CPU path and the specification of the kernel.

Per sequence b with n_b tokens (SPEC §3, §5):

    out_i = Σ_j  SiLU(alpha · q_i·k_j + bias(i, j)) / max_seq_len · v_j     over allowed j

    bias(i, j) = pos_weights[j − i + max_seq_len − 1]
               + time_weights[bucket(query_timestamps[i] − timestamps[j])]
    bucket(x)  = clamp(floor(log(max(|x|, 1)) / 0.301), 0, len(time_weights) − 1)

allowed: j ≤ i (causal); and when the last c_b tokens are candidates (M-FALCON), a candidate
attends to the non-candidate tokens and to itself only.

Shapes: q, k [T, H, Dqk]; v [T, H, Dv]; seq_offsets [B+1]; out [T, H, Dv]. Padded to
[B, L, ...] internally (L = longest sequence), vectorised, float64-capable, any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.ops.jagged import padded_index

TIME_BUCKET_BASE = 0.301


def time_buckets(gap: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """bucket(x) = clamp(floor(log(max(|x|, 1)) / 0.301), 0, num_buckets − 1), as int64."""
    g = gap.abs().to(torch.float64).clamp(min=1.0)
    return torch.floor(torch.log(g) / TIME_BUCKET_BASE).clamp(0, num_buckets - 1).long()


def bucket_thresholds(count: int) -> torch.Tensor:
    """[count] int64: thresholds[k] = the smallest gap g ≥ 1 with time bucket ≥ k (unclamped).

    Lets fp32 code (the Triton kernel) land exactly on ``time_buckets`` near bucket edges: it
    estimates the bucket in fp32 and, only when the estimate is within rounding of an edge,
    compares the integer gap with the threshold. Exact for gaps below 2**53.
    """
    k = torch.arange(count, dtype=torch.float64)
    approx = torch.exp(k * TIME_BUCKET_BASE).clamp(max=2.0**62).ceil().long()
    window = (approx[:, None] + torch.arange(-512, 513)[None, :]).clamp(min=1)  # [count, 1025]
    reached = time_buckets(window, 2**62) >= k[:, None].long()
    return torch.where(reached, window, torch.iinfo(torch.int64).max).min(dim=1).values


def attention_mask(
    lengths: torch.Tensor, max_len: int, num_candidates: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """[B, L, L] bool: may query i attend to key j."""
    pos = torch.arange(max_len, device=lengths.device)
    i, j = pos[:, None], pos[None, :]
    valid = (pos[None, :] < lengths[:, None])  # [B, L]
    mask = valid[:, :, None] & valid[:, None, :]
    if causal:
        mask = mask & (j <= i)[None]
    if num_candidates is not None:
        first_cand = (lengths - num_candidates.to(lengths))[:, None, None]  # [B, 1, 1]
        both_cand = (i[None] >= first_cand) & (j[None] >= first_cand)
        mask = mask & ~(both_cand & (i != j)[None])
    return mask


def relative_bias(
    max_len: int,
    max_seq_len: int,
    pos_weights: torch.Tensor | None,
    time_weights: torch.Tensor | None,
    timestamps_padded: torch.Tensor | None,
    query_timestamps_padded: torch.Tensor | None,
) -> torch.Tensor | None:
    """[B or 1, L, L] bias(i, j), or None when neither table is given."""
    bias = None
    if pos_weights is not None:
        pos = torch.arange(max_len, device=pos_weights.device)
        rel = (pos[None, :] - pos[:, None] + max_seq_len - 1).clamp(0, pos_weights.numel() - 1)
        bias = pos_weights[rel][None]
    if time_weights is not None:
        gap = query_timestamps_padded[:, :, None] - timestamps_padded[:, None, :]
        t = time_weights[time_buckets(gap, time_weights.numel())]
        bias = t if bias is None else bias + t
    return bias


def hstu_attention_reference(
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
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    max_len = int(lengths.max()) if len(lengths) else 0
    if max_len == 0:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    index, valid = padded_index(seq_offsets, max_len)
    qp, kp, vp = q[index], k[index], v[index]  # [B, L, H, D]
    logits = alpha * torch.einsum("bihd,bjhd->bhij", qp, kp)
    ts_p = qts_p = None
    if time_weights is not None:
        ts_p, qts_p = timestamps[index], query_timestamps[index]
    bias = relative_bias(max_len, max_seq_len, pos_weights, time_weights, ts_p, qts_p)
    if bias is not None:
        logits = logits + bias[:, None].to(logits.dtype)
    mask = attention_mask(lengths, max_len, num_candidates, causal)
    weights = F.silu(logits) * (mask[:, None].to(logits.dtype) / max_seq_len)
    out_p = torch.einsum("bhij,bjhd->bihd", weights, vp)  # [B, L, H, Dv]
    return out_p[valid]
