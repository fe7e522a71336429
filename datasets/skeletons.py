"""Joint names, left/right flip pairs, drawing skeletons and part hierarchies (DLCM's levels of
composite parts) of the supported joint sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metrics.coco import COCO_SIGMAS
from metrics.mpii import JOINT_NAMES as MPII_JOINT_NAMES
from utils.registry import did_you_mean


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
    # the levels of composite parts a compositional model (DLCM) predicts; None: the set has none
    hierarchy: PartHierarchy | None = None

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


class HierarchyError(ValueError):
    """A part hierarchy that cannot be used; one line saying where (level, part) and what."""


@dataclass(frozen=True)
class PartLevel:
    """One level of composite parts: their names and, per part, its children's indices in the
    level below (the joints for level 1), in the order given."""

    names: tuple[str, ...]
    children: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class PartHierarchy:
    """A compositional model's hierarchy of parts (Tang, Yu & Wu, "Deeply Learned Compositional
    Models for Human Pose Estimation", ECCV 2018): level 0 is the joint set, every part of level
    l >= 1 is made of parts of level l - 1, and every part of a level belongs to some part of the
    next one. Built and checked by :meth:`from_names`.

    The bones of a part (its bone-based representation, what its ground truth is drawn along):
    a level-1 part joins its joints one after another in the order given, (a, b), (b, c), ...,
    and a level-1 part of one joint is that joint, a bone of length 0; a part of a higher level
    has the bones of its children. The paper's level-1 parts are each one bone between two
    joints; a chain lets a custom spec make a part of three or more (a face: ear, eye, nose).
    """

    joint_names: tuple[str, ...]
    levels: tuple[PartLevel, ...]  # level 1 first
    # per level, joints first: the index of each part's mirror image (a left part <-> its right
    # twin, a central part itself), from the joint flip pairs
    flip_permutations: tuple[tuple[int, ...], ...]

    @property
    def num_levels(self) -> int:
        """Levels counting the joints: 3 for the paper's MPII hierarchy."""
        return 1 + len(self.levels)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Score maps per level, joints first: (16, 12, 6) for MPII."""
        return (len(self.joint_names), *(len(level.names) for level in self.levels))

    @property
    def stage_levels(self) -> tuple[int, ...]:
        """The level of each stage of a DLCM network, bottom-up inference then top-down refinement:
        (0, 1, 2, 1, 0) for three levels. Its codec and its network both read this."""
        top = self.num_levels - 1
        return (*range(top + 1), *range(top - 1, -1, -1))

    def names(self, level: int) -> tuple[str, ...]:
        return self.joint_names if level == 0 else self.levels[level - 1].names

    def flip_permutation(self, level: int) -> np.ndarray:
        """Index array relabelling level ``level``'s maps of a mirrored image: maps[perm]."""
        return np.asarray(self.flip_permutations[level], dtype=np.int64)

    def bones(self, level: int) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per part of level ``level`` >= 1, its bones as (joint, joint) index pairs."""
        if level < 1:
            raise ValueError(f"level {level} has no bones: level 0 is the joints")
        parts = tuple(_chain(children) for children in self.levels[0].children)
        for depth in range(1, level):
            parts = tuple(
                tuple(dict.fromkeys(bone for child in children for bone in parts[child]))
                for children in self.levels[depth].children
            )
        return parts

    def to_json(self) -> list[dict[str, list[str]]]:
        """The spec file's ``hierarchy`` value: per level, {part: [children's names]}."""
        return [
            {
                name: [self.names(depth)[c] for c in children]
                for name, children in zip(level.names, level.children, strict=True)
            }
            for depth, level in enumerate(self.levels)
        ]

    @classmethod
    def from_names(
        cls, joint_names: tuple[str, ...], flip_pairs: tuple[tuple[int, int], ...], levels: object
    ) -> PartHierarchy:
        """The hierarchy ``levels`` describes: a list, level 1 first, of {part: [names of the level
        below]} (JSON objects keep their order, which is the maps' order). Raises
        :class:`HierarchyError` for a part naming an unknown name or one of its own level or above
        (a cycle), a part without children, a joint or part that belongs to no part of the next
        level, two parts with the same children, a name used twice, or a part whose mirror image
        is not a part of its level."""
        if not isinstance(levels, list | tuple) or not levels:
            raise HierarchyError(
                "expected a non-empty list of levels, each {part: [names of the level below]}"
            )
        level_of = {name: 0 for name in joint_names}
        for depth, level in enumerate(levels, start=1):
            if not isinstance(level, dict) or not level:
                raise HierarchyError(
                    f"level {depth}: expected a non-empty object {{part: [names of level {depth - 1}]}}"
                )
            for name in level:
                if not isinstance(name, str) or not name.strip():
                    raise HierarchyError(f"level {depth}: part name {name!r} is empty")
                if name in level_of:
                    raise HierarchyError(
                        f"level {depth}: part '{name}' takes the name of a "
                        f"{'joint' if level_of[name] == 0 else f'part of level {level_of[name]}'}"
                    )
                level_of[name] = depth
        built = []
        below = tuple(joint_names)
        for depth, level in enumerate(levels, start=1):
            children = tuple(_children(depth, name, given, below, level_of) for name, given in level.items())
            _check_level(depth, tuple(level), children, below)
            built.append(PartLevel(tuple(level), children))
            below = tuple(level)
        hierarchy = cls(tuple(joint_names), tuple(built), ())
        permutations = _mirror_permutations(hierarchy, flip_pairs)
        return cls(tuple(joint_names), tuple(built), permutations)


def _chain(joints: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A level-1 part's bones: consecutive joints joined; one joint is a bone of length 0."""
    if len(joints) == 1:
        return ((joints[0], joints[0]),)
    return tuple(zip(joints[:-1], joints[1:], strict=True))


def _children(
    depth: int, name: str, given: object, below: tuple[str, ...], level_of: dict[str, int]
) -> tuple[int, ...]:
    """Part ``name``'s children as indices into level ``depth - 1`` (names ``below``)."""
    where = f"level {depth}, part '{name}'"
    if not isinstance(given, list | tuple) or not all(isinstance(child, str) for child in given):
        raise HierarchyError(f"{where}: expected a list of names of level {depth - 1}, got {given!r}")
    if not given:
        raise HierarchyError(f"{where}: has no children (an empty part)")
    for position, child in enumerate(given):
        if child not in level_of:
            raise HierarchyError(f"{where}: unknown name '{child}'{did_you_mean(child, below)}")
        found = level_of[child]
        if found >= depth:
            raise HierarchyError(
                f"{where}: '{child}' is a part of level {found}, not of level {depth - 1}; a part is made "
                f"of the level just below, so this makes a cycle"
            )
        if found < depth - 1:
            raise HierarchyError(
                f"{where}: '{child}' is a {'joint' if found == 0 else f'part of level {found}'}, not of "
                f"level {depth - 1}; a part is made of the level just below"
            )
        if list(given).index(child) != position:
            raise HierarchyError(f"{where}: names '{child}' twice")
    return tuple(below.index(child) for child in given)


def _check_level(
    depth: int, names: tuple[str, ...], children: tuple[tuple[int, ...], ...], below: tuple[str, ...]
) -> None:
    """Every name of the level below is in some part; no two parts have the same children."""
    used = {child for part in children for child in part}
    for index, name in enumerate(below):
        if index not in used:
            kind = "joint" if depth == 1 else f"part of level {depth - 1}"
            raise HierarchyError(
                f"level {depth}: {kind} '{name}' is in no part; every {kind.split(' ')[0]} of level "
                f"{depth - 1} must belong to a part of level {depth}"
            )
    seen: dict[frozenset[int], str] = {}
    for name, part in zip(names, children, strict=True):
        key = frozenset(part) if depth > 1 else _bone_set(_chain(part))
        if key in seen:
            raise HierarchyError(f"level {depth}: parts '{seen[key]}' and '{name}' are the same part")
        seen[key] = name


def _bone_set(bones) -> frozenset[frozenset[int]]:
    """A level-1 part as its set of undirected bones: the same key whichever way it is listed."""
    return frozenset(frozenset(bone) for bone in bones)


def _mirror_permutations(
    hierarchy: PartHierarchy, flip_pairs: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, ...], ...]:
    """Per level, each part's mirror image: the part whose bones (level 1) or children (higher)
    are its own mirrored. A part without one stops in a HierarchyError: the flip test maps a
    mirrored image's score maps back level by level."""
    joints = list(range(len(hierarchy.joint_names)))
    for a, b in flip_pairs:
        joints[a], joints[b] = b, a
    permutations = [tuple(joints)]
    for depth, level in enumerate(hierarchy.levels, start=1):
        below = permutations[-1]
        if depth == 1:
            keys = [_bone_set(bones) for bones in hierarchy.bones(1)]
            mirrored = [frozenset(frozenset(below[j] for j in bone) for bone in key) for key in keys]
        else:
            keys = [frozenset(children) for children in level.children]
            mirrored = [frozenset(below[c] for c in key) for key in keys]
        index = {key: i for i, key in enumerate(keys)}
        permutation = []
        for name, image in zip(level.names, mirrored, strict=True):
            if image not in index:
                raise HierarchyError(
                    f"level {depth}, part '{name}': its mirror image is no part of level {depth}; the flip "
                    f"test needs each part's left/right twin (or the part itself) in the same level"
                )
            permutation.append(index[image])
        permutations.append(tuple(permutation))
    return tuple(permutations)


# The paper's MPII hierarchy (Tang et al. 2018; the hierarchy file of the authors' Torch code,
# `3levels_16joints.lua`, as idotc/DLMSCM keeps it):
# 16 joints, 12 parts of one bone each, 6 parts of two parts each; the maps' order is theirs.
MPII_PARTS = [
    {
        "r_lower_leg": ["r_ankle", "r_knee"],
        "r_upper_leg": ["r_knee", "r_hip"],
        "l_upper_leg": ["l_hip", "l_knee"],
        "l_lower_leg": ["l_knee", "l_ankle"],
        "r_hip_bone": ["r_hip", "pelvis"],
        "l_hip_bone": ["l_hip", "pelvis"],
        "neck": ["thorax", "upper_neck"],
        "head": ["upper_neck", "head_top"],
        "r_lower_arm": ["r_wrist", "r_elbow"],
        "r_upper_arm": ["r_elbow", "r_shoulder"],
        "l_upper_arm": ["l_shoulder", "l_elbow"],
        "l_lower_arm": ["l_elbow", "l_wrist"],
    },
    {
        "r_leg": ["r_lower_leg", "r_upper_leg"],
        "l_leg": ["l_upper_leg", "l_lower_leg"],
        "waist": ["r_hip_bone", "l_hip_bone"],
        "head_neck": ["neck", "head"],
        "r_arm": ["r_lower_arm", "r_upper_arm"],
        "l_arm": ["l_upper_arm", "l_lower_arm"],
    },
]
MPII_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))

MPII_JOINTS = JointSpec(
    names=MPII_JOINT_NAMES,  # the official evaluation's order, defined beside it
    flip_pairs=MPII_FLIP_PAIRS,
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
    hierarchy=PartHierarchy.from_names(MPII_JOINT_NAMES, MPII_FLIP_PAIRS, MPII_PARTS),
)

# COCO's hierarchy, the project's own (the paper has none): MPII's pattern of 12 one-bone parts, then 6
# parts of two, on COCO's 17 joints. COCO has no pelvis, thorax, neck or head top, so the trunk's
# bones are the hip line and the shoulder line (MPII's waist is its two hip bones), and the head is
# the face: each side a chain ear - eye - nose, the two sides meeting at the nose. Limbs are MPII's.
# Every joint is in a part, and every part has its mirror twin (or is its own).
COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
COCO_PARTS = [
    {
        "left_lower_leg": ["left_ankle", "left_knee"],
        "left_upper_leg": ["left_knee", "left_hip"],
        "right_lower_leg": ["right_ankle", "right_knee"],
        "right_upper_leg": ["right_knee", "right_hip"],
        "hips": ["left_hip", "right_hip"],
        "shoulders": ["left_shoulder", "right_shoulder"],
        "left_face": ["left_ear", "left_eye", "nose"],
        "right_face": ["right_ear", "right_eye", "nose"],
        "left_upper_arm": ["left_shoulder", "left_elbow"],
        "left_lower_arm": ["left_elbow", "left_wrist"],
        "right_upper_arm": ["right_shoulder", "right_elbow"],
        "right_lower_arm": ["right_elbow", "right_wrist"],
    },
    {
        "left_leg": ["left_lower_leg", "left_upper_leg"],
        "right_leg": ["right_lower_leg", "right_upper_leg"],
        "torso": ["hips", "shoulders"],
        "head": ["left_face", "right_face"],
        "left_arm": ["left_upper_arm", "left_lower_arm"],
        "right_arm": ["right_upper_arm", "right_lower_arm"],
    },
]

COCO_JOINTS = JointSpec(
    names=COCO_NAMES,
    flip_pairs=COCO_FLIP_PAIRS,
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
    hierarchy=PartHierarchy.from_names(COCO_NAMES, COCO_FLIP_PAIRS, COCO_PARTS),
)
