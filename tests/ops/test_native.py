"""genrec.ops.native: building, caching and loading the C++ kernels, failing softly, and the
AVX2 (8-lane) code paths that a CPU with AVX-512 would not otherwise build."""

from __future__ import annotations

import logging
import platform

import pytest
import torch
from attention_cases import make_case, output_and_grads, relative_error

from genrec.ops import gather_dot, layer, native
from genrec.ops.attention import hstu_attention_reference
from genrec.ops.attention import native as native_attention
from genrec.ops.dense import (
    layer_norm_gate_linear,
    layer_norm_gate_linear_reference,
    layer_norm_linear_silu,
    layer_norm_linear_silu_reference,
)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty build cache and no library loaded yet in this process."""
    monkeypatch.setenv("GENREC_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "ENABLED", True)
    return tmp_path


def test_builds_once_into_the_cache_and_reuses_the_build(fresh, monkeypatch):
    lib = native.load("gather_dot")
    assert lib is not None and lib.genrec_native_openmp() == 1
    builds = list(fresh.iterdir())
    assert len(builds) == 1 and builds[0].name.startswith("gather_dot-")  # no partial files
    stamp = builds[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_loaded", {})  # as a new process would
    assert native.load("gather_dot") is not None
    assert [p.name for p in fresh.iterdir()] == [builds[0].name]
    assert builds[0].stat().st_mtime_ns == stamp


def test_a_failing_compiler_means_the_pytorch_path(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "false")  # exits 1 on every build
    with caplog.at_level(logging.WARNING, logger="genrec.ops.native"):
        assert native.load("gather_dot") is None
    assert "gather_dot unavailable" in caplog.text and "GENREC_NATIVE=0" in caplog.text
    assert list(fresh.iterdir()) == []
    # and gather_dot's backward still runs, on the embedding-bag path
    queries = torch.randn(5, 3, requires_grad=True)
    table = torch.randn(4, 3, requires_grad=True)
    ids = torch.tensor([[0, 1], [1, 1], [3, 0], [2, 2], [0, 3]])
    gather_dot(queries, table, ids).sum().backward()
    rows = queries.detach().repeat_interleave(2, 0)  # query t once per id of its row
    expected = torch.zeros(4, 3).index_add_(0, ids.flatten(), rows)
    torch.testing.assert_close(table.grad, expected)


def test_no_compiler_and_disabled(fresh, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    assert native.compiler() is None
    assert native.load("gather_dot") is None
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "ENABLED", False)
    assert native.load("gather_dot") is None
    assert list(fresh.iterdir()) == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GENREC_NATIVE_CACHE", str(tmp_path / "x"))
    assert native.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("GENREC_NATIVE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / "genrec" / "native"


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as info:
            return " avx2" in info.read()
    except OSError:
        return False


X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.mark.parametrize("arch", [
    pytest.param("haswell", marks=pytest.mark.skipif(
        not (X86 and _has_avx2()), reason="AVX2 code paths: x86-64 CPUs with AVX2 only")),
    pytest.param("x86-64", marks=pytest.mark.skipif(not X86, reason="an x86-64 baseline")),
])
def test_portable_builds_match_the_reference(arch, fresh, monkeypatch):
    """Builds for other CPUs than this one (which builds 16-lane AVX-512 code): the 8-lane
    AVX2 code (the issue's laptop), and a baseline x86-64 build without AVX, whose vectors are
    the compiler's generic ones (as on CPUs without an x86 SIMD path)."""
    monkeypatch.setattr(native, "FLAGS", tuple(
        f"-march={arch}" if flag == "-march=native" else flag for flag in native.FLAGS))
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(70, 50, generator=g), torch.randn(200, 50, generator=g)
    with torch.no_grad():
        projected = layer_norm_linear_silu(x, w, 1e-6)
        gated = layer_norm_gate_linear(x, x, w, w[:, 0], None, eps=1e-6)
    assert relative_error(projected, layer_norm_linear_silu_reference(
        x.double(), w.double(), 1e-6)) < 1e-5
    assert relative_error(gated, layer_norm_gate_linear_reference(
        x.double(), x.double(), w.double(), w[:, 0].double(), None, 1e-6)) < 1e-5

    case = make_case(lengths=[37, 1, 20, 9], heads=2, dqk=25, dv=25, max_seq_len=40, seed=3)
    native_fn = lambda c: native_attention.hstu_attention_native(  # noqa: E731
        c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())
    reference_fn = lambda c: hstu_attention_reference(  # noqa: E731
        c.q, c.k, c.v, c.seq_offsets, c.max_seq_len, **c.kwargs())
    got = output_and_grads(native_fn, case.cast(torch.float32))
    want = output_and_grads(reference_fn, case.cast(torch.float64))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert relative_error(a, b) < 1e-5, f"result {i}"

    # the whole layer per sequence (attention.cpp with dense.h), native however few sequences
    monkeypatch.setattr(layer, "SEQUENCES_PER_THREAD", 0)
    tokens = case.q.shape[0]
    w1, w2 = torch.randn(200, 50, generator=g) * 0.3, torch.randn(50, 50, generator=g) * 0.3
    x, b2 = torch.randn(tokens, 50, generator=g), torch.randn(50, generator=g)
    args = dict(num_heads=2, attention_dim=25, linear_dim=25, alpha=case.alpha,
                timestamps=case.timestamps, query_timestamps=case.query_timestamps, eps=1e-6)
    tables = (case.pos_weights.detach(), case.time_weights.detach())
    with torch.no_grad():
        got = layer.hstu_layer(x, w1, w2, b2, case.seq_offsets, case.max_seq_len, **args,
                               pos_weights=tables[0], time_weights=tables[1])
    want = layer.hstu_layer_reference(
        *(t.double() for t in (x, w1, w2, b2)), case.seq_offsets, case.max_seq_len, **args,
        pos_weights=tables[0].double(), time_weights=tables[1].double())
    assert relative_error(got, want) < 1e-5
    assert {p.name.split("-")[0] for p in fresh.iterdir()} == {"attention", "dense"}
