"""Known-answer tests for metrics.coco (rescoring, OKS-NMS, pycocotools wrapper, CLI)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess

import numpy as np
import pytest

from conftest import SHARED_DATA as DATA
from conftest import python_module, require_fixture
from metrics.coco import (
    COCO_SIGMAS,
    STAT_NAMES,
    evaluate_keypoints,
    load_results,
    make_results,
    oks_nms,
    pairwise_oks,
    postprocess_results,
    rescore,
    write_results,
)

GT_JSON = DATA / "coco_mini" / "test_coco.json"


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return python_module("metrics.coco", *args)


def _pose(rng: np.random.Generator, center: tuple[float, float], spread: float = 40.0) -> np.ndarray:
    xy = np.asarray(center) + rng.uniform(-spread, spread, size=(17, 2))
    return np.concatenate([xy, np.ones((17, 1))], axis=1)


# --------------------------------------------------------------------------------------------
# Pure numpy parts
# --------------------------------------------------------------------------------------------


def test_sigmas():
    assert COCO_SIGMAS.shape == (17,)
    np.testing.assert_allclose(COCO_SIGMAS[[0, 5, 11, 15]], [0.026, 0.079, 0.107, 0.089])
    np.testing.assert_allclose(COCO_SIGMAS[1::2], COCO_SIGMAS[2::2])  # left/right symmetric


def test_pairwise_oks_known_value():
    # One keypoint moved by d: OKS = (16 + exp(-d^2 / (2 * (2 sigma)^2 * area))) / 17.
    a = np.zeros((17, 3))
    b = a.copy()
    b[0, :2] = (3.0, 4.0)
    area = 100.0
    oks = pairwise_oks(np.stack([a, b]), np.array([area, area]))
    expected = (16 + math.exp(-25 / (2 * (2 * 0.026) ** 2 * (area + np.spacing(1))))) / 17
    assert oks[0, 1] == pytest.approx(expected, rel=1e-12)
    assert oks[1, 0] == oks[0, 1]
    np.testing.assert_array_equal(np.diag(oks), [1.0, 1.0])


def test_oks_nms_identical_poses_keep_one():
    rng = np.random.default_rng(0)
    p = _pose(rng, (100, 100))
    keep = oks_nms(np.stack([p, p]), np.array([0.5, 0.9]), np.array([5000.0, 5000.0]))
    assert keep.tolist() == [1]  # the higher score survives


def test_oks_nms_far_apart_keep_both():
    rng = np.random.default_rng(1)
    kpts = np.stack([_pose(rng, (100, 100)), _pose(rng, (600, 400))])
    keep = oks_nms(kpts, np.array([0.3, 0.8]), np.array([5000.0, 5000.0]))
    assert keep.tolist() == [1, 0]  # both, highest score first


def test_oks_nms_threshold_edge():
    rng = np.random.default_rng(2)
    p = _pose(rng, (100, 100))
    # Identical poses have OKS exactly 1: suppression needs OKS > threshold, so 1.0 keeps both.
    assert oks_nms(np.stack([p, p]), np.array([0.9, 0.8]), np.ones(2) * 4000, threshold=1.0).tolist() == [
        0,
        1,
    ]
    q = p.copy()
    q[:, :2] += 3.0
    kpts = np.stack([p, q])
    areas = np.array([4000.0, 4000.0])
    o = pairwise_oks(kpts, areas)[0, 1]
    assert 0 < o < 1
    assert oks_nms(kpts, np.array([0.9, 0.8]), areas, threshold=o).tolist() == [0, 1]  # equal: kept
    assert oks_nms(kpts, np.array([0.9, 0.8]), areas, threshold=np.nextafter(o, 0)).tolist() == [0]


def test_oks_nms_greedy_chain_and_ties():
    # a~b and b~c overlap but a, c do not: greedy keeps a (best), drops b, then keeps c.
    base = np.zeros((17, 3))
    a, b, c = base.copy(), base.copy(), base.copy()
    b[:, 0] += 2.0
    c[:, 0] += 4.0
    kpts = np.stack([a, b, c])
    areas = np.full(3, 900.0)
    oks = pairwise_oks(kpts, areas)
    thr = (oks[0, 2] + oks[0, 1]) / 2
    assert oks[0, 1] > thr >= oks[0, 2]
    assert oks_nms(kpts, np.array([0.9, 0.8, 0.7]), areas, threshold=thr).tolist() == [0, 2]
    # Equal scores: input order wins (stable).
    assert oks_nms(np.stack([a, a]), np.array([0.5, 0.5]), np.ones(2)).tolist() == [0]
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)).tolist() == []


def test_rescore_known_answer():
    kp = np.array(
        [
            [0.9, 0.5, 0.1, 0.2] + [0.0] * 13,  # 0.9 and 0.5 count; 0.2 is not > 0.2
            [0.1] * 17,  # nothing above: score 0 (Simple Baselines / HRNet convention)
            [1.0] * 17,
        ]
    )
    got = rescore(kp, np.array([0.8, 0.99, 0.5]))
    np.testing.assert_allclose(got, [0.8 * 0.7, 0.0, 0.5])
    with pytest.raises(ValueError, match="box_scores"):
        rescore(kp, np.ones(2))


def test_postprocess_results_groups_rescores_and_suppresses():
    rng = np.random.default_rng(3)
    p = _pose(rng, (100, 100))
    p[:, 2] = 0.5
    far = _pose(rng, (500, 300))
    far[:, 2] = 0.4
    kpts = np.stack([p, p, far, p])
    ids = [7, 7, 7, 9]
    res = postprocess_results(ids, kpts, [0.6, 0.9, 1.0, 0.2], np.full(4, 5000.0))
    assert [r["image_id"] for r in res] == [7, 7, 9]
    assert [r["score"] for r in res] == pytest.approx([0.45, 0.4, 0.1])
    assert res[0]["keypoints"] == pytest.approx(p.reshape(-1).tolist())
    assert all(r["category_id"] == 1 and len(r["keypoints"]) == 51 for r in res)


def test_write_results_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    kpts = np.stack([_pose(rng, (50, 50)), _pose(rng, (80, 90))])
    path = tmp_path / "res.json"
    write_results(path, np.array([785, 40083]), kpts, np.array([0.5, 0.25]))
    data = json.loads(path.read_text())
    assert data == make_results([785, 40083], kpts, [0.5, 0.25])
    assert data[1]["image_id"] == 40083 and data[1]["score"] == 0.25
    assert data[0]["keypoints"] == pytest.approx(kpts[0].reshape(-1).tolist())
    with pytest.raises(ValueError, match="keypoints"):
        make_results([1], np.zeros((1, 17, 2)), [1.0])


# --------------------------------------------------------------------------------------------
# pycocotools on the real fixture
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gt_dataset():
    return json.loads(require_fixture(GT_JSON).read_text())


def _gt_as_results(dataset: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 1.0}
        for a in dataset["annotations"]
        if a["num_keypoints"] > 0
    ]


def test_gt_as_results_gives_one(gt_dataset):
    results = _gt_as_results(gt_dataset)
    assert len(results) == 12
    stats = evaluate_keypoints(GT_JSON, results)
    assert list(stats) == list(STAT_NAMES)
    assert stats == {name: 1.0 for name in STAT_NAMES}
    assert "area" not in results[0] and "id" not in results[0]  # the caller's list is left untouched


def _perturbed(dataset: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for r in _gt_as_results(dataset):
        kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(17, 3)
        kp[:, :2] += rng.normal(0, 6, size=(17, 2))
        kp[:, 2] = rng.uniform(0, 1, size=17)
        out.append({**r, "keypoints": kp.reshape(-1).tolist(), "score": float(rng.uniform(0.1, 1))})
        if rng.uniform() < 0.5:  # a duplicate, worse detection: exercises false positives
            dup = kp.copy()
            dup[:, :2] += rng.normal(0, 25, size=(17, 2))
            out.append({**r, "keypoints": dup.reshape(-1).tolist(), "score": float(rng.uniform(0, 0.5))})
    return out


def test_agrees_with_pycocotools_directly(gt_dataset, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for seed in (0, 1, 2):
        results = _perturbed(gt_dataset, seed)
        path = tmp_path / f"res{seed}.json"
        path.write_text(json.dumps(results))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(GT_JSON))
            ev = COCOeval(coco_gt, coco_gt.loadRes(str(path)), "keypoints")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ours_file = evaluate_keypoints(GT_JSON, path)
        ours_list = evaluate_keypoints(coco_gt, results)
        for i, name in enumerate(STAT_NAMES):
            assert ours_file[name] == pytest.approx(ev.stats[i], abs=1e-9)
            assert ours_list[name] == pytest.approx(ev.stats[i], abs=1e-9)
        assert 0 < ours_file["AP"] < 1


def test_evaluate_is_quiet_unless_verbose(gt_dataset, capsys):
    evaluate_keypoints(GT_JSON, _gt_as_results(gt_dataset))
    assert capsys.readouterr().out == ""
    evaluate_keypoints(GT_JSON, _gt_as_results(gt_dataset), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_evaluate_clear_errors(gt_dataset, tmp_path):
    with pytest.raises(ValueError, match="empty list"):
        evaluate_keypoints(GT_JSON, [])
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="empty.json.*empty list"):
        evaluate_keypoints(GT_JSON, empty)
    bad_img = _gt_as_results(gt_dataset)[:1]
    bad_img[0]["image_id"] = 123456789
    with pytest.raises(ValueError, match="123456789"):
        evaluate_keypoints(GT_JSON, bad_img)
    short = _gt_as_results(gt_dataset)[:1]
    short[0]["keypoints"] = short[0]["keypoints"][:48]
    with pytest.raises(ValueError, match="48 keypoint values"):
        evaluate_keypoints(GT_JSON, short)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_keypoints(tmp_path / "nope.json", bad_img)
    notjson = tmp_path / "x.json"
    notjson.write_text("{oops")
    with pytest.raises(ValueError, match="x.json"):
        load_results(notjson)


@pytest.mark.e2e
def test_cli_json_and_table(gt_dataset, tmp_path):
    path = tmp_path / "res.json"
    results = _perturbed(gt_dataset, 5)
    path.write_text(json.dumps(results))
    proc = _run_cli(str(GT_JSON), str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert list(got) == list(STAT_NAMES)
    want = evaluate_keypoints(GT_JSON, results)
    for name in STAT_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-12)
    text = _run_cli(str(GT_JSON), str(path))
    assert text.returncode == 0 and "AP50" in text.stdout and "ARl" in text.stdout
    assert "Average Precision" not in text.stdout  # pycocotools stays quiet


@pytest.mark.e2e
def test_cli_missing_file(tmp_path):
    require_fixture(GT_JSON)
    missing = tmp_path / "no_such_results.json"
    proc = _run_cli(str(GT_JSON), str(missing))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.e2e
def test_cli_empty_results(tmp_path):
    require_fixture(GT_JSON)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    proc = _run_cli(str(GT_JSON), str(empty))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "empty" in proc.stderr
