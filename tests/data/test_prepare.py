"""Parsed events -> SequenceData: dense ids, time order, filtering, side-info ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genrec.data import DataError
from genrec.data.interactions import FeatureTable, Interactions
from genrec.data.prepare import prepare


def _events(users, items, timestamps, **kwargs) -> Interactions:
    return Interactions(users=pa.array(users), items=pa.array(items),
                        timestamps=np.asarray(timestamps, dtype=np.int64), **kwargs)


def test_ids_are_dense_in_sorted_raw_order():
    data = prepare(_events([30, 10, 30, 10], [500, 7, 7, 90], [1, 2, 3, 4]), "t")
    assert data.user_raw_ids.tolist() == [10, 30]
    assert data.item_raw_ids.tolist() == [0, 7, 90, 500]  # 0 = padding slot
    assert data.seq_offsets.tolist() == [0, 2, 4]
    assert data.item_ids.tolist() == [1, 2, 3, 1]
    assert data.item_ids.dtype == np.int64 and data.timestamps.dtype == np.int64


def test_equal_timestamps_keep_file_order():
    data = prepare(_events([1] * 5, [5, 4, 3, 2, 1], [9, 7, 7, 7, 1]), "t")
    assert data.item_raw_ids[data.item_ids].tolist() == [1, 4, 3, 2, 5]


def test_ratings_default_to_zero_float32():
    data = prepare(_events([1, 1], [1, 2], [1, 2]), "t")
    assert data.ratings.dtype == np.float32 and data.ratings.tolist() == [0, 0]


def test_short_users_are_dropped_with_a_note():
    events = _events([1, 1, 1, 2, 2, 3], [1, 2, 3, 1, 9, 4], [1, 2, 3, 4, 5, 6])
    data = prepare(events, "t", min_seq_len=3)
    assert data.user_raw_ids.tolist() == [1]
    assert data.item_raw_ids.tolist() == [0, 1, 2, 3]  # items 4 and 9 are gone too
    assert data.notes == ["dropped 2 of 3 users with fewer than 3 events (3 events)"]


def test_max_users_keeps_the_first_users_in_file_order():
    events = _events([5, 5, 9, 9, 1, 1, 7], [1, 2, 1, 2, 1, 2, 3], [1, 2, 3, 4, 5, 6, 7])
    data = prepare(events, "t", min_seq_len=2, max_users=2)
    assert data.user_raw_ids.tolist() == [5, 9]  # user 7 (too short) does not count
    assert any("kept the first 2 of 3 users" in note for note in data.notes)


def test_no_user_long_enough_is_an_error():
    with pytest.raises(DataError, match="no user has at least 5 events"):
        prepare(_events([1, 2], [1, 2], [1, 2]), "t", min_seq_len=5)


def test_multi_valued_item_features_are_padded_with_zero():
    genres = FeatureTable(pa.array([20, 10, 99]),
                          np.array([["Drama", ""], ["Action", "Drama"], ["War", ""]]))
    events = _events([1, 1], [10, 20], [1, 2], item_features={"genre": genres})
    data = prepare(events, "t")
    assert data.item_features["genre"].tolist() == [[0, 0], [1, 2], [2, 0]]  # War unused


def test_entities_without_side_info_get_zero_and_a_note():
    country = FeatureTable(pa.array([1]), np.array([["FR"]]))
    events = _events([1, 1, 2, 2], [1, 2, 1, 2], [1, 2, 3, 4], user_features={"country": country})
    data = prepare(events, "t")
    assert data.user_features["country"].tolist() == [1, 0]
    assert any("user feature country: 1 of 2" in note for note in data.notes)
