"""Keypoint dataset base: a person record -> one affine crop (with augmentation) -> codec -> dict.

Every dataset (synthetic, MPII, COCO) supplies records and ``load_image``; everything after that
is shared, so the same crop, augmentation and target code serves all of them.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.codecs import Codec
from datasets.skeletons import JointSpec
from datasets.validation import SKIP_HINT, BadDataPolicy
from metrics.pck import pck_summary
from utils.transforms import apply_affine, compose_affine, invert_affine, warp_image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Every sample's meta has exactly these keys, whatever the dataset, so batches always collate.
META_KEYS = (
    "index", "image_id", "center", "scale", "rotation", "flipped", "joints", "visible",
    "head_size", "area", "box_score", "inverse_affine", "color_gain",
)  # fmt: skip


@dataclass(frozen=True)
class Augmentation:
    """Training-time randomisation; ``Augmentation()`` (all zero) means none."""

    max_scale: float = 0.0  # box scaled by 1 +- max_scale (normal, clipped)
    max_rotate: float = 0.0  # degrees, normal with this sigma, clipped at 2 sigma
    rotate_prob: float = 0.0
    max_translate: float = 0.0  # fraction of the box height, uniform
    flip_prob: float = 0.0
    color_jitter: float = 0.0  # per-channel gain 1 +- color_jitter, uniform


@dataclass(frozen=True)
class AugmentationSwitch:
    """From ``epoch`` on (1-based), training samples use ``augmentation`` and ``half_body_prob``
    instead of the dataset's own (RTMPose's milder pipeline for its last epochs)."""

    epoch: int
    augmentation: Augmentation
    half_body_prob: float = 0.0  # datasets with half-body crops (COCO format) only


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std), each (1, 3, 1, 1) on ``device``: made once per device, so a
    batch costs no host-to-device copy of constants."""
    std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (mean / std).to(device)


def normalise_batch(images: torch.Tensor, gains: torch.Tensor | None = None) -> torch.Tensor:
    """The one pixel normalisation: uint8 RGB crops (N, 3, h, w) and the augmentation's colour
    gains (N, 3) -> (N, 3, h, w) float32 network input, computed where the crops are: scaled to
    [0, 1], times the gain, minus the ImageNet mean, over its std."""
    scale, shift = _normalisation(images.device)
    if gains is not None:
        gains = gains.to(images.device, dtype=torch.float32, non_blocking=images.device.type == "cuda")
        scale = gains.view(-1, 3, 1, 1) * scale
    return images.float() * scale - shift


def normalise(crop: np.ndarray, gain: np.ndarray | float = 1.0) -> np.ndarray:
    """(h, w, 3) uint8 RGB crop -> (3, h, w) float32 network input, by :func:`normalise_batch`
    (``gain``: the colour gain of augmentation, one number or one per channel)."""
    image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    gains = torch.from_numpy(np.broadcast_to(np.asarray(gain, dtype=np.float32), (3,)).copy())[None]
    return normalise_batch(image, gains)[0].numpy()


class DataError(RuntimeError):
    """A missing, unreadable or corrupt data file or record; one line naming the path (and the
    record) and what is wrong or expected."""


_PRINTED_NOTES: set[str] = set()


def print_note(line: str) -> None:
    """``note: line`` on stderr, once per process (training and validation may read one file),
    from the first process of a torchrun only."""
    import os
    import sys

    if line in _PRINTED_NOTES or os.environ.get("RANK", "0") != "0":
        return
    _PRINTED_NOTES.add(line)
    print(f"note: {line}", file=sys.stderr)


def check_record_in_image(record: dict[str, Any], shape: tuple[int, ...]) -> None:
    """DataError if the record's labelled joints or centre lie far outside its decoded image."""
    from datasets.validation import BadRecord, check_inside

    height, width = shape[:2]
    labelled = np.flatnonzero(np.asarray(record["visible"]) > 0)
    try:
        check_inside(np.asarray(record["joints"])[labelled], width, height, [f"joint {j}" for j in labelled])
        check_inside(np.asarray(record["center"]), width, height, ["box centre"])
    except BadRecord as error:
        raise DataError(str(error)) from None


def _read_bytes(path: str | Path) -> bytes:
    from datasets.validation import check_image_bytes

    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise DataError(f"cannot read image {path}: no such file") from None
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error.strerror or error}") from None
    check_image_bytes(data, path)
    return data


def _decode_with_opencv(data: bytes, path: str | Path, upright: bool) -> np.ndarray:
    from datasets.validation import describe_start

    flags = cv2.IMREAD_COLOR if upright else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        image = None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"cannot read image {path}: not decodable ({describe_start(data)})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, upright: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB; raises DataError naming the path if it is missing, empty, not an
    image, or a JPEG or PNG cut short (see :func:`datasets.validation.check_image_bytes`).

    By default the bitmap is returned as stored, ignoring any EXIF orientation tag: dataset
    annotations (and COCO's width/height) refer to the stored pixels, as in HRNet. ``upright``
    applies the tag instead, giving the image as a viewer shows it (a user's own photos).
    """
    return _decode_with_opencv(_read_bytes(path), path, upright)


# libjpeg-turbo can decode a JPEG at k/8 of its stored size by scaling its inverse DCT, which
# skips most of the pixel work (Huffman decoding, about 1.5 ms for a 1280x720 MPII image, stays).
# k = 3 and k = 7 cost more than k = 4 and k = 8 (benchmarks/data_pipeline.py prints the costs),
# so they are never chosen.
JPEG_EIGHTHS = (1, 2, 4, 5, 6, 8)


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded at ``scale`` times its stored size: stored pixel x (pixel centres at
    integers) is decoded pixel ``(x + 0.5) * scale - 0.5``. ``stored_shape`` is (H, W) as stored,
    which is what annotations refer to."""

    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    scale: float
    stored_shape: tuple[int, int]

    def from_stored(self) -> np.ndarray:
        """(2, 3) matrix mapping stored-image pixels to decoded pixels."""
        s = self.scale
        return np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]])


def jpeg_eighths(zoom: float) -> int:
    """The smallest k in JPEG_EIGHTHS with k / 8 >= ``zoom``: the cheapest decode that still has
    at least the resolution of a crop showing the image at ``zoom`` crop pixels per image pixel."""
    return next((k for k in JPEG_EIGHTHS if k / 8 >= zoom - 1e-9), 8)


def decode_image(path: str | Path, zoom: float = 1.0, cache: Path | None = None) -> DecodedImage:
    """The stored bitmap (EXIF orientation ignored, as :func:`read_image`), decoded only as large
    as a crop at ``zoom`` (crop pixels per image pixel) needs: a JPEG at the cheapest k/8 scale
    with k / 8 >= zoom, anything else (or a JPEG libjpeg-turbo reports damaged, which OpenCV then
    judges as before) at full size.

    ``cache``: a folder of decoded bitmaps (see :class:`DecodedCache`); a bitmap found there is
    memory-mapped instead of decoded."""
    import simplejpeg

    data = _read_bytes(path)
    is_jpeg = data.startswith(b"\xff\xd8")
    k, height, width = 8, 0, 0
    if is_jpeg:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            k = jpeg_eighths(zoom)
        except ValueError:
            is_jpeg = False  # OpenCV judges it below
    entry = DecodedCache(cache).entry(path, data, k) if cache is not None else None
    if entry is not None:
        found = DecodedCache.read(entry)
        if found is not None:
            # the header gave the stored size; a bitmap of that size was decoded at full scale
            stored = (height, width) if is_jpeg else found.shape[:2]
            return DecodedImage(found, 1.0 if found.shape[:2] == stored else k / 8, stored)
    decoded = None
    if is_jpeg:
        need = (-(-height * k // 8), -(-width * k // 8))  # libjpeg rounds scaled sizes up
        try:
            pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=need[0], min_width=need[1])
            if pixels.shape[:2] == need:
                decoded = DecodedImage(pixels, k / 8, (height, width))
        except ValueError:
            pass
    if decoded is None:
        pixels = _decode_with_opencv(data, path, upright=False)
        decoded = DecodedImage(pixels, 1.0, pixels.shape[:2])
    if entry is not None:
        DecodedCache.write(entry, decoded.pixels)
    return decoded


class DecodedCache:
    """Decoded bitmaps on disk, one uint8 ``.npy`` per (image file, decode scale), named by a hash
    of the file's path, size, modification time and the scale, so an edited image is decoded
    afresh. Reading one is a memory map (the page cache shares it between DataLoader workers), so
    from the second epoch on no JPEG is decoded. Entries are written atomically; an unreadable
    entry is decoded and written again, never an error."""

    VERSION = 2  # 2: the bare bitmap; its scale and stored size come from the JPEG header

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def entry(self, path: str | Path, data: bytes, k: int) -> Path:
        import hashlib

        info = Path(path).stat()
        key = f"{self.VERSION}|{Path(path).resolve()}|{len(data)}|{info.st_mtime_ns}|{k}"
        name = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.npy"

    @staticmethod
    def read(entry: Path) -> np.ndarray | None:
        """The (h, w, 3) uint8 bitmap of an entry, memory-mapped; None if it is missing or damaged."""
        try:
            pixels = np.load(entry, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        return pixels if pixels.ndim == 3 and pixels.dtype == np.uint8 else None

    @staticmethod
    def write(entry: Path, pixels: np.ndarray) -> None:
        import os
        import tempfile

        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=entry.parent, suffix=".tmp", delete=False) as stream:
                np.save(stream, pixels, allow_pickle=False)
            os.replace(stream.name, entry)
        except OSError:
            pass  # a full or read-only disk costs speed, not the sample


def allow_hint(bad: int, total: int) -> str:
    """How to let ``bad`` of ``total`` samples be skipped: the smallest --maxBadFraction, rounded
    up to two significant digits, that allows them."""
    fraction = bad / total
    digits = max(2 - 1 - math.floor(math.log10(fraction)), 0)
    allowing = math.ceil(fraction * 10**digits) / 10**digits
    return f"--maxBadFraction {allowing:g} allows {bad}"


def generic_metrics(results: dict[str, np.ndarray]) -> dict[str, float]:
    """Loss and PCK@0.5 with normaliser heatmap size / 10, over all samples at once; none of these
    when no sample has a labelled joint (crops from a detector's boxes): there is nothing to
    compare with, and the dataset's own metric (COCO AP) does the scoring."""
    if "visible" not in results or not np.any(results["visible"] > 0):
        return {}
    loss = float(np.mean(results["loss"])) if len(results["loss"]) else math.nan
    # heatmap height / 10 in heatmap pixels is the crop's box height / 10 in image pixels,
    # because the crop is a similarity transform
    pck, _ = pck_summary(results["preds"], results["joints"], results["visible"], results["scale"] / 10.0)
    return {"loss": loss, "PCK": pck}


class KeypointDataset(Dataset, ABC):
    """Records are dicts with ``joints`` (K, 2) 0-based px, ``visible`` (K,), ``center`` (2,) px,
    ``scale`` (box height in px), and optionally ``head_size``, ``image_id``, ``area``,
    ``box_score``. Subclasses implement ``load_image(record)``.

    Randomness comes from a generator seeded by (seed, epoch, index), so a sample's augmentation
    depends on nothing else: worker count, batch order and resuming do not change it.
    """

    joint_spec: JointSpec
    # whether a record's labelled joints and centre must lie near its decoded image (real data;
    # the synthetic people may leave their image)
    checks_image_bounds = False
    # a DecodedCache folder for load_decoded (set by build_datasets from --imageCache), or None
    image_cache: Path | None = None
    # the augmentation of the later epochs (set by build_datasets from --stage2Epoch), or None
    augmentation_switch: AugmentationSwitch | None = None

    def __init__(
        self,
        records: list[dict[str, Any]],
        codec: Codec,
        input_size: tuple[int, int],
        augmentation: Augmentation | None = None,
        seed: int = 0,
        *,
        policy: BadDataPolicy | None = None,
        dropped: Sequence[str] = (),
        source: str | Path = "",
        notes: Sequence[str] = (),
    ) -> None:
        self.records = records
        self.codec = codec
        self.input_size = tuple(input_size)  # (width, height)
        self.augmentation = augmentation or Augmentation()
        self.seed = seed
        # in shared memory, so DataLoader workers kept between epochs (persistent_workers) see
        # the epoch set_epoch gives in the main process
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._flip_perm = self.joint_spec.flip_permutation()
        # Bad data (datasets/validation.py): the annotation file's bad records, already dropped,
        # and with policy.skip a flag per record whose image turned out bad, in shared memory so
        # DataLoader workers' findings reach the main process (datasets/loading.py reports them).
        self.policy = policy or BadDataPolicy()
        self.source = str(source) or type(self).__name__
        self.dropped = list(dropped)
        # what the reader passed over or mended without an error, one line each: printed here,
        # and written to log.txt when the run's first pass starts (datasets.loading.BadSampleReport)
        self.notes = list(dict.fromkeys(notes))
        for line in self.notes:
            print_note(line)
        total = len(self.dropped) + len(records)
        if self.policy.too_many(len(self.dropped), total):
            raise DataError(self._too_many_message(len(self.dropped), total, self.dropped[0]))
        if self.dropped and not records:
            raise DataError(f"{self.source}: every record is bad; the first: {self.dropped[0]}")
        self.bad_flags = (
            torch.zeros(len(records), dtype=torch.uint8).share_memory_() if self.policy.skip else None
        )
        self.in_flight: torch.Tensor | None = None  # (workers, 2): [index, loading?] per worker

    def __len__(self) -> int:
        return len(self.records)

    def write_examples(self, folder: Path) -> Path | None:
        """Pictures a model trained on this dataset can be tried on with ``-predict``, written into
        ``folder`` with their person boxes; returns the box file (``--bboxFile``), or None for a
        dataset whose users have pictures of their own (every real one)."""
        return None

    @property
    def has_head_sizes(self) -> bool:
        """Whether every record carries a head size, so PCKh (not only PCK) can be scored."""
        return bool(self.records) and all(np.isfinite(r.get("head_size", np.nan)) for r in self.records)

    @property
    def main_metric(self) -> str:
        """The metric that picks best.pth (a dataset with an official metric names it)."""
        return "PCK"

    def evaluate(self, results: dict[str, np.ndarray], output_dir: Path | None = None) -> dict[str, float]:
        """Metrics of gathered predictions (see engine.predict_all), with any files written into
        ``output_dir``. Here the ones every dataset has, :func:`generic_metrics`; a dataset with
        an official metric (MPII's PCKh, COCO's AP) adds it."""
        del output_dir
        return generic_metrics(results)

    def crop_joints(self) -> tuple[np.ndarray, np.ndarray]:
        """Every record's joints in its crop without augmentation, (N, K, 2) input px float64, and
        ``visible`` (N, K), from the records alone (no image is read): the box centre and height
        as :meth:`make_sample` crops them, unrotated and unflipped."""
        convention = self.codec.convention
        if hasattr(self.records, "column"):  # a RecordTable: whole columns, no dict per record
            columns = {key: self.records.column(key) for key in ("joints", "visible", "center", "scale")}
        else:
            columns = {
                key: np.stack([np.asarray(record[key], dtype=np.float64) for record in self.records])
                for key in ("joints", "visible", "center", "scale")
            }
        joints = np.empty(columns["joints"].shape, dtype=np.float64)
        for index in range(len(joints)):
            matrix = convention.crop(
                columns["center"][index], float(columns["scale"][index]), self.input_size
            )
            joints[index] = apply_affine(columns["joints"][index], matrix)
        return joints, np.asarray(columns["visible"], dtype=np.float64)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def switched(self) -> bool:
        """Whether this epoch is past the augmentation switch (read where the sample is made, so
        DataLoader workers kept between epochs follow set_epoch)."""
        switch = self.augmentation_switch
        return switch is not None and self.epoch >= switch.epoch

    @property
    def active_augmentation(self) -> Augmentation:
        return self.augmentation_switch.augmentation if self.switched else self.augmentation

    @abstractmethod
    def load_image(self, record: dict[str, Any]) -> np.ndarray:
        """(H, W, 3) uint8 RGB image the record's joints refer to."""

    def load_decoded(self, record: dict[str, Any], zoom: float) -> DecodedImage:
        """The record's image, possibly decoded smaller than stored when the crop shows it at
        ``zoom`` (< 1) crop pixels per image pixel; datasets reading JPEG files override this
        with :func:`decode_image`. By default the full :meth:`load_image`."""
        del zoom
        pixels = self.load_image(record)
        return DecodedImage(pixels, 1.0, pixels.shape[:2])

    def sample_transform(self, index: int) -> tuple[np.ndarray, float, float, bool, np.ndarray]:
        """(center, box height, rotation, flip, colour gain) for sample ``index`` this epoch."""
        record = self.records[index]
        center = np.asarray(record["center"], dtype=np.float64)
        box_height = float(record["scale"])
        aug = self.active_augmentation
        if aug == Augmentation():
            return center, box_height, 0.0, False, np.ones(3, dtype=np.float32)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale_factor = float(np.clip(1 + rng.normal() * aug.max_scale, 1 - aug.max_scale, 1 + aug.max_scale))
        shift = rng.uniform(-1.0, 1.0, size=2) * aug.max_translate * box_height
        rotate = rng.random() < aug.rotate_prob
        rotation = float(np.clip(rng.normal() * aug.max_rotate, -2 * aug.max_rotate, 2 * aug.max_rotate))
        flip = bool(rng.random() < aug.flip_prob)
        gain = rng.uniform(1 - aug.color_jitter, 1 + aug.color_jitter, size=3).astype(np.float32)
        return center + shift, box_height * scale_factor, rotation if rotate else 0.0, flip, gain

    def describe(self, index: int) -> str:
        """The annotation file and the record of sample ``index``, for messages."""
        return f"{self.source}: record {index}"

    def empty_reason(self) -> str:
        """Why the dataset has no samples, on one line naming its file (readers say more)."""
        return f"{self.source}: no records"

    def _too_many_message(self, bad: int, total: int, example: str) -> str:
        """When the file is read, every record is checked: ``bad`` is the file's count."""
        return (
            f"too many bad samples: {bad} of {total} records of {self.source} are bad ({bad / total:.1%}), "
            f"more than --maxBadFraction {self.policy.max_fraction:g} allows "
            f"({int(self.policy.max_fraction * total)} of {total}; {allow_hint(bad, total)}); e.g. {example}"
        )

    def _stopped_early_message(self, total: int, example: str) -> str:
        """While samples load, the count is what was found so far: the run stops at the first bad
        sample over the limit, before the other images are loaded."""
        images = int(self.bad_flags.sum())
        bad = len(self.dropped) + images
        allowed = int(self.policy.max_fraction * total)
        return (
            f"too many bad samples: stopped early, at {bad} bad of the {total} records of {self.source} "
            f"({len(self.dropped)} dropped when the file was read, {images} with a bad image among those "
            f"loaded so far; the rest were not checked), more than --maxBadFraction "
            f"{self.policy.max_fraction:g} allows ({allowed} of {total}; {allow_hint(bad, total)}); e.g. {example}"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample, or with ``policy.skip`` the next good one if its image is bad. A bad image
        is a DataError naming the annotation file, the record and the problem; any other error
        carries a note naming the sample."""
        slot = None
        if self.in_flight is not None:  # which sample each DataLoader worker is on, for a crash
            info = torch.utils.data.get_worker_info()
            slot = 0 if info is None else info.id % len(self.in_flight)
            self.in_flight[slot, 0], self.in_flight[slot, 1] = index, 1
        try:
            return self._sample_or_next(index)
        finally:
            if slot is not None:
                self.in_flight[slot, 1] = 0

    def _sample_or_next(self, index: int) -> dict[str, Any]:
        sample, problem = self.try_sample(index)
        if sample is not None:
            return sample
        if not self.policy.skip:
            raise DataError(f"{problem} ({SKIP_HINT})")
        self.mark_bad(index, problem)
        # the next good index, so a batch keeps its size and the choice depends on the data alone
        for step in range(1, len(self)):
            candidate = (index + step) % len(self)
            if self.bad_flags[candidate]:
                continue
            sample, problem = self.try_sample(candidate)
            if sample is not None:
                return sample
            self.mark_bad(candidate, problem)
        raise DataError(f"{self.source}: no good sample left; the last bad one: {problem}")

    def try_sample(self, index: int) -> tuple[dict[str, Any] | None, str]:
        """(sample, "") or, if its data are bad (DataError), (None, the problem on one line naming
        the annotation file and record). Other errors propagate with a note naming the sample."""
        try:
            return self.make_sample(index), ""
        except DataError as error:
            return None, f"{self.describe(index)}: {error}"
        except Exception as error:
            error.add_note(f"while loading sample {index}: {self.describe(index)}")
            raise

    def mark_bad(self, index: int, problem: str) -> None:
        """Flag sample ``index`` as bad (seen by every worker and the main process); DataError
        when that makes more than ``policy.max_fraction`` of the data bad."""
        self.bad_flags[index] = 1
        bad, total = len(self.dropped) + int(self.bad_flags.sum()), len(self.dropped) + len(self.records)
        if self.policy.too_many(bad, total):
            raise DataError(self._stopped_early_message(total, problem))

    def bad_indices(self) -> list[int]:
        """Samples whose image was found bad so far (by any worker of this process)."""
        return [] if self.bad_flags is None else torch.nonzero(self.bad_flags).flatten().tolist()

    def make_sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as it is, raising DataError if its image is bad."""
        record = self.records[index]
        center, box_height, rotation, flip, gain = self.sample_transform(index)
        matrix = self.codec.convention.crop(center, box_height, self.input_size, rotation, flip)
        # one warp from the decoded pixels straight to the crop (rotation, zoom and flip at once)
        decoded = self.load_decoded(record, zoom=self.input_size[1] / box_height)
        if self.checks_image_bounds:
            check_record_in_image(record, decoded.stored_shape)
        from_decoded = compose_affine(matrix, invert_affine(decoded.from_stored()))
        crop = warp_image(decoded.pixels, from_decoded, self.input_size)  # (h, w, 3) uint8

        joints = apply_affine(record["joints"], matrix)  # (K, 2) input px
        visible = np.asarray(record["visible"], dtype=np.float32)
        if flip:
            joints, visible = joints[self._flip_perm], visible[self._flip_perm]
        target, target_weight = self.codec.encode(joints, visible)

        meta = {
            "index": index,
            "image_id": int(record.get("image_id", index)),
            "center": np.asarray(record["center"], dtype=np.float32),
            "scale": np.float32(record["scale"]),
            "rotation": np.float32(rotation),
            "flipped": flip,
            "joints": np.asarray(record["joints"], dtype=np.float32),
            "visible": np.asarray(record["visible"], dtype=np.float32),
            "head_size": np.float32(record.get("head_size", np.nan)),
            "area": np.float32(record.get("area", np.nan)),
            "box_score": np.float32(record.get("box_score", 1.0)),
            # maps input-crop pixels back to the original image (flip included)
            "inverse_affine": invert_affine(matrix).astype(np.float32),
            # the augmentation's per-channel colour gain, applied with the normalisation on the
            # device (see engine.prepare_images)
            "color_gain": gain,
        }
        return {
            # uint8: a quarter of the bytes through worker shared memory and host-to-device copies
            "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),  # (3, h, w)
            "target": torch.from_numpy(target),  # (K, H, W) heatmaps or (K, 2) coordinates
            "target_weight": torch.from_numpy(target_weight),  # (K,)
            "meta": meta,
        }
