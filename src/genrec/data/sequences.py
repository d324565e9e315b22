"""The prepared form of a data set: one time-sorted event sequence per user (SPEC §1).

Everything downstream (batching, training, evaluation, stats) reads a :class:`SequenceData`;
readers and the cache produce it. Sequences are stored jagged: concatenated event arrays plus
``seq_offsets`` (the events of user ``u`` are ``[seq_offsets[u], seq_offsets[u+1])``).

Ids are dense: items are ``1..num_items`` with 0 reserved for padding; users are rows
``0..num_users-1``. ``item_raw_ids[i]`` / ``user_raw_ids[u]`` give back the original ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SequenceData:
    name: str
    seq_offsets: np.ndarray  # [U+1] int64
    item_ids: np.ndarray  # [E] int64, 1..num_items, time-sorted within each user
    timestamps: np.ndarray  # [E] int64 (seconds)
    ratings: np.ndarray  # [E] float32: rating or action value (0 when the source has none)
    user_raw_ids: np.ndarray  # [U] raw user ids (int64 or str)
    item_raw_ids: np.ndarray  # [num_items + 1] raw item ids; entry 0 is the padding slot
    # categorical side-info, dense ids with 0 = unknown / padding:
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [num_items+1, k]
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [U]
    notes: list[str] = field(default_factory=list)  # e.g. "partial: 2,999 of 6,040 users"

    @property
    def num_users(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def num_items(self) -> int:
        """Number of real items (the embedding table has num_items + 1 rows)."""
        return len(self.item_raw_ids) - 1

    @property
    def num_events(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    def user_items(self, u: int) -> np.ndarray:
        return self.item_ids[self.seq_offsets[u] : self.seq_offsets[u + 1]]

    def take_users(self, users: np.ndarray) -> SequenceData:
        """A SequenceData with only the given user rows (item ids and maps unchanged)."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.seq_offsets[users], self.seq_offsets[users + 1]
        lengths = ends - starts
        idx = _ranges(starts, lengths)
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return SequenceData(
            name=self.name,
            seq_offsets=offsets,
            item_ids=self.item_ids[idx],
            timestamps=self.timestamps[idx],
            ratings=self.ratings[idx],
            user_raw_ids=self.user_raw_ids[users],
            item_raw_ids=self.item_raw_ids,
            item_features=self.item_features,
            user_features={k: v[users] for k, v in self.user_features.items()},
            notes=list(self.notes),
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths  # start of each range in the output
    idx = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths)
    return idx + np.repeat(starts, lengths)
