"""Codecs turn joints into training targets and network outputs back into joints.

A model declares its target type; ``make_codec`` picks the codec from that, never from the
model's name. All arrays are numpy; joints are in input-crop pixels (pixel centres at integers).
"""

from __future__ import annotations

import numpy as np


def _frame_scale(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    return np.array([dst[0] / src[0], dst[1] / src[1]], dtype=np.float64)


class HeatmapCodec:
    """One Gaussian heatmap per joint, decoded by argmax plus a quarter-pixel step towards the
    higher neighbour (Newell et al.'s refinement, which bounds the round-trip error by 0.25 px)."""

    target_type = "heatmap"

    def __init__(self, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float) -> None:
        self.input_size = tuple(input_size)  # (width, height)
        self.heatmap_size = tuple(heatmap_size)  # (width, height)
        self.sigma = float(sigma)
        self._to_heatmap = _frame_scale(self.input_size, self.heatmap_size)

    def to_heatmap_frame(self, joints: np.ndarray) -> np.ndarray:
        # pixel centres: input pixel x covers [x - 0.5, x + 0.5], so scale the edges, not the centres
        return (np.asarray(joints, dtype=np.float64) + 0.5) * self._to_heatmap - 0.5

    def to_input_frame(self, joints: np.ndarray) -> np.ndarray:
        return (np.asarray(joints, dtype=np.float64) + 0.5) / self._to_heatmap - 0.5

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> heatmaps (K, H, W) float32, weight (K,) float32.

        A joint that is missing or whose heatmap pixel falls outside the map gets weight 0 and an
        all-zero heatmap.
        """
        width, height = self.heatmap_size
        centers = self.to_heatmap_frame(joints)  # (K, 2)
        inside = (
            (centers[:, 0] >= -0.5)
            & (centers[:, 0] < width - 0.5)
            & (centers[:, 1] >= -0.5)
            & (centers[:, 1] < height - 0.5)
        )
        weight = ((np.asarray(visible) > 0) & inside & np.isfinite(centers).all(axis=1)).astype(np.float32)
        centers = np.where(weight[:, None] > 0, centers, 0.0)
        xs = np.arange(width, dtype=np.float64)
        ys = np.arange(height, dtype=np.float64)
        gauss_x = np.exp(-((xs[None, :] - centers[:, :1]) ** 2) / (2 * self.sigma**2))  # (K, W)
        gauss_y = np.exp(-((ys[None, :] - centers[:, 1:]) ** 2) / (2 * self.sigma**2))  # (K, H)
        heatmaps = gauss_y[:, :, None] * gauss_x[:, None, :] * weight[:, None, None]  # (K, H, W)
        return heatmaps.astype(np.float32), weight

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """heatmaps (N, K, H, W) -> joints (N, K, 2) input px, scores (N, K) peak values."""
        heatmaps = np.asarray(heatmaps, dtype=np.float64)
        n, k, height, width = heatmaps.shape
        flat = heatmaps.reshape(n, k, -1)
        peak = flat.argmax(axis=2)  # (N, K)
        scores = np.take_along_axis(flat, peak[..., None], axis=2)[..., 0]
        x, y = peak % width, peak // width

        def value_at(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
            xx, yy = np.clip(xx, 0, width - 1), np.clip(yy, 0, height - 1)
            return np.take_along_axis(flat, (yy * width + xx)[..., None], axis=2)[..., 0]

        dx = np.where((x > 0) & (x < width - 1), np.sign(value_at(x + 1, y) - value_at(x - 1, y)), 0.0)
        dy = np.where((y > 0) & (y < height - 1), np.sign(value_at(x, y + 1) - value_at(x, y - 1)), 0.0)
        joints = np.stack([x + 0.25 * dx, y + 0.25 * dy], axis=-1)  # (N, K, 2) heatmap px
        return self.to_input_frame(joints), scores


class RegressionCodec:
    """Joint coordinates normalised to the crop, (x + 0.5) / width - 0.5, so the crop spans
    [-0.5, 0.5] whatever its size (DeepPose regresses these directly)."""

    target_type = "regression"

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = tuple(input_size)
        self._size = np.array(self.input_size, dtype=np.float64)

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> target (K, 2) float32, weight (K,) float32."""
        normalised = (np.asarray(joints, dtype=np.float64) + 0.5) / self._size - 0.5
        inside = (np.abs(normalised) <= 0.5).all(axis=1)
        weight = ((np.asarray(visible) > 0) & inside).astype(np.float32)
        target = np.where(weight[:, None] > 0, normalised, 0.0)
        return target.astype(np.float32), weight

    def decode(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """outputs (N, K, 2) normalised -> joints (N, K, 2) input px, scores (N, K) all ones
        (a regressor has no confidence of its own)."""
        outputs = np.asarray(outputs, dtype=np.float64)
        joints = (outputs + 0.5) * self._size - 0.5
        return joints, np.ones(outputs.shape[:2])


Codec = HeatmapCodec | RegressionCodec


def make_codec(
    target_type: str, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float
) -> Codec:
    """The codec for a model's declared target type ("heatmap" or "regression")."""
    if target_type == "heatmap":
        return HeatmapCodec(input_size, heatmap_size, sigma)
    if target_type == "regression":
        return RegressionCodec(input_size)
    raise ValueError(f"unknown target type {target_type!r}")
