"""MPII Human Pose, single-person: one record per annotated person, scored with PCKh.

Two annotation formats carry the same persons:

- the pose-hg-train HDF5 files ``annot/{train,valid}.h5`` (fields ``imgname``, ``part``,
  ``visible``, ``center``, ``scale``, ``normalize``, ...). Their center and scale are already
  adjusted (``center_y + 15 * scale``, ``scale * 1.25``) by the script that wrote them, and
  ``normalize`` is the PCKh head size. A missing joint is ``part == (0, 0)``; ``visible`` is
  MPII's occlusion flag, *not* the annotation mask, so it is not used for that.
- the HRNet / Simple-Baselines JSON files ``annot/{train,valid}.json`` (a list of ``image``,
  ``center``, ``scale``, ``joints``, ``joints_vis``). Center and scale are MPII's raw ``objpos``
  and ``scale``, so the same adjustment is applied here; ``joints_vis`` is the annotation mask.
  Head sizes come from a ``gt_valid.mat`` file (same persons, same order).

Both files hold MATLAB 1-based pixels; this module is the only place that subtracts the 1.
Records hold ``center`` in 0-based pixels and ``scale`` = crop box height in pixels
(``200 * adjusted MPII scale``), so both formats give the same crop for the same person.

Supported layouts (``data_dir``)::

    data_dir/images/*.jpg
    data_dir/annot/{split}.h5      (preferred when both exist)
    data_dir/annot/{split}.json    (+ optional data_dir/annot/gt_{split}.mat for head sizes)

or any single annotation file given by ``annotation_file`` (e.g. the flat fixture folder where
images and ``valid_first5.h5`` sit side by side).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from datasets.base import Augmentation, DataError, DecodedImage, KeypointDataset, decode_image, read_image
from datasets.codecs import Codec
from datasets.records import RecordTable
from datasets.registry import DataRequest, register_dataset
from datasets.skeletons import MPII_JOINTS
from datasets.validation import (
    VISIBILITY_FLAGS,
    BadDataPolicy,
    BadRecord,
    RecordChecker,
    image_path,
    numbers,
    show,
)
from metrics.mpii import pckh_of, save_pred_mat

SPLITS = ("train", "valid")
NUM_JOINTS = MPII_JOINTS.num_joints
PIXEL_STD = 200.0  # MPII's scale unit: person height / 200 px
LAYOUT_HINT = "see docs/datasets.md, MPII"


def _resolve(data_dir: Path, path: str | Path) -> Path:
    # Relative paths are relative to data_dir; an absolute path replaces it (pathlib join rule).
    return data_dir / Path(path)


def _find_annotation_file(data_dir: Path, split: str, annotation_file: str | Path | None) -> Path:
    if annotation_file is not None:
        path = _resolve(data_dir, annotation_file)
        if not path.is_file():
            raise DataError(f"MPII annotation file not found: {path} ({LAYOUT_HINT})")
        if path.suffix.lower() not in (".h5", ".hdf5", ".json"):
            raise DataError(f"MPII annotation file {path} must end in .h5, .hdf5 or .json ({LAYOUT_HINT})")
        return path
    candidates = [data_dir / "annot" / f"{split}.h5", data_dir / "annot" / f"{split}.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        f"MPII annotations not found: expected {candidates[0]} or {candidates[1]} ({LAYOUT_HINT})"
    )


def _decode_names(raw: np.ndarray) -> list[str]:
    """Image names stored as fixed-length bytes (N,), objects (N,) or char codes (N, L)."""
    if raw.ndim == 2 and np.issubdtype(raw.dtype, np.integer):
        return [bytes(row.astype(np.uint8)).rstrip(b"\0").decode() for row in raw]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in raw.reshape(-1)]


def _read_hdf5(path: Path) -> dict[str, Any]:
    """Fields in the file's own frame: joints (N,16,2) 1-based, annotated (N,16) bool, center
    (N,2) 1-based and scale (N,) in 200-px units (both already adjusted), head_sizes (N,) or None,
    and ``problems`` {row: message} (none here: the HDF5 arrays have one shape for all rows)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("imgname", "part", "center", "scale") if k not in f]
            if missing:
                raise DataError(f"{path}: not a pose-hg-train MPII HDF5 file (no {', '.join(missing)})")
            names = _decode_names(np.asarray(f["imgname"][()]))
            part = np.asarray(f["part"][()], dtype=np.float64)
            center = np.asarray(f["center"][()], dtype=np.float64)
            scale = np.asarray(f["scale"][()], dtype=np.float64).reshape(-1)
            normalize = (
                np.asarray(f["normalize"][()], dtype=np.float64).reshape(-1) if "normalize" in f else None
            )
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: a field of the MPII HDF5 file is not numbers or names ({exc})") from None
    n = len(names)
    if part.shape != (n, NUM_JOINTS, 2) or center.shape != (n, 2) or scale.shape != (n,):
        raise DataError(
            f"{path}: expected part ({n}, {NUM_JOINTS}, 2), center ({n}, 2), scale ({n},); "
            f"got {part.shape}, {center.shape}, {scale.shape}"
        )
    if normalize is not None and normalize.shape != (n,):
        raise DataError(f"{path}: expected normalize ({n},), got {normalize.shape}")
    # (0, 0) lies outside every image in 1-based pixels, so it can only mean "not annotated".
    annotated = ~(part == 0).all(axis=2)
    if normalize is not None:
        # the converter writes -1 where MPII gives no head box (test-set images)
        normalize = np.where(normalize > 0, normalize, np.nan)
    return {
        "names": names,
        "joints": part,
        "annotated": annotated,
        "center": center,
        "scale": scale,
        "head_sizes": normalize,
        "problems": {},
    }


JSON_KEYS = ("image", "center", "scale", "joints", "joints_vis")


def _json_record(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(joints (16, 2), joints_vis (16,), center (2,), scale) of one JSON record, or BadRecord."""
    if not isinstance(item, dict):
        raise BadRecord(f"is {show(item)}, not an object with {', '.join(JSON_KEYS)}")
    missing = [k for k in JSON_KEYS if k not in item]
    if missing:
        raise BadRecord(f"has no {', '.join(missing)} (HRNet MPII layout: {', '.join(JSON_KEYS)})")
    joints = numbers(item["joints"], 2 * NUM_JOINTS, f"joints ({NUM_JOINTS} [x, y] pairs)").reshape(-1, 2)
    vis = numbers(item["joints_vis"], NUM_JOINTS, "joints_vis")
    center = numbers(item["center"], 2, "center")
    scale = numbers(item["scale"], 1, "scale")[0]
    return joints, vis, center, scale


def _read_json(path: Path) -> dict[str, Any]:
    """Same fields as :func:`_read_hdf5`; MPII's raw objpos/scale get the usual adjustment. A
    record of the wrong shape or type is listed in ``problems`` (its row holds NaN)."""
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(items, list):
        raise DataError(
            f"{path}: expected a JSON list of objects with {', '.join(JSON_KEYS)} (HRNet MPII layout)"
        )
    n = len(items)
    joints = np.full((n, NUM_JOINTS, 2), np.nan)
    vis = np.zeros((n, NUM_JOINTS))
    center = np.full((n, 2), np.nan)
    scale = np.full(n, np.nan)
    problems = {}
    for i, item in enumerate(items):
        try:
            joints[i], vis[i], center[i], scale[i] = _json_record(item)
        except BadRecord as problem:
            problems[i] = str(problem)
    # named with the file's own values, before the adjustment below
    for i in np.flatnonzero(~(np.isfinite(scale) & (scale > 0))):
        problems.setdefault(int(i), f"scale {scale[i]} is not a finite number > 0")
    for i in np.flatnonzero(~np.isfinite(center).all(axis=1)):
        problems.setdefault(int(i), f"center ({center[i, 0]}, {center[i, 1]}) is not finite")
    # Move the box down and enlarge it so the feet stay inside the crop (Newell et al.'s
    # adjustment, which the HDF5 files already contain).
    center[:, 1] += 15.0 * scale
    scale = scale * 1.25
    bad_vis = ~np.isin(vis, VISIBILITY_FLAGS)
    for i in np.flatnonzero(bad_vis.any(axis=1)):
        j = int(np.flatnonzero(bad_vis[i])[0])
        problems.setdefault(int(i), f"joints_vis {j} is {float(vis[i, j]):g}, not 0, 1 or 2")
    return {
        "names": [item.get("image") if isinstance(item, dict) else None for item in items],
        "joints": joints,
        "annotated": vis > 0,
        "center": center,
        "scale": scale,
        "head_sizes": None,
        "problems": problems,
    }


def _record_problems(fields: dict[str, Any], images: Path, policy: BadDataPolicy) -> dict[int, str]:
    """{row: problem} for every bad record: shapes (from the reader), NaN or inf, scale <= 0,
    head size inf, image paths that are absolute or leave ``images``."""
    problems = dict(fields["problems"])
    joints, center, scale = fields["joints"], fields["center"], fields["scale"]
    bad_joint = ~np.isfinite(joints).all(axis=2) & fields["annotated"]
    for i in np.flatnonzero(bad_joint.any(axis=1)):
        j = int(np.flatnonzero(bad_joint[i])[0])
        problems.setdefault(
            int(i), f"annotated joint {j} is ({joints[i, j, 0]}, {joints[i, j, 1]}), not finite"
        )
    for i in np.flatnonzero(~np.isfinite(center).all(axis=1)):
        problems.setdefault(int(i), f"center ({center[i, 0]}, {center[i, 1]}) is not finite")
    for i in np.flatnonzero(~(np.isfinite(scale) & (scale > 0))):
        problems.setdefault(int(i), f"scale {scale[i]} is not a finite number > 0")
    if fields["head_sizes"] is not None:
        for i in np.flatnonzero(np.isinf(fields["head_sizes"])):
            problems.setdefault(int(i), "head size (normalize) is inf")
    paths = []
    for i, name in enumerate(fields["names"]):
        try:
            paths.append(image_path(images, name, policy.allow_outside_paths))
        except BadRecord as problem:
            paths.append(None)
            problems.setdefault(i, str(problem))
    fields["paths"] = paths
    return problems


def _head_sizes_from_mat(path: Path, joints0: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """(N,) head sizes from a gt_valid.mat; checks it describes the same persons in the same order."""
    from metrics.mpii import load_gt_mat

    if not path.is_file():
        raise DataError(f"MPII head boxes not found: {path} (expected a gt_valid.mat layout file)")
    try:
        gt = load_gt_mat(path)
    except (ValueError, KeyError) as exc:
        raise DataError(f"{path}: {exc}") from None
    n = joints0.shape[0]
    if gt["head_sizes"].shape[0] != n:
        raise DataError(f"{path} has {gt['head_sizes'].shape[0]} persons but the annotations have {n}")
    # Same person count is not enough: a file in another order would silently give wrong PCKh.
    # Per person, the median distance tolerates a few edited joints (the HDF5 truncates some).
    both = annotated & ~gt["missing"]
    dist = np.where(both, np.linalg.norm(gt["joints"] - joints0, axis=2), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # persons without common joints give NaN
        off = np.flatnonzero(np.nanmedian(dist, axis=1) > 2.0)
    if off.size:
        raise DataError(
            f"{path}: joints of person {int(off[0])} do not match the annotations (different persons or order)"
        )
    return gt["head_sizes"]


def load_mpii_records(data_dir: str | Path, split: str, **options: Any) -> RecordTable:
    """Read one MPII split into records: :func:`read_mpii`'s records alone (``options``: its
    keyword arguments; it also returns the file, the dropped bad records and notes)."""
    return read_mpii(data_dir, split, **options)[0]


def unlabel_negative_joints(fields: dict[str, Any]) -> int:
    """Read joints marked annotated at negative x and y (the file's 1-based frame) as unlabelled:
    that is where converters put MPII's missing joints ((-1, -1) in the HRNet JSON files), which a
    wrong ``joints_vis`` or ``visible`` would otherwise have trained on as a real point (within
    the image-bounds margin). Returns how many."""
    with np.errstate(invalid="ignore"):
        negative = fields["annotated"] & (fields["joints"] < 0).all(axis=2)
    fields["annotated"] = fields["annotated"] & ~negative
    return int(negative.sum())


def read_mpii(
    data_dir: str | Path,
    split: str,
    head_boxes_mat: str | Path | None = None,
    annotation_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    policy: BadDataPolicy | None = None,
) -> tuple[RecordTable, list[str], Path, list[str]]:
    """Read one MPII split into records.

    Args:
        data_dir: dataset root (see the module docstring for the layouts).
        split: "train" or "valid"; picks ``annot/{split}.h5|json`` unless ``annotation_file``.
        head_boxes_mat: a ``gt_valid.mat`` layout file with the same persons in the same order;
            its head sizes override the HDF5 ``normalize``. Default: the annotation file's
            ``normalize`` (HDF5) or ``gt_{split}.mat`` beside the annotation file, if present.
        annotation_file: an explicit .h5 or .json file (relative paths are under ``data_dir``).
        image_dir: image folder; default ``data_dir/images`` if it exists, else the folder of
            the annotation file (flat layout).
        policy: what to do with bad records (default: a DataError naming the first).

    Returns:
        the records (a :class:`~datasets.records.RecordTable`: a dict per good person), in file
        order: ``joints`` (16, 2) float32 0-based px (0 where not annotated), ``visible`` (16,)
        float32 annotation mask, ``center`` (2,) float32 px, ``scale`` box height px,
        ``head_size`` (px, NaN if unknown), ``image_id`` = row in the file (= row in
        gt_valid.mat), ``image`` (file name) and ``path``; the bad
        records dropped (one line each, with ``policy.skip``); the annotation file; notes (one
        line each: joints at negative x and y read as unlabelled, validation without head sizes).
    """
    if split not in SPLITS:
        raise ValueError(f"MPII split must be one of {SPLITS}, got {split!r}")
    policy = policy or BadDataPolicy()
    data_dir = Path(data_dir)
    path = _find_annotation_file(data_dir, split, annotation_file)
    fields = _read_hdf5(path) if path.suffix.lower() in (".h5", ".hdf5") else _read_json(path)
    notes = []
    negative = unlabel_negative_joints(fields)
    if negative:
        notes.append(
            f"{path}: {negative} joint{'s' if negative > 1 else ''} marked annotated at negative x and y "
            f"(where MPII's missing joints are put, (-1, -1)) read as unlabelled"
        )

    if image_dir is not None:
        images = _resolve(data_dir, image_dir)
    else:
        images = data_dir / "images" if (data_dir / "images").is_dir() else path.parent
    if not images.is_dir():
        raise DataError(f"MPII images not found: expected a folder {images} of .jpg files ({LAYOUT_HINT})")

    problems = _record_problems(fields, images, policy)
    checker = RecordChecker(path, policy)
    names = fields["names"]
    for i in sorted(problems):
        name = names[i] if isinstance(names[i], str) else show(names[i])
        checker.bad(f"record {i}" if names[i] is None else f"record {i} (image {name})", problems[i])
    dropped = checker.finish()
    good = [i for i in range(len(names)) if i not in problems]
    # fail at construction, not in a worker halfway through the first epoch
    probe = good[:1] if not policy.skip else good[:20]
    if probe and not any(fields["paths"][i].is_file() for i in probe):
        raise DataError(f"MPII image not found: {fields['paths'][probe[0]]} (images belong in {images})")

    annotated = fields["annotated"].copy()
    annotated[sorted(problems)] = False  # bad rows take no part in matching the head-box file
    joints0 = np.where(annotated[:, :, None], fields["joints"] - 1.0, 0.0)
    head_sizes = fields["head_sizes"]
    if head_boxes_mat is not None:
        head_sizes = _head_sizes_from_mat(_resolve(data_dir, head_boxes_mat), joints0, annotated)
    elif head_sizes is None and (path.parent / f"gt_{split}.mat").is_file():
        head_sizes = _head_sizes_from_mat(path.parent / f"gt_{split}.mat", joints0, annotated)
    if split == "valid":
        known = 0 if head_sizes is None else int(np.isfinite(np.asarray(head_sizes)[good]).sum())
        if known < len(good):
            source = "HDF5 'normalize'" if fields["head_sizes"] is not None else "head sizes"
            missing = (
                f"no head sizes (no HDF5 'normalize', no --headBoxesMat, no gt_{split}.mat beside it)"
                if head_sizes is None
                else f"{len(good) - known} of {len(good)} persons have no head size ({source} missing or <= 0)"
            )
            notes.append(f"{path}: {missing}: PCKh cannot be scored, so PCK is reported (and picks best.pth)")
    if head_sizes is None:
        head_sizes = np.full(len(names), np.nan)

    # columns, not a dict per person (datasets/records.py)
    records = RecordTable.from_records(
        {
            "joints": joints0[i].astype(np.float32),
            "visible": annotated[i].astype(np.float32),
            "center": (fields["center"][i] - 1.0).astype(np.float32),
            "scale": float(PIXEL_STD * fields["scale"][i]),
            "head_size": float(head_sizes[i]),
            "image_id": i,
            "image": names[i],
            "path": str(fields["paths"][i]),
        }
        for i in good
    )
    return records, dropped, path, notes


class MPIIDataset(KeypointDataset):
    """MPII single-person crops (16 joints); see :func:`read_mpii` for the arguments."""

    joint_spec = MPII_JOINTS
    checks_image_bounds = True

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        codec: Codec,
        input_size: tuple[int, int],
        augmentation: Augmentation | None = None,
        seed: int = 0,
        head_boxes_mat: str | Path | None = None,
        annotation_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        policy: BadDataPolicy | None = None,
    ) -> None:
        self.split = split
        records, dropped, path, notes = read_mpii(
            data_dir, split, head_boxes_mat, annotation_file, image_dir, policy
        )
        self.file_rows = len(records) + len(dropped)  # persons in the annotation file, bad ones included
        super().__init__(
            records, codec, input_size, augmentation, seed, policy=policy, dropped=dropped, source=path,
            notes=notes,
        )  # fmt: skip

    def describe(self, index: int) -> str:
        record = self.records[index]
        return f"{self.source}: record {record['image_id']} (image {record['image']})"

    def load_image(self, record: dict[str, Any]) -> np.ndarray:
        return read_image(record["path"])

    def load_decoded(self, record: dict[str, Any], zoom: float) -> DecodedImage:
        return decode_image(record["path"], zoom, self.image_cache)

    @property
    def main_metric(self) -> str:
        return "PCKh" if self.has_head_sizes else "PCK"

    def evaluate(self, results: dict[str, np.ndarray], output_dir: Path | None = None) -> dict[str, float]:
        """Loss, PCK and the official PCKh table from the records' head sizes (without head sizes
        PCK alone, as the reader's note says); ``pred.mat`` (HRNet layout, scored by
        ``python -m metrics.mpii``) into ``output_dir``. Its rows follow the annotation file, so a
        bad record dropped from it, or a sample skipped at load time, leaves a row of zeros (scored
        as a miss there; PCKh here scores the samples predicted)."""
        if output_dir is not None:
            preds = results["preds"]
            if len(preds) != self.file_rows:  # records dropped as bad, or samples skipped at load time
                preds = np.zeros((self.file_rows, *results["preds"].shape[1:]))
                preds[results["image_id"].astype(int)] = results["preds"]
            save_pred_mat(Path(output_dir) / "pred.mat", preds)
        return super().evaluate(results) | pckh_of(results)

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(joints (N, 16, 2) 0-based px, missing (N, 16) bool, head sizes (N,)) in record order,
        the arguments :func:`metrics.mpii.pckh_table` takes besides the predictions."""
        joints = self.records.column("joints").astype(np.float64)
        missing = self.records.column("visible") == 0
        head_sizes = self.records.column("head_size").astype(np.float64)
        return joints, missing, head_sizes


@register_dataset("MPII", joint_spec=MPII_JOINTS)
def build_mpii(request: DataRequest, train: bool) -> MPIIDataset:
    common = {
        "codec": request.codec, "input_size": request.input_size, "seed": request.seed,
        "policy": request.bad_data,
    }  # fmt: skip
    if train:
        return MPIIDataset(
            request.data_dir, "train", augmentation=request.augmentation,
            annotation_file=request.train_annotation, image_dir=request.image_dir, **common,
        )  # fmt: skip
    return MPIIDataset(
        request.data_dir, "valid", annotation_file=request.val_annotation,
        head_boxes_mat=request.head_boxes_mat, image_dir=request.image_dir, **common,
    )  # fmt: skip
