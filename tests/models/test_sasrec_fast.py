"""SASRec's jagged fast paths (C++ kernel, length-chunked tiles) compute what SASRec on the
padded batch does.

The reference below is SASRec as it was first written: the batch padded to [B, L, d] once,
every block on the padded tensor, F.scaled_dot_product_attention with a causal (or M-FALCON)
mask. It reads the fast model's own parameters; outputs, K, V and every parameter's gradient
must agree to a relative error below 1e-5 in fp32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import NUM_ITEMS, random_batch, small_config

from genrec.data.batching import JaggedBatch
from genrec.models import build_model
from genrec.models.embeddings import l2_normalise
from genrec.models.sasrec import SASRec
from genrec.ops.attention import native as native_attention
from genrec.ops.jagged import padded_index
from genrec.ops.softmax_attention import attention_plan, causal_softmax_attention

LENGTHS = [1, 8, 5, 2, 7, 8, 3, 1, 6]  # lengths 1, odd ones, the longest (8) twice


@pytest.fixture(autouse=True, params=["native", "tiles"])
def attention_path(request, monkeypatch):
    """Every test on both float32 paths: the C++ kernel and the length-grouped tiles."""
    monkeypatch.setattr(native_attention, "ENABLED", request.param == "native")
    return request.param


def sasrec(heads: int = 2, dropout: float = 0.2, max_seq_len: int = 8) -> SASRec:
    torch.manual_seed(0)
    cfg = small_config(kind="sasrec", num_heads=heads, attention_dim=8 // heads, linear_dim=6,
                       dropout=dropout, input_dropout=dropout, max_seq_len=max_seq_len)
    return build_model(cfg, NUM_ITEMS)


def candidate_mask(lengths, max_len, num_candidates):
    """[B, 1, L, L] bool: causal, and a candidate sees the history and itself only."""
    pos = torch.arange(max_len)
    i, j = pos[:, None], pos[None, :]
    first = (lengths - num_candidates)[:, None, None]
    other_candidate = (i >= first) & (j >= first) & (i != j)
    return ((j <= i) & ~other_candidate)[:, None]


def padded_reference(model: SASRec, batch: JaggedBatch, num_candidates=None):
    """(out [T, d], [(K, V)] per layer): SASRec on the batch padded to [B, L, d]."""
    x = model.embedding(batch.item_ids, batch.seq_offsets, batch.max_len, num_candidates)
    index, valid = padded_index(batch.seq_offsets, batch.max_len)
    x = x[index] * valid[..., None].to(x.dtype)  # [B, L, d]
    mask = None
    if num_candidates is not None:
        mask = candidate_mask(batch.lengths, batch.max_len, num_candidates)
    kv = []
    for block in model.blocks:
        b, n, d = x.shape
        qkv = block.qkv(block.attention_norm(x)).reshape(b, n, 3, block.num_heads, -1)
        q, k, v = qkv.unbind(dim=2)  # [B, L, H, dh]
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            is_causal=mask is None)  # [B, H, L, dh]
        x = x + block.dropout(block.attention_out(attn.transpose(1, 2).reshape(b, n, d)))
        x = x + block.dropout(block.ffn(block.ffn_norm(x)))
        kv.append((k[valid], v[valid]))
    return l2_normalise(model.final_norm(x[valid])), kv


def relative_error(fast: torch.Tensor, ref: torch.Tensor) -> float:
    assert not fast.isnan().any()
    return float((fast - ref).norm() / ref.norm().clamp_min(1e-30))


def outputs_and_grads(model, run, upstream):
    """Outputs of run(), then the gradient of Σ upstream·outputs for every parameter."""
    model.zero_grad(set_to_none=True)
    out, kv = run()
    outputs = [out, *[t for pair in kv for t in pair]]
    loss = sum((o * g).sum() for o, g in zip(outputs, upstream, strict=True))
    loss.backward()
    return outputs, {name: p.grad.clone() for name, p in model.named_parameters()
                     if p.grad is not None}


def assert_same_function(model, batch, num_candidates=None):
    fast = lambda: model(batch, num_candidates=num_candidates, return_kv=True)
    ref = lambda: padded_reference(model, batch, num_candidates)
    with torch.no_grad():
        out, kv = fast()
    shapes = [out.shape, *[t.shape for pair in kv for t in pair]]
    upstream = [torch.randn(s, generator=torch.Generator().manual_seed(i))
                for i, s in enumerate(shapes)]
    fast_out, fast_grads = outputs_and_grads(model, fast, upstream)
    ref_out, ref_grads = outputs_and_grads(model, ref, upstream)
    for f, r in zip(fast_out, ref_out, strict=True):
        assert f.shape == r.shape and relative_error(f, r) < 1e-5
    assert fast_grads.keys() == ref_grads.keys()
    for name, r in ref_grads.items():
        assert relative_error(fast_grads[name], r) < 1e-5, name


@pytest.mark.parametrize("heads", [1, 2])
def test_eval_output_kv_and_grads_equal_padded_attention(heads):
    model = sasrec(heads).eval()
    assert_same_function(model, random_batch(LENGTHS, seed=3))


@pytest.mark.parametrize("heads", [1, 2])
def test_candidates_output_kv_and_grads_equal_padded_masked_attention(heads):
    model = sasrec(heads).eval()
    batch = random_batch(LENGTHS, seed=4)
    num_candidates = torch.tensor([1, 3, 0, 2, 7, 1, 1, 0, 6])  # incl. 0, one, all but one
    assert_same_function(model, batch, num_candidates)


def test_long_sequences_cut_into_several_tiles_equal_padded_attention():
    model = sasrec(1, max_seq_len=150).eval()
    lengths = [150, 1, 97, 149, 64, 65, 3, 150, 128]
    plan = attention_plan(random_batch(lengths).seq_offsets, None, 1)
    assert max(len(chunk.tiles) for chunk in plan.chunks) > 1
    assert_same_function(model, random_batch(lengths, seed=5))


def test_training_without_dropout_equals_eval():
    model = sasrec(2, dropout=0.0)
    batch = random_batch(LENGTHS, seed=6)
    trained = model.train()(batch)
    torch.testing.assert_close(trained, model.eval()(batch), rtol=0, atol=0)


def test_dropout_is_active_in_training_and_off_in_eval():
    model = sasrec(2, dropout=0.2)
    batch = random_batch(LENGTHS, seed=7)
    assert not torch.allclose(model.train()(batch), model(batch))
    torch.testing.assert_close(model.eval()(batch), model(batch), rtol=0, atol=0)


def test_attention_weight_dropout_zeroes_the_configured_fraction():
    # With v = one-hot of the key position, row i of the output is its (dropped) weights.
    torch.manual_seed(0)
    n, p = 64, 0.2
    batch_offsets = torch.tensor([0, n, 2 * n])
    q, k = torch.randn(2 * n, 1, n), torch.randn(2 * n, 1, n)
    v = torch.eye(n).repeat(2, 1)[:, None, :]  # [T, 1, n]
    plan = attention_plan(batch_offsets, None, 1)
    clean = causal_softmax_attention(q, k, v, plan)
    dropped = causal_softmax_attention(q, k, v, plan, dropout_p=p)
    seen = clean > 0  # the causal weights, every one positive
    kept = dropped[seen] > 0
    assert abs(1 - kept.float().mean().item() - p) < 0.02
    torch.testing.assert_close(dropped[seen][kept], clean[seen][kept] / (1 - p))
    assert (dropped[~seen] == 0).all()


def test_attention_dropout_gradient_uses_the_forward_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    plan = attention_plan(torch.tensor([0, 3, 7]), None, 2)

    def seeded(q, k, v):
        torch.manual_seed(1)  # the same dropout mask in every evaluation
        return causal_softmax_attention(q, k, v, plan, dropout_p=0.3)

    assert torch.autograd.gradcheck(seeded, (q, k, v), fast_mode=True)
