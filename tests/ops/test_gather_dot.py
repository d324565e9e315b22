"""genrec.ops.gather (per-position sampled-softmax logits) against the plain reference.

Forward and both gradients, eager (chunked) and torch.compile'd, relative error below 1e-5 in
fp32 against the float64 reference; duplicate ids within and across rows; deterministic. Each
gradient test runs both backward paths: the native kernel and the embedding-bag fallback.
"""

from __future__ import annotations

import pytest
import torch

import genrec.ops.gather as gather_module
from genrec.ops import gather_dot, native
from genrec.ops.gather import gather_dot_reference


@pytest.fixture(params=["native", "embedding_bag"])
def backward_path(request, monkeypatch):
    """Run the test with the native backward kernel, then with the PyTorch fallback."""
    if request.param == "native":
        assert native.compiler() is not None, "the tests need a C++ compiler (as inductor does)"
        assert native.load("gather_dot") is not None
    else:
        monkeypatch.setattr(native, "ENABLED", False)
    return request.param


def _case(num_queries: int, per_query: int, rows: int, dim: int, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_queries, dim, generator=g, dtype=dtype)
    table = torch.randn(rows, dim, generator=g, dtype=dtype)
    # few rows: every row repeats many times, within a query and across queries
    ids = torch.randint(0, rows, (num_queries, per_query), generator=g)
    grad = torch.randn(num_queries, per_query, generator=g, dtype=dtype)
    return queries, table, ids, grad


def _output_and_grads(fn, queries, table, ids, grad):
    queries = queries.detach().clone().requires_grad_()
    table = table.detach().clone().requires_grad_()
    out = fn(queries, table, ids)
    return (out, *torch.autograd.grad(out, (queries, table), grad))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _reference(case):
    return _output_and_grads(gather_dot_reference, *(
        x.double() if x.is_floating_point() else x for x in case))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 5, 3, 4), (1300, 33, 40, 17)])
def test_eager_matches_float64_reference(shape, backward_path):
    case = _case(*shape)
    for got, want in zip(_output_and_grads(gather_dot, *case), _reference(case), strict=True):
        assert not got.isnan().any()
        assert _relative_error(got, want) < 1e-5


def test_eager_chunks_cover_every_query(monkeypatch, backward_path):
    monkeypatch.setattr(gather_module, "EAGER_CHUNK", 4)  # 10 queries: chunks of 4, 4 and 2
    case = _case(10, 6, 5, 3)
    got = _output_and_grads(gather_dot, *case)
    for a, b in zip(got, _reference(case), strict=True):
        assert _relative_error(a, b) < 1e-5


def test_compiled_matches_float64_reference(backward_path):
    case = _case(257, 19, 11, 9, seed=3)
    compiled = torch.compile(gather_dot, dynamic=True)
    for got, want in zip(_output_and_grads(compiled, *case), _reference(case), strict=True):
        assert _relative_error(got, want) < 1e-5


def test_float64_is_exact_to_rounding(backward_path):
    case = _case(50, 8, 6, 5, dtype=torch.float64, seed=1)
    for got, want in zip(_output_and_grads(gather_dot, *case), _reference(case), strict=True):
        assert _relative_error(got, want) < 1e-12


def test_backward_is_deterministic(backward_path):
    case = _case(600, 40, 7, 8, seed=2)
    first = _output_and_grads(gather_dot, *case)
    second = _output_and_grads(gather_dot, *case)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_rows_never_drawn_get_zero_gradient(backward_path):
    queries, table, _, grad = _case(4, 3, 6, 2)
    ids = torch.tensor([[1, 1, 2]] * 4)
    _, _, table_grad = _output_and_grads(gather_dot, queries, table, ids, grad)
    assert torch.equal(table_grad[[0, 3, 4, 5]], torch.zeros(4, 2))
    assert table_grad[1].abs().sum() > 0


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"ids \[T, K\]"):
        gather_dot(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(2, 5, dtype=torch.long))


@pytest.mark.parametrize("rows", [1 << 15, (1 << 15) + 1, 70_000])
def test_table_gradient_for_ids_beyond_16_bits(rows, backward_path):
    # the backward sorts the ids as int16 up to 2**15 rows, as int32 beyond: ids near the
    # top of each range must land on their own rows, not wrap around to negative keys
    g = torch.Generator().manual_seed(5)
    queries = torch.randn(6, 3, generator=g)
    table = torch.randn(rows, 3, generator=g)
    ids = torch.tensor([[rows - 1, 0, rows - 2], [rows - 1, 1 << 14, 5]] * 3)
    grad = torch.randn(6, 3, generator=g)
    got = _output_and_grads(gather_dot, queries, table, ids, grad)
    want = _reference((queries, table, ids, grad))
    for a, b in zip(got, want, strict=True):
        assert _relative_error(a, b) < 1e-5
    assert gather_module._key_dtype(rows) == (torch.int16 if rows <= 1 << 15 else torch.int32)


@pytest.mark.parametrize("per_row", [1, 2, 3, 7, 129, 1000, 65_537])
def test_row_of_flat_index_is_floor_division(per_row):
    # the backward maps sorted flat indices to query rows with a multiply and a shift; it
    # must equal floor division everywhere it is used, up to its bound 2**32 / per_row
    bound = gather_module._row_of_bound(per_row)
    drawn = torch.randint(0, bound, (20_000,), generator=torch.Generator().manual_seed(3))
    flat = torch.cat([torch.arange(5000), torch.arange(bound - 5000, bound), drawn])
    want = torch.div(flat, per_row, rounding_mode="floor")
    assert torch.equal(gather_module._row_of(flat, per_row), want)


def test_row_of_falls_back_to_division_past_its_bound():
    # 1366 indices pass 2**32 // per_row = 1365: the division path, which stays exact for
    # values where the multiply and shift would be off by hundreds
    per_row = 3 * (1 << 20) + 1
    flat = torch.arange(1366) * (1 << 29) + 12345
    want = torch.div(flat, per_row, rounding_mode="floor")
    assert torch.equal(gather_module._row_of(flat, per_row), want)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_backward_for_any_thread_count(threads, backward_path):
    # the native kernel splits the queries over threads, each with a private table gradient
    case = _case(301, 17, 13, 50, seed=threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        first = _output_and_grads(gather_dot, *case)
        again = _output_and_grads(gather_dot, *case)
    finally:
        torch.set_num_threads(before)
    for got, repeat, want in zip(first, again, _reference(case), strict=True):
        assert _relative_error(got, want) < 1e-5
        assert torch.equal(got, repeat)


def test_native_backward_names_an_id_outside_the_table():
    queries, table, ids, grad = _case(5, 4, 6, 3)
    ids[3, 2] = 6
    with pytest.raises(IndexError, match=r"ids\[3, 2\] = 6 is outside the table's 6 rows"):
        torch.ops.genrec.gather_dot_backward(grad, queries, table, ids)
    ids[3, 2], ids[1, 0] = 0, -1
    with pytest.raises(IndexError, match=r"ids\[1, 0\] = -1"):
        torch.ops.genrec.gather_dot_backward(grad, queries, table, ids)


def test_large_tables_take_the_fallback(monkeypatch):
    # private table gradients past NATIVE_SCRATCH_LIMIT: the sort and embedding-bag path
    case = _case(40, 9, 7, 5, seed=4)
    monkeypatch.setattr(gather_module, "NATIVE_SCRATCH_LIMIT", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert gather_module._native_backward(case[3], *case[:3]) is None
        got = _output_and_grads(gather_dot, *case)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(got, _reference(case), strict=True):
        assert _relative_error(a, b) < 1e-5


def test_mixed_dtypes_take_the_fallback():
    queries, table, ids, grad = _case(6, 3, 4, 2)
    assert gather_module._native_backward(grad.double(), queries, table, ids) is None
    assert gather_module._native_backward(grad, queries, table, ids.int()) is None
    assert gather_module._native_backward(grad, queries, table, ids) is not None


def test_native_forward_names_an_id_outside_the_table(backward_path):
    queries, table, ids, _ = _case(5, 6, 4, 3)
    ids[2, 5] = 4  # past the last of 4 rows; the native kernel checks every id
    with pytest.raises(IndexError, match=r"ids\[2, 5\] = 4 is outside the table's 4 rows"
                       if backward_path == "native" else "out of range"):
        gather_dot(queries, table, ids)
