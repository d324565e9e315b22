"""hstu_attention_last: the full op's output at each sequence's last token, and nothing else.

Forward and every gradient (q of the last tokens, k, v, both tables) against the float64
reference restricted to the last rows: relative error below 1e-5 in fp32. Without gradients,
fp32 on the CPU runs the native kernel's last-row function: held to the same reference.
"""

from __future__ import annotations

import pytest
import torch
from attention_cases import make_case, relative_error

from genrec.ops import hstu_attention_last
from genrec.ops.attention import hstu_attention_reference
from genrec.ops.attention import native as native_attention

CASES = {
    "one_token_each": dict(lengths=[1, 1, 1]),
    "mixed_lengths_both_biases": dict(lengths=[3, 70, 1, 129, 5], max_seq_len=140),
    "time_only_odd_dims": dict(lengths=[9, 2, 33], pos=False, dqk=5, dv=3, heads=1),
    "position_only": dict(lengths=[4, 17], time=False, max_seq_len=40),
    "no_bias": dict(lengths=[6, 8], pos=False, time=False),
}


def _last_rows(c) -> torch.Tensor:
    return c.seq_offsets[1:] - 1


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, upstream)


def _tables(c):
    return [t for t in (c.pos_weights, c.time_weights) if t is not None]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_at_the_last_tokens(name):
    c = make_case(**CASES[name])
    c64 = c.cast(torch.float64)
    last = _last_rows(c)
    kwargs = dict(alpha=c.alpha, pos_weights=c.pos_weights, time_weights=c.time_weights,
                  timestamps=c.timestamps, query_timestamps=c.query_timestamps)
    kwargs64 = dict(kwargs, pos_weights=c64.pos_weights, time_weights=c64.time_weights)

    q_last = c.q.detach()[last].requires_grad_()
    got = hstu_attention_last(q_last, c.k, c.v, c.seq_offsets, c.max_seq_len, **kwargs)
    want = hstu_attention_reference(c64.q, c64.k, c64.v, c64.seq_offsets, c64.max_seq_len,
                                    **kwargs64)[last]
    assert got.shape == want.shape
    assert relative_error(got, want) < 1e-5

    got_grads = _grads(got, [q_last, c.k, c.v, *_tables(c)])
    want_grads = _grads(want, [c64.q, c64.k, c64.v, *_tables(c64)])
    assert relative_error(got_grads[0], want_grads[0][last]) < 1e-5  # only last rows' q
    for a, b in zip(got_grads[1:], want_grads[1:], strict=True):
        assert relative_error(a, b) < 1e-5


def test_last_token_ignores_other_queries():
    c = make_case([5, 7])
    last = _last_rows(c)
    args = (c.k, c.v, c.seq_offsets, c.max_seq_len)
    kwargs = dict(alpha=c.alpha, pos_weights=c.pos_weights, time_weights=c.time_weights,
                  timestamps=c.timestamps, query_timestamps=c.query_timestamps)
    first = hstu_attention_last(c.q[last], *args, **kwargs)
    # query timestamps of non-last tokens are never read
    qts = c.query_timestamps.clone()
    qts[0] += 10**9
    second = hstu_attention_last(c.q[last], *args, **dict(kwargs, query_timestamps=qts))
    assert torch.equal(first, second)


def test_rejects_wrong_query_shape_and_empty_sequences():
    c = make_case([3, 4])
    with pytest.raises(ValueError, match=r"q_last must be \[B, H, Dqk\]"):
        hstu_attention_last(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, alpha=1.0)
    offsets = torch.tensor([0, 3, 3, 7])
    with pytest.raises(ValueError, match="empty sequence"):
        hstu_attention_last(c.q[:3], c.k, c.v, offsets, c.max_seq_len, alpha=1.0)


@pytest.mark.parametrize("name", list(CASES))
def test_native_inference_path_matches_reference_at_the_last_tokens(name, monkeypatch):
    assert native_attention.library() is not None, "the tests need a C++ compiler"
    calls = []
    real = native_attention.hstu_attention_last
    monkeypatch.setattr(native_attention, "hstu_attention_last",
                        lambda *a: calls.append(1) or real(*a))
    c = make_case(**CASES[name])
    c64 = c.cast(torch.float64)
    last = _last_rows(c)
    kwargs = dict(alpha=c.alpha, timestamps=c.timestamps, query_timestamps=c.query_timestamps)
    with torch.inference_mode():
        got = hstu_attention_last(c.q[last], c.k, c.v, c.seq_offsets, c.max_seq_len,
                                  pos_weights=c.pos_weights, time_weights=c.time_weights,
                                  **kwargs)
    want = hstu_attention_reference(c64.q, c64.k, c64.v, c64.seq_offsets, c64.max_seq_len,
                                    pos_weights=c64.pos_weights, time_weights=c64.time_weights,
                                    **kwargs)[last]
    assert calls == [1]
    assert got.shape == want.shape and not got.isnan().any()
    assert relative_error(got, want) < 1e-5
