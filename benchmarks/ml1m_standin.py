"""Full-size ML-1M training time when only the 2,999-user prefix of ML-1M is at hand.

The stand-in is that prefix twice, with the second copy under user ids + 10000. That gives
5,998 users and 975,300 ratings, about as many events per user as the full file (162.6
against 165.6). It trains the HSTU preset through `genrec.train.train`, the call
`genrec train` makes, for 101 epochs, with an evaluation every 5 epochs as the preset does.
It prints the wall time and writes JSON. A user who has the official ratings.dat runs
`genrec train ml-1m` instead; this script is for machines that lack it.

    python benchmarks/ml1m_standin.py --data-dir ../shared/data
    python benchmarks/ml1m_standin.py --epochs 5        # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "ml-1m/ratings.users0001-2999.PARTIAL.dat.gz"
COPY_OFFSET = 10_000  # user ids of the second copy


def write_standin(prefix: Path, csv_path: Path) -> int:
    """The prefix's ratings twice as a CSV (user, item, rating, ts); returns the row count."""
    with gzip.open(prefix, "rt") as f:
        rows = [line.rstrip("\n").split("::") for line in f if line.strip()]
    with open(csv_path, "w") as out:
        out.write("user,item,rating,ts\n")
        for offset in (0, COPY_OFFSET):
            for user, item, rating, ts in rows:
                out.write(f"{int(user) + offset},{item},{rating},{ts}\n")
    return 2 * len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--model", default="hstu")
    p.add_argument("--epochs", type=int, default=101)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", help="where the CSV and the run go (default: a temp dir)")
    p.add_argument("--json", default=str(HERE / "results" / "ml1m_standin.json"))
    args = p.parse_args()

    from genrec.config import TableConfig, preset
    from genrec.train import train

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ml1m-standin-"))
    work.mkdir(parents=True, exist_ok=True)
    ratings = write_standin(Path(args.data_dir) / PREFIX, work / "ratings.csv")
    cfg = preset("ml-1m", args.model)
    cfg.data.name, cfg.data.data_dir = "custom", str(work)
    cfg.data.table = TableConfig(path=str(work / "ratings.csv"), user_col="user",
                                 item_col="item", timestamp_col="ts", rating_col="rating")
    cfg.train.epochs, cfg.train.num_threads = args.epochs, args.threads
    start = time.perf_counter()
    metrics = train(cfg, out=work / "run")
    total_s = time.perf_counter() - start
    row = {
        "model": args.model, "ratings": ratings, "epochs": metrics["epochs"],
        "train_and_eval_s": round(metrics["wall_s"], 1), "command_s": round(total_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "hr@10": metrics["hr@10"], "eval_every": cfg.train.eval_every,
    }
    print(f"{'model':<8} {'ratings':>9} {'epochs':>6} {'train+eval s':>12} {'min':>6} "
          f"{'RSS MB':>7}")
    print(f"{row['model']:<8} {ratings:>9,} {row['epochs']:>6} {row['train_and_eval_s']:>12.1f} "
          f"{row['train_and_eval_s'] / 60:>6.1f} {row['peak_rss_mb']:>7,}")
    meta = {"machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "threads": args.threads}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": [row]}, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
