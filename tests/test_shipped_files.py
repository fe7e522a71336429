"""Keypoint files as they ship (issue 31): COCO-format files that leave out ``area`` and ``iscrowd``
(CrowdPose), keypoint names in another order than the joint spec's, images skipped at load time,
ground truth with no person to score, an ``image_id`` that is a string, a UTF-8 byte-order mark,
and an ``--expDir`` that cannot be written. Each case runs on a modified copy of the shared COCO
fixture and either scores as the reference tools do (ground truth as predictions: AP 1.0) or
stops with one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main as entry
from conftest import REPO_ROOT, TINY_RUN, edit_json, parse_error, python_module, read_metrics
from datasets.base import DataError
from datasets.coco import COCODataset
from datasets.codecs import HeatmapCodec
from datasets.custom import parse_spec
from datasets.validation import BadDataPolicy
from metrics.coco import COCO_SIGMAS

INPUT, HEATMAP = (48, 64), (12, 16)
CODEC = HeatmapCodec(INPUT, HEATMAP, 1.0)
SKIP = BadDataPolicy(skip=True, max_fraction=0.5)
ANNOTATION = "test_coco.json"

# CrowdPose's 14 joints in its file's order, and its OKS sigmas (as MMPose scores it)
CROWDPOSE = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]  # fmt: skip
# CrowdPose's limbs have COCO's sigmas; its head and neck 0.079
CROWDPOSE_SIGMAS = [*(float(s) for s in COCO_SIGMAS[5:]), 0.079, 0.079]


def crowdpose_like(source: Path) -> dict:
    """The COCO fixture as CrowdPose ships its files: 14 joints (head from the nose, neck between
    the shoulders), no ``area``, no ``iscrowd``."""
    from datasets.skeletons import COCO_JOINTS

    data = json.loads(source.read_text())
    for ann in data["annotations"]:
        coco = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        rows = [coco[COCO_JOINTS.index(name)] for name in CROWDPOSE[:12]]
        rows.append(coco[COCO_JOINTS.index("nose")])
        shoulders = coco[[5, 6]]
        rows.append([*shoulders[:, :2].mean(axis=0), 2] if (shoulders[:, 2] > 0).all() else [0, 0, 0])
        ann["keypoints"] = [
            float(v) if i % 3 < 2 else int(v) for i, v in enumerate(np.asarray(rows).reshape(-1))
        ]
        ann["num_keypoints"] = int(sum(1 for row in rows if row[2] > 0))
        del ann["area"], ann["iscrowd"]
    category = data["categories"][0]
    category["keypoints"] = list(CROWDPOSE)
    category["skeleton"] = [[1, 2], [13, 14]]
    return data


def crowdpose_spec(names: list[str] = CROWDPOSE) -> dict:
    sigma = dict(zip(CROWDPOSE, CROWDPOSE_SIGMAS, strict=True))
    pairs = [[a, a.replace("left", "right")] for a in names if a.startswith("left")]
    return {"name": "crowdpose", "joints": names, "flip_pairs": pairs, "skeleton": [["left_shoulder", "right_shoulder"]],
            "sigmas": [sigma.get(name, 0.079) for name in names]}  # fmt: skip


@pytest.fixture
def crowdpose(coco_copy: Path) -> Path:
    """The CrowdPose-like annotation file, beside the fixture's images."""
    path = coco_copy / "crowdpose.json"
    path.write_text(json.dumps(crowdpose_like(coco_copy / ANNOTATION)))
    return path


def ground_truth_results(dataset: COCODataset, indices=None, noise: float = 0.0) -> dict[str, np.ndarray]:
    """What engine.predict_all returns when the model predicts each record's own joints (plus
    ``noise`` px, seeded by the annotation id, so a set of persons scores the same whichever
    others are read), for the records ``indices`` (default all)."""
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    records = [dataset.records[int(i)] for i in indices]
    joints = np.stack([np.asarray(r["joints"], dtype=np.float64) for r in records])
    for row, record in zip(joints, records, strict=True):
        row += np.random.default_rng(record["annotation_id"]).normal(0.0, noise, row.shape)
    visible = np.stack([np.asarray(r["visible"], dtype=np.float32) for r in records])
    return {
        "index": indices, "preds": joints, "scores": np.where(visible > 0, 1.0, 0.5),
        "joints": joints, "visible": visible, "scale": np.array([r["scale"] for r in records]),
        "image_id": np.array([r["image_id"] for r in records]), "box_score": np.ones(len(records)),
        "head_size": np.full(len(records), np.nan), "loss": np.zeros(len(records)),
    }  # fmt: skip


def reader(folder: Path, annotation: str, spec: dict | None = None, **kwargs) -> COCODataset:
    joint_spec = parse_spec(spec) if spec is not None else None
    return COCODataset(
        folder, "val2017", CODEC, INPUT, annotation_file=annotation, joint_spec=joint_spec, **kwargs
    )


def results_file(annotation: Path, target: Path) -> Path:
    """The file's own labelled persons as a results file (score 1), as the fixture's README scores it."""
    gt = json.loads(annotation.read_text())
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
        if any(v > 0 for v in a["keypoints"][2::3])
    ]
    target.write_text(json.dumps(results))
    return target


# --- fields that files in the wild leave out -----------------------------------------------------


def test_a_file_without_area_and_iscrowd_scores_as_the_reference_tools_score_it(crowdpose, tmp_path, capsys):
    dataset = reader(crowdpose.parent, crowdpose.name, crowdpose_spec())
    notes = capsys.readouterr().err
    assert notes.count("14 annotations have no 'area': 0.53 x its box area is used") == 1, notes
    assert notes.count("14 annotations have no 'iscrowd': 0 is used") == 1, notes
    # xtcocotools' rule, in the ground truth COCOeval scores against
    for ann in dataset.coco.dataset["annotations"]:
        assert ann["area"] == pytest.approx(0.53 * ann["bbox"][2] * ann["bbox"][3]) and ann["iscrowd"] == 0
    assert dataset.evaluate(ground_truth_results(dataset))["AP"] == pytest.approx(1.0)

    # python -m metrics.coco reads the file the same way
    spec = tmp_path / "crowdpose_spec.json"
    spec.write_text(json.dumps(crowdpose_spec()))
    scored = python_module(
        "metrics.coco",
        str(crowdpose),
        str(results_file(crowdpose, tmp_path / "r.json")),
        "--jointSpec",
        str(spec),
        "--json",
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["AP"] == pytest.approx(1.0)
    assert scored.stderr.count("no 'area'") == 1 and scored.stderr.count("no 'iscrowd'") == 1, scored.stderr


@pytest.mark.e2e
def test_a_crowdpose_like_file_trains_one_epoch_and_tests_with_a_custom_spec(crowdpose, tmp_path):
    spec = tmp_path / "crowdpose_spec.json"
    spec.write_text(json.dumps(crowdpose_spec()))
    runs = tmp_path / "runs"
    args = [
        *TINY_RUN, "-DataConfig", str(REPO_ROOT / "conf/datasets/custom.defconf"), "--dataset", "custom",
        "--dataDir", str(crowdpose.parent), "--trainAnnotation", crowdpose.name, "--valAnnotation", crowdpose.name,
        "--imageDir", ".", "--jointSpec", str(spec), "--expDir", str(runs), "--nEpochs", "1", "--tensorboard", "0",
    ]  # fmt: skip
    assert entry.main([*args, "--expID", "train"]) == 0
    assert 0.0 <= read_metrics(runs / "train")[-1]["AP"] <= 1.0
    assert entry.main(["-test", "--loadModel", str(runs / "train" / "last.pth"), "--expID", "test"]) == 0
    tested = read_metrics(runs / "test")[-1]
    assert 0.0 <= tested["AP"] <= 1.0 and 0.0 <= tested["AR"] <= 1.0


# --- joint names -------------------------------------------------------------------------------


def test_joint_names_in_another_order_are_matched_by_name(crowdpose, tmp_path, capsys):
    names = ["head", "neck", *CROWDPOSE[:12]]  # as a user who lists the head first writes them
    dataset = reader(crowdpose.parent, crowdpose.name, crowdpose_spec(names))
    notes = capsys.readouterr().err
    assert "lists the joint set's 14 keypoints in another order" in notes
    assert "the joint set's joint 0 'head' is the file's keypoint 12" in notes
    # each record's joints are in the spec's order: the head comes first
    ann = next(
        a for a in dataset.coco.dataset["annotations"] if a["id"] == dataset.records[0]["annotation_id"]
    )
    assert np.allclose(
        dataset.records[0]["joints"][0], np.asarray(ann["keypoints"][36:38]) * (ann["keypoints"][38] > 0)
    )
    # flip pairs and sigmas follow the names; COCOeval and results.json take the file's order
    assert dataset.evaluate(ground_truth_results(dataset), tmp_path)["AP"] == pytest.approx(1.0)
    written = json.loads((tmp_path / "results.json").read_text())
    by_image = {}
    for result in written:
        by_image.setdefault(result["image_id"], []).append(np.asarray(result["keypoints"]).reshape(14, 3))
    for ann in dataset.coco.dataset["annotations"]:
        truth = np.asarray(ann["keypoints"], dtype=np.float64).reshape(14, 3)
        if (truth[:, 2] > 0).any():
            labelled = truth[:, 2] > 0
            assert any(np.allclose(r[labelled, :2], truth[labelled, :2]) for r in by_image[ann["image_id"]])


def test_a_joint_name_the_file_does_not_list_is_one_line_naming_the_position(
    crowdpose, tmp_path, monkeypatch, capsys
):
    renamed = [*CROWDPOSE[:13], "thorax"]
    with pytest.raises(DataError) as error:
        reader(crowdpose.parent, crowdpose.name, crowdpose_spec(renamed))
    message = str(error.value)
    assert "\n" not in message
    assert (
        f"{crowdpose}: category 1 (person): keypoints[13] is 'neck' but the joint set's joint 13 is 'thorax'"
        in message
    )

    # through main.py: exit 2, one line
    spec = tmp_path / "renamed.json"
    spec.write_text(json.dumps(crowdpose_spec(renamed)))
    args = [*TINY_RUN, "-DataConfig", str(REPO_ROOT / "conf/datasets/custom.defconf"), "--dataset", "custom",
            "--dataDir", str(crowdpose.parent), "--trainAnnotation", crowdpose.name, "--valAnnotation", crowdpose.name,
            "--imageDir", ".", "--jointSpec", str(spec), "--expDir", str(tmp_path / "runs"), "--nEpochs", "1"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "main.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "keypoints[13] is 'neck' but the joint set's joint 13 is 'thorax'" in lines[0]

    # COCO's own reader checks COCO's names the same way
    edit_json(
        crowdpose.parent / ANNOTATION, lambda d: d["categories"][0]["keypoints"].__setitem__(3, "l_ear")
    )
    with pytest.raises(
        DataError, match=r"keypoints\[3\] is 'l_ear' but the joint set's joint 3 is 'left_ear'"
    ):
        reader(crowdpose.parent, ANNOTATION)


# --- samples skipped at load time ----------------------------------------------------------------


def test_the_persons_of_a_skipped_image_leave_the_ground_truth(coco_copy, capsys):
    """As predict_all returns them: no prediction for the bad image's persons. They are scored as
    if the file did not have them (the image's annotations deleted), and a note says so."""
    spoilt = reader(coco_copy, ANNOTATION, policy=SKIP)
    bad = [i for i in range(len(spoilt)) if spoilt.records[i]["image_id"] == 785]
    assert bad  # the image's persons
    (coco_copy / "000000000785.jpg").write_bytes((coco_copy / "000000000785.jpg").read_bytes()[:5000])
    for index in range(len(spoilt)):
        spoilt[index]  # marks the truncated image's samples bad (as the loader does)
    assert spoilt.bad_indices() == bad
    kept = [i for i in range(len(spoilt)) if i not in bad]
    capsys.readouterr()
    scored = spoilt.evaluate(ground_truth_results(spoilt, kept, noise=3.0))
    assert (
        f"AP over {len(kept)} of {len(spoilt)} persons: {len(bad)} skipped, see bad_samples.txt"
        in capsys.readouterr().err
    )

    edit_json(
        coco_copy / ANNOTATION,
        lambda d: d.__setitem__("annotations", [a for a in d["annotations"] if a["image_id"] != 785]),
    )
    without = reader(coco_copy, ANNOTATION)
    assert len(without) == len(kept)
    expected = without.evaluate(ground_truth_results(without, noise=3.0))
    assert 0.2 < expected["AP"] < 1.0  # the noise makes it a real comparison
    assert scored == pytest.approx(expected)


def test_with_detection_boxes_a_skipped_image_is_left_out_whole(coco_copy, tmp_path, capsys):
    """Its detections could not be loaded, so its persons would count as misses: the image goes."""
    boxes = "test_coco_det_AP_H_56.json"
    (coco_copy / "000000000785.jpg").write_bytes((coco_copy / "000000000785.jpg").read_bytes()[:5000])
    dataset = reader(coco_copy, ANNOTATION, policy=SKIP, bbox_file=boxes, det_score_threshold=0.5)
    good = []
    for index in range(len(dataset)):
        if dataset[index]["meta"]["index"] == index:
            good.append(index)
    assert all(dataset.records[i]["image_id"] != 785 for i in good) and len(good) < len(dataset)
    results = {
        "index": np.asarray(good), "preds": np.zeros((len(good), 17, 2)), "scores": np.full((len(good), 17), 0.9),
        "joints": np.zeros((len(good), 17, 2)), "visible": np.zeros((len(good), 17)),
        "scale": np.array([dataset.records[i]["scale"] for i in good]),
        "image_id": np.array([dataset.records[i]["image_id"] for i in good]),
        "box_score": np.array([dataset.records[i]["box_score"] for i in good]),
        "head_size": np.full(len(good), np.nan), "loss": np.zeros(len(good)),
    }  # fmt: skip
    capsys.readouterr()
    dataset.evaluate(results, tmp_path)
    annotations = json.loads((coco_copy / ANNOTATION).read_text())["annotations"]
    persons = sum(1 for a in annotations if a["image_id"] == 785 and a["num_keypoints"] > 0)
    assert f"AP over {12 - persons} of 12 persons: {persons} skipped" in capsys.readouterr().err
    assert {r["image_id"] for r in json.loads((tmp_path / "results.json").read_text())} == {
        40083,
        196141,
        197388,
    }


@pytest.mark.e2e
def test_test_on_a_set_with_a_skipped_image_equals_test_on_the_set_without_it(coco_copy, tmp_path, capsys):
    runs = tmp_path / "runs"
    data = ["-DataConfig", str(REPO_ROOT / "conf/datasets/coco.defconf"), "--dataDir", str(coco_copy),
            "--trainAnnotation", ANNOTATION, "--valAnnotation", ANNOTATION, "--imageDir", ".", "--tensorboard", "0"]  # fmt: skip
    assert entry.main([*TINY_RUN, *data, "--expDir", str(runs), "--nEpochs", "1", "--expID", "train"]) == 0
    checkpoint = str(runs / "train" / "last.pth")

    skipped = tmp_path / "skipped"
    skipped.mkdir()
    for path in coco_copy.iterdir():
        (skipped / path.name).write_bytes(path.read_bytes())
    (skipped / "000000000785.jpg").write_bytes((coco_copy / "000000000785.jpg").read_bytes()[:5000])
    test = ["-test", "--loadModel", checkpoint, "--dataDir"]
    capsys.readouterr()
    skip = ["--skipBadSamples", "1", "--maxBadFraction", "0.5", "--expID", "skipped"]
    assert entry.main([*test, str(skipped), *skip]) == 0
    assert re.search(
        r"AP over \d+ of 12 persons: [1-9]\d* skipped, see bad_samples.txt", capsys.readouterr().err
    )
    edit_json(
        coco_copy / ANNOTATION,
        lambda d: d.__setitem__("annotations", [a for a in d["annotations"] if a["image_id"] != 785]),
    )
    assert entry.main([*test, str(coco_copy), "--expID", "without"]) == 0
    with_skip, without = read_metrics(runs / "skipped")[-1], read_metrics(runs / "without")[-1]
    assert {key: with_skip[key] for key in ("AP", "AR", "PCK")} == {
        key: without[key] for key in ("AP", "AR", "PCK")
    }
    assert "000000000785.jpg" in (runs / "skipped" / "bad_samples.txt").read_text()


def test_one_bad_image_of_twelve_says_how_to_allow_it(coco_copy):
    (coco_copy / "000000040083.jpg").write_text("not a picture")
    dataset = reader(coco_copy, ANNOTATION, policy=BadDataPolicy(skip=True))  # --maxBadFraction 0.01
    with pytest.raises(DataError) as error:
        for index in range(len(dataset)):
            dataset[index]
    assert "more than --maxBadFraction 0.01 allows (0 of 12; --maxBadFraction 0.084 allows 1)" in str(
        error.value
    )


# --- what metrics.coco refuses, as training does --------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.__setitem__("annotations", []), "holds no annotations"),
        (lambda d: [a.__setitem__("category_id", 2) for a in d["annotations"]], "14 not of category 1"),
    ],
    ids=["no-annotations", "another-category"],
)
def test_metrics_coco_refuses_ground_truth_without_a_person(coco_copy, tmp_path, change, reason):
    results = results_file(coco_copy / ANNOTATION, tmp_path / "r.json")
    edit_json(coco_copy / ANNOTATION, change)
    scored = python_module("metrics.coco", str(coco_copy / ANNOTATION), str(results))
    lines = scored.stderr.strip().splitlines()
    assert scored.returncode == 2 and len(lines) == 1, scored.stderr
    assert (
        lines[0].startswith(f"python -m metrics.coco: error: {coco_copy / ANNOTATION}: ")
        and reason in lines[0]
    )


# --- smaller things files do ---------------------------------------------------------------------


def test_an_image_id_given_as_a_string_is_named(coco_copy):
    edit_json(coco_copy / ANNOTATION, lambda d: d["annotations"][0].__setitem__("image_id", "785"))
    with pytest.raises(DataError) as error:
        reader(coco_copy, ANNOTATION)
    assert (
        "annotation 442619: image_id '785' is a str, not a whole number (an image has that id as a number)"
        in str(error.value)
    )


def test_a_utf8_byte_order_mark_is_read_with_a_note(coco_copy, tmp_path, capsys):
    path = coco_copy / ANNOTATION
    results = results_file(path, tmp_path / "r.json")
    path.write_bytes("\ufeff".encode() + path.read_bytes())
    dataset = reader(coco_copy, ANNOTATION)
    assert f"{path}: starts with a UTF-8 byte-order mark; read without it" in capsys.readouterr().err
    assert len(dataset) == 12
    scored = python_module("metrics.coco", str(path), str(results), "--json")
    assert scored.returncode == 0 and json.loads(scored.stdout)["AP"] == pytest.approx(1.0), scored.stderr
    assert "byte-order mark" in scored.stderr


def test_an_exp_dir_that_cannot_be_written_is_one_line_before_any_data(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for exp_dir in (a_file, a_file / "runs"):
        message = parse_error(capsys, [*TINY_RUN, "--expDir", str(exp_dir)])
        assert f"expDir: {a_file} is a file, not a folder" in message, message

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)], capture_output=True
    )
    if made.returncode != 0:  # not root: permissions stop a non-root writer
        read_only.chmod(0o500)
    try:
        message = parse_error(capsys, [*TINY_RUN, "--expDir", str(read_only / "runs")])
        assert f"expDir: cannot write in {read_only} (" in message, message
    finally:
        if made.returncode == 0:
            subprocess.run(["umount", "-l", str(read_only)], capture_output=True)
        read_only.chmod(0o700)
