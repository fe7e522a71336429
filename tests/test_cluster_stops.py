"""The ways a cluster stops a run, each run as a cluster user meets it (issue 30): SIGTERM to the
whole process group (DataLoader workers included), torchrun's elastic restart after kill -9 of a
worker, a kill during the first checkpoint write, SLURM's srun tasks, half-configured launches,
a disk that fills up. ``--resume auto`` is what a restarted or requeued job runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main as entry
from conftest import REPO_ROOT, TINY_RUN, TORCHRUN, child_env, free_port, read_metrics, same_weights, torchrun
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e  # every test runs main.py, in-process or as processes it stops

# 2 epochs of 12 batches of 4; --progress lines prints a line every tenth of an epoch
RUN = [*TINY_RUN, "--data_loader_size", "4", "--nEpochs", "2", "--maxTranslate", "0.05"]


def epoch_lines(run_dir: Path) -> list[str]:
    """log.txt's epoch lines without their seconds (which differ between runs)."""
    lines = (run_dir / "log.txt").read_text().splitlines()
    return [re.sub(r" \| \d+s$", "", line) for line in lines if line.startswith("epoch ")]


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``command`` in its own session (so a signal can reach its whole process group), its
    stdout and stderr together, line by line."""
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env or child_env(), start_new_session=True,
    )  # fmt: skip


def read_until(process: subprocess.Popen, marker: str, seen: list[str]) -> str:
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"{marker!r} never appeared: {''.join(seen)[-3000:]}")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted one-process run with 2 DataLoader workers."""
    root = tmp_path_factory.mktemp("straight")
    assert entry.main([*RUN, "--nThreads", "2", "--expDir", str(root), "--expID", "w2"]) == 0
    return root / "w2"


# --- SIGTERM to the whole process group -------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_checkpoints_at_the_step_and_resumes_exactly(
    tmp_path: Path, straight: Path, sig: int
) -> None:
    """As `timeout`, a scheduler or scancel send it: to the main process and its 2 DataLoader
    workers at once. The workers used to die first, and the run with them (exit 2, no checkpoint)."""
    command = [sys.executable, "main.py", *RUN, "--nThreads", "2", "--progress", "lines",
               "--expDir", str(tmp_path), "--expID", "cut", "--resume", "auto"]  # fmt: skip
    process, seen = start(command), []
    read_until(process, "train 2 4/12", seen)
    os.killpg(process.pid, sig)
    output = "".join(seen) + process.communicate(timeout=120)[0]
    assert process.returncode == 128 + sig, output[-3000:]
    assert "Traceback" not in output and "DataLoader worker" not in output
    last = tmp_path / "cut" / "last.pth"
    assert "interrupted at epoch 2, batch " in output and f"--loadModel {last}" in output
    assert load_checkpoint(last)["mid_epoch"]["epoch"] == 2
    resumed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_weights(last, straight / "last.pth")
    assert read_metrics(tmp_path / "cut") == read_metrics(straight)
    assert epoch_lines(tmp_path / "cut") == epoch_lines(straight)


# --- a kill before the first checkpoint -------------------------------------------------------------


def test_kill_9_before_the_first_checkpoint_then_the_same_command_starts_the_run_again(
    tmp_path: Path,
) -> None:
    """The directory of a run killed before it wrote any checkpoint (during the first write, say)
    used to be refused forever; --resume auto starts it again there, without the stale files."""
    command = [sys.executable, "main.py", *RUN, "--nEpochs", "1", "--progress", "lines", "--nThreads", "0",
               "--expDir", str(tmp_path), "--expID", "x", "--resume", "auto"]  # fmt: skip
    process, seen = start(command), []
    read_until(process, "train 1 2/12", seen)
    process.kill()
    process.wait()
    run_dir = tmp_path / "x"
    assert not (run_dir / "last.pth").exists() and (run_dir / "config.defconf").is_file()
    (run_dir / ".last.pth.cut0ff.tmp").write_bytes(b"half a checkpoint")  # as a kill in the write leaves it
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "split": "train", "loss": 1.0}\n')
    refused = subprocess.run(
        command[:-2], cwd=REPO_ROOT, capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert refused.returncode == 2 and "--resume auto starts it again there" in refused.stderr
    again = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"note: run directory {run_dir} held no checkpoint (stopped before its first one)" in again.stdout
    assert not list(run_dir.glob(".*.tmp"))
    assert [(r["epoch"], r["split"]) for r in read_metrics(run_dir)] == [(1, "train"), (1, "val")]
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1


def test_resume_auto_refuses_in_one_line_what_it_cannot_continue(tmp_path: Path, capsys) -> None:
    from conftest import parse_error

    assert "needs --expID" in parse_error(capsys, [*RUN, "--resume", "auto"])
    assert "expects auto" in parse_error(capsys, [*RUN, "--resume", "yes", "--expID", "a"])
    assert "not both" in parse_error(
        capsys, [*RUN, "--resume", "auto", "--expID", "a", "--loadModel", "x.pth"]
    )
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    line = parse_error(capsys, [*RUN, "--resume", "auto", "--expDir", str(tmp_path), "--expID", "theirs"])
    assert (
        "holds what a run writes only later or never (notes.txt)" in line and "choose another --expID" in line
    )
    assert (foreign / "notes.txt").read_text() == "someone else's"  # nothing written into it


# --- torchrun's elastic restarts, a dead peer, SLURM's tasks ------------------------------------------


def rank_pid(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of the worker with RANK=rank among ``parent``'s children (torchrun's workers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under {parent}")


@pytest.fixture(scope="module")
def straight_two(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run (torchrun, gloo)."""
    root = tmp_path_factory.mktemp("straight-two")
    result = torchrun(2, *RUN, "--expDir", str(root), "--expID", "two")
    assert result.returncode == 0, result.stderr[-8000:]
    return root / "two"


@pytest.mark.slow
def test_an_elastic_restart_after_kill_9_of_a_worker_continues_the_run_bit_exactly(
    tmp_path: Path, straight_two: Path
) -> None:
    """torchrun --max-restarts 1 runs the same command again after a worker dies; --resume auto
    makes that a resume of the run's own last.pth. Rank 0 of the failed attempt names the dead
    rank and the intact checkpoint in one line."""
    command = [*TORCHRUN, "--nproc_per_node", "2", "--max-restarts", "1", "main.py", *RUN, "--progress", "lines",
               "--expDir", str(tmp_path), "--expID", "elastic", "--resume", "auto"]  # fmt: skip
    process, seen = start(command), []
    read_until(process, "train 2 3/6", seen)
    os.kill(rank_pid(process.pid, 1), signal.SIGKILL)
    output = "".join(seen) + process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-8000:]
    last = tmp_path / "elastic" / "last.pth"
    lost = [line for line in output.splitlines() if "main.py: error:" in line]
    assert len(lost) == 1 and "rank 1 of 2 stopped (died or was killed)" in lost[0], output[-8000:]
    assert f"the newest checkpoint is intact: {last} (after epoch 1)" in lost[0]
    assert [p.name for p in tmp_path.iterdir()] == ["elastic"]  # one run directory
    same_weights(last, straight_two / "last.pth")
    assert read_metrics(tmp_path / "elastic") == read_metrics(straight_two)
    assert epoch_lines(tmp_path / "elastic") == epoch_lines(straight_two)


def slurm_task_env(rank: int, port: int) -> dict[str, str]:
    """What srun -n 2 sets for task ``rank`` on one node (and no RANK)."""
    return {
        **child_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
        "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2", "MASTER_PORT": str(port),
    }  # fmt: skip


@pytest.mark.slow
def test_two_srun_tasks_train_as_one_two_process_run(tmp_path: Path, straight_two: Path) -> None:
    """SLURM's variables alone (as srun -n 2 sets them) form the same 2-process run torchrun
    does: one run directory, the same weights to the last bit. They used to be two duplicate runs."""
    port = free_port()
    command = [sys.executable, "main.py", *RUN, "--expDir", str(tmp_path), "--expID", "slurm"]
    tasks = [start(command, slurm_task_env(rank, port)) for rank in (0, 1)]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-4000:] + outputs[1][-4000:]
    assert [p.name for p in tmp_path.iterdir()] == ["slurm"]
    assert "2 processes: effective batch 8" in (tmp_path / "slurm" / "log.txt").read_text()
    assert outputs[1].strip() == ""  # rank 1 prints nothing
    same_weights(tmp_path / "slurm" / "last.pth", straight_two / "last.pth")
    assert load_checkpoint(tmp_path / "slurm" / "last.pth")["launch"] == "srun -n 2 python main.py"


def test_slurm_node_lists_and_tasks_per_node_expand_as_scontrol_does() -> None:
    from utils.distributed import expand_hostlist, slurm_launch

    assert expand_hostlist("node[01-03,07],gpu5") == ["node01", "node02", "node03", "node07", "gpu5"]
    assert expand_hostlist("a1,b[9-10]") == ["a1", "b9", "b10"]
    env = {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "6", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "2", "SLURM_STEP_NODELIST": "gpu[3-5]", "SLURM_STEP_TASKS_PER_NODE": "2(x2),2",
           "SLURM_JOB_ID": "123456"}  # fmt: skip
    assert slurm_launch(env) == {"RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                 "MASTER_ADDR": "gpu3", "MASTER_PORT": "23456"}  # fmt: skip
    assert slurm_launch({**env, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}) is None  # one task
    no_step = {k: v for k, v in env.items() if k != "SLURM_STEP_ID"}
    assert slurm_launch(no_step) is None  # a batch script's own shell is no task of a step


# --- launches that cannot form their group ----------------------------------------------------------


def test_a_half_configured_launch_stops_within_dist_timeout_in_one_line(tmp_path: Path) -> None:
    """RANK=0 WORLD_SIZE=2 by hand and one process: a silent hang for PyTorch's 30 minutes before."""
    env = {
        **child_env(),
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    command = [sys.executable, "main.py", *RUN, "--expDir", str(tmp_path), "--distTimeout", "12"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=12 + 60)
    assert time.monotonic() - started < 12 + 60
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(
        "note: rank 0 is waiting for the 2 processes of this run to join at 127.0.0.1:"
    )
    assert (
        lines[1].startswith("main.py: error: distTimeout: rank 0 waited 12 s") and "never formed" in lines[1]
    )
    assert not list(tmp_path.iterdir())  # nothing written

    del env["MASTER_ADDR"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "main.py: error: MASTER_ADDR: not set, while RANK and WORLD_SIZE are set: start the processes with "
        "torchrun (torchrun --nproc_per_node N main.py ...) or srun, which set all of RANK, WORLD_SIZE, "
        "MASTER_ADDR and MASTER_PORT, or set them all by hand"
    ]


# --- a disk that fills up ---------------------------------------------------------------------------


def test_failed_writes_are_one_line_and_every_record_is_written_once_after_the_resumes(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """torch.save turns a full disk's OSError into a RuntimeError of its own ('enforce fail'),
    which used to escape as a two-exception traceback; each failed attempt also appended its
    epoch's records again. Two attempts fail at epoch 1's best.pth (the epoch is validated, its
    records written), then the disk has room again."""
    real_save = torch.save
    failures = {"left": 2}

    def full_disk(obj, stream, *args, **kwargs):
        written = Path(os.readlink(f"/proc/self/fd/{stream.fileno()}")).name  # the temporary file
        if failures["left"] and written.startswith(".best.pth."):
            failures["left"] -= 1
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 64")
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run = [*RUN, "--nThreads", "0", "--expDir", str(tmp_path), "--expID", "full", "--resume", "auto"]
    straight_run = [*RUN, "--nThreads", "0", "--expDir", str(tmp_path), "--expID", "straight"]
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", ["main.py", *run])
        assert entry.cli() == 1
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:")]
        assert len(err) == 1, err
        assert err[0] == (
            f"main.py: error: cannot write checkpoint {tmp_path / 'full' / 'best.pth'}: the file could not be "
            f"written in full (disk full or quota reached?); no earlier checkpoint of that name existed"
        )
        assert not list((tmp_path / "full").glob(".*.tmp"))
    monkeypatch.setattr(sys, "argv", ["main.py", *run])
    assert entry.cli() == 0
    monkeypatch.setattr(torch, "save", real_save)
    assert entry.main(straight_run) == 0
    assert read_metrics(tmp_path / "full") == read_metrics(tmp_path / "straight")
    assert epoch_lines(tmp_path / "full") == epoch_lines(tmp_path / "straight")
    same_weights(tmp_path / "full" / "last.pth", tmp_path / "straight" / "last.pth")


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 400 KiB tmpfs (root only): a real full disk for a run's writes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_is_one_line_and_the_resume_writes_each_record_once(
    small_tmpfs: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "main.py", *RUN, "--nThreads", "0", "--expDir", str(small_tmpfs), "--expID", "r",
               "--resume", "auto"]  # fmt: skip
    failed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=child_env(), timeout=300
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if not line.startswith("note:")]
    assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert errors[0].startswith("main.py: error: cannot write ") and str(small_tmpfs / "r") in errors[0]
    assert "No space left on device" in errors[0] or "disk full" in errors[0]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    resumed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=child_env(), timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [(r["epoch"], r["split"]) for r in read_metrics(small_tmpfs / "r")]
    assert records == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert [line.split(" train")[0] for line in epoch_lines(small_tmpfs / "r")] == ["epoch 1/2", "epoch 2/2"]


def test_a_cpu_resume_on_another_thread_count_says_bit_exactness_needs_the_same(
    tmp_path: Path, capsys
) -> None:
    from utils.checkpoint import save_checkpoint

    run = [*RUN, "--nThreads", "0", "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "t"]
    assert entry.main(run) == 0
    last = tmp_path / "t" / "last.pth"
    state = load_checkpoint(last)
    assert state["cpu_threads"] == torch.get_num_threads() == 1  # the suite runs on one thread
    state["cpu_threads"] = 3
    save_checkpoint(state, last)
    capsys.readouterr()
    assert entry.main(["--loadModel", str(last), "--nEpochs", "2", "--progress", "none"]) == 0
    note = (
        "the checkpoint was written with 3 CPU thread(s) and this run has 1: on the CPU a resume repeats the "
        "uninterrupted run bit for bit only with the same count (OMP_NUM_THREADS=3)"
    )
    assert capsys.readouterr().out.count(note) == 1
    assert note in (tmp_path / "t" / "log.txt").read_text()
