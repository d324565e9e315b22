"""End to end through the public API: training learns, and a killed run resumes exactly."""

import json

import pytest
import torch

from genrec.config import preset
from genrec.data.synthetic import make_synthetic
from genrec.eval import evaluate_popularity
from genrec.train import Trainer, evaluate_run, train


def _config(epochs: int, **train_overrides):
    cfg = preset("ml-1m", "hstu")  # the paper's HSTU shape: d=50, 2 layers, 1 head
    cfg.data.max_seq_len = 50
    cfg.train.epochs = epochs
    cfg.train.eval_every = 1
    cfg.train.progress = False
    cfg.train.num_threads = 1
    cfg.train.compile = False  # compiled training is held to eager in tests/train/test_compile.py
    cfg.eval.ks = (10, 50, 200)
    for k, v in train_overrides.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(num_users=300, num_items=150, min_len=15, max_len=40, seed=3)


def test_training_beats_popularity_by_a_clear_margin(synthetic, tmp_path):
    popularity = evaluate_popularity(synthetic, "paper", "test", ks=(10,))
    metrics = train(_config(epochs=6), out=tmp_path / "run", data=synthetic)
    assert popularity["hr@10"] < 0.15
    assert metrics["hr@10"] > popularity["hr@10"] + 0.3, (metrics, popularity)
    # the run directory contract
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr",
                "train_flops", "epochs", "wall_s", "protocol", "dataset", "model"):
        assert key in saved
    assert saved["epochs"] == 6 and saved["train_flops"] > 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 + 1  # one per epoch, then the final test
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_strict_protocol_selects_on_validation_and_tests_once(synthetic, tmp_path):
    cfg = _config(epochs=2)
    cfg.eval.protocol = "strict"
    metrics = train(cfg, out=tmp_path / "run", data=synthetic)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["valid", "valid", "test"]
    assert metrics["protocol"] == "strict" and metrics["test_epoch"] == metrics["best"]["epoch"]


def test_resumed_run_equals_uninterrupted_run(synthetic, tmp_path):
    whole = train(_config(epochs=4), out=tmp_path / "whole", data=synthetic)
    train(_config(epochs=2), out=tmp_path / "split", data=synthetic)
    resumed = train(resume=tmp_path / "split", epochs=4, data=synthetic)
    assert resumed["epochs"] == 4
    for key in ("hr@10", "ndcg@10", "mrr", "train_flops"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    a = torch.load(tmp_path / "whole/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_deterministic_for_a_seed(synthetic, tmp_path):
    losses = [Trainer(_config(epochs=1), synthetic, tmp_path / name).train_epoch()["loss"]
              for name in ("a", "b")]
    assert losses[0] == losses[1]


def test_evaluate_run_reproduces_the_final_metrics(synthetic, tmp_path, monkeypatch):
    metrics = train(_config(epochs=1), out=tmp_path / "run", data=synthetic)
    monkeypatch.setattr("genrec.train.run.load_dataset", lambda cfg, progress: synthetic)
    again = evaluate_run(tmp_path / "run", checkpoint="last")
    assert again["hr@10"] == pytest.approx(metrics["hr@10"])
    assert again["ndcg@10"] == pytest.approx(metrics["ndcg@10"])
