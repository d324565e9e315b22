"""Jagged batches of user sequences, built once per step from the prepared arrays.

A batch is a set of *windows*: contiguous runs of one user's events whose last event is the
target of the last input. Inputs are every event of a window but its last; targets are every
event but its first (next-item prediction at every position, SPEC §2). The query time of each
input (the time at which its prediction is made, SPEC §3) is the time of its target event.

Shapes: B sequences, T input tokens in all; ``seq_offsets`` [B+1] delimits each sequence's
tokens in every per-token tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch

from genrec.data.sequences import SequenceData, _ranges

Protocol = Literal["paper", "strict"]
Split = Literal["train", "valid", "test"]


@dataclass
class JaggedBatch:
    item_ids: torch.Tensor  # [T] int64, input items (never 0)
    timestamps: torch.Tensor  # [T] int64
    query_timestamps: torch.Tensor  # [T] int64, time of each position's target event
    ratings: torch.Tensor  # [T] float32, rating / action of each input event
    target_ids: torch.Tensor  # [T] int64, next item of each position
    seq_offsets: torch.Tensor  # [B+1] int64
    users: torch.Tensor  # [B] int64 user rows
    max_len: int  # longest sequence in this batch

    @property
    def num_sequences(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> torch.Tensor:
        return self.seq_offsets[1:] - self.seq_offsets[:-1]

    def last_positions(self) -> torch.Tensor:
        """[B] index of each sequence's last token (the one that predicts its final target)."""
        return self.seq_offsets[1:] - 1

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        return JaggedBatch(**moved)


# ---------------------------------------------------------------------------------------------
# Splits (SPEC §4). `holdout` events at the end of each sequence are never trained on.


def holdout_count(protocol: Protocol) -> int:
    """How many trailing events of each user the protocol keeps out of training."""
    if protocol == "paper":
        return 1  # leave-last-out: the last event is the test target
    if protocol == "strict":
        return 2  # second-to-last validates (model selection), last tests once
    raise ValueError(f"unknown protocol {protocol!r}; choose 'paper' or 'strict'")


def target_positions(data: SequenceData, protocol: Protocol, split: Split) -> np.ndarray:
    """[U] global event index of each user's evaluation target for `split`."""
    ends = data.seq_offsets[1:]
    if split == "test":
        return ends - 1
    if split == "valid":
        if protocol != "strict":
            raise ValueError("the 'paper' protocol has no validation split; use 'strict'")
        return ends - 2
    raise ValueError(f"no single target for split {split!r}")


def train_ends(data: SequenceData, protocol: Protocol) -> np.ndarray:
    """[U] exclusive end (global event index) of each user's training events."""
    return data.seq_offsets[1:] - holdout_count(protocol)


# ---------------------------------------------------------------------------------------------
# Building batches.


def windows_ending_at(
    data: SequenceData, users: np.ndarray, ends: np.ndarray, max_seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_seq_len + 1`` events before each exclusive end, clipped to the user.

    Returns (event_index [sum of window lengths], window_lengths [B]).
    """
    starts = np.maximum(data.seq_offsets[users], ends - (max_seq_len + 1))
    lengths = ends - starts
    return _ranges(starts, lengths), lengths


def batch_from_windows(
    data: SequenceData, users: np.ndarray, event_index: np.ndarray, window_lengths: np.ndarray
) -> JaggedBatch:
    """Turn windows (concatenated global event indices, each window >= 2 events) into a batch."""
    if len(window_lengths) and window_lengths.min() < 2:
        raise ValueError("every window needs at least two events (an input and a target)")
    window_ends = np.cumsum(window_lengths)
    is_last = np.zeros(len(event_index), dtype=bool)
    is_last[window_ends - 1] = True
    is_first = np.zeros(len(event_index), dtype=bool)
    is_first[window_ends - window_lengths] = True
    inp = event_index[~is_last]
    tgt = event_index[~is_first]
    seq_lengths = window_lengths - 1
    offsets = np.zeros(len(seq_lengths) + 1, dtype=np.int64)
    np.cumsum(seq_lengths, out=offsets[1:])
    return JaggedBatch(
        item_ids=torch.from_numpy(data.item_ids[inp]),
        timestamps=torch.from_numpy(data.timestamps[inp]),
        query_timestamps=torch.from_numpy(data.timestamps[tgt]),
        ratings=torch.from_numpy(data.ratings[inp]),
        target_ids=torch.from_numpy(data.item_ids[tgt]),
        seq_offsets=torch.from_numpy(offsets),
        users=torch.from_numpy(np.asarray(users, dtype=np.int64)),
        max_len=int(seq_lengths.max()) if len(seq_lengths) else 0,
    )


def eval_batches(
    data: SequenceData,
    protocol: Protocol,
    split: Split,
    max_seq_len: int,
    batch_size: int,
    users: np.ndarray | None = None,
) -> Iterator[JaggedBatch]:
    """Batches whose last token of each sequence predicts the user's `split` target.

    The history is every event before the target, truncated to the last `max_seq_len`.
    Users with no history before their target are skipped.
    """
    targets = target_positions(data, protocol, split)
    if users is None:
        users = np.arange(data.num_users)
    users = users[targets[users] > data.seq_offsets[users]]
    for lo in range(0, len(users), batch_size):
        chunk = users[lo : lo + batch_size]
        idx, lengths = windows_ending_at(data, chunk, targets[chunk] + 1, max_seq_len)
        yield batch_from_windows(data, chunk, idx, lengths)


@dataclass
class TrainBatches:
    """One epoch of training batches over users in a seeded random order.

    Each user contributes the window of its last ``max_seq_len + 1`` training events.
    ``subsample`` (e.g. Stochastic Length) may replace a window's event indices.
    """

    data: SequenceData
    protocol: Protocol
    max_seq_len: int
    batch_size: int
    users: np.ndarray | None = None  # default: every user with >= 2 training events

    def __post_init__(self) -> None:
        ends = train_ends(self.data, self.protocol)
        all_users = np.arange(self.data.num_users) if self.users is None else self.users
        keep = ends[all_users] - self.data.seq_offsets[all_users] >= 2
        self.users = all_users[keep]
        self._ends = ends

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def num_tokens(self) -> int:
        """Input tokens in one epoch (without subsampling)."""
        lengths = self._ends[self.users] - self.data.seq_offsets[self.users]
        return int(np.minimum(lengths - 1, self.max_seq_len).sum())

    def epoch(self, rng: np.random.Generator, subsample=None) -> Iterator[JaggedBatch]:
        order = rng.permutation(self.users)
        for lo in range(0, len(order), self.batch_size):
            chunk = order[lo : lo + self.batch_size]
            idx, lengths = windows_ending_at(self.data, chunk, self._ends[chunk], self.max_seq_len)
            if subsample is not None:
                idx, lengths = subsample(idx, lengths, rng)
            yield batch_from_windows(self.data, chunk, idx, lengths)
