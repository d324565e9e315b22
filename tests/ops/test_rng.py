"""genrec.ops.rng: uniform words and integers, native on CPU, seeded by PyTorch's generator."""

from __future__ import annotations

import pytest
import torch

from genrec.ops import native, rng


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    if request.param == "native":
        assert native.load("random") is not None
    else:
        monkeypatch.setattr(native, "ENABLED", False)
    return request.param


def test_randint_is_uniform_on_its_range(path):
    torch.manual_seed(0)
    draws = rng.randint(3, 10, (700, 100))
    assert draws.dtype == torch.int64 and draws.shape == (700, 100)
    assert int(draws.min()) == 3 and int(draws.max()) == 9
    counts = torch.bincount(draws.flatten() - 3, minlength=7).double()
    expected = draws.numel() / 7
    sigma = (expected * (1 - 1 / 7)) ** 0.5
    assert ((counts - expected).abs() < 5 * sigma).all(), counts  # binomial, 5 sigma


def test_random_words_have_balanced_bits(path):
    torch.manual_seed(1)
    words = rng.random_words(40_000)
    bits = (words[:, None] >> torch.arange(64)) & 1  # [n, 64]
    ones = bits.sum(0).double()
    sigma = (words.numel() * 0.25) ** 0.5
    assert ((ones - words.numel() / 2).abs() < 5 * sigma).all()
    assert words.unique().numel() == words.numel()  # no repeats among 40k 64-bit words


def test_seeded_by_torch_and_advancing_it(path):
    torch.manual_seed(7)
    first, second = rng.randint(0, 1000, (500,)), rng.randint(0, 1000, (500,))
    torch.manual_seed(7)
    assert torch.equal(rng.randint(0, 1000, (500,)), first)
    assert torch.equal(rng.randint(0, 1000, (500,)), second)
    assert not torch.equal(first, second)
    a = rng.random_words(64, generator=torch.Generator().manual_seed(3))
    b = rng.random_words(64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 3])
def test_native_draws_do_not_depend_on_the_thread_count(threads):
    assert native.load("random") is not None
    torch.manual_seed(11)
    want = rng.randint(1, 3617, (1000, 37)), rng.random_words(4099)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(11)
        got = rng.randint(1, 3617, (1000, 37)), rng.random_words(4099)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_ranges_past_32_bits_and_empty_ranges():
    torch.manual_seed(2)
    wide = rng.randint(0, 2**40, (1000,))  # PyTorch's randint: 64-bit draws
    assert int(wide.min()) >= 0 and int(wide.max()) < 2**40 and int(wide.max()) > 2**33
    with pytest.raises(ValueError, match=r"empty range \[5, 5\)"):
        rng.randint(5, 5, (3,))
