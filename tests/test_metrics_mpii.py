"""Known-answer tests for metrics.mpii (PCKh, .mat readers/writers, CLI)."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from conftest import SHARED_DATA as DATA
from conftest import python_module, require_fixture
from metrics.mpii import (
    COLUMNS,
    JOINT_NAMES,
    head_sizes_from_boxes,
    load_gt_mat,
    load_pred_mat,
    log_dict,
    pckh_table,
    save_pred_mat,
)

MPII = DATA / "mpii_mini"
GT_MAT = MPII / "gt_valid_first5.mat"


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return python_module("metrics.mpii", *args)


# --------------------------------------------------------------------------------------------
# Hand-made arrays
# --------------------------------------------------------------------------------------------


def _hand_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4 persons, head size 10 (radius 5 px at 0.5, 1 px at 0.1); person 3 has nothing annotated.

    person 0: all annotated; r_ankle off by (3,4) = exactly 5 px, l_ankle 6 px, pelvis 100 px,
              r_wrist 5 + 1e-6 px (just beyond), head_top (0,1) = exactly 1 px; others exact.
    person 1: l_ankle missing; head_top 1 + 1e-6 px, l_wrist exactly 5 px; others exact.
    person 2: all annotated, every joint 10 px off (all wrong).
    person 3: all missing, head size 0, NaN ground truth.
    """
    n, k = 4, 16
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 500, size=(n, k, 2)).round()  # integers: the offsets below stay exact
    off = np.zeros((n, k, 2))
    off[0, 0] = (3, 4)
    off[0, 5] = (6, 0)
    off[0, 6] = (100, 0)
    off[0, 10] = (5 + 1e-6, 0)
    off[0, 9] = (0, 1)
    off[1, 9] = (0, 1 + 1e-6)
    off[1, 15] = (0, 5)
    off[2] = (10, 0)
    missing = np.zeros((n, k), dtype=bool)
    missing[1, 5] = True
    missing[3] = True
    gt[3] = np.nan
    pred = gt + off
    pred[3] = 0.0
    head_sizes = np.array([10.0, 10.0, 10.0, 0.0])
    return pred, gt, missing, head_sizes


def test_hand_counts_and_per_joint():
    table = pckh_table(*_hand_case())
    counts = table["counts"]
    assert counts.tolist() == [3, 3, 3, 3, 3, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert table["num_persons"] == 3
    pj = table["per_joint"][0.5]
    assert pj[0] == pytest.approx(100 * 2 / 3)  # exactly at 5 px counts as correct
    assert pj[5] == 0.0  # 6 px wrong, person 1 missing, person 2 wrong
    assert pj[10] == pytest.approx(100 * 1 / 3)  # 5 + 1e-6 px is wrong
    assert pj[15] == pytest.approx(100 * 2 / 3)  # exactly 5 px on the other axis: correct
    assert pj[6] == pytest.approx(100 * 1 / 3)
    pj01 = table["per_joint"][0.1]
    assert pj01[9] == pytest.approx(100 * 1 / 3)  # 1 px correct, 1 + 1e-6 px wrong
    assert pj01[0] == pytest.approx(100 * 1 / 3)  # only person 1 (exact)


def test_hand_columns():
    cols = pckh_table(*_hand_case())["columns"]
    assert list(cols) == list(COLUMNS)
    two_thirds = 100 * 2 / 3
    assert cols["Head"] == pytest.approx(two_thirds)
    assert cols["Shoulder"] == pytest.approx(two_thirds)
    assert cols["Elbow"] == pytest.approx(two_thirds)
    assert cols["Wrist"] == pytest.approx((100 / 3 + two_thirds) / 2)
    assert cols["Hip"] == pytest.approx(two_thirds)
    assert cols["Knee"] == pytest.approx(two_thirds)
    # Official table: plain mean of right (2/3) and left (0/2) ankle PCKh.
    assert cols["Ankle"] == pytest.approx((two_thirds + 0.0) / 2)
    # Mean over the 14 joints (no pelvis/thorax), weighted by counts: 13 joints x 3 + l_ankle x 2 = 41.
    # Correct at 0.5: 2 per joint except l_ankle 0 and r_wrist 1 -> 12*2 + 0 + 1 = 25.
    assert cols["Mean"] == pytest.approx(100 * 25 / 41)
    # Correct at 0.1: person 0 -> 14 - {r_ankle, l_ankle, r_wrist} = 11;
    # person 1 -> 13 annotated minus {head_top, l_wrist} = 11; person 2 -> 0.
    assert cols["Mean@0.1"] == pytest.approx(100 * 22 / 41)


def test_hand_pooled_sides():
    cols = pckh_table(*_hand_case(), pool_sides=True)["columns"]
    assert cols["Ankle"] == pytest.approx(100 * 2 / 5)  # (2 + 0) / (3 + 2)
    assert cols["Wrist"] == pytest.approx(100 * 3 / 6)
    assert cols["Mean"] == pytest.approx(100 * 25 / 41)


def test_extra_thresholds_and_log_dict():
    table = pckh_table(*_hand_case(), thresholds=(0.5, 0.2, 0.1))
    assert list(table["columns"])[-2:] == ["Mean@0.2", "Mean@0.1"]
    logged = log_dict(table)
    assert logged["pckh/Mean"] == table["columns"]["Mean"]
    assert logged["pckh/count/l_ankle"] == 2.0
    assert logged["pckh/r_ankle@0.5"] == pytest.approx(100 * 2 / 3)
    assert all(isinstance(v, float) for v in logged.values())
    assert len([k for k in logged if k.startswith("pckh/count/")]) == len(JOINT_NAMES)


def test_all_missing_only_gives_nan_not_error():
    pred = np.zeros((2, 16, 2))
    missing = np.ones((2, 16), dtype=bool)
    with np.errstate(all="raise"):
        table = pckh_table(pred, pred.copy(), missing, np.zeros(2))
    assert table["num_persons"] == 0
    assert all(math.isnan(v) for v in table["columns"].values())


def test_nonfinite_prediction_is_wrong():
    gt = np.zeros((1, 16, 2))
    pred = gt.copy()
    pred[0, 9] = np.nan
    pred[0, 8] = np.inf
    table = pckh_table(pred, gt, np.zeros((1, 16), bool), np.array([10.0]))
    assert table["columns"]["Head"] == 0.0
    assert table["columns"]["Mean"] == pytest.approx(100 * 12 / 14)


def test_bad_inputs():
    gt = np.zeros((2, 16, 2))
    ok = dict(pred=gt, gt=gt, missing=np.zeros((2, 16), bool), head_sizes=np.ones(2))
    with pytest.raises(ValueError, match="pred must have"):
        pckh_table(**{**ok, "pred": np.zeros((2, 16, 3))})
    with pytest.raises(ValueError, match="missing must have"):
        pckh_table(**{**ok, "missing": np.zeros((16, 2), bool)})
    with pytest.raises(ValueError, match="head_sizes must have"):
        pckh_table(**{**ok, "head_sizes": np.ones(3)})
    with pytest.raises(ValueError, match="head size must be finite and > 0"):
        pckh_table(**{**ok, "head_sizes": np.array([1.0, 0.0])})
    with pytest.raises(ValueError, match="thresholds"):
        pckh_table(**ok, thresholds=())


def test_head_sizes_from_boxes():
    boxes = np.array([[[0.0, 0.0], [30.0, 40.0]], [[10.0, 10.0], [10.0, 20.0]]])
    np.testing.assert_allclose(head_sizes_from_boxes(boxes), [0.6 * 50, 0.6 * 10])
    with pytest.raises(ValueError, match="headboxes"):
        head_sizes_from_boxes(np.zeros((2, 2, 3)))


def test_mat_axis_orders(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    n = 3
    pos1 = rng.uniform(1, 300, size=(n, 16, 2))
    miss = rng.uniform(size=(n, 16)) < 0.2
    boxes1 = np.stack([rng.uniform(1, 50, (n, 2)), rng.uniform(60, 120, (n, 2))], axis=1)  # (n,2,2)
    last = tmp_path / "last.mat"
    first = tmp_path / "first.mat"
    savemat(
        last,
        {
            "pos_gt_src": pos1.transpose(1, 2, 0),
            "jnt_missing": miss.T.astype(np.uint8),
            "headboxes_src": boxes1.transpose(1, 2, 0),
        },
    )
    savemat(first, {"pos_gt_src": pos1, "jnt_missing": miss.astype(np.uint8), "headboxes_src": boxes1})
    for path in (last, first):
        g = load_gt_mat(path)
        np.testing.assert_array_equal(g["joints"], pos1 - 1)
        np.testing.assert_array_equal(g["missing"], miss)
        np.testing.assert_array_equal(g["headboxes"], boxes1 - 1)
        np.testing.assert_allclose(g["head_sizes"], 0.6 * np.linalg.norm(boxes1[:, 1] - boxes1[:, 0], axis=1))
    # Predictions stored person-last (2,16,N) and (16,2,N) as some MATLAB code writes them.
    savemat(tmp_path / "p1.mat", {"preds": pos1.transpose(2, 1, 0)})
    savemat(tmp_path / "p2.mat", {"preds": pos1.transpose(1, 2, 0)})
    for name in ("p1.mat", "p2.mat"):
        np.testing.assert_array_equal(load_pred_mat(tmp_path / name), pos1 - 1)


def test_reader_errors(tmp_path):
    from scipy.io import savemat

    with pytest.raises(FileNotFoundError, match="nope.mat"):
        load_gt_mat(tmp_path / "nope.mat")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="bad.mat"):
        load_gt_mat(bad)
    savemat(tmp_path / "nokey.mat", {"something": np.zeros(3)})
    with pytest.raises(KeyError, match="pos_gt_src"):
        load_gt_mat(tmp_path / "nokey.mat")
    savemat(tmp_path / "shape.mat", {"preds": np.zeros((5, 17, 2))})
    with pytest.raises(ValueError, match="'preds' must have shape"):
        load_pred_mat(tmp_path / "shape.mat")


# --------------------------------------------------------------------------------------------
# Real fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gt5():
    return load_gt_mat(require_fixture(GT_MAT))


def test_fixture_loads(gt5):
    assert gt5["joints"].shape == (5, 16, 2)
    assert gt5["missing"].shape == (5, 16)
    assert gt5["head_sizes"].shape == (5,)
    # Persons 3 and 4 (051423444, 004645041) lack both ankles.
    assert np.flatnonzero(gt5["missing"].any(axis=1)).tolist() == [2, 3]
    assert gt5["missing"][[2, 3]][:, [0, 5]].all() and gt5["missing"].sum() == 4
    # r_ankle of person 0 is (804, 711) 1-based in the file.
    np.testing.assert_allclose(gt5["joints"][0, 0], [803.0, 710.0], atol=1e-4)
    # Head box (914,79)-(1031,237): 0.6 * sqrt(117^2 + 158^2).
    assert gt5["head_sizes"][0] == pytest.approx(0.6 * math.hypot(117, 158))


def test_fixture_gt_as_prediction_is_100(gt5):
    table = pckh_table(gt5["joints"], gt5["joints"], gt5["missing"], gt5["head_sizes"])
    assert table["columns"] == {name: 100.0 for name in COLUMNS}
    assert table["counts"][[0, 5]].tolist() == [3, 3]


def test_fixture_shifted_prediction(gt5):
    # Head sizes are about 118, 44, 78, 81 and 84 px; radii at 0.5: 59, 22, 39, 41, 42 px.
    # A 30 px shift fails only person 1 at 0.5 and everyone at 0.1.
    pred = gt5["joints"] + np.array([30.0, 0.0])
    cols = pckh_table(pred, gt5["joints"], gt5["missing"], gt5["head_sizes"])["columns"]
    for name in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee"):
        assert cols[name] == pytest.approx(80.0)
    assert cols["Ankle"] == pytest.approx(100 * 2 / 3)  # ankles annotated for persons 0, 1, 4
    assert cols["Mean"] == pytest.approx(100 * (12 * 4 + 2 * 2) / (12 * 5 + 2 * 3))
    assert cols["Mean@0.1"] == 0.0
    # A (6, 8) = 10 px shift: all correct at 0.5; at 0.1 only person 0 (radius 11.8 px).
    pred = gt5["joints"] + np.array([6.0, 8.0])
    cols = pckh_table(pred, gt5["joints"], gt5["missing"], gt5["head_sizes"])["columns"]
    assert cols["Mean"] == 100.0
    assert cols["Mean@0.1"] == pytest.approx(100 * 14 / 66)


def test_pred_mat_roundtrip_is_hrnet_layout(tmp_path, gt5):
    from scipy.io import loadmat

    path = tmp_path / "pred.mat"
    save_pred_mat(path, gt5["joints"])
    raw = loadmat(path)["preds"]
    assert raw.shape == (5, 16, 2)
    # The file holds 1-based pixels, directly comparable with pos_gt_src.
    np.testing.assert_allclose(raw, loadmat(GT_MAT)["pos_gt_src"].transpose(2, 0, 1))
    np.testing.assert_allclose(load_pred_mat(path), gt5["joints"])


def test_h5_normalize_matches_head_sizes(gt5):
    h5py = pytest.importorskip("h5py")
    h5 = require_fixture(MPII / "valid_first5.h5")
    with h5py.File(h5, "r") as f:
        normalize = f["normalize"][:]
    # Same 5 persons; the HDF5 values differ from 0.6 x diagonal of the .mat head boxes by up to
    # ~7e-8 relative (~9e-6 px): they were not computed from exactly these doubles.
    np.testing.assert_allclose(normalize, gt5["head_sizes"], rtol=1e-6, atol=0)


@pytest.mark.e2e
def test_cli_json_matches_function(tmp_path, gt5):
    pred = gt5["joints"] + np.array([30.0, 0.0])
    path = tmp_path / "pred.mat"
    save_pred_mat(path, pred)
    proc = _run_cli(str(GT_MAT), str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert list(got) == list(COLUMNS)
    want = pckh_table(pred, gt5["joints"], gt5["missing"], gt5["head_sizes"])["columns"]
    for name in COLUMNS:
        assert got[name] == pytest.approx(want[name], abs=1e-9)
    text = _run_cli(str(GT_MAT), str(path))
    assert text.returncode == 0 and "Mean@0.1" in text.stdout and "80.00" in text.stdout


@pytest.mark.e2e
def test_cli_missing_file(tmp_path):
    require_fixture(GT_MAT)
    missing = tmp_path / "no_such_pred.mat"
    proc = _run_cli(str(GT_MAT), str(missing))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.e2e
def test_cli_malformed_and_mismatched(tmp_path, gt5):
    bad = tmp_path / "bad.mat"
    bad.write_text("garbage")
    proc = _run_cli(str(GT_MAT), str(bad))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr
    short = tmp_path / "short.mat"
    save_pred_mat(short, gt5["joints"][:4])
    proc = _run_cli(str(GT_MAT), str(short))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "5 persons" in lines[0] and "4" in lines[0]


def test_joint_names_agree_with_the_dataset_joint_set():
    # metrics.mpii keeps its own copy so it imports without torch; the two must never drift apart
    from datasets.skeletons import MPII_JOINTS

    assert MPII_JOINTS.names == JOINT_NAMES
