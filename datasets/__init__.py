"""Datasets: each gives person records plus joint names, flip pairs and skeleton; the shared
``KeypointDataset`` turns a record into {image, target, target_weight, meta}."""

from __future__ import annotations

from datasets.base import Augmentation, DataError, KeypointDataset
from datasets.coco import COCODataset
from datasets.codecs import Codec, HeatmapCodec, RegressionCodec, make_codec
from datasets.mpii import MPIIDataset
from datasets.synthetic import SyntheticPeople


def build_datasets(
    name: str,
    codec: Codec,
    input_size: tuple[int, int],
    augmentation: Augmentation,
    seed: int,
    *,
    with_train: bool = True,
    data_dir: str = "",
    train_annotation: str | None = None,
    val_annotation: str | None = None,
    image_dir: str | None = None,
    head_boxes_mat: str | None = None,
    bbox_file: str | None = None,
    det_score_threshold: float = 0.0,
    half_body_prob: float = 0.0,
    synthetic_sizes: tuple[int, int] = (3000, 500),
    synthetic_image_size: int = 160,
) -> tuple[KeypointDataset | None, KeypointDataset]:
    """(training set with ``augmentation`` or None without ``with_train``, validation set).

    ``head_boxes_mat`` (a gt_valid.mat) and ``bbox_file`` (person detections) apply to the
    validation split only; ``half_body_prob`` to COCO training."""
    if name == "synthetic":
        val = SyntheticPeople("val", synthetic_sizes[1], codec, input_size, synthetic_image_size, None, seed)
        make_train = lambda: SyntheticPeople(  # noqa: E731
            "train", synthetic_sizes[0], codec, input_size, synthetic_image_size, augmentation, seed
        )
    elif name == "MPII":
        common = {"codec": codec, "input_size": input_size, "seed": seed, "image_dir": image_dir}
        val = MPIIDataset(
            data_dir, "valid", annotation_file=val_annotation, head_boxes_mat=head_boxes_mat, **common
        )
        make_train = lambda: MPIIDataset(  # noqa: E731
            data_dir, "train", augmentation=augmentation, annotation_file=train_annotation, **common
        )
    elif name == "COCO":
        common = {"codec": codec, "input_size": input_size, "seed": seed, "image_dir": image_dir}
        val = COCODataset(
            data_dir, "val2017", annotation_file=val_annotation, bbox_file=bbox_file,
            det_score_threshold=det_score_threshold, **common,
        )  # fmt: skip
        make_train = lambda: COCODataset(  # noqa: E731
            data_dir, "train2017", augmentation=augmentation, annotation_file=train_annotation,
            half_body_prob=half_body_prob, **common,
        )  # fmt: skip
    else:
        raise DataError(f"dataset {name!r} has no reader")
    # -test needs no training split, which users often do not have on the evaluation machine
    return (make_train() if with_train else None), val


__all__ = [
    "Augmentation",
    "COCODataset",
    "Codec",
    "DataError",
    "HeatmapCodec",
    "KeypointDataset",
    "MPIIDataset",
    "RegressionCodec",
    "SyntheticPeople",
    "build_datasets",
    "make_codec",
]
