import pytest

from genrec.config import ModelConfig, TrainConfig
from genrec.train.flops import FlopCounter


def test_hstu_flops_on_a_hand_counted_case():
    model = ModelConfig(kind="hstu", embedding_dim=4, num_layers=1, num_heads=1,
                        attention_dim=2, linear_dim=2)
    counter = FlopCounter(model, TrainConfig(num_negatives=3), num_items=10)
    # per token: Linear_1 2·4·(2+2+2+2) = 64, Linear_2 2·2·4 = 16, loss 2·4·(3+1) = 32
    # per causal pair: q·k 2·2 + weight·v 2·2 = 8; a length-3 sequence has 6 pairs
    assert counter.forward([3]) == pytest.approx(3 * (64 + 16 + 32) + 6 * 8)
    assert counter.train_step([3]) == pytest.approx(3 * counter.forward([3]))


def test_flops_grow_with_layers_and_quadratically_with_length():
    base = ModelConfig(kind="hstu", embedding_dim=50, num_layers=2)
    deep = ModelConfig(kind="hstu", embedding_dim=50, num_layers=8, num_heads=2,
                       attention_dim=25, linear_dim=25)
    t = TrainConfig()
    assert FlopCounter(deep, t, 100).forward([50]) > FlopCounter(base, t, 100).forward([50])
    c = FlopCounter(base, t, 100)
    extra_pairs = 200 * 201 / 2 - 2 * 100 * 101 / 2  # one long sequence vs two halves
    assert c.forward([200]) - 2 * c.forward([100]) == pytest.approx(c.per_pair() * extra_pairs)


def test_full_softmax_counts_every_item():
    m = ModelConfig(kind="sasrec", embedding_dim=8, linear_dim=8)
    full = FlopCounter(m, TrainConfig(loss="full_softmax"), num_items=1000)
    assert full.loss_per_token() == 2 * 8 * 1000
