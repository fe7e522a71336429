import os
import pickle

import pytest
import torch

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    path = save_checkpoint({"model": {"w": torch.arange(3)}, "epoch": 2}, tmp_path / "a" / "last.pth")
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.arange(3))
    assert os.listdir(tmp_path / "a") == ["last.pth"]  # no temporary left behind


def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "last.pth")

    def crash(state, stream, *args, **kwargs):
        stream.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = save_checkpoint({"model": {"w": torch.zeros(100)}}, tmp_path / "x.pth")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=f"cannot load checkpoint {path}"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as stream:
        pickle.dump({"model": Payload()}, stream)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pth")
