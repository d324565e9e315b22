"""Retrieval quality of SASRec, HSTU and HSTU-large with the paper's hyper-parameters.

Trains each model on each data set with the `paper` protocol (leave-last-out, full ranking)
through the same `genrec.train.train` users call, and prints HR@10 / NDCG@10 / HR@50 /
HR@200, epochs, wall time and training FLOPs per model; writes the rows as JSON.

    python benchmarks/retrieval_quality.py --data-dir ../shared/data            # 101 epochs
    python benchmarks/retrieval_quality.py --data-dir ../shared/data --epochs 20 --threads 2

On a CPU, shorten with --epochs; the paper's numbers (SPEC §4) are for 101 epochs on full
ML-1M, while ../shared/data/ml-1m holds users 1–2999 only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from genrec.config import preset
from genrec.data import load_dataset
from genrec.train import train

PAPER_ML1M = {"sasrec": 0.2853, "hstu": 0.3097, "hstu-large": 0.3294}  # HR@10, SPEC §4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--datasets", nargs="+", default=["ml-1m", "ml-latest-small"])
    p.add_argument("--models", nargs="+", default=["sasrec", "hstu", "hstu-large"])
    p.add_argument("--epochs", type=int, default=101)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="benchmarks/results/retrieval_quality")
    p.add_argument("--json", default="benchmarks/results/retrieval_quality.json")
    args = p.parse_args()

    rows = []
    for dataset in args.datasets:
        base = preset(dataset, "hstu")
        base.data.data_dir = args.data_dir
        data = load_dataset(base.data, progress=False)  # parsed once, shared by the models
        for model in args.models:
            cfg = preset(dataset, model)
            cfg.data.data_dir = args.data_dir
            cfg.train.epochs = args.epochs
            cfg.train.eval_every = args.eval_every
            cfg.train.device = args.device
            cfg.train.num_threads = args.threads
            cfg.train.seed = args.seed
            cfg.train.progress = False
            start = time.perf_counter()
            m = train(cfg, out=Path(args.out) / f"{dataset}-{model}", data=data)
            row = {"dataset": dataset, "model": model, "users": data.num_users,
                   "items": data.num_items, **{k: m[k] for k in (
                       "hr@10", "ndcg@10", "hr@50", "hr@200", "mrr", "epochs", "train_flops")},
                   "best_hr@10": (m.get("best") or {}).get("hr@10"),
                   "wall_s": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(_format_row(row), flush=True)

    print()
    print(_table(rows))
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "device": args.device, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "epochs": args.epochs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


def _format_row(r: dict) -> str:
    return (f"{r['dataset']:<16} {r['model']:<11} {r['hr@10']:.4f} {r['ndcg@10']:.4f} "
            f"{r['hr@50']:.4f} {r['hr@200']:.4f} {r['epochs']:>4} {r['wall_s']:>8.1f} "
            f"{r['train_flops']:.2e}")


def _table(rows: list[dict]) -> str:
    head = (f"{'dataset':<16} {'model':<11} {'HR@10':>6} {'NDCG@10':>7} {'HR@50':>6} "
            f"{'HR@200':>6} {'ep':>4} {'wall_s':>8} {'train_FLOPs':>10}")
    lines = [head, "-" * len(head)] + [_format_row(r) for r in rows]
    for dataset in {r["dataset"] for r in rows}:
        by_model = {r["model"]: r for r in rows if r["dataset"] == dataset}
        if "sasrec" in by_model:
            for m in ("hstu", "hstu-large"):
                if m in by_model:
                    gain = by_model[m]["hr@10"] / by_model["sasrec"]["hr@10"] - 1
                    lines.append(f"{dataset}: {m} vs sasrec HR@10 {gain:+.1%}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
