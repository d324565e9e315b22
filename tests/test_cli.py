"""The command line as a user runs it: a YAML config for their own data, a killed and
resumed run, re-evaluation, and clear errors without tracebacks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from genrec.cli import main
from genrec.data.synthetic import make_synthetic


def _genrec(*args, cwd, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "genrec", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    """A user's own log as CSV plus a YAML config that trains the paper's HSTU on it."""
    folder = tmp_path_factory.mktemp("own")
    data = make_synthetic(num_users=200, num_items=120, min_len=15, max_len=30, seed=5)
    users = np.repeat(data.user_raw_ids, data.lengths)
    lines = ["uid,sku,ts"] + [f"{u},item{i},{t}" for u, i, t in
                               zip(users, data.item_ids, data.timestamps)]
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    config = {
        "base": "ml-1m/hstu",
        "data": {"name": "custom", "data_dir": str(folder), "max_seq_len": 30,
                 "table": {"path": "events.csv", "user_col": "uid", "item_col": "sku",
                           "timestamp_col": "ts"}},
        "train": {"epochs": 5, "eval_every": 1, "num_threads": 1, "progress": False},
    }
    (folder / "my.yaml").write_text(yaml.safe_dump(config))
    return folder


def _final(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_killed_run_resumes_to_the_uninterrupted_result(own_data, tmp_path):
    whole = _genrec("train", own_data / "my.yaml", "--out", tmp_path / "whole", cwd=tmp_path)
    assert whole.wait(timeout=300) == 0, whole.stdout.read()

    run = tmp_path / "killed"
    proc = _genrec("train", own_data / "my.yaml", "--out", run, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()

    resumed = _genrec("train", "--resume", run, cwd=tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a, b = _final(tmp_path / "whole"), _final(run)
    for key in ("hr@10", "ndcg@10", "hr@200", "mrr", "train_flops", "epochs"):
        assert b[key] == pytest.approx(a[key], rel=1e-9), key

    evaluated = _genrec("eval", run, "--checkpoint", "last", cwd=tmp_path)
    out = evaluated.communicate(timeout=300)[0]
    assert evaluated.returncode == 0, out
    assert f"{a['hr@10']:.4f}" in out


def test_bad_config_field_is_named_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: ml-1m/hstu\ntrain:\n  epoch: 3\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "epoch" in err and "train" in err and "Traceback" not in err


def test_missing_data_says_where_to_put_it(tmp_path, capsys):
    assert main(["data", "stats", "ml-1m", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ratings.dat" in err and str(tmp_path) in err


def test_config_command_prints_a_loadable_preset(tmp_path, capsys):
    assert main(["config", "ml-1m", "--model", "hstu-large"]) == 0
    (tmp_path / "p.yaml").write_text(capsys.readouterr().out)
    from genrec.config import RunConfig, preset

    assert RunConfig.from_yaml(tmp_path / "p.yaml") == preset("ml-1m", "hstu-large")
