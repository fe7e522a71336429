"""Training that never loses work: SIGINT / SIGTERM mid-epoch, resume at the next batch, kill -9,
a checkpoint write that fails. Interruptions drive the real main.py in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main as entry
from conftest import REPO_ROOT, TINY_RUN, read_metrics, same_weights
from utils.checkpoint import CheckpointWriteError, load_checkpoint

pytestmark = pytest.mark.e2e  # every test runs main.py (in-process or a subprocess it signals)

# 3 epochs of 12 batches of 4; --progress lines prints a line every tenth of an epoch
RUN = [*TINY_RUN, "--data_loader_size", "4", "--nEpochs", "3", "--dropLR", "2", "--dropMag", "0.5",
       "--maxTranslate", "0.05", "--progress", "lines"]  # fmt: skip


def start(root: Path, name: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "main.py", *RUN, "--expDir", str(root), "--expID", name, *extra]
    # one torch thread, as the in-process runs of this suite use: the same arithmetic, bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(process: subprocess.Popen, marker: str) -> None:
    """Read the child's progress lines until ``marker`` appears (training is then under way)."""
    for line in process.stderr:
        if line.startswith(marker):
            return
    raise AssertionError(f"{marker!r} never appeared; exit {process.wait()}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, Path]:
    """The reference runs, with 0 and 2 DataLoader workers."""
    root = tmp_path_factory.mktemp("straight")
    runs = {}
    for workers in ("0", "2"):
        assert entry.main([*RUN, "--progress", "none", "--nThreads", workers, "--expDir", str(root),
                           "--expID", f"w{workers}"]) == 0  # fmt: skip
        runs[workers] = root / f"w{workers}"
    return runs


@pytest.mark.parametrize(
    ("sig", "marker", "workers"),
    [
        (signal.SIGINT, "train 1 4/12", "0"),
        (signal.SIGTERM, "train 2 8/12", "0"),
        (signal.SIGINT, "train 3 2/12", "2"),
        (signal.SIGTERM, "train 2 10/12", "2"),
    ],
)
def test_signal_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: dict[str, Path], sig: int, marker: str, workers: str
) -> None:
    process = start(tmp_path, "cut", "--nThreads", workers)
    wait_for(process, marker)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert f"resume with: python main.py --loadModel {tmp_path / 'cut' / 'last.pth'}" in out.splitlines()[-1]
    state = load_checkpoint(tmp_path / "cut" / "last.pth")
    if "mid_epoch" in state:  # stopped inside an epoch, after an optimizer step
        assert 0 < state["mid_epoch"]["step"] < 12 and state["mid_epoch"]["epoch"] == state["epoch"] + 1
    assert entry.main(["--loadModel", str(tmp_path / "cut" / "last.pth"), "--progress", "none"]) == 0
    same_weights(tmp_path / "cut" / "last.pth", uninterrupted[workers] / "last.pth")
    assert read_metrics(tmp_path / "cut") == read_metrics(uninterrupted[workers])


def test_an_interrupt_prints_the_notice_then_one_line(tmp_path: Path) -> None:
    """README, Interrupting and resuming: after the notice at the signal, nothing more on stderr
    (no blank line, no progress line of the step being finished), and one line on stdout."""
    process = start(tmp_path, "cut", "--nThreads", "0", "--nEpochs", "1")
    wait_for(process, "train 1 4/12")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    notice = "SIGINT: stopping after this training step"
    lines = err.splitlines()
    assert notice in lines and lines[lines.index(notice) :] == [notice], err  # progress lines only before it
    printed = out.splitlines()
    # the model, the threads chosen, the run directory
    assert len(printed) == 4 and printed[1] == "note: CPU threads: 1 (OMP_NUM_THREADS=1)", out
    assert printed[2].startswith("run directory: "), out
    assert printed[-1].startswith("interrupted at epoch 1, batch ") and "; resume with: " in printed[-1]


def test_two_runs_with_one_seed_are_identical(uninterrupted: dict[str, Path]) -> None:
    assert read_metrics(uninterrupted["0"]) == read_metrics(uninterrupted["2"])  # workers change nothing
    same_weights(uninterrupted["0"] / "last.pth", uninterrupted["2"] / "last.pth")


def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """Kills at spread-out moments (during training steps, validation and checkpoint writes);
    once a first checkpoint exists, last.pth is always there and loads, and a resume cleans up
    the temporary file of a write that was cut off."""
    # 6 moments over the 3 epochs (about 2 s of training); each costs a process start (~8 s)
    delays = [0.3 * k for k in range(6)]
    killed_with_checkpoint = []
    for number, delay in enumerate(delays):
        name = f"k{number}"
        process = start(tmp_path, name, "--nThreads", "0", "--saveEveryMinutes", "0.0005")
        wait_for(process, "train 1 2/12")
        time.sleep(delay)
        alive = process.poll() is None
        process.kill()
        process.wait()
        last = tmp_path / name / "last.pth"
        if last.exists():
            state = load_checkpoint(last)  # never truncated
            assert state["epoch"] >= 0
            if alive:
                killed_with_checkpoint.append(tmp_path / name)
    assert len(killed_with_checkpoint) >= 3  # most kills hit a live run that had saved already
    run = killed_with_checkpoint[-1]
    (run / ".last.pth.cut0ff.tmp").write_bytes(b"half a checkpoint")
    assert entry.main(["--loadModel", str(run / "last.pth"), "--progress", "none"]) == 0
    assert not list(run.glob(".*.tmp"))
    assert load_checkpoint(run / "last.pth")["epoch"] == 3


@pytest.mark.parametrize(
    ("errno", "cause"),
    [(28, "No space left on device"), (13, "Permission denied")],
    ids=["ENOSPC", "read-only"],
)
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous(
    tmp_path: Path, monkeypatch, capsys, errno: int, cause: str
) -> None:
    """A patched write (the suite may run as root, for whom permissions do not stop a write)."""
    real_save = torch.save
    calls = {"n": 0}

    def disk_fills(obj, stream, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1's best.pth and last.pth are written, then writing fails
            raise OSError(errno, cause)
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills)
    monkeypatch.setattr(sys, "argv", ["main.py", *RUN, "--progress", "none", "--nThreads", "0",
                                      "--expDir", str(tmp_path), "--expID", "full"])  # fmt: skip
    assert entry.cli() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write checkpoint" in err[0] and cause in err[0]
    assert "the previous checkpoint there is intact" in err[0]
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(tmp_path / "full" / "last.pth")["epoch"] == 1
    assert not list((tmp_path / "full").glob(".*.tmp"))
    with pytest.raises(CheckpointWriteError):
        raise CheckpointWriteError("importable for callers")
