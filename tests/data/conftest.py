"""Fixtures for the data-layer tests: tiny data sets written to tmp_path, the shared data."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from genrec.config import DataConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared_data() -> Path:
    """The project's copy of the public data sets (env GENREC_TEST_DATA, or ../shared/data)."""
    env = os.environ.get("GENREC_TEST_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set GENREC_TEST_DATA)")
    return path


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """write_file("ml-100k/u.data", text, encoding=..., gz=False) -> the path written."""

    def write(relative: str, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.replace("\n", newline).encode(encoding)
        if path.suffix == ".gz":
            data = gzip.compress(data)
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
def data_config(tmp_path: Path) -> Callable[..., DataConfig]:
    """data_config("ml-100k", min_seq_len=2, ...) reading tmp_path, caching in tmp_path/cache."""

    def make(name: str, **overrides) -> DataConfig:
        kwargs = dict(name=name, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                      min_seq_len=2)
        kwargs.update(overrides)
        return DataConfig(**kwargs)

    return make

