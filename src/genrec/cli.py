"""The ``genrec`` command: a thin shell over the Python API (parse, call, print).

    genrec train DATASET|CONFIG.yaml [--model M] [--data-dir D] [--out RUN] [--epochs N] ...
    genrec eval RUN_DIR [--checkpoint best|last] [--split test|valid]
    genrec data stats NAME|CONFIG.yaml --data-dir DIR
    genrec data download NAME --data-dir DIR
    genrec config DATASET [--model M]        print a preset as YAML, to edit and train
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from genrec.config import DATASETS, MODELS, PROTOCOLS, ConfigError, RunConfig, preset


def _load_config(target: str, model: str | None) -> RunConfig:
    """A dataset name gives its preset; a path gives the YAML config it holds."""
    if target in DATASETS:
        return preset(target, model or "hstu")
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        cfg = RunConfig.from_yaml(path)
        if model is not None:
            cfg = _with_model(cfg, model)
        return cfg
    raise ConfigError(f"{target!r} is neither a data set ({', '.join(DATASETS)}) nor a "
                      f"YAML config file")


def _with_model(cfg: RunConfig, model: str) -> RunConfig:
    """Swap in the model shape of `model` for the config's data set family."""
    family_preset = preset(cfg.data.name if cfg.data.name in DATASETS else "ml-1m", model)
    cfg.model = family_preset.model
    cfg.preset = f"{cfg.data.name}/{model}"
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from genrec.train import train

    if args.resume:
        cfg = None
    else:
        if args.target is None:
            raise ConfigError("genrec train needs a DATASET or CONFIG.yaml (or --resume RUN_DIR)")
        cfg = _load_config(args.target, args.model)
        overrides = {
            ("data", "data_dir"): args.data_dir, ("data", "max_users"): args.max_users,
            ("train", "device"): args.device, ("train", "seed"): args.seed,
            ("train", "batch_size"): args.batch_size, ("train", "num_threads"): args.threads,
            ("eval", "protocol"): args.protocol, ("train", "eval_every"): args.eval_every,
        }
        for (section, name), value in overrides.items():
            if value is not None:
                setattr(getattr(cfg, section), name, value)
        if args.no_progress:
            cfg.train.progress = False
    metrics = train(cfg, out=args.out, resume=args.resume, epochs=args.epochs)
    _print_metrics(metrics)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from genrec.train import evaluate_run

    metrics = evaluate_run(args.run_dir, checkpoint=args.checkpoint, split=args.split,
                           data_dir=args.data_dir, device=args.device)
    _print_metrics(metrics)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from genrec.data import dataset_stats, download_dataset, format_stats, load_dataset

    if args.data_command == "download":
        path = download_dataset(args.name, args.data_dir)
        print(f"{args.name} is ready in {path}")
        return 0
    cfg = _load_config(args.name, None)
    if args.data_dir is not None:
        cfg.data.data_dir = args.data_dir
    if args.max_users is not None:
        cfg.data.max_users = args.max_users
    data = load_dataset(cfg.data, progress=True)
    print(format_stats(dataset_stats(data)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(preset(args.dataset, args.model).to_dict(), sort_keys=False), end="")
    return 0


def _print_metrics(metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if k != "best"}
    width = max(len(k) for k in shown)
    for k, v in shown.items():
        value = f"{v:.4f}" if isinstance(v, float) and abs(v) < 1e4 else v
        if k == "train_flops":
            value = f"{v:.3e}"
        print(f"{k:<{width}}  {value}")
    if metrics.get("best"):
        print("best " + json.dumps({k: metrics["best"][k] for k in ("epoch", "hr@10", "ndcg@10")
                                    if k in metrics["best"]}))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description="Generative Recommenders (HSTU): "
                                "train, evaluate and inspect data sets.")
    p.add_argument("-v", "--verbose", action="store_true", help="log each evaluation")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (a data set's paper preset or a YAML config)")
    t.add_argument("target", nargs="?", help=f"data set ({', '.join(DATASETS)}) or CONFIG.yaml")
    t.add_argument("--model", choices=MODELS, help="model preset (default hstu)")
    t.add_argument("--data-dir", help="folder holding the data set folders")
    t.add_argument("--out", help="run directory (default runs/DATASET-MODEL-TIME)")
    t.add_argument("--epochs", type=int, help="number of epochs (paper: 101)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--protocol", choices=PROTOCOLS, help="evaluation protocol (default paper)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    t.add_argument("--max-users", type=int, help="keep only the first N users (quick runs)")
    t.add_argument("--seed", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--eval-every", type=int, help="epochs between evaluations")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best")
    e.add_argument("--split", choices=("test", "valid"), default="test")
    e.add_argument("--data-dir", help="override the run's data folder")
    e.add_argument("--device")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="download data sets and print their statistics")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="users, items, interactions, sequence-length quantiles")
    ds.add_argument("name", help=f"data set ({', '.join(DATASETS)}) or CONFIG.yaml")
    ds.add_argument("--data-dir")
    ds.add_argument("--max-users", type=int)
    dd = dsub.add_parser("download", help="fetch an official archive (checksum verified)")
    dd.add_argument("name", choices=DATASETS)
    dd.add_argument("--data-dir", default="data")
    d.set_defaults(func=cmd_data)

    c = sub.add_parser("config", help="print a preset config as YAML")
    c.add_argument("dataset", choices=DATASETS)
    c.add_argument("--model", choices=MODELS, default="hstu")
    c.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("genrec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:  # DataError, ConfigError, I/O
        print(f"genrec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
