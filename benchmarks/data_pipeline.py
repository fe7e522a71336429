"""Cost of one training sample on the real fixture images, this project's pipeline beside the
2019 code it replaces, Simple Baselines' pipeline and a plain JPEG decode, measured side by side.

    python benchmarks/data_pipeline.py [--quick] [--shared ../shared/data]

Everything runs in this one process on one core (``cv2.setNumThreads(1)``, as in a DataLoader
worker), over the fixture persons for several epochs of augmentation; each variant's figure is
its best round, rounds interleaved so a busy machine slows all variants alike. The other
pipelines are written here from their descriptions (same computations, not their code):

- *original project* (Naman-ntc/Pytorch-Human-Pose-Estimation, 2019): full decode, a full-image
  resize when the box is at least twice the crop, a slice around the box, a rotation warp, a
  resize to the crop, float / 256, one Gaussian per joint drawn in a loop, flip, and a clipped
  per-channel colour gain.
- *Simple Baselines* (microsoft/human-pose-estimation.pytorch): full decode, one affine warp,
  per-joint Gaussians in a loop, float normalisation.
- *this project, before*: full decode, one warp, vectorised targets, float normalisation in the
  worker (this project until this benchmark's change).
- *this project*: decode at the cheapest libjpeg-turbo k/8 scale that keeps the crop's
  resolution, one warp, vectorised targets, a uint8 crop (normalised later, on the device);
  and the same with a warm ``--imageCache`` (decoded bitmaps memory-mapped from disk: what every
  epoch after the first costs).

Prints markdown tables: ms per sample; the JPEG decode cost by scale; COCO 256x192; and the
quality checks (targets identical, mean crop difference).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from datasets.base import Augmentation, normalise, read_image  # noqa: E402
from datasets.coco import COCODataset  # noqa: E402
from datasets.codecs import make_codec  # noqa: E402
from datasets.mpii import MPIIDataset  # noqa: E402
from utils.transforms import apply_affine, crop_affine, warp_image  # noqa: E402

# conf/datasets/mpii.defconf and coco.defconf
MPII_AUGMENTATION = Augmentation(0.25, 30, 0.6, 0.0, 0.5, 0.2)
COCO_AUGMENTATION = Augmentation(0.35, 45, 0.6, 0.0, 0.5, 0.2)


def full_decode(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def reduced_decode(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION)


def gaussian_patch_targets(points: np.ndarray, visible: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """One Gaussian per joint pasted into its (6 sigma + 1) window, joint by joint."""
    out = np.zeros((len(points), size, size), dtype=np.float32)
    radius = math.ceil(3 * sigma)
    grid = np.arange(2 * radius + 1)
    patch = np.exp(-((grid[None, :] - radius) ** 2 + (grid[:, None] - radius) ** 2) / (2 * sigma**2))
    for k, (x, y) in enumerate(np.round(points).astype(int)):
        if visible[k] <= 0 or x + radius < 0 or y + radius < 0 or x - radius >= size or y - radius >= size:
            continue
        x0, y0, x1, y1 = (
            max(0, x - radius),
            max(0, y - radius),
            min(size, x + radius + 1),
            min(size, y + radius + 1),
        )
        out[k, y0:y1, x0:x1] = patch[y0 - y + radius : y1 - y + radius, x0 - x + radius : x1 - x + radius]
    return out


def original_pipeline(record: dict[str, Any], rng: np.random.Generator, res: int, out_res: int) -> Any:
    image = full_decode(record["path"])
    center, box = np.asarray(record["center"], dtype=np.float64), float(record["scale"])
    box *= 2 ** float(np.clip(rng.normal() * 0.25, -0.25, 0.25))
    rotation = 0.0 if rng.random() < 0.6 else float(np.clip(rng.normal() * 30, -60, 60))
    factor = box / res
    if factor >= 2:  # shrink the whole image first, as the 2019 code did
        image = cv2.resize(image, (int(image.shape[1] / factor), int(image.shape[0] / factor)))
        center, box = center / factor, box / factor
    half = box / 2 * (math.sqrt(2) if rotation else 1.0)  # room for the rotation's corners
    x0, y0 = int(center[0] - half), int(center[1] - half)
    side = int(2 * half)
    patch = np.zeros((side, side, 3), dtype=np.uint8)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(image.shape[1], x0 + side), min(image.shape[0], y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if rotation:
        turn = cv2.getRotationMatrix2D((side / 2, side / 2), rotation, 1.0)
        patch = cv2.warpAffine(patch, turn, (side, side))
        margin = int((side - box) / 2)
        patch = patch[margin : side - margin, margin : side - margin]
    crop = cv2.resize(patch, (res, res)).transpose(2, 0, 1).astype(np.float32) / 256.0
    matrix = crop_affine(record["center"], box * (factor if factor >= 2 else 1), (out_res, out_res), rotation)
    points = apply_affine(record["joints"], matrix)
    target = gaussian_patch_targets(points, record["visible"], out_res, 1.0)
    if rng.random() < 0.5:
        crop, target = crop[:, :, ::-1], target[:, :, ::-1]
    for channel in range(3):
        crop[channel] = np.clip(crop[channel] * (rng.random() * 0.4 + 0.6), 0, 1)
    return crop, target


def simple_baselines_pipeline(
    record: dict[str, Any], rng: np.random.Generator, res: int, out_res: int
) -> Any:
    image = cv2.cvtColor(full_decode(record["path"]), cv2.COLOR_BGR2RGB)
    box = float(record["scale"]) * float(np.clip(rng.normal() * 0.25 + 1, 0.75, 1.25))
    rotation = float(np.clip(rng.normal() * 30, -60, 60)) if rng.random() <= 0.6 else 0.0
    flip = rng.random() <= 0.5
    matrix = crop_affine(record["center"], box, (res, res), rotation, flip)
    crop = warp_image(image, matrix, (res, res))
    points = apply_affine(record["joints"], matrix) / (res / out_res)
    target = gaussian_patch_targets(points, record["visible"], out_res, 1.0)
    return normalise(crop), target


class BeforePipeline:
    """This project before this change: full decode and float normalisation in the worker."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, index: int) -> Any:
        dataset = self.dataset
        record = dataset.records[index]
        center, box, rotation, flip, gain = dataset.sample_transform(index)
        matrix = crop_affine(center, box, dataset.input_size, rotation, flip)
        crop = warp_image(read_image(record["path"]), matrix, dataset.input_size)
        joints = apply_affine(record["joints"], matrix)
        visible = np.asarray(record["visible"], dtype=np.float32)
        if flip:
            joints, visible = joints[dataset._flip_perm], visible[dataset._flip_perm]
        target, weight = dataset.codec.encode(joints, visible)
        return normalise(crop, gain), target, weight


def mpii_dataset(shared: Path) -> MPIIDataset:
    codec = make_codec("heatmap", (256, 256), (64, 64), 1.0)
    return MPIIDataset(
        shared / "mpii_mini", "train", codec, (256, 256), MPII_AUGMENTATION, annotation_file="test_mpii.json"
    )


def coco_dataset(shared: Path) -> COCODataset:
    codec = make_codec("heatmap", (192, 256), (48, 64), 2.0)
    return COCODataset(
        shared / "coco_mini", "train", codec, (192, 256), COCO_AUGMENTATION,
        annotation_file="test_coco.json", half_body_prob=0.3,
    )  # fmt: skip


def race(
    variants: dict[str, Callable[[int], Any]], samples: int, epochs: int, rounds: int
) -> dict[str, float]:
    """Best ms per sample of each variant; ``variant(epoch * samples + i)`` is one sample."""
    best = dict.fromkeys(variants, math.inf)
    for _ in range(rounds):
        for name, variant in variants.items():
            start = time.perf_counter()
            for step in range(samples * epochs):
                variant(step)
            best[name] = min(best[name], (time.perf_counter() - start) * 1000 / (samples * epochs))
    return best


def epoch_sample(dataset: Any) -> Callable[[int], Any]:
    def sample(step: int) -> Any:
        epoch, index = divmod(step, len(dataset))
        if dataset.epoch != epoch:
            dataset.set_epoch(epoch)
        return dataset[index]

    return sample


def mpii_table(shared: Path, epochs: int, rounds: int) -> None:
    dataset = mpii_dataset(shared)
    records = dataset.records
    count = len(records)
    rng = np.random.default_rng(0)
    before = BeforePipeline(dataset)
    variants = {
        "`cv2.imread` of the full JPEG alone": lambda i: full_decode(records[i % count]["path"]),
        "`cv2.imread(..., IMREAD_REDUCED_COLOR_2)` alone": lambda i: reduced_decode(
            records[i % count]["path"]
        ),
        "original project's pipeline (2019)": lambda i: original_pipeline(records[i % count], rng, 256, 64),
        "Simple Baselines' pipeline": lambda i: simple_baselines_pipeline(records[i % count], rng, 256, 64),
        "this project before (full decode, float crop)": lambda i: before(i % count),
        "this project (`MPIIDataset[i]`)": epoch_sample(dataset),
    }
    cached = mpii_dataset(shared)
    with tempfile.TemporaryDirectory() as cache:
        cached.image_cache = Path(cache)
        warm = epoch_sample(cached)
        for step in range(count * epochs):  # fill the cache: every scale the epochs will ask for
            warm(step)
        variants["this project, warm `--imageCache`"] = warm
        best = race(variants, count, epochs, rounds)
    original = best["original project's pipeline (2019)"]
    print(f"### MPII training sample, 256x256 input / 64x64 heatmaps, {count} fixture images (1280x720)\n")
    print("| per training sample | ms | speed vs original project |")
    print("| --- | --- | --- |")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} | {original / value:.2f}x |")
    print()


def decode_table(shared: Path, rounds: int) -> None:
    import simplejpeg

    data = [path.read_bytes() for path in sorted((shared / "mpii_mini").glob("*.jpg"))]
    height, width, _, _ = simplejpeg.decode_jpeg_header(data[0])
    print(f"### JPEG decode by libjpeg-turbo scale (the {len(data)} MPII fixture images, {width}x{height})\n")
    print("| scale k/8 | decoded size | ms |")
    print("| --- | --- | --- |")
    for k in range(1, 9):
        need = (-(-height * k // 8), -(-width * k // 8))

        def decode(_: int, need: tuple[int, int] = need) -> None:
            for blob in data:
                simplejpeg.decode_jpeg(blob, "RGB", min_height=need[0], min_width=need[1])

        cost = race({"k": decode}, 1, 10, rounds)["k"] / len(data)
        print(f"| {k}/8 | {need[1]}x{need[0]} | {cost:.2f} |")
    print()


def coco_table(shared: Path, epochs: int, rounds: int) -> None:
    dataset = coco_dataset(shared)
    records = dataset.records
    count = len(records)
    variants = {
        "`cv2.imread` of the full JPEG alone": lambda i: full_decode(records[i % count]["path"]),
        "this project (`COCODataset[i]`)": epoch_sample(dataset),
    }
    cached = coco_dataset(shared)
    with tempfile.TemporaryDirectory() as cache:
        cached.image_cache = Path(cache)
        warm = epoch_sample(cached)
        for step in range(count * epochs):
            warm(step)
        variants["this project, warm `--imageCache`"] = warm
        best = race(variants, count, epochs, rounds)
    decode = best["`cv2.imread` of the full JPEG alone"]
    print(
        f"### COCO training sample, 256x192 input / 64x48 heatmaps, {count} fixture persons (about 640x420)\n"
    )
    print("| per training sample | ms | vs full decode |")
    print("| --- | --- | --- |")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} | {value / decode:.2f}x |")
    print()


def quality_table(shared: Path, epochs: int) -> None:
    """Targets of the fast path against the full-decode path, and how far its crops differ."""
    dataset = mpii_dataset(shared)
    before = BeforePipeline(dataset)
    target_error, pixel_error, samples = 0.0, [], 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            old_crop, old_target, _ = before(index)
            target_error = max(target_error, float(np.abs(sample["target"].numpy() - old_target).max()))
            gain = sample["meta"]["color_gain"][:, None, None]
            old_pixels = np.clip(
                (
                    old_crop * np.array([0.229, 0.224, 0.225])[:, None, None]
                    + np.array([0.485, 0.456, 0.406])[:, None, None]
                )
                / gain
                * 255,
                0,
                255,
            )
            pixel_error.append(np.abs(sample["image"].numpy().astype(np.float64) - old_pixels).mean())
            samples += 1
    print(f"### Quality of the fast path ({samples} augmented MPII samples)\n")
    print("| check | value |")
    print("| --- | --- |")
    print(f"| largest target difference from the full-decode path | {target_error:.1e} |")
    print(f"| mean absolute crop difference (0-255 scale), mean over samples | {np.mean(pixel_error):.2f} |")
    print(f"| mean absolute crop difference (0-255 scale), worst sample | {np.max(pixel_error):.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and rounds")
    parser.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    if not (args.shared / "mpii_mini").is_dir():
        sys.exit(f"fixtures not found: {args.shared} (pass --shared)")
    cv2.setNumThreads(1)
    epochs, rounds = (4, 2) if args.quick else (20, 5)
    mpii_table(args.shared, epochs, rounds)
    coco_table(args.shared, epochs, rounds)
    decode_table(args.shared, rounds)
    quality_table(args.shared, epochs)


if __name__ == "__main__":
    main()
