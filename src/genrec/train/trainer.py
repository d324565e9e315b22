"""The training loop: one plain, visible loop over epochs and jagged batches.

``Trainer`` owns the model, optimizer, data order, evaluation schedule, checkpoints and logs
of one run directory. Parallelism wraps ``trainer.objective`` from outside; nothing here
knows about processes.

Run directory: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``metrics.jsonl`` (one line
per evaluation), ``metrics.json`` (final), ``tb/`` (TensorBoard events, when installed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from genrec.config import RunConfig
from genrec.data.batching import TrainBatches
from genrec.data.sequences import SequenceData
from genrec.eval import evaluate
from genrec.models import build_model
from genrec.models.base import SequentialRetrievalModel
from genrec.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from genrec.train.flops import FlopCounter
from genrec.train.host import retain_freed_memory
from genrec.train.objective import RetrievalObjective
from genrec.train.stochastic_length import StochasticLength

log = logging.getLogger("genrec.train")

SELECTION_METRIC = "ndcg@10"
FINAL_KEYS = ("hr@1", "hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here")
    return device


class Trainer:
    """Trains one model on one data set into one run directory."""

    def __init__(self, cfg: RunConfig, data: SequenceData, run_dir: str | Path,
                 model: SequentialRetrievalModel | None = None) -> None:
        self.cfg = cfg = cfg.resolved()
        self.data = data
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.train.device)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if self.device.type == "cpu" and cfg.train.retain_freed_memory:
            retain_freed_memory()
        torch.manual_seed(cfg.train.seed)
        self.model = model if model is not None else build_model(cfg.model, data.num_items)
        self.model.to(self.device)
        self.objective = RetrievalObjective(self.model, cfg.train)
        compile_model = cfg.train.compile
        if compile_model is None:
            compile_model = self.device.type == "cpu"
        if compile_model:
            self.objective.compile()
        self._compile_verified = not compile_model
        t = cfg.train
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=t.betas,
                                           weight_decay=t.weight_decay)
        self.batches = TrainBatches(data, cfg.eval.protocol, cfg.data.max_seq_len, t.batch_size)
        self.subsample = (StochasticLength(t.stochastic_length_alpha, cfg.data.max_seq_len)
                          if t.stochastic_length_alpha else None)
        self.flops = FlopCounter(cfg.model, t, data.num_items)
        self.epoch = 0  # epochs finished
        self.train_flops = 0.0
        self.wall_s = 0.0
        self.best: dict[str, Any] | None = None  # best evaluation so far (selection split)
        self._tb = None

    # -- one step, one epoch ------------------------------------------------------------------

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self) -> dict[str, float]:
        """Run one epoch over all training users; returns mean loss, tokens and seconds."""
        self.model.train()
        rng = np.random.default_rng([self.cfg.train.seed, self.epoch])
        total_loss, tokens, steps, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(self.batches.epoch(rng, self.subsample), total=len(self.batches),
                   desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not self.cfg.train.progress, dynamic_ncols=True)
        for batch in bar:
            lengths = batch.lengths.numpy()
            batch = batch.to(self.device, non_blocking=True)
            loss = self._forward_backward(batch)
            if self.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} in epoch "
                                         f"{self.epoch + 1}; lower train.lr or check the data")
            total_loss += loss_value
            tokens += int(lengths.sum())
            steps += 1
            self.train_flops += self.flops.train_step(lengths)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}")
        bar.close()
        seconds = time.perf_counter() - start
        self.epoch += 1
        return {"loss": total_loss / max(steps, 1), "tokens": tokens, "seconds": seconds,
                "tokens_per_s": tokens / max(seconds, 1e-9)}

    def _forward_backward(self, batch) -> torch.Tensor:
        """Loss and gradients of one batch; the first compiled step may fall back to eager."""
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.objective(batch)
            loss.backward()
        except Exception as e:  # compilation errors surface at the first forward / backward
            if self._compile_verified:
                raise
            log.warning("torch.compile failed (%s: %s); training eagerly instead",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self.objective.uncompile()
            self._compile_verified = True
            return self._forward_backward(batch)
        self._compile_verified = True
        return loss

    def evaluate(self, split: str) -> dict[str, float]:
        c = self.cfg
        # the compiled encoder wraps the same module (eval(), item_embeddings() delegate)
        return evaluate(self.objective.encoder, self.data, protocol=c.eval.protocol, split=split,
                        max_seq_len=c.data.max_seq_len, ks=c.eval.ks,
                        batch_size=c.eval.batch_size, device=self.device,
                        exclude_history=c.eval.exclude_history)

    # -- the whole run ------------------------------------------------------------------------

    @property
    def selection_split(self) -> str:
        return "valid" if self.cfg.eval.protocol == "strict" else "test"

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs`` (continuing from a loaded checkpoint), evaluate, report."""
        c = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        c.to_yaml(self.run_dir / "config.yaml")
        while self.epoch < c.train.epochs:
            start = time.perf_counter()
            stats = self.train_epoch()
            self._scalars("train", stats)
            evaluated = self.epoch % c.train.eval_every == 0 or self.epoch == c.train.epochs
            record = None
            if evaluated:
                metrics = self.evaluate(self.selection_split)
                record = {"epoch": self.epoch, "split": self.selection_split, **metrics,
                          "loss": stats["loss"], "train_flops": self.train_flops}
                self._scalars(self.selection_split, metrics)
                if self.best is None or metrics[SELECTION_METRIC] > self.best[SELECTION_METRIC]:
                    self.best = dict(record)
                    self.save("best.pt")
            self.wall_s += time.perf_counter() - start
            if record is not None:
                record["wall_s"] = round(self.wall_s, 3)
                self._append_jsonl(record)
                log.info("epoch %d: loss %.4f  %s %s", self.epoch, stats["loss"],
                         self.selection_split, _short(record))
            if self.epoch % c.train.checkpoint_every == 0 or self.epoch == c.train.epochs:
                self.save("last.pt")
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Final test evaluation and ``metrics.json`` (strict: of the best validation epoch)."""
        c = self.cfg
        start = time.perf_counter()
        if c.eval.protocol == "strict" and (self.run_dir / "checkpoints" / "best.pt").exists():
            state = load_checkpoint(self.run_dir / "checkpoints" / "best.pt", self.device)
            self.model.load_state_dict(state["model"])
            test_epoch = state["epoch"]
        else:
            test_epoch = self.epoch
        metrics = self.evaluate("test")
        self.wall_s += time.perf_counter() - start
        final = {k: metrics[k] for k in FINAL_KEYS if k in metrics}
        final.update(
            num_users=metrics.get("num_users"), train_flops=self.train_flops, epochs=self.epoch,
            test_epoch=test_epoch, wall_s=round(self.wall_s, 3), protocol=c.eval.protocol,
            dataset=self.data.name, model=c.preset.split("/")[-1] if c.preset else c.model.kind,
            best=self.best,
        )
        self._append_jsonl({"epoch": test_epoch, "split": "test", **metrics,
                            "train_flops": self.train_flops, "wall_s": final["wall_s"]})
        (self.run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        if self._tb:
            self._tb.close()
        return final

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "train_flops": self.train_flops, "wall_s": self.wall_s,
                "best": self.best, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.train_flops = float(state["train_flops"])
        self.wall_s = float(state["wall_s"])
        self.best = state["best"]
        set_rng_state(state["rng"])

    def save(self, name: str) -> None:
        save_checkpoint(self.run_dir / "checkpoints" / name, self.state_dict())

    def resume(self) -> None:
        """Continue from ``checkpoints/last.pt`` of the run directory."""
        self.load_state_dict(load_checkpoint(self.run_dir / "checkpoints" / "last.pt",
                                             self.device))

    # -- logs ----------------------------------------------------------------------------------

    def _append_jsonl(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _scalars(self, prefix: str, values: dict[str, Any]) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        if self._tb is False:
            return
        for k, v in values.items():
            if isinstance(v, int | float):
                self._tb.add_scalar(f"{prefix}/{k}", v, self.epoch)
        self._tb.add_scalar("train/flops", self.train_flops, self.epoch)
        self._tb.flush()


def _short(m: dict[str, Any]) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in ("hr@10", "ndcg@10", "hr@50", "mrr") if k in m)
