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


def _plain_sampled_softmax(user, targets, negatives, table, temperature):
    """The loss written with plain indexing and autograd: the specification."""
    pos = (user * table[targets]).sum(-1, keepdim=True)
    neg = (table[negatives] * user[:, None, :]).sum(-1)
    neg = neg.masked_fill(negatives == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], 1) / temperature
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_per_position_loss_and_gradients_match_plain_indexing(compiled):
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(51, 8, generator=g, dtype=torch.float64)
    user = torch.randn(30, 8, generator=g, dtype=torch.float64)
    targets = torch.randint(1, 51, (30,), generator=g)
    negatives = torch.randint(1, 51, (30, 16), generator=g)
    negatives[0, :4] = targets[0]  # positives drawn as negatives are masked
    results = []
    for fn in (_plain_sampled_softmax, sampled_softmax_loss):
        w = weight.clone().float().requires_grad_()
        u = user.clone().float().requires_grad_()
        table = F.normalize(w, dim=-1)
        if fn is sampled_softmax_loss:
            call = torch.compile(fn, dynamic=True) if compiled else fn
            loss = call(F.normalize(u, dim=-1), targets, negatives, _lookup(table), 0.05)
        else:
            loss = fn(F.normalize(u, dim=-1), targets, negatives, table, 0.05)
        results.append((loss, *torch.autograd.grad(loss, (u, w))))
    for got, want in zip(results[1], results[0], strict=True):
        assert float((got - want).norm() / want.norm()) < 1e-5
