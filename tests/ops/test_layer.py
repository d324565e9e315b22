"""genrec.ops.layer: one whole HSTU layer, fused per sequence at inference.

The native call is held to an independent float64 statement of the layer (plain layer norms
and matmuls around attention_cases.loop_attention) on the attention tests' layouts, and to the
composed fast path bit for bit; with gradients or few sequences the op is that composition.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from attention_cases import CPU_CASES, loop_attention, make_case, nan_buffers, relative_error

from genrec.ops import layer as layer_module
from genrec.ops import native
from genrec.ops.attention import native as native_attention
from genrec.ops.layer import hstu_layer, hstu_layer_last, hstu_layer_reference

EPS = 1e-6


@pytest.fixture(autouse=True)
def _native_built():
    assert native.compiler() is not None, "the tests need a C++ compiler (as inductor does)"
    assert native_attention.library() is not None


@dataclasses.dataclass
class Weights:
    x: torch.Tensor  # [T, d]
    w1: torch.Tensor  # [H (2 dv + 2 dqk), d]
    w2: torch.Tensor  # [d, H dv]
    b2: torch.Tensor | None  # [d]


def make_weights(tokens: int, d: int, heads: int, dqk: int, dv: int, *, bias: bool = True,
                 seed: int = 0) -> Weights:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    return Weights(randn(tokens, d, scale=2.0) + randn(d), randn(heads * (2 * dv + 2 * dqk), d,
                   scale=0.4), randn(d, heads * dv, scale=0.4), randn(d) if bias else None)


def layer_float64(case, w: Weights, seq_scale: torch.Tensor | None) -> torch.Tensor:
    """The layer in float64, written out: layer norms and matmuls, loop_attention between."""
    heads, dqk, dv = case.q.shape[1], case.q.shape[2], case.v.shape[2]
    x, w1, w2 = w.x.double(), w.w1.double(), w.w2.double()
    tokens, d = x.shape
    y = F.silu(F.layer_norm(x, (d,), eps=EPS) @ w1.T)
    u, v, q, k = torch.split(y, [heads * dv, heads * dv, heads * dqk, heads * dqk], dim=1)
    tables = {name: None if t is None else t.detach().double()
              for name, t in (("pos_weights", case.pos_weights),
                              ("time_weights", case.time_weights))}
    attention_case = dataclasses.replace(
        case, q=q.reshape(tokens, heads, dqk), k=k.reshape(tokens, heads, dqk),
        v=v.reshape(tokens, heads, dv), **tables)
    av = loop_attention(attention_case)
    if seq_scale is not None:
        lengths = case.seq_offsets[1:] - case.seq_offsets[:-1]
        av = av * torch.repeat_interleave(seq_scale.double(), lengths)[:, None, None]
    gated = F.layer_norm(av.reshape(tokens, heads * dv), (heads * dv,), eps=EPS) * u
    out = x + gated @ w2.T
    return out if w.b2 is None else out + w.b2.double()


def call(case, w: Weights, seq_scale=None, **overrides) -> torch.Tensor:
    tables = {name: None if t is None else t.detach()
              for name, t in (("pos_weights", case.pos_weights),
                              ("time_weights", case.time_weights))}
    kwargs = dict(num_heads=case.q.shape[1], attention_dim=case.q.shape[2],
                  linear_dim=case.v.shape[2], alpha=case.alpha, timestamps=case.timestamps,
                  query_timestamps=case.query_timestamps, num_candidates=case.num_candidates,
                  seq_scale=seq_scale, causal=case.causal, eps=EPS, **tables)
    kwargs.update(overrides)
    return hstu_layer(w.x, w.w1, w.w2, w.b2, case.seq_offsets, case.max_seq_len, **kwargs)


@pytest.fixture
def native_only(monkeypatch):
    """Every call takes the native path (any batch size), and its output starts as NaN."""
    monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 0)
    monkeypatch.setattr(native_attention, "new_output", nan_buffers)
    composed = layer_module._compose

    def no_fast_composition(*args, reference):
        assert reference, "the fast composition ran where the native layer should have"
        return composed(*args, reference=reference)

    monkeypatch.setattr(layer_module, "_compose", no_fast_composition)


LAYOUTS = {name: CPU_CASES[name] for name in (
    "single_token", "odd_lengths_both_biases", "skewed_with_empty_sequences",
    "candidates_causal", "candidates_non_causal", "non_causal_pos_only", "time_only_odd_dims",
    "no_bias_wide_table")}
# one head of tiny dims: the fused layer's U, V, Q, K rows are wider than the projection, so that
# the last head's V can be read as whole vectors in place
LAYOUTS["one_head_tiny_dims"] = dict(lengths=[33, 9, 17, 1, 40], heads=1, dqk=1, dv=3)


@pytest.mark.parametrize("name", LAYOUTS)
def test_native_layer_matches_float64_statement(name, native_only):
    case = make_case(**LAYOUTS[name])
    heads, dqk, dv = case.q.shape[1], case.q.shape[2], case.v.shape[2]
    w = make_weights(case.q.shape[0], 13, heads, dqk, dv, bias=name != "single_token")
    batch = len(case.seq_offsets) - 1
    seq_scale = torch.linspace(0.5, 2.0, batch, dtype=torch.float64)
    for scale in (None, seq_scale):
        with torch.no_grad():
            got = call(case, w, scale)
        assert got.shape == w.x.shape and got.dtype == torch.float32
        assert not got.isnan().any()
        assert relative_error(got, layer_float64(case, w, scale)) < 1e-5, scale


def test_native_layer_at_hstu_large_shapes_and_threads(native_only):
    case = make_case([200, 57, 1, 130, 199, 64, 65, 3, 0, 12], heads=2, dqk=25, dv=25,
                     max_seq_len=211, seed=4)
    w = make_weights(case.q.shape[0], 50, 2, 25, 25, seed=5)
    results, before = [], torch.get_num_threads()
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                results.append(call(case, w))
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])
    assert relative_error(results[0], layer_float64(case, w, None)) < 1e-5


def test_gradients_flow_through_the_composition():
    case = make_case([9, 4, 12], heads=2, dqk=5, dv=3, seed=9)
    w = make_weights(case.q.shape[0], 7, 2, 5, 3, seed=10)
    w = Weights(*(t.requires_grad_() for t in (w.x, w.w1, w.w2, w.b2)))
    pos = case.pos_weights.detach().requires_grad_()
    out = call(case, w, pos_weights=pos)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(11))
    grads = torch.autograd.grad(out, [w.x, w.w1, w.w2, w.b2, pos], upstream)

    leaves = [t.detach().double().requires_grad_() for t in (w.x, w.w1, w.w2, w.b2, pos)]
    time = case.time_weights.detach().double()
    want_out = hstu_layer_reference(
        *leaves[:4], case.seq_offsets, case.max_seq_len, num_heads=2, attention_dim=5,
        linear_dim=3, alpha=case.alpha, pos_weights=leaves[4], time_weights=time,
        timestamps=case.timestamps, query_timestamps=case.query_timestamps, eps=EPS)
    want = torch.autograd.grad(want_out, leaves, upstream.double())
    assert relative_error(out, want_out) < 1e-5
    for i, (a, b) in enumerate(zip(grads, want, strict=True)):
        assert relative_error(a, b) < 1e-5, f"gradient {i}"


def test_few_sequences_take_the_unfused_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(native_attention.library(), "genrec_hstu_layer_forward_f32",
                        lambda *args: calls.append(args))
    case = make_case([30, 20], heads=2, dqk=8, dv=8)  # 2 sequences < 4 per thread
    w = make_weights(50, 16, 2, 8, 8)
    with torch.no_grad():
        got = call(case, w)
    assert calls == [] and relative_error(got, layer_float64(case, w, None)) < 1e-5


@pytest.mark.parametrize("field,value,message", [
    ("w1", torch.zeros(31, 13), "uvqk_weight must be"),
    ("w2", torch.zeros(13, 15), "output_weight must be"),
    ("b2", torch.zeros(12), "output_bias must be"),
])
def test_bad_weights_are_named(field, value, message, native_only):
    case = make_case([4, 5, 6], heads=2, dqk=8, dv=8)
    w = dataclasses.replace(make_weights(15, 13, 2, 8, 8), **{field: value})
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        call(case, w)


def test_bad_attention_inputs_and_scale_are_named(native_only):
    case = make_case([4, 5, 6], heads=2, dqk=8, dv=8)
    w = make_weights(15, 13, 2, 8, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="seq_scale must be"):
            call(case, w, torch.ones(2))
        with pytest.raises(ValueError, match="timestamps"):
            call(case, w, timestamps=case.timestamps[:-1])
        with pytest.raises(ValueError, match="seq_offsets must start at 0 and end at T"):
            call(dataclasses.replace(case, seq_offsets=torch.tensor([0, 4, 9, 14])), w)


def test_batch_checks_rerun_when_the_batch_or_sizes_change(native_only):
    """The attention's checks run once per batch; another size or table, a new batch or an
    in-place change of the batch's tensors is checked again."""
    case = make_case([4, 5, 6], heads=2, dqk=8, dv=8)
    w = make_weights(15, 13, 2, 8, 8)
    with torch.no_grad():
        call(case, w)  # checked and remembered
        with pytest.raises(ValueError, match="the longest sequence has 6 tokens"):
            hstu_layer(w.x, w.w1, w.w2, w.b2, case.seq_offsets, 5, num_heads=2,
                       attention_dim=8, linear_dim=8, pos_weights=torch.zeros(9), eps=EPS)
        with pytest.raises(ValueError, match="pos_weights must be"):
            call(case, w, pos_weights=torch.zeros(7))
        offsets = case.seq_offsets.clone()
        call(dataclasses.replace(case, seq_offsets=offsets), w)
        offsets[1], offsets[2] = 9, 8  # lengths 9, -1, 7
        with pytest.raises(ValueError, match="non-decreasing"):
            call(dataclasses.replace(case, seq_offsets=offsets), w)


def test_batch_tensors_with_new_storage_are_checked_again(native_only):
    """A batch tensor whose storage is swapped (``set_``, ``.data =``) is not the batch that was
    checked, even as the same object with the same version (inference tensors have none)."""
    case = make_case([4, 5, 6], heads=2, dqk=8, dv=8)
    w = make_weights(15, 13, 2, 8, 8)
    with torch.inference_mode():
        ts = case.timestamps.clone()
        call(case, w, timestamps=ts)
        ts.set_(torch.zeros(1, dtype=torch.long))
        with pytest.raises(ValueError, match="timestamps must be a 1-D tensor of 15 entries"):
            call(case, w, timestamps=ts)
    with torch.no_grad():
        qts = case.query_timestamps.clone()
        call(case, w, query_timestamps=qts)
        qts.data = torch.zeros(3, dtype=torch.long)
        with pytest.raises(ValueError, match="query_timestamps must be a 1-D tensor"):
            call(case, w, query_timestamps=qts)


# -- the last layer, for each sequence's last token -------------------------------------------

def call_last(case, w: Weights, seq_scale=None) -> torch.Tensor:
    tables = {name: None if t is None else t.detach()
              for name, t in (("pos_weights", case.pos_weights),
                              ("time_weights", case.time_weights))}
    return hstu_layer_last(
        w.x, w.w1, w.w2, w.b2, case.seq_offsets, case.max_seq_len, num_heads=case.q.shape[1],
        attention_dim=case.q.shape[2], linear_dim=case.v.shape[2], alpha=case.alpha,
        timestamps=case.timestamps, query_timestamps=case.query_timestamps,
        seq_scale=seq_scale, eps=EPS, **tables)


LAST_LAYOUTS = {
    "single_token": dict(lengths=[1]),
    "odd_lengths_both_biases": dict(lengths=[3, 7, 5, 9]),
    "long_and_short": dict(lengths=[200, 3, 1, 150, 64, 65], max_seq_len=211, dqk=25, dv=25),
    "time_only_odd_dims": dict(lengths=[70, 13, 1], pos=False, dqk=5, dv=3),
    "no_bias": dict(lengths=[2, 71, 5], pos=False, time=False, max_seq_len=99),
}


@pytest.mark.parametrize("name", LAST_LAYOUTS)
def test_native_last_layer_matches_float64_statement(name, monkeypatch):
    monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 0)
    monkeypatch.setattr(native_attention, "new_output", nan_buffers)
    monkeypatch.setattr(layer_module, "hstu_attention_last", None)  # the unfused path fails
    case = make_case(**LAST_LAYOUTS[name])
    heads, dqk, dv = case.q.shape[1], case.q.shape[2], case.v.shape[2]
    w = make_weights(case.q.shape[0], 13, heads, dqk, dv, bias=name != "no_bias")
    batch = len(case.seq_offsets) - 1
    last = case.seq_offsets[1:] - 1
    for scale in (None, torch.linspace(0.5, 2.0, batch, dtype=torch.float64)):
        with torch.no_grad():
            got = call_last(case, w, scale)
        assert got.shape == (batch, 13) and not got.isnan().any()
        assert relative_error(got, layer_float64(case, w, scale)[last]) < 1e-5, scale


@pytest.mark.parametrize("last", [False, True], ids=["layer", "last_layer"])
def test_native_layers_are_the_composed_fast_paths_bit_for_bit(last, monkeypatch):
    case = make_case([90, 3, 41, 17, 1, 60, 33, 8, 120, 5, 77, 2], heads=2, dqk=25, dv=25,
                     max_seq_len=128, seed=6)
    w = make_weights(case.q.shape[0], 50, 2, 25, 25, seed=7)
    seq_scale = torch.rand(12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    fn = call_last if last else call
    with torch.no_grad():
        monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 0)
        fused = fn(case, w, seq_scale)
        monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 10**9)  # always composed
        composed = fn(case, w, seq_scale)
        whole = call(case, w, seq_scale)
    assert torch.equal(fused, composed)
    if last:  # the last tokens' rows of the whole layer (computed in a different order)
        assert relative_error(fused, whole[case.seq_offsets[1:] - 1]) < 1e-6


def test_last_layer_reads_the_offsets_it_indexes_by_now(monkeypatch):
    """The last layer indexes each sequence's last token by seq_offsets: they are checked on
    every call, also when an inference tensor changed in place since the batch was checked."""
    monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 0)
    case = make_case([4, 5, 6], heads=2, dqk=8, dv=8)
    w = make_weights(15, 13, 2, 8, 8)
    with torch.inference_mode():
        offsets = case.seq_offsets.clone()
        call_last(dataclasses.replace(case, seq_offsets=offsets), w)
        offsets[3] = 40  # same storage and shape; no version to tell
        with pytest.raises(ValueError, match="end at T = 15, got 0 … 40"):
            call_last(dataclasses.replace(case, seq_offsets=offsets), w)


def test_last_layer_needs_a_last_token(monkeypatch):
    monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 0)
    case = make_case([4, 0, 6], heads=2, dqk=8, dv=8)
    with torch.no_grad(), pytest.raises(ValueError, match="needs a last token"):
        call_last(case, make_weights(10, 13, 2, 8, 8))


def test_dispatch_keeps_what_the_native_call_cannot(monkeypatch):
    """A seq_scale that needs a gradient, a broadcast bias, or another attention backend
    named by GENREC_ATTENTION_BACKEND: the composition runs."""
    calls = []
    monkeypatch.setattr(layer_module, "SEQUENCES_PER_THREAD", 0)
    monkeypatch.setattr(native_attention.library(), "genrec_hstu_layer_forward_f32",
                        lambda *args: calls.append(args))
    case = make_case([9, 4, 12], heads=2, dqk=8, dv=8, seed=16)
    w = make_weights(25, 13, 2, 8, 8, seed=17)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = call(case, w, scale)
    assert out.requires_grad and calls == []
    (grad,) = torch.autograd.grad(out.sum(), scale)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        broadcast = call(case, dataclasses.replace(w, b2=torch.full((1,), 0.25)))
        monkeypatch.setenv("GENREC_ATTENTION_BACKEND", "torch")
        torch_backend = call(case, w)
    assert calls == []
    full = layer_float64(case, dataclasses.replace(w, b2=torch.full((13,), 0.25)), None)
    assert relative_error(broadcast, full) < 1e-5
    assert relative_error(torch_backend, layer_float64(case, w, None)) < 1e-5


@pytest.mark.parametrize("size", ["num_heads", "attention_dim", "linear_dim"])
def test_a_layer_needs_heads_and_features(size):
    case = make_case([4, 5], heads=2, dqk=8, dv=8)
    w = make_weights(9, 13, 2, 8, 8)
    with torch.no_grad(), pytest.raises(ValueError, match="at least one head and one feature"):
        call(case, w, **{size: 0})
    with torch.no_grad(), pytest.raises(ValueError, match="at least one head and one feature"):
        sizes = {"num_heads": 2, "attention_dim": 8, "linear_dim": 8, size: 0}
        hstu_layer_last(w.x, w.w1, w.w2, w.b2, case.seq_offsets, case.max_seq_len, eps=EPS,
                        **sizes)
