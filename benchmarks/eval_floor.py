"""How fast could a full-ranking evaluation be on this machine? Work count and a lower bound.

For a preset and data set, counts the work of `genrec.eval.evaluate` with `last_vectors`
(every layer but the last over all history tokens; the last layer's projections over all
tokens, its attention for the last tokens only; scores of every item): the matmul FLOPs and
the element-wise values that have to pass through SiLU (attention logits, projections).
It then measures two rates on this machine, a large sgemm and SiLU over a large tensor, and
divides:

    floor ≈ matmul FLOPs / sgemm rate + SiLU values / SiLU rate

Layer norms, rab gathers, masks, copies and the small matmuls' lower efficiency are left
out, so a real evaluation cannot be faster than this. It prints a table and writes JSON.

    python benchmarks/eval_floor.py --data-dir ../shared/data --models hstu hstu-large
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def work(dataset: str, model: str, data_dir: str) -> dict:
    """Matmul FLOPs and SiLU values of one full-ranking evaluation (paper protocol, test)."""
    import numpy as np

    from genrec.config import preset
    from genrec.data import load_dataset
    from genrec.data.batching import target_positions

    cfg = preset(dataset, model)
    cfg.data.data_dir = data_dir
    data = load_dataset(cfg.data, progress=False)
    m = cfg.model
    if m.kind != "hstu":
        raise ValueError(f"{model}: only HSTU presets are counted (model kind {m.kind!r})")
    starts = np.asarray(data.seq_offsets[:-1], dtype=np.int64)
    n = np.minimum(target_positions(data, "paper", "test") - starts, cfg.data.max_seq_len)
    tokens, users = int(n.sum()), len(n)
    pairs = int((n * (n + 1) // 2).sum())  # causal (query, key) pairs per head
    h, dqk, dv, d = m.num_heads, m.attention_dim, m.linear_dim, m.embedding_dim
    proj_width = h * (2 * dv + 2 * dqk)
    linear = 2 * tokens * d * proj_width + 2 * tokens * h * dv * d  # per full layer
    attention = 2 * pairs * h * (dqk + dv)
    # the last layer: projections of every token, attention and output for the last ones
    last_keys = int(n.sum())  # each user's last query sees its whole history
    last_layer = 2 * tokens * d * proj_width + 2 * last_keys * h * (dqk + dv) \
        + 2 * users * h * dv * d
    scoring = 2 * users * data.num_items * d
    flops = (m.num_layers - 1) * (linear + attention) + last_layer + scoring
    silu = (m.num_layers - 1) * pairs * h + m.num_layers * tokens * proj_width
    return {"dataset": dataset, "model": model, "users": users, "tokens": tokens,
            "causal_pairs": pairs, "layers": m.num_layers, "matmul_gflop": flops / 1e9,
            "linear_gflop_per_layer": linear / 1e9, "attention_gflop_per_layer": attention / 1e9,
            "silu_values_m": silu / 1e6}


def rates(threads: int, repeats: int = 5) -> dict:
    """Measured sgemm GFLOP/s (2048³) and SiLU values/s (64 M fp32) on this machine."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(64 << 20)
    out = torch.empty_like(x)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    silu_s = best(lambda: torch.ops.aten.silu.out(x, out=out))
    return {"sgemm_gflops": 2 * 2048 ** 3 / best(lambda: a @ b) / 1e9,
            "silu_gvalues_per_s": x.numel() / silu_s / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--models", nargs="+", default=["hstu", "hstu-large"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(HERE / "results" / "eval_floor.json"))
    args = p.parse_args()
    r = rates(args.threads)
    rows = []
    for model in args.models:
        w = work(args.dataset, model, args.data_dir)
        w["floor_s"] = (w["matmul_gflop"] / r["sgemm_gflops"]
                        + w["silu_values_m"] / 1e3 / r["silu_gvalues_per_s"])
        rows.append(w)
    print(f"sgemm {r['sgemm_gflops']:.0f} GFLOP/s, SiLU {r['silu_gvalues_per_s']:.2f} G values/s "
          f"({args.threads} threads)")
    head = (f"{'model':<11} {'users':>6} {'tokens':>8} {'pairs/head':>11} {'GFLOP':>7} "
            f"{'SiLU M':>7} {'floor s':>8}")
    print(head)
    print("-" * len(head))
    for w in rows:
        print(f"{w['model']:<11} {w['users']:>6,} {w['tokens']:>8,} {w['causal_pairs']:>11,} "
              f"{w['matmul_gflop']:>7.1f} {w['silu_values_m']:>7.0f} {w['floor_s']:>8.2f}")
    meta = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
            "date": time.strftime("%Y-%m-%d %H:%M"), **r}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
