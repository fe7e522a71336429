"""One registry mapping dataset names to builders, like ``models.registry``.

A dataset module registers a builder with ``@register_dataset(name, joint_spec=...)``; the
builder gets the :class:`DataRequest` (everything the options say about data) and whether the
training split is wanted, and returns a :class:`~datasets.base.KeypointDataset`. So adding a
dataset is one file imported by ``datasets/__init__.py`` (plus its name in ``utils.options.DATASETS``,
the ``--help`` text, which a test keeps equal to the registry).

An entry registered without a ``joint_spec`` (``custom``) reads its joints from a spec file,
``--jointSpec`` (see :mod:`datasets.custom`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets.base import Augmentation, KeypointDataset
from datasets.codecs import Codec
from datasets.skeletons import JointSpec
from datasets.validation import BadDataPolicy
from utils.registry import Registry, UnknownNameError


@dataclass(frozen=True, kw_only=True)
class DataRequest:
    """What the options say about the data; each builder takes the fields it needs. Fields are
    given by name (a field added anywhere cannot shift the others)."""

    codec: Codec
    input_size: tuple[int, int]  # (width, height)
    augmentation: Augmentation
    seed: int
    data_dir: str = ""
    train_annotation: str | None = None
    val_annotation: str | None = None
    image_dir: str | None = None
    head_boxes_mat: str | None = None  # validation only
    bbox_file: str | None = None  # validation only
    det_score_threshold: float = 0.0
    half_body_prob: float = 0.0  # training only
    synthetic_sizes: tuple[int, int] = (3000, 500)
    synthetic_image_size: int = 160
    joint_spec: JointSpec | None = None  # the custom dataset's joints (from --jointSpec)
    bad_data: BadDataPolicy = BadDataPolicy()  # skip bad samples? how many? outside paths?


Builder = Callable[[DataRequest, bool], KeypointDataset]  # (request, train split?) -> dataset


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    builder: Builder
    joint_spec: JointSpec | None  # None: the joints come from a --jointSpec file
    needs_data_dir: bool  # False only for data generated on the fly

    def build(self, request: DataRequest, train: bool) -> KeypointDataset:
        return self.builder(request, train)


class UnknownDatasetError(UnknownNameError):
    pass


def _ensure_datasets_imported() -> None:
    # Importing the package runs every @register_dataset decorator.
    import datasets  # noqa: F401


# listed in registration order (synthetic, MPII, COCO, custom)
DATASET_REGISTRY: Registry[DatasetEntry] = Registry(
    "dataset", UnknownDatasetError, sort=False, load=_ensure_datasets_imported
)


def register_dataset(
    name: str, *, joint_spec: JointSpec | None = None, needs_data_dir: bool = True
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` (looked up case-insensitively)."""

    def decorate(builder: Builder) -> Builder:
        DATASET_REGISTRY.add(name, DatasetEntry(name, builder, joint_spec, needs_data_dir))
        return builder

    return decorate


def list_datasets() -> list[str]:
    """Registered names, in registration order (synthetic, MPII, COCO, custom)."""
    return DATASET_REGISTRY.names()


def get_dataset_entry(name: str) -> DatasetEntry:
    """Registry entry for ``name`` (case-insensitive); a near miss is named, never taken."""
    return DATASET_REGISTRY.get(name)


def joint_spec_for(name: str, joint_spec: str | None = None) -> JointSpec:
    """The joints of dataset ``name``: its own, or for ``custom`` the spec ``joint_spec`` gives
    (a JSON file path, or the spec's JSON itself as runs record it). Raises
    :class:`datasets.custom.SpecError` (one line naming the file and key) for a bad spec."""
    entry = get_dataset_entry(name)
    if entry.joint_spec is not None:
        return entry.joint_spec
    from datasets.custom import SpecError, load_joint_spec

    if not joint_spec:
        raise SpecError(
            f"jointSpec: dataset {entry.name} needs --jointSpec SPEC.json (name, joints, flip_pairs, "
            f"skeleton, sigmas; see docs/datasets.md, Your own keypoints)"
        )
    return load_joint_spec(joint_spec)
