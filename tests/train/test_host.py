"""Process settings for CPU training: glibc keeps freed memory for reuse when asked."""

from __future__ import annotations

import platform

import pytest

import genrec.train.host as host
import genrec.train.trainer as trainer_module
from genrec.config import preset
from genrec.data.synthetic import make_synthetic
from genrec.train import Trainer

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh():
    host.retain_freed_memory.cache_clear()
    yield
    host.retain_freed_memory.cache_clear()


def test_retain_freed_memory_sets_both_glibc_thresholds_once(fresh, monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(host.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: FakeLibc())
    assert host.retain_freed_memory() is True
    assert host.retain_freed_memory() is True  # the second call changes nothing
    assert calls == [(host.M_MMAP_THRESHOLD, host.RETAIN_BYTES),
                     (host.M_TRIM_THRESHOLD, host.RETAIN_BYTES)]


def test_retain_freed_memory_reports_a_refused_setting(fresh, monkeypatch):
    class RefusingLibc:
        def mallopt(self, option, value):
            return 0

    monkeypatch.setattr(host.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: RefusingLibc())
    assert host.retain_freed_memory() is False


def test_other_systems_are_left_alone(fresh, monkeypatch):
    monkeypatch.setattr(host.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: pytest.fail("libc loaded"))
    assert host.retain_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt exists only on glibc systems")
def test_real_glibc_accepts_the_setting(fresh):
    assert host.retain_freed_memory() is True


@pytest.mark.parametrize("enabled", [True, False])
def test_cpu_trainer_applies_the_setting_only_when_configured(tmp_path, monkeypatch, enabled):
    applied = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: applied.append(1))
    cfg = preset("ml-1m", "hstu")
    cfg.data.max_seq_len = 20
    cfg.train.device, cfg.train.compile = "cpu", False
    cfg.train.retain_freed_memory = enabled
    Trainer(cfg, make_synthetic(num_users=10, num_items=20, min_len=3, max_len=8), tmp_path)
    assert applied == ([1] if enabled else [])
