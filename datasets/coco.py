"""COCO person keypoints, top-down: one record per person box, scored with OKS AP (pycocotools).

The reader takes any joint set: :class:`COCODataset` is the COCO-format reader with COCO's 17
joints and sigmas, and the ``custom`` dataset (datasets/custom.py) is the same reader with the
joints, flip pairs and OKS sigmas of a spec file.

Boxes come from the ground truth (training, and evaluation with GT boxes) or from a person
detector's results file (the usual evaluation). Each box is widened or heightened to the crop's
aspect ratio and enlarged 1.25x, as in Simple Baselines / HRNet; the record's ``scale`` is the
height of that padded box in pixels.

Supported layouts (``data_dir``)::

    data_dir/annotations/person_keypoints_{split}.json
    data_dir/images/{split}/*.jpg

or any annotation file given by ``annotation_file`` with images in ``image_dir`` (default
``data_dir/images/{split}`` if it exists, else the annotation file's folder, e.g. the flat
fixture folder holding ``test_coco.json`` beside its images).

The ground truth COCOeval scores against is read by the same code (``metrics.coco.load_gt``,
:func:`read_ground_truth`): an id used twice is a bad record, ``num_keypoints`` is counted from
the keypoints, and the records dropped as bad are left out, so the persons scored are the
persons read. What a reading passes over (crowd regions, other categories, detections below the
threshold, ...) is counted in one note per file (``dataset.notes``), and an empty reading says
why (:meth:`COCODataset.empty_reason`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets.base import (
    Augmentation,
    DataError,
    DecodedImage,
    KeypointDataset,
    decode_image,
    print_note,
)
from datasets.codecs import BOX_PADDING, Codec
from datasets.index_cache import IndexCache
from datasets.records import RecordTable, RecordTableBuilder
from datasets.registry import DataRequest, register_dataset
from datasets.skeletons import COCO_JOINTS, JointSpec
from datasets.validation import (
    BadDataPolicy,
    BadRecord,
    RecordChecker,
    check_inside,
    check_visibility,
    finite,
    image_path,
    numbers,
    show,
)

NUM_JOINTS = COCO_JOINTS.num_joints
PERSON_CATEGORY = 1
LAYOUT_HINT = "see docs/datasets.md, COCO"
CUSTOM_SPEC_HINT = "see docs/datasets.md, Your own keypoints"

# Half-body augmentation (HRNet): joints 0-10 are the upper body, 11-16 the lower body.
UPPER_BODY = COCO_JOINTS.upper_body
LOWER_BODY = COCO_JOINTS.lower_body
HALF_BODY_MIN_JOINTS = 8  # a COCO person needs more labelled joints than this to be cut in half
HALF_BODY_PADDING = 1.5


def half_body_min_joints(num_joints: int) -> int:
    """Labelled joints a person must exceed for a half-body crop: HRNet's 8 of 17, in proportion
    for other joint counts (6 of 12, 3 of 7)."""
    return round(HALF_BODY_MIN_JOINTS * num_joints / NUM_JOINTS)


def box_to_center_scale(
    box: np.ndarray, aspect_ratio: float, padding: float = BOX_PADDING
) -> tuple[np.ndarray, float]:
    """Crop center (2,) and box height (px) for an ``[x, y, w, h]`` box.

    The box keeps its center and grows in one dimension to ``aspect_ratio`` = width / height of
    the network input, so the crop never squashes the person; then both sides grow by ``padding``.
    """
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    return center, h * padding


def _clean_gt_box(box: list[float], width: int, height: int) -> np.ndarray | None:
    """The box clipped to the image's pixel extent [0, W-1] x [0, H-1], or None if nothing is left."""
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x + max(0.0, w)), min(height - 1.0, y + max(0.0, h))
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1])


def _image_path(image_dir: Path, info: dict[str, Any], allow_outside: bool = False) -> str:
    """The image's path; BadRecord for a file name that is absolute or leaves ``image_dir``."""
    return str(image_path(image_dir, info.get("file_name", f"{info['id']:012d}.jpg"), allow_outside))


def _stored_size(info: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) the annotation file gives for an image, if it gives both; BadRecord if
    they are not whole numbers > 0."""
    if "height" in info and "width" in info:
        height, width = finite(
            numbers([info["height"], info["width"]], 2, "image height, width"), "image size"
        )
        if min(height, width) < 1 or height != int(height) or width != int(width):
            raise BadRecord(f"image size {height:g}x{width:g} (h x w) is not two whole numbers >= 1")
        return int(height), int(width)
    return None


def _image_info(image_dir: Path, info: dict[str, Any], policy: BadDataPolicy) -> tuple[str, Any, str]:
    """(path or "", stored size or None, problem or "") of an ``images`` entry."""
    try:
        return _image_path(image_dir, info, policy.allow_outside_paths), _stored_size(info), ""
    except BadRecord as problem:
        return "", None, str(problem)


def check_structure(dataset: dict[str, Any], path: Path | str) -> None:
    """DataError unless every image is an object with a whole-number id (the readers sort and
    format them) and every annotation is an object: problems that are not one record's."""
    for key in ("images", "annotations"):
        for position, entry in enumerate(dataset.get(key, [])):
            if not isinstance(entry, dict):
                raise DataError(f"{path}: {key}[{position}] is {show(entry)}, not an object")
    for position, info in enumerate(dataset.get("images", [])):
        if not isinstance(info.get("id"), int) or isinstance(info.get("id"), bool):
            raise DataError(f"{path}: images[{position}] has id {show(info.get('id'))}, not a whole number")


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _where(ann: dict[str, Any], info: dict[str, Any]) -> str:
    name = info.get("file_name", info.get("id"))
    return f"annotation {show(ann.get('id'))} (image {name if isinstance(name, str) else show(name)})"


@dataclass(frozen=True)
class KeypointCategory:
    """The file's keypoint category, as :func:`keypoint_category` checked it."""

    id: int
    # file_order[j]: the file's position of the joint set's joint j, where the file lists the same
    # names in another order; None where the orders agree (or the file names no keypoints)
    file_order: tuple[int, ...] | None = None
    note: str = ""  # the line saying the joints are matched by name

    def to_file_order(self, values: np.ndarray, axis: int = -1) -> np.ndarray:
        """``values`` with the joint axis in the file's order (results.json, COCOeval's sigmas)."""
        if self.file_order is None:
            return values
        return np.take(values, np.argsort(self.file_order), axis=axis)


def keypoint_category(coco: Any, joint_names: Sequence[str], source: Path | str) -> KeypointCategory:
    """The file's keypoint category (COCO: person, 1), checked against the joint set.

    Categories that list ``keypoints`` are keypoint categories; one is supported. A file without
    any such list is read as category 1 (person). Where the list holds names, they must be the
    joint set's, position by position, or the same names in another order (then matched by name,
    with a note); a count or a name that differs is a DataError naming ``source``, the position
    and both names.
    """
    with_keypoints = [c for c in coco.dataset.get("categories", []) if isinstance(c.get("keypoints"), list)]
    if not with_keypoints:
        return KeypointCategory(PERSON_CATEGORY)
    if len(with_keypoints) > 1:
        ids = ", ".join(str(c.get("id")) for c in with_keypoints)
        raise DataError(f"{source}: categories {ids} all list keypoints; one keypoint category is supported")
    category = with_keypoints[0]
    listed, num_joints = category["keypoints"], len(joint_names)
    what = f"{source}: category {category.get('id')} ({category.get('name', '?')})"
    if len(listed) != num_joints:
        raise DataError(f"{what} lists {len(listed)} keypoints but the joint set has {num_joints}")
    category_id = category.get("id", PERSON_CATEGORY)
    if not isinstance(category_id, int) or isinstance(category_id, bool):
        raise DataError(
            f"{source}: category {show(category_id)} lists keypoints but its id is not a whole number"
        )
    names = [str(name) for name in joint_names]
    if not all(isinstance(name, str) for name in listed) or listed == names:
        return KeypointCategory(category_id)
    position = next(p for p, (a, b) in enumerate(zip(listed, names, strict=True)) if a != b)
    if sorted(listed) != sorted(names) or len(set(listed)) != len(listed):
        raise DataError(
            f"{what}: keypoints[{position}] is {listed[position]!r} but the joint set's joint {position} is "
            f'{names[position]!r}: give a --jointSpec whose "joints" are the file\'s keypoint names in its '
            f"order ({CUSTOM_SPEC_HINT})"
        )
    order = tuple(listed.index(name) for name in names)
    note = (
        f"category {category_id} lists the joint set's {num_joints} keypoints in another order (the joint "
        f"set's joint {position} {names[position]!r} is the file's keypoint {order[position]}): they are "
        f"matched by name; the model predicts them in the joint set's order, results.json holds them in "
        f"the file's"
    )
    return KeypointCategory(category_id, order, note)


# why a ground-truth annotation or a detection gave no record, as counted in a Tally
SKIP_REASONS = {
    "crowd": "marked as crowd (iscrowd 1)",
    "category": "not of category",
    "orphan": "of images not in the file",
    "unlabelled": "without a labelled keypoint (v > 0)",
    "no_area": "of area 0",
    "outside": "with a box outside the image",
    "threshold": "below --detScoreThreshold",
    "no_box": "with width or height <= 0",
    "unknown_image": "of images not in the annotation file",
}


class Tally(dict):
    """How many annotations (or detections) gave no record, and why: reason -> count, the reasons
    of :data:`SKIP_REASONS`; plus ``seen``, how many were read at all."""

    def count(self, reason: str) -> None:
        self[reason] = self.get(reason, 0) + 1

    def parts(self, **extra: str) -> list[str]:
        """'3 marked as crowd (iscrowd 1)', ... for every reason counted (``extra`` adds words to a
        reason, e.g. the threshold's value)."""
        return [
            f"{self[reason]} {SKIP_REASONS[reason]}{extra.get(reason, '')}"
            for reason in SKIP_REASONS
            if self.get(reason)
        ]


def load_gt_records(
    coco: Any,
    image_dir: Path,
    aspect_ratio: float,
    skip_empty: bool,
    num_joints: int = NUM_JOINTS,
    category_id: int = PERSON_CATEGORY,
    checker: RecordChecker | None = None,
    tally: Tally | None = None,
    bad_ids: list[Any] | None = None,
    file_order: Sequence[int] | None = None,
) -> RecordTable:
    """One record per usable ground-truth person box, images in id order.

    Skipped, and counted in ``tally``: crowd regions, other categories than ``category_id``,
    annotations of images the file does not list, annotations of area 0, boxes with no area
    left after clipping to the image, and (with ``skip_empty``) persons with no labelled
    keypoint. Bad records (keypoints of the wrong count, NaN or inf, visibility not 0/1/2,
    labelled keypoints far outside the image, boxes with width or height <= 0, a bad image size
    or path) go to ``checker`` (default: a DataError naming the first), and their annotation ids
    to ``bad_ids`` (so the evaluation's ground truth leaves them out too). ``file_order`` (see
    :class:`KeypointCategory`) puts each person's joints in the joint set's order.
    """
    own = checker is None
    checker = checker or RecordChecker("annotations", BadDataPolicy())
    tally = Tally() if tally is None else tally
    records = RecordTableBuilder()  # columns, not a dict per person (datasets/records.py)
    for image_id, anns in coco.imgToAnns.items():
        if image_id in coco.imgs:
            continue
        for ann in anns:
            if isinstance(image_id, int) and not isinstance(image_id, bool):
                tally.count("orphan")
                continue
            # a string "1" is not the image 1 (pycocotools matches ids by value and type)
            same = (
                " (an image has that id as a number)" if str(image_id).strip() in map(str, coco.imgs) else ""
            )
            checker.bad(
                f"annotation {show(ann.get('id'))}",
                f"image_id {show(image_id)} is a {type(image_id).__name__}, not a whole number{same}",
            )
            if bad_ids is not None:
                bad_ids.append(ann.get("id"))
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        path, size, image_problem = _image_info(image_dir, info, checker.policy)
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                tally.count("crowd")
                continue
            if ann.get("category_id", category_id) != category_id:
                tally.count("category")
                continue
            try:
                record = _gt_record(
                    ann, path, size, image_problem, aspect_ratio, num_joints, skip_empty, file_order
                )
            except BadRecord as problem:
                checker.bad(_where(ann, info), str(problem))
                if bad_ids is not None:
                    bad_ids.append(ann.get("id"))
                continue
            if isinstance(record, str):
                tally.count(record)
                continue
            records.append(record | {"image_id": int(image_id)})
    if own:
        checker.finish()
    return records.build()


def _gt_record(
    ann: dict[str, Any], path: str, size: tuple[int, int] | None, image_problem: str, aspect_ratio: float,
    num_joints: int, skip_empty: bool, file_order: Sequence[int] | None = None,
) -> dict[str, Any] | str:  # fmt: skip
    """The record of one person annotation; the reason to skip it (HRNet's rules, ``skip_empty``;
    a key of :data:`SKIP_REASONS`); BadRecord if bad."""
    flat = numbers(
        ann.get("keypoints", [0] * 3 * num_joints), 3 * num_joints, f"keypoints ({num_joints} x [x, y, v])"
    )
    keypoints = finite(flat, "keypoints").reshape(num_joints, 3)
    if file_order is not None:
        keypoints = keypoints[list(file_order)]
    check_visibility(keypoints[:, 2], "keypoint visibility")
    visible = keypoints[:, 2] > 0
    if skip_empty and not visible.any():
        return "unlabelled"
    if image_problem:
        raise BadRecord(image_problem)
    if size is None:
        raise BadRecord("its image has no width and height")
    height, width = size
    labelled = np.flatnonzero(visible)
    check_inside(keypoints[labelled, :2], width, height, [f"keypoint {j}" for j in labelled])
    area = finite(numbers(ann.get("area", 1.0), 1, "area"), "area")[0]
    if area < 0:
        raise BadRecord(f"area {area:g} is negative")
    box = finite(numbers(ann.get("bbox"), 4, "bbox [x, y, w, h]"), "bbox")
    if box[2] <= 0 or box[3] <= 0:
        raise BadRecord(f"bbox {show(ann.get('bbox'))} has width or height <= 0")
    if area == 0:
        return "no_area"
    box = _clean_gt_box(box, width, height)
    if box is None:
        return "outside"
    center, box_height = box_to_center_scale(box, aspect_ratio)
    if not (np.isfinite(center).all() and np.isfinite(box_height)):
        raise BadRecord(f"bbox {show(ann.get('bbox'))} is too large to crop")
    return {
        "joints": np.where(visible[:, None], keypoints[:, :2], 0.0).astype(np.float32),
        "visible": visible.astype(np.float32),
        "center": center.astype(np.float32),
        "scale": float(box_height),
        "area": float(ann.get("area", box[2] * box[3])),
        "box_score": 1.0,
        "annotation_id": _int_or(ann.get("id"), -1),
        "path": path,
        "image_size": size,
    }


def load_detection_records(
    path: Path,
    coco: Any,
    image_dir: Path,
    aspect_ratio: float,
    score_threshold: float,
    num_joints: int = NUM_JOINTS,
    category_id: int = PERSON_CATEGORY,
    checker: RecordChecker | None = None,
    tally: Tally | None = None,
) -> RecordTable:
    """One record per detected person box with ``score >= score_threshold``, in file order.

    Boxes of images missing from the annotation file are dropped: they could be neither loaded
    (no file name) nor scored (COCOeval rejects unknown image ids); so are boxes with width or
    height <= 0, and boxes of other categories. Each is counted in ``tally`` (with ``seen``, the
    detections read, and ``highest``, the best score of a person box). Joints are all zeros and
    unlabelled; ``box_score`` is the detector score and ``area`` the box area. A detection
    without a finite score and box, or whose image has a bad size or path, goes to ``checker``
    (default: a DataError naming the first).
    """
    from metrics.coco import read_json

    try:
        detections = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(str(exc)) from None
    if not isinstance(detections, list):
        raise DataError(f"{path}: expected a JSON list of {{image_id, category_id, bbox, score}} detections")
    own = checker is None
    checker = checker or RecordChecker(path, BadDataPolicy())
    tally = Tally() if tally is None else tally
    tally["seen"] = len(detections)
    records = RecordTableBuilder()
    for row, det in enumerate(detections):
        try:
            if not isinstance(det, dict):
                raise BadRecord(f"is {show(det)}, not an object with image_id, category_id, bbox, score")
            if det.get("category_id", category_id) != category_id:
                tally.count("category")
                continue
            score = float(finite(numbers(det.get("score"), 1, "score"), "score")[0])
            image_id = det.get("image_id")
            tally["highest"] = max(tally.get("highest", -math.inf), score)
            if score < score_threshold:
                tally.count("threshold")
                continue
            if not isinstance(image_id, int) or image_id not in coco.imgs:
                tally.count("unknown_image")
                continue
            box = finite(numbers(det.get("bbox"), 4, "bbox [x, y, w, h]"), "bbox")
            if box[2] <= 0 or box[3] <= 0:
                tally.count("no_box")
                continue
            info = coco.imgs[image_id]
            image, size, image_problem = _image_info(image_dir, info, checker.policy)
            if image_problem:
                raise BadRecord(image_problem)
            center, box_height = box_to_center_scale(box, aspect_ratio)
            if not (np.isfinite(center).all() and np.isfinite(box_height)):
                raise BadRecord(f"bbox {show(det.get('bbox'))} is too large to crop")
        except BadRecord as problem:
            checker.bad(f"detection {row}", str(problem))
            continue
        records.append(
            {
                "joints": np.zeros((num_joints, 2), dtype=np.float32),
                "visible": np.zeros(num_joints, dtype=np.float32),
                "center": center.astype(np.float32),
                "scale": float(box_height),
                "image_id": int(image_id),
                "area": float(box[2] * box[3]),
                "box_score": score,
                "detection": row,
                "path": image,
                "image_size": size,
            }
        )
    if own:
        checker.finish()
    return records.build()


def _metrics_module_file() -> str:
    import metrics.coco

    return metrics.coco.__file__


def parse_annotations(path: Path, joint_names: Sequence[str], report: Any) -> tuple[Any, KeypointCategory]:
    """(the annotation file as a ``pycocotools.coco.COCO`` object, its keypoint category),
    checked by ``metrics.coco.load_gt`` (duplicate ids go to ``report``, a
    ``metrics.coco.GroundTruthReport``; ``num_keypoints`` is recounted); DataError naming the
    file for anything that is not a COCO keypoint file."""
    from metrics.coco import load_gt

    try:
        coco = load_gt(path, report=report)  # quiet: pycocotools' prints are swallowed
        check_structure(coco.dataset, path)
        return coco, keypoint_category(coco, joint_names, path)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        # pycocotools indexes images, annotations and categories by their ids
        raise DataError(
            f"{path}: not a COCO keypoint file: an image, annotation or category "
            f"lacks a key or has the wrong type ({type(exc).__name__}: {show(exc.args[0] if exc.args else '')})"
        ) from None


@dataclass
class GroundTruthReading:
    """A COCO-format annotation file read and checked (:func:`read_ground_truth_file`)."""

    coco: Any  # pycocotools.coco.COCO, the later of two entries with one id left out
    category: KeypointCategory
    records: RecordTable  # the usable persons
    tally: Tally  # the annotations that gave no record, and why
    drop_ids: list[Any]  # ids of the annotations that were bad records (left out of evaluation too)
    notes: list[str]  # lines worth one note each, without the file's name

    @property
    def category_id(self) -> int:
        return self.category.id


def read_ground_truth_file(
    path: Path,
    image_dir: Path,
    aspect_ratio: float,
    skip_empty: bool,
    joint_names: Sequence[str],
    checker: RecordChecker,
) -> GroundTruthReading:
    """Parse a COCO-format annotation file and check every record; bad records and duplicate
    ids go to ``checker`` (the later of two entries with one id is the bad one)."""
    from metrics.coco import GroundTruthReport, show_id

    report = GroundTruthReport()
    coco, category = parse_annotations(path, joint_names, report)
    for duplicate in report.duplicates:
        if duplicate.kind == "annotation":
            where = f"annotation {show_id(duplicate.id)} (image {duplicate.image})"
        else:
            where = f"image {show_id(duplicate.id)} ({duplicate.image})"
        checker.bad(where, duplicate.problem())
    tally, drop_ids = Tally(seen=len(coco.dataset["annotations"])), []
    records = load_gt_records(
        coco, image_dir, aspect_ratio, skip_empty, len(joint_names), category.id, checker, tally, drop_ids,
        category.file_order,
    )  # fmt: skip
    notes = report.notes() + ([category.note] if category.note else [])
    return GroundTruthReading(coco, category, records, tally, drop_ids, notes)


@dataclass
class ScoredGroundTruth:
    """What ``python -m metrics.coco`` scores against (:func:`read_ground_truth`)."""

    coco: Any  # pycocotools.coco.COCO
    notes: list[str]  # one line each, naming the file
    dropped: list[str]  # the bad records left out (policy.skip)
    category: KeypointCategory


def read_ground_truth(
    path: str | Path,
    policy: BadDataPolicy | None = None,
    num_joints: int | None = None,
    joint_names: Sequence[str] | None = None,
) -> ScoredGroundTruth:
    """The ground truth of a COCO-format annotation file, read and checked as the readers read
    it, so COCOeval scores the persons training and validation use.

    ``joint_names`` (a joint spec's) are checked against the keypoint category's names as the
    readers check them; without them ``num_joints`` is checked against its count (default: the
    category's count, 17 if no category lists keypoints). Image paths are checked as the readers
    check them, but no image is opened. A bad record or a duplicate id is a DataError naming the
    file and the record, unless ``policy.skip``: then it is left out and listed in ``dropped``. A
    file with no person to score (no annotations, or none of the keypoint category) is a
    DataError saying why, as training's empty validation set is."""
    from metrics.coco import GroundTruthReport, index_ground_truth, read_gt_json

    path = Path(path)
    policy = policy or BadDataPolicy()
    if joint_names is None:
        try:
            categories = read_gt_json(path)["categories"]
        except (OSError, ValueError) as exc:
            raise DataError(str(exc)) from None
        listed = [
            c["keypoints"] for c in categories if isinstance(c, dict) and isinstance(c.get("keypoints"), list)
        ]
        names = listed[0] if len(listed) == 1 else None
        count = num_joints or (len(names) if names is not None else NUM_JOINTS)
        joint_names = names if names is not None and len(names) == count else [str(i) for i in range(count)]
    checker = RecordChecker(path, policy)
    reading = read_ground_truth_file(path, path.parent, 0.75, True, joint_names, checker)
    dropped = checker.finish()
    if not len(reading.records):
        raise DataError(f"{path}: {why_no_person(reading.tally, reading.category_id)}")
    coco = index_ground_truth(
        reading.coco.dataset, path, report=GroundTruthReport(), drop_ids=reading.drop_ids
    )
    return ScoredGroundTruth(coco, [f"{path}: {note}" for note in reading.notes], dropped, reading.category)


def why_no_person(tally: Tally, category_id: int) -> str:
    """Why an annotation file gave no person (one phrase, to follow its name)."""
    total = tally["seen"]
    if not total:
        return "holds no annotations"
    parts = tally.parts(category=f" {category_id}")
    if not parts:
        return f"all {total} annotations are bad"
    return f"no usable person among its {total} annotations: {', '.join(parts)}"


def half_body_box(
    joints: np.ndarray,
    visible: np.ndarray,
    upper_first: bool,
    aspect_ratio: float,
    upper_body: Sequence[int] = UPPER_BODY,
    lower_body: Sequence[int] = LOWER_BODY,
) -> tuple[np.ndarray, float] | None:
    """(center (2,), box height px) around the upper or lower body's labelled joints, or None.

    ``upper_first`` picks the upper body when it has more than two labelled joints; otherwise
    the lower body is used if it has more than two, else the upper body. None when fewer than
    two joints remain or they span no area. The halves default to COCO's.
    """
    labelled = np.asarray(visible) > 0
    upper = [j for j in upper_body if labelled[j]]
    lower = [j for j in lower_body if labelled[j]]
    chosen = upper if upper_first and len(upper) > 2 else (lower if len(lower) > 2 else upper)
    if len(chosen) < 2:
        return None
    points = np.asarray(joints, dtype=np.float64)[chosen]
    center = points.mean(axis=0)
    w, h = points.max(axis=0) - points.min(axis=0)
    h = max(h, w / aspect_ratio)
    if h < 1.0:  # coincident joints: no box to crop
        return None
    return center, h * HALF_BODY_PADDING


class COCODataset(KeypointDataset):
    """COCO top-down person crops (17 keypoints), or any joint set given as ``joint_spec``.

    Args:
        data_dir: dataset root (see the module docstring).
        split: e.g. "train2017" or "val2017"; names the annotation file and image folder.
        codec, input_size, augmentation, seed: as :class:`KeypointDataset`.
        annotation_file: explicit annotation JSON (relative paths are under ``data_dir``).
        image_dir: explicit image folder (relative paths are under ``data_dir``).
        bbox_file: detection results JSON; when given, records are its person boxes with
            ``score >= det_score_threshold`` instead of the ground-truth boxes.
        half_body_prob: probability of HRNet's half-body crop for persons with more than 8
            labelled keypoints (in proportion for other joint counts, see
            :func:`half_body_min_joints`); nothing for a joint set without an upper/lower split.
        skip_empty: drop ground-truth persons without labelled keypoints, for training and for
            evaluation with ground-truth boxes alike, as HRNet does. COCOeval ignores those
            persons, but predictions made for them would still enter matching and count toward
            the 20 detections per image, so GT-box AP would not be comparable with HRNet's.
        joint_spec: the joints in annotation order, flip pairs, OKS sigmas and half-body split
            (default COCO's).
        policy: what to do with bad records and images (default: a DataError naming the first).
    """

    joint_spec = COCO_JOINTS
    main_metric = "AP"
    checks_image_bounds = True
    label = "COCO"  # names the dataset in error messages
    layout_hint = LAYOUT_HINT

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        codec: Codec,
        input_size: tuple[int, int],
        augmentation: Augmentation | None = None,
        seed: int = 0,
        annotation_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        bbox_file: str | Path | None = None,
        det_score_threshold: float = 0.0,
        half_body_prob: float = 0.0,
        skip_empty: bool = True,
        joint_spec: JointSpec | None = None,
        policy: BadDataPolicy | None = None,
    ) -> None:
        if joint_spec is not None:
            self.joint_spec = joint_spec
        if len(self.joint_spec.sigmas) != self.joint_spec.num_joints:
            raise ValueError(f"joint set {self.joint_spec.name!r} needs one OKS sigma per joint for COCO AP")
        self.split = split
        self._locate_files(Path(data_dir), split, annotation_file, image_dir, bbox_file)
        num_joints = self.joint_spec.num_joints
        self.aspect_ratio = input_size[0] / input_size[1]
        policy = policy or BadDataPolicy()
        self.half_body_prob = float(half_body_prob)
        self.half_body_min_joints = half_body_min_joints(num_joints)
        notes = []
        if self.half_body_prob > 0 and not self.joint_spec.has_half_body:
            notes.append(
                f"halfBodyProb {self.half_body_prob:g} has no effect: joint set "
                f"'{self.joint_spec.name}' has no upper/lower body split (give \"upper_body\" in its "
                f"spec, or use COCO joint names from both halves)"
            )
        # the annotation file's bad records (and duplicate ids), then the detection file's
        checkers = {"gt": RecordChecker(self.annotation_file, policy)}
        if self.bbox_file is not None:
            checkers["det"] = RecordChecker(self.bbox_file, policy)
        # A later start with the same files and options reads the records from a cache instead
        # of parsing the JSON (datasets/index_cache.py); the key is taken before reading.
        cache = self._index_cache(skip_empty, det_score_threshold, policy)
        cached = cache.load()
        self._coco = None
        if cached is None:
            records, extra = self._read(skip_empty, det_score_threshold, checkers)
            # the cache keeps lines without the files' names: another run may name them otherwise
            extra["problems"] = {
                key: [problem.removeprefix(f"{checker.source}: ") for problem in checker.problems]
                for key, checker in checkers.items()
            }
            cache.store(records, extra)
        else:
            records, extra = cached
            for key, checker in checkers.items():
                checker.problems.extend(f"{checker.source}: {problem}" for problem in extra["problems"][key])
        self.category_id = int(extra["category_id"])
        order = extra["file_order"]
        self.category = KeypointCategory(self.category_id, None if order is None else tuple(order))
        # annotations left out of the evaluation's ground truth as they were of the records
        self._drop_ids = list(extra["drop_ids"])
        notes += [f"{checkers[key].source}: {text}" for key, text in extra["notes"]]
        self._empty_reason = (
            f"{checkers[extra['empty'][0]].source}: {extra['empty'][1]}" if extra["empty"] else None
        )
        dropped = [line for checker in checkers.values() for line in checker.finish()]
        # fail at construction, not in a worker halfway through the first epoch
        probe = records[:20] if policy.skip else records[:1]
        if probe and not any(Path(r["path"]).is_file() for r in probe):
            raise DataError(
                f"{self.label} image not found: {records[0]['path']} (images belong in {self.image_dir})"
            )
        super().__init__(
            records,
            codec,
            input_size,
            augmentation,
            seed,
            policy=policy,
            dropped=dropped,
            source=checkers.get("det", checkers["gt"]).source,
            notes=notes,
        )

    def _locate_files(
        self,
        data_dir: Path,
        split: str,
        annotation_file: str | Path | None,
        image_dir: str | Path | None,
        bbox_file: str | Path | None,
    ) -> None:
        """``annotation_file``, ``image_dir`` and ``bbox_file`` under ``data_dir`` (the standard
        layout where not given); a DataError naming what is missing."""
        if annotation_file is None:
            self.annotation_file = data_dir / "annotations" / f"person_keypoints_{split}.json"
        else:
            self.annotation_file = data_dir / Path(annotation_file)
        if not self.annotation_file.is_file():
            raise DataError(
                f"{self.label} annotations not found: expected {self.annotation_file} ({self.layout_hint})"
            )
        if image_dir is not None:
            self.image_dir = data_dir / Path(image_dir)
        elif annotation_file is None or (data_dir / "images" / split).is_dir():
            self.image_dir = data_dir / "images" / split
        else:
            self.image_dir = self.annotation_file.parent
        if not self.image_dir.is_dir():
            raise DataError(
                f"{self.label} images not found: expected a folder {self.image_dir} of .jpg files "
                f"({self.layout_hint})"
            )

        self.bbox_file = None if bbox_file is None else data_dir / Path(bbox_file)
        if self.bbox_file is not None and not self.bbox_file.is_file():
            raise DataError(
                f"{self.label} person detections not found: expected {self.bbox_file} "
                f"(a JSON list of image_id, category_id, bbox, score)"
            )

    def _read(
        self, skip_empty: bool, det_score_threshold: float, checkers: dict[str, RecordChecker]
    ) -> tuple[RecordTable, dict[str, Any]]:
        """Parse and check the files: (records, what the index cache keeps besides them)."""
        reading = read_ground_truth_file(
            self.annotation_file, self.image_dir, self.aspect_ratio, skip_empty, self.joint_spec.names,
            checkers["gt"],
        )  # fmt: skip
        notes = [("gt", note) for note in reading.notes]
        if self.bbox_file is None:
            records, tally, what = reading.records, reading.tally, "gt"
            parts = tally.parts(category=f" {reading.category_id}")
            if len(records) and parts:
                notes.append(("gt", f"read {len(records)} persons; not read: {', '.join(parts)}"))
        else:
            # the ground truth's records were read for their checks; the detections are the records
            tally, what = Tally(), "det"
            records = load_detection_records(
                self.bbox_file, reading.coco, self.image_dir, self.aspect_ratio, det_score_threshold,
                self.joint_spec.num_joints, reading.category_id, checkers["det"], tally,
            )  # fmt: skip
            parts = tally.parts(
                **self._detection_words(det_score_threshold, tally, reading.category_id, False)
            )
            if len(records) and parts:
                notes.append(
                    (
                        "det",
                        f"{len(records)} of {tally['seen']} detections used; not used: {', '.join(parts)}",
                    )
                )
        # Indexed: the parsed JSON (a GB for COCO train2017) is freed with ``reading`` before
        # DataLoader workers fork; evaluation reloads it through the ``coco`` property.
        extra = {
            "category_id": reading.category_id,
            "file_order": None if reading.category.file_order is None else list(reading.category.file_order),
            "drop_ids": reading.drop_ids,
            "notes": notes,
            "empty": None
            if len(records)
            else [what, self._why_empty(what, tally, det_score_threshold, reading)],
        }
        return records, extra

    @staticmethod
    def _detection_words(threshold: float, tally: Tally, category_id: int, empty: bool) -> dict[str, str]:
        highest = tally.get("highest")
        best = f" (the highest score is {highest:g})" if empty and highest is not None else ""
        return {"threshold": f" {threshold:g}{best}", "category": f" {category_id}"}

    def _why_empty(self, what: str, tally: Tally, threshold: float, reading: GroundTruthReading) -> str:
        """Why no record came out of the file (one phrase, after its name)."""
        if what == "det":
            if not tally["seen"]:
                return "holds no detections (an empty list)"
            parts = tally.parts(**self._detection_words(threshold, tally, reading.category_id, True))
            if not parts:  # every detection was a bad record
                return f"all {tally['seen']} detections are bad"
            return f"no usable person box among its {tally['seen']} detections: {', '.join(parts)}"
        return why_no_person(tally, reading.category_id)

    def empty_reason(self) -> str:
        return self._empty_reason or super().empty_reason()

    def _index_cache(self, skip_empty: bool, det_score_threshold: float, policy: BadDataPolicy) -> IndexCache:
        """The cache entry of this reading: the files and every option that changes the records
        or the bad-record lines (``policy.skip`` only decides what happens to them later)."""
        options: dict[str, Any] = {
            "image_dir": str(self.image_dir), "aspect_ratio": self.aspect_ratio,
            "joints": list(self.joint_spec.names), "allow_outside_paths": policy.allow_outside_paths,
            "skip_empty": bool(skip_empty),
        }  # fmt: skip
        sources = [self.annotation_file]
        if self.bbox_file is not None:
            options["det_score_threshold"] = float(det_score_threshold)
            sources.append(self.bbox_file)
        modules = [
            __file__, sys.modules[BadRecord.__module__].__file__, sys.modules[Tally.__module__].__file__,
            _metrics_module_file(),
        ]  # fmt: skip
        return IndexCache(self.annotation_file.stem, sources, options, modules)

    def describe(self, index: int) -> str:
        record = self.records[index]
        image = Path(record["path"]).name
        if "detection" in record:
            return f"{self.source}: detection {record['detection']} (image {image})"
        return f"{self.source}: annotation {record['annotation_id']} (image {image})"

    @property
    def coco(self) -> Any:
        """The ground truth as a ``pycocotools.coco.COCO`` object (for metrics.coco), as the reader
        read it (see :func:`read_ground_truth`)."""
        if self._coco is None:
            from metrics.coco import GroundTruthReport, load_gt

            # checked and mended as the reader did (recounted num_keypoints), less the records
            # it dropped: COCOeval scores the persons the reader kept
            self._coco = load_gt(self.annotation_file, report=GroundTruthReport(), drop_ids=self._drop_ids)
        return self._coco

    def evaluate(self, results: dict[str, np.ndarray], output_dir: Path | None = None) -> dict[str, float]:
        """Loss and PCK where the crops have ground truth, and COCO keypoint AP/AR: poses rescored
        by box score x mean confident keypoint score, OKS-NMS per image, then COCOeval, both with
        the joint set's OKS sigmas; ``results.json`` (joints in the file's order) is written into
        ``output_dir``. The persons of samples skipped at load time (``--skipBadSamples 1``: no
        prediction was made for them) are left out of the ground truth, with a note."""
        from metrics.coco import evaluate_keypoints, postprocess_results

        coco, kept = self._scored_ground_truth(results)
        scored = {key: value[kept] for key, value in results.items()} if kept is not None else results
        keypoints = np.concatenate([scored["preds"], scored["scores"][..., None]], axis=-1)  # (N, K, 3)
        # COCOeval and results.json take the joints in the file's order, and its sigmas with them
        keypoints = self.category.to_file_order(keypoints, axis=1)
        sigmas = self.category.to_file_order(np.asarray(self.joint_spec.sigmas, dtype=np.float64))
        # OKS-NMS compares poses at the scale of their crop boxes, as the reference code does
        crop_areas = scored["scale"].astype(np.float64) ** 2 * self.aspect_ratio
        detections = postprocess_results(
            scored["image_id"], keypoints, scored["box_score"], crop_areas,
            sigmas=sigmas, category_id=self.category_id,
        )  # fmt: skip
        if output_dir is not None:
            with open(Path(output_dir) / "results.json", "w", encoding="utf-8") as stream:
                json.dump(detections, stream)
        return super().evaluate(results) | evaluate_keypoints(coco, detections, sigmas=sigmas)

    def _scored_ground_truth(self, results: dict[str, np.ndarray]) -> tuple[Any, np.ndarray | None]:
        """(the ground truth to score, a mask of the results to score or None for all). A record
        without a result was skipped at load time: a ground-truth person is left out; a detection's
        image is left out whole (its other detections and its persons), as its image would not load."""
        from metrics.coco import GroundTruthReport, index_ground_truth

        if "index" not in results:  # not from engine.predict_all: a prediction for every record
            return self.coco, None
        skipped = np.setdiff1d(np.arange(len(self.records)), results["index"])
        if not len(skipped):
            return self.coco, None
        dataset = self.coco.dataset
        # the persons COCOeval scores: of the category, not crowds, with a labelled keypoint
        scored_ids = {
            i
            for i in self.coco.getAnnIds(catIds=[self.category_id], iscrowd=False)
            if self.coco.anns[i].get("num_keypoints", 0) > 0
        }
        if self.bbox_file is None:
            dropped = {int(self.records[int(i)]["annotation_id"]) for i in skipped}
            kept = np.ones(len(results["index"]), dtype=bool)
            total = len(self.records)
        else:
            images = {int(self.records[int(i)]["image_id"]) for i in skipped}
            dropped = {a["id"] for a in dataset["annotations"] if a.get("image_id") in images}
            kept = ~np.isin(results["image_id"], list(images))
            total = len(scored_ids)
        left_out = len(dropped & scored_ids) if self.bbox_file is not None else len(dropped)
        print_note(
            f"{self.source}: AP over {total - left_out} of {total} persons: {left_out} skipped, "
            f"see bad_samples.txt"
        )
        coco = index_ground_truth(
            dict(dataset), self.annotation_file, report=GroundTruthReport(), drop_ids=sorted(dropped)
        )
        return coco, kept

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers need only the records; the full train2017 index is large to copy.
        state = self.__dict__.copy()
        state["_coco"] = None
        return state

    def load_image(self, record: dict[str, Any]) -> np.ndarray:
        """The image as stored (see :meth:`load_decoded`)."""
        return self.load_decoded(record, 1.0).pixels

    def load_decoded(self, record: dict[str, Any], zoom: float) -> DecodedImage:
        """The image as stored, decoded at the size ``zoom`` needs; its stored size must be the
        annotation file's, or the labels would sit on other pixels (a rotated or resized copy of
        the file, for example)."""
        decoded = decode_image(record["path"], zoom, self.image_cache)
        expected = record.get("image_size")
        if expected is not None and decoded.stored_shape != tuple(expected):
            height, width = decoded.stored_shape
            raise DataError(
                f"{record['path']}: decoded image is {width}x{height} (w x h) but "
                f"{self.annotation_file.name} says {expected[1]}x{expected[0]} for image_id "
                f"{record['image_id']}; the file does not match its annotation"
            )
        return decoded

    def sample_transform(self, index: int) -> tuple[np.ndarray, float, float, bool, np.ndarray]:
        """The base augmentation, applied around a half-body box instead of the person box with
        probability ``half_body_prob`` (when the person has enough labelled joints)."""
        center, box_height, rotation, flip, gain = super().sample_transform(index)
        half_body_prob = self.augmentation_switch.half_body_prob if self.switched else self.half_body_prob
        if half_body_prob <= 0 or not self.joint_spec.has_half_body:
            return center, box_height, rotation, flip, gain
        record = self.records[index]
        visible = np.asarray(record["visible"])
        # its own stream, so turning half-body on does not change the other random choices
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        # HRNet picks the upper body when a standard normal draw is below 0.5: probability 0.69
        apply, upper_first = rng.random() < half_body_prob, rng.normal() < 0.5
        if not apply or (visible > 0).sum() <= self.half_body_min_joints:
            return center, box_height, rotation, flip, gain
        spec = self.joint_spec
        box = half_body_box(
            record["joints"], visible, upper_first, self.aspect_ratio, spec.upper_body, spec.lower_body
        )
        if box is None:
            return center, box_height, rotation, flip, gain
        half_center, half_height = box
        # Keep the base jitter, expressed relative to the box: the shift is a fraction of the box
        # height and the zoom a factor, so both carry over to the smaller box.
        ratio = half_height / float(record["scale"])
        shift = center - np.asarray(record["center"], dtype=np.float64)
        return half_center + shift * ratio, box_height * ratio, rotation, flip, gain


def coco_format_arguments(request: DataRequest, train: bool) -> dict[str, Any]:
    """:class:`COCODataset` keyword arguments for a split: training gets the augmentation and
    half-body crops, validation the detection boxes."""
    common: dict[str, Any] = {
        "data_dir": request.data_dir, "codec": request.codec, "input_size": request.input_size,
        "seed": request.seed, "image_dir": request.image_dir, "policy": request.bad_data,
    }  # fmt: skip
    if train:
        return common | {
            "split": "train2017", "augmentation": request.augmentation,
            "annotation_file": request.train_annotation, "half_body_prob": request.half_body_prob,
        }  # fmt: skip
    return common | {
        "split": "val2017", "annotation_file": request.val_annotation, "bbox_file": request.bbox_file,
        "det_score_threshold": request.det_score_threshold,
    }  # fmt: skip


@register_dataset("COCO", joint_spec=COCO_JOINTS)
def build_coco(request: DataRequest, train: bool) -> COCODataset:
    return COCODataset(**coco_format_arguments(request, train))
