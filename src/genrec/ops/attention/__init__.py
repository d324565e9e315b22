"""HSTU attention over jagged sequences: one public op, two backends (SPEC §5).

``hstu_attention`` dispatches to the fused Triton kernel on CUDA and to the PyTorch reference
elsewhere; ``backend="torch"|"triton"`` or ``GENREC_ATTENTION_BACKEND`` forces one.
"""

from __future__ import annotations

import os

import torch

from genrec.ops.attention.reference import hstu_attention_reference, time_buckets

BACKENDS = ("torch", "triton")


def _pick_backend(backend: str | None, device: torch.device) -> str:
    choice = backend or os.environ.get("GENREC_ATTENTION_BACKEND") or None
    if choice is None:
        return "triton" if device.type == "cuda" else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"unknown attention backend {choice!r}; choose one of {BACKENDS}")
    return choice


def hstu_attention(
    q: torch.Tensor,
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
    num_candidates: torch.Tensor | None = None,
    causal: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """SiLU(alpha·QKᵀ + bias) / max_seq_len · V per jagged sequence.

    Args:
        q, k: [T, H, Dqk]; v: [T, H, Dv]; seq_offsets: [B+1] int.
        max_seq_len: N, the normaliser and the centre of the position table (len 2N − 1).
        pos_weights: [2N − 1] or None; time_weights: [num_buckets] or None (then timestamps
            and query_timestamps, both [T] int, are required).
        num_candidates: [B] int or None: the last c_b tokens of sequence b see only the
            non-candidates and themselves.
    Returns: [T, H, Dv].
    """
    if time_weights is not None and (timestamps is None or query_timestamps is None):
        raise ValueError("time_weights needs timestamps and query_timestamps")
    which = _pick_backend(backend, q.device)
    args = (q, k, v, seq_offsets, max_seq_len, alpha, pos_weights, time_weights, timestamps,
            query_timestamps, num_candidates, causal)
    if which == "triton":
        from genrec.ops.attention.kernel import hstu_attention_triton

        return hstu_attention_triton(*args)
    return hstu_attention_reference(*args)


__all__ = ["hstu_attention", "hstu_attention_reference", "time_buckets", "BACKENDS"]
