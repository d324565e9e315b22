"""build_model, presets' parameter shapes, initialisation and the item table's padding row."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from model_fixtures import random_batch, small_config

from genrec.config import preset
from genrec.models import HSTU, SASRec, build_model, count_parameters
from genrec.models.hstu import HSTULayer
from genrec.models.sasrec import SASRecBlock

NUM_ITEMS = 100

# (dataset, model): d, layers, heads, dqk = dv, N = max_seq_len + 11
PRESET_SHAPES = {
    ("ml-1m", "hstu"): (50, 2, 1, 50, 211),
    ("ml-1m", "hstu-large"): (50, 8, 2, 25, 211),
    ("ml-20m", "hstu-large"): (256, 16, 8, 32, 211),
    ("amzn-books", "hstu-large"): (64, 16, 8, 8, 61),
}


@pytest.mark.parametrize("dataset,model", sorted(PRESET_SHAPES))
def test_hstu_presets_build_with_expected_parameter_shapes(dataset, model):
    d, layers, heads, dh, n = PRESET_SHAPES[(dataset, model)]
    built = build_model(preset(dataset, model).model, NUM_ITEMS)
    assert isinstance(built, HSTU) and len(built.layers) == layers
    shapes = {name: tuple(p.shape) for name, p in built.named_parameters()}
    assert shapes["embedding.item_table.weight"] == (NUM_ITEMS + 1, d)
    assert shapes["embedding.position_table.weight"] == (n, d)
    assert shapes["layers.0.uvqk.weight"] == (heads * 4 * dh, d)
    assert shapes["layers.0.output_proj.weight"] == (d, heads * dh)
    assert shapes["layers.0.output_proj.bias"] == (d,)
    assert shapes["layers.0.pos_weights"] == (2 * n - 1,)
    assert shapes["layers.0.time_weights"] == (129,)
    per_layer = heads * 4 * dh * d + d * heads * dh + d + 2 * n - 1 + 129
    assert count_parameters(built) == (NUM_ITEMS + 1) * d + n * d + layers * per_layer


def test_sasrec_preset_builds_with_expected_parameter_shapes():
    built = build_model(preset("ml-1m", "sasrec").model, NUM_ITEMS)
    assert isinstance(built, SASRec) and len(built.blocks) == 2
    shapes = {name: tuple(p.shape) for name, p in built.named_parameters()}
    assert shapes["embedding.item_table.weight"] == (NUM_ITEMS + 1, 50)
    assert shapes["blocks.0.qkv.weight"] == (150, 50)
    assert shapes["blocks.0.ffn.0.weight"] == (50, 50)
    assert shapes["blocks.1.ffn.3.weight"] == (50, 50)
    assert shapes["final_norm.weight"] == (50,)


def test_unknown_model_kind_is_refused_with_the_field_name():
    cfg = small_config()
    cfg.kind = "gpt"
    with pytest.raises(ValueError, match="model.kind"):
        build_model(cfg, NUM_ITEMS)


def test_public_constructors_take_at_most_five_arguments():
    for cls in (HSTU, SASRec, HSTULayer, SASRecBlock):
        assert len(inspect.signature(cls.__init__).parameters) - 1 <= 5, cls.__name__


def test_parameter_init_stds_are_as_specified():
    torch.manual_seed(0)
    model = build_model(preset("ml-20m", "hstu-large").model, num_items=5000)
    items = model.embedding.item_table.weight[1:]
    # Normal(0, 0.02) truncated at ±2 std has std 0.02 · 0.8796.
    assert items.std().item() == pytest.approx(0.02 * 0.8796, rel=0.03)
    assert items.abs().max().item() <= 0.04
    layer = model.layers[0]
    assert layer.uvqk.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert layer.pos_weights.std().item() == pytest.approx(0.02, rel=0.15)
    assert layer.time_weights.std().item() == pytest.approx(0.02, rel=0.3)
    xavier_std = math.sqrt(2.0 / (256 + 256))
    assert layer.output_proj.weight.std().item() == pytest.approx(xavier_std, rel=0.03)
    assert layer.uvqk.bias is None


def test_item_padding_row_is_zero_and_stays_zero_after_training_steps():
    model = HSTU(small_config(), num_items=40)
    table = model.embedding.item_table.weight
    assert torch.count_nonzero(table[0]) == 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    batch = random_batch([4, 3])
    batch.item_ids[1] = 0  # a padding token in the input
    for _ in range(2):
        user = model(batch)
        loss = (user @ model.item_embeddings().T).logsumexp(-1).sum()
        loss = loss - (user * model.item_embeddings(batch.target_ids)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.count_nonzero(table[0]) == 0
    assert torch.count_nonzero(model.item_embeddings(torch.tensor([0]))) == 0


def test_item_embeddings_are_l2_normalised():
    model = HSTU(small_config(), num_items=40)
    all_items = model.item_embeddings()
    assert all_items.shape == (41, 8)
    torch.testing.assert_close(all_items[1:].norm(dim=-1), torch.ones(40))
    ids = torch.tensor([[3, 5]])
    torch.testing.assert_close(model.item_embeddings(ids), all_items[ids])


def test_padding_tokens_enter_as_zero_vectors():
    model = HSTU(small_config(), num_items=40).eval()
    ids = torch.tensor([0, 4, 0])
    x = model.embedding(ids, torch.tensor([0, 3]), max_len=3)
    assert torch.count_nonzero(x[0]) == 0 and torch.count_nonzero(x[2]) == 0
    assert torch.count_nonzero(x[1]) > 0


def test_sequence_longer_than_the_position_table_is_refused():
    model = HSTU(small_config(), num_items=40)  # 8 + 3 positions
    with pytest.raises(ValueError, match="position table"):
        model(random_batch([12]))
