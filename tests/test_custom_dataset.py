"""--dataset custom: a joint spec file plus COCO-format annotations.

The data are the COCO fixture cut down to a subset of its joints (face and shoulders), written
into tmp_path with the fixture's images named through --imageDir; the spec's sigmas are COCO's
for those joints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main as entry
from build import JOINT_SPECS, joint_spec_of
from conftest import REPO_ROOT, TINY_RUN, parse_error
from datasets import build_datasets, list_datasets
from datasets.base import Augmentation
from datasets.coco import COCODataset
from datasets.codecs import HeatmapCodec
from datasets.custom import CustomDataset, load_joint_spec, parse_spec, spec_to_json
from datasets.registry import DataRequest, get_dataset_entry, register_dataset
from datasets.skeletons import COCO_JOINTS
from metrics.coco import COCO_SIGMAS, evaluate_keypoints
from utils.options import DATASETS, parse_options

FACE = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder"]
LIMBS = [name for name in COCO_JOINTS.names[5:]]  # shoulders to ankles: 12 joints, both halves


def make_spec(names: list[str], name: str = "face-shoulders") -> dict:
    index = {joint: i for i, joint in enumerate(COCO_JOINTS.names)}
    kept = set(names)
    return {
        "name": name,
        "joints": names,
        "flip_pairs": [[COCO_JOINTS.names[a], COCO_JOINTS.names[b]] for a, b in COCO_JOINTS.flip_pairs
                       if {COCO_JOINTS.names[a], COCO_JOINTS.names[b]} <= kept],
        "skeleton": [[COCO_JOINTS.names[a], COCO_JOINTS.names[b]] for a, b in COCO_JOINTS.skeleton
                     if {COCO_JOINTS.names[a], COCO_JOINTS.names[b]} <= kept],
        "sigmas": [float(COCO_SIGMAS[index[joint]]) for joint in names],
    }  # fmt: skip


def subset_annotations(source: Path, names: list[str]) -> dict:
    """The COCO file with every annotation's keypoints sliced to ``names`` (and counts redone)."""
    data = json.loads(source.read_text())
    columns = [COCO_JOINTS.index(joint) for joint in names]
    for ann in data["annotations"]:
        keypoints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)[columns]
        ann["keypoints"] = [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(keypoints.reshape(-1))]
        ann["num_keypoints"] = int((keypoints[:, 2] > 0).sum())
    position = {joint: i for i, joint in enumerate(names)}
    for category in data["categories"]:
        category["keypoints"] = list(names)
        category["skeleton"] = [[position[a] + 1, position[b] + 1] for a, b in make_spec(names)["skeleton"]]
    return data


@pytest.fixture
def custom_data(shared_data, tmp_path) -> dict:
    """A face-and-shoulders dataset in tmp_path/data (annotations only) and its spec file."""
    coco = shared_data / "coco_mini"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "face.json").write_text(json.dumps(subset_annotations(coco / "test_coco.json", FACE)))
    spec = tmp_path / "face_spec.json"
    spec.write_text(json.dumps(make_spec(FACE), indent=2))
    return {"data_dir": data_dir, "spec": spec, "images": coco, "annotations": data_dir / "face.json"}


def data_args(custom: dict, **extra: str) -> list[str]:
    args = {
        "--dataDir": str(custom["data_dir"]), "--trainAnnotation": "face.json", "--valAnnotation": "face.json",
        "--imageDir": str(custom["images"]),  # absolute: replaces dataDir
        "--jointSpec": str(custom["spec"]),
    } | extra  # fmt: skip
    config = ["-DataConfig", str(REPO_ROOT / "conf/datasets/custom.defconf"), "--dataset", "custom"]
    return config + [item for pair in args.items() for item in pair]


def ground_truth_results(annotations: Path) -> list[dict]:
    gt = json.loads(annotations.read_text())
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
        if a["num_keypoints"] > 0
    ]


# ---------------------------------------------------------------------------------------------
# The spec: parsing, canonical content, half-body split
# ---------------------------------------------------------------------------------------------


def test_spec_file_becomes_a_joint_spec(custom_data):
    spec = load_joint_spec(custom_data["spec"])
    assert spec.names == tuple(FACE) and spec.name == "face-shoulders"
    assert spec.flip_pairs == ((1, 2), (3, 4), (5, 6))
    assert (0, 1) in spec.skeleton and (5, 6) in spec.skeleton
    assert spec.sigmas == pytest.approx([0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079])
    assert spec.flip_permutation().tolist() == [0, 2, 1, 4, 3, 6, 5]
    # the content a run records reads back to the same spec, without the file
    assert load_joint_spec(spec_to_json(spec)) == spec
    # face and shoulders are all upper body: no half-body split
    assert not spec.has_half_body


def test_half_body_split_is_derived_or_given():
    limbs = parse_spec(make_spec(LIMBS, "limbs"))
    assert [limbs.names[i] for i in limbs.upper_body] == LIMBS[:6]  # shoulders, elbows, wrists
    assert [limbs.names[i] for i in limbs.lower_body] == LIMBS[6:]  # hips, knees, ankles
    assert load_joint_spec(spec_to_json(limbs)) == limbs

    own_names = make_spec(FACE) | {"joints": ["a", "b", "c", "d", "e", "f", "g"], "flip_pairs": [],
                                   "skeleton": [["a", "b"]]}  # fmt: skip
    assert not parse_spec(own_names).has_half_body  # not COCO names and no upper_body: none
    given = parse_spec(own_names | {"upper_body": ["c", "a"]})
    assert given.upper_body == (0, 2) and given.lower_body == (1, 3, 4, 5, 6)


def test_coco_is_the_same_reader_with_cocos_spec():
    assert get_dataset_entry("COCO").joint_spec is COCO_JOINTS
    assert np.array_equal(COCO_JOINTS.sigmas, COCO_SIGMAS)
    assert COCO_JOINTS.upper_body == tuple(range(11)) and COCO_JOINTS.lower_body == tuple(range(11, 17))
    assert issubclass(CustomDataset, COCODataset)


# ---------------------------------------------------------------------------------------------
# Registry and options
# ---------------------------------------------------------------------------------------------


def test_registry_lists_every_dataset_and_builds_by_name():
    assert sorted(list_datasets()) == sorted(DATASETS)  # in any order: no module's import order matters
    assert set(JOINT_SPECS) == {"synthetic", "MPII", "COCO"}
    built = []

    @register_dataset("_Probe", needs_data_dir=False)
    def probe(request: DataRequest, train: bool):
        built.append((train, request.seed))
        return "train" if train else "val"

    try:
        codec = HeatmapCodec((32, 32), (8, 8), sigma=1.0)
        assert build_datasets("_probe", codec, (32, 32), Augmentation(), 5) == ("train", "val")
        assert built == [(False, 5), (True, 5)]
    finally:
        from datasets import registry

        registry.DATASET_REGISTRY.remove("_Probe")


def test_options_take_joints_from_the_spec(custom_data, tmp_path):
    opts = parse_options([*data_args(custom_data), "--expDir", str(tmp_path)])
    assert opts.dataset == "custom" and opts.nJoints == len(FACE)
    assert joint_spec_of(opts) == load_joint_spec(custom_data["spec"]) == opts.joint_spec
    # the run records the content, not the path
    assert opts.config["jointSpec"] == spec_to_json(opts.joint_spec)


def test_typed_dataset_does_not_inherit_the_demo_data_config(custom_data, tmp_path):
    """--dataset custom without -DataConfig: the demo data config (synthetic.defconf, nJoints 16,
    flipProb 0) is not applied; the demo model config still is."""
    typed = ["--dataset", "custom", "--jointSpec", str(custom_data["spec"]), "--dataDir",
             str(custom_data["data_dir"]), "--expDir", str(tmp_path)]  # fmt: skip
    opts = parse_options(typed)
    assert opts.nJoints == len(FACE)
    assert opts.flipProb == 0.5 and opts.flipTest  # the parser's defaults, not synthetic.defconf's 0
    assert opts.nChannels == 64 and opts.nStack == 2  # conf/models/StackedHourGlass-demo.defconf
    demo = parse_options(["--dataset", "synthetic", "--expDir", str(tmp_path)])
    assert demo.flipProb == 0 and demo.nJoints == 16  # the demo dataset keeps its config


def test_half_body_crops_follow_the_spec(shared_data, tmp_path):
    """A shoulders-to-ankles spec takes COCO's split: its persons get half-body crops."""
    (tmp_path / "limbs.json").write_text(
        json.dumps(subset_annotations(shared_data / "coco_mini/test_coco.json", LIMBS))
    )
    codec = HeatmapCodec((24, 32), (6, 8), sigma=1.0)
    common = {"annotation_file": "limbs.json", "image_dir": str(shared_data / "coco_mini"),
              "joint_spec": parse_spec(make_spec(LIMBS, "limbs"))}  # fmt: skip
    augment = Augmentation(max_scale=0.25, flip_prob=0.5)
    cut = CustomDataset(tmp_path, "train2017", codec, (24, 32), augment, 1, half_body_prob=1.0, **common)
    plain = CustomDataset(tmp_path, "train2017", codec, (24, 32), augment, 1, **common)
    assert cut.half_body_min_joints == 6  # more than 6 of 12 labelled, as HRNet's 8 of 17
    eligible = [i for i, r in enumerate(cut.records) if r["visible"].sum() > 6]
    assert eligible
    for i in eligible:
        record = cut.records[i]
        rng = np.random.default_rng([cut.seed, cut.epoch, i, 1])
        rng.random()
        upper_first = rng.normal() < 0.5
        upper = [j for j in cut.joint_spec.upper_body if record["visible"][j] > 0]
        lower = [j for j in cut.joint_spec.lower_body if record["visible"][j] > 0]
        chosen = upper if upper_first and len(upper) > 2 else (lower if len(lower) > 2 else upper)
        points = record["joints"][chosen]
        width, height = points.max(axis=0) - points.min(axis=0)
        expected = max(height, width / cut.aspect_ratio) * 1.5
        full = plain.sample_transform(i)[1]
        assert cut.sample_transform(i)[1] == pytest.approx(full * expected / record["scale"], rel=1e-5)


def test_half_body_is_off_for_a_spec_without_a_split(custom_data, capsys):
    codec = HeatmapCodec((24, 32), (6, 8), sigma=1.0)
    spec = load_joint_spec(custom_data["spec"])
    common = {"annotation_file": "face.json", "image_dir": str(custom_data["images"]), "joint_spec": spec}
    augment = Augmentation(max_scale=0.25, flip_prob=0.5)
    cut = CustomDataset(
        custom_data["data_dir"], "train2017", codec, (24, 32), augment, 1, half_body_prob=1.0, **common
    )
    plain = CustomDataset(custom_data["data_dir"], "train2017", codec, (24, 32), augment, 1, **common)
    assert len(cut) == len(plain) > 0 and cut.half_body_min_joints == 3
    for i in range(len(cut)):
        (center, height), (plain_center, plain_height) = (
            cut.sample_transform(i)[:2],
            plain.sample_transform(i)[:2],
        )
        assert np.array_equal(center, plain_center) and height == plain_height
    err = capsys.readouterr().err
    assert (
        "note: halfBodyProb 1 has no effect: joint set 'face-shoulders' has no upper/lower body split" in err
    )


BAD_SPECS = {
    "unknown name in a flip pair": (
        lambda s: s | {"flip_pairs": [["left_eye", "rigth_eye"]]},
        "key 'flip_pairs': pair 0 names unknown joint 'rigth_eye'; did you mean 'right_eye'?",
    ),
    "unknown name in the skeleton": (
        lambda s: s | {"skeleton": [["nose", "left_eye"], ["nose", "chin"]]},
        "key 'skeleton': pair 1 names unknown joint 'chin'",
    ),
    "joint paired with itself": (
        lambda s: s | {"flip_pairs": [["nose", "nose"]]},
        "key 'flip_pairs': pair 0 pairs joint 'nose' with itself",
    ),
    "limb from a joint to itself": (
        lambda s: s | {"skeleton": [["left_ear", "left_ear"]]},
        "key 'skeleton': pair 0 pairs joint 'left_ear' with itself",
    ),
    "too few sigmas": (lambda s: s | {"sigmas": s["sigmas"][:-1]}, "key 'sigmas': 6 values for 7 joints"),
    "too many sigmas": (lambda s: s | {"sigmas": [*s["sigmas"], 0.1]}, "key 'sigmas': 8 values for 7 joints"),
    "a sigma that is no number": (lambda s: s | {"sigmas": [0.0, *s["sigmas"][1:]]}, "key 'sigmas': value 0"),
    "missing key": (lambda s: {k: v for k, v in s.items() if k != "skeleton"}, "missing key 'skeleton'"),
    "misspelt key": (lambda s: s | {"flip_pair": []}, "unknown key 'flip_pair'; did you mean 'flip_pairs'?"),
    "joint listed twice": (lambda s: s | {"joints": [*FACE[:-1], "nose"]}, "key 'joints': joint 'nose' is listed twice"),
    "joint in two flip pairs": (
        lambda s: s | {"flip_pairs": [["left_eye", "right_eye"], ["left_eye", "right_ear"]]},
        "key 'flip_pairs': joint 'left_eye' is in more than one pair",
    ),
    "upper body with an unknown joint": (lambda s: s | {"upper_body": ["neck"]}, "key 'upper_body': unknown joint"),
    "not an object": (lambda s: [s], "expected a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_one_line_naming_file_and_key(custom_data, tmp_path, capsys, case):
    change, expected = BAD_SPECS[case]
    spec = tmp_path / "bad_spec.json"
    spec.write_text(json.dumps(change(make_spec(FACE))))
    err = parse_error(
        capsys, [*data_args(custom_data, **{"--jointSpec": str(spec)}), "--expDir", str(tmp_path)]
    )
    assert err.startswith(f"main.py: error: jointSpec: {spec}: ") and expected in err, err


def test_unreadable_or_missing_spec_file(custom_data, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "joints": [')
    err = parse_error(
        capsys, [*data_args(custom_data, **{"--jointSpec": str(broken)}), "--expDir", str(tmp_path)]
    )
    assert f"jointSpec: {broken}: not valid JSON" in err
    missing = tmp_path / "nowhere.json"
    err = parse_error(
        capsys, [*data_args(custom_data, **{"--jointSpec": str(missing)}), "--expDir", str(tmp_path)]
    )
    assert f"jointSpec: spec file not found: {missing}" in err
    no_spec = [a for a in data_args(custom_data) if a not in ("--jointSpec", str(custom_data["spec"]))]
    err = parse_error(capsys, [*no_spec, "--expDir", str(tmp_path)])
    assert "jointSpec: dataset custom needs --jointSpec SPEC.json" in err
    err = parse_error(capsys, [*data_args(custom_data), "--nJoints", "17", "--expDir", str(tmp_path)])
    assert "nJoints: 17 disagrees with dataset custom (spec 'face-shoulders'), which has 7 joints" in err
    err = parse_error(capsys, [*data_args(custom_data, **{"--dataset": "COCO"}), "--expDir", str(tmp_path)])
    assert "jointSpec: only --dataset custom reads a joint spec" in err


# ---------------------------------------------------------------------------------------------
# Metrics with the spec's sigmas, and a real run
# ---------------------------------------------------------------------------------------------


def test_ground_truth_as_predictions_scores_ap_one_with_custom_sigmas(custom_data):
    spec = load_joint_spec(custom_data["spec"])
    results = ground_truth_results(custom_data["annotations"])
    assert len(results) == 12  # every person with COCO keypoints has some of these 7
    stats = evaluate_keypoints(custom_data["annotations"], results, sigmas=np.asarray(spec.sigmas))
    assert stats["AP"] == 1.0 and stats["AR"] == 1.0
    # the sigmas are the ones used: a shifted pose scores worse with tighter sigmas
    for result in results:
        result["keypoints"] = [v + 3.0 * (i % 3 < 2) for i, v in enumerate(result["keypoints"])]
    loose = evaluate_keypoints(custom_data["annotations"], results, sigmas=np.full(7, 0.2))
    tight = evaluate_keypoints(custom_data["annotations"], results, sigmas=np.asarray(spec.sigmas))
    assert loose["AP"] > tight["AP"]
    # COCO's 17 sigmas are never applied to 7 keypoints
    with pytest.raises(ValueError, match="7 keypoints; COCO's OKS sigmas are for 17"):
        evaluate_keypoints(custom_data["annotations"], results)


def test_dataset_evaluate_uses_the_spec(custom_data):
    """The reader's evaluate (rescoring, OKS-NMS, COCOeval) with GT-box records and GT joints as
    predictions gives AP 1."""
    codec = HeatmapCodec((24, 32), (6, 8), sigma=1.0)
    spec = load_joint_spec(custom_data["spec"])
    dataset = CustomDataset(
        custom_data["data_dir"], "val2017", codec, (24, 32), annotation_file="face.json",
        image_dir=str(custom_data["images"]), joint_spec=spec,
    )  # fmt: skip
    records = dataset.records
    results = {
        "preds": np.stack([r["joints"] for r in records]).astype(np.float64),
        "scores": np.ones((len(records), len(FACE))),
        "image_id": np.array([r["image_id"] for r in records]),
        "box_score": np.ones(len(records)),
        "scale": np.array([r["scale"] for r in records]),
    }
    assert dataset.evaluate(results)["AP"] == 1.0


@pytest.mark.e2e
def test_train_one_epoch_then_test_from_the_checkpoint_alone(custom_data, tmp_path):
    runs = tmp_path / "runs"
    args = [*TINY_RUN, *data_args(custom_data), "--expDir", str(runs)]
    assert entry.main([*args, "--nEpochs", "1", "--expID", "train"]) == 0
    val = [json.loads(line) for line in (runs / "train" / "metrics.jsonl").read_text().splitlines()][-1]
    assert val["split"] == "val" and {"AP", "AP50", "AR", "PCK"} <= set(val) and "PCKh" not in val
    assert 0.0 <= val["AP"] <= 1.0 and 0.0 <= val["PCK"] <= 100.0
    print(f"custom one-epoch val: AP {val['AP']:.4f}, PCK {val['PCK']:.4f}")

    # the checkpoint carries the spec: -test works with the file gone
    custom_data["spec"].unlink()
    checkpoint = str(runs / "train" / "last.pth")
    assert entry.main(["-test", "--loadModel", checkpoint, "--expID", "test"]) == 0
    tested = json.loads((runs / "test" / "metrics.jsonl").read_text())
    assert {"AP", "PCK"} <= set(tested)
    results = json.loads((runs / "test" / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 3 * len(FACE) for r in results)

    # the command-line scorer agrees, given the same sigmas
    sigmas = ",".join(str(s) for s in make_spec(FACE)["sigmas"])
    scored = subprocess.run(
        [sys.executable, "-m", "metrics.coco", str(custom_data["annotations"]), str(runs / "test" / "results.json"),
         "--sigmas", sigmas, "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert tested["AP"] == pytest.approx(json.loads(scored.stdout)["AP"], abs=1e-9)

    # config.defconf's jointSpec line (the spec's JSON) reads back as a config file line
    keys = ("dataset", "dataDir", "trainAnnotation", "valAnnotation", "imageDir", "jointSpec", "expDir")
    lines = (runs / "train" / "config.defconf").read_text().splitlines()
    (tmp_path / "again.defconf").write_text("\n".join(line for line in lines if line.split(":")[0] in keys))
    opts = parse_options(
        ["-DataConfig", str(tmp_path / "again.defconf"), "--nJoints", "7", "--expID", "again"]
    )
    assert opts.joint_spec == load_joint_spec(make_spec_json := json.dumps(make_spec(FACE)))
    assert opts.jointSpec == spec_to_json(load_joint_spec(make_spec_json))
