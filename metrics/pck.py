"""PCK-family metrics as pure numpy functions.

``pck`` is the general form: a joint is correct when its distance to the ground truth is at most
``threshold`` x the person's normaliser; joints without ground truth are left out.
"""

from __future__ import annotations

import numpy as np


def normalised_distances(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, normaliser: np.ndarray
) -> np.ndarray:
    """pred, gt (N, K, 2); visible (N, K); normaliser (N,) -> (N, K) distance / normaliser,
    NaN where the joint has no ground truth or the normaliser is not positive."""
    distances = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    normaliser = np.asarray(normaliser, np.float64)[:, None]
    valid = (np.asarray(visible) > 0) & (normaliser > 0) & np.isfinite(distances)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, distances / normaliser, np.nan)


def pck(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, normaliser: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint fraction correct (K,) in [0, 1] (NaN for a joint never annotated) and the count
    of annotated instances per joint (K,)."""
    scaled = normalised_distances(pred, gt, visible, normaliser)
    valid = np.isfinite(scaled)
    counts = valid.sum(axis=0)
    correct = (np.where(valid, scaled, np.inf) <= threshold).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, correct / counts, np.nan), counts


def weighted_mean(per_joint: np.ndarray, counts: np.ndarray, exclude: tuple[int, ...] = ()) -> float:
    """Mean of per-joint scores weighted by how many of each joint are annotated."""
    keep = np.ones(len(per_joint), dtype=bool)
    keep[list(exclude)] = False
    keep &= counts > 0
    if not keep.any():
        return float("nan")
    return float(np.sum(per_joint[keep] * counts[keep]) / np.sum(counts[keep]))


def pck_summary(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, normaliser: np.ndarray, threshold: float = 0.5
) -> tuple[float, np.ndarray]:
    """PCK in percent with a per-person ``normaliser`` (N,): mean over all joints (weighted by
    annotation counts) and per joint (K,). The classic training monitor uses heatmap size / 10."""
    per_joint, counts = pck(pred, gt, visible, normaliser, threshold)
    return 100.0 * weighted_mean(per_joint, counts), 100.0 * per_joint
