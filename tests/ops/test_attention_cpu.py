"""The CPU path's tiles (length-grouped, causal-tiled, fused) against the PyTorch reference.

Output and every gradient (q, k, v, both tables): relative error below 1e-5 in fp32 and 1e-10
in float64 against the float64 reference. Most tests run the tile functions eagerly (compiling
each flag set costs seconds); one test holds the torch.compile'd tiles to the eager ones.
"""

from __future__ import annotations

import logging

import pytest
import torch
from attention_cases import CPU_CASES, make_case, nan_buffers, output_and_grads, relative_error

import genrec.ops.attention as attention
from genrec.ops import hstu_attention
from genrec.ops.attention import cpu, hstu_attention_reference, native, time_buckets
from genrec.ops.attention.reference import bucket_thresholds

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}



def reference(c):
    return hstu_attention_reference(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())


def fast(c):
    return cpu.hstu_attention_cpu(c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())


@pytest.fixture(autouse=True)
def tiles(monkeypatch):
    """This file tests the tiles; float32 would otherwise take the C++ kernel
    (test_attention_native.py)."""
    monkeypatch.setattr(native, "ENABLED", False)


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setattr(cpu, "COMPILE", False)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """The op's buffers (out, dq, dk, dv) start as NaN, so an element left unwritten shows."""
    monkeypatch.setattr(cpu, "new_output", nan_buffers)


def assert_matches_reference(case, dtype):
    got = output_and_grads(fast, case.cast(dtype))
    want = output_and_grads(reference, case.cast(torch.float64))
    assert len(got) == len(want) == 1 + len(case.differentiable())
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == dtype
        assert torch.isfinite(g).all(), f"result {i} has NaN/inf: an element was never written"
        assert relative_error(g, w) < TOLERANCE[dtype], f"result {i}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", sorted(CPU_CASES))
def test_cpu_path_matches_reference_forward_and_all_gradients(name, dtype, eager,
                                                              poisoned_outputs):
    assert_matches_reference(make_case(**CPU_CASES[name], seed=len(name)), dtype)


def test_cpu_path_with_alpha_and_integer_timestamps_of_another_dtype(eager):
    case = make_case([40, 7, 66], seed=3)
    case.alpha = 0.3
    case.timestamps, case.query_timestamps = (case.timestamps.int(),
                                              case.query_timestamps.int())
    assert_matches_reference(case, torch.float32)


def test_cpu_path_takes_no_gradient_it_is_not_asked_for(eager):
    case = make_case([5, 70], seed=4)
    case.pos_weights.requires_grad_(False)
    case.time_weights.requires_grad_(False)
    out = fast(case)
    dq, = torch.autograd.grad(out.sum(), [case.q])
    want, = torch.autograd.grad(reference(case).sum(), [case.q])
    assert relative_error(dq, want) < 1e-5


def test_cpu_path_of_an_empty_batch(eager):
    case = make_case([0, 0])
    assert fast(case).shape == (0, 2, 8)


def _bucket_test_gaps() -> torch.Tensor:
    """Every bucket edge ±1 and ±2, and 200k log-uniform gaps up to 2**52, both signs."""
    edges = bucket_thresholds(cpu.THRESHOLD_COUNT)
    edges = edges[edges < 2**53 - 2]
    g = torch.Generator().manual_seed(11)
    drawn = torch.exp(torch.rand(200_000, generator=g, dtype=torch.float64) * 52 * 0.6931)
    drawn = drawn.long() * (torch.randint(0, 2, (200_000,), generator=g) * 2 - 1)
    return torch.cat([edges - 2, edges - 1, edges, edges + 1, edges + 2, -edges, drawn,
                      torch.tensor([0, 1, 2**40, -(2**52)])])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_time_buckets_equal_the_float64_reference_at_every_edge(compiled):
    """Exact for gaps below 2**53 (the reference's float64 is itself inexact above), eagerly
    and through inductor (whose vectorised log is not the eager one)."""
    gaps = _bucket_test_gaps()
    fn = torch.compile(cpu._time_buckets, dynamic=True) if compiled else cpu._time_buckets
    for num_buckets in (129, 3, 160):
        want = time_buckets(gaps, num_buckets)
        got = fn(gaps, bucket_thresholds(cpu.THRESHOLD_COUNT), num_buckets)
        assert torch.equal(got, want)


def test_cpu_path_is_deterministic(eager):
    case = make_case([200, 3, 150, 77, 1], seed=5, max_seq_len=211)
    first = output_and_grads(fast, case)
    second = output_and_grads(fast, case)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_small_calls_run_eagerly(monkeypatch):
    monkeypatch.setattr(cpu, "_compiled", {})
    monkeypatch.setattr(cpu, "COMPILE", True)
    fast(make_case([30, 20]))
    assert cpu._compiled == {}


def test_chunks_group_similar_lengths_and_cover_every_token_once():
    lengths = [200, 3, 0, 190, 1, 180, 2, 60, 59]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    plan = cpu.plan_chunks(offsets, None, heads=1, causal=True)
    assert sorted(plan.gather[plan.scatter].tolist()) == list(range(sum(lengths)))
    widths = [c.width for c in plan.chunks]
    assert widths == sorted(widths, reverse=True) and widths[0] == 200
    assert sum(c.size for c in plan.chunks) == len(lengths) - lengths.count(0)
    # a causal 200-wide chunk is cut into query blocks whose keys stop at the block's end
    assert all(end == hi for _, hi, end in plan.chunks[0].tiles)
    assert len(plan.chunks[0].tiles) > 1


def test_compiled_tiles_match_eager_tiles(monkeypatch):
    """One flag set through torch.compile (inductor), against the same tiles run eagerly."""
    case = make_case([130, 5, 64, 1, 90], candidates=[3, 0, 10, 1, 0], heads=2, seed=6,
                     max_seq_len=140)
    monkeypatch.setattr(cpu, "_compiled", {})
    monkeypatch.setattr(cpu, "_verified", set())
    monkeypatch.setattr(cpu, "_compile_broken", False)
    monkeypatch.setattr(cpu, "COMPILE", True)
    monkeypatch.setattr(cpu, "COMPILE_MIN_ELEMENTS", 0)
    compiled = output_and_grads(fast, case)
    assert not cpu._compile_broken, "torch.compile failed here; see the logged warning"
    # the time buckets, the forward and the backward tiles ran compiled
    assert {key[0] for key in cpu._verified} == {"tile_buckets", "tile_scores",
                                                 "tile_score_grads"}
    assert output_and_grads(fast, case)[0].equal(compiled[0])  # deterministic when compiled
    monkeypatch.setattr(cpu, "COMPILE", False)
    eager_results = output_and_grads(fast, case)
    for got, want in zip(compiled, eager_results, strict=True):
        assert relative_error(got, want) < 1e-6


def test_failed_compilation_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def run(*args, **flags):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(cpu, "_compiled", {})
    monkeypatch.setattr(cpu, "_verified", set())
    monkeypatch.setattr(cpu, "_compile_broken", False)
    monkeypatch.setattr(cpu, "COMPILE", True)
    monkeypatch.setattr(cpu, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(torch, "compile", broken_compile)
    case = make_case([6, 70], seed=7)
    with caplog.at_level(logging.WARNING, logger=cpu.__name__):
        got = output_and_grads(fast, case)
    assert cpu._compile_broken and "running eagerly" in caplog.text
    for g, w in zip(got, output_and_grads(reference, case), strict=True):
        assert relative_error(g, w) < 1e-5


@pytest.fixture
def backend_spy(monkeypatch):
    calls = []
    for name, label in (("hstu_attention_cpu", "cpu"), ("hstu_attention_reference", "torch")):
        real = getattr(attention, name)

        def recorded(*args, _real=real, _label=label, **kwargs):
            calls.append(_label)
            return _real(*args, **kwargs)

        monkeypatch.setattr(attention, name, recorded)
    monkeypatch.delenv("GENREC_ATTENTION_BACKEND", raising=False)
    return calls


def call(case, **kwargs):
    return hstu_attention(case.q, case.k, case.v, case.seq_offsets, case.max_seq_len,
                          **case.kwargs(), **kwargs)


def test_dispatch_picks_the_cpu_path_on_cpu_by_default(backend_spy, eager):
    call(make_case([3, 4]))
    assert backend_spy == ["cpu"]


def test_dispatch_keeps_torch_as_the_plain_reference(backend_spy, monkeypatch):
    call(make_case([3, 4]), backend="torch")
    monkeypatch.setenv("GENREC_ATTENTION_BACKEND", "torch")
    call(make_case([3, 4]))
    assert backend_spy == ["torch", "torch"]


def test_environment_variable_names_the_cpu_backend(backend_spy, monkeypatch, eager):
    monkeypatch.setenv("GENREC_ATTENTION_BACKEND", "cpu")
    call(make_case([3, 4]))
    assert backend_spy == ["cpu"]


def test_layers_of_one_batch_share_one_plan(monkeypatch, eager):
    """Every layer (and the backward) reuses the batch's plan and time buckets; a new or
    modified batch is planned again."""
    calls = []
    real = cpu.prepare

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu, "prepare", counted)
    monkeypatch.setattr(cpu, "_last", [None])
    case = make_case([5, 9, 3], seed=8)
    first = fast(case)
    second = cpu.hstu_attention_cpu(first, case.k, case.v, case.seq_offsets, case.max_seq_len,
                                    **case.kwargs())  # a second layer on the first's output
    second.sum().backward()
    assert len(calls) == 1 and case.q.grad is not None
    case.timestamps.add_(1)  # in place: the version changes
    fast(case)
    assert len(calls) == 2
    fast(make_case([4, 4], seed=9))
    assert len(calls) == 3
