"""HSTU attention on CPU: the PyTorch reference against the fast CPU path, eager and compiled.

One batch of B = 128 ML-1M users (lengths min(n − 2, 200) and timestamps of real users, drawn
at random), normaliser N = 211 (200 + attn_norm_extra), both rab terms (position table
2N − 1, 129 time buckets), fp32, alpha = 1, for the paper's HSTU head shape (H = 1, D = 50)
and HSTU-large's (H = 2, D = 25). Five variants:

    reference           hstu_attention_reference, eager (backend="torch")
    reference+compile   torch.compile(hstu_attention_reference, dynamic=True)
    cpu                 the CPU path's tiles, eager (GENREC_CPU_COMPILE=0, no native kernel)
    cpu+compile         the CPU path's tiles, compiled (GENREC_NATIVE_ATTENTION=0)
    native              hstu_attention_cpu as dispatched by default on CPU: the C++ kernel

Times are medians over --repeats rounds; the variants alternate within a round, so load from
other jobs on a shared machine hits them alike, and the ratios come from the same run. The
first call of each variant (compilation included; inductor caches across processes, so use
--cold-cache for a first-ever start) is reported as warm-up. Prints a table, writes JSON.

    python benchmarks/attention_cpu.py --data-dir ../shared/data
    python benchmarks/attention_cpu.py --repeats 3 --cold-cache
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = [(1, 50), (2, 25)]  # (heads, head dim): HSTU, HSTU-large
VARIANTS = ["reference", "reference+compile", "cpu", "cpu+compile", "native"]


def ml1m_batch(data_dir: str, batch: int, seed: int) -> dict:
    """Lengths, timestamps (of each event) and query timestamps (of the next) of B users."""
    import numpy as np
    import torch

    from genrec.config import preset
    from genrec.data import load_dataset

    cfg = preset("ml-1m")
    cfg.data.data_dir = data_dir
    data = load_dataset(cfg.data, progress=False)
    offsets = np.asarray(data.seq_offsets)
    users = np.random.default_rng(seed).choice(len(offsets) - 1, batch, replace=False)
    lengths, ts, qts = [], [], []
    for u in users:
        start, end = int(offsets[u]), int(offsets[u + 1])
        n = min(end - start - 2, 200)
        times = torch.as_tensor(np.asarray(data.timestamps[start:start + n + 1]), dtype=torch.int64)
        lengths.append(n)
        ts.append(times[:n])
        qts.append(times[1:n + 1])
    return {"lengths": lengths, "timestamps": torch.cat(ts), "query_timestamps": torch.cat(qts),
            "max_seq_len": cfg.data.max_seq_len + cfg.model.attn_norm_extra}


def inputs(batch: dict, heads: int, dim: int, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    T, N = sum(batch["lengths"]), batch["max_seq_len"]

    def param(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return dict(
        q=param(T, heads, dim, scale=0.3), k=param(T, heads, dim, scale=0.3),
        v=param(T, heads, dim, scale=1.0),
        seq_offsets=torch.tensor([0, *torch.tensor(batch["lengths"]).cumsum(0).tolist()]),
        max_seq_len=N, alpha=1.0, pos_weights=param(2 * N - 1, scale=0.02),
        time_weights=param(129, scale=0.02), timestamps=batch["timestamps"],
        query_timestamps=batch["query_timestamps"],
    )


def variant_fn(name: str):
    import torch

    from genrec.ops.attention import cpu, hstu_attention_reference, native

    if name == "reference":
        return hstu_attention_reference
    if name == "reference+compile":
        return torch.compile(hstu_attention_reference, dynamic=True)
    compiled, kernel = name != "cpu", name == "native"

    def run(*args, **kwargs):
        cpu.COMPILE, native.ENABLED = compiled, kernel
        return cpu.hstu_attention_cpu(*args, **kwargs)

    return run


def timed(fn, kw: dict, grad_out, backward: bool) -> float:
    import torch

    start = time.perf_counter()
    if backward:
        fn(**kw).backward(grad_out)
    else:
        with torch.no_grad():
            fn(**kw)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cold-cache", action="store_true",
                   help="compile into a fresh inductor cache (a first-ever warm-up)")
    p.add_argument("--json", default=str(HERE / "results" / "attention_cpu.json"))
    args = p.parse_args()
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    import torch

    torch.set_num_threads(args.threads)
    batch = ml1m_batch(args.data_dir, args.batch, args.seed)
    lengths = batch["lengths"]
    rows, load = [], [os.getloadavg()[0]]
    for heads, dim in SHAPES:
        kw = inputs(batch, heads, dim, args.seed)
        grad_out = torch.randn(kw["q"].shape[0], heads, dim,
                               generator=torch.Generator().manual_seed(1))
        fns = {name: variant_fn(name) for name in VARIANTS}
        warmup = {name: timed(fns[name], kw, grad_out, backward=True) for name in VARIANTS}
        times = {name: {"fwd": [], "fwd_bwd": []} for name in VARIANTS}
        for _ in range(args.repeats):
            for name in VARIANTS:
                times[name]["fwd"].append(timed(fns[name], kw, grad_out, backward=False))
                times[name]["fwd_bwd"].append(timed(fns[name], kw, grad_out, backward=True))
        base = {k: statistics.median(times["reference"][k]) for k in ("fwd", "fwd_bwd")}
        for name in VARIANTS:
            fwd, both = (statistics.median(times[name][k]) for k in ("fwd", "fwd_bwd"))
            rows.append({"heads": heads, "dim": dim, "variant": name,
                         "warmup_s": round(warmup[name], 2), "fwd_ms": round(1e3 * fwd, 1),
                         "fwd_bwd_ms": round(1e3 * both, 1),
                         "fwd_speedup": round(base["fwd"] / fwd, 1),
                         "fwd_bwd_speedup": round(base["fwd_bwd"] / both, 1)})
            print(_line(rows[-1]), flush=True)
    load.append(os.getloadavg()[0])
    print()
    print(_table(rows))
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "batch": args.batch,
            "tokens": sum(lengths), "longest": max(lengths),
            "padded_logits_reference": args.batch * max(lengths) ** 2,
            "causal_logits_useful": sum(n * (n + 1) // 2 for n in lengths),
            "repeats": args.repeats, "cold_cache": args.cold_cache,
            "load_average_1min_start_end": [round(x, 2) for x in load],
            "command": " ".join(sys.argv)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nload average {load[0]:.2f} -> {load[1]:.2f}; wrote {args.json}")


def _line(r: dict) -> str:
    return (f"H={r['heads']} D={r['dim']:<3} {r['variant']:<18} {r['warmup_s']:>8.2f} "
            f"{r['fwd_ms']:>8.1f} {r['fwd_bwd_ms']:>10.1f} {r['fwd_speedup']:>6.1f}x "
            f"{r['fwd_bwd_speedup']:>6.1f}x")


def _table(rows: list[dict]) -> str:
    head = (f"{'shape':<10} {'variant':<18} {'warmup_s':>8} {'fwd_ms':>8} {'fwd+bwd_ms':>10} "
            f"{'fwd':>7} {'fwd+bwd':>7}")
    return "\n".join([head, "-" * len(head)] + [_line(r) for r in rows])


if __name__ == "__main__":
    main()
