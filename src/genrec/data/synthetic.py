"""A synthetic data set with learnable sequential structure, for smoke tests and demos.

Each user walks the item circle with a hidden stride: the next item is the last one plus the
stride (mod the number of items), except with probability ``noise`` a uniformly random item.
The stride is readable from the last two items, so a sequential model can reach a high hit
rate, while popularity (nearly uniform) cannot: a clear, fast signal that learning works.
"""

from __future__ import annotations

import numpy as np

from genrec.data.sequences import SequenceData


def make_synthetic(
    num_users: int = 500,
    num_items: int = 200,
    *,
    min_len: int = 20,
    max_len: int = 60,
    strides: tuple[int, ...] = (1, 2, 3),
    noise: float = 0.1,
    seed: int = 0,
) -> SequenceData:
    """Users with random lengths in [min_len, max_len] walking items with a hidden stride."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=num_users)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    user_of = np.repeat(np.arange(num_users), lengths)
    step = np.asarray(strides)[rng.integers(0, len(strides), size=num_users)][user_of]
    pos = np.arange(total) - offsets[:-1][user_of]  # position within the user's sequence
    start = rng.integers(0, num_items, size=num_users)[user_of]
    items = (start + pos * step) % num_items
    noisy = rng.random(total) < noise
    items[noisy] = rng.integers(0, num_items, size=int(noisy.sum()))
    gaps = rng.integers(60, 86_400 * 3, size=total)
    timestamps = 1_000_000_000 + np.cumsum(gaps)
    return SequenceData(
        name="synthetic",
        seq_offsets=offsets,
        item_ids=(items + 1).astype(np.int64),
        timestamps=timestamps.astype(np.int64),
        ratings=np.ones(total, dtype=np.float32),
        user_raw_ids=np.arange(1, num_users + 1, dtype=np.int64),
        item_raw_ids=np.arange(num_items + 1, dtype=np.int64),
        notes=[f"synthetic: strides {strides}, noise {noise}, seed {seed}"],
    )
