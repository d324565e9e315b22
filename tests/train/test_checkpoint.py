import pytest
import torch

from genrec.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"w": torch.arange(3.0), "epoch": 4, "best": {"hr@10": 0.5}})
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and torch.equal(state["w"], torch.arange(3.0))


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_garbage_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="last.pt"):
        load_checkpoint(path)


def test_rng_state_restores_the_random_stream():
    state = rng_state()
    a = torch.rand(5)
    set_rng_state(state)
    assert torch.equal(torch.rand(5), a)
