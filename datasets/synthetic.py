"""Built-in synthetic people: procedurally drawn figures with MPII's 16 joints and skeleton.

Needs no download, so a new user sees a model learn within minutes on a laptop CPU. Each person
has a random pose, size, position, rotation, limb thickness, background and sometimes an
occluder; joints that leave the image are marked missing, like MPII's unannotated joints.
Anatomical sides are colour-coded (left limbs warm, right limbs cool) and the figure may face
the camera or away from it, so left and right can be told apart only by colour, never by which
side of the image they are on. Mirroring would break that code, so the demo config leaves flip
augmentation off.

Everything is a pure function of (seed, split, index): records are drawn at construction and
images are re-rendered on demand, so nothing is written to disk and workers need no cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.base import Augmentation, KeypointDataset
from datasets.codecs import BOX_PADDING, Codec
from datasets.registry import DataRequest, register_dataset
from datasets.skeletons import MPII_JOINTS
from metrics.mpii import pckh_of

# "examples": the demo's pictures for -predict (write_examples), drawn from neither split
SPLIT_IDS = {"train": 0, "val": 1, "examples": 2}
EXAMPLES = 4

# Limbs drawn as thick lines, by anatomical side (MPII indices).
LEFT_LIMBS = ((3, 4), (4, 5), (13, 14), (14, 15))
RIGHT_LIMBS = ((2, 1), (1, 0), (12, 11), (11, 10))


def _unit(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` radians, 0 = straight down the image, counter-clockwise positive."""
    return np.array([math.sin(angle), math.cos(angle)])


def sample_person(rng: np.random.Generator, image_size: int) -> dict[str, Any]:
    """Draw one person's joints (16, 2) and drawing style inside an ``image_size`` square image."""
    height = rng.uniform(0.45, 0.85) * image_size
    lean = rng.normal(0.0, math.radians(12))
    up = -_unit(lean)  # towards the head
    side = np.array([-up[1], up[0]])  # image-right of the figure when facing the camera
    if rng.random() < 0.5:
        side = -side  # facing away: the person's left appears on the image's left

    joints = np.zeros((16, 2))
    pelvis = np.zeros(2)
    thorax = pelvis + up * 0.30 * height
    neck = thorax + up * 0.07 * height
    head_radius = rng.uniform(0.065, 0.085) * height
    head_tilt = rng.normal(0.0, math.radians(10))
    head_dir = -_unit(lean + head_tilt)
    head_top = neck + head_dir * 2 * head_radius
    joints[6], joints[7], joints[8], joints[9] = pelvis, thorax, neck, head_top

    hip_half = rng.uniform(0.07, 0.10) * height
    shoulder_half = rng.uniform(0.10, 0.14) * height
    joints[3], joints[2] = pelvis + side * hip_half, pelvis - side * hip_half  # l_hip, r_hip
    joints[13], joints[12] = thorax + side * shoulder_half, thorax - side * shoulder_half  # l/r shoulder

    thigh, shin = 0.25 * height, 0.24 * height
    upper_arm, forearm = 0.17 * height, 0.15 * height
    for hip, knee, ankle in ((3, 4, 5), (2, 1, 0)):
        thigh_angle = lean + rng.uniform(-0.9, 0.9)
        knee_bend = rng.uniform(-1.6, 1.6) * rng.random()
        foreshorten = rng.uniform(0.65, 1.0, size=2)
        joints[knee] = joints[hip] + _unit(thigh_angle) * thigh * foreshorten[0]
        joints[ankle] = joints[knee] + _unit(thigh_angle + knee_bend) * shin * foreshorten[1]
    for shoulder, elbow, wrist in ((13, 14, 15), (12, 11, 10)):
        arm_angle = lean + rng.uniform(-2.6, 2.6)
        elbow_bend = rng.uniform(-2.0, 2.0)
        foreshorten = rng.uniform(0.6, 1.0, size=2)
        joints[elbow] = joints[shoulder] + _unit(arm_angle) * upper_arm * foreshorten[0]
        joints[wrist] = joints[elbow] + _unit(arm_angle + elbow_bend) * forearm * foreshorten[1]

    # whole-figure rotation, then placement that sometimes pushes limbs out of the frame
    turn = rng.normal(0.0, math.radians(15))
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    joints = joints @ rotation.T
    box_center = (joints.min(axis=0) + joints.max(axis=0)) / 2
    placement = image_size / 2 + rng.uniform(-0.22, 0.22, size=2) * image_size
    joints += placement - box_center
    head_center = (joints[8] + joints[9]) / 2

    inside = (joints >= 0).all(axis=1) & (joints <= image_size - 1).all(axis=1)
    extent = joints.max(axis=0) - joints.min(axis=0)
    return {
        "joints": joints.astype(np.float32),
        "visible": inside.astype(np.float32),
        "center": ((joints.min(axis=0) + joints.max(axis=0)) / 2).astype(np.float32),
        "scale": float(BOX_PADDING * max(extent.max(), 0.5 * height)),
        # MPII's PCKh normaliser: 0.6 x diagonal of the head box (here the square around the head)
        "head_size": float(0.6 * math.sqrt(2) * 2 * head_radius),
        "head_center": head_center.astype(np.float32),
        "head_radius": float(head_radius),
        "thickness": float(rng.uniform(0.035, 0.06) * height),
        "render_seed": int(rng.integers(2**31)),
    }


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    low_res = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    image = cv2.resize(low_res, (size, size), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 12, size=(size, size, 3))
    # half-desaturated so the background rarely matches the limbs' side colours
    image = image.astype(np.float64)
    image = 0.5 * image + 0.5 * image.mean(axis=2, keepdims=True)
    image = np.clip(image * 0.8 + noise, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 4)):  # neutral clutter: lines and blobs without the limb hues
        color = tuple(int(c) for c in rng.integers(60, 200, size=1).repeat(3) + rng.integers(-20, 20, size=3))
        start, end = rng.integers(0, size, size=(2, 2))
        cv2.line(
            image, tuple(int(v) for v in start), tuple(int(v) for v in end), color, int(rng.integers(1, 5))
        )
    return image


def _side_color(rng: np.random.Generator, warm: bool) -> tuple[int, int, int]:
    strong, weak = int(rng.integers(170, 256)), rng.integers(0, 90, size=2)
    r, g, b = (strong, int(weak[0]), int(weak[1])) if warm else (int(weak[0]), int(weak[1]), strong)
    return (r, g, b)


def render_person(record: dict[str, Any], image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8 RGB picture of the record's person."""
    rng = np.random.default_rng(record["render_seed"])
    image = _background(rng, image_size)
    joints = record["joints"]
    thickness = max(int(round(record["thickness"])), 1)
    shift = 4  # cv2 draws with 4 fractional bits so sub-pixel joint positions stay sub-pixel

    def point(index: int) -> tuple[int, int]:
        return tuple(int(round(v * (1 << shift))) for v in joints[index])

    torso_color = tuple(int(c) for c in rng.integers(40, 230, size=3))
    sides = [(LEFT_LIMBS, _side_color(rng, warm=True)), (RIGHT_LIMBS, _side_color(rng, warm=False))]
    if rng.random() < 0.5:
        sides.reverse()  # which side is nearer the camera, drawn over the torso
    (back_limbs, back_color), (front_limbs, front_color) = sides

    def draw_limbs(limb_set: tuple[tuple[int, int], ...], color: tuple[int, int, int]) -> None:
        for a, b in limb_set:
            cv2.line(image, point(a), point(b), color, thickness, cv2.LINE_AA, shift)
        # a darker dot marks the hand or foot at the end of each limb
        dark = tuple(int(c * 0.6) for c in color)
        for _, end in limb_set[1::2]:
            cv2.circle(image, point(end), int(thickness * 0.8 * (1 << shift)), dark, -1, cv2.LINE_AA, shift)

    draw_limbs(back_limbs, back_color)
    torso = np.array([point(12), point(13), point(3), point(2)], dtype=np.int32)
    cv2.fillConvexPoly(image, torso, torso_color, cv2.LINE_AA, shift)
    cv2.line(image, point(7), point(8), torso_color, thickness, cv2.LINE_AA, shift)
    skin = (int(rng.integers(150, 256)), int(rng.integers(110, 200)), int(rng.integers(70, 160)))
    center = tuple(int(round(v * (1 << shift))) for v in record["head_center"])
    cv2.circle(image, center, int(round(record["head_radius"] * (1 << shift))), skin, -1, cv2.LINE_AA, shift)
    draw_limbs(front_limbs, front_color)

    if rng.random() < 0.3:  # an occluder over part of the body; covered joints stay annotated
        target = joints[rng.integers(16)]
        half = rng.uniform(0.05, 0.15, size=2) * image_size
        corner1 = np.clip(target - half, 0, image_size - 1).astype(int)
        corner2 = np.clip(target + half * rng.uniform(0.3, 1.0, size=2), 0, image_size - 1).astype(int)
        gray = int(rng.integers(40, 220))
        cv2.rectangle(image, tuple(int(v) for v in corner1), tuple(int(v) for v in corner2), (gray,) * 3, -1)
    return image


class SyntheticPeople(KeypointDataset):
    """``size`` synthetic persons of a split ("train" or "val"), one per ``image_size`` image."""

    joint_spec = MPII_JOINTS
    main_metric = "PCKh"  # MPII's joints, with head sizes from the drawing

    def evaluate(self, results: dict[str, np.ndarray], output_dir: Path | None = None) -> dict[str, float]:
        """Loss, PCK and MPII's PCKh table."""
        return super().evaluate(results, output_dir) | pckh_of(results)

    def __init__(
        self,
        split: str,
        size: int,
        codec: Codec,
        input_size: tuple[int, int],
        image_size: int = 160,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        self.image_size = image_size
        records = []
        for index in range(size):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
            record = sample_person(rng, image_size)
            record["image_id"] = index
            records.append(record)
        super().__init__(records, codec, input_size, augmentation, seed)

    def load_image(self, record: dict[str, Any]) -> np.ndarray:
        return render_person(record, self.image_size)

    def write_examples(self, folder: Path) -> Path | None:
        """``EXAMPLES`` new people as PNG and ``boxes.json`` (each person's box, which frames them
        as training crops do: ``-predict`` pads a box by 1.25 as ``scale`` is padded here)."""
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for index in range(EXAMPLES):
            record = sample_person(
                np.random.default_rng([self.seed, SPLIT_IDS["examples"], index]), self.image_size
            )
            name = f"person_{index}.png"
            if not cv2.imwrite(str(folder / name), cv2.cvtColor(self.load_image(record), cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {folder / name}")
            side = record["scale"] / BOX_PADDING
            x, y = record["center"] - side / 2
            boxes.append(
                {"file_name": name, "bbox": [round(float(v), 2) for v in (x, y, side, side)], "score": 1.0}
            )
        box_file = folder / "boxes.json"
        box_file.write_text(json.dumps(boxes, indent=1) + "\n")
        return box_file


@register_dataset("synthetic", joint_spec=MPII_JOINTS, needs_data_dir=False)
def build_synthetic(request: DataRequest, train: bool) -> SyntheticPeople:
    """Rendered on the fly: ``synthetic_sizes`` = (training, validation) persons."""
    if train:
        return SyntheticPeople(
            "train", request.synthetic_sizes[0], request.codec, request.input_size,
            request.synthetic_image_size, request.augmentation, request.seed,
        )  # fmt: skip
    return SyntheticPeople(
        "val", request.synthetic_sizes[1], request.codec, request.input_size,
        request.synthetic_image_size, None, request.seed,
    )  # fmt: skip
