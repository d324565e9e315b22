"""HSTU attention over jagged sequences: one public op, three backends (SPEC §5).

``hstu_attention`` validates its inputs (shapes, dtypes, devices, the jagged layout, candidate
counts, the position table's reach), then dispatches to the fused Triton kernel
(``kernel.py``) on CUDA, to the length-grouped, fused CPU path (``cpu.py``) on CPU, and to the
plain PyTorch reference (``reference.py``, the specification) only when asked;
``backend="torch"|"cpu"|"triton"`` or the environment variable ``GENREC_ATTENTION_BACKEND``
forces one (the argument wins). On CPU tensors the Triton backend needs ``TRITON_INTERPRET=1`` set
before Triton is imported (the tests do this). See NOTES.md for the kernel's design and status.
"""

from __future__ import annotations

import numbers
import os

import torch

from genrec.ops.attention.cpu import hstu_attention_cpu
from genrec.ops.attention.reference import hstu_attention_reference, time_buckets

BACKENDS = ("torch", "cpu", "triton")


def _pick_backend(backend: str | None, device: torch.device) -> str:
    choice = backend or os.environ.get("GENREC_ATTENTION_BACKEND") or None
    if choice is None:
        return {"cuda": "triton", "cpu": "cpu"}.get(device.type, "torch")
    if choice not in BACKENDS:
        source = "backend=" if backend else "GENREC_ATTENTION_BACKEND="
        raise ValueError(f"hstu_attention: unknown backend {source}{choice!r}; "
                         f"choose one of {BACKENDS}")
    return choice


def _fail(message: str) -> None:
    raise ValueError(f"hstu_attention: {message}")


def _check_int_vector(name: str, t: torch.Tensor | None, size: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() != size:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        _fail(f"{name} must be a 1-D tensor of {size} entries, got {got}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        _fail(f"{name} must hold integers, got {t.dtype}")
    if t.device != device:
        _fail(f"{name} is on {t.device} but q is on {device}; move it to {device}")


def validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
             query_timestamps, num_candidates) -> int:
    """Check shapes, dtypes, devices and the jagged layout; return the longest sequence.

    Reads a few statistics of seq_offsets and num_candidates back to the host (one sync).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            _fail(f"{name} must be a [T, H, D] tensor, got "
                  f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != q.shape:
        _fail(f"k must have q's shape [T, H, Dqk] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:2] != q.shape[:2]:
        _fail(f"v must be [T, H, Dv] with T, H = {tuple(q.shape[:2])}, got {tuple(v.shape)}")
    if not q.dtype.is_floating_point or k.dtype != q.dtype or v.dtype != q.dtype:
        _fail(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        _fail(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, numbers.Integral) \
            or max_seq_len < 1:
        _fail(f"max_seq_len must be a positive int, got {max_seq_len!r}")
    T = q.shape[0]
    if not isinstance(seq_offsets, torch.Tensor) or seq_offsets.dim() != 1 \
            or seq_offsets.numel() < 1:
        _fail("seq_offsets must be a 1-D [B+1] tensor of token offsets (0, n_0, n_0+n_1, …)")
    batch = seq_offsets.numel() - 1
    _check_int_vector("seq_offsets", seq_offsets, batch + 1, q.device)
    if pos_weights is not None and (pos_weights.dim() != 1
                                    or pos_weights.numel() != 2 * max_seq_len - 1):
        _fail(f"pos_weights must be [2·max_seq_len − 1] = [{2 * max_seq_len - 1}], "
              f"got {tuple(pos_weights.shape)}")
    if time_weights is not None:
        if time_weights.dim() != 1 or time_weights.numel() < 1:
            _fail(f"time_weights must be a non-empty 1-D table, got {tuple(time_weights.shape)}")
        if timestamps is None or query_timestamps is None:
            _fail("time_weights needs timestamps and query_timestamps ([T] int each)")
        _check_int_vector("timestamps", timestamps, T, q.device)
        _check_int_vector("query_timestamps", query_timestamps, T, q.device)
    for name, table in (("pos_weights", pos_weights), ("time_weights", time_weights)):
        if table is not None and (not table.dtype.is_floating_point or table.device != q.device):
            _fail(f"{name} must be a floating tensor on {q.device}, got {table.dtype} on "
                  f"{table.device}")
    if batch == 0:
        if T:
            _fail(f"seq_offsets describes no sequence but q has {T} tokens")
        return 0
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    stats = [seq_offsets[0], seq_offsets[-1], lengths.min(), lengths.max()]
    if num_candidates is not None:
        _check_int_vector("num_candidates", num_candidates, batch, q.device)
        stats += [num_candidates.min(), (num_candidates.to(lengths) - lengths).max()]
    first, last, shortest, longest, *cand = torch.stack([s.long() for s in stats]).tolist()
    if first != 0 or last != T:
        _fail(f"seq_offsets must start at 0 and end at T = {T}, got {first} … {last}")
    if shortest < 0:
        _fail("seq_offsets must be non-decreasing (a sequence has negative length)")
    if cand and (cand[0] < 0 or cand[1] > 0):
        _fail("num_candidates must lie in [0, length of its sequence]")
    if pos_weights is not None and longest > max_seq_len:
        _fail(f"the longest sequence has {longest} tokens but max_seq_len is {max_seq_len}: "
              f"the position table (2·max_seq_len − 1 entries) cannot index it; raise "
              f"max_seq_len or truncate the sequences")
    return longest


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
    longest = validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
                       query_timestamps, num_candidates)
    which = _pick_backend(backend, q.device)
    args = (q, k, v, seq_offsets, max_seq_len, alpha, pos_weights, time_weights, timestamps,
            query_timestamps, num_candidates, causal)
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
    if which == "cpu":
        return hstu_attention_cpu(*args)
    return hstu_attention_reference(*args)


__all__ = ["hstu_attention", "hstu_attention_cpu", "hstu_attention_reference", "time_buckets",
           "validate", "BACKENDS"]
