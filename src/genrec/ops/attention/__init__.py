"""HSTU attention over jagged sequences: one public op, three backends (SPEC §5).

``hstu_attention`` validates its inputs (shapes, dtypes, devices, the jagged layout, candidate
counts, the position table's reach), then dispatches to the fused Triton kernel
(``kernel.py``) on CUDA, to the length-grouped, fused CPU path (``cpu.py``) on CPU, and to the
plain PyTorch reference (``reference.py``, the specification) only when asked;
``backend="torch"|"cpu"|"triton"`` or the environment variable ``GENREC_ATTENTION_BACKEND``
forces one (the argument wins). ``hstu_attention_last`` (``last.py``) is the same function at
each sequence's last token only, for models that need no other output (evaluation, serving).
On CPU tensors the Triton backend needs ``TRITON_INTERPRET=1`` set before Triton is imported
(the tests do this). See NOTES.md for the kernel's design and status.
"""

from __future__ import annotations

import os

import torch

from genrec.ops.attention.cpu import hstu_attention_cpu
from genrec.ops.attention.last import hstu_attention_last
from genrec.ops.attention.reference import hstu_attention_reference, time_buckets
from genrec.ops.attention.validation import _fail, validate

BACKENDS = ("torch", "cpu", "triton")


def pick_backend(backend: str | None, device: torch.device) -> str:
    """The backend `hstu_attention` runs on `device`: `backend`, else GENREC_ATTENTION_BACKEND,
    else the device's default (triton on CUDA, cpu on the CPU, torch elsewhere)."""
    choice = backend or os.environ.get("GENREC_ATTENTION_BACKEND") or None
    if choice is None:
        return {"cuda": "triton", "cpu": "cpu"}.get(device.type, "torch")
    if choice not in BACKENDS:
        source = "backend=" if backend else "GENREC_ATTENTION_BACKEND="
        raise ValueError(f"hstu_attention: unknown backend {source}{choice!r}; "
                         f"choose one of {BACKENDS}")
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
        causal: False lets every token see its whole sequence (the candidate rule still holds).
        backend: "torch" (the reference), "cpu" (length-grouped and fused, any device) or
            "triton"; None picks triton on CUDA, cpu on CPU, torch elsewhere, unless
            GENREC_ATTENTION_BACKEND is set.
    Returns: [T, H, Dv].
    Raises ValueError on malformed inputs (reads a few statistics of seq_offsets to the host).
    """
    which = pick_backend(backend, q.device)
    args = (q, k, v, seq_offsets, max_seq_len, alpha, pos_weights, time_weights, timestamps,
            query_timestamps, num_candidates, causal)
    if which == "cpu":
        # a custom op that validates when it runs, so torch.compile can trace a model through it
        return hstu_attention_cpu(*args)
    longest = validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
                       query_timestamps, num_candidates)
    if which == "triton":
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            _fail(f"the triton backend takes float16, bfloat16 or float32, got {q.dtype}; "
                  f"use backend='torch' for {q.dtype}")
        try:
            from genrec.ops.attention.kernel import hstu_attention_triton
        except ImportError as err:
            raise ImportError("hstu_attention: the triton backend needs Triton "
                              "(pip install 'genrec[triton]'); or pass backend='torch'") from err
        return hstu_attention_triton(*args, max_len=longest)
    return hstu_attention_reference(*args)


__all__ = ["hstu_attention", "hstu_attention_cpu", "hstu_attention_last",
           "hstu_attention_reference", "time_buckets", "validate", "BACKENDS"]
