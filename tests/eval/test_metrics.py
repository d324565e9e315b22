import math

import numpy as np
import pytest
import torch

from genrec.eval.metrics import RankAccumulator, hr_at_k, mrr, ndcg_at_k, retrieval_metrics

RANKS = [1, 3, 11, 60]


def test_hit_rate_counts_ranks_within_the_cutoff():
    assert hr_at_k(RANKS, 1) == 0.25
    assert hr_at_k(RANKS, 10) == 0.5
    assert hr_at_k(RANKS, 11) == 0.75  # rank == k is a hit
    assert hr_at_k(RANKS, 200) == 1.0


def test_ndcg_discounts_by_log2_of_rank_plus_one():
    assert ndcg_at_k(RANKS, 10) == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert ndcg_at_k(RANKS, 50) == pytest.approx((1 + 1 / 2 + 1 / math.log2(12)) / 4)
    assert ndcg_at_k(RANKS, 1) == pytest.approx(0.25)


def test_mrr_is_the_mean_reciprocal_rank_without_cutoff():
    assert mrr(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 11 + 1 / 60) / 4)


def test_retrieval_metrics_has_every_key_and_accepts_torch_and_numpy():
    m = retrieval_metrics(torch.tensor(RANKS), ks=(1, 10, 50, 200))
    for k in (1, 10, 50, 200):
        assert f"hr@{k}" in m and f"ndcg@{k}" in m
    assert m["hr@10"] == 0.5 and m["num_users"] == 4
    assert m == retrieval_metrics(np.array(RANKS), ks=(1, 10, 50, 200))


def test_metrics_reject_ranks_below_one():
    with pytest.raises(ValueError, match="1-based"):
        hr_at_k([0, 1], 10)


def test_metrics_of_no_users_are_nan():
    m = retrieval_metrics([])
    assert m["num_users"] == 0 and math.isnan(m["hr@10"]) and math.isnan(m["mrr"])


def test_accumulator_equals_metrics_of_all_ranks_at_once():
    acc = RankAccumulator()
    acc.add(torch.tensor([1, 3]))
    acc.add(np.array([11, 60]))
    assert len(acc) == 4
    assert acc.ranks.tolist() == RANKS
    assert acc.metrics((10,)) == retrieval_metrics(RANKS, (10,))
