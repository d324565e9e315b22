"""The PyTorch reference (the CPU path and the kernel's specification) against a float64 loop."""

from __future__ import annotations

import pytest
import torch
from attention_cases import bucket, loop_attention, make_case, output_and_grads, relative_error

from genrec.ops.attention import hstu_attention_reference, time_buckets
from genrec.ops.attention.reference import bucket_thresholds

REFERENCE_CASES = {
    "causal_both_biases": dict(lengths=[1, 4, 7]),
    "causal_candidates": dict(lengths=[6, 3, 5], candidates=[2, 0, 5]),
    "non_causal_candidates_pos_only": dict(lengths=[5, 6], candidates=[3, 1], causal=False,
                                           time=False),
    "no_bias_wide_table": dict(lengths=[2, 5], pos=False, time=False, max_seq_len=9, dv=3),
}


def reference(c):
    return hstu_attention_reference(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_reference_matches_loop_forward_and_gradients(name):
    case = make_case(**REFERENCE_CASES[name], dtype=torch.float64)
    ours = output_and_grads(reference, case)
    loop = output_and_grads(loop_attention, case)
    assert len(ours) == len(loop) == 1 + len(case.differentiable())
    for got, want in zip(ours, loop, strict=True):
        assert relative_error(got, want) < 1e-12


def test_reference_gradients_reach_both_bias_tables():
    case = make_case([3, 5])
    reference(case).sum().backward()
    assert case.pos_weights.grad is not None and case.pos_weights.grad.abs().sum() > 0
    assert case.time_weights.grad is not None and case.time_weights.grad.abs().sum() > 0


def test_time_buckets_match_the_formula_and_clamp():
    gaps = torch.tensor([0, 1, -1, 2, 3, 10, -10, 1000, 10**9, -(10**12)])
    want = [bucket(int(g), 40) for g in gaps]
    assert time_buckets(gaps, 40).tolist() == want
    assert time_buckets(torch.tensor([10**12]), 5).item() == 4


def test_bucket_thresholds_are_the_first_gap_of_each_bucket():
    thresholds = bucket_thresholds(100).tolist()
    for k, first in enumerate(thresholds):
        assert bucket(first, 10**9) >= k
        assert first == 1 or bucket(first - 1, 10**9) < k
