"""HSTU against an independent float64 statement of SPEC §3, written per position.

The reference below shares nothing with the code under test: its own layer norm, SiLU, time
bucket and attention, with explicit loops over query i and key j.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_fixtures import random_batch, small_config

from genrec.models.hstu import HSTU, HSTULayer, attention_context
from genrec.ops import layer as fused_layers
from genrec.ops.attention import time_buckets

# ---------------------------------------------------------------------------------------------
# The independent reference.


def ref_bucket(gap: int, num_buckets: int = 128) -> int:
    return min(max(math.floor(math.log(max(abs(gap), 1)) / 0.301), 0), num_buckets)


def ref_layer_norm(x: torch.Tensor) -> torch.Tensor:  # one vector
    mean = x.sum() / x.numel()
    var = ((x - mean) ** 2).sum() / x.numel()
    return (x - mean) / torch.sqrt(var + 1e-6)


def ref_silu(z: torch.Tensor) -> torch.Tensor:
    return z / (1 + torch.exp(-z))


def ref_layer(x, batch, p, heads, dqk, dv, n_table, norm_of) -> torch.Tensor:
    """One HSTU layer; p holds W1 [out, d], W2 [d, H·dv], b2, pos, time (or None)."""
    proj = [ref_silu(p["W1"] @ ref_layer_norm(x[t])) for t in range(x.shape[0])]
    hv = heads * dv
    rows = []
    for b in range(len(batch.seq_offsets) - 1):
        s, e = int(batch.seq_offsets[b]), int(batch.seq_offsets[b + 1])
        norm = norm_of(e - s)
        for i in range(s, e):
            u = proj[i][:hv]
            q = proj[i][2 * hv : 2 * hv + heads * dqk].reshape(heads, dqk)
            av = [torch.zeros(dv, dtype=torch.float64) for _ in range(heads)]
            for j in range(s, i + 1):
                v = proj[j][hv : 2 * hv].reshape(heads, dv)
                k = proj[j][2 * hv + heads * dqk :].reshape(heads, dqk)
                bias = 0.0
                if p["pos"] is not None:
                    bias = bias + p["pos"][(j - s) - (i - s) + n_table - 1]
                if p["time"] is not None:
                    gap = int(batch.query_timestamps[i]) - int(batch.timestamps[j])
                    bias = bias + p["time"][ref_bucket(gap)]
                for h in range(heads):
                    av[h] = av[h] + ref_silu((q[h] * k[h]).sum() + bias) / norm * v[h]
            y = ref_layer_norm(torch.cat(av)) * u
            rows.append(x[i] + p["W2"] @ y + p["b2"])
    return torch.stack(rows)


def ref_model(model: HSTU, batch, norm_of) -> torch.Tensor:
    cfg, n_table = model.cfg, model.cfg.max_seq_len + model.cfg.attn_norm_extra
    emb = model.embedding
    rows = []
    for b in range(len(batch.seq_offsets) - 1):
        s, e = int(batch.seq_offsets[b]), int(batch.seq_offsets[b + 1])
        for t in range(s, e):
            item = emb.item_table.weight[batch.item_ids[t]]
            rows.append(item * math.sqrt(cfg.embedding_dim) + emb.position_table.weight[t - s])
    x = torch.stack(rows)
    for layer in model.layers:
        x = ref_layer(x, batch, layer_params(layer), cfg.num_heads, cfg.attention_dim,
                      cfg.linear_dim, n_table, norm_of)
    return torch.stack([r / torch.sqrt((r * r).sum()).clamp(min=1e-6) for r in x])


def layer_params(layer: HSTULayer) -> dict:
    return {"W1": layer.uvqk.weight, "W2": layer.output_proj.weight,
            "b2": layer.output_proj.bias, "pos": layer.pos_weights, "time": layer.time_weights}


def randomise(module: torch.nn.Module) -> None:
    """Larger random weights than the init, so SiLU, bias and norms all matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.5)


def assert_grads_match(loss, ref_loss, params: dict[str, torch.Tensor]) -> None:
    names, tensors = list(params), list(params.values())
    got = torch.autograd.grad(loss, tensors)
    want = torch.autograd.grad(ref_loss, tensors)
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad of {name}: {m}")


# ---------------------------------------------------------------------------------------------


def test_hstu_layer_matches_loop_reference_forward_and_gradients():
    cfg = small_config()
    layer = HSTULayer(cfg).double().eval()
    randomise(layer)
    batch = random_batch([5, 1, 7])
    x = torch.randn(batch.num_tokens, cfg.embedding_dim, dtype=torch.float64, requires_grad=True)
    out = layer(x, attention_context(cfg, batch))
    ref = ref_layer(x, batch, layer_params(layer), cfg.num_heads, cfg.attention_dim,
                    cfg.linear_dim, 11, norm_of=lambda n: 11)
    torch.testing.assert_close(out, ref)
    weights = torch.randn_like(out)
    params = {"x": x, **dict(layer.named_parameters())}
    assert {"pos_weights", "time_weights", "uvqk.weight"} <= set(params)
    assert_grads_match((out * weights).sum(), (ref * weights).sum(), params)


@pytest.mark.parametrize("position_bias,time_bias", [(True, False), (False, True)])
def test_hstu_layer_with_one_rab_term_off_matches_reference(position_bias, time_bias):
    cfg = small_config(position_bias=position_bias, time_bias=time_bias)
    layer = HSTULayer(cfg).double().eval()
    assert (layer.pos_weights is None) != position_bias
    assert (layer.time_weights is None) != time_bias
    randomise(layer)
    batch = random_batch([4, 6], seed=3)
    x = torch.randn(batch.num_tokens, cfg.embedding_dim, dtype=torch.float64)
    ref = ref_layer(x, batch, layer_params(layer), cfg.num_heads, cfg.attention_dim,
                    cfg.linear_dim, 11, norm_of=lambda n: 11)
    torch.testing.assert_close(layer(x, attention_context(cfg, batch)), ref)


def test_hstu_model_matches_loop_reference_forward_and_gradients():
    model = HSTU(small_config(), num_items=40).double().eval()
    randomise(model)
    batch = random_batch([5, 1, 7], seed=2)
    out = model(batch)
    ref = ref_model(model, batch, norm_of=lambda n: 11)
    torch.testing.assert_close(out, ref)
    weights = torch.randn_like(out)
    assert_grads_match((out * weights).sum(), (ref * weights).sum(),
                       dict(model.named_parameters()))


def test_length_attn_norm_divides_by_each_users_length():
    model = HSTU(small_config(attn_norm="length"), num_items=40).double().eval()
    randomise(model)
    batch = random_batch([5, 1, 7], seed=4)
    torch.testing.assert_close(model(batch), ref_model(model, batch, norm_of=lambda n: n))


# ---------------------------------------------------------------------------------------------
# Time buckets: floor(ln(max(|gap|, 1)) / 0.301), clamped to [0, 128].

HAND_BUCKETS = [(0, 0), (1, 0), (2, 2), (1000, 22), (-1000, 22), (-2, 2), (86_400, 37),
                (10**18, 128), (-(10**18), 128)]


def test_time_buckets_on_hand_computed_gaps():
    gaps = torch.tensor([g for g, _ in HAND_BUCKETS])
    assert time_buckets(gaps, 129).tolist() == [b for _, b in HAND_BUCKETS]
    assert [ref_bucket(g) for g, _ in HAND_BUCKETS] == [b for _, b in HAND_BUCKETS]


def test_layer_time_bias_uses_hand_computed_buckets_of_query_time_gaps():
    # One-token sequences with q = k = 0 and v = 1 make each output SiLU(time_w[bucket]) / N.
    cfg = small_config(num_heads=1, attention_dim=1, linear_dim=1, position_bias=False)
    layer = HSTULayer(cfg).double()
    assert layer.time_weights.numel() == cfg.num_time_buckets + 1 == 129
    with torch.no_grad():
        layer.time_weights.copy_(torch.arange(129, dtype=torch.float64) * 0.1)
    n = len(HAND_BUCKETS)
    batch = random_batch([1] * n)
    batch.timestamps = torch.full((n,), 5_000_000)
    batch.query_timestamps = batch.timestamps + torch.tensor([g for g, _ in HAND_BUCKETS])
    zeros = torch.zeros(n, 1, 1, dtype=torch.float64)
    av = layer.attend(zeros, zeros, torch.ones_like(zeros), attention_context(cfg, batch))
    expected = torch.tensor([b * 0.1 for _, b in HAND_BUCKETS], dtype=torch.float64)
    torch.testing.assert_close(av.flatten(), torch.nn.functional.silu(expected) / 11)


@pytest.mark.parametrize("attn_norm", ["padded", "length"])
def test_fp32_inference_path_matches_float64_loop_reference(attn_norm, monkeypatch):
    """Evaluation's path: fp32, no gradients, so the fused native layers (genrec.ops.layer)
    run, whatever the thread count."""
    monkeypatch.setattr(fused_layers, "SEQUENCES_PER_THREAD", 0)
    model = HSTU(small_config(attn_norm=attn_norm), num_items=40).eval()
    randomise(model)
    batch = random_batch([5, 1, 7, 10, 3, 8, 2, 6, 4], seed=4)
    with torch.inference_mode():
        out = model(batch)
        last = model.last_vectors(batch)
        stepwise, _ = model(batch, return_kv=True)  # the unfused steps, layer by layer
    ref = ref_model(model.double(), batch,
                    norm_of=(lambda n: 11) if attn_norm == "padded" else (lambda n: n))
    assert out.dtype == torch.float32
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-5
    assert torch.equal(out, stepwise)
    ref_last = ref[batch.last_positions()]
    assert float((last.double() - ref_last).norm() / ref_last.norm()) < 1e-5
