"""torch.compile is a fast path: it must compute what eager PyTorch computes."""

import logging

import numpy as np
import torch

from genrec.config import preset
from genrec.data.batching import TrainBatches
from genrec.data.synthetic import make_synthetic
from genrec.models import build_model
from genrec.ops.compile import compile_dynamic
from genrec.train import Trainer
from genrec.train.objective import RetrievalObjective


def _setup(kind: str):
    cfg = preset("ml-1m", kind)
    cfg.model.dropout = cfg.model.input_dropout = 0.0  # compiled dropout draws other masks
    cfg.data.max_seq_len = 30
    cfg = cfg.resolved()
    data = make_synthetic(num_users=40, num_items=60, min_len=5, max_len=35, seed=1)
    batch = next(TrainBatches(data, "paper", 30, 40).epoch(np.random.default_rng(0)))
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_items)
    return cfg, model, batch


def _loss_and_grads(objective, model, batch):
    torch.manual_seed(7)  # the same negatives for both
    model.zero_grad()
    loss = objective(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_compiled_training_step_equals_eager_for_hstu_and_sasrec():
    for kind in ("hstu", "sasrec"):
        cfg, model, batch = _setup(kind)
        objective = RetrievalObjective(model, cfg.train)
        eager_loss, eager_grads = _loss_and_grads(objective, model, batch)
        objective.compile()
        compiled_loss, compiled_grads = _loss_and_grads(objective, model, batch)
        assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5), kind
        for a, b in zip(compiled_grads, eager_grads):
            assert (a - b).norm() <= 1e-4 * b.norm() + 1e-8, kind


def test_hstu_compiles_into_one_graph():
    """The attention op is opaque to Dynamo: no graph break, so no layer runs uncompiled."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg, model, batch = _setup("hstu")
    compile_dynamic(model)(batch).sum().backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


def test_failed_compilation_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    cfg = preset("ml-1m", "hstu")
    cfg.data.max_seq_len = 20
    cfg.train.compile = True
    cfg.train.progress = False
    data = make_synthetic(num_users=30, num_items=40, min_len=5, max_len=20)

    def broken_compile(self):
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        self._compiled = {"encode": fail}

    monkeypatch.setattr(RetrievalObjective, "compile", broken_compile)
    trainer = Trainer(cfg, data, tmp_path)
    with caplog.at_level(logging.WARNING, logger="genrec.train"):
        stats = trainer.train_epoch()
    assert stats["loss"] > 0 and not trainer.objective.compiled
    assert "no C++ compiler" in caplog.text
