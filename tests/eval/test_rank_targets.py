import pytest
import torch

from genrec.eval import retrieval
from genrec.eval.retrieval import rank_targets


@pytest.fixture(autouse=True, params=["fused", "loop"])
def path(request, monkeypatch):
    """Every test on both paths: the fused CPU kernel (fp32) and the chunked PyTorch loop."""
    calls = []
    real = retrieval.target_ranks_native

    def spy(*args):
        result = real(*args) if request.param == "fused" else None
        calls.append(result is not None)
        return result

    monkeypatch.setattr(retrieval, "target_ranks_native", spy)
    yield request.param
    assert all(calls) if request.param == "fused" else not any(calls)

# One-dimensional "embeddings": with user vector [1], item i scores item_table[i].
# Item:           pad   1    2    3    4
SCORES = torch.tensor([100.0, 1.0, 2.0, 2.0, 3.0])[:, None]  # pad scores highest on purpose
ONE = torch.ones(1, 1)


def _rank(target: int, history: list[int] | None = None) -> int:
    rows = items = None
    if history is not None:
        rows, items = torch.zeros(len(history), dtype=torch.long), torch.tensor(history)
    return int(rank_targets(ONE, SCORES, torch.tensor([target]), rows, items)[0])


def test_rank_counts_items_scoring_strictly_higher():
    assert _rank(4) == 1
    assert _rank(1) == 4


def test_ties_with_the_target_do_not_push_it_down():
    assert _rank(2) == 2  # item 3 ties with 2 at score 2: only item 4 is strictly higher
    assert _rank(3) == 2


def test_padding_column_is_never_ranked():
    assert _rank(4) == 1  # row 0 scores 100 but is not an item


def test_history_items_scoring_above_the_target_are_excluded():
    assert _rank(1, history=[4]) == 3
    assert _rank(1, history=[2, 3, 4]) == 1


def test_target_in_the_history_is_still_ranked():
    assert _rank(2, history=[2, 4]) == 1
    assert _rank(2, history=[2]) == 2


def test_history_rows_only_affect_their_own_user():
    users = torch.ones(2, 1)
    rows, items = torch.tensor([1]), torch.tensor([4])  # only user 1 had item 4
    ranks = rank_targets(users, SCORES, torch.tensor([1, 1]), rows, items)
    assert ranks.tolist() == [4, 3]


def test_chunked_scoring_gives_the_same_ranks():
    gen = torch.Generator().manual_seed(0)
    users, table = torch.randn(37, 8, generator=gen), torch.randn(51, 8, generator=gen)
    targets = torch.randint(1, 51, (37,), generator=gen)
    rows = torch.randint(0, 37, (200,), generator=gen)
    items = torch.randint(1, 51, (200,), generator=gen)
    whole = rank_targets(users, table, targets, rows, items)
    chunked = rank_targets(users, table, targets, rows, items, max_scores_per_chunk=120)
    assert torch.equal(whole, chunked)


def test_target_outside_the_item_range_is_an_error():
    with pytest.raises(ValueError, match="1..4"):
        rank_targets(ONE, SCORES, torch.tensor([0]))


def test_non_finite_target_score_is_an_error():
    with pytest.raises(ValueError, match="non-finite"):
        rank_targets(torch.full((1, 1), float("nan")), SCORES, torch.tensor([1]))


def test_history_pairs_out_of_range_are_an_error():
    for rows, items in (([0], [0]), ([0], [5]), ([1], [2]), ([-1], [2])):
        with pytest.raises(ValueError, match="history pairs"):
            rank_targets(ONE, SCORES, torch.tensor([1]), torch.tensor(rows), torch.tensor(items))
    with pytest.raises(ValueError, match="same length"):
        rank_targets(ONE, SCORES, torch.tensor([1]), torch.tensor([0, 0]), torch.tensor([2]))


def test_one_target_per_user_vector():
    with pytest.raises(ValueError, match="one id per user"):
        rank_targets(torch.ones(3, 1), SCORES, torch.tensor([1, 2]))
