"""RTMPose (SimCC) and ViTPose (heatmaps, UDP for imported weights) through every mode: trained one
epoch on the synthetic data and on the COCO fixture, ``-test`` from the checkpoint alone, and
checkpoints imported from the authors' layouts through ``-test``, ``-predict`` and ``-export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import test_vitpose
import torch
from test_rtmpose import AuthorsRTMPose, image_batch, randomise, save_published

import main as entry
from conftest import REPO_ROOT, python_module, read_metrics
from models.import_weights import main as import_main

pytestmark = pytest.mark.e2e  # every test runs main.py

COMMON = ["--data_loader_size", "8", "--nThreads", "0", "--progress", "none", "--optimizer_type", "Adam",
          "--LR", "1e-3", "--nEpochs", "1"]  # fmt: skip
TINY = {
    # RTMPose-t on 64x32 (h x w) crops: both sides multiples of 32, as CSPNeXt needs
    "RTMPose": ["-ModelConfig", str(REPO_ROOT / "conf" / "models" / "RTMPose-t.defconf"), "--inputRes", "64",
                "--aspectRatio", "0.5", "--simccSigma", "2,2.83", *COMMON],
    # a 2-block ViT of width 32 on 64x48 crops (4x3 patches), heatmaps 16x12
    "ViTPose": ["-ModelConfig", str(REPO_ROOT / "conf" / "models" / "ViTPose-S.defconf"), "--vitWidth", "32",
                "--vitDepth", "2", "--vitNumHeads", "4", "--deconvFilters", "16", "--inputRes", "64",
                "--outputRes", "16", "--aspectRatio", "0.75", "--hmGauss", "1", *COMMON],
}  # fmt: skip
SYNTHETIC = ["--imageRes", "80", "--syntheticTrain", "32", "--syntheticVal", "16"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_on_synthetic_data_and_tests_from_the_checkpoint_alone(
    name: str, tmp_path: Path, capsys
) -> None:
    runs = ["--expDir", str(tmp_path)]
    assert entry.main([*TINY[name], *SYNTHETIC, *runs, "--expID", "train"]) == 0
    if name == "RTMPose":  # one epoch of a 420-epoch recipe: it says which parts the run reaches
        out = capsys.readouterr().out
        assert "note: the run ends before flatEpochs 210 (nEpochs 1): the LR stays flat, no cosine" in out
        assert "note: the run ends before stage2Epoch 391 (nEpochs 1): its augmentation never switches" in out
    train, val = read_metrics(tmp_path / "train")
    assert (train["split"], val["split"]) == ("train", "val") and np.isfinite(train["loss"])
    checkpoint = tmp_path / "train" / "last.pth"
    assert entry.main(["-test", "--loadModel", str(checkpoint), *runs, "--expID", "test"]) == 0
    (tested,) = read_metrics(tmp_path / "test")
    # the checkpoint alone rebuilds the codec (split ratio, sigma, bins) and the same decoding
    assert tested["PCKh"] == pytest.approx(val["PCKh"], abs=1e-9)
    assert tested["loss"] == pytest.approx(val["loss"], rel=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_and_scores_on_the_coco_fixture(name: str, shared_data, tmp_path: Path) -> None:
    coco = shared_data / "coco_mini"
    paths = ["--dataDir", str(coco), "--trainAnnotation", "test_coco.json", "--valAnnotation", "test_coco.json",
             "--imageDir", ".", "--expDir", str(tmp_path)]  # fmt: skip
    coco_conf = ["-DataConfig", str(REPO_ROOT / "conf/datasets/coco.defconf"), "--flipTest", "1"]
    assert entry.main([*coco_conf, *TINY[name], *paths, "--expID", "train"]) == 0
    checkpoint = str(tmp_path / "train" / "last.pth")
    detections = ["--bboxFile", "test_coco_det_AP_H_56.json", "--detScoreThreshold", "0.5"]
    # the checkpoint alone (its sizes, joints, flip test), the data paths and detections as typed
    assert entry.main([*paths, *detections, "-test", "--loadModel", checkpoint, "--expID", "test"]) == 0
    (tested,) = read_metrics(tmp_path / "test")
    result = python_module(
        "metrics.coco", str(coco / "test_coco.json"), str(tmp_path / "test" / "results.json"), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert tested["AP"] == pytest.approx(json.loads(result.stdout)["AP"], abs=1e-9)


def imported_test_and_predict(checkpoint: Path, coco: Path, runs: Path) -> dict:
    """-test of an imported checkpoint on the COCO fixture (AP and results written), then -predict on
    one of its photos; the person -predict found (the whole photo)."""
    common = ["--expDir", str(runs), "--progress", "none", "--nThreads", "0"]
    data = ["--dataDir", str(coco), "--valAnnotation", "test_coco.json", "--imageDir", "."]
    assert entry.main(["-test", "--loadModel", str(checkpoint), *common, *data, "--expID", "test"]) == 0
    (tested,) = read_metrics(runs / "test")
    assert 0 <= tested["AP"] <= 1 and json.loads((runs / "test" / "results.json").read_text())
    photo = next(coco.glob("*.jpg"))
    assert entry.main(["-predict", str(photo), "--loadModel", str(checkpoint), *common, "--expID", "p"]) == 0
    (person,) = json.loads((runs / "p" / "keypoints.json").read_text())
    return person


@pytest.mark.slow  # an import, a -test, a -predict and an export of RTMPose-t: about 20 s
def test_an_imported_rtmpose_runs_test_predict_and_export(shared_data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = randomise(AuthorsRTMPose("t", 17, (64, 96)), seed=4).float().eval()  # (w, h) 64x96
    source = save_published(theirs, tmp_path / "rtmpose-t.pth")
    checkpoint = tmp_path / "imported.pth"
    assert import_main(["rtmpose", str(source), str(checkpoint)]) == 0
    person = imported_test_and_predict(checkpoint, shared_data / "coco_mini", tmp_path / "runs")
    keypoints = np.asarray(person["keypoints"]).reshape(17, 3)
    assert np.isfinite(keypoints).all() and ((keypoints[:, 2] >= 0) & (keypoints[:, 2] <= 1)).all()

    onnx_path = tmp_path / "rtmpose.onnx"
    assert entry.main(["-export", str(onnx_path), "--loadModel", str(checkpoint)]) == 0
    notes = json.loads(onnx_path.with_suffix(".json").read_text())
    assert notes["decoding"]["convention"] == "mmpose" and [o["name"] for o in notes["outputs"]] == [
        "simcc_x",
        "simcc_y",
    ]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = image_batch(2, 96, 64, seed=5)
    simcc_x, simcc_y = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        expected_x, expected_y = theirs(image)  # the authors' network itself
    np.testing.assert_allclose(
        simcc_x, expected_x.numpy(), rtol=1e-4, atol=1e-5 * float(expected_x.abs().max())
    )
    np.testing.assert_allclose(
        simcc_y, expected_y.numpy(), rtol=1e-4, atol=1e-5 * float(expected_y.abs().max())
    )


@pytest.mark.slow  # an import, a -test, a -predict and an export of a tiny ViTPose: about 10 s
def test_an_imported_vitpose_runs_test_predict_and_export(shared_data, tmp_path: Path) -> None:
    source, theirs = test_vitpose.tiny_source(tmp_path, simple=False, layout="ViTPose", seed=3)
    checkpoint = tmp_path / "imported.pth"
    assert (
        import_main(["vitpose", str(source), str(checkpoint), "--inputRes", "64", "--vitNumHeads", "4"]) == 0
    )
    person = imported_test_and_predict(checkpoint, shared_data / "coco_mini", tmp_path / "runs")
    assert np.isfinite(person["keypoints"]).all() and len(person["keypoints"]) == 3 * 17

    onnx_path = tmp_path / "vitpose.onnx"
    assert entry.main(["-export", str(onnx_path), "--loadModel", str(checkpoint)]) == 0
    notes = json.loads(onnx_path.with_suffix(".json").read_text())
    assert (notes["decoding"]["convention"], notes["decoding"]["post_process"]) == ("udp", "dark")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = image_batch(2, *test_vitpose.TINY_INPUT, seed=5)
    (heatmaps,) = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        expected = theirs.float().eval()(image)  # the authors' network itself
    np.testing.assert_allclose(heatmaps, expected.numpy(), rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
