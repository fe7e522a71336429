"""Datasets: each gives person records plus joint names, flip pairs and skeleton; the shared
``KeypointDataset`` turns a record into {image, target, target_weight, meta}.

Every dataset registers itself (``@register_dataset`` in datasets/registry.py); importing this
package imports each dataset module, so ``build_datasets`` finds them all by name.
"""

from __future__ import annotations

from pathlib import Path

from datasets.base import Augmentation, AugmentationSwitch, DataError, KeypointDataset
from datasets.codecs import Codec, HeatmapCodec, RegressionCodec, SimCCCodec, make_codec
from datasets.registry import DataRequest, get_dataset_entry, joint_spec_for, list_datasets, register_dataset
from datasets.skeletons import JointSpec
from datasets.validation import BadDataPolicy

# The dataset modules, each registering itself; their order is the order names are listed in.
# isort: off
from datasets.synthetic import SyntheticPeople
from datasets.mpii import MPIIDataset
from datasets.coco import COCODataset
from datasets.custom import CustomDataset

# isort: on


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
    joint_spec: JointSpec | None = None,
    skip_bad_samples: bool = False,
    max_bad_fraction: float = 0.01,
    allow_outside_paths: bool = False,
    image_cache: str | None = None,
    augmentation_switch: AugmentationSwitch | None = None,
) -> tuple[KeypointDataset | None, KeypointDataset]:
    """(training set with ``augmentation`` or None without ``with_train``, validation set).

    ``name`` is looked up in the dataset registry. ``head_boxes_mat`` (a gt_valid.mat) and
    ``bbox_file`` (person detections) apply to the validation split only; ``half_body_prob`` to
    COCO-format training; ``joint_spec`` is the custom dataset's joint set (``build.joint_spec_of``).
    ``skip_bad_samples``, ``max_bad_fraction`` and ``allow_outside_paths`` say what to do with bad
    records and images (:class:`datasets.validation.BadDataPolicy`). ``image_cache``: a folder where
    decoded images are kept between epochs (:class:`datasets.base.DecodedCache`).
    ``augmentation_switch``: the training set's augmentation from a later epoch on.

    An empty validation (or training) set is a DataError saying what emptied it (no detections,
    all of another category or below the threshold, no labelled person), before anything runs."""
    try:
        entry = get_dataset_entry(name)
    except KeyError as error:
        raise DataError(str(error)) from None
    request = DataRequest(
        codec=codec, input_size=tuple(input_size), augmentation=augmentation, seed=seed, data_dir=data_dir,
        train_annotation=train_annotation, val_annotation=val_annotation, image_dir=image_dir,
        head_boxes_mat=head_boxes_mat, bbox_file=bbox_file, det_score_threshold=det_score_threshold,
        half_body_prob=half_body_prob, synthetic_sizes=tuple(synthetic_sizes),
        synthetic_image_size=synthetic_image_size, joint_spec=joint_spec,
        bad_data=BadDataPolicy(bool(skip_bad_samples), float(max_bad_fraction), bool(allow_outside_paths)),
    )  # fmt: skip
    val = entry.build(request, train=False)
    # known before anything trains: an epoch whose validation has nothing to score is lost
    if len(val) == 0:
        raise DataError(f"empty validation set: {val.empty_reason()}")
    # -test needs no training split, which users often do not have on the evaluation machine
    train = entry.build(request, train=True) if with_train else None
    if train is not None and len(train) == 0:
        raise DataError(f"empty training set: {train.empty_reason()}")
    if train is not None and augmentation_switch is not None:
        train.augmentation_switch = augmentation_switch
    if image_cache:
        for dataset in (train, val):
            if dataset is not None:
                dataset.image_cache = Path(image_cache)
    return train, val


__all__ = [
    "Augmentation",
    "AugmentationSwitch",
    "BadDataPolicy",
    "COCODataset",
    "Codec",
    "CustomDataset",
    "DataError",
    "DataRequest",
    "HeatmapCodec",
    "JointSpec",
    "KeypointDataset",
    "MPIIDataset",
    "RegressionCodec",
    "SimCCCodec",
    "SyntheticPeople",
    "build_datasets",
    "get_dataset_entry",
    "joint_spec_for",
    "list_datasets",
    "make_codec",
    "register_dataset",
]
