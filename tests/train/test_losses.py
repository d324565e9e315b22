import math

import pytest
import torch
import torch.nn.functional as F

from genrec.train.losses import full_softmax_loss, sample_negatives, sampled_softmax_loss


def _table(num_items: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_items + 1, d, generator=g), dim=-1)


def _lookup(table):
    return lambda ids: table if ids is None else table[ids]


def test_sampled_softmax_matches_hand_computation():
    table = _table(6, 4)
    user = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    targets = torch.tensor([1, 2])
    negatives = torch.tensor([[3, 4], [5, 2]])  # row 1's second negative is its positive
    tau = 0.5
    loss = sampled_softmax_loss(user, targets, negatives, _lookup(table), tau)
    expected = 0.0
    for t in range(2):
        pos = math.exp(float(user[t] @ table[targets[t]]) / tau)
        neg = sum(math.exp(float(user[t] @ table[n]) / tau)
                  for n in negatives[t].tolist() if n != targets[t])
        expected += -math.log(pos / (pos + neg))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)


def test_shared_negatives_equal_per_position_copies():
    table = _table(20, 8)
    user = F.normalize(torch.randn(5, 8), dim=-1)
    targets = torch.tensor([1, 2, 3, 4, 5])
    shared = torch.tensor([3, 7, 9, 11])
    a = sampled_softmax_loss(user, targets, shared, _lookup(table), 0.05)
    b = sampled_softmax_loss(user, targets, shared.expand(5, 4), _lookup(table), 0.05)
    assert torch.allclose(a, b, rtol=1e-6)


def test_full_softmax_equals_sampled_softmax_over_all_items():
    table = _table(7, 3)
    user = F.normalize(torch.randn(4, 3), dim=-1)
    targets = torch.tensor([1, 7, 3, 3])
    all_items = torch.arange(1, 8)  # every item; the positive is masked out of the negatives
    full = full_softmax_loss(user, targets, _lookup(table), 0.1)
    sampled = sampled_softmax_loss(user, targets, all_items, _lookup(table), 0.1)
    assert torch.allclose(full, sampled, rtol=1e-5)


def test_in_batch_negatives_add_other_positives():
    table = _table(5, 3)
    user = F.normalize(torch.randn(2, 3), dim=-1)
    targets = torch.tensor([1, 2])
    negatives = torch.tensor([4])
    with_batch = sampled_softmax_loss(user, targets, negatives, _lookup(table), 1.0,
                                      in_batch_negatives=True)
    # the same as listing the other position's positive as an extra negative
    explicit = sampled_softmax_loss(user, targets, torch.tensor([[4, 2], [4, 1]]),
                                    _lookup(table), 1.0)
    assert torch.allclose(with_batch, explicit, rtol=1e-6)


def test_negatives_are_drawn_from_real_items_only():
    ids = sample_negatives(100, 64, 9, shared=False, device=torch.device("cpu"))
    assert ids.shape == (100, 64) and ids.min() >= 1 and ids.max() <= 9
    assert set(ids.unique().tolist()) == set(range(1, 10))
    assert sample_negatives(100, 64, 9, shared=True, device=torch.device("cpu")).shape == (64,)


def test_every_negative_scoring_strategy_computes_the_same_loss():
    table = _table(50, 8).requires_grad_()
    user = F.normalize(torch.randn(30, 8), dim=-1).requires_grad_()
    targets = torch.randint(1, 51, (30,))
    negatives = torch.randint(1, 51, (30, 16))
    losses, grads = [], []
    for score_all, fused in ((True, False), (False, False), (False, True)):
        loss = sampled_softmax_loss(user, targets, negatives, _lookup(table), 0.05,
                                    score_all_items=score_all, fused_gather=fused)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, (user, table)))
    for other in (1, 2):
        assert torch.allclose(losses[0], losses[other], rtol=1e-5)
        for a, b in zip(grads[0], grads[other]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
