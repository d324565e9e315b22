"""Backend choice and the errors hstu_attention raises on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_cases import make_case

from genrec.ops import hstu_attention
from genrec.ops.attention import reference

ROOT = Path(__file__).resolve().parents[2]


def call(c, **overrides):
    kwargs = dict(c.kwargs(), **overrides)
    q, k, v = (kwargs.pop(name, getattr(c, name)) for name in ("q", "k", "v"))
    seq_offsets = kwargs.pop("seq_offsets", c.seq_offsets)
    max_seq_len = kwargs.pop("max_seq_len", c.max_seq_len)
    return hstu_attention(q, k, v, seq_offsets, max_seq_len, **kwargs)


@pytest.fixture
def spy(monkeypatch):
    """Records which backend ran: 'torch', 'cpu' or 'triton'."""
    calls = []

    def wrap(module, name, label):
        real = getattr(module, name)

        def recorded(*args, **kwargs):
            calls.append(label)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)

    import genrec.ops.attention as attention

    wrap(attention, "hstu_attention_reference", "torch")
    wrap(attention, "hstu_attention_cpu", "cpu")
    pytest.importorskip("triton")
    from genrec.ops.attention import kernel

    wrap(kernel, "hstu_attention_triton", "triton")
    return calls


def test_cpu_tensors_default_to_the_cpu_backend(spy, monkeypatch):
    monkeypatch.delenv("GENREC_ATTENTION_BACKEND", raising=False)
    call(make_case([3, 4]))
    assert spy == ["cpu"]


def test_environment_variable_forces_the_triton_backend(spy, monkeypatch):
    monkeypatch.setenv("GENREC_ATTENTION_BACKEND", "triton")
    call(make_case([3, 4]))
    assert spy == ["triton"]


def test_backend_argument_overrides_the_environment(spy, monkeypatch):
    monkeypatch.setenv("GENREC_ATTENTION_BACKEND", "triton")
    call(make_case([3, 4]), backend="torch")
    assert spy == ["torch"]


def test_unknown_backend_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown backend.*'cuda'"):
        call(make_case([3]), backend="cuda")


BAD_INPUTS = {
    "k shape": (lambda c: dict(k=c.k[:, :1]), "k must have q's shape"),
    "v tokens": (lambda c: dict(v=c.v[1:]), "v must be"),
    "q rank": (lambda c: dict(q=c.q[0]), r"q must be a \[T, H, D\]"),
    "dtype mix": (lambda c: dict(k=c.k.double()), "share one floating dtype"),
    "offsets end": (lambda c: dict(seq_offsets=torch.tensor([0, 3, 6])), "end at T = 7"),
    "offsets float": (lambda c: dict(seq_offsets=c.seq_offsets.float()), "hold integers"),
    "offsets order": (lambda c: dict(seq_offsets=torch.tensor([0, 5, 3, 7])), "non-decreasing"),
    "too long for pos": (lambda c: dict(max_seq_len=3, pos_weights=torch.zeros(5)),
                         "longest sequence has 4 tokens but max_seq_len is 3"),
    "pos table size": (lambda c: dict(pos_weights=torch.zeros(4)),
                       r"pos_weights must be .* = \[7\], got \(4,\)"),
    "no timestamps": (lambda c: dict(timestamps=None), "needs timestamps"),
    "timestamps length": (lambda c: dict(timestamps=c.timestamps[1:]), "timestamps must be"),
    "candidates": (lambda c: dict(num_candidates=torch.tensor([4, 0])), "num_candidates"),
    "candidates count": (lambda c: dict(num_candidates=torch.tensor([1])), "num_candidates"),
    "max_seq_len": (lambda c: dict(max_seq_len=0), "positive int"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(name):
    overrides, message = BAD_INPUTS[name]
    case = make_case([3, 4])
    with pytest.raises(ValueError, match=message):
        call(case, **overrides(case))


def test_triton_backend_rejects_float64_with_advice():
    with pytest.raises(ValueError, match="backend='torch'"):
        call(make_case([3, 4], dtype=torch.float64), backend="triton")


def test_reference_clamps_nothing_when_inputs_are_valid():
    # the position index j − i + N − 1 spans exactly [0, 2N − 2] when the longest sequence is N
    case = make_case([4], max_seq_len=4, time=False)
    assert reference.hstu_attention_reference(case.q, case.k, case.v, case.seq_offsets, 4,
                                              **case.kwargs()).shape == (4, 2, 8)


def test_benchmark_script_imports_and_shows_help():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--check" in result.stdout and "--quick" in result.stdout
