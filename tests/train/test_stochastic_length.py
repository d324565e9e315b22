import numpy as np
import pytest

from genrec.train.stochastic_length import StochasticLength


def _windows(lengths):
    lengths = np.asarray(lengths)
    starts = np.cumsum(lengths) - lengths
    return np.concatenate([np.arange(s, s + n) * 10 for s, n in zip(starts, lengths)]), lengths


def test_alpha_two_keeps_every_sequence_whole():
    idx, lengths = _windows([201, 150, 3])
    out, out_len = StochasticLength(2.0, 200)(idx, lengths, np.random.default_rng(0))
    assert np.array_equal(out, idx) and np.array_equal(out_len, lengths)


def test_shortened_windows_are_ordered_subsets_of_target_length():
    sl = StochasticLength(1.5, 200)  # target length floor(200 ** 0.75) = 53
    idx, lengths = _windows([201] * 50 + [20])
    out, out_len = sl(idx, lengths, np.random.default_rng(1))
    assert sl.target_len == 53
    assert out_len.sum() == len(out)
    assert out_len[-1] == 20  # short windows are never touched
    starts = np.cumsum(out_len) - out_len
    orig_starts = np.cumsum(lengths) - lengths
    for w in range(len(lengths)):
        piece = out[starts[w] : starts[w] + out_len[w]]
        original = idx[orig_starts[w] : orig_starts[w] + lengths[w]]
        assert np.all(np.diff(piece) > 0) and np.isin(piece, original).all()
        assert out_len[w] in (lengths[w], sl.target_len + 1)


def test_shortening_probability_follows_n_alpha_over_n_squared():
    sl = StochasticLength(1.6, 200)
    n = 200
    idx, lengths = _windows([n + 1] * 4000)
    _, out_len = sl(idx, lengths, np.random.default_rng(2))
    shortened = np.mean(out_len < n + 1)
    assert shortened == pytest.approx(1 - 200**1.6 / n**2, abs=0.03)


def test_alpha_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="alpha"):
        StochasticLength(0.9, 200)
