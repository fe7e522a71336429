"""Two CPU processes under torchrun (gloo backend): evaluation gathers every rank's share, so the
metrics equal a single-process evaluation; training runs with rank 0 as the only writer."""

import json
import signal
import subprocess

import pytest
import torch

import main as entry
from conftest import REPO_ROOT, TINY_RUN, TORCHRUN, child_env, torchrun

pytestmark = pytest.mark.e2e  # every test runs torchrun


@pytest.mark.slow
def test_two_process_evaluation_matches_one_process(tmp_path):
    # 17 validation samples: the two ranks get unequal shares, which must not duplicate or drop any
    tiny = [*TINY_RUN, "--syntheticVal", "17", "--expDir", str(tmp_path)]
    assert entry.main([*tiny, "--nEpochs", "1", "--expID", "trained"]) == 0
    checkpoint = str(tmp_path / "trained" / "last.pth")
    assert entry.main([*tiny, "-test", "--loadModel", checkpoint, "--expID", "single"]) == 0

    result = torchrun(2, *tiny, "-test", "--loadModel", checkpoint, "--expID", "ddp")
    assert result.returncode == 0, result.stderr[-8000:]
    single = json.loads((tmp_path / "single" / "metrics.jsonl").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    assert ddp["PCKh"] == pytest.approx(single["PCKh"], abs=1e-9)
    assert ddp["PCK"] == pytest.approx(single["PCK"], abs=1e-9)
    assert result.stdout.count("PCKh (official MPII table)") == 1  # only rank 0 prints


@pytest.mark.slow
def test_two_process_training_writes_once(tmp_path):
    result = torchrun(2, *TINY_RUN, "--expDir", str(tmp_path), "--expID", "ddp", "--nEpochs", "2")
    assert result.returncode == 0, result.stderr[-8000:]
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    lines = (tmp_path / "ddp" / "log.txt").read_text().splitlines()
    assert [line for line in lines if line.startswith("epoch ")] == [
        line for line in lines if line.startswith(("epoch 1/2", "epoch 2/2"))
    ]
    # each line once: the threads chosen, the effective batch, the two epochs
    assert len(lines) == 4 and lines[0] == "CPU threads: 1 (OMP_NUM_THREADS=1)"
    assert lines[1].startswith("2 processes: effective batch 16")


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    """torchrun forwards SIGTERM to both ranks; they agree on the step, rank 0 writes the
    mid-epoch checkpoint, and the resumed run ends exactly where an uninterrupted one does. With
    the training recipe's per-step LR and moving average (the same on every rank, no collective
    of its own), whose state the checkpoint carries too."""
    recipe = ["--ema", "1", "--emaGamma", "4", "--warmupSteps", "3", "--lrSchedule", "flatcosine",
              "--flatEpochs", "1", "--noDecayNormBias", "1"]  # fmt: skip
    run = [*TINY_RUN, "--data_loader_size", "4", "--nEpochs", "2", "--expDir", str(tmp_path), *recipe]
    assert torchrun(2, *run, "--expID", "straight").returncode == 0
    process = subprocess.Popen(
        [*TORCHRUN, "--nproc_per_node", "2", "main.py", *run, "--expID", "cut", "--progress", "lines"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
    )  # fmt: skip
    for line in process.stdout:
        if "train 1 3/6" in line:
            break
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    # the resume command repeats the launcher; one rank speaks (torchrun itself exits 1 with its
    # own SignalException traceback after forwarding SIGTERM, which docs/gpus.md documents)
    assert (
        output.count(f"resume with: torchrun --nproc_per_node 2 main.py --loadModel {tmp_path / 'cut'}") == 1
    )
    assert output.count("SIGTERM: stopping after this training step") == 1
    state = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert state["mid_epoch"]["epoch"] == 1 and 3 <= state["mid_epoch"]["step"] < 6
    resumed = torchrun(2, "--loadModel", str(tmp_path / "cut" / "last.pth"), "--progress", "none")
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    straight = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    for part in ("model", "ema"):
        weights = straight[part] if part == "model" else straight[part]["model"]
        for key, value in weights.items():
            assert torch.equal(value, (cut[part] if part == "model" else cut[part]["model"])[key]), (
                part,
                key,
            )
    assert straight["ema"]["steps"] == cut["ema"]["steps"] == 12
    assert straight["scheduler"] == cut["scheduler"]
    for index, moments in straight["optimizer"]["state"].items():
        assert all(
            torch.equal(value, cut["optimizer"]["state"][index][key]) for key, value in moments.items()
        )
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (
        tmp_path / "straight" / "metrics.jsonl"
    ).read_text()
