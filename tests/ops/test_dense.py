"""genrec.ops.dense (fused layer norm, linear, SiLU / gate, residual) against its reference.

The native kernels run where nothing needs a gradient; their fp32 output is held to the
float64 reference (relative error below 1e-5) on random shapes that leave partial register
tiles, row blocks and vectors; with gradients, or disabled, the ops are the reference itself.
"""

from __future__ import annotations

import pytest
import torch

from genrec.ops import dense, native
from genrec.ops.dense import (
    layer_norm_gate_linear,
    layer_norm_gate_linear_reference,
    layer_norm_linear_silu,
    layer_norm_linear_silu_reference,
)

EPS = 1e-6
# (tokens, input width, output width): one row; partial tiles, blocks and vectors; HSTU-large;
# outputs ending in a half vector of 8 columns (56), whole vectors (48) and a partial whole
# vector (60, 12 columns past 48: more than half a 16-lane vector)
SHAPES = [(1, 1, 1), (5, 7, 3), (67, 50, 200), (130, 25, 17), (300, 64, 48), (40, 50, 56),
          (33, 30, 60), (70, 50, 50)]


@pytest.fixture(autouse=True)
def _native_built():
    assert native.compiler() is not None, "the tests need a C++ compiler (as inductor does)"
    assert native.load("dense") is not None


def relative_error(fast: torch.Tensor, ref: torch.Tensor) -> float:
    fast, ref = fast.double(), ref.double()
    return float((fast - ref).norm() / ref.norm().clamp(min=1e-30))


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale + torch.randn(shape[-1], generator=g)


@pytest.mark.parametrize("shape", SHAPES)
def test_project_matches_float64_reference(shape):
    tokens, width, out_width = shape
    x = _randn(tokens, width, seed=0, scale=3.0)
    weight = _randn(out_width, width, seed=1, scale=0.5)
    with torch.no_grad():
        got = layer_norm_linear_silu(x, weight, EPS)
    want = layer_norm_linear_silu_reference(x.double(), weight.double(), EPS)
    assert got.shape == (tokens, out_width) and got.dtype == torch.float32
    assert not got.isnan().any()
    assert relative_error(got, want) < 1e-5


def test_project_reads_rows_of_a_strided_input():
    wide = _randn(40, 90, seed=2)
    x = wide[:, 10:60]  # rows 90 floats apart
    weight = _randn(33, 50, seed=3)
    with torch.no_grad():
        got = layer_norm_linear_silu(x, weight, EPS)
    assert relative_error(got, layer_norm_linear_silu_reference(
        x.double(), weight.double(), EPS)) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias,with_residual", [(True, True), (False, False), (True, False)])
def test_output_matches_float64_reference(shape, with_bias, with_residual):
    tokens, width, out_width = shape
    a = _randn(tokens, width, seed=4, scale=2.0)
    u = _randn(tokens, 3 * width, seed=5)[:, width:2 * width]  # a column slice, as HSTU's U
    weight = _randn(out_width, width, seed=6, scale=0.5)
    bias = _randn(out_width, seed=7) if with_bias else None
    residual = _randn(tokens, out_width, seed=8) if with_residual else None
    with torch.no_grad():
        got = layer_norm_gate_linear(a, u, weight, bias, residual, eps=EPS)
    want = layer_norm_gate_linear_reference(
        *(t if t is None else t.double() for t in (a, u, weight, bias, residual)), EPS)
    assert got.shape == (tokens, out_width) and not got.isnan().any()
    assert relative_error(got, want) < 1e-5


def test_native_path_runs_when_no_gradient_is_needed(monkeypatch):
    calls = []
    real = dense._kernel
    monkeypatch.setattr(dense, "_kernel", lambda lib, which: calls.append(which) or
                        real(lib, which))
    x, weight = _randn(9, 6, seed=9), _randn(4, 6, seed=10)
    with torch.inference_mode():
        layer_norm_linear_silu(x, weight, EPS)
        layer_norm_gate_linear(x, x, weight, None, None, eps=EPS)
    assert calls == ["project", "output"]
    weight.requires_grad_()
    layer_norm_linear_silu(x, weight, EPS)  # needs autograd: the reference
    assert calls == ["project", "output"]


def test_gradients_flow_through_the_reference_path():
    x = _randn(6, 5, seed=11).double().requires_grad_()
    weight = _randn(3, 5, seed=12).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: layer_norm_linear_silu(x, w, EPS), (x, weight))
    u = _randn(6, 5, seed=13).double().requires_grad_()
    bias = _randn(3, seed=14).double().requires_grad_()
    residual = _randn(6, 3, seed=15).double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *t: layer_norm_gate_linear(*t, eps=EPS), (x, u, weight, bias, residual))


def test_results_do_not_depend_on_the_thread_count():
    x, weight = _randn(1000, 50, seed=16), _randn(200, 50, seed=17)
    u, w2, b2 = _randn(1000, 200, seed=18)[:, :50], _randn(50, 50, seed=19), _randn(50, seed=20)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                results.append((layer_norm_linear_silu(x, weight, EPS),
                                layer_norm_gate_linear(x, u, w2, b2, x, eps=EPS)))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_disabled_native_kernels_give_the_reference(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)
    x, weight = _randn(8, 6, seed=21), _randn(5, 6, seed=22)
    with torch.no_grad():
        torch.testing.assert_close(layer_norm_linear_silu(x, weight, EPS),
                                   layer_norm_linear_silu_reference(x, weight, EPS),
                                   rtol=0, atol=0)


def test_output_broadcasts_a_one_element_bias_as_the_reference_does():
    a, u, weight = _randn(6, 5, seed=23), _randn(6, 5, seed=24), _randn(4, 5, seed=25)
    bias = torch.tensor([0.5])  # broadcast over the 4 outputs: not the kernel's [N] layout
    with torch.no_grad():
        got = layer_norm_gate_linear(a, u, weight, bias, None, eps=EPS)
    torch.testing.assert_close(got, layer_norm_gate_linear_reference(a, u, weight, bias, None,
                                                                     EPS))
