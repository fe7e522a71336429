"""main.py end to end on the real fixtures in ../shared/data: train a tiny model one epoch, then
-test writes the official prediction files, and the metric command lines agree with the run."""

import json
import subprocess
import sys

import pytest

import main as entry
from conftest import REPO_ROOT, TINY_RUN, python_module

pytestmark = pytest.mark.e2e  # every test runs main.py and the metric command lines


def metrics_cli(module: str, *args: str) -> dict:
    result = python_module(module, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_mpii_train_then_test_writes_pred_mat(shared_data, tmp_path):
    mpii = shared_data / "mpii_mini"
    data = ["-DataConfig", str(REPO_ROOT / "conf/datasets/mpii.defconf"), "--dataDir", str(mpii),
            "--trainAnnotation", "test_mpii.json", "--valAnnotation", "valid_first5.h5", "--expDir", str(tmp_path)]  # fmt: skip
    assert entry.main([*TINY_RUN, *data, "--nEpochs", "1", "--expID", "train"]) == 0
    assert (
        entry.main(
            [*TINY_RUN, *data, "-test", "--loadModel", str(tmp_path / "train/last.pth"), "--expID", "test"]
        )
        == 0
    )

    tested = json.loads((tmp_path / "test" / "metrics.jsonl").read_text())
    official = metrics_cli(
        "metrics.mpii", str(mpii / "gt_valid_first5.mat"), str(tmp_path / "test" / "pred.mat")
    )
    assert tested["PCKh"] == pytest.approx(official["Mean"], abs=1e-9)
    assert tested["PCKh_Head"] == pytest.approx(official["Head"], abs=1e-9)


def test_coco_train_then_test_on_detections_writes_results(shared_data, tmp_path):
    coco = shared_data / "coco_mini"
    data = ["-DataConfig", str(REPO_ROOT / "conf/datasets/coco.defconf"), "--dataDir", str(coco),
            "--trainAnnotation", "test_coco.json", "--valAnnotation", "test_coco.json", "--imageDir", ".",
            "--expDir", str(tmp_path)]  # fmt: skip
    assert entry.main([*TINY_RUN, *data, "--nEpochs", "1", "--expID", "train"]) == 0
    val = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"AP", "AP50", "AR", "PCK"} <= set(val) and "PCKh" not in val

    detections = ["--bboxFile", "test_coco_det_AP_H_56.json", "--detScoreThreshold", "0.5"]
    checkpoint = str(tmp_path / "train" / "last.pth")
    assert (
        entry.main([*TINY_RUN, *data, *detections, "-test", "--loadModel", checkpoint, "--expID", "test"])
        == 0
    )
    tested = json.loads((tmp_path / "test" / "metrics.jsonl").read_text())
    results = json.loads((tmp_path / "test" / "results.json").read_text())
    assert 0 < len(results) <= 18  # 18 boxes score >= 0.5; OKS-NMS may merge some
    official = metrics_cli(
        "metrics.coco", str(coco / "test_coco.json"), str(tmp_path / "test" / "results.json")
    )
    assert tested["AP"] == pytest.approx(official["AP"], abs=1e-9)
    # detector boxes carry no ground truth: AP only, no made-up loss or PCK
    assert "loss" not in tested and "PCK" not in tested


@pytest.mark.parametrize("dataset", ["mpii", "coco"])
def test_missing_dataset_is_one_line_naming_the_expected_path(tmp_path, dataset):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "main.py", "-DataConfig", f"conf/datasets/{dataset}.defconf", "--dataDir", str(missing),
         *TINY_RUN, "--expDir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and str(missing) in lines[0] and "expected" in lines[0], result.stderr
    assert not list(tmp_path.glob("*/last.pth"))
