"""The Triton kernel (run by Triton's CPU interpreter) against the PyTorch reference.

fp32: relative error below 1e-5 on the output and on every gradient (q, k, v, both tables).
fp16: the kernel's error against float64 at most 2× (+ a small floor) the reference's own fp16
error, as flash-attention's tests do. bf16 is checked on GPU only (`benchmarks/attention.py
--check`): Triton 3.6's interpreter computes bf16 dots wrongly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_cases import make_case, nan_buffers, output_and_grads, relative_error

from genrec.ops import hstu_attention
from genrec.ops.attention import hstu_attention_reference
from genrec.ops.attention.reference import bucket_thresholds

pytest.importorskip("triton")
from genrec.ops.attention import kernel  # noqa: E402

FP32_TOLERANCE = 1e-5

KERNEL_CASES = {
    # block edges (the interpreter tile is 16), a single token, both biases
    "causal_block_edges_both_biases": dict(lengths=[1, 16, 17, 33], heads=1),
    "causal_odd_lengths_candidates_pos": dict(lengths=[3, 7, 21], candidates=[1, 0, 18],
                                              time=False),
    "non_causal_candidates_time": dict(lengths=[5, 16, 19], candidates=[2, 16, 4], pos=False,
                                       causal=False),
    "non_causal_no_bias_odd_dims_wide_table": dict(lengths=[20, 12], dqk=12, dv=5, pos=False,
                                                   time=False, causal=False, max_seq_len=64),
    "causal_pos_table_wider_than_batch": dict(lengths=[2, 32, 0, 9], dqk=3, dv=16,
                                              max_seq_len=50, time=False),
}


def triton_attention(c):
    return hstu_attention(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, backend="triton",
                          **c.kwargs())


def torch_attention(c):
    return hstu_attention(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, backend="torch",
                          **c.kwargs())


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Kernel outputs (out, dq, dk, dv) start as NaN, so an element left unwritten shows."""
    monkeypatch.setattr(kernel, "new_output", nan_buffers)


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_kernel_matches_reference_fp32_forward_and_all_gradients(name, poisoned_outputs):
    case = make_case(**KERNEL_CASES[name], seed=len(name))
    fast = output_and_grads(triton_attention, case)
    ref = output_and_grads(torch_attention, case)
    names = ["out", "dq", "dk", "dv"] + ["d_pos"] * (case.pos_weights is not None) \
        + ["d_time"] * (case.time_weights is not None)
    for which, got, want in zip(names, fast, ref, strict=True):
        assert torch.isfinite(got).all(), f"{which} has NaN/inf: an element was never written"
        assert got.dtype == want.dtype and got.shape == want.shape
        assert relative_error(got, want) < FP32_TOLERANCE, which


def test_kernel_time_buckets_equal_float64_ones_at_bucket_edges():
    # Gaps just at and just below each bucket edge, where fp32 log alone lands one bucket off;
    # q = k = 0 so every logit is a time weight, distinct per bucket, and a wrong bucket shows.
    edges = bucket_thresholds(110)[1:]
    gaps = torch.cat([edges, edges - 1]).clamp(min=1)
    as_fp32 = torch.floor(torch.log(gaps.float()) / 0.301).long()
    assert (as_fp32 != torch.floor(torch.log(gaps.double()) / 0.301).long()).any()
    T = gaps.numel()
    case = make_case([T], heads=1, dqk=4, dv=4, pos=False, causal=False)
    case.q, case.k = torch.zeros(T, 1, 4), torch.zeros(T, 1, 4)
    case.time_weights = torch.linspace(-3.0, 3.0, 110)
    case.timestamps = torch.zeros(T, dtype=torch.int64)
    case.query_timestamps = gaps
    got = triton_attention(case)
    want = hstu_attention_reference(case.q, case.k, case.v, case.seq_offsets, T, **case.kwargs())
    assert relative_error(got, want) < FP32_TOLERANCE


def test_kernel_fp16_error_within_twice_the_reference_fp16_error():
    case = make_case([9, 17], heads=2, dqk=16, dv=16)
    exact = output_and_grads(torch_attention, case.cast(torch.float64))
    fast = output_and_grads(triton_attention, case.cast(torch.float16))
    slow = output_and_grads(torch_attention, case.cast(torch.float16))
    for got, plain, want in zip(fast, slow, exact, strict=True):
        assert torch.isfinite(got).all()
        assert relative_error(got, want) <= 2 * relative_error(plain, want) + 1e-3


def test_kernel_without_table_gradients_returns_none_for_them():
    case = make_case([6, 11])
    case.pos_weights.requires_grad_(False)
    case.time_weights.requires_grad_(False)
    out = triton_attention(case)
    out.sum().backward()
    assert case.pos_weights.grad is None and case.time_weights.grad is None
    assert case.q.grad is not None and torch.isfinite(case.q.grad).all()


def test_kernel_takes_non_contiguous_heads_from_a_fused_projection():
    case = make_case([7, 10], heads=2, dqk=8, dv=8)
    fused = torch.cat([case.q, case.k, case.v], dim=-1).detach()  # [T, H, 3·8]
    q, k, v = fused.split(8, dim=-1)
    args = (case.seq_offsets, case.max_seq_len)
    fast = hstu_attention(q, k, v, *args, backend="triton", **case.kwargs())
    ref = hstu_attention_reference(q, k, v, *args, **case.kwargs())
    assert relative_error(fast, ref) < FP32_TOLERANCE


def test_kernel_on_an_empty_batch_returns_empty():
    case = make_case([0, 0], pos=False, time=False)
    assert triton_attention(case).shape == (0, 2, 8)


def test_kernels_compile_for_hopper_without_a_gpu():
    script = Path(__file__).with_name("compile_for_gpu.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("sm_90 cubin") == 3
