"""COCO keypoint evaluation: rescoring, OKS-NMS (numpy) and the pycocotools keypoint AP/AR.

Rescoring and OKS-NMS follow the Simple Baselines / HRNet top-down pipeline: each pose gets
``box score x mean confidence of its keypoints above 0.2``, then per image a greedy OKS-NMS at
0.9 keeps the best-scored poses. COCO keypoint coordinates are 0-based pixels, like the project.

Usage as a script::

    python -m metrics.coco GT.json RESULTS.json          # text table
    python -m metrics.coco GT.json RESULTS.json --json   # one JSON object with the ten numbers
    python -m metrics.coco GT.json RESULTS.json --jointSpec SPEC.json   # another joint set's sigmas
    python -m metrics.coco GT.json RESULTS.json --sigmas 0.026,0.025,...  # the same, typed

The command line reads GT.json as training and validation read it (``datasets.coco``): a bad
record or a duplicate id is an error naming it (``--skipBadSamples 1`` leaves it out, as training
does), and ``num_keypoints`` is counted from the keypoints, so the persons scored are the persons
the readers keep.

Another joint set than COCO's 17 (``--dataset custom``) is scored with its own OKS sigmas
(pycocotools' ``params.kpt_oks_sigmas``); COCO's are never applied to another number of joints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Per-keypoint OKS standard deviations of COCO (nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles), the values pycocotools uses.
COCO_SIGMAS: np.ndarray = np.array(
    [
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ]
)
COCO_SIGMAS.setflags(write=False)

NUM_KEYPOINTS = 17

# A file without ``area`` (CrowdPose as shipped) is scored with 0.53 x the box area, the rule of
# xtcocotools (which MMPose evaluates CrowdPose with): a person fills about half of its box.
AREA_OF_BOX = 0.53
UTF8_BOM = "\ufeff"

# Order of COCOeval.stats for iouType='keypoints'.
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


# --------------------------------------------------------------------------------------------
# OKS, OKS-NMS and rescoring (pure numpy)
# --------------------------------------------------------------------------------------------


def _check_sigmas(sigmas: np.ndarray, k: int) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.shape != (k,):
        raise ValueError(f"sigmas must have shape ({k},) to match the keypoints, got {s.shape}")
    return s


def _check_poses(kpts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, ...]:
    """(N, K) float64 x and y (contiguous), (N,) float64 areas, (K,) OKS variances (2 sigma)^2."""
    kpts = np.asarray(kpts, dtype=np.float64)
    if kpts.ndim != 3 or kpts.shape[2] not in (2, 3):
        raise ValueError(f"kpts must have shape (N, K, 2) or (N, K, 3), got {kpts.shape}")
    n, k = kpts.shape[:2]
    s = _check_sigmas(sigmas, k)
    areas = np.asarray(areas, dtype=np.float64)
    if areas.shape != (n,):
        raise ValueError(f"areas must have shape ({n},), got {areas.shape}")
    return np.ascontiguousarray(kpts[:, :, 0]), np.ascontiguousarray(kpts[:, :, 1]), areas, (2.0 * s) ** 2


def _oks_block(
    a: tuple[np.ndarray, np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray, np.ndarray],
    variances: np.ndarray,
) -> np.ndarray:
    """OKS of every pose in ``a`` = (x (A, K), y (A, K), areas (A,)) with every pose in ``b`` =
    (x (B, K), y (B, K), areas (B,)) -> (A, B).

    The one place OKS is computed, so a row taken by :func:`oks_nms` is bit for bit the entry of
    :func:`pairwise_oks` (a pose exactly at the threshold is decided the same way by both). The
    arithmetic is in place: allocating a temporary per step costs more than the step itself."""
    xa, ya, areas_a = a
    xb, yb, areas_b = b
    d2 = xa[:, None, :] - xb[None, :, :]  # (A, B, K)
    dy = ya[:, None, :] - yb[None, :, :]
    d2 *= d2
    dy *= dy
    d2 += dy
    scale = (areas_a[:, None] + areas_b[None, :]) / 2.0 + np.spacing(1)  # (A, B)
    # e = d2 / variances / scale / 2, then exp(-e): the reference's order of operations
    d2 /= variances
    d2 /= scale[:, :, None]
    d2 /= 2.0
    np.negative(d2, out=d2)
    np.exp(d2, out=d2)
    return d2.mean(axis=-1)


def pairwise_oks(kpts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray = COCO_SIGMAS) -> np.ndarray:
    """OKS between every pair of poses, as the reference OKS-NMS computes it.

    ``oks(a, b) = mean_k exp(-d_k^2 / (2 * (2 sigma_k)^2 * ((area_a + area_b)/2 + eps)))`` over all
    K keypoints (confidences are not used; the reference NMS is called without a visibility
    threshold). eps is ``np.spacing(1)`` so zero areas do not divide by zero.

    Args:
        kpts: (N, K, 2 or 3) poses; only x, y are used.
        areas: (N,) object scale per pose (e.g. the box area), pixels^2.
        sigmas: (K,) per-keypoint sigmas.

    Returns:
        (N, N) float64 symmetric matrix, 1 on the diagonal.
    """
    x, y, areas, variances = _check_poses(kpts, areas, sigmas)
    return _oks_block((x, y, areas), (x, y, areas), variances)


def cross_oks(
    kpts_a: np.ndarray,
    areas_a: np.ndarray,
    kpts_b: np.ndarray,
    areas_b: np.ndarray,
    sigmas: np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """OKS of every pose of one set with every pose of another, by :func:`pairwise_oks`'s rule
    (e.g. a video frame's poses against the tracks of the frames before).

    Args:
        kpts_a: (A, K, 2 or 3) poses; only x, y are used.
        areas_a: (A,) their object scales, pixels^2.
        kpts_b: (B, K, 2 or 3) poses.
        areas_b: (B,) their object scales, pixels^2.
        sigmas: (K,) per-keypoint sigmas.

    Returns:
        (A, B) float64.
    """
    xa, ya, areas_a, variances = _check_poses(kpts_a, areas_a, sigmas)
    xb, yb, areas_b, _ = _check_poses(kpts_b, areas_b, sigmas)
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"both sets need the same keypoints, got {xa.shape[1]} and {xb.shape[1]}")
    return _oks_block((xa, ya, areas_a), (xb, yb, areas_b), variances)


def oks_nms(
    kpts: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float = 0.9,
    sigmas: np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """Greedy OKS non-maximum suppression.

    Poses are visited by decreasing score; a pose is kept unless its OKS with an already kept
    pose is strictly greater than ``threshold`` (OKS equal to the threshold is kept, as in the
    reference ``oks_ovr <= thresh``). Equal scores keep their input order (stable sort).

    Args:
        kpts: (N, K, 3) poses ``(x, y, confidence)``; (N, K, 2) also works.
        scores: (N,) pose scores.
        areas: (N,) object scale per pose, pixels^2.
        threshold: OKS above which the lower-scored pose is suppressed.
        sigmas: (K,) per-keypoint sigmas.

    Returns:
        (M,) int64 indices of the kept poses, highest score first.
    """
    kpts = np.asarray(kpts, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n = kpts.shape[0] if kpts.ndim >= 1 else 0
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {scores.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x, y, areas, variances = _check_poses(kpts, areas, sigmas)
    # Only the OKS of each kept pose with the poses still in the running is needed: the full
    # (N, N, K) matrix costs N^2 K work and memory (a few hundred MB for 1,000 poses), while this
    # does (kept x remaining) K, in rows that stay in cache.
    remaining = np.argsort(-scores, kind="stable")  # candidates, best first
    keep: list[int] = []
    while remaining.size:
        best, rest = remaining[0], remaining[1:]
        keep.append(int(best))
        pose = (x[best : best + 1], y[best : best + 1], areas[best : best + 1])
        oks = _oks_block(pose, (x[rest], y[rest], areas[rest]), variances)[0]
        remaining = rest[~(oks > threshold)]  # a NaN OKS suppresses nothing, as ``oks > threshold``
    return np.asarray(keep, dtype=np.int64)


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Pose score = box score x mean of the keypoint confidences strictly above ``threshold``.

    Convention (same as Simple Baselines / HRNet): when no keypoint confidence exceeds the
    threshold, the keypoint term is 0, so the pose score is 0.

    Args:
        keypoint_scores: (N, K) keypoint confidences.
        box_scores: (N,) detector scores.
        threshold: confidences must be ``> threshold`` to count.

    Returns:
        (N,) float64 pose scores.
    """
    kp = np.asarray(keypoint_scores, dtype=np.float64)
    box = np.asarray(box_scores, dtype=np.float64)
    if kp.ndim != 2:
        raise ValueError(f"keypoint_scores must have shape (N, K), got {kp.shape}")
    if box.shape != (kp.shape[0],):
        raise ValueError(f"box_scores must have shape ({kp.shape[0]},), got {box.shape}")
    valid = kp > threshold
    num = valid.sum(axis=1)
    total = np.where(valid, kp, 0.0).sum(axis=1)
    mean = np.divide(total, num, out=np.zeros_like(total), where=num > 0)
    return box * mean


# --------------------------------------------------------------------------------------------
# Result lists and files
# --------------------------------------------------------------------------------------------


def _check_keypoints(keypoints: np.ndarray, n: int | None = None) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 3:
        raise ValueError(f"keypoints must have shape (N, K, 3), got {kp.shape}")
    if n is not None and kp.shape[0] != n:
        raise ValueError(f"keypoints hold {kp.shape[0]} poses but {n} image ids / scores were given")
    return kp


def make_results(
    image_ids: Sequence[int] | np.ndarray,
    keypoints: np.ndarray,
    scores: Sequence[float] | np.ndarray,
    category_id: int = 1,
) -> list[dict[str, Any]]:
    """COCO keypoint result dicts, one per pose, in input order (no rescoring or NMS).

    Args:
        image_ids: (N,) COCO image ids.
        keypoints: (N, K, 3) ``(x, y, confidence)``, 0-based pixels.
        scores: (N,) pose scores.

    Returns:
        list of ``{"image_id", "category_id", "keypoints": [3K floats], "score"}``.
    """
    ids = np.asarray(image_ids).reshape(-1)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    kp = _check_keypoints(keypoints, ids.shape[0])
    if sc.shape != ids.shape:
        raise ValueError(f"scores hold {sc.shape[0]} values but {ids.shape[0]} image ids were given")
    return [
        {
            "image_id": int(ids[i]),
            "category_id": int(category_id),
            "keypoints": [float(v) for v in kp[i].reshape(-1)],
            "score": float(sc[i]),
        }
        for i in range(ids.shape[0])
    ]


def write_results(
    path: str | Path,
    image_ids: Sequence[int] | np.ndarray,
    keypoints: np.ndarray,
    scores: Sequence[float] | np.ndarray,
    category_id: int = 1,
) -> None:
    """Write a COCO keypoint results JSON (see :func:`make_results` for shapes)."""
    results = make_results(image_ids, keypoints, scores, category_id)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f)


def postprocess_results(
    image_ids: Sequence[int] | np.ndarray,
    keypoints: np.ndarray,
    box_scores: Sequence[float] | np.ndarray,
    areas: Sequence[float] | np.ndarray,
    *,
    vis_threshold: float = 0.2,
    oks_threshold: float = 0.9,
    sigmas: np.ndarray = COCO_SIGMAS,
    category_id: int = 1,
) -> list[dict[str, Any]]:
    """Top-down post-processing: rescore every pose, OKS-NMS per image, build the result list.

    Args:
        image_ids: (N,) image id of each pose.
        keypoints: (N, K, 3) ``(x, y, confidence)`` in 0-based pixels of the original image.
        box_scores: (N,) detector score of the box each pose came from.
        areas: (N,) object scale for OKS-NMS (the reference uses the area of the crop box).
        vis_threshold: keypoint confidence threshold of :func:`rescore`.
        oks_threshold: threshold of :func:`oks_nms`.

    Returns:
        result dicts (as :func:`make_results`), images in order of first appearance, each image's
        kept poses by decreasing rescored score.
    """
    ids = np.asarray(image_ids).reshape(-1)
    kp = _check_keypoints(keypoints, ids.shape[0])
    box = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    ar = np.asarray(areas, dtype=np.float64).reshape(-1)
    if box.shape != ids.shape or ar.shape != ids.shape:
        raise ValueError(
            f"box_scores ({box.shape[0]}) and areas ({ar.shape[0]}) must have one value per pose ({ids.shape[0]})"
        )
    pose_scores = rescore(kp[:, :, 2], box, vis_threshold)
    _, first = np.unique(ids, return_index=True)
    results: list[dict[str, Any]] = []
    for img in ids[np.sort(first)]:
        members = np.flatnonzero(ids == img)
        keep = members[oks_nms(kp[members], pose_scores[members], ar[members], oks_threshold, sigmas)]
        results.extend(make_results(ids[keep], kp[keep], pose_scores[keep], category_id))
    return results


# --------------------------------------------------------------------------------------------
# Evaluation with pycocotools
# --------------------------------------------------------------------------------------------


def _quiet(verbose: bool) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def read_json(path: str | Path, notes: list[str] | None = None) -> Any:
    """Parsed JSON of ``path``; FileNotFoundError or a one-line ValueError naming the file. A UTF-8
    byte-order mark (Windows tools write one) is read past, with a line in ``notes``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.startswith(UTF8_BOM):
            text = text[1:]
            if notes is not None:
                notes.append(f"{path}: starts with a UTF-8 byte-order mark; read without it")
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None


@dataclass
class Duplicate:
    """A later ``images`` or ``annotations`` entry reusing an earlier one's id (positions in the
    file's list). pycocotools indexes both by id, so the later entry replaces the earlier one
    in ``anns`` / ``imgs`` while ``imgToAnns`` keeps both: COCOeval would score an image against
    another image's person, or count one person twice."""

    kind: str  # "annotation" or "image"
    position: int
    first: int  # the earlier entry's position
    id: Any
    detail: str  # the images of the two annotations, or the differing key of the two images
    image: Any  # the later entry's image: its file name (or id)

    def message(self, source: str | Path) -> str:
        """One line naming the file, the id and both entries."""
        return f"{source}: {self.problem()}"

    def problem(self) -> str:
        """The duplicate, both entries and why it matters."""
        where = "annotations" if self.kind == "annotation" else "images"
        consequence = (
            "COCOeval would score an image against another image's person, or one person twice"
            if self.kind == "annotation"
            else "the two could not be told apart"
        )
        return (
            f"duplicate {self.kind} id {show_id(self.id)}: {self.detail}; {self.kind} ids must be unique, "
            f"pycocotools indexes {where} by id ({consequence})"
        )


@dataclass
class GroundTruthReport:
    """What :func:`load_gt` found and mended: the duplicate entries it left out, and the ids of the
    annotations whose ``num_keypoints`` disagreed with their keypoints (the count of labelled
    keypoints, v > 0, which it wrote into ``num_keypoints``)."""

    duplicates: list[Duplicate] = field(default_factory=list)
    recounted: list[Any] = field(default_factory=list)
    no_area: int = 0  # annotations given AREA_OF_BOX x their box area
    no_iscrowd: int = 0  # annotations given iscrowd 0
    bom: bool = False  # the file began with a UTF-8 byte-order mark

    def notes(self) -> list[str]:
        """Lines (to follow the file's name) for what was mended or defaulted."""
        lines = ["starts with a UTF-8 byte-order mark; read without it"] if self.bom else []
        if self.no_area:
            lines.append(
                f"{self.no_area} annotation{'s have' if self.no_area > 1 else ' has'} no 'area': "
                f"{AREA_OF_BOX:g} x its box area is used (xtcocotools' rule, as MMPose scores CrowdPose), "
                f"for the OKS scale and the area ranges of APm and APl"
            )
        if self.no_iscrowd:
            lines.append(
                f"{self.no_iscrowd} annotation{'s have' if self.no_iscrowd > 1 else ' has'} no 'iscrowd': "
                f"0 is used (not a crowd region)"
            )
        if note := self.recount_note():
            lines.append(note)
        return lines

    def recount_note(self) -> str | None:
        """One line (to follow the file's name) for the annotations whose ``num_keypoints`` was
        recounted, or None."""
        if not self.recounted:
            return None
        count = len(self.recounted)
        first = ", ".join(show_id(i) for i in self.recounted[:5]) + (", ..." if count > 5 else "")
        return (
            f"num_keypoints disagrees with the labelled keypoints (v > 0) of {count} "
            f"annotation{'s' if count > 1 else ''} (id{'s' if count > 1 else ''} {first}); the count from the "
            f"keypoints is used, for training and COCOeval alike"
        )


def show_id(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def find_duplicates(dataset: dict[str, Any]) -> list[Duplicate]:
    """Every later annotation whose id an earlier one has, and every later image whose id an
    earlier one has with other contents (an exact copy is harmless), in file order."""
    found: list[Duplicate] = []
    images = [i if isinstance(i, dict) else {} for i in dataset.get("images", [])]
    names = {i.get("id"): i.get("file_name", i.get("id")) for i in images if _hashable(i.get("id"))}
    first_of: dict[Any, int] = {}
    for position, info in enumerate(images):
        key = info.get("id")
        if not _hashable(key) or key is None:
            continue
        first = first_of.setdefault(key, position)
        if first != position and info != images[first]:
            other = images[first]
            differing = next(k for k in (*other, *info) if other.get(k, ...) != info.get(k, ...))
            detail = (
                f"images[{first}] and images[{position}] differ in {differing!r}: "
                f"{_short(other.get(differing, '(absent)'))} vs {_short(info.get(differing, '(absent)'))}"
            )
            found.append(Duplicate("image", position, first, key, detail, info.get("file_name", key)))
    first_of = {}
    annotations = dataset.get("annotations", [])
    for position, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not _hashable(ann.get("id")) or ann.get("id") is None:
            continue
        first = first_of.setdefault(ann["id"], position)
        if first != position:
            image_a, image_b = (annotations[p].get("image_id") for p in (first, position))
            name_a, name_b = (names.get(i, i) if _hashable(i) else i for i in (image_a, image_b))
            detail = f"annotations[{first}] in image {_short(name_a)}, annotations[{position}] in image {_short(name_b)}"
            found.append(Duplicate("annotation", position, first, ann["id"], detail, name_b))
    return found


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."


def labelled_count(keypoints: Any) -> int | None:
    """The number of labelled keypoints (v > 0) in a flat ``[x, y, v, ...]`` list; None if it is
    not such a list (the readers' record checks say so)."""
    if not isinstance(keypoints, list) or len(keypoints) % 3:
        return None
    flags = keypoints[2::3]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flags):
        return None
    return sum(1 for v in flags if v > 0)


def recount_keypoints(annotations: list[Any]) -> list[Any]:
    """Set each annotation's ``num_keypoints`` to its labelled keypoints (v > 0), which is what the
    readers go by; COCOeval reads the field (0 makes a person ignored). Returns the ids of those
    whose field disagreed (a missing field is filled in without counting as a disagreement)."""
    disagreed = []
    for ann in annotations:
        if not isinstance(ann, dict):
            continue
        count = labelled_count(ann.get("keypoints"))
        if count is None:
            continue
        if "num_keypoints" in ann and ann["num_keypoints"] != count:
            disagreed.append(ann.get("id"))
        ann["num_keypoints"] = count
    return disagreed


def default_area_and_crowd(annotations: list[Any]) -> tuple[int, int]:
    """Give each annotation without ``area`` AREA_OF_BOX x its box area (where the box is four
    finite numbers; a bad box is the readers' bad record) and each without ``iscrowd`` 0. Returns
    how many of each were given."""
    no_area = no_iscrowd = 0
    for ann in annotations:
        if not isinstance(ann, dict):
            continue
        if "area" not in ann:
            box = ann.get("bbox")
            if (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
                and all(math.isfinite(v) for v in box)
            ):
                ann["area"] = AREA_OF_BOX * max(float(box[2]), 0.0) * max(float(box[3]), 0.0)
                no_area += 1
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            no_iscrowd += 1
    return no_area, no_iscrowd


def read_gt_json(path: str | Path, report: GroundTruthReport | None = None) -> dict[str, Any]:
    """The parsed ground-truth file, checked to be an object with the lists COCO needs."""
    notes: list[str] = []
    dataset = read_json(path, notes)
    if report is not None:
        report.bom = bool(notes)
    if not isinstance(dataset, dict) or not isinstance(dataset.get("annotations"), list):
        raise ValueError(
            f"{path}: not a COCO ground-truth file (needs an object with 'images' and 'annotations')"
        )
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{path}: not a COCO ground-truth file (no '{key}' list)")
    return dataset


def load_gt(
    path: str | Path,
    verbose: bool = False,
    *,
    report: GroundTruthReport | None = None,
    drop_ids: Sequence[Any] = (),
) -> Any:
    """Load a COCO ground-truth JSON into a ``pycocotools.coco.COCO`` object, checked and mended the
    way the readers read it (see :func:`index_ground_truth`), with clear errors."""
    return index_ground_truth(read_gt_json(path, report), path, verbose, report=report, drop_ids=drop_ids)


def index_ground_truth(
    dataset: dict[str, Any],
    source: str | Path,
    verbose: bool = False,
    *,
    report: GroundTruthReport | None = None,
    drop_ids: Sequence[Any] = (),
) -> Any:
    """The ``pycocotools.coco.COCO`` object of a parsed ground-truth file (changed in place), so
    COCOeval scores the persons the readers keep:

    - a duplicate annotation id, or image id with other contents, is a ValueError naming the file
      and the ids; with ``report`` the later entry is left out and listed there instead;
    - ``num_keypoints`` is recounted from the keypoints (disagreements listed in ``report``);
    - a missing ``area`` is AREA_OF_BOX x the box area and a missing ``iscrowd`` 0, what the
      reference tools use (counted in ``report``): pycocotools needs both;
    - the annotations whose ids are in ``drop_ids`` (records a reader dropped as bad) are left out.
    """
    from pycocotools.coco import COCO

    duplicates = find_duplicates(dataset)
    if duplicates and report is None:
        more = f"; {len(duplicates) - 1} more duplicate ids in this file" if len(duplicates) > 1 else ""
        raise ValueError(duplicates[0].message(source) + more)
    later = {(d.kind, d.position) for d in duplicates}
    if later:
        dataset["images"] = [i for p, i in enumerate(dataset["images"]) if ("image", p) not in later]
        dataset["annotations"] = [
            a for p, a in enumerate(dataset["annotations"]) if ("annotation", p) not in later
        ]
    if drop_ids:
        dropped = set(drop_ids)
        dataset["annotations"] = [
            a
            for a in dataset["annotations"]
            if not (isinstance(a, dict) and _hashable(a.get("id")) and a.get("id") in dropped)
        ]
    recounted = recount_keypoints(dataset["annotations"])
    no_area, no_iscrowd = default_area_and_crowd(dataset["annotations"])
    if report is not None:
        report.duplicates, report.recounted = duplicates, recounted
        report.no_area, report.no_iscrowd = no_area, no_iscrowd
    coco = COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


def keypoint_category_ids(coco_gt: Any) -> list[int]:
    """The ids of the categories that list keypoints (COCO: [1], person)."""
    return [
        c["id"] for c in coco_gt.dataset.get("categories", []) if isinstance(c, dict) and "keypoints" in c
    ]


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a COCO keypoint results JSON (a list of result dicts)."""
    results = read_json(path)
    if not isinstance(results, list):
        raise ValueError(f"{path}: a COCO results file must hold a JSON list, got {type(results).__name__}")
    return results


def _check_results(results: list[Any], coco_gt: Any, source: str) -> int:
    """Check the result list against the ground truth; returns the keypoints per pose."""
    if not results:
        raise ValueError(f"{source}: no keypoint results to evaluate (empty list)")
    num_kpts = None
    keypoint_ids = keypoint_category_ids(coco_gt)
    cats = coco_gt.loadCats(keypoint_ids or coco_gt.getCatIds())
    if cats and "keypoints" in cats[0]:
        num_kpts = len(cats[0]["keypoints"])
    # COCOeval would fail with a bare KeyError deep inside computeOks otherwise (annotations of
    # other categories are not scored: evaluate_keypoints restricts COCOeval to this one)
    scored = set(keypoint_ids) if keypoint_ids else None
    annotations = coco_gt.dataset.get("annotations", [])
    if any("keypoints" not in a for a in annotations if scored is None or a.get("category_id") in scored):
        raise ValueError("ground truth has annotations without 'keypoints': not a person_keypoints file")
    gt_ids = set(coco_gt.getImgIds())
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "keypoints", "score", "category_id"} <= r.keys():
            raise ValueError(
                f"{source}: result {i} must be an object with image_id, category_id, keypoints, score"
            )
        kp = r["keypoints"]
        if not isinstance(kp, list) or len(kp) % 3 or (num_kpts is not None and len(kp) != 3 * num_kpts):
            want = f"{3 * num_kpts}" if num_kpts is not None else "a multiple of 3"
            raise ValueError(
                f"{source}: result {i} has {len(kp) if isinstance(kp, list) else '?'} keypoint values, expected {want}"
            )
        if r["image_id"] not in gt_ids:
            raise ValueError(
                f"{source}: result {i} has image_id {r['image_id']} which is not in the ground truth"
            )
    return num_kpts if num_kpts is not None else len(results[0]["keypoints"]) // 3


def evaluate_keypoints(
    gt: str | Path | Any,
    results: str | Path | list[dict[str, Any]],
    *,
    verbose: bool = False,
    sigmas: np.ndarray | None = None,
) -> dict[str, float]:
    """COCO keypoint AP/AR with pycocotools ``COCOeval(iouType='keypoints')``.

    Only the categories that list keypoints are scored (the readers read one: COCO's person).

    Args:
        gt: ground-truth JSON path (read by :func:`load_gt`: a duplicate id is an error and
            ``num_keypoints`` is recounted) or a ``pycocotools.coco.COCO`` object.
        results: results JSON path or a list of result dicts (see :func:`make_results`). The list
            is deep-copied because pycocotools adds fields to it.
        verbose: let pycocotools print its progress and summary.
        sigmas: (K,) OKS sigmas of the joint set; None keeps pycocotools' COCO defaults, which
            fit only COCO's 17 keypoints (other counts must give theirs).

    Returns:
        ``{name: value}`` for ``STAT_NAMES`` (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl),
        fractions in [0, 1] (-1 where pycocotools has no ground truth in the area range).
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_gt(gt, verbose) if isinstance(gt, (str, Path)) else gt
    if isinstance(results, (str, Path)):
        source = str(results)
        dets = load_results(results)
    else:
        source = "results"
        dets = copy.deepcopy(list(results))
    num_kpts = _check_results(dets, coco_gt, source)
    if sigmas is None and num_kpts != NUM_KEYPOINTS:
        raise ValueError(
            f"{source}: poses have {num_kpts} keypoints; COCO's OKS sigmas are for {NUM_KEYPOINTS}, "
            f"so give the joint set's sigmas (--jointSpec or --sigmas)"
        )
    if sigmas is not None:
        sigmas = _check_sigmas(sigmas, num_kpts)
    with _quiet(verbose):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        if keypoint_category_ids(coco_gt):  # only the keypoint category: the one the readers read
            ev.params.catIds = keypoint_category_ids(coco_gt)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}


def format_table(stats: dict[str, float]) -> str:
    """Render the ten COCO keypoint numbers as a Markdown-style text table (three decimals)."""
    names = list(stats)
    cells = [f"{float(stats[k]):.3f}" for k in names]
    widths = [max(len(a), len(b)) for a, b in zip(names, cells, strict=True)]
    header = "| " + " | ".join(a.rjust(w) for a, w in zip(names, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(b.rjust(w) for b, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([header, rule, row])


def _cli_sigmas(
    joint_spec: str | None, sigmas: str | None
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """(the OKS sigmas the command line gives, a spec file's joint names): (None, None) for
    COCO's; names only with --jointSpec, so the file's keypoint names are checked against them."""
    if joint_spec and sigmas:
        raise ValueError("give --jointSpec or --sigmas, not both")
    if joint_spec:
        from datasets.custom import load_joint_spec  # imported only here: it loads the datasets

        spec = load_joint_spec(joint_spec)
        return np.asarray(spec.sigmas, dtype=np.float64), spec.names
    if sigmas:
        try:
            return np.array([float(v) for v in sigmas.split(",") if v.strip()], dtype=np.float64), None
        except ValueError:
            raise ValueError(f"--sigmas: {sigmas!r} is not a comma-separated list of numbers") from None
    return None, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metrics.coco", description="COCO keypoint AP/AR of a results JSON (pycocotools)."
    )
    parser.add_argument("gt", help="COCO person_keypoints ground-truth JSON")
    parser.add_argument(
        "results", help="COCO keypoint results JSON (list of image_id/category_id/keypoints/score)"
    )
    parser.add_argument("--json", action="store_true", help="print the ten numbers as one JSON object")
    parser.add_argument("--verbose", action="store_true", help="show pycocotools' own output")
    parser.add_argument(
        "--jointSpec", default=None, help="joint spec JSON (--dataset custom): score with its OKS sigmas"
    )
    parser.add_argument("--sigmas", default=None, help="comma-separated OKS sigmas, one per keypoint")
    parser.add_argument(
        "--skipBadSamples", type=int, choices=(0, 1), default=0,
        help="1: leave out the ground truth's bad records and duplicate ids, as training does with it",
    )  # fmt: skip
    parser.add_argument(
        "--allowOutsidePaths", type=int, choices=(0, 1), default=0,
        help="1: accept image paths that are absolute or leave the image folder, as training does with it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        sigmas, names = _cli_sigmas(args.jointSpec, args.sigmas)
        # the ground truth the readers keep (imported here: it loads the datasets and torch)
        from datasets.base import DataError
        from datasets.coco import read_ground_truth
        from datasets.validation import BadDataPolicy

        policy = BadDataPolicy(
            skip=bool(args.skipBadSamples), allow_outside_paths=bool(args.allowOutsidePaths)
        )
        try:
            truth = read_ground_truth(args.gt, policy, None if sigmas is None else len(sigmas), names)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        coco_gt, notes, dropped = truth.coco, truth.notes, truth.dropped
        if sigmas is not None:  # results hold the joints in the file's order, as training writes them
            sigmas = truth.category.to_file_order(sigmas)
        for line in notes:
            print(f"note: {line}", file=sys.stderr)
        if dropped:
            print(
                f"note: {len(dropped)} bad record{'s' if len(dropped) > 1 else ''} of {args.gt} left out "
                f"(--skipBadSamples 1), the first: {dropped[0]}",
                file=sys.stderr,
            )
        stats = evaluate_keypoints(coco_gt, args.results, verbose=args.verbose, sigmas=sigmas)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: (v if math.isfinite(v) else None) for k, v in stats.items()}))
    else:
        print(format_table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
