"""dataset_stats / format_stats on a hand-made data set."""

from __future__ import annotations

import numpy as np

from genrec.data import SequenceData, dataset_stats, format_stats


def _data_with_lengths(lengths: list[int]) -> SequenceData:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    return SequenceData(
        name="hand", seq_offsets=offsets, item_ids=np.ones(total, dtype=np.int64),
        timestamps=np.arange(total, dtype=np.int64) * 86400,
        ratings=np.zeros(total, dtype=np.float32),
        user_raw_ids=np.arange(len(lengths)), item_raw_ids=np.array([0, 1]),
        notes=["partial: test"])


def test_length_quantiles_are_observed_lengths():
    stats = dataset_stats(_data_with_lengths(list(range(1, 101))))  # lengths 1..100
    seq = stats["seq_len"]
    assert (seq["min"], seq["p50"], seq["p90"], seq["p95"], seq["p99"], seq["max"]) == (
        1, 50, 90, 95, 99, 100)
    assert seq["mean"] == 50.5
    assert (stats["users"], stats["items"], stats["interactions"]) == (100, 1, 5050)


def test_time_span_in_days():
    stats = dataset_stats(_data_with_lengths([3, 2]))
    assert stats["time"] == {"first": "1970-01-01", "last": "1970-01-05", "span_days": 4.0}


def test_format_stats_is_a_readable_table():
    text = format_stats(dataset_stats(_data_with_lengths([2, 4, 6])))
    assert "p99" in text and "interactions" in text and "partial: test" in text
    assert "events/user max   6" in text
