"""The C++ kernel of the CPU path (float32) against the float64 reference.

Output and every gradient (q, k, v, both tables) within 1e-5 relative error on the layouts
of attention_cases.CPU_CASES plus wide heads; buffers poisoned with NaN so an unwritten
element shows; q, k, v read in place at a row stride; results independent of the thread
count; time buckets equal to the float64 reference at every edge.
"""

from __future__ import annotations

import pytest
import torch
from attention_cases import CPU_CASES, make_case, nan_buffers, output_and_grads, relative_error

from genrec.ops import hstu_attention, native
from genrec.ops.attention import cpu, hstu_attention_reference, time_buckets
from genrec.ops.attention import native as native_attention
from genrec.ops.attention.reference import bucket_thresholds

CASES = {
    **CPU_CASES,
    # dims past one vector group (4 × 16 floats with AVX-512, 2 × 8 otherwise)
    "wide_heads": dict(lengths=[33, 17, 64, 5], heads=1, dqk=50, dv=70, max_seq_len=64),
    "many_short": dict(lengths=[1, 2, 3, 4, 5, 6, 7, 8] * 4, heads=3, dqk=4, dv=6),
}

@pytest.fixture(autouse=True)
def built():
    assert native.load("attention") is not None, "the C++ kernel did not build here"


def reference(c):
    return hstu_attention_reference(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())


def fast(c):
    return native_attention.hstu_attention_native(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len,
                                                  **c.kwargs())


@pytest.fixture
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(native_attention, "new_output", nan_buffers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_native_matches_reference_forward_and_all_gradients(name, poisoned_outputs):
    case = make_case(**CASES[name], seed=len(name))
    got = output_and_grads(fast, case.cast(torch.float32))
    want = output_and_grads(reference, case.cast(torch.float64))
    assert len(got) == len(want) == 1 + len(case.differentiable())
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == torch.float32
        assert torch.isfinite(g).all(), f"result {i} has NaN/inf: an element was never written"
        assert relative_error(g, w) < 1e-5, f"result {i}"


def test_native_reads_strided_views_in_place():
    """The model's q, k, v are column slices of one projection [T, 4·H·D]: same results as
    contiguous copies."""
    case = make_case([40, 7, 66], heads=2, dqk=8, dv=8, seed=3)
    tokens = case.q.shape[0]
    fused = torch.cat([t.detach().reshape(tokens, -1) for t in (case.q, case.k, case.v)]
                      + [torch.zeros(tokens, 5)], dim=1).requires_grad_()
    q, k, v = (fused[:, i * 16:(i + 1) * 16].view(tokens, 2, 8) for i in range(3))
    assert not q.is_contiguous()
    strided = case.cast(torch.float32)
    strided.q, strided.k, strided.v = q, k, v
    out = fast(strided)
    want = fast(case)
    assert torch.equal(out, want)
    (grad,) = torch.autograd.grad(out.sum(), [fused])
    want_grads = torch.autograd.grad(want.sum(), [case.q, case.k, case.v])
    for i, g in enumerate(want_grads):
        assert torch.equal(grad[:, i * 16:(i + 1) * 16].view(tokens, 2, 8), g)


def test_native_results_do_not_depend_on_the_thread_count():
    case = make_case([200, 3, 150, 77, 1, 0, 64], seed=5, max_seq_len=211)
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(output_and_grads(fast, case))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert torch.equal(a, b)


def test_native_without_gradients_and_with_tables_frozen():
    case = make_case([5, 70, 12], seed=4)
    with torch.no_grad():
        assert relative_error(fast(case), reference(case)) < 1e-5
    case.pos_weights.requires_grad_(False)
    case.time_weights.requires_grad_(False)
    out = fast(case)
    got = torch.autograd.grad(out.sum(), [case.q, case.k, case.v])
    want = torch.autograd.grad(reference(case).sum(), [case.q, case.k, case.v])
    for g, w in zip(got, want, strict=True):
        assert relative_error(g, w) < 1e-5


def test_native_of_an_empty_batch():
    case = make_case([0, 0])
    out = fast(case)
    assert out.shape == (0, 2, 8)
    out.sum().backward()
    assert case.q.grad.shape == (0, 2, 8) and case.pos_weights.grad.abs().sum() == 0


@pytest.mark.parametrize("table", [129, 160, 161, 200])
def test_native_time_term_over_every_bucket_of_small_and_large_tables(table):
    """Gaps spread log-uniformly up to 2**62 reach buckets 0..~145: every 32-entry part of the
    in-register lookup (tables up to 160 entries) and the gather beyond it, forward and
    gradients against the float64 reference."""
    case = make_case([97, 40, 3, 130], heads=2, dqk=5, dv=7, seed=table)
    g = torch.Generator().manual_seed(table)
    total = case.q.shape[0]
    spread = torch.exp(torch.rand(total, generator=g, dtype=torch.float64) * 62 * 0.6931)
    case.timestamps = torch.sort(spread.long()).values
    case.query_timestamps = case.timestamps.flip(0).clone()
    case.time_weights = torch.randn(table, generator=g).requires_grad_()
    seen = set()  # the buckets of the pairs attended: every 32-entry part in play
    for start, end in zip(case.seq_offsets[:-1].tolist(), case.seq_offsets[1:].tolist()):
        gaps = case.query_timestamps[start:end, None] - case.timestamps[None, start:end]
        seen |= set(time_buckets(gaps, table).tril().unique().tolist())
    assert len(seen) > 50 and max(seen) >= 128
    want = output_and_grads(reference, case.cast(torch.float64))
    before = torch.get_num_threads()
    try:  # 4 sequences: one thread takes all heads of a sequence (the block's shared time
        for threads in (1, 2):  # terms), two take a head each (each row's own)
            torch.set_num_threads(threads)
            got = output_and_grads(fast, case.cast(torch.float32))
            for i, (g32, w64) in enumerate(zip(got, want, strict=True)):
                assert relative_error(g32, w64) < 1e-5, f"result {i}, {threads} threads"
    finally:
        torch.set_num_threads(before)


def test_time_buckets_equal_the_float64_reference_at_every_edge():
    """Every edge ±1, ±2 and log-uniform gaps of both signs, one single-token sequence per
    gap (the kernel's bucket of its one pair)."""
    edges = bucket_thresholds(native_attention.THRESHOLD_COUNT)
    edges = edges[edges < 2**53 - 2]
    g = torch.Generator().manual_seed(11)
    drawn = torch.exp(torch.rand(50_000, generator=g, dtype=torch.float64) * 52 * 0.6931)
    drawn = drawn.long() * (torch.randint(0, 2, (50_000,), generator=g) * 2 - 1)
    gaps = torch.cat([edges - 2, edges - 1, edges, edges + 1, edges + 2, -edges, drawn,
                      torch.tensor([0, 1, -1, 2**40, -(2**52)])])
    offsets = torch.arange(gaps.numel() + 1)
    timestamps = torch.full_like(gaps, 7)
    for num_buckets in (129, 3, 160):
        layout = native_attention._layout(offsets, None, timestamps, timestamps + gaps,
                                          causal=True, num_buckets=num_buckets)
        pairs, slack = layout.buckets[:gaps.numel()], layout.buckets[gaps.numel():]
        assert torch.equal(pairs.long(), time_buckets(gaps, num_buckets))
        assert slack.numel() == native_attention.BUCKET_SLACK and not slack.any()


def test_time_buckets_of_long_rows_equal_the_reference():
    """Rows of up to 700 keys (whole vectors of gaps and partial ones, every row length),
    timestamps spread over ±2**50 (gaps below 2**53) so the gaps span every bucket, both signs."""
    g = torch.Generator().manual_seed(12)
    lengths = [700, 9, 1, 33]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    total = sum(lengths)
    scale = torch.exp(torch.rand(total, generator=g, dtype=torch.float64) * 48 * 0.6931)
    ts = (scale * torch.randn(total, generator=g, dtype=torch.float64)).long()
    qts = ts.flip(0) + torch.randint(-3, 4, (total,), generator=g)
    for causal in (True, False):
        layout = native_attention._layout(offsets, None, ts, qts, causal=causal, num_buckets=129)
        for b, n in enumerate(lengths):
            start, square = int(offsets[b]), int(layout.square_offsets[b])
            rows = layout.buckets[square:square + n * n].reshape(n, n).long()
            gaps = qts[start:start + n, None] - ts[None, start:start + n]
            expected = time_buckets(gaps, 129)
            assert torch.equal(rows, expected.tril() if causal else expected)


def test_time_buckets_of_pairs_a_causal_row_does_not_attend_are_zero():
    """The kernel reads a row's buckets in whole vectors: the bytes past the diagonal are
    0, a valid bucket (masked afterwards), never stale memory."""
    offsets = torch.tensor([0, 5, 12])
    ts = torch.arange(12) * 1000
    layout = native_attention._layout(offsets, None, ts, ts + 500, causal=True, num_buckets=129)
    for start, n, square in ((0, 5, 0), (5, 7, 25)):
        rows = layout.buckets[square:square + n * n].reshape(n, n).long()
        gaps = (ts[start:start + n, None] + 500 - ts[None, start:start + n])
        expected = time_buckets(gaps, 129).tril()
        assert torch.equal(rows, expected)


def test_native_runs_for_float32_on_cpu_and_tiles_otherwise(monkeypatch):
    calls = []
    real = native_attention.hstu_attention_native

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(native_attention, "hstu_attention_native", spy)
    case = make_case([9, 4], seed=2)
    for dtype in (torch.float32, torch.float64):
        c = case.cast(dtype)
        hstu_attention(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())
    monkeypatch.setattr(native_attention, "ENABLED", False)
    want = cpu.hstu_attention_cpu(case.q, case.k, case.v, case.seq_offsets, case.max_seq_len,
                                  **case.kwargs())
    assert calls == [torch.float32]  # float64, and float32 when disabled: the tiles
    assert relative_error(want, fast(case)) < 1e-5


def test_layers_of_one_batch_share_one_layout(monkeypatch):
    """The time buckets are computed once per batch: every layer and the backward reuse
    them; a modified batch gets new ones."""
    calls = []
    real = native_attention._layout

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(native_attention, "_layout", counted)
    monkeypatch.setattr(native_attention, "_slot", [None])
    case = make_case([30, 12], seed=8)
    for _ in range(3):  # three layers
        out = fast(case)
    out.sum().backward()
    assert len(calls) == 1
    case.timestamps.add_(5)  # in place: a new batch's times
    fast(case)
    assert len(calls) == 2
