"""What a GPU cluster needs of the loop, checked on the CPU (gloo): one collective per optimizer
step, resume state per rank and device (GradScaler, CUDA generators), validation that cannot hang
on a rank without samples, no epoch lost to a stop while validating, resumes on another number of
processes, and a launch mistake named in one line."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
from conftest import REPO_ROOT, TINY_RUN, TORCHRUN, child_env, read_metrics, torchrun
from datasets import make_codec
from engine import train_one_epoch
from losses import make_loss
from utils.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from utils.distributed import DeviceSetupError, DistributedContext, setup_distributed


def stop_at(command: list[str], marker: str, sig: int = signal.SIGTERM) -> tuple[subprocess.Popen, str, str]:
    """Start ``command``, send ``sig`` once a progress line starts with ``marker``; (process,
    that line, everything printed). ``process.stop_seconds``: from the signal to the exit."""
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env()
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(marker):
            process.send_signal(sig)
            signalled = time.monotonic()
            break
    else:
        raise AssertionError(f"{marker!r} never appeared: {''.join(seen)[-2000:]}")
    rest = process.communicate(timeout=120)[0]
    process.stop_seconds = time.monotonic() - signalled
    return process, line, "".join(seen) + rest


# --- one collective per optimizer step ------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_one_collective_per_optimizer_step_under_torchrun(tmp_path: Path, accumulation: int) -> None:
    """Two runs that differ only in the training set size (4 and 8 batches per rank): the extra
    collectives the program's own code calls, per extra optimizer step. Before this change: 2."""
    totals = {}
    for samples in (32, 64):
        out = tmp_path / str(samples)
        out.mkdir()
        result = torchrun(
            2, str(out), *TINY_RUN, "--syntheticTrain", str(samples), "--data_loader_size", "4",
            "--syntheticVal", "8", "--nEpochs", "1", "--mini_batch_count", str(accumulation),
            "--saveEveryMinutes", "60", "--expDir", str(tmp_path / "runs"), "--expID", f"n{samples}",
            script="tests/collective_counter.py",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-8000:]
        counts = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
        assert counts[0] == counts[1]  # every rank takes part in every collective
        totals[samples] = sum(counts[0].values())
    extra_steps = (8 - 4) // accumulation
    assert (totals[64] - totals[32]) / extra_steps <= 1


# --- GradScaler and generators in the checkpoint ---------------------------------------------------


@pytest.mark.e2e
def test_fp16_checkpoint_holds_the_grad_scaler_and_a_resume_restores_its_scale(tmp_path: Path) -> None:
    """The scale is set to a value no run reaches by itself in a few steps (growth needs 2000
    clean steps, a skipped step halves it), so the resumed run's scale shows it was loaded."""
    run = [*TINY_RUN, "--amp", "fp16", "--expDir", str(tmp_path), "--expID", "fp16"]
    assert entry.main([*run, "--nEpochs", "1"]) == 0
    last = tmp_path / "fp16" / "last.pth"
    state = load_checkpoint(last)
    assert state["grad_scaler"]["scale"] > 0
    state["grad_scaler"]["scale"] = 1024.0
    save_checkpoint(state, last)
    assert entry.main(["--loadModel", str(last), "--nEpochs", "2", "--progress", "none"]) == 0
    assert load_checkpoint(last)["grad_scaler"]["scale"] == 1024.0


def test_restoring_more_cuda_generators_than_devices_restores_its_own(monkeypatch) -> None:
    """8 ranks' states resumed by 1 process on cuda:0 (faked): rank 0's own GPU state is set on
    cuda:0, nothing crashes, and one line says what was left out."""
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    from utils.checkpoint import capture_rng_state

    ranks = [{**capture_rng_state(), "cuda": torch.full((16,), rank, dtype=torch.uint8)} for rank in range(8)]
    note = restore_rng_state({"ranks": ranks}, rank=0, world_size=1, device=torch.device("cuda", 0))
    assert len(restored) == 1 and restored[0][1] == torch.device("cuda", 0)
    assert torch.equal(restored[0][0], ranks[0]["cuda"])
    assert note.startswith("random state: the checkpoint holds the generators of 8 process(es)")
    assert "1-7" in note and "\n" not in note

    # the layout before per-rank states: one process saved every visible GPU's generator
    restored.clear()
    legacy = {**capture_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}
    note = restore_rng_state(legacy, rank=0, world_size=1, device=torch.device("cuda", 3))
    assert restored == [] and "none for cuda:3" in note


@pytest.mark.e2e
def test_a_resume_on_the_cpu_of_an_eight_gpu_checkpoint_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    run = [*TINY_RUN, "--expDir", str(tmp_path), "--expID", "gpus"]
    assert entry.main([*run, "--nEpochs", "1"]) == 0
    last = tmp_path / "gpus" / "last.pth"
    state = load_checkpoint(last)
    own = state["rng"]["ranks"][0]
    state["rng"] = {"ranks": [{**own, "cuda": torch.zeros(16, dtype=torch.uint8)} for _ in range(8)]}
    save_checkpoint(state, last)
    capsys.readouterr()
    assert entry.main(["--loadModel", str(last), "--nEpochs", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("random state")]
    assert len(lines) == 1
    assert (
        "8 process(es) and this run has 1" in lines[0] and "not restored (this run is on the CPU)" in lines[0]
    )
    assert lines[0] in (tmp_path / "gpus" / "log.txt").read_text()


# --- no_sync on accumulation micro-batches ----------------------------------------------------------


class CountingSync(nn.Module):
    """Stands in for DistributedDataParallel: counts the micro-batches run inside ``no_sync``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.unsynced, self.forwards, self.inside = module, 0, [], False

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced += 1
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def forward(self, x):
        self.forwards.append(self.inside)
        return self.module(x)


def test_micro_batches_that_do_not_step_skip_the_gradient_all_reduce() -> None:
    from datasets import SyntheticPeople
    from models import build_model

    torch.manual_seed(0)
    codec = make_codec("heatmap", (32, 32), (8, 8), 1.0)
    data = SyntheticPeople("train", 14, codec, (32, 32), image_size=48)
    loader = torch.utils.data.DataLoader(data, batch_size=2)  # 7 batches
    net = build_model("StackedHourGlass", nChannels=16, nStack=1, nModules=1, nReductions=2, nJoints=16)
    wrapped = CountingSync(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    steps = []
    context = DistributedContext(0, 1, 0, torch.device("cpu"))
    state = train_one_epoch(
        wrapped, make_loss(codec), loader, optimizer, codec, context, 1, accumulation=3,
        progress_mode="none", on_step=lambda step, *_: steps.append(step),
    )  # fmt: skip
    assert state.complete and steps == [3, 6, 7]  # the epoch's last batch steps too
    # batches 1, 2, 4, 5 accumulate locally; the forward runs inside no_sync, as DDP requires
    assert wrapped.unsynced == 4
    assert wrapped.forwards == [True, True, False, True, True, False, False]


# --- validation on every rank, whatever its share ---------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_fewer_validation_samples_than_processes_finishes_with_one_process_metrics(tmp_path: Path) -> None:
    tiny = [*TINY_RUN, "--expDir", str(tmp_path)]
    assert entry.main([*tiny, "--syntheticVal", "2", "--nEpochs", "1", "--expID", "trained"]) == 0
    checkpoint = str(tmp_path / "trained" / "last.pth")
    # training and validating with 1 validation sample on 2 processes used to hang forever
    trained = torchrun(2, *tiny, "--syntheticVal", "1", "--nEpochs", "1", "--expID", "ddp-train", timeout=120)
    assert trained.returncode == 0, trained.stderr[-8000:]
    assert [r["split"] for r in read_metrics(tmp_path / "ddp-train")] == ["train", "val"]
    # the checkpoint's own 2 validation samples: fewer than 3 processes
    test = ["-test", "--loadModel", checkpoint, "--expDir", str(tmp_path), "--progress", "none"]
    assert entry.main([*test, "--expID", "single"]) == 0
    single = read_metrics(tmp_path / "single")[0]
    for processes in (2, 3):
        result = torchrun(processes, *test, "--expID", f"ddp{processes}", timeout=120)
        assert result.returncode == 0, result.stderr[-8000:]
        ddp = read_metrics(tmp_path / f"ddp{processes}")[0]
        assert ddp["PCKh"] == pytest.approx(single["PCKh"], abs=1e-9)
        assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-6)


# --- a stop while validating ------------------------------------------------------------------------

STOPPABLE = [*TINY_RUN, "--data_loader_size", "4", "--nEpochs", "2", "--progress", "lines"]


@pytest.mark.e2e
def test_a_stop_while_validating_keeps_the_epoch_and_the_resume_validates_it(tmp_path: Path) -> None:
    """SIGTERM during epoch 1's validation: the epoch's checkpoint was written before validation,
    the run stops at the next validation batch, and the resume validates epoch 1 first; the
    records then equal an uninterrupted run's."""
    assert (
        entry.main([*STOPPABLE, "--progress", "none", "--expDir", str(tmp_path), "--expID", "straight"]) == 0
    )
    command = [sys.executable, "main.py", *STOPPABLE, "--expDir", str(tmp_path), "--expID", "cut"]
    process, _, output = stop_at(command, "val 1/4")
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "SIGTERM: stopping this validation (epoch 1's checkpoint is already saved)" in output
    last = tmp_path / "cut" / "last.pth"
    assert (
        f"interrupted at the validation of epoch 1; resume with: python main.py --loadModel {last}" in output
    )
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and state["pending_validation"]["epoch"] == 1 and "mid_epoch" not in state
    assert [r["split"] for r in read_metrics(tmp_path / "cut")] == ["train"]
    assert entry.main(["--loadModel", str(last), "--progress", "none"]) == 0
    # --saveInterval 1: the validated epoch's model_1.pth too (the resume used to skip it)
    assert load_checkpoint(tmp_path / "cut" / "model_1.pth")["epoch"] == 1
    same = load_checkpoint(tmp_path / "straight" / "model_1.pth")["model"]
    assert all(
        torch.equal(v, same[k]) for k, v in load_checkpoint(tmp_path / "cut" / "model_1.pth")["model"].items()
    )
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "straight")
    straight_log = (tmp_path / "straight" / "log.txt").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "log.txt").read_text().splitlines()
    strip = re.compile(r" \| \d+s$")  # the epochs' seconds differ
    epochs = [strip.sub("", line) for line in cut_log if line.startswith("epoch ")]
    assert epochs == [strip.sub("", line) for line in straight_log if line.startswith("epoch ")]
    assert len(epochs) == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_to_torchrun_during_a_long_validation_keeps_the_epoch(tmp_path: Path) -> None:
    """torchrun kills its workers 30 s after forwarding SIGTERM: a validation longer than that
    used to lose the whole epoch. Now the epoch's checkpoint exists before validation starts,
    and validation stops at once."""
    command = [
        # a larger input and width make each validation step slow, so few samples outlast torchrun's
        # 30 s (drawing 200,000 tiny ones took longer than the rest of the test)
        *TORCHRUN, "--nproc_per_node", "2", "main.py", *TINY_RUN, "--inputRes", "128", "--outputRes", "32",
        "--imageRes", "160", "--nChannels", "64", "--syntheticTrain", "16", "--syntheticVal", "8000",
        "--data_loader_size", "32", "--nEpochs", "1", "--progress", "lines",
        "--expDir", str(tmp_path), "--expID", "long",
    ]  # fmt: skip
    process, line, output = stop_at(command, "val ")
    elapsed, eta = (float(v) for v in re.match(r"val \d+/\d+ (\d+)s ETA (\d+)s", line).groups())
    assert elapsed + eta > 30, line  # the validation would have outlasted torchrun's grace period
    assert process.stop_seconds < 30, output[-3000:]  # stopped within torchrun's grace period
    assert output.count("SIGTERM: stopping this validation (epoch 1's checkpoint is already saved)") == 1
    last = tmp_path / "long" / "last.pth"
    assert f"resume with: torchrun --nproc_per_node 2 main.py --loadModel {last}" in output
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and state["pending_validation"]["epoch"] == 1


# --- resumes on another number of processes ---------------------------------------------------------


@pytest.fixture(scope="module")
def one_process_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A 1-process run's end-of-epoch checkpoint and a mid-epoch one (SIGINT in epoch 2)."""
    root = tmp_path_factory.mktemp("one-process")
    run = [*TINY_RUN, "--data_loader_size", "4", "--nEpochs", "2", "--expDir", str(root)]
    assert entry.main([*run, "--nEpochs", "1", "--expID", "ended"]) == 0
    process, _, output = stop_at(
        [sys.executable, "main.py", *run, "--progress", "lines", "--expID", "middle"],
        "train 2 4/12",
        signal.SIGINT,
    )
    assert process.returncode == 128 + signal.SIGINT, output[-2000:]
    assert "mid_epoch" in load_checkpoint(root / "middle" / "last.pth")
    return {"ended": root / "ended" / "last.pth", "middle": root / "middle" / "last.pth"}


@pytest.mark.e2e
def test_a_two_process_mid_epoch_checkpoint_on_one_process_stops_in_one_line(
    one_process_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """As two torchrun ranks write it: world size 2, one running sum per rank. Resumed on one
    process it used to skip half the epoch's remaining samples and drop rank 1's loss."""
    state = load_checkpoint(one_process_checkpoints["middle"])
    state["world_size"] = 2
    state["launch"] = "torchrun --nproc_per_node 2 main.py"
    state["mid_epoch"]["loss_sum"] *= 2
    state["mid_epoch"]["pck_sum"] *= 2
    checkpoint = tmp_path / "run" / "last.pth"
    save_checkpoint(state, checkpoint)
    result = subprocess.run(
        [sys.executable, "main.py", "--loadModel", str(checkpoint)],
        cwd=REPO_ROOT, capture_output=True, text=True, env=child_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "written in the middle of epoch 2 by 2 process(es) and this run has 1" in lines[0]
    assert f"torchrun --nproc_per_node 2 main.py --loadModel {checkpoint}" in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained, nothing written


@pytest.mark.e2e
@pytest.mark.slow
def test_one_process_checkpoints_resumed_on_two(
    one_process_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """End of epoch: continues, and the log names the change of effective batch. Mid-epoch:
    one line (it used to raise IndexError in train.restore)."""
    import shutil

    shutil.copytree(one_process_checkpoints["ended"].parent, tmp_path / "ended")
    ended = tmp_path / "ended" / "last.pth"
    result = torchrun(2, "--loadModel", str(ended), "--nEpochs", "2", "--progress", "none")
    assert result.returncode == 0, result.stderr[-8000:]
    change = "resumed on 2 process(es) a run written by 1: effective batch 4 -> 8"
    assert change in (tmp_path / "ended" / "log.txt").read_text()
    assert [(r["epoch"], r["split"]) for r in read_metrics(tmp_path / "ended")][-2:] == [
        (2, "train"),
        (2, "val"),
    ]

    shutil.copytree(one_process_checkpoints["middle"].parent, tmp_path / "middle")
    middle = tmp_path / "middle" / "last.pth"
    result = torchrun(2, "--loadModel", str(middle), "--progress", "none")
    assert result.returncode != 0 and "IndexError" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("main.py: error:")]
    assert len(lines) == 1  # rank 0 speaks
    assert "by 1 process(es) and this run has 2" in lines[0]
    assert f"python main.py --loadModel {middle}" in lines[0]


# --- launch mistakes --------------------------------------------------------------------------------


def fake_gpus(monkeypatch, count: int, **env: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("set_device on a missing GPU"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.e2e
def test_a_rank_without_its_gpu_stops_in_one_line(monkeypatch, capsys) -> None:
    fake_gpus(monkeypatch, 2, RANK="2", WORLD_SIZE="3", LOCAL_RANK="2", LOCAL_WORLD_SIZE="3",
              CUDA_VISIBLE_DEVICES="0,1")  # fmt: skip
    with pytest.raises(DeviceSetupError) as error:
        setup_distributed(0)
    message = str(error.value)
    assert (
        "LOCAL_RANK 2" in message and "2 GPU(s) visible" in message and "CUDA_VISIBLE_DEVICES=0,1" in message
    )
    assert (
        "torchrun --nproc_per_node 2" in message
        and "CUDA_VISIBLE_DEVICES=) to run every process on the CPU" in message
    )
    # rank 0 of the same launch has a GPU, but the launch itself is wrong: it stops too, before NCCL
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(sys, "argv", ["main.py", *TINY_RUN, "--nEpochs", "1"])
    assert entry.cli() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "main.py: error: LOCAL_RANK 0: 3 processes on this node and 2 GPU"
    )


# --- determinism and SyncBatchNorm switches on the CPU ----------------------------------------------


@pytest.mark.e2e
def test_deterministic_runs_repeat_and_sync_bn_on_one_process_says_it_does_nothing(
    tmp_path: Path, capsys
) -> None:
    run = [*TINY_RUN, "--nEpochs", "1", "--deterministic", "1", "--syncBN", "1", "--expDir", str(tmp_path)]
    assert entry.main([*run, "--expID", "a"]) == 0
    assert "note: --syncBN 1 has no effect on one process" in capsys.readouterr().out
    assert entry.main([*run, "--expID", "b"]) == 0
    first, second = load_checkpoint(tmp_path / "a" / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    assert all(torch.equal(value, second["model"][key]) for key, value in first["model"].items())
    assert torch.are_deterministic_algorithms_enabled()
    assert entry.main([*TINY_RUN, "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "c"]) == 0
    assert not torch.are_deterministic_algorithms_enabled()  # the switch is per command


# --- -predict --onnx on a GPU machine ---------------------------------------------------------------


@pytest.mark.e2e
def test_predict_with_onnx_keeps_the_pytorch_model_off_the_gpu(tmp_path: Path, monkeypatch, capsys) -> None:
    """On a CUDA machine (faked) onnxruntime runs on the CPU, so the PyTorch model, which only
    lends its codec and joints, is built on the CPU too: nothing reaches the (fake) GPU."""
    import cv2
    import numpy as np

    import predict

    assert entry.main([*TINY_RUN, "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "m"]) == 0
    checkpoint = str(tmp_path / "m" / "last.pth")
    model = tmp_path / "model.onnx"
    assert entry.main(["-export", str(model), "--loadModel", checkpoint]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    monkeypatch.setattr(predict, "choose_device", lambda gpuid: torch.device("cuda", 0))
    devices = []
    real_load = predict.load_trained
    monkeypatch.setattr(
        predict, "load_trained", lambda opts, device: devices.append(device) or real_load(opts, device)
    )
    capsys.readouterr()
    assert entry.main(["-predict", str(photos), "--loadModel", checkpoint, "--onnx", str(model),
                       "--expDir", str(tmp_path / "out"), "--progress", "none"]) == 0  # fmt: skip
    assert devices == ["cpu"]
    assert "(onnxruntime on the cpu)" in capsys.readouterr().out
