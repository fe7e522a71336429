"""Skeleton drawings: predicted and ground-truth poses over images, saved as PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from datasets.base import IMAGENET_MEAN, IMAGENET_STD

PREDICTED_COLOR = (0, 255, 0)  # green
TRUE_COLOR = (255, 0, 255)  # magenta: neither the synthetic people's warm nor cool limb colours
MIN_PANEL_SIDE = 128  # tiny crops are enlarged so the skeletons stay legible


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """A (3, H, W) network crop as an (H, W, 3) uint8 RGB picture: a dataset's uint8 crop as it
    is, a normalised float one with the normalisation undone."""
    if np.asarray(image).dtype == np.uint8:
        return np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0))
    pixels = np.asarray(image, dtype=np.float32).transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(pixels * 255.0, 0, 255).astype(np.uint8)


def draw_pose(
    image: np.ndarray,
    joints: np.ndarray,
    visible: np.ndarray,
    skeleton: tuple[tuple[int, int], ...],
    color: tuple[int, int, int],
    left_joints: tuple[int, ...] = (),
    radius: int | None = None,
) -> np.ndarray:
    """Draw limbs between visible joints of a (K, 2) pose on a copy of an RGB uint8 image, lines
    ``radius`` px thick (default: the image's shorter side / 80). Joints listed in
    ``left_joints`` get a white centre so the sides can be told apart."""
    canvas = np.ascontiguousarray(image.copy())
    radius = max(1, round(min(canvas.shape[:2]) / 80)) if radius is None else radius
    points = [tuple(int(round(v)) for v in joint) for joint in np.nan_to_num(joints)]
    for a, b in skeleton:
        if visible[a] > 0 and visible[b] > 0:
            cv2.line(canvas, points[a], points[b], color, radius, cv2.LINE_AA)
    for index, point in enumerate(points):
        if visible[index] > 0:
            cv2.circle(canvas, point, radius + 1, color, -1, cv2.LINE_AA)
            if index in left_joints:
                cv2.circle(canvas, point, max(radius - 1, 1), (255, 255, 255), -1, cv2.LINE_AA)
    return canvas


def skeleton_panel(image: np.ndarray, truth: np.ndarray, preds: np.ndarray, spec) -> np.ndarray:
    """A (3, h, w) network crop with its true skeleton (magenta) and the predicted one (green),
    both (K, 2) in crop pixels (a NaN joint is not drawn), enlarged to at least ``MIN_PANEL_SIDE``
    pixels; left-side joints have white centres."""
    picture = to_uint8_image(image)
    factor = max(1, math.ceil(MIN_PANEL_SIDE / min(picture.shape[:2])))
    if factor > 1:
        picture = cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    for points, color in ((truth, TRUE_COLOR), (preds, PREDICTED_COLOR)):
        # pixel centres at integers: crop x -> (x + 0.5) * factor - 0.5
        points = (np.asarray(points, dtype=np.float64) + 0.5) * factor - 0.5
        shown = np.isfinite(points).all(axis=1).astype(np.float32)
        picture = draw_pose(picture, points, shown, spec.skeleton, color, spec.left_joints)
    return picture


def skeleton_grid(
    images: np.ndarray, truth: np.ndarray, preds: np.ndarray, spec, columns: int = 4
) -> np.ndarray:
    """``skeleton_panel`` for each of n crops (n, 3, h, w) with (n, K, 2) poses, four to a row:
    TensorBoard's ``val/skeletons`` and ``predictions.png``."""
    return tile_images(
        [skeleton_panel(*crop, spec) for crop in zip(images, truth, preds, strict=True)], columns
    )


def save_skeletons(images: np.ndarray, truth: np.ndarray, preds: np.ndarray, spec, path: str | Path) -> Path:
    """``skeleton_grid`` as a PNG (``predictions.png``)."""
    return _write_png(skeleton_grid(images, truth, preds, spec), path)


def tile_images(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 RGB images into one, row by row (black where none)."""
    height, width = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return grid


def save_grid(images: list[np.ndarray], path: str | Path, columns: int = 4) -> Path:
    """Tile equally sized RGB images into one PNG."""
    return _write_png(tile_images(images, columns), path)


def _write_png(picture: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return path


def browse_samples(dataset, codec, count: int, directory: str | Path) -> list[Path]:
    """Write ``count`` training samples as PNGs, with the joints decoded back from their targets
    (so what is drawn is what the network is taught); left-side joints have white centres."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = dataset.joint_spec
    paths = []
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        # the joints' part of the target (a compositional one also holds its parts' maps)
        target, weight = codec.joint_target(sample["target"][None], sample["target_weight"][None])
        joints, _ = codec.decode(target.numpy())
        image = to_uint8_image(sample["image"].numpy())
        drawn = draw_pose(image, joints[0], weight[0].numpy(), spec.skeleton, (0, 255, 0), spec.left_joints)
        paths.append(save_grid([drawn], directory / f"sample_{index:04d}.png", columns=1))
    return paths


def draw_person(
    image: np.ndarray,
    pose: np.ndarray,
    box: list[float],
    label: str,
    color: tuple[int, int, int],
    skeleton: tuple[tuple[int, int], ...],
    left_joints: tuple[int, ...],
    threshold: float,
) -> np.ndarray:
    """One predicted person on a copy of an RGB uint8 picture: the box, a label on it (its score,
    a track id) and the (K, 3) pose's joints whose confidence reaches ``threshold`` with the limbs
    between them, all in ``color``. Lines grow with the picture (2 px at 500 px, 8 at 2000) so a
    skeleton stays readable at the size a viewer shows it."""
    canvas = np.ascontiguousarray(image.copy())
    line = max(2, round(max(canvas.shape[:2]) / 250))
    x, y, width, height = (int(round(v)) for v in box)
    cv2.rectangle(canvas, (x, y), (x + width, y + height), color, max(1, line // 2))
    canvas = draw_pose(canvas, pose[:, :2], pose[:, 2] >= threshold, skeleton, color, left_joints, line)
    return draw_label(canvas, label, (box[0], box[1]), color)


def draw_label(
    image: np.ndarray, text: str, corner: tuple[float, float], color: tuple[int, int, int]
) -> np.ndarray:
    """``text`` on a filled box of ``color`` whose top-left corner is ``corner`` (x, y) pixels,
    moved inside the image, on a copy of an RGB uint8 image (a video's track id at its box)."""
    canvas = np.ascontiguousarray(image.copy())
    height, width = canvas.shape[:2]
    scale = max(0.35, min(height, width) / 600)
    thickness = max(1, round(scale * 1.5))
    (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(1, round(2 * scale))
    box_width, box_height = text_width + 2 * pad, text_height + baseline + 2 * pad
    x = int(min(max(corner[0], 0), max(width - box_width, 0)))
    y = int(min(max(corner[1], 0), max(height - box_height, 0)))
    cv2.rectangle(canvas, (x, y), (x + box_width, y + box_height), color, -1)
    ink = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)  # dark text on a light box
    origin = (x + pad, y + pad + text_height)
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)
    return canvas
