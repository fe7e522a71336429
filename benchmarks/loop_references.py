"""Plain per-person, per-joint Python loops computing what the project's vectorised metrics and
decoder compute: the baseline of ``benchmarks/evaluation_inference.py`` and the correctness
reference of ``tests/test_fast_paths.py``.

Each function follows the written definition one person and one joint at a time, with Python
floats and the ``math`` module, and shares no code with the functions it checks (only the joint
names and the OKS sigmas, which are data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metrics.coco import COCO_SIGMAS
from metrics.mpii import JOINT_NAMES

# The official table's columns by joint name (right, left); pelvis and thorax are not in the Mean.
_PARTS = {
    "Head": ("head_top",),
    "Shoulder": ("r_shoulder", "l_shoulder"),
    "Elbow": ("r_elbow", "l_elbow"),
    "Wrist": ("r_wrist", "l_wrist"),
    "Hip": ("r_hip", "l_hip"),
    "Knee": ("r_knee", "l_knee"),
    "Ankle": ("r_ankle", "l_ankle"),
}
_NOT_IN_MEAN = ("pelvis", "thorax")


def pckh_table_loop(
    pred: np.ndarray,
    gt: np.ndarray,
    missing: np.ndarray,
    head_sizes: np.ndarray,
    thresholds: Sequence[float] = (0.5, 0.1),
    pool_sides: bool = False,
) -> dict[str, Any]:
    """The MPII PCKh table of ``metrics.mpii.pckh_table`` (same arguments, same result keys), by
    a loop over persons and joints: a joint is correct when its distance over the head size is
    at most the threshold; missing joints count nowhere."""
    n_joints = len(JOINT_NAMES)
    counts = [0] * n_joints
    hits = {float(t): [0] * n_joints for t in thresholds}
    persons = 0
    for person in range(len(gt)):
        annotated_any = False
        for joint in range(n_joints):
            if missing[person, joint]:
                continue
            annotated_any = True
            counts[joint] += 1
            dx = float(pred[person, joint, 0]) - float(gt[person, joint, 0])
            dy = float(pred[person, joint, 1]) - float(gt[person, joint, 1])
            distance = math.sqrt(dx * dx + dy * dy)  # inf or NaN for a non-finite prediction
            for t in hits:
                if distance / float(head_sizes[person]) <= t:  # False for NaN and inf
                    hits[t][joint] += 1
        if annotated_any:
            persons += 1

    def percent(t: float, joint: int) -> float:
        return 100.0 * hits[t][joint] / counts[joint] if counts[joint] else math.nan

    def pooled(t: float, joints: Sequence[int]) -> float:
        total = sum(counts[j] for j in joints)
        return 100.0 * sum(hits[t][j] for j in joints) / total if total else math.nan

    first = float(thresholds[0])
    columns: dict[str, float] = {}
    for name, joint_names in _PARTS.items():
        joints = [JOINT_NAMES.index(j) for j in joint_names]
        if pool_sides:
            columns[name] = pooled(first, joints)
        else:
            values = [percent(first, j) for j in joints if counts[j] > 0]
            columns[name] = sum(values) / len(values) if values else math.nan
    mean_joints = [j for j in range(n_joints) if JOINT_NAMES[j] not in _NOT_IN_MEAN]
    columns["Mean"] = pooled(first, mean_joints)
    for t in thresholds[1:]:
        columns[f"Mean@{float(t):g}"] = pooled(float(t), mean_joints)
    return {
        "columns": columns,
        "per_joint": {t: np.array([percent(t, j) for j in range(n_joints)]) for t in hits},
        "counts": np.array(counts, dtype=np.int64),
        "num_persons": persons,
    }


def oks_loop(a: np.ndarray, b: np.ndarray, area_a: float, area_b: float, sigmas: Sequence[float]) -> float:
    """OKS of two poses (K, 2+) as the reference OKS-NMS defines it: the mean over keypoints of
    exp(-d^2 / (2 (2 sigma)^2 s)), s the mean of the two areas plus machine epsilon."""
    scale = (float(area_a) + float(area_b)) / 2.0 + float(np.spacing(1))
    total = 0.0
    for k, sigma in enumerate(sigmas):
        dx = float(a[k, 0]) - float(b[k, 0])
        dy = float(a[k, 1]) - float(b[k, 1])
        variance = (2.0 * float(sigma)) ** 2
        total += math.exp(-((dx * dx + dy * dy) / variance / scale / 2.0))
    return total / len(sigmas)


def oks_nms_loop(
    kpts: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float = 0.9,
    sigmas: Sequence[float] = COCO_SIGMAS,
) -> list[int]:
    """Greedy OKS-NMS of ``metrics.coco.oks_nms``: visit poses by decreasing score (ties in input
    order) and keep each one whose OKS with every pose kept so far is at most ``threshold``."""
    order = sorted(range(len(kpts)), key=lambda i: -float(scores[i]))  # sorted() is stable
    keep: list[int] = []
    for i in order:
        if all(oks_loop(kpts[i], kpts[j], areas[i], areas[j], sigmas) <= threshold for j in keep):
            keep.append(i)
    return keep


def decode_quarter_loop(
    heatmaps: np.ndarray, input_size: tuple[int, int], anchor: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``HeatmapCodec.decode`` with the quarter rule, one heatmap at a time: the first maximum in
    row-major order, moved a quarter pixel towards the higher neighbour on each axis (not on the
    border, not on a tie), then mapped from the heatmap (W, H) to the input crop ``input_size``
    (w, h): ``(u + anchor) * w / W - anchor``.

    heatmaps (N, K, H, W) -> joints (N, K, 2) input px, scores (N, K) peak values."""
    n, k, height, width = heatmaps.shape
    joints = np.zeros((n, k, 2))
    scores = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            heatmap = heatmaps[i, j]
            row, col = divmod(int(np.argmax(heatmap)), width)  # argmax: the first maximum
            px, py = float(col), float(row)
            if 0 < col < width - 1:
                right, left = float(heatmap[row, col + 1]), float(heatmap[row, col - 1])
                px += 0.25 if right > left else -0.25 if right < left else 0.0
            if 0 < row < height - 1:
                below, above = float(heatmap[row + 1, col]), float(heatmap[row - 1, col])
                py += 0.25 if below > above else -0.25 if below < above else 0.0
            joints[i, j, 0] = (px + anchor) * input_size[0] / width - anchor
            joints[i, j, 1] = (py + anchor) * input_size[1] / height - anchor
            scores[i, j] = float(heatmap[row, col])
    return joints, scores
