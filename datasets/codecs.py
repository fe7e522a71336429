"""Codecs turn joints into training targets and network outputs back into joints.

A model declares its target type; ``make_codec`` picks the codec from that, never from the
model's name. All arrays are numpy; joints are in input-crop pixels (pixel centres at integers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CoordinateConvention:
    """How a codebase places a person box in the input crop and a crop pixel in the heatmap.

    Coordinates are pixel centres at integers (cv2's convention) in the image, the crop and the
    heatmap. ``crop_center``: where the box centre lands in the crop, added to (w - 1) / 2.
    ``anchor``: input x maps to heatmap ``(x + anchor) / stride - anchor``. ``flip_shift``:
    heatmap columns by which the flip test moves the mirrored-back heatmap to the right.
    """

    name: str
    crop_center: float
    anchor: float
    flip_shift: int


CONVENTIONS = {
    # The project's own: pixel edges scale, so a crop pixel x covers heatmap [(x - 0.5) / s, (x + 0.5) / s]
    # and the mirror of an encoded mirrored pose is the direct encoding: no flip shift.
    "project": CoordinateConvention("project", crop_center=0.0, anchor=0.5, flip_shift=0),
    # Newell et al.'s PyTorch port (princeton-vl/pytorch_stacked_hourglass). Its crop maps the box
    # centre to res / 2 in pixel-edge coordinates, i.e. (res - 1) / 2 in ours; targets sit at
    # floor(x_edge / stride) and decoding adds 0.5 back ((peak + 0.5) * stride), which in pixel-centre
    # terms is exactly the project's map; its flip test mirrors with no shift. Same numbers as "project".
    "princeton-vl": CoordinateConvention("princeton-vl", crop_center=0.0, anchor=0.5, flip_shift=0),
    # HRNet and Simple Baselines (leoxiaobin/deep-high-resolution-net.pytorch,
    # microsoft/human-pose-estimation.pytorch): the box centre lands at (w / 2, h / 2), targets at
    # x / stride (rounded to whole heatmap pixels), and the flip test shifts the mirrored-back
    # heatmap one column right, because x / stride mirrors to a point 1 - 1 / stride columns off.
    "hrnet": CoordinateConvention("hrnet", crop_center=0.5, anchor=0.0, flip_shift=1),
}


def get_convention(name: str) -> CoordinateConvention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown coordinate convention {name!r}: choose one of {', '.join(CONVENTIONS)}"
        ) from None


def _frame_scale(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    return np.array([dst[0] / src[0], dst[1] / src[1]], dtype=np.float64)


class HeatmapCodec:
    """One Gaussian heatmap per joint, decoded by argmax plus a quarter-pixel step towards the
    higher neighbour (Newell et al.'s refinement, which bounds the round-trip error by 0.25 px)."""

    target_type = "heatmap"

    def __init__(
        self,
        input_size: tuple[int, int],
        heatmap_size: tuple[int, int],
        sigma: float,
        convention: str = "project",
    ) -> None:
        self.input_size = tuple(input_size)  # (width, height)
        self.heatmap_size = tuple(heatmap_size)  # (width, height)
        self.sigma = float(sigma)
        self.convention = get_convention(convention)
        self._to_heatmap = _frame_scale(self.input_size, self.heatmap_size)

    def to_heatmap_frame(self, joints: np.ndarray) -> np.ndarray:
        anchor = self.convention.anchor  # 0.5 for the project: scale pixel edges, not centres
        return (np.asarray(joints, dtype=np.float64) + anchor) * self._to_heatmap - anchor

    def to_input_frame(self, joints: np.ndarray) -> np.ndarray:
        anchor = self.convention.anchor
        return (np.asarray(joints, dtype=np.float64) + anchor) / self._to_heatmap - anchor

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> heatmaps (K, H, W) float32, weight (K,) float32.

        A labelled joint is supervised (weight 1) while any of its Gaussian's 3-sigma window lies
        on the map, as in HRNet and MMPose: a joint just outside the crop still teaches the
        network, through the visible part of its Gaussian, that the limb leaves the frame. Missing
        joints, and joints whose whole window is off the map, get weight 0 and an all-zero heatmap.
        """
        width, height = self.heatmap_size
        centers = self.to_heatmap_frame(joints)  # (K, 2)
        # the window [c - 3 sigma, c + 3 sigma] overlaps the map's extent [-0.5, size - 0.5]
        reach = 3 * self.sigma
        on_map = (
            (centers[:, 0] + reach >= -0.5)
            & (centers[:, 0] - reach < width - 0.5)
            & (centers[:, 1] + reach >= -0.5)
            & (centers[:, 1] - reach < height - 0.5)
        )
        weight = ((np.asarray(visible) > 0) & on_map & np.isfinite(centers).all(axis=1)).astype(np.float32)
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
    convention = CONVENTIONS["project"]

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
    target_type: str,
    input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
    convention: str = "project",
) -> Codec:
    """The codec for a model's declared target type ("heatmap" or "regression"); heatmap codecs
    follow ``convention`` (see ``CONVENTIONS``), regressors always the project's own."""
    if target_type == "heatmap":
        return HeatmapCodec(input_size, heatmap_size, sigma, convention)
    if target_type == "regression":
        if convention != "project":
            raise ValueError(f"coordinate convention {convention!r} applies to heatmap models only")
        return RegressionCodec(input_size)
    raise ValueError(f"unknown target type {target_type!r}")
