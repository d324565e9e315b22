"""CPU training speed of genrec's paper configs, optionally against RecTools in the same run.

Per model: seconds per training epoch (median of the timed epochs, after one warm-up epoch
that includes torch.compile), the same epochs' process CPU seconds (user+sys, all threads),
tokens per second, full-ranking evaluation seconds (all users, all items, history excluded;
median of 3), peak RSS, and HR@10 / NDCG@10 after the epochs, so that a speed-up that hurts
learning shows. Each model runs in its own process (so peak RSS is its own) through the same
`genrec.train.Trainer` users run.

With ``--compare rectools`` each genrec model is followed at once by the same RecTools model,
and ``--rounds N`` repeats those pairs N times: on a shared machine whose speed drifts by
±15 % over minutes, the median of the per-round ratios is steadier than one pair. Ratios are
given in wall time and in CPU time (CPU time leaves out time the host took the cores away).
Before each genrec model the parent process times a 2048³ sgemm on the same threads
(``sgemm_gflops`` in each row, "GF/s" in the table): the machine's speed at that moment, to
read an absolute figure such as the evaluation seconds against.

    python benchmarks/cpu_speed.py --data-dir ../shared/data --threads 2
    python benchmarks/cpu_speed.py --compare rectools --rectools-python /path/venv/bin/python
    python benchmarks/cpu_speed.py --models hstu --compare rectools --rounds 3 ...

RecTools (optional, `pip install "rectools[torch]>=0.19"`, best in its own virtual
environment since it pins numpy<2) runs through benchmarks/peers/rectools_runner.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ML1M_PARTIAL = "ml-1m/ratings.users0001-2999.PARTIAL.dat.gz"


def run_genrec(spec: dict) -> dict:
    """Train one preset for warm-up + timed epochs in this (child) process; return figures."""
    import torch

    from genrec.config import preset
    from genrec.data import load_dataset
    from genrec.train import Trainer

    torch.set_num_threads(spec["threads"])
    cfg = preset(spec["dataset"], spec["model"])
    cfg.data.data_dir = spec["data_dir"]
    cfg.train.progress = False
    cfg.train.num_threads = spec["threads"]
    cfg.train.compile = spec["compile"]
    cfg.train.shared_negatives = spec["shared_negatives"]
    data = load_dataset(cfg.data, progress=False)
    trainer = Trainer(cfg, data, Path(spec["out"]) / spec["model"])
    start = time.perf_counter()
    trainer.train_epoch()  # includes torch.compile
    warmup_s = time.perf_counter() - start
    epochs, cpu = [], []
    for _ in range(spec["epochs"]):
        cpu_start = time.process_time()
        epochs.append(trainer.train_epoch())
        cpu.append(time.process_time() - cpu_start)
    eval_s = []
    for _ in range(3):
        start = time.perf_counter()
        metrics = trainer.evaluate("test")
        eval_s.append(time.perf_counter() - start)
    seconds = [e["seconds"] for e in epochs]
    return {
        "system": "genrec", "model": spec["model"], "compile": spec["compile"],
        "shared_negatives": spec["shared_negatives"], "warmup_epoch_s": round(warmup_s, 2),
        "seconds_per_epoch": round(statistics.median(seconds), 3),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "cpu_seconds_per_epoch": round(statistics.median(cpu), 3),
        "epoch_cpu_seconds": [round(s, 3) for s in cpu],
        "tokens_per_s": round(statistics.median(e["tokens_per_s"] for e in epochs)),
        "eval_s": round(statistics.median(eval_s), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "epochs_trained": trainer.epoch, "hr@10": metrics["hr@10"],
        "ndcg@10": metrics["ndcg@10"], "users": data.num_users, "items": data.num_items,
    }


def sgemm_gflops(threads: int, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate now: a 2048³ sgemm on `threads` threads, median of
    `repeats` after one warm-up."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return round(2 * 2048 ** 3 / statistics.median(times) / 1e9, 1)


def run_peer(args: argparse.Namespace, model: str) -> dict:
    sys.path.insert(0, str(HERE / "peers"))
    from rectools_runner import run_rectools

    r = run_rectools(model, str(Path(args.data_dir) / ML1M_PARTIAL),
                     epochs=args.rectools_epochs, threads=args.threads,
                     python=args.rectools_python, evaluate=True)
    per_epoch, cpu = r["seconds_per_epoch"], r["cpu_seconds_per_epoch"]
    steady, steady_cpu = per_epoch[1:] or per_epoch, cpu[1:] or cpu  # the first: warm-up
    return {"system": "rectools", "model": model,
            "seconds_per_epoch": round(statistics.median(steady), 3),
            "epoch_seconds": [round(s, 3) for s in per_epoch],
            "cpu_seconds_per_epoch": round(statistics.median(steady_cpu), 3),
            "epoch_cpu_seconds": [round(s, 3) for s in cpu],
            "peak_rss_mb": round(r["peak_rss_mb"]), "epochs_trained": len(per_epoch),
            "hr@10": r.get("hr@10"), "ndcg@10": r.get("ndcg@10")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--models", nargs="+", default=["hstu", "hstu-large", "sasrec"])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="eager PyTorch only")
    p.add_argument("--shared-negatives", action="store_true",
                   help="one negative draw per batch instead of per position")
    p.add_argument("--compare", choices=["rectools"], help="also run this peer")
    p.add_argument("--rectools-python", help="interpreter with rectools installed")
    p.add_argument("--rectools-epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat each genrec / peer pair this many times (median of ratios)")
    p.add_argument("--out", default="/tmp/genrec-cpu-speed")
    p.add_argument("--json", default=str(HERE / "results" / "cpu_speed.json"))
    args = p.parse_args()

    rows = []
    ctx = mp.get_context("spawn")
    for round_ in range(1, args.rounds + 1):
        for model in args.models:
            spec = {"model": model, "dataset": args.dataset, "data_dir": args.data_dir,
                    "threads": args.threads, "epochs": args.epochs, "out": args.out,
                    "compile": not args.no_compile, "shared_negatives": args.shared_negatives}
            gflops = sgemm_gflops(args.threads)
            with ctx.Pool(1) as pool:
                row = pool.apply(run_genrec, (spec,))
            row["round"], row["sgemm_gflops"] = round_, gflops
            rows.append(row)
            print(_line(row), flush=True)
            if args.compare == "rectools":
                peer = run_peer(args, model)
                peer["round"] = round_
                peer["genrec_speedup"] = round(
                    peer["seconds_per_epoch"] / row["seconds_per_epoch"], 2)
                peer["genrec_cpu_speedup"] = round(
                    peer["cpu_seconds_per_epoch"] / row["cpu_seconds_per_epoch"], 2)
                rows.append(peer)
                print(_line(peer), flush=True)

    print()
    print(_table(rows))
    summary = _summary(rows, args.models)
    if args.compare:
        print()
        print(_summary_table(summary))
    meta = {"machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "dataset": args.dataset,
            "timed_epochs": args.epochs, "rounds": args.rounds,
            "time": time.strftime("%H:%M"), "command": " ".join(sys.argv)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary},
                                          indent=2) + "\n")
    print(f"\nwrote {args.json}")


def _summary(rows: list[dict], models: list[str]) -> list[dict]:
    """Per model: median seconds per epoch over the rounds, per system, and the per-round
    speed-ups against the peer with their median (wall and CPU time)."""
    out = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        entry: dict = {"model": model}
        for system in ("genrec", "rectools"):
            runs = [r for r in mine if r["system"] == system]
            if runs:
                entry[f"{system}_s_per_epoch"] = round(
                    statistics.median(r["seconds_per_epoch"] for r in runs), 3)
        peers = [r for r in mine if "genrec_speedup" in r]
        if peers:
            for key in ("genrec_speedup", "genrec_cpu_speedup"):
                entry[key + "_rounds"] = [r[key] for r in peers]
                entry[key] = round(statistics.median(r[key] for r in peers), 2)
        out.append(entry)
    return out


def _summary_table(summary: list[dict]) -> str:
    head = (f"{'model':<11} {'genrec s':>8} {'peer s':>8} {'speedup (wall)':>24} "
            f"{'speedup (CPU time)':>24}")
    lines = [head, "-" * len(head)]
    for e in summary:
        if "genrec_speedup" in e:
            lines.append(f"{e['model']:<11} {e['genrec_s_per_epoch']:>8.2f} "
                         f"{e['rectools_s_per_epoch']:>8.2f} "
                         f"{_speedup_cell(e, 'genrec_speedup'):>24} "
                         f"{_speedup_cell(e, 'genrec_cpu_speedup'):>24}")
    return "\n".join(lines)


def _speedup_cell(entry: dict, key: str) -> str:
    """'9.8x (9.5, 9.8, 10.1)': the median, then each round's ratio."""
    rounds = ", ".join(f"{x:.1f}" for x in entry[key + "_rounds"])
    return f"{entry[key]:.1f}x ({rounds})"


def _line(r: dict) -> str:
    ratio = f"{r['genrec_speedup']:>6.1f}x" if "genrec_speedup" in r else " " * 7
    hr = f"{r['hr@10']:.4f}" if r.get("hr@10") is not None else "   -  "
    ndcg = f"{r['ndcg@10']:.4f}" if r.get("ndcg@10") is not None else "   -  "
    gflops = f"{r['sgemm_gflops']:>5.0f}" if "sgemm_gflops" in r else "    -"
    return (f"{r['system']:<9} {r['model']:<11} {r['seconds_per_epoch']:>8.2f} "
            f"{r.get('tokens_per_s', 0):>9,} {r.get('eval_s', float('nan')):>7.2f} "
            f"{r['peak_rss_mb']:>7,} {r['epochs_trained']:>3} {hr} {ndcg} {ratio} {gflops}")


def _table(rows: list[dict]) -> str:
    head = (f"{'system':<9} {'model':<11} {'s/epoch':>8} {'tokens/s':>9} {'eval_s':>7} "
            f"{'RSS_MB':>7} {'ep':>3} {'HR@10':>6} {'NDCG@10':>6} {'speedup':>7} {'GF/s':>5}")
    return "\n".join([head, "-" * len(head)] + [_line(r) for r in rows])


if __name__ == "__main__":
    main()
