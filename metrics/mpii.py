"""MPII single-person PCKh, computed as the official MATLAB toolkit and the HRNet evaluator do.

Inside the program coordinates are 0-based pixels; the MPII ``.mat`` files hold MATLAB 1-based
pixels, so the conversion happens only in :func:`load_gt_mat`, :func:`save_pred_mat` and
:func:`load_pred_mat`.

Usage as a script::

    python -m metrics.mpii GT.mat PRED.mat          # text table
    python -m metrics.mpii GT.mat PRED.mat --json   # one JSON object keyed by column name
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NUM_JOINTS = 16

# MPII joint order used everywhere in the project (index = joint id); datasets.skeletons.MPII_JOINTS
# takes its names from here.
JOINT_NAMES: tuple[str, ...] = (
    "r_ankle",
    "r_knee",
    "r_hip",
    "l_hip",
    "l_knee",
    "l_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "r_wrist",
    "r_elbow",
    "r_shoulder",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
)

# The short names stored in gt_valid.mat's `dataset_joints`, same order as JOINT_NAMES.
MAT_JOINT_NAMES: tuple[str, ...] = (
    "rank",
    "rkne",
    "rhip",
    "lhip",
    "lkne",
    "lank",
    "pelv",
    "thor",
    "neck",
    "head",
    "rwri",
    "relb",
    "rsho",
    "lsho",
    "lelb",
    "lwri",
)

# Head size = SC_BIAS x head-box diagonal (Andriluka et al. CVPR'14; the toolkit's SC_BIAS).
SC_BIAS = 0.6

# Body-part columns of the standard table and the joints each one averages (right, left).
PART_JOINTS: dict[str, tuple[int, ...]] = {
    "Head": (9,),
    "Shoulder": (12, 13),
    "Elbow": (11, 14),
    "Wrist": (10, 15),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ankle": (0, 5),
}

# Pelvis and thorax are left out of the Mean, as in the official table (14 joints remain).
MEAN_EXCLUDED: tuple[int, ...] = (6, 7)
MEAN_JOINTS: tuple[int, ...] = tuple(j for j in range(NUM_JOINTS) if j not in MEAN_EXCLUDED)

COLUMNS: tuple[str, ...] = (*PART_JOINTS, "Mean", "Mean@0.1")


def _threshold_label(threshold: float) -> str:
    return f"Mean@{threshold:g}"


def head_sizes_from_boxes(headboxes: np.ndarray) -> np.ndarray:
    """PCKh normaliser per person: 0.6 x the length of the head-box diagonal.

    Args:
        headboxes: (N, 2, 2) float, ``[[x1, y1], [x2, y2]]`` per person (any pixel origin,
            the size does not depend on it).

    Returns:
        (N,) float64 head sizes in pixels.
    """
    boxes = np.asarray(headboxes, dtype=np.float64)
    if boxes.ndim != 3 or boxes.shape[1:] != (2, 2):
        raise ValueError(f"headboxes must have shape (N, 2, 2), got {boxes.shape}")
    return SC_BIAS * np.linalg.norm(boxes[:, 1, :] - boxes[:, 0, :], axis=1)


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    ths = tuple(float(t) for t in thresholds)
    if not ths:
        raise ValueError("thresholds must hold at least one value")
    if any(not (math.isfinite(t) and t > 0) for t in ths):
        raise ValueError(f"thresholds must be finite and > 0, got {ths}")
    return ths


def _checked_inputs(
    pred: np.ndarray, gt: np.ndarray, missing: np.ndarray, head_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pred, gt, annotated, head_sizes, has_joints) as float64 / bool arrays of the shapes
    :func:`pckh_table` documents; a ValueError naming the argument otherwise."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    missing = np.asarray(missing)
    head_sizes = np.asarray(head_sizes, dtype=np.float64)

    if gt.ndim != 3 or gt.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"gt must have shape (N, {NUM_JOINTS}, 2), got {gt.shape}")
    n = gt.shape[0]
    if pred.shape != gt.shape:
        raise ValueError(f"pred must have the shape of gt {gt.shape}, got {pred.shape}")
    if missing.shape != (n, NUM_JOINTS):
        raise ValueError(f"missing must have shape ({n}, {NUM_JOINTS}), got {missing.shape}")
    if missing.dtype != np.bool_:
        if not np.isin(missing, (0, 1)).all():
            raise ValueError("missing must be boolean (or 0/1)")
        missing = missing.astype(bool)
    if head_sizes.shape != (n,):
        raise ValueError(f"head_sizes must have shape ({n},), got {head_sizes.shape}")

    annotated = ~missing
    has_joints = annotated.any(axis=1)
    bad = has_joints & ~(np.isfinite(head_sizes) & (head_sizes > 0))
    if bad.any():
        raise ValueError(
            f"head size must be finite and > 0 for persons with annotated joints; "
            f"person {int(np.flatnonzero(bad)[0])} has {head_sizes[bad][0]}"
        )
    return pred, gt, annotated, head_sizes, has_joints


def pckh_table(
    pred: np.ndarray,
    gt: np.ndarray,
    missing: np.ndarray,
    head_sizes: np.ndarray,
    thresholds: Sequence[float] = (0.5, 0.1),
    *,
    pool_sides: bool = False,
) -> dict[str, Any]:
    """Official MPII PCKh table.

    A joint counts as correct when ``||pred - gt|| / head_size <= threshold`` (equality is
    correct, as in the toolkit). Joints with ``missing`` set are left out everywhere, so a person
    whose joints are all missing contributes nothing (and may have a zero or NaN head size).
    Non-finite predictions count as wrong (the toolkit turns NaN predictions into inf).

    Columns (percent), all at ``thresholds[0]`` except the extra means:

    - ``Head``: head top (joint 9) only, as HRNet / Simple Baselines report it.
    - ``Shoulder`` ... ``Ankle``: by default the plain average of the right and left per-joint
      PCKh, which is what the official ``genTablePCK`` and the HRNet evaluator print. With
      ``pool_sides=True`` both sides are pooled by counts instead (correct / annotated over the
      two joints); the two differ only when the sides have different annotation counts. A side
      with no annotated joint is ignored; a part with none on either side is NaN.
    - ``Mean``: the 14 joints other than pelvis and thorax, each weighted by its number of
      annotated instances (= correct / annotated pooled over those 14 joints).
    - ``Mean@t`` for every further threshold ``t`` (``Mean@0.1`` by default), computed the same
      way. Note: HRNet's evaluator labels ``pckAll[11]`` as Mean@0.1 but that row is the 0.11
      threshold of ``arange(0, 0.51, 0.01)``; here the value really is at 0.1.

    Args:
        pred: (N, 16, 2) predicted joints, pixels.
        gt: (N, 16, 2) ground-truth joints, same pixel frame as ``pred``.
        missing: (N, 16) bool, True where the joint is not annotated.
        head_sizes: (N,) head sizes in pixels (see :func:`head_sizes_from_boxes`).
        thresholds: the first value gives the part columns and ``Mean``; each further value
            adds a ``Mean@t`` column.
        pool_sides: pool left and right by counts instead of averaging their percentages.

    Returns:
        dict with
        ``columns``: {column name: percent (float)} in table order, e.g. ``COLUMNS`` by default;
        ``per_joint``: {threshold: (16,) float64 percent per joint, NaN where never annotated};
        ``counts``: (16,) int64 number of annotated instances per joint;
        ``num_persons``: persons with at least one annotated joint;
        ``thresholds``: the thresholds used. :func:`log_dict` flattens it for loggers.
    """
    ths = _check_thresholds(thresholds)
    pred, gt, annotated, head_sizes, has_joints = _checked_inputs(pred, gt, missing, head_sizes)

    # Persons without annotated joints may carry a zero/NaN head size: divide by 1 instead so
    # numpy stays quiet; their entries are masked out below anyway.
    safe_sizes = np.where(has_joints, head_sizes, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        dist = np.linalg.norm(pred - gt, axis=2)
        # Same operation order as the toolkit (distance / head size, then <= threshold) so that
        # joints exactly at the threshold are decided identically.
        scaled = dist / safe_sizes[:, None]
    counts = annotated.sum(axis=0).astype(np.int64)

    per_joint: dict[float, np.ndarray] = {}
    correct_counts: dict[float, np.ndarray] = {}
    for t in ths:
        with np.errstate(invalid="ignore"):
            correct = annotated & (scaled <= t)
        hits = correct.sum(axis=0).astype(np.int64)
        correct_counts[t] = hits
        per_joint[t] = _percent(hits, counts)

    def pooled(hits: np.ndarray, joints: Sequence[int]) -> float:
        total = int(counts[list(joints)].sum())
        return 100.0 * int(hits[list(joints)].sum()) / total if total else float("nan")

    t0 = ths[0]
    columns: dict[str, float] = {}
    for name, joints in PART_JOINTS.items():
        if pool_sides:
            columns[name] = pooled(correct_counts[t0], joints)
        else:
            values = [per_joint[t0][j] for j in joints if counts[j] > 0]
            columns[name] = float(np.mean(values)) if values else float("nan")
    columns["Mean"] = pooled(correct_counts[t0], MEAN_JOINTS)
    for t in ths[1:]:
        columns[_threshold_label(t)] = pooled(correct_counts[t], MEAN_JOINTS)

    return {
        "columns": columns,
        "per_joint": per_joint,
        "counts": counts,
        "num_persons": int(has_joints.sum()),
        "thresholds": ths,
    }


def _percent(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = np.full(hits.shape, np.nan, dtype=np.float64)
    np.divide(100.0 * hits, counts, out=out, where=counts > 0)
    return out


def log_dict(table: Mapping[str, Any], prefix: str = "pckh/") -> dict[str, float]:
    """Flatten a :func:`pckh_table` result into scalar ``{name: value}`` pairs for loggers.

    Keys: ``{prefix}{column}`` for every column, ``{prefix}{joint}@{t}`` for every joint and
    threshold (percent, NaN where the joint is never annotated) and ``{prefix}count/{joint}``.
    """
    out = {f"{prefix}{name}": float(v) for name, v in table["columns"].items()}
    for t, values in table["per_joint"].items():
        for name, v in zip(JOINT_NAMES, values, strict=True):
            out[f"{prefix}{name}@{t:g}"] = float(v)
    for name, c in zip(JOINT_NAMES, table["counts"], strict=True):
        out[f"{prefix}count/{name}"] = float(c)
    return out


def format_table(table: Mapping[str, Any]) -> str:
    """Render the columns of a :func:`pckh_table` result (or a plain {column: value} mapping)
    as a Markdown-style text table with two decimals."""
    columns = table.get("columns", table)
    names = list(columns)
    cells = ["nan" if not math.isfinite(v) else f"{v:.2f}" for v in (float(columns[k]) for k in names)]
    widths = [max(len(a), len(b)) for a, b in zip(names, cells, strict=True)]
    header = "| " + " | ".join(a.rjust(w) for a, w in zip(names, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(b.rjust(w) for b, w in zip(cells, widths, strict=True)) + " |"
    lines = [header, rule, row]
    if "counts" in table:
        counts = table["counts"]
        lines.append(
            f"{table['num_persons']} persons, {int(sum(counts[j] for j in MEAN_JOINTS))} annotated joints "
            f"in the Mean (pelvis and thorax excluded), thresholds {', '.join(f'{t:g}' for t in table['thresholds'])}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Readers and writers (the only places that convert between 1-based files and 0-based arrays)
# --------------------------------------------------------------------------------------------


def _loadmat(path: str | Path) -> dict[str, Any]:
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported ({exc})") from None
    except Exception as exc:  # scipy raises a mix of ValueError/TypeError/... on garbage
        msg = " ".join(str(exc).split())
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(exc).__name__}: {msg})") from None


def _get_key(mat: Mapping[str, Any], key: str, path: str | Path) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise KeyError(f"{path}: missing variable '{key}' (found {found})")
    return np.asarray(mat[key])


def _joints_to_nk2(arr: np.ndarray, key: str, path: str | Path) -> tuple[np.ndarray, bool]:
    """Bring joints stored (N,16,2), (16,2,N) or (2,16,N) to (N,16,2).

    Returns the array and whether the file used MATLAB's person-last order.
    """
    if arr.ndim == 3 and arr.shape[1:] == (NUM_JOINTS, 2):
        return arr, False
    if arr.ndim == 3 and arr.shape[:2] == (NUM_JOINTS, 2):
        return arr.transpose(2, 0, 1), True
    if arr.ndim == 3 and arr.shape[:2] == (2, NUM_JOINTS):
        return arr.transpose(2, 1, 0), True
    raise ValueError(
        f"{path}: '{key}' must have shape (N, {NUM_JOINTS}, 2), ({NUM_JOINTS}, 2, N) or (2, {NUM_JOINTS}, N), "
        f"got {arr.shape}"
    )


def _check_joint_names(mat: Mapping[str, Any], path: str | Path) -> None:
    if "dataset_joints" not in mat:
        return
    try:
        names = tuple(str(np.asarray(x).ravel()[0]) for x in np.asarray(mat["dataset_joints"]).ravel())
    except (IndexError, TypeError):
        raise ValueError(f"{path}: 'dataset_joints' is not a cell array of joint names") from None
    if names != MAT_JOINT_NAMES:
        raise ValueError(f"{path}: 'dataset_joints' is {names}, expected the MPII order {MAT_JOINT_NAMES}")


def load_gt_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``gt_valid.mat`` style ground-truth file.

    The file holds ``pos_gt_src`` (16,2,N), ``jnt_missing`` (16,N) and ``headboxes_src`` (2,2,N)
    in MATLAB 1-based pixels (person-last, as the toolkit writes them). Person-first layouts
    ((N,16,2), (N,16), (N,2,2)) are accepted too; when a dimension is ambiguous (N = 2 or 16)
    the order of ``pos_gt_src`` decides.

    Returns:
        dict with ``joints`` (N,16,2) float64 0-based pixels (values of missing joints are
        meaningless), ``missing`` (N,16) bool, ``head_sizes`` (N,) float64 pixels and
        ``headboxes`` (N,2,2) float64 ``[[x1,y1],[x2,y2]]`` in 0-based pixels.
    """
    mat = _loadmat(path)
    _check_joint_names(mat, path)
    pos = _get_key(mat, "pos_gt_src", path).astype(np.float64)
    joints, person_last = _joints_to_nk2(pos, "pos_gt_src", path)
    n = joints.shape[0]

    jm = _get_key(mat, "jnt_missing", path)
    if jm.shape == (NUM_JOINTS, n) and (person_last or n != NUM_JOINTS):
        missing = jm.T
    elif jm.shape == (n, NUM_JOINTS):
        missing = jm
    else:
        raise ValueError(
            f"{path}: 'jnt_missing' must have shape ({NUM_JOINTS}, {n}) or ({n}, {NUM_JOINTS}), got {jm.shape}"
        )
    if not np.isin(missing, (0, 1)).all():
        raise ValueError(f"{path}: 'jnt_missing' must hold only 0 and 1")

    hb = _get_key(mat, "headboxes_src", path).astype(np.float64)
    if hb.shape == (2, 2, n) and (person_last or n != 2):
        headboxes = hb.transpose(2, 0, 1)
    elif hb.shape == (n, 2, 2):
        headboxes = hb
    else:
        raise ValueError(
            f"{path}: 'headboxes_src' must have shape (2, 2, {n}) or ({n}, 2, 2), got {hb.shape}"
        )

    return {
        "joints": np.ascontiguousarray(joints) - 1.0,
        "missing": np.ascontiguousarray(missing).astype(bool),
        "head_sizes": head_sizes_from_boxes(headboxes),
        "headboxes": np.ascontiguousarray(headboxes) - 1.0,
    }


def save_pred_mat(path: str | Path, preds: np.ndarray) -> None:
    """Write predictions as HRNet's ``pred.mat``: variable ``preds`` of shape (N,16,2).

    Args:
        path: output file.
        preds: (N,16,2) 0-based pixel coordinates in the original images. The file stores them
            1-based (``preds + 1``), exactly like HRNet's evaluator, so the MPII toolkit and
            other evaluators can compare them with the 1-based ground truth directly.
    """
    arr = np.asarray(preds, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"preds must have shape (N, {NUM_JOINTS}, 2), got {arr.shape}")
    from scipy.io import savemat

    savemat(str(path), {"preds": arr + 1.0})


def load_pred_mat(path: str | Path, key: str = "preds") -> np.ndarray:
    """Read predictions written by :func:`save_pred_mat` / HRNet / bearpaw (1-based in the file).

    Accepts ``preds`` stored (N,16,2) (HRNet), (16,2,N) or (2,16,N) (MATLAB person-last, as the
    eval-mpii-pose scripts accept); the ambiguous (2,16,2) is read as N-first.

    Returns:
        (N,16,2) float64, 0-based pixels.
    """
    mat = _loadmat(path)
    arr = _get_key(mat, key, path)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: '{key}' is not numeric (dtype {arr.dtype})")
    arr = arr.astype(np.float64)
    joints, _ = _joints_to_nk2(arr, key, path)
    return np.ascontiguousarray(joints) - 1.0


def evaluate_files(
    gt_path: str | Path, pred_path: str | Path, thresholds: Sequence[float] = (0.5, 0.1)
) -> dict[str, Any]:
    """Load ``gt_valid.mat`` and a prediction ``.mat`` and return :func:`pckh_table` of them."""
    gt = load_gt_mat(gt_path)
    pred = load_pred_mat(pred_path)
    n_gt, n_pred = gt["joints"].shape[0], pred.shape[0]
    if n_gt != n_pred:
        raise ValueError(f"{gt_path} has {n_gt} persons but {pred_path} has {n_pred}")
    return pckh_table(pred, gt["joints"], gt["missing"], gt["head_sizes"], thresholds)


def _json_number(v: float) -> float | None:
    return v if math.isfinite(v) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metrics.mpii", description="MPII PCKh table of predictions against gt_valid.mat."
    )
    parser.add_argument("gt", help="ground truth in the gt_valid.mat layout")
    parser.add_argument("pred", help="predictions .mat with 'preds' (N,16,2), 1-based like HRNet's pred.mat")
    parser.add_argument("--json", action="store_true", help="print the columns (percent) as one JSON object")
    args = parser.parse_args(argv)
    try:
        table = evaluate_files(args.gt, args.pred)
    except (OSError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"{parser.prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    if args.json:
        # NaN is not valid JSON: a column with no annotated joint is written as null.
        print(json.dumps({k: _json_number(v) for k, v in table["columns"].items()}))
    else:
        print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def pckh_metrics(
    preds: np.ndarray, joints: np.ndarray, missing: np.ndarray, head_sizes: np.ndarray
) -> dict[str, float]:
    """The official table as flat metrics: ``PCKh`` (its Mean) and ``PCKh_<column>`` for the
    others (``PCKh_Head``, ..., ``PCKh_Mean@0.1``), in percent."""
    columns = pckh_table(preds, joints, missing, head_sizes)["columns"]
    return {"PCKh": columns["Mean"]} | {
        f"PCKh_{name}": value for name, value in columns.items() if name != "Mean"
    }


def pckh_of(results: dict[str, np.ndarray]) -> dict[str, float]:
    """:func:`pckh_metrics` of gathered predictions of MPII's joints (``preds``, ``joints``,
    ``visible``, ``head_size``), or nothing when a sample has no head size or none has a
    labelled joint."""
    if any(key not in results for key in ("joints", "visible", "head_size")):
        return {}  # predictions alone (a caller scoring them elsewhere)
    if not np.any(results["visible"] > 0) or not np.isfinite(results["head_size"]).all():
        return {}
    return pckh_metrics(results["preds"], results["joints"], results["visible"] <= 0, results["head_size"])
