"""The fused full-ranking count (csrc/rank.cpp) against an exact count written here.

Small integer vectors make every score exact in float32 and in float64, so ties are real ties
and the expected ranks are exact: 1 + the items strictly above the target, history items other
than the target left out, padding row 0 never ranked.
"""

from __future__ import annotations

import pytest
import torch

from genrec.ops import native
from genrec.ops.ranking import target_ranks_native


@pytest.fixture(autouse=True)
def built():
    assert native.load("rank") is not None, "the C++ kernel did not build here"


def exact_ranks(users, table, targets, rows, items):
    scores = users.double() @ table.double().T  # [B, I + 1], exact for these integers
    ranks = []
    for b in range(users.shape[0]):
        t = int(targets[b])
        excluded = {int(i) for r, i in zip(rows.tolist(), items.tolist(), strict=True)
                    if r == b and i != t}
        ranks.append(1 + sum(1 for j in range(1, table.shape[0])
                             if j not in excluded and scores[b, j] > scores[b, t]))
    return torch.tensor(ranks)


def integer_case(users: int, items: int, width: int, history: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(-2, 3, (users, width), generator=g).float()
    table = torch.randint(-2, 3, (items + 1, width), generator=g).float()
    table[0] = 50.0  # padding would outrank everything if it were ranked
    targets = torch.randint(1, items + 1, (users,), generator=g)
    rows = torch.randint(0, users, (history,), generator=g)  # unsorted, repeats
    hist = torch.randint(1, items + 1, (history,), generator=g)
    hist[:users] = targets[rows[:users]]  # some targets are in their own history
    return u, table, targets, rows, hist


@pytest.mark.parametrize("users,items,width", [(1, 1, 1), (37, 101, 7), (130, 1000, 50),
                                               (9, 16, 16), (8, 33, 3)])
def test_native_ranks_equal_the_exact_count(users, items, width):
    u, table, targets, rows, hist = integer_case(users, items, width, 5 * users, seed=items)
    ranks, target_scores = target_ranks_native(u, table, targets, rows, hist)
    assert torch.equal(ranks, exact_ranks(u, table, targets, rows, hist))
    assert torch.equal(target_scores, (u * table[targets]).sum(1))
    assert items == 1 or bool((ranks > 1).any())  # the case is not trivial


def test_native_results_do_not_depend_on_the_thread_count():
    u, table, targets, rows, hist = integer_case(70, 300, 9, 400, seed=3)
    u = u + torch.randn(u.shape, generator=torch.Generator().manual_seed(4))  # inexact scores
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(target_ranks_native(u, table, targets, rows, hist))
    finally:
        torch.set_num_threads(before)
    for ranks, scores in results[1:]:
        assert torch.equal(ranks, results[0][0]) and torch.equal(scores, results[0][1])


def test_native_reads_strided_user_rows():
    u, table, targets, rows, hist = integer_case(20, 64, 6, 50, seed=5)
    wide = torch.cat([u, torch.full((20, 3), float("nan"))], dim=1)[:, :6]
    assert not wide.is_contiguous()
    assert torch.equal(target_ranks_native(wide, table, targets, rows, hist)[0],
                       exact_ranks(u, table, targets, rows, hist))


def test_native_declines_what_it_does_not_compute():
    u, table, targets, rows, hist = integer_case(4, 10, 3, 8, seed=6)
    assert target_ranks_native(u.double(), table.double(), targets, rows, hist) is None
    assert target_ranks_native(u.requires_grad_(), table, targets, rows, hist) is None
    assert target_ranks_native(u.detach()[:, :0], table[:, :0], targets, rows, hist) is None
    with torch.no_grad():
        assert target_ranks_native(u, table, targets, rows, hist) is not None
