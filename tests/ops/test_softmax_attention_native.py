"""SASRec's softmax attention on the C++ kernel (float32) against a float64 statement.

The reference is written here, padded, in float64: softmax over the allowed keys (causal; a
candidate sees the history and itself), weights times a 0/1 keep mask / (1 − p), times V.
With dropout, the kernel's own mask is read off a call with V = identity (the output rows
are then the dropped weights), and the same seed gives the same mask again.
"""

from __future__ import annotations

import math

import pytest
import torch
from attention_cases import nan_buffers

from genrec.ops import native
from genrec.ops.attention import native as native_attention
from genrec.ops.softmax_attention import attention_plan, causal_softmax_attention


@pytest.fixture(autouse=True)
def built():
    assert native.load("attention") is not None, "the C++ kernel did not build here"


def offsets_of(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])


def reference(q, k, v, lengths, candidates=None, keep=None, p=0.0):
    """[T, H, dh] in float64; keep: [T, H, T] 0/1 over (query, head, key) or None."""
    q, k, v = q.double(), k.double(), v.double()
    out, start = [], 0
    for b, n in enumerate(lengths):
        rows = slice(start, start + n)
        logits = torch.einsum("ihd,jhd->hij", q[rows], k[rows]) / math.sqrt(q.shape[2])
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = j <= i
        if candidates is not None:
            first = n - int(candidates[b])
            allowed = allowed & ~((i >= first) & (j >= first) & (i != j))
        weights = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)
        if keep is not None:
            weights = weights * keep[rows, :, rows].permute(1, 0, 2).double() / (1 - p)
        out.append(torch.einsum("hij,jhd->ihd", weights, v[rows]))
        start += n
    return torch.cat(out)


def inputs(lengths, heads, dim, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    qkv = torch.randn(tokens, 3, heads, dim, generator=g)  # q, k, v are strided views, as in SASRec
    return [t.detach().requires_grad_() for t in qkv.unbind(1)]


def grads(out, tensors, seed=1):
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, tensors, upstream)


def relative_error(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.fixture
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(native_attention, "new_output", nan_buffers)


@pytest.mark.parametrize("heads,dim", [(1, 50), (2, 8), (3, 5)])
def test_native_softmax_matches_float64_reference(heads, dim, poisoned_outputs):
    lengths = [1, 70, 5, 0, 33, 128, 2]
    q, k, v = inputs(lengths, heads, dim, seed=heads)
    plan = attention_plan(offsets_of(lengths), None, heads)
    out = causal_softmax_attention(q, k, v, plan)
    want = reference(q, k, v, lengths)
    assert torch.isfinite(out).all() and relative_error(out, want) < 1e-5
    for got, ref in zip(grads(out, (q, k, v)), grads(want, (q, k, v)), strict=True):
        assert torch.isfinite(got).all() and relative_error(got, ref) < 1e-5


def test_native_softmax_with_candidates():
    lengths, candidates = [6, 40, 9, 3], torch.tensor([2, 10, 0, 3])
    q, k, v = inputs(lengths, 2, 8, seed=4)
    plan = attention_plan(offsets_of(lengths), candidates, 2)
    out = causal_softmax_attention(q, k, v, plan, candidates=True)
    want = reference(q, k, v, lengths, candidates)
    assert relative_error(out, want) < 1e-5
    for got, ref in zip(grads(out, (q, k, v)), grads(want, (q, k, v)), strict=True):
        assert relative_error(got, ref) < 1e-5


def test_native_dropout_forward_and_gradients_use_one_mask():
    lengths, heads, dim, p = [40, 7, 64], 2, 8, 0.3
    tokens = sum(lengths)
    q, k, v = inputs(lengths, heads, dim, seed=5)
    plan = attention_plan(offsets_of(lengths), None, heads)
    # the mask: with V = identity over the tokens, output row i is its dropped weights
    eye = torch.eye(tokens)[:, None, :].expand(tokens, heads, tokens)
    torch.manual_seed(3)
    with torch.no_grad():
        weights = causal_softmax_attention(q, k, eye.contiguous(), plan, dropout_p=p)
    allowed = reference(q, k, eye, lengths) > 0  # [T, H, T]
    keep = weights > 0
    assert (keep <= allowed).all()
    dropped = 1 - keep[allowed].float().mean().item()
    assert abs(dropped - p) < 0.03, dropped
    # the same seed, real V: forward and every gradient against the reference with that mask
    # (the kernel draws per (sequence, head, query, key), whatever V's width)
    torch.manual_seed(3)
    out = causal_softmax_attention(q, k, v, plan, dropout_p=p)
    want = reference(q, k, v, lengths, keep=keep, p=p)
    assert relative_error(out, want) < 1e-5
    for got, ref in zip(grads(out, (q, k, v)), grads(want, (q, k, v)), strict=True):
        assert relative_error(got, ref) < 1e-5


def test_native_softmax_results_do_not_depend_on_the_thread_count():
    lengths = [200, 3, 150, 77, 1, 0, 64]
    q, k, v = inputs(lengths, 2, 8, seed=6)
    plan = attention_plan(offsets_of(lengths), None, 2)
    threads, runs = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(0)
            out = causal_softmax_attention(q, k, v, plan, dropout_p=0.2)
            runs.append([out, *grads(out, (q, k, v))])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert torch.equal(a, b)
