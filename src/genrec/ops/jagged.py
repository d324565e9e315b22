"""Jagged ↔ padded conversion: the one place that pads values + ``seq_offsets`` tensors."""

from __future__ import annotations

import torch


def padded_index(seq_offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index [B, L] into the jagged token axis, valid [B, L]) for padding jagged tensors.

    ``values[index]`` is the padded [B, L, ...] view (padding slots repeat token 0; mask them
    with ``valid``), and ``padded[valid]`` gives the jagged [T, ...] tensor back.
    """
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    pos = torch.arange(max_len, device=seq_offsets.device)
    valid = pos[None, :] < lengths[:, None]
    index = (seq_offsets[:-1, None] + pos[None, :]).masked_fill(~valid, 0)
    return index, valid
