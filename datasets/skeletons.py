"""Joint names, left/right flip pairs and drawing skeletons of the supported joint sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metrics.coco import COCO_SIGMAS
from metrics.mpii import JOINT_NAMES as MPII_JOINT_NAMES


@dataclass(frozen=True)
class JointSpec:
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # (left, right) index pairs swapped by a mirror image
    skeleton: tuple[tuple[int, int], ...]  # limbs to draw, 0-based joint indices
    # per-joint OKS standard deviations for COCO keypoint AP; empty: the set has no OKS metric
    sigmas: tuple[float, ...] = ()
    # joints of the upper body for half-body crops, the rest being the lower body; empty: no
    # half-body crops (see datasets.custom for how a spec file's split is found)
    upper_body: tuple[int, ...] = ()
    name: str = ""

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def lower_body(self) -> tuple[int, ...]:
        """The joints outside ``upper_body`` (empty when there is no split)."""
        if not self.upper_body:
            return ()
        return tuple(i for i in range(self.num_joints) if i not in self.upper_body)

    @property
    def has_half_body(self) -> bool:
        """Whether half-body crops are possible: both halves have joints."""
        return bool(self.upper_body) and bool(self.lower_body)

    def flip_permutation(self) -> np.ndarray:
        """Index array that swaps every left/right pair: joints[perm] relabels a mirrored pose."""
        perm = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def left_joints(self) -> tuple[int, ...]:
        """Indices of the person's left-side joints (drawn with white centres)."""
        return tuple(i for i, name in enumerate(self.names) if name.startswith(("l_", "left_")))

    def index(self, name: str) -> int:
        return self.names.index(name)


MPII_JOINTS = JointSpec(
    names=MPII_JOINT_NAMES,  # the official evaluation's order, defined beside it
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1),
        (1, 2),
        (2, 6),
        (6, 3),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (10, 11),
        (11, 12),
        (12, 7),
        (7, 13),
        (13, 14),
        (14, 15),
    ),  # fmt: skip
    name="MPII",
)

COCO_JOINTS = JointSpec(
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),  # fmt: skip
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),  # fmt: skip
    sigmas=tuple(float(sigma) for sigma in COCO_SIGMAS),  # pycocotools' values
    # HRNet's half-body split: face, shoulders, elbows, wrists (0-10) above; hips, knees, ankles below
    upper_body=tuple(range(11)),
    name="COCO",
)
