"""Behaviour both encoders share: jagged batching, causality, KV outputs, candidates."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_fixtures import NUM_ITEMS, random_batch, small_config, sub_batch, token_range

from genrec.data.batching import JaggedBatch
from genrec.models import build_model

KINDS = ["hstu", "sasrec"]


def eval_model(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = small_config(kind=kind, **overrides)
    if kind == "sasrec":
        cfg = dataclasses.replace(cfg, attention_dim=4, linear_dim=8)
    return build_model(cfg, NUM_ITEMS).eval()


def join(first: JaggedBatch, second: JaggedBatch) -> JaggedBatch:
    """The tokens of two one-sequence batches as one sequence."""
    cat = lambda name: torch.cat([getattr(first, name), getattr(second, name)])
    n = first.num_tokens + second.num_tokens
    return JaggedBatch(cat("item_ids"), cat("timestamps"), cat("query_timestamps"),
                       cat("ratings"), cat("target_ids"), torch.tensor([0, n]), first.users, n)


@pytest.mark.parametrize("kind", KINDS)
def test_jagged_batch_equals_each_sequence_alone(kind):
    model = eval_model(kind)
    batch = random_batch([5, 1, 8, 3])
    out = model(batch)
    for b in range(batch.num_sequences):
        s, e = int(batch.seq_offsets[b]), int(batch.seq_offsets[b + 1])
        torch.testing.assert_close(out[s:e], model(sub_batch(batch, b)))


@pytest.mark.parametrize("kind", KINDS)
def test_changing_a_later_token_never_changes_an_earlier_output(kind):
    model = eval_model(kind)
    batch = random_batch([3, 7])
    changed = dataclasses.replace(batch, item_ids=batch.item_ids.clone(),
                                  timestamps=batch.timestamps.clone(),
                                  query_timestamps=batch.query_timestamps.clone())
    later = slice(3 + 4, 10)  # tokens 4.. of the second sequence
    changed.item_ids[later] = changed.item_ids[later] % NUM_ITEMS + 1
    changed.timestamps[later] += 12345
    changed.query_timestamps[later] += 777
    out, out_changed = model(batch), model(changed)
    torch.testing.assert_close(out[:7], out_changed[:7], rtol=0, atol=0)
    assert not torch.allclose(out[7:], out_changed[7:])


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_are_l2_normalised(kind):
    out = eval_model(kind)(random_batch([4, 2]))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(6))


@pytest.mark.parametrize("kind", KINDS)
def test_return_kv_gives_per_layer_keys_and_values(kind):
    model = eval_model(kind)
    batch = random_batch([4, 6])
    out, kv = model(batch, return_kv=True)
    torch.testing.assert_close(out, model(batch))
    assert len(kv) == 2
    dqk, dv = (3, 4) if kind == "hstu" else (4, 4)  # SASRec: d / H both
    for k, v in kv:
        assert k.shape == (10, 2, dqk) and v.shape == (10, 2, dv)


@pytest.mark.parametrize("kind,attn_norm", [("hstu", "padded"), ("hstu", "length"),
                                             ("sasrec", "padded")])
def test_candidates_score_as_if_each_were_alone(kind, attn_norm):
    # HSTU's position term of rab is off: the op indexes it by raw j − i, so a candidate's
    # position bias depends on its slot (to be settled with M-FALCON, SPEC §5).
    model = eval_model(kind, position_bias=False, attn_norm=attn_norm)
    history, candidates = random_batch([5], seed=1), random_batch([3], seed=2)
    candidates.timestamps[:] = candidates.query_timestamps[:] = 10**9
    together = model(join(history, candidates), num_candidates=torch.tensor([3]))
    for c in range(3):
        alone = join(history, token_range(candidates, c, c + 1))
        out = model(alone, num_candidates=torch.tensor([1]))
        torch.testing.assert_close(together[5 + c], out[5])
        torch.testing.assert_close(together[:5], out[:5])


def test_dropout_is_active_in_training_and_off_in_eval():
    model = eval_model("hstu")
    batch = random_batch([6])
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    assert not torch.allclose(model(batch), model(batch))


@pytest.mark.parametrize(("kind", "overrides"), [
    ("hstu", {}), ("hstu", {"attn_norm": "length"}), ("hstu", {"num_heads": 1}),
    ("hstu", {"position_bias": False, "time_bias": False}), ("hstu", {"num_layers": 1}),
    ("sasrec", {}),
])
def test_last_vectors_equal_the_full_forward_at_last_tokens(kind, overrides):
    # HSTU runs its last layer for the last tokens only; the vectors must not change
    model = eval_model(kind, **overrides)
    batch = random_batch([5, 1, 8, 3])
    want = model(batch)[batch.last_positions()]
    got = model.last_vectors(batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
