"""genrec.ops.embedding (a model's input rows) against its float64 reference.

The native pass runs where nothing needs a gradient (fp32, CPU); its output, written into a
NaN-poisoned buffer, is held to the float64 reference, padding rows are exactly zero, and
bad ids or positions get an error naming the token. With gradients the op is the reference.
"""

from __future__ import annotations

import math

import pytest
import torch
from attention_cases import nan_buffers

from genrec.ops import embedding, native
from genrec.ops.embedding import input_embedding, input_embedding_reference


@pytest.fixture(autouse=True)
def _poisoned_outputs(monkeypatch):
    assert native.load("dense") is not None, "the tests need a C++ compiler (as inductor does)"
    monkeypatch.setattr(embedding, "new_output", nan_buffers)


def _case(tokens: int, width: int, seed: int, num_items: int = 40, num_positions: int = 11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_items + 1, (tokens,), generator=g)
    ids[::7] = 0  # padding tokens
    positions = torch.randint(0, num_positions, (tokens,), generator=g)
    items = torch.randn(num_items + 1, width, generator=g)
    table = torch.randn(num_positions, width, generator=g)
    return ids, positions, items, table


@pytest.mark.parametrize("tokens, width", [(1, 1), (9, 3), (130, 17), (500, 50), (64, 256)])
def test_native_rows_match_float64_reference(tokens, width):
    ids, positions, items, table = _case(tokens, width, seed=width)
    scale = math.sqrt(width)
    with torch.no_grad():
        got = input_embedding(ids, positions, items, table, scale)
    want = input_embedding_reference(ids, positions, items.double(), table.double(), scale)
    assert got.shape == (tokens, width) and got.dtype == torch.float32
    assert not got.isnan().any()
    assert float((got.double() - want).norm() / want.norm().clamp(min=1e-30)) < 1e-6


def test_padding_tokens_get_zero_rows():
    ids, positions, items, table = _case(50, 8, seed=1)
    with torch.no_grad():
        got = input_embedding(ids, positions, items, table, 2.0)
    assert torch.equal(got[ids == 0], torch.zeros(int((ids == 0).sum()), 8))
    assert (got[ids != 0].abs().sum(1) > 0).all()


@pytest.mark.parametrize("field, value", [("ids", 41), ("ids", -1), ("positions", 11)])
def test_out_of_range_index_names_the_token(field, value):
    ids, positions, items, table = _case(20, 4, seed=2)
    (ids if field == "ids" else positions)[13] = value
    with torch.no_grad(), pytest.raises(IndexError, match="token 13"):
        input_embedding(ids, positions, items, table, 1.0)


def test_with_gradients_it_is_the_reference():
    ids, positions, items, table = _case(30, 6, seed=3)
    items.requires_grad_(True)
    table.requires_grad_(True)
    got = input_embedding(ids, positions, items, table, 3.0)
    got.square().sum().backward()
    grads = items.grad.clone(), table.grad.clone()
    items.grad = table.grad = None
    want = input_embedding_reference(ids, positions, items, table, 3.0)
    want.square().sum().backward()
    assert torch.equal(got, want)
    assert torch.equal(grads[0], items.grad) and torch.equal(grads[1], table.grad)


def test_padding_token_with_a_bad_position_is_still_an_error():
    ids, positions, items, table = _case(10, 4, seed=4)
    ids[3], positions[3] = 0, 11
    with torch.no_grad(), pytest.raises(IndexError, match="token 3"):
        input_embedding(ids, positions, items, table, 1.0)
    with pytest.raises(IndexError):  # the reference too
        input_embedding_reference(ids, positions, items, table, 1.0)


def test_no_tokens_and_strided_ids():
    ids, positions, items, table = _case(40, 6, seed=5)
    with torch.no_grad():
        empty = input_embedding(ids[:0], positions[:0], items, table, 2.0)
        strided = input_embedding(ids[::2], positions[::2], items, table, 2.0)
    assert empty.shape == (0, 6)
    want = input_embedding_reference(ids[::2], positions[::2], items.double(), table.double(),
                                      2.0)
    assert float((strided.double() - want).norm() / want.norm()) < 1e-6


def test_int32_ids_take_the_reference():
    ids, positions, items, table = _case(30, 5, seed=6)
    with torch.no_grad():
        got = input_embedding(ids.int(), positions.int(), items, table, 1.5)
    assert torch.equal(got, input_embedding_reference(ids.int(), positions.int(), items, table,
                                                      1.5))


def test_padding_rows_get_no_gradient_even_a_nan_one():
    ids, positions, items, table = _case(20, 3, seed=7)
    items.requires_grad_(True)
    out = input_embedding(ids, positions, items, table, 2.0)
    (out * float("nan")).sum().backward()
    assert torch.equal(items.grad[0], torch.zeros(3))
