"""genrec.ops.dropout: nn.Dropout's distribution, and the same draws eager and compiled."""

import pytest
import torch

import genrec.ops.dropout as dropout_module
from genrec.ops.dropout import Dropout, dropout


def test_keeps_one_minus_p_of_the_elements_and_scales_them():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = dropout(x, 0.2)
    kept = y != 0
    # binomial standard deviation of the kept share: sqrt(0.2 * 0.8 / 1e6) = 4e-4
    assert abs(kept.float().mean().item() - 0.8) < 2e-3
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.8))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gradient_is_the_mask_of_the_forward_scaled(compiled):
    """Compiled, the draw must be saved for the backward, never drawn again there."""
    def layer(x):
        return torch.sigmoid(dropout(torch.sin(x), 0.3)) * 3.0

    fn = torch.compile(layer, dynamic=True) if compiled else layer
    torch.manual_seed(1)
    x = torch.randn(1000, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    kept = torch.sigmoid(torch.zeros(())) * 3.0 != y.detach()  # dropped elements give 1.5
    s = torch.sigmoid(torch.sin(x.detach()) / 0.7)
    expected = 3.0 * s * (1 - s) * torch.cos(x.detach()) / 0.7 * kept
    assert torch.allclose(x.grad, expected, rtol=1e-5, atol=1e-7)
    assert 0.6 < kept.float().mean() < 0.8


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(50)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_the_seed_fixes_the_draw_and_compiled_draws_the_same():
    x = torch.randn(64, 50)
    torch.manual_seed(3)
    eager = dropout(x, 0.2)
    torch.manual_seed(3)
    again = dropout(x, 0.2)
    compiled = torch.compile(lambda t: dropout(t, 0.2) * 2.0, dynamic=True)
    torch.manual_seed(3)
    assert torch.equal(eager, again)
    assert torch.allclose(compiled(x), eager * 2.0)


def test_probability_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(torch.ones(2), -0.1)


def test_odd_sizes_and_shapes_are_kept():
    torch.manual_seed(5)
    y = dropout(torch.ones(7, 3), 0.5)  # 21 elements: the last random word is partly used
    assert y.shape == (7, 3)
    assert set(y.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize("p", [1e-6, 0.1, 0.2, 0.5, 0.9, 1 - 1e-6])
def test_drop_rate_is_p_rounded_to_16_bits(monkeypatch, p):
    # feed the mask every 16-bit value once: exactly round(p * 2**16) of them are dropped
    every_value = torch.arange(-(2**15), 2**15, dtype=torch.int64).to(torch.int16)

    def enumerate_all(n, **kwargs):
        assert n == 2**16 // 4  # four 16-bit decisions per word
        return every_value.view(torch.int64).clone()

    monkeypatch.setattr(dropout_module, "random_words", enumerate_all)
    dropped = (dropout(torch.ones(2**16), p) == 0).sum().item()
    assert dropped == round(p * 2**16)
    assert abs(dropped / 2**16 - p) <= 2**-17
