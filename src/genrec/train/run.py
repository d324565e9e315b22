"""Public entry points over a run directory: ``train`` a config, ``evaluate_run`` a checkpoint.

These are the functions the CLI calls; a notebook calls them with the same power.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from genrec.config import RunConfig
from genrec.data import load_dataset
from genrec.data.sequences import SequenceData
from genrec.train.checkpoint import load_checkpoint
from genrec.train.trainer import Trainer


def default_run_dir(cfg: RunConfig) -> Path:
    model = cfg.preset.split("/")[-1] if cfg.preset else cfg.model.kind
    return Path("runs") / f"{cfg.data.name}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: RunConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    epochs: int | None = None,
    data: SequenceData | None = None,
) -> dict[str, Any]:
    """Train `cfg` into run directory `out`, or continue the run in `resume`.

    Args:
        cfg: the run's config; ignored when resuming (the run's own config.yaml is used).
        out: run directory (default ``runs/DATASET-MODEL-TIME``).
        resume: a run directory with ``checkpoints/last.pt``: training continues from it.
        epochs: overrides ``train.epochs`` (also when resuming, to extend a run).
        data: an already loaded data set (default: loaded from ``cfg.data``).
    Returns: the final metrics, as written to ``RUN_DIR/metrics.json``.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    elif cfg is None:
        raise ValueError("train() needs a config or a run directory to resume")
    if epochs is not None:
        cfg.train.epochs = epochs
    cfg = cfg.resolved()
    run_dir = Path(resume or out or default_run_dir(cfg))
    data = data if data is not None else load_dataset(cfg.data, progress=cfg.train.progress)
    trainer = Trainer(cfg, data, run_dir)
    if resume is not None and (run_dir / "checkpoints" / "last.pt").is_file():
        trainer.resume()
    return trainer.fit()


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    split: str = "test",
    data_dir: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Re-evaluate a run's checkpoint (``best`` or ``last``) on `split` with its own config."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    if data_dir is not None:
        cfg.data.data_dir = data_dir
    if device is not None:
        cfg.train.device = device
    cfg.train.compile = False  # one evaluation pass does not repay compilation time
    cfg = cfg.resolved()
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        path = run_dir / "checkpoints" / "last.pt"
    data = load_dataset(cfg.data, progress=False)
    trainer = Trainer(cfg, data, run_dir)
    state = load_checkpoint(path, trainer.device)
    trainer.model.load_state_dict(state["model"])
    metrics = trainer.evaluate(split)
    return {**metrics, "epoch": int(state["epoch"]), "checkpoint": path.name, "split": split,
            "protocol": cfg.eval.protocol, "dataset": cfg.data.name}
