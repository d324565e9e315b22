"""The native CPU kernels against the PyTorch paths they replace, in the same process.

Shapes are one ML-1M training step's (T positions, 1 + K ids each, an R-row item table of
width d). Each measurement alternates native and PyTorch calls and reports medians, so the
ratio holds even on a machine whose speed drifts:

- gather_dot forward: native, against the reference compiled by Inductor;
- gather_dot backward: native, against the sort + embedding-bag path;
- the per-position sampled-softmax loss, forward + backward, compiled, both paths;
- uniform negatives [T, K]: ``genrec.ops.rng.randint`` against ``torch.randint``;
- dropout words for a [T, d] mask: ``genrec.ops.rng.random_words`` against ``random_``;
- HSTU attention (both rab tables, causal), forward and forward + backward, at HSTU's
  1 head × 50 and HSTU-large's 2 heads × 25: the C++ kernel against the length-grouped,
  compiled tiles of ``ops/attention/cpu.py``. 128 sequences of lengths uniform in [20, 200]
  (≈ an ML-1M batch), q, k, v column slices of one [T, 4·H·D] projection as in the model;
- SASRec's causal softmax attention (1 head × 50, dropout 0.2 on the weights), forward + backward,
  the C++ kernel against the length-grouped tiles of ``ops/softmax_attention.py``.

    python benchmarks/native_kernels.py --threads 2 --json benchmarks/results/native_kernels.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import types
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from genrec.ops import hstu_attention, native, rng
from genrec.ops.gather import gather_dot, gather_dot_reference
from genrec.ops.softmax_attention import attention_plan, causal_softmax_attention
from genrec.train.losses import sampled_softmax_loss


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _copy(fn):
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def alternate(native_fn, torch_fn, repeats: int) -> tuple[float, float]:
    """Median seconds of each, calls interleaved; native.ENABLED flipped around each call."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeats + 2):
        for on, fn in ((True, native_fn), (False, torch_fn)):
            native.ENABLED = on
            seconds = timed(fn)
            if i >= 2:  # two warm-up rounds (compilation, first touch)
                times[on].append(seconds)
    native.ENABLED = True
    return statistics.median(times[True]), statistics.median(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=14_000)
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--rows", type=int, default=3_616)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if native.load("gather_dot") is None or native.load("random") is None:
        raise SystemExit("the native kernels did not build here (see the warning above)")

    T, K, R, d = args.positions, args.negatives, args.rows, args.dim
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(T, d, generator=g), dim=-1)
    table = F.normalize(torch.randn(R, d, generator=g), dim=-1)
    ids = torch.randint(1, R, (T, 1 + K), generator=g)
    grad = torch.randn(T, 1 + K, generator=g)
    reference = torch.compile(gather_dot_reference, dynamic=True)
    embedding = torch.nn.Embedding(R, d)

    def item_embeddings(which=None):
        weight = embedding.weight
        return F.normalize(weight if which is None else weight[which], dim=-1)

    # one compiled loss per path, each traced under its own native.ENABLED (Dynamo caches
    # per code object, so each path gets its own copy of the function)
    losses = {on: torch.compile(_copy(sampled_softmax_loss), dynamic=True) for on in (True, False)}

    def loss_step(on: bool) -> Callable[[], None]:
        def step() -> None:
            user = queries.clone().requires_grad_()
            loss = losses[on](user, ids[:, 0], ids[:, 1:], item_embeddings, 0.05)
            loss.backward()
            embedding.weight.grad = None
        return step

    backward = torch.ops.genrec.gather_dot_backward
    rows = [
        ("gather_dot forward", "Inductor-fused reference",
         *alternate(lambda: gather_dot(queries, table, ids),
                    lambda: reference(queries, table, ids), args.repeats)),
        ("gather_dot backward", "sort + embedding_bag",
         *alternate(lambda: backward(grad, queries, table, ids),
                    lambda: backward(grad, queries, table, ids), args.repeats)),
        ("sampled-softmax loss fwd+bwd (compiled)", "same loss, PyTorch paths",
         *alternate(loss_step(True), loss_step(False), args.repeats)),
        (f"negatives [{T}, {K}]", "torch.randint",
         *alternate(lambda: rng.randint(1, R, (T, K)),
                    lambda: rng.randint(1, R, (T, K)), args.repeats)),
        (f"dropout words for [{T}, {d}]", "Tensor.random_",
         *alternate(lambda: rng.random_words(T * d // 4),
                    lambda: rng.random_words(T * d // 4), args.repeats)),
    ]

    rows += attention_rows(args.repeats)

    print(f"T={T} K={K} R={R} d={d}, {args.threads} threads, medians of {args.repeats}")
    print("| what | PyTorch path | native ms | PyTorch ms | speed-up |\n|---|---|---|---|---|")
    for what, peer, fast, slow in rows:
        print(f"| {what} | {peer} | {fast * 1e3:.2f} | {slow * 1e3:.2f} | {slow / fast:.1f}× |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": args.threads,
            "shape": {"positions": T, "negatives": K, "rows": R, "dim": d},
            "rows": [{"what": w, "pytorch_path": p, "native_ms": f * 1e3,
                      "pytorch_ms": s * 1e3, "speedup": s / f} for w, p, f, s in rows],
        }, indent=2))


def attention_rows(repeats: int) -> list[tuple[str, str, float, float]]:
    """HSTU attention, native against the tiles, at the two paper configs' head shapes."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(20, 201, (128,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    timestamps = torch.cumsum(torch.randint(0, 90_000, (int(offsets[-1]),), generator=g), 0)
    rows = [row for heads, dim in ((1, 50), (2, 25))
            for row in _attention_pair(heads, dim, offsets, timestamps, g, repeats)]
    return rows + [_softmax_row(offsets, g, repeats)]


def _softmax_row(offsets, g, repeats):
    tokens = int(offsets[-1])
    qkv = torch.randn(tokens, 3, 1, 50, generator=g).requires_grad_()
    q, k, v = qkv.unbind(1)
    upstream = torch.randn(tokens, 1, 50, generator=g)

    def training():
        plan = attention_plan(offsets, None, 1)  # once per batch, as in the model
        causal_softmax_attention(q, k, v, plan, dropout_p=0.2).backward(upstream)
        qkv.grad = None

    return (f"SASRec softmax attention fwd+bwd (1 × 50, p = 0.2, T = {tokens})",
            "length-grouped tiles", *alternate(training, training, repeats))


def _attention_pair(heads, dim, offsets, timestamps, g, repeats):
    tokens, normaliser = int(offsets[-1]), 211
    projection = torch.randn(tokens, 4 * heads * dim, generator=g).requires_grad_()
    q, k, v = (projection[:, i * heads * dim:(i + 1) * heads * dim].view(tokens, heads, dim)
               for i in range(3))
    pos = (0.02 * torch.randn(2 * normaliser - 1, generator=g)).requires_grad_()
    time_table = (0.02 * torch.randn(129, generator=g)).requires_grad_()
    upstream = torch.randn(tokens, heads, dim, generator=g)

    def forward():
        return hstu_attention(q, k, v, offsets, normaliser, alpha=1.0, pos_weights=pos,
                              time_weights=time_table, timestamps=timestamps,
                              query_timestamps=timestamps)

    def inference():
        with torch.no_grad():
            forward()

    def training():
        forward().backward(upstream)
        projection.grad = pos.grad = time_table.grad = None

    shape = f"{heads} × {dim}, T = {tokens}"
    return [(f"HSTU attention forward ({shape})", "length-grouped compiled tiles",
             *alternate(inference, inference, repeats)),
            (f"HSTU attention fwd+bwd ({shape})", "length-grouped compiled tiles",
             *alternate(training, training, repeats))]


if __name__ == "__main__":
    main()
