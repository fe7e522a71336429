"""Affine maps between an original image and a network input crop.

Pixel convention everywhere: integer coordinates are pixel centres (as in cv2.warpAffine), so a
crop of width ``w`` spans [-0.5, w - 0.5] and its centre is at (w - 1) / 2.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def crop_affine(
    center: np.ndarray,
    box_height: float,
    output_size: tuple[int, int],
    rotation: float = 0.0,
    flip: bool = False,
    center_offset: float = 0.0,
    size_offset: float = 0.0,
) -> np.ndarray:
    """(2, 3) matrix mapping original-image pixels to a crop of ``output_size`` = (width, height).

    The crop shows a box of ``box_height`` pixels (and ``box_height * width / height`` wide)
    centred on ``center``, rotated by ``rotation`` degrees (counter-clockwise as displayed),
    then mirrored left-right when ``flip``. ``center`` lands at the crop's centre, (w - 1) / 2,
    plus ``center_offset`` (0.5 puts it at w / 2, where HRNet-style code puts it). The box's
    height spans ``height - size_offset`` crop pixels and its width ``width - size_offset``: with
    0 the box covers the crop edge to edge (one zoom for both axes); with 1 (UDP) its sides land
    on the first and last pixel centres, so the two axes zoom slightly differently.
    """
    width, height = output_size
    zoom = (height - size_offset) / float(box_height)
    # the box is box_height * width / height wide: with size_offset 0 the same zoom
    zoom_x = zoom if size_offset == 0 else (width - size_offset) * height / (float(box_height) * width)
    angle = math.radians(rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    # y points down in images, so a counter-clockwise turn on screen is (x, y) -> (x cos + y sin, -x sin + y cos);
    # the turn comes first, then each axis' zoom
    linear = np.array([[cos * zoom_x, sin * zoom_x], [-sin * zoom, cos * zoom]])
    if flip:
        linear[0] *= -1
    out_center = np.array([(width - 1) / 2.0, (height - 1) / 2.0]) + center_offset
    translation = out_center - linear @ np.asarray(center, dtype=np.float64)
    return np.concatenate([linear, translation[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix (or of each of (..., 2, 3) matrices)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    bottom = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*matrix.shape[:-2], 1, 3))
    return np.linalg.inv(np.concatenate([matrix, bottom], axis=-2))[..., :2, :]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(2, 3) matrix of ``inner`` followed by ``outer``."""
    return np.concatenate(
        [outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1
    )


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points with a (2, 3) matrix (or (..., 2, 3) matrices broadcast over points)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.einsum("...ij,...kj->...ki", matrix[..., :2], points) + matrix[..., None, :, 2]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Warp an (H, W, 3) uint8 image into an (h, w, 3) crop; outside the image is black."""
    return cv2.warpAffine(
        image,
        matrix,
        output_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
