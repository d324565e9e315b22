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


# (..., 300, 4096): chunks of 64 items (the kernel packs about 2^18 floats at a time), 5 of them
@pytest.mark.parametrize("users,items,width", [(1, 1, 1), (37, 101, 7), (130, 1000, 50),
                                               (9, 16, 16), (8, 33, 3), (20, 300, 4096)])
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


def test_an_item_equal_to_the_target_never_counts():
    """Float scores: an extra item equal to a user's target gets the target's bits (its score
    comes from the same tile function as the target's), ties, and is not counted."""
    g = torch.Generator().manual_seed(7)
    users, table = torch.randn(45, 50, generator=g), torch.randn(1001, 50, generator=g)
    targets = torch.randint(1, 1001, (45,), generator=g)
    none = torch.zeros(0, dtype=torch.long)
    ranks, scores = target_ranks_native(users, table, targets, none, none)
    assert (ranks > 1).any()
    for b in range(45):
        twin = torch.cat([table, table[targets[b]][None]])  # item 1001 copies the target
        rank, score = target_ranks_native(users[b:b + 1], twin, targets[b:b + 1], none, none)
        assert rank[0] == ranks[b] and score[0] == scores[b]


@pytest.mark.parametrize("bad", ["short_targets", "target_zero", "history_item_past_end",
                                 "history_row_past_end", "unpaired"])
def test_native_rejects_ids_it_would_read_or_write_by(bad):
    u, table, targets, rows, hist = integer_case(4, 10, 3, 8, seed=6)
    if bad == "short_targets":
        targets = targets[:3]
    elif bad == "target_zero":
        targets[0] = 0
    elif bad == "history_item_past_end":
        hist[0] = 11
    elif bad == "history_row_past_end":
        rows[0] = 4
    else:
        rows = rows[:-1]
    with pytest.raises(ValueError, match="target_ids|history"):
        target_ranks_native(u, table, targets, rows, hist)
