"""Train RecTools' ``SASRecModel`` / ``HSTUModel`` as a peer baseline for ``cpu_speed.py``.

Each fit runs in its own child process (``subprocess`` with a chosen interpreter), so the
peak RSS reported is that model's alone and the caller needs neither pandas nor RecTools:
only the child imports them. Point ``python=`` (or ``GENREC_RECTOOLS_PYTHON``) at an
interpreter that has ``rectools[torch]>=0.19`` when the current one lacks it.

Settings follow genrec's MovieLens presets as closely as RecTools allows: sampled softmax
over uniform catalogue negatives drawn per position, cosine scores divided by a temperature
of 0.05, Adam(lr 1e-3, betas 0.9/0.98), dropout 0.2, id embeddings only, left-padded
sessions of ``session_max_len`` inputs, CPU Lightning trainer without logger, progress bar,
checkpoints or validation. Split: leave-last-out, each user's events sorted by timestamp
with ties kept in input order; the held-out event's time is the HSTU recommend context.

CLI::

    python benchmarks/peers/rectools_runner.py --ratings ratings.dat.gz --model hstu --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MODELS = {"sasrec": ("SASRecModel", 2, 1), "hstu": ("HSTUModel", 2, 1),
          "hstu-large": ("HSTUModel", 8, 2)}  # name -> (RecTools class, blocks, heads)
TEMPERATURE = 0.05  # genrec's TrainConfig.temperature
_EPOCH_SECONDS: list[float] = []  # filled by the trainer callback in the child
_EPOCH_CPU_SECONDS: list[float] = []  # process CPU time (all threads) of the same epochs


def run_rectools(model: str, ratings: Any, *, epochs: int, n_factors: int = 50,
                 n_blocks: int | None = None, n_heads: int | None = None,
                 session_max_len: int = 200, batch_size: int = 128, n_negatives: int = 128,
                 threads: int = 2, seed: int = 0, evaluate: bool = True,
                 python: str | None = None, timeout: float | None = None) -> dict:
    """Fit one RecTools model in a child process and return its timings and metrics.

    ``ratings`` is a path to a MovieLens ``user::item::rating::timestamp`` file (``.gz``
    allowed), a table (DataFrame or mapping of arrays with ``user_id``, ``item_id`` and
    ``timestamp`` in seconds or ``datetime``) holding the full log, which is split
    leave-last-out here, or a ``(train, holdout)`` pair of such tables already split.
    ``n_blocks``/``n_heads`` default to the model's preset (hstu-large: 8 blocks, 2 heads).

    Returns a dict with ``seconds_per_epoch`` (every epoch, wall), ``cpu_seconds_per_epoch``
    (the same epochs' process CPU time, user+sys of all threads), ``steady_seconds_per_epoch``
    (mean without the first epoch when there are several), ``fit_seconds`` (wall) and
    ``fit_cpu_seconds`` (user+sys of the child during fit),
    ``peak_rss_mb`` (child's ru_maxrss after fit; ``rss_before_fit_mb`` is the same just
    before fit, i.e. imports and data), ``hr@10``/``ndcg@10`` (when
    ``evaluate``), data sizes, versions and ``rectools_config``.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    _, blocks, heads = MODELS[model]
    spec = dict(model=model, epochs=int(epochs), n_factors=n_factors,
                n_blocks=n_blocks or blocks, n_heads=n_heads or heads,
                session_max_len=session_max_len, batch_size=batch_size,
                n_negatives=n_negatives, threads=threads, seed=seed, evaluate=evaluate)
    exe = python or os.environ.get("GENREC_RECTOOLS_PYTHON") or sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONHASHSEED=str(seed))
    with tempfile.TemporaryDirectory(prefix="rectools-peer-") as tmp:
        if isinstance(ratings, (str, os.PathLike)):
            spec["ratings_path"] = str(Path(ratings).resolve())
        else:
            spec["arrays_path"] = str(Path(tmp) / "events.npz")
            np.savez(spec["arrays_path"], **_arrays(ratings))
        spec["out_path"] = str(Path(tmp) / "result.json")
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([exe, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not Path(spec["out_path"]).exists():
            raise RuntimeError(f"RecTools {model} run failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        return json.loads(Path(spec["out_path"]).read_text())


def _column(table: Any, *names: str) -> np.ndarray:
    for name in names:
        try:
            return np.asarray(table[name])
        except (KeyError, IndexError, ValueError):
            continue
    raise KeyError(f"table has none of the columns {names}")


def _seconds(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "M":
        return values.astype("datetime64[s]").astype(np.int64)
    return values.astype(np.int64)


def _arrays(ratings: Any) -> dict[str, np.ndarray]:
    """Columns of the caller's table(s) as plain arrays for the child, keyed by role."""
    parts = {"all": ratings}
    if isinstance(ratings, tuple) and len(ratings) == 2:
        parts = {"train": ratings[0], "hold": ratings[1]}
    out = {}
    for part, table in parts.items():
        if not isinstance(table, Mapping) and not hasattr(table, "columns"):
            raise TypeError("ratings must be a path, a table or a (train, holdout) pair")
        out[f"{part}_user"] = _column(table, "user_id", "user")
        out[f"{part}_item"] = _column(table, "item_id", "item")
        out[f"{part}_ts"] = _seconds(_column(table, "timestamp", "datetime"))
    return out


def leave_last_out(user: np.ndarray, item: np.ndarray, ts: np.ndarray):
    """Sort each user's events by time (ties keep input order); hold out the last one."""
    order = np.lexsort((ts, user))  # stable, like genrec.data.prepare
    user, item, ts = user[order], item[order], ts[order]
    last = np.ones(len(user), dtype=bool)
    last[:-1] = user[1:] != user[:-1]
    return (user[~last], item[~last], ts[~last]), (user[last], item[last], ts[last])


def _load_events(spec: dict):
    """(train, holdout) as (user, item, ts) array triples, from a file or the caller's npz."""
    if "ratings_path" in spec:
        import pandas as pd

        raw = pd.read_csv(spec["ratings_path"], sep=":", header=None, usecols=[0, 2, 6],
                          names=["u", "_a", "i", "_b", "r", "_c", "t"], dtype=np.int64)
        return leave_last_out(raw["u"].to_numpy(), raw["i"].to_numpy(), raw["t"].to_numpy())
    data = np.load(spec["arrays_path"])
    if "all_user" in data:
        return leave_last_out(data["all_user"], data["all_item"], data["all_ts"])
    return ((data["train_user"], data["train_item"], data["train_ts"]),
            (data["hold_user"], data["hold_item"], data["hold_ts"]))


def _make_trainer(epochs: int):
    """Lightning trainer for CPU timing: no logger, bar, summary, checkpoints or validation."""
    from pytorch_lightning import Callback, Trainer

    class EpochTimer(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module):
            _EPOCH_SECONDS.append(time.perf_counter() - self.start)
            _EPOCH_CPU_SECONDS.append(time.process_time() - self.cpu_start)

    return Trainer(max_epochs=epochs, min_epochs=epochs, accelerator="cpu", devices=1,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
                   callbacks=[EpochTimer()])


def _frame(user: np.ndarray, item: np.ndarray, ts: np.ndarray):
    import pandas as pd

    return pd.DataFrame({"user_id": user, "item_id": item, "weight": np.ones(len(user)),
                         "datetime": pd.to_datetime(ts, unit="s")})


def _worker(spec: dict) -> dict:
    """Child-process body: build, fit, time, and (optionally) evaluate one model."""
    import pandas as pd
    import pytorch_lightning as pl
    import rectools
    import torch
    from rectools.dataset import Dataset
    from rectools.models import HSTUModel, SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    torch.set_num_threads(spec["threads"])
    pl.seed_everything(spec["seed"], workers=True, verbose=False)
    (tu, ti, tt), (hu, hi, ht) = _load_events(spec)
    dataset = Dataset.construct(_frame(tu, ti, tt))
    cls = {"SASRecModel": SASRecModel, "HSTUModel": HSTUModel}[MODELS[spec["model"]][0]]
    rec = cls(
        n_blocks=spec["n_blocks"], n_heads=spec["n_heads"], n_factors=spec["n_factors"],
        dropout_rate=0.2, session_max_len=spec["session_max_len"],
        train_min_user_interactions=2, loss="sampled_softmax",
        n_negatives=spec["n_negatives"], lr=1e-3, batch_size=spec["batch_size"],
        epochs=spec["epochs"], deterministic=False, verbose=0, dataloader_num_workers=0,
        item_net_block_types=(IdEmbeddingsItemNet,),
        similarity_module_kwargs={"distance": "cosine"},
        lightning_module_kwargs={"logits_t": TEMPERATURE},
        get_trainer_func=_make_trainer, get_trainer_func_kwargs={"epochs": spec["epochs"]},
        recommend_batch_size=256, recommend_torch_device="cpu",
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    rec.fit(dataset)
    fit_seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    rss_before_kb, rss_kb = before.ru_maxrss, after.ru_maxrss
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    kb_per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss unit
    per_epoch = list(_EPOCH_SECONDS)
    result: dict[str, Any] = {
        "model": spec["model"], "rectools_class": cls.__name__, "epochs": spec["epochs"],
        "seconds_per_epoch": [round(s, 3) for s in per_epoch],
        "cpu_seconds_per_epoch": [round(s, 3) for s in _EPOCH_CPU_SECONDS],
        "steady_seconds_per_epoch": round(float(np.mean(per_epoch[1:] or per_epoch)), 3),
        "fit_seconds": round(fit_seconds, 3),
        "fit_cpu_seconds": round(cpu, 3),  # user+sys; cpu/wall < threads means contention
        "peak_rss_mb": round(rss_kb / kb_per_mb, 1),
        "rss_before_fit_mb": round(rss_before_kb / kb_per_mb, 1),  # imports + data
        "train_events": int(len(tu)), "users": int(dataset.user_id_map.size),
        "items": int(dataset.item_id_map.size), "threads": torch.get_num_threads(),
        "versions": {"rectools": rectools.__version__, "torch": torch.__version__,
                     "pytorch_lightning": pl.__version__, "pandas": pd.__version__},
        "rectools_config": json.loads(json.dumps(rec.get_config(simple_types=True),
                                                 default=str)),
    }
    if spec["evaluate"]:
        start = time.perf_counter()
        result.update(_evaluate(rec, dataset, hu, hi, ht))
        result["eval_seconds"] = round(time.perf_counter() - start, 3)
    return result


def _evaluate(rec, dataset, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> dict:
    """HR@10 / NDCG@10 of full-catalogue top-10 (seen items filtered) vs the held-out item.

    Held-out users unknown to the trained model count as misses.
    """
    known = np.isin(users, dataset.user_id_map.external_ids)
    context = None
    if rec.require_recommend_context:  # HSTU: time of the event to predict
        context = _frame(users[known], items[known], ts[known])[["user_id", "datetime"]]
    reco = rec.recommend(users=users[known], dataset=dataset, k=10, filter_viewed=True,
                         context=context)
    target = dict(zip(users.tolist(), items.tolist(), strict=True))
    hit = reco[reco["item_id"].to_numpy() == reco["user_id"].map(target).to_numpy()]
    ranks = hit["rank"].to_numpy(dtype=np.float64)  # 1-based
    n = len(users)
    return {"hr@10": round(len(ranks) / n, 4),
            "ndcg@10": round(float(np.sum(1.0 / np.log2(ranks + 1.0))) / n, 4),
            "eval_users": int(n), "eval_users_unknown": int(n - known.sum())}


def main(argv: list[str] | None = None) -> None:
    """CLI: run one model and print its result as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--ratings", help="MovieLens-style user::item::rating::timestamp file")
    p.add_argument("--model", choices=sorted(MODELS), default="hstu")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-factors", type=int, default=50)
    p.add_argument("--n-blocks", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--session-max-len", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-negatives", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip HR@10/NDCG@10")
    p.add_argument("--python", help="interpreter with rectools installed (default: this one)")
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["out_path"]).write_text(json.dumps(_worker(spec)))
        return
    if not args.ratings:
        p.error("--ratings is required")
    result = run_rectools(args.model, args.ratings, epochs=args.epochs,
                          n_factors=args.n_factors, n_blocks=args.n_blocks,
                          n_heads=args.n_heads, session_max_len=args.session_max_len,
                          batch_size=args.batch_size, n_negatives=args.n_negatives,
                          threads=args.threads, seed=args.seed, evaluate=not args.no_eval,
                          python=args.python)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
