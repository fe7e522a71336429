"""Your own keypoints: COCO-format annotations with the joints a spec file describes.

``--dataset custom --jointSpec SPEC.json`` reads annotations exactly as COCO does (same layout,
``--trainAnnotation``, ``--valAnnotation``, ``--imageDir``, ``--bboxFile``); only the joint set
differs. The spec is a JSON object::

    {
      "name": "face-shoulders",
      "joints": ["nose", "left_eye", "right_eye", "left_ear", "right_ear",
                 "left_shoulder", "right_shoulder"],
      "flip_pairs": [["left_eye", "right_eye"], ["left_ear", "right_ear"],
                     ["left_shoulder", "right_shoulder"]],
      "skeleton": [["nose", "left_eye"], ["nose", "right_eye"], ["left_eye", "left_ear"],
                   ["right_eye", "right_ear"], ["left_shoulder", "right_shoulder"]],
      "sigmas": [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079]
    }

``joints`` are in annotation order (an annotation's ``keypoints`` hold ``3 x len(joints)``
numbers); ``flip_pairs`` (left, right) and ``skeleton`` name joints; ``sigmas`` are the OKS
standard deviations, one per joint, used by COCO keypoint AP and OKS-NMS.

Half-body crops (``--halfBodyProb``) need the joints split into an upper and a lower body:

1. an optional ``"upper_body": [names]`` key gives the upper body; every other joint is lower;
2. without it, a spec whose joints are all COCO joint names takes COCO's split (face, shoulders,
   elbows and wrists above; hips, knees and ankles below);
3. otherwise, or when one half would be empty (e.g. face and shoulders only), the spec has no
   half-body crops and ``--halfBodyProb`` has no effect (the training set's reader prints a
   note saying so).

A person needs more labelled joints than 8/17 of the joint count (HRNet's 8 for COCO) to be cut.

A compositional model (DLCM) needs levels of parts: an optional ``"hierarchy"`` key, a list of
levels, level 1 first, each an object ``{part: [names of the level below]}`` (level 1's parts name
joints). See :class:`datasets.skeletons.PartHierarchy` for the rules and docs/datasets.md for an
example; a spec without the key serves every other model.

A run records the spec's content (this module's canonical JSON) as its ``jointSpec`` option, so
a checkpoint is self-sufficient: ``-test --loadModel ckpt`` works without the file.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from datasets.base import DataError
from datasets.coco import COCODataset, coco_format_arguments
from datasets.registry import DataRequest, register_dataset
from datasets.skeletons import COCO_JOINTS, HierarchyError, JointSpec, PartHierarchy
from utils.registry import did_you_mean

REQUIRED_KEYS = {
    "name": "a non-empty string",
    "joints": "joint names in annotation order",
    "flip_pairs": "[left, right] pairs of joint names swapped by a mirror image",
    "skeleton": "pairs of joint names to draw as limbs",
    "sigmas": "one OKS sigma per joint",
}
OPTIONAL_KEYS = {
    "upper_body": "joint names of the upper body, for half-body crops",
    "hierarchy": "levels of parts, each {part: [names of the level below]}, for DLCM",
}
INLINE_SOURCE = "inline spec"
CUSTOM_HINT = "see docs/datasets.md, Your own keypoints"


class SpecError(ValueError):
    """A joint spec that cannot be used; one line naming the file and the key."""


def _is_inline(value: str) -> bool:
    return str(value).lstrip().startswith("{")


def load_joint_spec(value: str | Path) -> JointSpec:
    """The joint set a spec describes; ``value`` is a JSON file path, or the spec's JSON itself
    (the form a run records). Raises :class:`SpecError` naming the file and key."""
    if _is_inline(str(value)):
        return _parse_text(str(value), INLINE_SOURCE)
    path = Path(value)
    if not path.is_file():
        raise SpecError(f"jointSpec: spec file not found: {path} ({CUSTOM_HINT})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"jointSpec: cannot read {path} ({' '.join(str(exc).split())})") from None
    return _parse_text(text, str(path))


@functools.lru_cache(maxsize=32)
def _parse_text(text: str, source: str) -> JointSpec:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"jointSpec: {source}: not valid JSON ({' '.join(str(exc).split())})") from None
    return parse_spec(data, source)


def parse_spec(data: Any, source: str = INLINE_SOURCE) -> JointSpec:
    """Check a parsed spec and turn it into a :class:`JointSpec` (names -> indices)."""
    if not isinstance(data, dict):
        raise SpecError(f"jointSpec: {source}: expected a JSON object with keys {', '.join(REQUIRED_KEYS)}")
    allowed = [*REQUIRED_KEYS, *OPTIONAL_KEYS]
    for key in data:
        if key not in allowed:
            hint = did_you_mean(key, allowed, otherwise=f"; allowed: {', '.join(allowed)}")
            raise SpecError(f"jointSpec: {source}: unknown key '{key}'{hint}")
    for key, meaning in REQUIRED_KEYS.items():
        if key not in data:
            raise SpecError(f"jointSpec: {source}: missing key '{key}' ({meaning})")

    def bad(key: str, message: str) -> SpecError:
        return SpecError(f"jointSpec: {source}: key '{key}': {message}")

    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise bad("name", f"expected a non-empty string, got {json.dumps(name)}")
    names = data["joints"]
    if not isinstance(names, list) or not names:
        raise bad("joints", "expected a non-empty list of joint names")
    for position, joint in enumerate(names):
        if not isinstance(joint, str) or not joint.strip():
            raise bad("joints", f"entry {position} is {json.dumps(joint)}, not a joint name")
        if names.index(joint) != position:
            raise bad("joints", f"joint '{joint}' is listed twice")
    index = {joint: i for i, joint in enumerate(names)}

    def pairs(key: str) -> tuple[tuple[int, int], ...]:
        value = data[key]
        if not isinstance(value, list):
            raise bad(key, "expected a list of [joint, joint] pairs")
        result = []
        for position, pair in enumerate(value):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(j, str) for j in pair)):
                raise bad(key, f"pair {position} is {json.dumps(pair)}, not two joint names")
            for joint in pair:
                if joint not in index:
                    hint = did_you_mean(joint, names)
                    raise bad(key, f"pair {position} names unknown joint '{joint}'{hint}")
            if pair[0] == pair[1]:
                raise bad(key, f"pair {position} pairs joint '{pair[0]}' with itself")
            result.append((index[pair[0]], index[pair[1]]))
        return tuple(result)

    flip_pairs = pairs("flip_pairs")
    seen: set[int] = set()
    for a, b in flip_pairs:
        for joint in (a, b):
            if joint in seen:
                raise bad("flip_pairs", f"joint '{names[joint]}' is in more than one pair")
            seen.add(joint)
    skeleton = pairs("skeleton")

    sigmas = data["sigmas"]
    if not isinstance(sigmas, list):
        raise bad("sigmas", f"expected a list of {len(names)} numbers (one OKS sigma per joint)")
    if len(sigmas) != len(names):
        raise bad("sigmas", f"{len(sigmas)} values for {len(names)} joints (one OKS sigma per joint)")
    for position, sigma in enumerate(sigmas):
        number = isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
        if not (number and math.isfinite(sigma) and sigma > 0):
            raise bad(
                "sigmas", f"value {position} ({names[position]}) is {json.dumps(sigma)}, not a number > 0"
            )

    return JointSpec(
        names=tuple(names),
        flip_pairs=flip_pairs,
        skeleton=skeleton,
        sigmas=tuple(float(s) for s in sigmas),
        upper_body=_upper_body(data, names, index, bad),
        name=name.strip(),
        hierarchy=_hierarchy(data, names, flip_pairs, bad),
    )


def _hierarchy(
    data: dict[str, Any], names: list[str], flip_pairs: tuple[tuple[int, int], ...], bad: Any
) -> PartHierarchy | None:
    """The optional levels of parts (see :meth:`PartHierarchy.from_names`); None without the key."""
    if "hierarchy" not in data:
        return None
    try:
        return PartHierarchy.from_names(tuple(names), flip_pairs, data["hierarchy"])
    except HierarchyError as error:
        raise bad("hierarchy", str(error)) from None


def _upper_body(data: dict[str, Any], names: list[str], index: dict[str, int], bad: Any) -> tuple[int, ...]:
    """The half-body split (see the module docstring); () for none."""
    if "upper_body" in data:
        given = data["upper_body"]
        if not isinstance(given, list) or not given or not all(isinstance(j, str) for j in given):
            raise bad("upper_body", "expected a non-empty list of joint names")
        for joint in given:
            if joint not in index:
                raise bad("upper_body", f"unknown joint '{joint}'")
        upper = tuple(sorted({index[j] for j in given}))
        if len(upper) == len(names):
            raise bad("upper_body", "lists every joint; the lower body must keep at least one")
        return upper
    if all(joint in COCO_JOINTS.names for joint in names):
        coco_upper = {COCO_JOINTS.names[i] for i in COCO_JOINTS.upper_body}
        upper = tuple(i for i, joint in enumerate(names) if joint in coco_upper)
        if 0 < len(upper) < len(names):
            return upper
    return ()


def spec_to_json(spec: JointSpec) -> str:
    """The spec's canonical JSON, on one line: what a run records as ``jointSpec`` (joints by
    name; ``upper_body`` only when the spec has a half-body split, ``hierarchy`` only when it has
    one). ``load_joint_spec`` of it
    gives ``spec`` back."""
    names = spec.names
    content: dict[str, Any] = {
        "name": spec.name,
        "joints": list(names),
        "flip_pairs": [[names[a], names[b]] for a, b in spec.flip_pairs],
        "skeleton": [[names[a], names[b]] for a, b in spec.skeleton],
        "sigmas": list(spec.sigmas),
    }
    if spec.has_half_body:
        content["upper_body"] = [names[i] for i in spec.upper_body]
    if spec.hierarchy is not None:
        content["hierarchy"] = spec.hierarchy.to_json()
    return json.dumps(content, separators=(",", ":"))


class CustomDataset(COCODataset):
    """The COCO-format reader with a spec file's joints (see the module docstring)."""

    layout_hint = CUSTOM_HINT

    def __init__(self, *args: Any, joint_spec: JointSpec, **kwargs: Any) -> None:
        self.label = f"custom ({joint_spec.name})"
        super().__init__(*args, joint_spec=joint_spec, **kwargs)


@register_dataset("custom")
def build_custom(request: DataRequest, train: bool) -> CustomDataset:
    if request.joint_spec is None:
        raise DataError(f"dataset custom needs its joint spec (--jointSpec SPEC.json; {CUSTOM_HINT})")
    return CustomDataset(**coco_format_arguments(request, train), joint_spec=request.joint_spec)
