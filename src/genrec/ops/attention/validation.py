"""Input checks of ``hstu_attention``, shared by every backend."""

from __future__ import annotations

import numbers

import torch

from genrec.ops.attention.memo import last_batch


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


_stats_slot: list = [None]


def _layout_stats(seq_offsets: torch.Tensor, num_candidates: torch.Tensor | None) -> list[int]:
    """[first offset, last offset, shortest, longest (, fewest candidates, most candidates
    beyond their sequence's length)]: one read back to the host, once per batch (every layer
    validates the same seq_offsets)."""
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    stats = [seq_offsets[0], seq_offsets[-1], lengths.min(), lengths.max()]
    if num_candidates is not None:
        stats += [num_candidates.min(), (num_candidates.to(lengths) - lengths).max()]
    return torch.stack([s.long() for s in stats]).tolist()


def validate(q, k, v, seq_offsets, max_seq_len, pos_weights, time_weights, timestamps,
             query_timestamps, num_candidates) -> int:
    """Check shapes, dtypes, devices and the jagged layout; return the longest sequence.

    Reads a few statistics of seq_offsets and num_candidates back to the host (one sync per
    batch: they are remembered for the same tensors, unmodified).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            _fail(f"{name} must be a [T, H, D] tensor, got "
                  f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape[1] < 1 or q.shape[2] < 1 or v.shape[2] < 1:
        _fail(f"q and v need at least one head and one feature, got q {tuple(q.shape)}, "
              f"v {tuple(v.shape)}")
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
    if num_candidates is not None:
        _check_int_vector("num_candidates", num_candidates, batch, q.device)
    first, last, shortest, longest, *cand = last_batch(
        _stats_slot, (seq_offsets, num_candidates), (),
        lambda: _layout_stats(seq_offsets, num_candidates))
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


def last_token_offsets(op: str, seq_offsets: torch.Tensor, tokens: int) -> torch.Tensor:
    """seq_offsets as a contiguous int64 tensor, checked now rather than remembered (the
    last-token ops index each sequence's last token by it): it starts at 0, ends at `tokens`,
    and every sequence has a token. One read back to the host."""
    offsets = seq_offsets.long().contiguous()
    if offsets.numel() > 1:
        first, last, shortest = torch.stack(
            [offsets[0], offsets[-1], (offsets[1:] - offsets[:-1]).min()]).tolist()
        if shortest < 1:
            raise ValueError(f"{op}: every sequence needs a last token: seq_offsets has an "
                             "empty sequence")
        if first != 0 or last != tokens:
            raise ValueError(f"{op}: seq_offsets must start at 0 and end at T = {tokens}, got "
                             f"{first} … {last}")
    return offsets
