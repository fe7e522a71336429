"""End-to-end runs of main.main on a tiny model and tiny synthetic data, on the CPU."""

import pytest
import torch

import build
import main as entry
from conftest import TINY_RUN, read_metrics, run
from engine import NonFiniteLossError
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e  # every test runs main.main


def test_short_run_loss_falls_and_writes_run_files(tmp_path):
    run(tmp_path, "--nEpochs", "4", "--expID", "short", "--saveInterval", "2")
    run_dir = tmp_path / "short"
    records = read_metrics(run_dir)
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == 4 and train_losses[-1] < train_losses[0]
    val = [r for r in records if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3, 4]
    assert {"epoch", "split", "loss", "PCKh", "PCK"} <= set(val[0])
    log = (run_dir / "log.txt").read_text().splitlines()
    assert log[0] == "CPU threads: 1 (OMP_NUM_THREADS=1)" and len(log) == 5  # then an epoch a line
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "last.pth",
        "best.pth",
        "model_2.pth",
        "model_4.pth",
        "config.defconf",
        "predictions.png",
    } <= names
    assert "model_1.pth" not in names
    assert "nChannels: 16" in (run_dir / "config.defconf").read_text()
    state = load_checkpoint(run_dir / "last.pth")
    assert state["epoch"] == 4 and state["config"]["nChannels"] == 16
    assert {"model", "optimizer", "scheduler", "best", "rng"} <= set(state) and "data_order" not in state
    best_pckh = max(r["PCKh"] for r in val)
    assert load_checkpoint(run_dir / "best.pth")["best"] == pytest.approx(best_pckh)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    schedule = ["--dropLR", "2", "--dropMag", "0.5", "--maxTranslate", "0.05"]
    run(tmp_path, "--nEpochs", "4", "--expID", "straight", *schedule)
    run(tmp_path, "--nEpochs", "2", "--expID", "split", *schedule)
    run(tmp_path, "--nEpochs", "4", "--loadModel", str(tmp_path / "split" / "last.pth"), *schedule)

    straight = load_checkpoint(tmp_path / "straight" / "last.pth")
    resumed = load_checkpoint(tmp_path / "split" / "last.pth")
    assert resumed["epoch"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert read_metrics(tmp_path / "straight") == read_metrics(tmp_path / "split")
    assert straight["scheduler"] == resumed["scheduler"]


def test_load_options(tmp_path, capsys):
    run(tmp_path, "--nEpochs", "2", "--expID", "base", "--dropLR", "1", "--dropMag", "0.5")
    checkpoint = str(tmp_path / "base" / "last.pth")
    # --loadEpoch 0: weights kept, epochs counted from 1 in a new run directory
    run(tmp_path, "--nEpochs", "1", "--expID", "fresh", "--loadModel", checkpoint, "--loadEpoch", "0")
    assert [r["epoch"] for r in read_metrics(tmp_path / "fresh") if r["split"] == "train"] == [1]
    # --loadOptim 0: the optimizer starts again from the configured LR
    run(
        tmp_path,
        "--nEpochs",
        "3",
        "--expID",
        "newopt",
        "--loadModel",
        checkpoint,
        "--loadOptim",
        "0",
        "--LR",
        "0.01",
        "--dropLR",
        "0",  # the checkpoint's own schedule (dropLR 1) would carry over otherwise
    )
    assert load_checkpoint(tmp_path / "newopt" / "last.pth")["optimizer"]["param_groups"][0][
        "lr"
    ] == pytest.approx(0.01)
    # --dropPreLoaded: the loaded LR (2e-3 * 0.5 * 0.5) is scaled once more by dropMagPreLoaded
    run(tmp_path, "--nEpochs", "3", "--expID", "dropped", "--loadModel", checkpoint, "--dropPreLoaded", "1",
        "--dropMagPreLoaded", "0.1", "--dropLR", "100")  # fmt: skip
    lr = load_checkpoint(tmp_path / "dropped" / "last.pth")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(2e-3 * 0.25 * 0.1)


def test_evaluate_only(tmp_path, capsys):
    run(tmp_path, "--nEpochs", "1", "--expID", "trained")
    trained = read_metrics(tmp_path / "trained")[-1]
    capsys.readouterr()
    run(tmp_path, "-test", "--loadModel", str(tmp_path / "trained" / "last.pth"), "--expID", "evaluated")
    out = capsys.readouterr().out
    assert "PCKh (official MPII table)" in out and "Shoulder" in out and "Mean@0.1" in out
    tested = read_metrics(tmp_path / "evaluated")
    assert len(tested) == 1 and tested[0]["split"] == "test"
    assert tested[0]["PCKh"] == pytest.approx(trained["PCKh"])
    assert not (tmp_path / "evaluated" / "last.pth").exists()  # evaluation never trains


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, "--nEpochs", "1", "--expID", "diverge")
    good = load_checkpoint(tmp_path / "diverge" / "last.pth")

    original = build.make_loss

    def exploding_loss(target_type):
        loss = original(target_type)
        return lambda outputs, target, weight: loss(outputs, target, weight) * float("nan")

    monkeypatch.setattr(build, "make_loss", exploding_loss)
    with pytest.raises(NonFiniteLossError, match="at epoch 2, step 1.*the last good checkpoint is kept"):
        entry.main([*TINY_RUN, "--expDir", str(tmp_path), "--nEpochs", "2",
                    "--loadModel", str(tmp_path / "diverge" / "last.pth")])  # fmt: skip
    kept = load_checkpoint(tmp_path / "diverge" / "last.pth")
    assert kept["epoch"] == 1
    for key, value in good["model"].items():
        assert torch.equal(value, kept["model"][key])


def test_browse_writes_augmented_samples(tmp_path):
    run(tmp_path, "--browse", "3", "--expID", "look")
    pngs = sorted((tmp_path / "look" / "browse").glob("*.png"))
    assert [p.name for p in pngs] == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    assert not (tmp_path / "look" / "last.pth").exists()


def test_flip_test_and_bf16_autocast_run_on_cpu(tmp_path):
    run(tmp_path, "--nEpochs", "1", "--expID", "amp", "--amp", "bf16")
    run(
        tmp_path,
        "-test",
        "--flipTest",
        "1",
        "--loadModel",
        str(tmp_path / "amp" / "last.pth"),
        "--expID",
        "flip",
    )
    assert read_metrics(tmp_path / "flip")[0]["split"] == "test"


def test_gradient_accumulation_and_multistep_schedule(tmp_path):
    # 48 samples in batches of 8: 6 batches, so 3 optimizer steps per epoch when accumulating 2
    run(tmp_path, "--nEpochs", "3", "--expID", "accumulate", "--mini_batch_count", "2",
        "--lrSchedule", "multistep", "--lrMilestones", "1,3", "--dropMag", "0.5")  # fmt: skip
    state = load_checkpoint(tmp_path / "accumulate" / "last.pth")
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {9.0}
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-3 * 0.25)
