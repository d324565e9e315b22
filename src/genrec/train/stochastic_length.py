"""Stochastic Length (SPEC §5): train on random subsequences of long histories.

A sequence of length n > N^(α/2) is, with probability 1 − N^α / n², replaced by a random
subsequence of length N^(α/2) (events kept in time order); otherwise it is kept whole.
Here a "sequence" is a training window of events (its inputs plus the final target), and
the subsequence keeps ⌊N^(α/2)⌋ + 1 events so that it has ⌊N^(α/2)⌋ inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StochasticLength:
    alpha: float
    max_seq_len: int  # N

    def __post_init__(self) -> None:
        if not 1.0 < self.alpha <= 2.0:
            raise ValueError(f"stochastic_length_alpha must be in (1, 2], got {self.alpha}")

    @property
    def target_len(self) -> int:
        return int(self.max_seq_len ** (self.alpha / 2))

    def __call__(
        self, event_index: np.ndarray, window_lengths: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Subsample windows (concatenated event indices + lengths); vectorised, no loops."""
        n = window_lengths - 1  # input length of each window
        keep_prob = np.minimum(1.0, self.max_seq_len**self.alpha / np.maximum(n, 1) ** 2)
        shorten = (n > self.target_len) & (rng.random(len(n)) >= keep_prob)
        if not shorten.any():
            return event_index, window_lengths
        window_of = np.repeat(np.arange(len(window_lengths)), window_lengths)
        keys = rng.random(len(event_index))
        # rank events within each window by a random key; keep the first target_len + 1
        order = np.lexsort((keys, window_of))
        starts = np.cumsum(window_lengths) - window_lengths
        rank = np.empty(len(event_index), dtype=np.int64)
        rank[order] = np.arange(len(event_index)) - np.repeat(starts, window_lengths)
        keep = ~shorten[window_of] | (rank <= self.target_len)
        new_lengths = np.where(shorten, self.target_len + 1, window_lengths)
        return event_index[keep], new_lengths  # boolean mask keeps time order
