import numpy as np

from genrec.data.sequences import SequenceData
from genrec.eval import evaluate_popularity, popularity_scores, retrieval_metrics
from genrec.eval.baselines import popularity_order_scores


def _data() -> SequenceData:
    # user 0: 1 2 1 3 | user 1: 1 2 4 | user 2: 2 5
    items = np.array([1, 2, 1, 3, 1, 2, 4, 2, 5])
    return SequenceData(
        name="toy", seq_offsets=np.array([0, 4, 7, 9]), item_ids=items,
        timestamps=np.arange(len(items)), ratings=np.ones(len(items), dtype=np.float32),
        user_raw_ids=np.arange(3), item_raw_ids=np.arange(6),
    )


def test_popularity_counts_only_training_events():
    # paper trains on 1 2 1 | 1 2 | 2; strict on 1 2 | 1 | (nothing)
    assert popularity_scores(_data(), "paper").tolist() == [0, 3, 3, 0, 0, 0]
    assert popularity_scores(_data(), "strict").tolist() == [0, 2, 1, 0, 0, 0]


def test_popularity_ties_break_towards_the_lower_item_id():
    scores = popularity_order_scores(np.array([0, 3, 3, 0, 0, 0]))
    assert scores[1:].tolist() == [5, 4, 3, 2, 1]  # list order 1, 2, 3, 4, 5


def test_popularity_test_ranks_exclude_history():
    # list: 1, 2, 3, 4, 5. user 0 target 3 (1, 2 seen): 1; user 1 target 4 (1, 2 seen): 2;
    # user 2 target 5 (2 seen): behind 1, 3, 4: 4. Raw-count ties would have given it 2.
    got = evaluate_popularity(_data(), "paper", "test", ks=(1, 2, 10))
    assert got == retrieval_metrics([1, 2, 4], (1, 2, 10))


def test_popularity_without_history_exclusion():
    got = evaluate_popularity(_data(), "paper", "test", ks=(1, 10), exclude_history=False)
    assert got == retrieval_metrics([3, 4, 5], (1, 10))


def test_popularity_strict_valid_keeps_a_repeated_target():
    # user 0 target 1 was seen before but is ranked (top); user 1 target 2 (1 seen): 1;
    # user 2 has no event before its validation target and is skipped.
    got = evaluate_popularity(_data(), "strict", "valid", ks=(1, 10))
    assert got == retrieval_metrics([1, 1], (1, 10))
