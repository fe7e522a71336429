"""Scores that cannot be silently wrong, and no epoch lost to an empty validation set.

Each case is a copy of the real fixtures in ../shared/data carrying a mistake real annotation
files carry, written into tmp_path: duplicate ids, ``num_keypoints`` that disagrees with the
keypoints, MPII's missing-joint marker marked visible, validation sets that come out empty, and
what the readers pass over (one note each).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import main as entry
import metrics.coco
from conftest import REPO_ROOT, TINY_RUN, copy_fixture, edit_h5, edit_json, run_cli
from datasets.base import DataError
from datasets.coco import COCODataset
from datasets.codecs import HeatmapCodec
from datasets.mpii import MPIIDataset
from datasets.validation import BadDataPolicy

INPUT, HEATMAP = (48, 64), (12, 16)
CODEC = HeatmapCodec(INPUT, HEATMAP, 1.0)
SKIP = BadDataPolicy(skip=True, max_fraction=0.5)
DETECTIONS = "test_coco_det_AP_H_56.json"


def coco(folder: Path, annotation: str = "test_coco.json", **kwargs) -> COCODataset:
    return COCODataset(folder, "val2017", CODEC, INPUT, annotation_file=annotation, **kwargs)


def annotation(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def gt_as_results(dataset: COCODataset) -> dict[str, np.ndarray]:
    """The ground-truth joints of the records the reader kept, as the loop's gathered predictions."""
    records = dataset.records
    return {
        "preds": np.stack([r["joints"] for r in records]).astype(np.float64),
        "scores": np.ones((len(records), dataset.joint_spec.num_joints)),
        "image_id": np.array([r["image_id"] for r in records]),
        "box_score": np.ones(len(records)),
        "scale": np.array([r["scale"] for r in records]),
    }


def gt_as_result_file(folder: Path, data: dict) -> Path:
    """The annotations with a labelled keypoint (v > 0, counted, as the readers count) as a
    results file."""
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in data["annotations"]
        if any(v > 0 for v in a["keypoints"][2::3])
    ]
    path = folder / "gt_results.json"
    path.write_text(json.dumps(results))
    return path


def cli(capsys, *args: str) -> tuple[int, str, list[str]]:
    """``python -m metrics.coco`` in this process: (status, stdout, stderr lines)."""
    status = metrics.coco.main([*map(str, args), "--json"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


# ---------------------------------------------------------------------------------------------
# Duplicate ids
# ---------------------------------------------------------------------------------------------


def duplicate_annotation_id(data: dict) -> None:
    """Person 230195 (image 40083) takes the id of person 442619 (image 785)."""
    annotation(data, 230195)["id"] = 442619


def test_duplicate_annotation_id_is_an_error_naming_the_file_and_ids(coco_copy):
    edit_json(coco_copy / "test_coco.json", duplicate_annotation_id)
    with pytest.raises(DataError) as info:
        coco(coco_copy)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{coco_copy / 'test_coco.json'}: annotation 442619 (image 000000040083.jpg): ")
    assert (
        "duplicate annotation id 442619: annotations[0] in image 000000000785.jpg, annotations[2] in image "
        in message
    )
    assert "--skipBadSamples 1" in message


def test_duplicate_annotation_id_is_dropped_and_listed_when_skipping(coco_copy):
    edit_json(coco_copy / "test_coco.json", duplicate_annotation_id)
    dataset = coco(coco_copy, policy=SKIP)
    assert len(dataset) == 11 and [r["annotation_id"] for r in dataset.records].count(442619) == 1
    (line,) = dataset.dropped
    assert line.startswith(
        f"{coco_copy / 'test_coco.json'}: annotation 442619 (image 000000040083.jpg): duplicate"
    )
    # the evaluation's ground truth is the reader's: image 785 keeps its own person, scored 1.0
    assert dataset.evaluate(gt_as_results(dataset))["AP"] == 1.0
    assert [a["image_id"] for a in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[785]))] == [785]


def test_duplicate_image_id_with_other_contents_is_an_error(coco_copy):
    def add_copy(data, **changes):
        data["images"].append({**data["images"][0], **changes})

    # an exact copy of an image entry is harmless: pycocotools keeps one
    edit_json(coco_copy / "test_coco.json", add_copy)
    assert len(coco(coco_copy)) == 12
    edit_json(coco_copy / "test_coco.json", lambda data: add_copy(data, file_name="000000040083.jpg"))
    with pytest.raises(DataError) as info:
        coco(coco_copy)
    message = str(info.value)
    assert message.startswith(
        f"{coco_copy / 'test_coco.json'}: image 785 (000000040083.jpg): duplicate image id 785"
    )
    assert "images[0] and images[5] differ in 'file_name'" in message and "\n" not in message
    dataset = coco(coco_copy, policy=SKIP)  # the later entry is dropped; the persons keep the first
    assert len(dataset) == 12 and len(dataset.dropped) == 1 and "duplicate image id 785" in dataset.dropped[0]
    assert {Path(r["path"]).name for r in dataset.records if r["image_id"] == 785} == {"000000000785.jpg"}


def test_metrics_cli_refuses_duplicate_ids_or_leaves_them_out(coco_copy, capsys):
    edit_json(coco_copy / "test_coco.json", duplicate_annotation_id)
    data = json.loads((coco_copy / "test_coco.json").read_text())
    results = gt_as_result_file(coco_copy, data)
    status, out, err = cli(capsys, coco_copy / "test_coco.json", results)
    assert status == 2 and out == "" and len(err) == 1
    assert err[0].startswith(
        f"python -m metrics.coco: error: {coco_copy / 'test_coco.json'}: annotation 442619 (image 000000040083.jpg)"
    )
    assert "duplicate annotation id 442619" in err[0]
    # as training with --skipBadSamples 1: the later person is left out of the ground truth, so
    # the persons kept, submitted as predictions, score 1.0
    later = data["annotations"][2]
    kept = [r for r in json.loads(results.read_text()) if r["keypoints"] != later["keypoints"]]
    results.write_text(json.dumps(kept))
    status, out, err = cli(capsys, coco_copy / "test_coco.json", results, "--skipBadSamples", "1")
    assert status == 0 and json.loads(out)["AP"] == 1.0
    assert any("1 bad record of" in line and "left out (--skipBadSamples 1)" in line for line in err)


# ---------------------------------------------------------------------------------------------
# num_keypoints that disagrees with the keypoints
# ---------------------------------------------------------------------------------------------


def disagreeing_num_keypoints(data: dict) -> None:
    """One person with no labelled keypoint but num_keypoints 5, one with 15 labelled and 0."""
    empty = annotation(data, 230195)
    empty["keypoints"], empty["num_keypoints"] = [0] * 51, 5
    annotation(data, 460541)["num_keypoints"] = 0


def test_num_keypoints_is_counted_from_the_keypoints_for_both_readers_and_cocoeval(coco_copy, capsys):
    edit_json(coco_copy / "test_coco.json", disagreeing_num_keypoints)
    dataset = coco(coco_copy)
    kept = {r["annotation_id"] for r in dataset.records}
    assert 230195 not in kept and 460541 in kept and len(kept) == 11
    note = (
        f"{coco_copy / 'test_coco.json'}: num_keypoints disagrees with the labelled keypoints (v > 0) of 2 "
        f"annotations (ids 230195, 460541); the count from the keypoints is used, for training and COCOeval alike"
    )
    assert note in dataset.notes
    assert capsys.readouterr().err.count(note) == 1  # once per file
    # -test's evaluator: the persons scored are the persons read, so the ground truth scores 1.0
    assert dataset.evaluate(gt_as_results(dataset)) == {name: 1.0 for name in metrics.coco.STAT_NAMES}
    # python -m metrics.coco reads the file the same way
    results = gt_as_result_file(coco_copy, json.loads((coco_copy / "test_coco.json").read_text()))
    status, out, err = cli(capsys, coco_copy / "test_coco.json", results)
    assert status == 0 and json.loads(out)["AP"] == 1.0 and json.loads(out)["AR"] == 1.0
    assert err == [f"note: {note}"]


# ---------------------------------------------------------------------------------------------
# An empty validation set: one line, exit 2, before the first epoch
# ---------------------------------------------------------------------------------------------


def coco_args(folder: Path, exp: Path, *extra: str) -> list[str]:
    return [
        *TINY_RUN, "-DataConfig", str(REPO_ROOT / "conf/datasets/coco.defconf"), "--dataDir", str(folder),
        "--trainAnnotation", "test_coco.json", "--valAnnotation", "test_coco.json", "--imageDir", ".",
        "--expDir", str(exp), "--nEpochs", "1", "--tensorboard", "0", *extra,
    ]  # fmt: skip


def write_detections(folder: Path, name: str, change) -> str:
    boxes = json.loads((folder / DETECTIONS).read_text())
    (folder / name).write_text(json.dumps(change(boxes)))
    return name


EMPTY_CAUSES = {
    "no-detections": (
        lambda f: ["--bboxFile", write_detections(f, "none.json", lambda boxes: [])],
        "none.json: holds no detections (an empty list)",
    ),
    "other-category": (
        lambda f: [
            "--bboxFile",
            write_detections(f, "cats.json", lambda b: [d | {"category_id": 18} for d in b]),
        ],
        "cats.json: no usable person box among its 118 detections: 118 not of category 1",
    ),
    "below-threshold": (
        lambda f: ["--bboxFile", DETECTIONS, "--detScoreThreshold", "1.5"],
        f"{DETECTIONS}: no usable person box among its 118 detections: 118 below --detScoreThreshold 1.5 "
        "(the highest score is 0.99999)",
    ),
    "no-labelled-person": (
        lambda f: [
            "--valAnnotation",
            edit_copy(
                f, "unlabelled.json", lambda d: [a.update(keypoints=[0] * 51) for a in d["annotations"]]
            ),
        ],
        "unlabelled.json: no usable person among its 14 annotations: 14 without a labelled keypoint (v > 0)",
    ),
}


def edit_copy(folder: Path, name: str, change) -> str:
    data = json.loads((folder / "test_coco.json").read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))
    return name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A one-epoch checkpoint of the tiny model on the COCO fixture, for -test."""
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DATA} (clone the project next to shared/)")
    root = tmp_path_factory.mktemp("coco-checkpoint")
    folder = copy_fixture(SHARED_DATA / "coco_mini", root / "coco")
    assert entry.main([*coco_args(folder, root / "exp"), "--expID", "m"]) == 0
    return root / "exp" / "m" / "last.pth"


@pytest.mark.e2e
@pytest.mark.parametrize("cause", EMPTY_CAUSES)
def test_empty_validation_set_stops_before_training_in_one_line(
    cause, coco_copy, tmp_path, monkeypatch, capsys
):
    extra, reason = EMPTY_CAUSES[cause]
    args = coco_args(coco_copy, tmp_path / "exp", *extra(coco_copy), "--expID", "e")
    status, lines = run_cli(monkeypatch, capsys, args, no_epoch=True)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0] == f"main.py: error: empty validation set: {coco_copy / reason}"
    assert not (tmp_path / "exp" / "e" / "last.pth").exists()
    # skipping bad samples does not make an empty set usable
    status, lines = run_cli(monkeypatch, capsys, [*args[:-1], "e2", "--skipBadSamples", "1"], no_epoch=True)
    assert status == 2 and lines == [f"main.py: error: empty validation set: {coco_copy / reason}"]


@pytest.mark.e2e
@pytest.mark.parametrize("cause", ["no-detections", "no-labelled-person"])
def test_empty_validation_set_stops_test_in_one_line(
    cause, checkpoint, coco_copy, tmp_path, monkeypatch, capsys
):
    extra, reason = EMPTY_CAUSES[cause]
    args = ["-test", "--loadModel", str(checkpoint), "--dataDir", str(coco_copy), "--expDir", str(tmp_path)]
    status, lines = run_cli(monkeypatch, capsys, [*args, *extra(coco_copy)], no_epoch=True)
    assert status == 2 and lines == [f"main.py: error: empty validation set: {coco_copy / reason}"]


# ---------------------------------------------------------------------------------------------
# What the readers pass over, one note each (stderr and log.txt)
# ---------------------------------------------------------------------------------------------


def test_passed_over_annotations_and_detections_are_noted(coco_copy, capsys):
    def change(data):
        annotation(data, 198196)["iscrowd"] = 1
        annotation(data, 230195)["category_id"] = 2
        data["categories"].append({"id": 2, "name": "dog", "supercategory": "animal"})

    edit_json(coco_copy / "test_coco.json", change)
    dataset = coco(coco_copy)
    assert len(dataset) == 10
    assert dataset.notes == [
        f"{coco_copy / 'test_coco.json'}: read 10 persons; not read: 1 marked as crowd (iscrowd 1), "
        "1 not of category 1, 2 without a labelled keypoint (v > 0)"
    ]
    # COCOeval scores the keypoint category only: the ground truth still scores 1.0
    assert dataset.evaluate(gt_as_results(dataset))["AP"] == 1.0

    def spoil(boxes):
        boxes[0]["bbox"][2] = 0.0  # a box with no width, dropped
        boxes[1]["category_id"] = 3
        return boxes

    write_detections(coco_copy, "dets.json", spoil)
    detections = coco(coco_copy, bbox_file="dets.json", det_score_threshold=0.5)
    assert detections.notes == [
        f"{coco_copy / 'dets.json'}: 17 of 118 detections used; not used: 1 not of category 1, "
        "99 below --detScoreThreshold 0.5, 1 with width or height <= 0"
    ]
    err = capsys.readouterr().err
    assert all(err.count(f"note: {line}") == 1 for line in dataset.notes + detections.notes)


@pytest.mark.e2e
def test_notes_reach_log_txt(coco_copy, tmp_path):
    edit_json(coco_copy / "test_coco.json", disagreeing_num_keypoints)
    assert entry.main([*coco_args(coco_copy, tmp_path / "exp"), "--expID", "n"]) == 0
    log = (tmp_path / "exp" / "n" / "log.txt").read_text().splitlines()
    notes = [line for line in log if line.startswith("note: ")]
    assert notes == [
        f"note: {coco_copy / 'test_coco.json'}: num_keypoints disagrees with the labelled keypoints (v > 0) of 2 "
        "annotations (ids 230195, 460541); the count from the keypoints is used, for training and COCOeval alike",
        f"note: {coco_copy / 'test_coco.json'}: read 11 persons; not read: 3 without a labelled keypoint (v > 0)",
    ]


# ---------------------------------------------------------------------------------------------
# MPII: the missing-joint marker marked visible, and PCKh without head sizes
# ---------------------------------------------------------------------------------------------


def test_mpii_json_joint_at_minus_one_is_unlabelled(mpii_copy, capsys):
    def change(items):
        items[1]["joints"][3], items[1]["joints_vis"][3] = [-1.0, -1.0], 1  # the marker, marked annotated
        items[2]["joints"][4], items[2]["joints_vis"][4] = [-1.0, -1.0], 1
        items[3]["joints"][2] = [-1.0, items[3]["joints"][2][1]]  # one coordinate only: a real point

    edit_json(mpii_copy / "test_mpii.json", change)
    dataset = MPIIDataset(mpii_copy, "valid", CODEC, INPUT, annotation_file="test_mpii.json")
    assert dataset.records[1]["visible"][3] == 0 and dataset.records[2]["visible"][4] == 0
    assert dataset.records[3]["visible"][2] == 1
    assert dataset[1]["target_weight"][3] == 0  # not trained on
    line = (
        f"{mpii_copy / 'test_mpii.json'}: 2 joints marked annotated at negative x and y (where MPII's missing "
        f"joints are put, (-1, -1)) read as unlabelled"
    )
    assert line in dataset.notes and f"note: {line}" in capsys.readouterr().err


def test_mpii_h5_joint_at_minus_one_is_unlabelled(mpii_copy):
    def change(fields):
        fields["part"][0, 5] = (-1.0, -1.0)

    edit_h5(mpii_copy / "valid_first5.h5", change)
    dataset = MPIIDataset(mpii_copy, "valid", CODEC, INPUT, annotation_file="valid_first5.h5")
    assert dataset.records[0]["visible"][5] == 0 and dataset.records[0]["visible"].sum() == 15
    assert any("1 joint marked annotated at negative x and y" in line for line in dataset.notes)


def test_mpii_without_head_sizes_notes_the_pck_fallback(mpii_copy):
    with_sizes = MPIIDataset(mpii_copy, "valid", CODEC, INPUT, annotation_file="valid_first5.h5")
    assert with_sizes.main_metric == "PCKh" and not with_sizes.notes

    def drop_normalize(fields):
        del fields["normalize"]

    edit_h5(mpii_copy / "valid_first5.h5", drop_normalize)
    with h5py.File(mpii_copy / "valid_first5.h5") as f:
        assert "normalize" not in f
    dataset = MPIIDataset(mpii_copy, "valid", CODEC, INPUT, annotation_file="valid_first5.h5")
    assert dataset.main_metric == "PCK"
    assert dataset.notes == [
        f"{mpii_copy / 'valid_first5.h5'}: no head sizes (no HDF5 'normalize', no --headBoxesMat, no "
        "gt_valid.mat beside it): PCKh cannot be scored, so PCK is reported (and picks best.pth)"
    ]
    # a training split needs no head sizes: no note
    assert not MPIIDataset(mpii_copy, "train", CODEC, INPUT, annotation_file="valid_first5.h5").notes
