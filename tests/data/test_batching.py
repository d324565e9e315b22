import numpy as np
import pytest
import torch

from genrec.data.batching import (
    TrainBatches,
    batch_from_windows,
    eval_batches,
    train_ends,
    windows_ending_at,
)
from genrec.data.sequences import SequenceData


def _data() -> SequenceData:
    # user 0: items 1..5 at t=10..50; user 1: items 6,7,8 at t=100,200,300; user 2: items 2,3
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 2, 3])
    ts = np.array([10, 20, 30, 40, 50, 100, 200, 300, 7, 9])
    return SequenceData(
        name="toy", seq_offsets=np.array([0, 5, 8, 10]), item_ids=items, timestamps=ts,
        ratings=np.arange(10, dtype=np.float32), user_raw_ids=np.array([11, 12, 13]),
        item_raw_ids=np.arange(9),
    )


def test_window_inputs_targets_and_query_times_are_shifted_by_one():
    data = _data()
    idx, lengths = windows_ending_at(data, np.array([0]), np.array([4]), max_seq_len=200)
    b = batch_from_windows(data, np.array([0]), idx, lengths)
    assert b.item_ids.tolist() == [1, 2, 3]
    assert b.target_ids.tolist() == [2, 3, 4]
    assert b.timestamps.tolist() == [10, 20, 30]
    assert b.query_timestamps.tolist() == [20, 30, 40]  # time of the event being predicted
    assert b.seq_offsets.tolist() == [0, 3]


def test_windows_keep_the_last_max_seq_len_inputs():
    data = _data()
    idx, lengths = windows_ending_at(data, np.array([0, 1]), np.array([5, 8]), max_seq_len=2)
    b = batch_from_windows(data, np.array([0, 1]), idx, lengths)
    assert b.item_ids.tolist() == [3, 4, 6, 7]
    assert b.target_ids.tolist() == [4, 5, 7, 8]
    assert b.seq_offsets.tolist() == [0, 2, 4] and b.max_len == 2


@pytest.mark.parametrize("protocol, holdout", [("paper", 1), ("strict", 2)])
def test_training_never_sees_held_out_events(protocol, holdout):
    data = _data()
    assert (train_ends(data, protocol) == data.seq_offsets[1:] - holdout).all()
    batches = TrainBatches(data, protocol, max_seq_len=200, batch_size=2)
    seen_targets = torch.cat([b.target_ids for b in batches.epoch(np.random.default_rng(0))])
    expected = {"paper": [2, 3, 4, 7], "strict": [2, 3]}[protocol]
    assert sorted(seen_targets.tolist()) == sorted(expected)


def test_strict_protocol_drops_users_without_two_training_events():
    batches = TrainBatches(_data(), "strict", max_seq_len=200, batch_size=8)
    assert batches.users.tolist() == [0]  # users 1 and 2 keep fewer than two training events
    assert batches.num_tokens() == 2


def test_epoch_order_is_seeded():
    batches = TrainBatches(_data(), "paper", max_seq_len=200, batch_size=1)
    order = lambda s: [int(b.users[0]) for b in batches.epoch(np.random.default_rng(s))]
    assert order(3) == order(3)
    assert sorted(order(3)) == [0, 1]  # user 2 has a single training event


def test_eval_batches_predict_the_split_target_from_the_whole_history():
    data = _data()
    (test,) = eval_batches(data, "paper", "test", max_seq_len=200, batch_size=8)
    last = test.last_positions()
    assert test.target_ids[last].tolist() == [5, 8, 3]
    assert test.query_timestamps[last].tolist() == [50, 300, 9]
    (valid,) = eval_batches(data, "strict", "valid", max_seq_len=200, batch_size=8)
    # user 2 has no event before its validation target, so it has no validation query
    assert valid.target_ids[valid.last_positions()].tolist() == [4, 7]
    with pytest.raises(ValueError, match="no validation split"):
        next(eval_batches(data, "paper", "valid", max_seq_len=200, batch_size=8))


def test_take_users_keeps_each_users_events():
    sub = _data().take_users(np.array([2, 0]))
    assert sub.seq_offsets.tolist() == [0, 2, 7]
    assert sub.item_ids.tolist() == [2, 3, 1, 2, 3, 4, 5]
    assert sub.user_raw_ids.tolist() == [13, 11]
