"""MPII and COCO readers on the real fixtures in ../shared/data (see its README for the files).

The round-trip tests encode each person's ground truth as heatmaps, decode them, map them back
to the original image and score them with the project's metrics: anything lost on the way
(1-based offsets, center/scale conventions, flips) shows up as a PCKh or AP below 100%.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from datasets.base import META_KEYS, Augmentation, DataError
from datasets.coco import COCODataset, box_to_center_scale, half_body_box
from datasets.codecs import HeatmapCodec
from datasets.mpii import MPIIDataset, load_mpii_records
from metrics.coco import evaluate_keypoints, postprocess_results
from metrics.mpii import COLUMNS, load_gt_mat, pckh_table
from utils.transforms import apply_affine, invert_affine

MPII_INPUT, MPII_HEATMAP = (256, 256), (64, 64)
COCO_INPUT, COCO_HEATMAP = (192, 256), (48, 64)
MPII_NAMES = ["005808361.jpg", "052475643.jpg", "051423444.jpg", "004645041.jpg", "060754485.jpg"]
HEAD_JOINTS = (8, 9)  # upper neck and head top: sub-pixel in the JSON, truncated to int in the HDF5
AUGMENT = Augmentation(max_scale=0.25, max_rotate=30.0, rotate_prob=1.0, max_translate=0.05, flip_prob=0.5)


@pytest.fixture
def mpii_dir(shared_data):
    return shared_data / "mpii_mini"


@pytest.fixture
def coco_dir(shared_data):
    return shared_data / "coco_mini"


def mpii_dataset(mpii_dir, layout: str, **kwargs) -> MPIIDataset:
    codec = HeatmapCodec(MPII_INPUT, MPII_HEATMAP, sigma=2.0)
    if layout == "h5":
        return MPIIDataset(mpii_dir, "valid", codec, MPII_INPUT, annotation_file="valid_first5.h5", **kwargs)
    return MPIIDataset(
        mpii_dir,
        "valid",
        codec,
        MPII_INPUT,
        annotation_file="test_mpii.json",
        head_boxes_mat="gt_valid_first5.mat",
        **kwargs,
    )


def coco_dataset(coco_dir, split: str = "val2017", **kwargs) -> COCODataset:
    codec = HeatmapCodec(COCO_INPUT, COCO_HEATMAP, sigma=2.0)
    return COCODataset(coco_dir, split, codec, COCO_INPUT, annotation_file="test_coco.json", **kwargs)


def round_trip(dataset, index: int) -> tuple[np.ndarray, np.ndarray, dict, float]:
    """Decode sample ``index``'s target back to the original image.

    Returns joints (K, 2) original px in the record's joint order (flip undone), target weight
    (K,) in that order, the sample, and the original-image pixels per heatmap pixel.
    """
    sample = dataset[index]
    decoded, _ = dataset.codec.decode(sample["target"].numpy()[None])
    inverse = sample["meta"]["inverse_affine"].astype(np.float64)
    back = apply_affine(decoded[0], inverse)
    weight = sample["target_weight"].numpy()
    if sample["meta"]["flipped"]:
        # channel k holds joint perm[k]; perm is its own inverse
        perm = dataset.joint_spec.flip_permutation()
        back, weight = back[perm], weight[perm]
    input_px = np.sqrt(abs(np.linalg.det(inverse[:, :2])))  # original px per input px (augmented box)
    per_heatmap_px = input_px * dataset.input_size[0] / dataset.codec.heatmap_size[0]
    return back, weight, sample, per_heatmap_px


# ---------------------------------------------------------------------------------------------
# MPII
# ---------------------------------------------------------------------------------------------


def test_mpii_hdf5_and_json_layouts_agree(mpii_dir):
    h5 = load_mpii_records(mpii_dir, "valid", annotation_file="valid_first5.h5")
    js = load_mpii_records(
        mpii_dir, "valid", annotation_file="test_mpii.json", head_boxes_mat="gt_valid_first5.mat"
    )
    gt = load_gt_mat(mpii_dir / "gt_valid_first5.mat")
    assert [r["image"] for r in h5] == [r["image"] for r in js] == MPII_NAMES
    assert [r["image_id"] for r in h5] == list(range(5))
    for a, b, missing, gt_joints in zip(h5, js, gt["missing"], gt["joints"], strict=True):
        # annotated = part != (0, 0) in the HDF5 and joints_vis in the JSON, both = ~jnt_missing
        np.testing.assert_array_equal(a["visible"], (~missing).astype(np.float32))
        np.testing.assert_array_equal(b["visible"], (~missing).astype(np.float32))
        on = ~missing
        body = on.copy()
        body[list(HEAD_JOINTS)] = False
        np.testing.assert_allclose(a["joints"][body], b["joints"][body], atol=1e-4)
        assert np.abs(a["joints"][on] - b["joints"][on]).max() < 1.0  # the HDF5 truncates head points
        np.testing.assert_allclose(b["joints"][on], gt_joints[on], atol=1e-3)  # 0-based, like the .mat
        np.testing.assert_allclose(a["center"], b["center"], atol=1e-3)
        assert a["scale"] == pytest.approx(b["scale"], abs=1e-3)
        assert (a["joints"][missing] == 0).all()
    np.testing.assert_allclose([r["head_size"] for r in h5], gt["head_sizes"], atol=1e-3)
    np.testing.assert_allclose([r["head_size"] for r in js], gt["head_sizes"], atol=1e-9)
    # MPII's first person: objpos (966, 340) 1-based, scale 4.718 -> crop 1.25 * 200 * 4.718 px high
    assert js[0]["center"].tolist() == pytest.approx([965.0, 339.0 + 15 * 4.718488], abs=1e-3)
    assert js[0]["scale"] == pytest.approx(250 * 4.718488, abs=1e-3)


def test_mpii_hdf5_visible_field_is_not_the_annotation_mask(mpii_dir):
    # 051423444's right wrist and elbow are occluded (visible = 0 in the HDF5) but annotated.
    records = load_mpii_records(mpii_dir, "valid", annotation_file="valid_first5.h5")
    assert records[2]["image"] == "051423444.jpg"
    assert records[2]["visible"][[10, 11]].tolist() == [1.0, 1.0]
    assert records[2]["visible"][[0, 5]].tolist() == [0.0, 0.0]  # the ankles really are missing


def test_mpii_sample_keys_and_shapes(mpii_dir):
    dataset = mpii_dataset(mpii_dir, "h5")
    assert len(dataset) == 5 and dataset.has_head_sizes and dataset.main_metric == "PCKh"
    sample = dataset[0]
    assert set(sample) == {"image", "target", "target_weight", "meta"}
    assert tuple(sample["image"].shape) == (3, 256, 256)
    assert tuple(sample["target"].shape) == (16, 64, 64)
    assert tuple(sample["target_weight"].shape) == (16,)
    assert tuple(sample["meta"]) == META_KEYS
    assert sample["meta"]["joints"].shape == (16, 2) and sample["meta"]["inverse_affine"].shape == (2, 3)


@pytest.mark.parametrize("layout", ["h5", "json"])
def test_mpii_heatmap_round_trip_scores_full_pckh(mpii_dir, layout):
    dataset = mpii_dataset(mpii_dir, layout)
    gt = load_gt_mat(mpii_dir / "gt_valid_first5.mat")
    preds = []
    for index, record in enumerate(dataset.records):
        back, weight, _, per_heatmap_px = round_trip(dataset, index)
        inside = weight > 0
        np.testing.assert_array_equal(inside, record["visible"] > 0)  # every annotated joint is in the crop
        error = np.abs(back - record["joints"])[inside]
        assert error.max() <= 0.25 * per_heatmap_px + 1e-3
        preds.append(back)
    table = pckh_table(np.stack(preds), gt["joints"], gt["missing"], gt["head_sizes"])
    assert list(table["columns"]) == list(COLUMNS)
    assert all(v == 100.0 for v in table["columns"].values()), table["columns"]
    # the dataset hands pckh_table the same ground truth
    joints, missing, head_sizes = dataset.ground_truth()
    np.testing.assert_array_equal(missing, gt["missing"])
    np.testing.assert_allclose(head_sizes, gt["head_sizes"], atol=1e-3)


def test_mpii_head_sizes(mpii_dir, tmp_path):
    no_boxes = load_mpii_records(mpii_dir, "valid", annotation_file="test_mpii.json")
    assert all(np.isnan(r["head_size"]) for r in no_boxes)
    mat = loadmat(str(mpii_dir / "gt_valid_first5.mat"))
    fewer = {k: mat[k][..., :4] for k in ("pos_gt_src", "jnt_missing", "headboxes_src")}
    savemat(str(tmp_path / "gt_4.mat"), fewer)
    with pytest.raises(DataError, match="has 4 persons but the annotations have 5"):
        load_mpii_records(
            mpii_dir, "valid", annotation_file="test_mpii.json", head_boxes_mat=tmp_path / "gt_4.mat"
        )
    shuffled = {k: mat[k][..., [1, 0, 2, 3, 4]] for k in ("pos_gt_src", "jnt_missing", "headboxes_src")}
    savemat(str(tmp_path / "gt_shuffled.mat"), shuffled)
    with pytest.raises(DataError, match="different persons or order"):
        load_mpii_records(
            mpii_dir, "valid", annotation_file="test_mpii.json", head_boxes_mat=tmp_path / "gt_shuffled.mat"
        )


def test_mpii_annot_layout(mpii_dir, tmp_path):
    # data_dir/annot/{split}.json + data_dir/images, with gt_valid.mat found beside the annotations
    (tmp_path / "annot").mkdir()
    (tmp_path / "images").symlink_to(mpii_dir, target_is_directory=True)
    (tmp_path / "annot" / "valid.json").write_bytes((mpii_dir / "test_mpii.json").read_bytes())
    (tmp_path / "annot" / "gt_valid.mat").write_bytes((mpii_dir / "gt_valid_first5.mat").read_bytes())
    records = load_mpii_records(tmp_path, "valid")
    assert records[0]["path"] == str(tmp_path / "images" / MPII_NAMES[0])
    assert np.isfinite([r["head_size"] for r in records]).all()
    # the HDF5 file wins when both exist
    (tmp_path / "annot" / "valid.h5").write_bytes((mpii_dir / "valid_first5.h5").read_bytes())
    assert load_mpii_records(tmp_path, "valid")[0]["joints"][9].tolist() == [961.0, 79.0]


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------


def test_box_to_center_scale_pads_to_the_input_aspect():
    center, height = box_to_center_scale([10, 20, 90, 60], aspect_ratio=0.75)
    assert center.tolist() == [55.0, 50.0] and height == pytest.approx(90 / 0.75 * 1.25)  # too wide
    center, height = box_to_center_scale([0, 0, 30, 100], aspect_ratio=0.75)
    assert height == pytest.approx(125.0)  # too narrow: the height stays


def test_coco_ground_truth_boxes(coco_dir):
    train = coco_dataset(coco_dir, "train2017")
    val = coco_dataset(coco_dir, "val2017")
    # 14 non-crowd annotations; training and GT-box evaluation both drop the two without labelled
    # keypoints (HRNet's rule), unless asked to keep them
    assert len(train) == 12 and len(val) == 12
    kept = coco_dataset(coco_dir, "val2017", skip_empty=False)
    dropped = {r["annotation_id"] for r in kept.records} - {r["annotation_id"] for r in val.records}
    assert dropped == {1202706, 508900}
    assert all(kept.coco.anns[a]["num_keypoints"] == 0 for a in dropped)
    assert sum(int(r["visible"].sum()) for r in train.records) == 181
    ann = train.coco.anns[train.records[0]["annotation_id"]]
    assert train.records[0]["area"] == pytest.approx(ann["area"])
    assert all(r["box_score"] == 1.0 for r in train.records)
    sample = train[0]
    assert tuple(sample["image"].shape) == (3, 256, 192) and tuple(sample["target"].shape) == (17, 64, 48)
    assert tuple(sample["meta"]) == META_KEYS
    assert val.main_metric == "AP" and not val.has_head_sizes


def test_coco_standard_layout(coco_dir, tmp_path):
    # data_dir/annotations/person_keypoints_{split}.json + data_dir/images/{split}/
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "val2017").symlink_to(coco_dir, target_is_directory=True)
    annotations = (coco_dir / "test_coco.json").read_bytes()
    (tmp_path / "annotations" / "person_keypoints_val2017.json").write_bytes(annotations)
    dataset = COCODataset(tmp_path, "val2017", HeatmapCodec(COCO_INPUT, COCO_HEATMAP, 2.0), COCO_INPUT)
    assert len(dataset) == 12
    assert dataset.records[0]["path"] == str(tmp_path / "images" / "val2017" / "000000000785.jpg")


def test_coco_heatmap_round_trip_scores_full_ap(coco_dir):
    dataset = coco_dataset(coco_dir, "val2017")
    image_ids, keypoints, box_scores, areas = [], [], [], []
    for index, record in enumerate(dataset.records):
        back, weight, sample, per_heatmap_px = round_trip(dataset, index)
        labelled = weight > 0
        assert (labelled == (record["visible"] > 0)).all()  # every labelled keypoint is in its crop
        if labelled.any():
            assert np.abs(back - record["joints"])[labelled].max() <= 0.25 * per_heatmap_px + 1e-3
        image_ids.append(sample["meta"]["image_id"])
        keypoints.append(np.concatenate([back, weight[:, None]], axis=1))  # confidence = target weight
        box_scores.append(sample["meta"]["box_score"])
        areas.append(sample["meta"]["area"])
    results = postprocess_results(image_ids, np.stack(keypoints), box_scores, areas)
    stats = evaluate_keypoints(dataset.coco, results)
    assert stats["AP"] >= 0.99 and stats["AR"] >= 0.99, stats


def test_coco_detection_boxes(coco_dir):
    boxes = json.loads((coco_dir / "test_coco_det_AP_H_56.json").read_text())
    every = coco_dataset(coco_dir, bbox_file="test_coco_det_AP_H_56.json")
    assert len(every) == 118
    per_image = {i: sum(r["image_id"] == i for r in every.records) for i in (785, 40083, 196141, 197388)}
    assert per_image == {785: 22, 40083: 26, 196141: 33, 197388: 37}
    for threshold, expected in ((0.1, 55), (0.5, 18), (0.9, 14)):
        kept = coco_dataset(coco_dir, bbox_file="test_coco_det_AP_H_56.json", det_score_threshold=threshold)
        assert len(kept) == expected == sum(b["score"] >= threshold for b in boxes)
        assert min(r["box_score"] for r in kept.records) >= threshold
    first = every.records[0]
    assert first["box_score"] == pytest.approx(boxes[0]["score"])
    assert first["area"] == pytest.approx(boxes[0]["bbox"][2] * boxes[0]["bbox"][3])
    assert not first["visible"].any() and not first["joints"].any()
    sample = every[0]
    assert sample["target_weight"].sum() == 0 and sample["meta"]["box_score"] == pytest.approx(
        boxes[0]["score"]
    )


def test_half_body_box():
    joints = np.zeros((17, 2))
    joints[:11] = np.stack([np.linspace(100, 140, 11), np.linspace(0, 100, 11)], axis=1)
    joints[11:] = np.stack([np.linspace(100, 120, 6), np.linspace(150, 300, 6)], axis=1)
    visible = np.ones(17)
    center, height = half_body_box(joints, visible, upper_first=True, aspect_ratio=0.75)
    assert center.tolist() == pytest.approx([120.0, 50.0]) and height == pytest.approx(150.0)
    _, height = half_body_box(joints, visible, upper_first=False, aspect_ratio=0.75)
    assert height == pytest.approx(225.0)
    visible[11:15] = 0  # two lower joints left: not more than two, so the upper body is used
    assert half_body_box(joints, visible, upper_first=False, aspect_ratio=0.75)[1] == pytest.approx(150.0)


# ---------------------------------------------------------------------------------------------
# Augmentation, pickling and errors
# ---------------------------------------------------------------------------------------------


def assert_augmented_round_trip(dataset, epochs: range) -> set[bool]:
    flips = set()
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for index, record in enumerate(dataset.records):
            back, weight, sample, per_heatmap_px = round_trip(dataset, index)
            flips.add(bool(sample["meta"]["flipped"]))
            assert (record["visible"][weight > 0] > 0).all()
            # joints just off the map are supervised too (their Gaussian's visible part) but decode
            # onto the border; the round trip holds for those whose centre lies on the map
            forward = invert_affine(np.asarray(sample["meta"]["inverse_affine"], dtype=np.float64))
            centers = dataset.codec.to_heatmap_frame(apply_affine(record["joints"], forward))
            width, height = dataset.codec.heatmap_size
            on_map = (
                (centers >= -0.5).all(axis=1) & (centers[:, 0] < width - 0.5) & (centers[:, 1] < height - 0.5)
            )
            inside = (weight > 0) & on_map
            if inside.any():
                # Argmax alone is within half a heatmap pixel per axis; the quarter-pixel step
                # cannot help on the map's border row/column, where tight half-body and
                # rotated crops put joints. Rotation mixes the axes, so bound the distance.
                error = np.linalg.norm(back - record["joints"], axis=1)[inside]
                assert error.max() <= 0.5 * np.sqrt(2) * per_heatmap_px + 1e-3
    return flips


def test_mpii_augmented_round_trip(mpii_dir):
    dataset = mpii_dataset(mpii_dir, "h5", augmentation=AUGMENT, seed=3)
    assert assert_augmented_round_trip(dataset, range(2)) == {False, True}
    # a sample depends only on (seed, epoch, index)
    dataset.set_epoch(1)
    first, again = dataset[2], dataset[2]
    assert np.array_equal(first["image"].numpy(), again["image"].numpy())
    dataset.set_epoch(2)
    assert not np.array_equal(first["meta"]["inverse_affine"], dataset[2]["meta"]["inverse_affine"])


def test_coco_half_body_augmented_round_trip(coco_dir):
    dataset = coco_dataset(coco_dir, "train2017", augmentation=AUGMENT, half_body_prob=1.0, seed=1)
    assert assert_augmented_round_trip(dataset, range(1)) == {False, True}
    plain = coco_dataset(coco_dir, "train2017", augmentation=AUGMENT, seed=1)
    eligible = [i for i, r in enumerate(dataset.records) if r["visible"].sum() > 8]
    assert eligible
    for i in eligible:
        record = dataset.records[i]
        # the half chosen by HRNet's draw: upper body when a standard normal is below 0.5 (p 0.69)
        rng = np.random.default_rng([dataset.seed, dataset.epoch, i, 1])
        rng.random()  # whether to cut at all (always, at probability 1)
        upper_first = rng.normal() < 0.5
        _, half_height = half_body_box(record["joints"], record["visible"], upper_first, dataset.aspect_ratio)
        # the half-body box carries the full crop's jitter as a factor
        full = plain.sample_transform(i)[1]
        assert dataset.sample_transform(i)[1] == pytest.approx(full * half_height / record["scale"])
        assert dataset.sample_transform(i)[2:4] == plain.sample_transform(i)[2:4]  # same rotation and flip


def test_datasets_pickle_for_workers(mpii_dir, coco_dir):
    mpii = mpii_dataset(mpii_dir, "json")
    clone = pickle.loads(pickle.dumps(mpii))
    assert np.array_equal(clone[1]["target"].numpy(), mpii[1]["target"].numpy())
    coco = coco_dataset(coco_dir)
    clone = pickle.loads(pickle.dumps(coco))
    assert clone._coco is None  # the index is rebuilt on demand, not shipped to every worker
    assert len(clone.coco.anns) == 14 and len(clone) == 12


def _single_line_error(call, path) -> None:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_paths_raise_data_error(mpii_dir, coco_dir, tmp_path):
    codec = HeatmapCodec(MPII_INPUT, MPII_HEATMAP, 2.0)
    _single_line_error(
        lambda: MPIIDataset(tmp_path, "valid", codec, MPII_INPUT), tmp_path / "annot" / "valid.h5"
    )
    _single_line_error(
        lambda: MPIIDataset(tmp_path, "train", codec, MPII_INPUT), tmp_path / "annot" / "train.json"
    )
    _single_line_error(
        lambda: load_mpii_records(mpii_dir, "valid", annotation_file="nope.h5"), mpii_dir / "nope.h5"
    )
    _single_line_error(
        lambda: load_mpii_records(
            mpii_dir, "valid", annotation_file="test_mpii.json", head_boxes_mat="gt.mat"
        ),
        mpii_dir / "gt.mat",
    )
    _single_line_error(
        lambda: load_mpii_records(
            mpii_dir, "valid", annotation_file="valid_first5.h5", image_dir=tmp_path / "x"
        ),
        tmp_path / "x",
    )
    coco_codec = HeatmapCodec(COCO_INPUT, COCO_HEATMAP, 2.0)
    _single_line_error(
        lambda: COCODataset(tmp_path, "val2017", coco_codec, COCO_INPUT),
        tmp_path / "annotations" / "person_keypoints_val2017.json",
    )
    _single_line_error(lambda: coco_dataset(coco_dir, bbox_file="dets.json"), coco_dir / "dets.json")
    _single_line_error(lambda: coco_dataset(coco_dir, image_dir=tmp_path / "img"), tmp_path / "img")
    # an image folder that exists but lacks the images
    (tmp_path / "empty").mkdir()
    _single_line_error(lambda: coco_dataset(coco_dir, image_dir=tmp_path / "empty"), tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        load_mpii_records(mpii_dir, "test", annotation_file="valid_first5.h5")
