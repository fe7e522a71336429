"""Datasets: each gives person records plus joint names, flip pairs and skeleton; the shared
``KeypointDataset`` turns a record into {image, target, target_weight, meta}."""

from __future__ import annotations

from datasets.base import Augmentation, DataError, KeypointDataset
from datasets.codecs import Codec, HeatmapCodec, RegressionCodec, make_codec
from datasets.synthetic import SyntheticPeople


def build_datasets(
    name: str,
    codec: Codec,
    input_size: tuple[int, int],
    augmentation: Augmentation,
    seed: int,
    *,
    synthetic_sizes: tuple[int, int] = (4000, 500),
    synthetic_image_size: int = 160,
) -> tuple[KeypointDataset, KeypointDataset]:
    """(training set with ``augmentation``, validation set without) for dataset ``name``."""
    if name == "synthetic":
        train = SyntheticPeople(
            "train", synthetic_sizes[0], codec, input_size, synthetic_image_size, augmentation, seed
        )
        val = SyntheticPeople("val", synthetic_sizes[1], codec, input_size, synthetic_image_size, None, seed)
        return train, val
    raise DataError(f"dataset {name!r} has no reader")


__all__ = [
    "Augmentation",
    "Codec",
    "DataError",
    "HeatmapCodec",
    "KeypointDataset",
    "RegressionCodec",
    "SyntheticPeople",
    "build_datasets",
    "make_codec",
]
