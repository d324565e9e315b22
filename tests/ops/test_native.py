"""genrec.ops.native: building, caching and loading the C++ kernels, and failing softly."""

from __future__ import annotations

import logging

import pytest
import torch

from genrec.ops import gather_dot, native


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
