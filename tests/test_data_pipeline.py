"""The fast data path (JPEG decoded at a reduced scale, one warp, uint8 crops normalised on the
device, an optional decoded-image cache) gives the targets of the straightforward path exactly and
crops close to it."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.data_pipeline import BeforePipeline
from datasets import Augmentation, make_codec
from datasets.base import (
    JPEG_EIGHTHS,
    DecodedCache,
    decode_image,
    jpeg_eighths,
    normalise,
    read_image,
)
from datasets.coco import COCODataset
from datasets.mpii import MPIIDataset
from engine import prepare_images

MPII_AUGMENTATION = Augmentation(0.25, 30, 0.6, 0.0, 0.5, 0.2)


def mpii(shared_data: Path, augmentation: Augmentation = MPII_AUGMENTATION) -> MPIIDataset:
    codec = make_codec("heatmap", (256, 256), (64, 64), 1.0)
    return MPIIDataset(
        shared_data / "mpii_mini", "train", codec, (256, 256), augmentation, annotation_file="test_mpii.json"
    )


def test_the_decode_scale_is_the_cheapest_that_keeps_the_crop_resolution() -> None:
    assert jpeg_eighths(0.1) == 1 and jpeg_eighths(0.125) == 1 and jpeg_eighths(0.13) == 2
    assert jpeg_eighths(0.3) == 4  # 3/8 costs more than 4/8
    assert jpeg_eighths(0.55) == 5 and jpeg_eighths(0.7) == 6 and jpeg_eighths(0.8) == 8
    assert jpeg_eighths(1.0) == 8 and jpeg_eighths(3.0) == 8
    for zoom in np.linspace(0.01, 1.0, 50):
        assert jpeg_eighths(zoom) / 8 >= zoom - 1e-9 and jpeg_eighths(zoom) in JPEG_EIGHTHS


def test_reduced_decode_maps_stored_pixels_exactly(shared_data: Path) -> None:
    path = shared_data / "mpii_mini" / "005808361.jpg"
    full = read_image(path)
    for zoom, k in ((0.5, 4), (0.25, 2), (0.6, 5)):
        decoded = decode_image(path, zoom)
        assert decoded.scale == k / 8 and decoded.stored_shape == full.shape[:2]
        assert decoded.pixels.shape[:2] == tuple(-(-n * k // 8) for n in full.shape[:2])
        # the decoded image, brought back to the stored frame, is the stored image blurred
        back = cv2.warpAffine(
            decoded.pixels, np.linalg.inv(np.vstack([decoded.from_stored(), [0, 0, 1]]))[:2],
            (full.shape[1], full.shape[0]), flags=cv2.INTER_LINEAR,
        )  # fmt: skip
        blurred = cv2.GaussianBlur(full, (0, 0), 0.5 / decoded.scale)
        inner = (slice(16, -16), slice(16, -16))
        assert np.abs(back[inner].astype(float) - blurred[inner]).mean() < 4.0
        # a misplaced map (half a decoded pixel off) is clearly worse
        shifted = np.roll(back, round(0.5 / decoded.scale) + 1, axis=1)
        assert (
            np.abs(shifted[inner].astype(float) - blurred[inner]).mean()
            > np.abs(back[inner].astype(float) - blurred[inner]).mean()
        )


def test_fast_samples_equal_the_straightforward_path(shared_data: Path) -> None:
    dataset = mpii(shared_data)
    straightforward = BeforePipeline(dataset)  # full decode, one warp, the codec, float crop
    differences = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            image, target, weight = straightforward(index)
            assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 256, 256)
            np.testing.assert_allclose(sample["target"].numpy(), target, atol=1e-6)
            np.testing.assert_array_equal(sample["target_weight"].numpy(), weight)
            network_input = prepare_images(
                sample["image"][None],
                torch.as_tensor(sample["meta"]["color_gain"])[None],
                torch.device("cpu"),
            )[0].numpy()
            differences.append(np.abs(network_input - image).mean())
    # measured: about 0.03 on average (1.7 grey levels of 255, from the DCT-scaled decode)
    assert np.mean(differences) < 0.05 and np.max(differences) < 0.1


def test_device_normalisation_equals_the_worker_normalisation() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(3, 20, 24, 3), dtype=np.uint8)
    gains = rng.uniform(0.8, 1.2, size=(3, 3)).astype(np.float32)
    expected = np.stack([normalise(crop, gain) for crop, gain in zip(crops, gains, strict=True)])
    batch = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
    got = prepare_images(batch, torch.from_numpy(gains), torch.device("cpu"))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    last = prepare_images(batch, torch.from_numpy(gains), torch.device("cpu"), channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(last.numpy(), got.numpy())


def test_cache_returns_the_same_pixels_and_follows_the_file(tmp_path: Path, shared_data: Path) -> None:
    image = tmp_path / "person.jpg"
    image.write_bytes((shared_data / "mpii_mini" / "005808361.jpg").read_bytes())
    cache = tmp_path / "cache"
    first = decode_image(image, 0.5, cache)
    entries = list(cache.rglob("*.npy"))
    assert len(entries) == 1
    again = decode_image(image, 0.5, cache)
    assert isinstance(again.pixels, np.memmap)  # read from the cache, not decoded
    np.testing.assert_array_equal(np.asarray(again.pixels), first.pixels)
    assert (again.scale, again.stored_shape) == (first.scale, first.stored_shape)

    # another scale is another entry; an edited file is decoded afresh
    decode_image(image, 1.0, cache)
    assert len(list(cache.rglob("*.npy"))) == 2
    pixels = cv2.imread(str(image))
    cv2.imwrite(str(image), 255 - pixels)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    edited = decode_image(image, 0.5, cache)
    assert np.abs(edited.pixels.astype(int) - first.pixels).mean() > 50

    # a damaged entry is decoded and written again, not an error
    entry = DecodedCache(cache).entry(image, image.read_bytes(), 4)
    entry.write_bytes(b"not an npy file")
    repaired = decode_image(image, 0.5, cache)
    np.testing.assert_array_equal(np.asarray(repaired.pixels), edited.pixels)
    assert DecodedCache.read(entry) is not None


def test_cached_samples_equal_uncached_ones(tmp_path: Path, shared_data: Path) -> None:
    plain, cached = mpii(shared_data), mpii(shared_data)
    cached.image_cache = tmp_path
    for epoch in range(2):
        for dataset in (plain, cached):
            dataset.set_epoch(epoch)
        for index in range(len(plain)):
            a, b = plain[index], cached[index]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])


def test_coco_size_check_still_uses_the_stored_size(tmp_path: Path, shared_data: Path) -> None:
    """A file whose stored size differs from the annotation's is refused at every decode scale."""
    import json

    source = shared_data / "coco_mini"
    annotation = json.loads((source / "test_coco.json").read_text())
    for entry in annotation["images"]:
        pixels = cv2.imread(str(source / entry["file_name"]))
        if entry["id"] == annotation["images"][0]["id"]:
            pixels = cv2.resize(pixels, (pixels.shape[1] // 2 * 2 + 2, pixels.shape[0]))
        cv2.imwrite(str(tmp_path / entry["file_name"]), pixels)
    (tmp_path / "ann.json").write_text(json.dumps(annotation))
    codec = make_codec("heatmap", (48, 64), (12, 16), 1.0)
    dataset = COCODataset(tmp_path, "val2017", codec, (48, 64), Augmentation(), annotation_file="ann.json")
    bad = [i for i, r in enumerate(dataset.records) if r["image_id"] == annotation["images"][0]["id"]]
    assert bad
    for index in bad:
        with pytest.raises(Exception, match="does not match its annotation"):
            dataset[index]
