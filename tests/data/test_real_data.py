"""The readers on the real public files (the project's shared copy)."""

from __future__ import annotations

import numpy as np

from genrec.data import dataset_stats, load_dataset


def test_ml_100k(shared_data, data_config):
    data = load_dataset(data_config("ml-100k", data_dir=str(shared_data)), progress=False)
    assert (data.num_users, data.num_items, data.num_events) == (943, 1682, 100000)
    assert data.item_features["genre"].shape == (1683, 6)
    assert set(data.user_features) == {"gender", "age", "occupation", "zip"}
    user_of_event = np.repeat(np.arange(data.num_users), data.lengths)
    same_user = np.diff(user_of_event) == 0
    assert np.all(np.diff(data.timestamps)[same_user] >= 0)  # time-sorted within each user
    assert data.notes == []


def test_ml_1m_partial(shared_data, data_config):
    data = load_dataset(data_config("ml-1m", data_dir=str(shared_data)), progress=False)
    assert (data.num_users, data.num_events) == (2999, 487650)
    assert any("partial: 2,999 of 6,040 users" in note for note in data.notes)
    assert dataset_stats(data)["seq_len"]["min"] == 20


def test_ml_latest_small(shared_data, data_config):
    data = load_dataset(data_config("ml-latest-small", data_dir=str(shared_data)),
                        progress=False)
    assert (data.num_users, data.num_items, data.num_events) == (610, 9724, 100836)
