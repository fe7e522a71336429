"""Watching training: TensorBoard events (read back with tensorboard's own reader), curves.png,
--tensorboard 0, the original project's visdom key, and a resume that replays an epoch."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run
from utils.options import parse_options

STEPS_PER_EPOCH = 6  # TINY_RUN: 48 training persons in batches of 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def last_records(run_dir: Path) -> dict[tuple[int, str], dict]:
    """metrics.jsonl by (epoch, split); a replayed epoch's later record wins, as in curves.png."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {(r["epoch"], r["split"]): r for r in map(json.loads, lines)}


def check_epochs_match_metrics(events: EventAccumulator, run_dir: Path) -> None:
    records = last_records(run_dir)
    for (epoch, split), record in records.items():
        for key, value in record.items():
            if key in ("epoch", "split"):
                continue
            logged = {e.step: e.value for e in events.Scalars(f"{split}/{key}")}
            at = epoch * STEPS_PER_EPOCH
            if value is None:  # NaN in metrics.jsonl
                assert np.isnan(logged[at]), (split, key, epoch)
            else:  # TensorBoard stores scalars as float32
                assert np.float32(logged[at]) == np.float32(value), (split, key, epoch)
    per_epoch = {tag for tag in events.Tags()["scalars"] if tag.split("/")[0] in ("train", "val")}
    assert per_epoch == {
        f"{s}/{k}" for (_, s), r in records.items() for k in r if k not in ("epoch", "split")
    }


@pytest.mark.e2e
def test_tensorboard_events_match_metrics_jsonl(tmp_path):
    run(tmp_path, "--nEpochs", "2", "--expID", "watched")
    run_dir = tmp_path / "watched"
    events = read_events(run_dir)

    check_epochs_match_metrics(events, run_dir)
    records = last_records(run_dir)
    assert {"val/PCKh", "val/PCKh_Shoulder", "val/PCK", "val/loss", "train/loss", "train/PCK"} <= set(
        events.Tags()["scalars"]
    )
    # per optimizer step, on the global step (epoch - 1) * steps_per_epoch + step
    steps = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for tag in ("train_step/loss", "train_step/PCK", "lr"):
        assert [e.step for e in events.Scalars(tag)] == steps, tag
    assert all(e.value == pytest.approx(2e-3) for e in events.Scalars("lr"))
    step_losses = [e.value for e in events.Scalars("train_step/loss")]
    for epoch in (1, 2):  # the epoch's loss is the mean of its steps' losses
        mean = np.mean(step_losses[(epoch - 1) * STEPS_PER_EPOCH : epoch * STEPS_PER_EPOCH])
        assert mean == pytest.approx(records[(epoch, "train")]["loss"], rel=1e-5)
    # the running PCK at an epoch's last step is the epoch's train PCK
    last_pck = events.Scalars("train_step/PCK")[STEPS_PER_EPOCH - 1].value
    assert np.float32(last_pck) == np.float32(records[(1, "train")]["PCK"])

    images = events.Images("val/skeletons")
    assert [i.step for i in images] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    grid = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    # 8 of the 16 validation crops, 32 px enlarged to 128, 4 per row
    assert grid.shape == (256, 512, 3) and images[-1].width == 512 and images[-1].height == 256

    curves = run_dir / "curves.png"
    assert curves.read_bytes().startswith(PNG_SIGNATURE)
    picture = cv2.imread(str(curves))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 300


@pytest.mark.e2e
def test_predictions_png_is_the_last_val_skeletons_picture(tmp_path):
    """predictions.png is drawn as TensorBoard's val/skeletons is, from the same kept crops: 32 px
    crops enlarged to 128, the true skeleton in magenta and the predicted one in green."""
    run(tmp_path, "--nEpochs", "1", "--expID", "drawn")
    picture = cv2.imread(str(tmp_path / "drawn" / "predictions.png"))
    assert picture.shape == (256, 512, 3)
    logged = read_events(tmp_path / "drawn").Images("val/skeletons")[-1].encoded_image_string
    np.testing.assert_array_equal(picture, cv2.imdecode(np.frombuffer(logged, np.uint8), cv2.IMREAD_COLOR))
    for color in ((255, 0, 255), (0, 255, 0)):  # magenta truth, green predictions (BGR as RGB)
        assert (picture == color).all(axis=2).sum() > 100, color


@pytest.mark.e2e
def test_resume_purges_what_an_interrupted_run_logged_after_its_checkpoint(tmp_path):
    run(tmp_path, "--nEpochs", "2", "--expID", "cut")
    run_dir = tmp_path / "cut"
    # as if the process died after epoch 1's checkpoint: epoch 2 is trained and logged again
    run(tmp_path, "--nEpochs", "2", "--loadModel", str(run_dir / "model_1.pth"))
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2
    events = read_events(run_dir)
    assert [e.step for e in events.Scalars("train_step/loss")] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [e.step for e in events.Scalars("val/PCKh")] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert len(events.Images("val/skeletons")) == 2
    check_epochs_match_metrics(events, run_dir)


@pytest.mark.e2e
def test_tensorboard_off_writes_no_events_but_still_curves(tmp_path):
    run(tmp_path, "--nEpochs", "1", "--expID", "quiet", "--tensorboard", "0")
    run_dir = tmp_path / "quiet"
    assert not (run_dir / "tb").exists()
    assert (run_dir / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_visdom_key_maps_to_tensorboard(tmp_path, capsys):
    common = ["--expDir", str(tmp_path)]
    # visdom: 0, in every original config, leaves the default (on) alone
    assert parse_options([*common, "--visdom", "0"]).tensorboard is True
    assert "option visdom is ignored" in capsys.readouterr().err
    assert parse_options([*common, "--visdom", "0", "--tensorboard", "0"]).tensorboard is False
    # visdom: 1 turns TensorBoard on ...
    config = tmp_path / "old.defconf"
    config.write_text("visdom: 1\n")
    assert parse_options([*common, "--visdom", "1"]).tensorboard is True
    assert "visdom is replaced by --tensorboard" in capsys.readouterr().err
    # ... unless tensorboard itself is given, in a config file or on the command line
    assert parse_options([*common, "-DataConfig", str(config), "--tensorboard", "0"]).tensorboard is False
    config.write_text("visdom: 1\ntensorboard: 0\n")
    assert parse_options([*common, "-DataConfig", str(config)]).tensorboard is False
    assert "given as 0 and wins" in capsys.readouterr().err


def test_curves_are_drawn_after_the_first_validation_then_at_most_every_30_s_and_at_the_end(
    tmp_path, monkeypatch
) -> None:
    import utils.training_charts as charts_module

    drawn, clock = [], [100.0]
    monkeypatch.setattr(charts_module, "plot_curves", lambda *args: drawn.append(clock[0]))
    monkeypatch.setattr(charts_module.time, "monotonic", lambda: clock[0])
    charts = charts_module.TrainingCharts(
        tmp_path, enabled=True, tensorboard=False, steps_per_epoch=1, main_metric="PCKh"
    )
    for _ in range(5):  # five validations 10 s apart
        charts.write_curves()
        clock[0] += 10.0
    charts.close()  # the run ends: the last validations are drawn
    charts.close()  # nothing new: not drawn again
    assert drawn == [100.0, 130.0, 150.0]
