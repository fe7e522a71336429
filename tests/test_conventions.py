"""Coordinate conventions decode other codebases' heatmaps to the points they were trained on.

For each convention in ``datasets.codecs.CONVENTIONS`` a one-joint target is rendered exactly as
that codebase's own training code renders it, through its own box-to-crop transform and its own
Gaussian (HRNet: ``get_affine_transform`` + ``generate_target``; princeton-vl's stacked hourglass:
``get_transform`` / ``transform`` + ``GenerateHeatmap``; UDP as ViTPose's bundled MMPose 0.x runs it:
``get_warp_matrix`` + ``TopDownGenerateTarget`` with ``encoding='UDP'``; the project: ``crop_affine`` +
``HeatmapCodec.encode``). The target is then decoded through this project's pipeline
(``HeatmapCodec.decode`` with that convention, optionally the flip test through
``HeatmapCodec.mirror_back`` with the convention's ``flip_shift``, then the inverse of
``crop_affine(..., convention.crop_center)``), and the point must come back within 0.3 input-crop
pixels. Decoding with a convention whose numbers differ must miss by more than that, so the tests
tell the conventions apart. The reference code (leoxiaobin/deep-high-resolution-net.pytorch,
princeton-vl/pytorch_stacked_hourglass, ViTAE-Transformer/ViTPose's mmpose 0.x) is re-implemented here, minimally and in numpy, from its
math; nothing is imported from it.

Rounding in the reference targets (HRNet's ``int(x / stride + 0.5)``, princeton-vl's ``int``
truncations) can move a target by up to half / one heatmap pixel whatever the decoder, so every
test point is chosen so that the codebase's own target lands exactly on a whole heatmap pixel in
its own frame (see ``Case.point``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch

from datasets.coco import box_to_center_scale
from datasets.codecs import CONVENTIONS, HeatmapCodec, conventions_of, mirror_back_columns
from utils.transforms import apply_affine, crop_affine, invert_affine

TOLERANCE = 0.3  # input-crop pixels
PIXEL_STD = 200.0  # HRNet's and princeton-vl's scale unit: scale * 200 = box size in px
ONE_JOINT = np.array([0])  # flip permutation of a one-joint skeleton


# --------------------------------------------------------------------------------------------
# HRNet / Simple Baselines (leoxiaobin/deep-high-resolution-net.pytorch), rotation 0
# --------------------------------------------------------------------------------------------


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) matrix taking three ``src`` points (3, 2) onto ``dst`` (what cv2.getAffineTransform does)."""
    lhs = np.concatenate([src, np.ones((3, 1))], axis=1)  # rows (x, y, 1)
    return np.linalg.solve(lhs, dst).T


def hrnet_center_scale(box: np.ndarray, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO ``_xywh2cs``: box centre, and (w, h) grown to the aspect ratio, / 200, times 1.25."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) / PIXEL_STD * 1.25


def hrnet_affine(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """``get_affine_transform(center, scale, 0, output_size)``: three point pairs, the box centre
    onto (w / 2, h / 2), a point half the box *width* above it onto half the output width above."""
    src_w, (dst_w, dst_h) = scale[0] * PIXEL_STD, output_size

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # get_3rd_point: b + (a - b) turned 90 degrees
        d = a - b
        return b + np.array([-d[1], d[0]])

    src0, dst0 = np.asarray(center, dtype=np.float64), np.array([dst_w * 0.5, dst_h * 0.5])
    src1, dst1 = src0 + np.array([0.0, -0.5 * src_w]), dst0 + np.array([0.0, -0.5 * dst_w])
    src = np.stack([src0, src1, third(src0, src1)])
    dst = np.stack([dst0, dst1, third(dst0, dst1)])
    return _affine_from_points(src, dst)


def hrnet_target(
    joint: np.ndarray, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float
) -> np.ndarray:
    """``JointsDataset.generate_target`` for one joint in crop px -> (H, W) float32: a Gaussian at
    ``mu = int(x / stride + 0.5)``, cut to the (2 * 3 sigma + 1)^2 window around mu."""
    width, height = heatmap_size
    stride = np.array(input_size, dtype=np.float64) / np.array(heatmap_size, dtype=np.float64)
    mu_x, mu_y = (int(joint[i] / stride[i] + 0.5) for i in range(2))
    tmp_size = sigma * 3
    target = np.zeros((height, width), dtype=np.float32)
    ul = (int(mu_x - tmp_size), int(mu_y - tmp_size))
    br = (int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1))
    if ul[0] >= width or ul[1] >= height or br[0] < 0 or br[1] < 0:
        return target
    # the window's column c holds g[c - ul] of a (2 tmp_size + 1)-wide Gaussian centred at tmp_size
    half = int(2 * tmp_size + 1) // 2
    xs = np.arange(max(0, ul[0]), min(br[0], width))
    ys = np.arange(max(0, ul[1]), min(br[1], height))
    dx, dy = xs - ul[0] - half, ys - ul[1] - half
    window = np.exp(-(dx[None, :] ** 2 + dy[:, None] ** 2) / (2 * sigma**2))
    target[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = window
    return target


def hrnet_mirror(joint: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The joint in the crop mirrored by ``input.flip(3)``: x -> w - 1 - x (``fliplr_joints``)."""
    return np.array([input_size[0] - 1 - joint[0], joint[1]])


def hrnet_decode(
    heatmap: np.ndarray, center: np.ndarray, scale: np.ndarray, heatmap_size: tuple[int, int]
) -> np.ndarray:
    """HRNet's own ``get_final_preds`` for one (H, W) map: argmax, a quarter pixel towards the
    higher neighbour when 1 < px < W - 1, then ``transform_preds`` straight to the image."""
    height, width = heatmap.shape
    y, x = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    coords = np.array([x, y], dtype=np.float64)
    if 1 < x < width - 1 and 1 < y < height - 1:
        diff = np.array([heatmap[y, x + 1] - heatmap[y, x - 1], heatmap[y + 1, x] - heatmap[y - 1, x]])
        coords += np.sign(diff) * 0.25
    return apply_affine(coords[None], invert_affine(hrnet_affine(center, scale, heatmap_size)))[0]


def hrnet_flip_back(mirrored: np.ndarray) -> np.ndarray:
    """``flip_back`` (one joint: no channel swap) then SHIFT_HEATMAP: out[..., 1:] = in[..., :-1]."""
    back = mirrored[..., ::-1].copy()
    back[..., 1:] = back[..., :-1].copy()
    return back


# --------------------------------------------------------------------------------------------
# princeton-vl/pytorch_stacked_hourglass, rotation 0, no scale augmentation
# --------------------------------------------------------------------------------------------


def pvl_matrix(center: np.ndarray, scale: float, res: int) -> np.ndarray:
    """``utils.img.get_transform(center, scale, (res, res))``: x -> res * ((x - c) / (200 s) + 0.5)."""
    h = PIXEL_STD * scale
    return np.array(
        [
            [res / h, 0.0, res * (-float(center[0]) / h + 0.5)],
            [0.0, res / h, res * (-float(center[1]) / h + 0.5)],
        ]
    )


def pvl_label(
    point: np.ndarray, center: np.ndarray, scale: float, input_res: int, output_res: int
) -> np.ndarray:
    """An image point in the heatmap frame as ``Dataset.loadImage`` computes it: ``transform``
    into the input crop (truncated to int), then ``kpt_affine`` with ``mat_mask``, the map from
    the input crop (centre input_res / 2, scale input_res / 200) to the output resolution."""
    in_crop = apply_affine(point[None], pvl_matrix(center, scale, input_res))[0].astype(int)
    mat_mask = pvl_matrix(np.array([input_res / 2, input_res / 2]), input_res / PIXEL_STD, output_res)
    return apply_affine(in_crop[None].astype(np.float64), mat_mask)[0]


def pvl_target(label: np.ndarray, output_res: int) -> np.ndarray:
    """``GenerateHeatmap`` for one joint (heatmap frame) -> (res, res) float32: sigma = res / 64,
    the Gaussian's peak at the truncated ``int(x), int(y)``, cut to a (6 sigma + 3)^2 window."""
    sigma = output_res / 64
    target = np.zeros((output_res, output_res), dtype=np.float32)
    x, y = int(label[0]), int(label[1])
    if x < 0 or y < 0 or x >= output_res or y >= output_res:
        return target
    ul = (int(x - 3 * sigma - 1), int(y - 3 * sigma - 1))
    br = (int(x + 3 * sigma + 2), int(y + 3 * sigma + 2))
    peak = 3 * sigma + 1  # g's centre, in the window's own coordinates
    xs = np.arange(max(0, ul[0]), min(br[0], output_res))
    ys = np.arange(max(0, ul[1]), min(br[1], output_res))
    dx, dy = xs - ul[0] - peak, ys - ul[1] - peak
    target[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = np.exp(
        -(dx[None, :] ** 2 + dy[:, None] ** 2) / (2 * sigma**2)
    )
    return target


def pvl_mirror(label: np.ndarray, output_res: int) -> np.ndarray:
    """Training-time flip (``inp[:, ::-1]``): heatmap-frame keypoints x -> output_res - x."""
    return np.array([output_res - label[0], label[1]])


def pvl_decode(
    heatmap: np.ndarray, center: np.ndarray, scale: float, input_res: int, stride: int
) -> np.ndarray:
    """princeton-vl's ``HeatmapParser.adjust`` + ``post_process``: peak, +0.25 towards the higher
    neighbour (-0.25 on a tie), +0.5, times the stride, back through ``transform(invert=1)`` (whose
    final int truncation to whole image pixels is left out here)."""
    y, x = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    size = heatmap.shape[0]
    ax = 0.25 if heatmap[y, min(x + 1, size - 1)] > heatmap[y, max(x - 1, 0)] else -0.25
    ay = 0.25 if heatmap[min(y + 1, size - 1), x] > heatmap[max(y - 1, 0), x] else -0.25
    in_crop = (np.array([x + ax, y + ay]) + 0.5) * stride
    return apply_affine(in_crop[None], invert_affine(pvl_matrix(center, scale, input_res)))[0]


# --------------------------------------------------------------------------------------------
# UDP as ViTAE-Transformer/ViTPose's mmpose 0.x runs it (use_udp=True; MMPose 1.x's is the same)
# --------------------------------------------------------------------------------------------


def udp_warp_matrix(
    theta: float, center: np.ndarray, box_size: np.ndarray, output_size: tuple[int, int]
) -> np.ndarray:
    """``TopDownAffine(use_udp=True)``: ``get_warp_matrix(theta, c * 2, image_size - 1, s * 200)``
    (post_transforms.py), in float64. ``box_size`` is s * 200, (w, h) in px."""
    angle = np.deg2rad(theta)
    size_input = 2.0 * np.asarray(center, dtype=np.float64)
    size_dst = np.asarray(output_size, dtype=np.float64) - 1.0
    sx, sy = size_dst[0] / box_size[0], size_dst[1] / box_size[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array(
        [
            [
                cos * sx,
                -sin * sx,
                sx * (-0.5 * size_input[0] * cos + 0.5 * size_input[1] * sin + 0.5 * box_size[0]),
            ],
            [
                sin * sy,
                cos * sy,
                sy * (-0.5 * size_input[0] * sin - 0.5 * size_input[1] * cos + 0.5 * box_size[1]),
            ],
        ]
    )


def udp_target(
    joint: np.ndarray, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float
) -> np.ndarray:
    """``TopDownGenerateTarget._udp_generate_target`` (GaussianHeatmap) for one joint in crop px ->
    (H, W) float32: feat_stride = (image_size - 1) / (heatmap_size - 1); a Gaussian centred on the
    unrounded x / feat_stride, cut to the (6 sigma + 1)^2 window around int(x / feat_stride + 0.5)."""
    width, height = heatmap_size
    feat_stride = (np.array(input_size, dtype=np.float64) - 1) / (
        np.array(heatmap_size, dtype=np.float64) - 1
    )
    target = np.zeros((height, width), dtype=np.float32)
    tmp_size = sigma * 3
    mu = [int(joint[i] / feat_stride[i] + 0.5) for i in range(2)]
    ul = (int(mu[0] - tmp_size), int(mu[1] - tmp_size))
    br = (int(mu[0] + tmp_size + 1), int(mu[1] + tmp_size + 1))
    if ul[0] >= width or ul[1] >= height or br[0] < 0 or br[1] < 0:
        return target
    size = 2 * tmp_size + 1
    grid = np.arange(0, size, 1, np.float32)
    x0 = size // 2 + joint[0] / feat_stride[0] - mu[0]
    y0 = size // 2 + joint[1] / feat_stride[1] - mu[1]
    g = np.exp(-((grid[None, :] - x0) ** 2 + (grid[:, None] - y0) ** 2) / (2 * sigma**2))
    gx = max(0, -ul[0]), min(br[0], width) - ul[0]
    gy = max(0, -ul[1]), min(br[1], height) - ul[1]
    ix = max(0, ul[0]), min(br[0], width)
    iy = max(0, ul[1]), min(br[1], height)
    target[iy[0] : iy[1], ix[0] : ix[1]] = g[int(gy[0]) : int(gy[1]), int(gx[0]) : int(gx[1])]
    return target


def udp_decode(
    heatmap: np.ndarray,
    center: np.ndarray,
    box_size: np.ndarray,
    heatmap_size: tuple[int, int],
    kernel: int = 11,
) -> np.ndarray:
    """ViTPose's test decoding of one (H, W) map, ``keypoints_from_heatmaps(use_udp=True)`` for
    Gaussian heatmaps: the argmax refined by ``post_dark_udp`` (an 11x11 cv2 Gaussian blur, the log
    of the map clipped to [0.001, 50], edge padding, one Newton step), then
    ``transform_preds(use_udp=True)``: x * box / (W - 1) + center - box / 2."""
    y, x = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    blurred = cv2.GaussianBlur(np.ascontiguousarray(heatmap, dtype=np.float32), (kernel, kernel), 0)
    logged = np.pad(np.log(np.clip(blurred, 0.001, 50)), 1, mode="edge")

    def at(dx: int, dy: int) -> float:
        return float(logged[y + 1 + dy, x + 1 + dx])

    gradient = np.array([0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))])
    dxx = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dyy = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dxy = 0.5 * (at(1, 1) - at(1, 0) - at(0, 1) + 2 * at(0, 0) - at(-1, 0) - at(0, -1) + at(-1, -1))
    hessian = np.array([[dxx, dxy], [dxy, dyy]]) + np.finfo(np.float32).eps * np.eye(2)
    coords = np.array([x, y], dtype=np.float64) - np.linalg.inv(hessian) @ gradient
    scale = np.asarray(box_size, dtype=np.float64) / (np.array(heatmap_size, dtype=np.float64) - 1)
    return coords * scale + np.asarray(center) - 0.5 * np.asarray(box_size)


# --------------------------------------------------------------------------------------------
# Test cases: a box, a map size and a heatmap cell; the image point is derived from the cell
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One joint of one person box rendered by ``codebase``. ``box`` is COCO [x, y, w, h] for
    HRNet and the project, (cx, cy, MPII scale) for princeton-vl. ``cell`` is the heatmap pixel
    (a quarter pixel off it for the project's and UDP's sub-pixel targets) the codebase's target lands on."""

    codebase: str
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    box: tuple[float, ...]
    cell: tuple[float, float]

    @property
    def stride(self) -> np.ndarray:
        return np.array(self.input_size, dtype=np.float64) / np.array(self.heatmap_size)

    @property
    def center_and_box_height(self) -> tuple[np.ndarray, float]:
        """The box as this project's pipeline sees it: crop centre and box height (px)."""
        if self.codebase == "princeton-vl":
            return np.array(self.box[:2], dtype=np.float64), PIXEL_STD * self.box[2]
        return box_to_center_scale(np.array(self.box), self.input_size[0] / self.input_size[1])

    @property
    def udp_box(self) -> tuple[np.ndarray, np.ndarray]:
        """UDP's box: ``_xywh2cs`` (as HRNet's) -> centre and s * 200, (w, h) in px."""
        center, scale = hrnet_center_scale(np.array(self.box), self.input_size[0] / self.input_size[1])
        return center, scale * PIXEL_STD

    @property
    def point(self) -> np.ndarray:
        """The image point whose target, rendered by the codebase itself, sits on ``cell``.

        HRNet: the crop point ``cell * stride``, so x / stride is whole and int(x / stride + 0.5)
        does not move it. princeton-vl: the crop point in its pixel-edge frame at the middle of a
        stride cell, ``stride * (cell + 0.5)``, so ``int`` (float error included) and the second
        ``int`` after / stride both give ``cell``. UDP: the crop point ``cell * feat_stride``,
        feat_stride = (w - 1) / (W - 1). Project: ``to_input_frame(cell)``."""
        cell = np.array(self.cell, dtype=np.float64)
        if self.codebase == "hrnet":
            center, scale = hrnet_center_scale(np.array(self.box), self.input_size[0] / self.input_size[1])
            inverse = invert_affine(hrnet_affine(center, scale, self.input_size))
            return apply_affine((cell * self.stride)[None], inverse)[0]
        if self.codebase == "princeton-vl":
            center, scale = np.array(self.box[:2]), self.box[2]
            inverse = invert_affine(pvl_matrix(center, scale, self.input_size[0]))
            return apply_affine((self.stride * (cell + 0.5))[None], inverse)[0]
        if self.codebase == "udp":
            center, box_size = self.udp_box
            inverse = invert_affine(udp_warp_matrix(0.0, center, box_size, self.input_size))
            feat_stride = (np.array(self.input_size) - 1.0) / (np.array(self.heatmap_size) - 1.0)
            return apply_affine((cell * feat_stride)[None], inverse)[0]
        codec = HeatmapCodec(self.input_size, self.heatmap_size, self.sigma, "project")
        center, box_height = self.center_and_box_height
        inverse = invert_affine(crop_affine(center, box_height, self.input_size))
        return apply_affine(codec.to_input_frame(cell[None]), inverse)[0]

    def render(self, mirrored: bool = False) -> np.ndarray:
        """(H, W) target for ``point`` as the codebase's training code makes it, or for the same
        joint in the horizontally mirrored input crop."""
        if self.codebase == "hrnet":
            center, scale = hrnet_center_scale(np.array(self.box), self.input_size[0] / self.input_size[1])
            joint = apply_affine(self.point[None], hrnet_affine(center, scale, self.input_size))[0]
            if mirrored:
                joint = hrnet_mirror(joint, self.input_size)
            return hrnet_target(joint, self.input_size, self.heatmap_size, self.sigma)
        if self.codebase == "princeton-vl":
            res, out_res = self.input_size[0], self.heatmap_size[0]
            label = pvl_label(self.point, np.array(self.box[:2]), self.box[2], res, out_res)
            return pvl_target(pvl_mirror(label, out_res) if mirrored else label, out_res)
        if self.codebase == "udp":
            center, box_size = self.udp_box
            joint = apply_affine(self.point[None], udp_warp_matrix(0.0, center, box_size, self.input_size))[0]
            if mirrored:  # TopDownRandomFlip then the same crop, or input.flip(3): x -> w - 1 - x
                joint = np.array([self.input_size[0] - 1 - joint[0], joint[1]])
            return udp_target(joint, self.input_size, self.heatmap_size, self.sigma)
        codec = HeatmapCodec(self.input_size, self.heatmap_size, self.sigma, "project")
        center, box_height = self.center_and_box_height
        joint = apply_affine(self.point[None], crop_affine(center, box_height, self.input_size))[0]
        if mirrored:
            joint = np.array([self.input_size[0] - 1 - joint[0], joint[1]])
        return codec.encode(joint[None], np.ones(1))[0][0]


CASES = [
    # HRNet's COCO sizes (w x h = 192 x 256, 288 x 384: non-square crops) and its MPII 256 x 256;
    # tall boxes (height-limited), wide ones (width-limited), fractional corners
    Case("hrnet", (192, 256), (48, 64), 2.0, (100.0, 50.0, 80.0, 200.0), (24, 32)),
    Case("hrnet", (192, 256), (48, 64), 2.0, (30.5, 70.25, 150.0, 90.0), (7, 51)),
    Case("hrnet", (192, 256), (48, 64), 2.0, (412.3, 17.9, 33.3, 61.7), (40, 5)),
    Case("hrnet", (288, 384), (72, 96), 3.0, (250.0, 120.0, 101.0, 333.0), (60, 20)),
    Case("hrnet", (256, 256), (64, 64), 2.0, (5.0, 300.0, 222.0, 140.0), (13, 47)),
    # princeton-vl's only size, 256 -> 64 (sigma = 64 / 64 = 1); (cx, cy, scale) as in its h5 files
    Case("princeton-vl", (256, 256), (64, 64), 1.0, (300.0, 250.0, 1.5), (32, 32)),
    Case("princeton-vl", (256, 256), (64, 64), 1.0, (123.4, 456.7, 2.37), (10, 50)),
    Case("princeton-vl", (256, 256), (64, 64), 1.0, (640.0, 90.0, 0.8), (55, 4)),
    # UDP (ViTPose) at COCO's 256x192 and 384x288 and at 256x256, a quarter pixel off a whole one: its
    # targets are centred to the sub-pixel (a whole cell is a tie of the neighbours that float error
    # breaks either way); UDP and the project place the map's centre alike, so the cells sit away
    # from it (see UDP_WRONG_PAIRS)
    Case("udp", (192, 256), (48, 64), 2.0, (100.0, 50.0, 80.0, 200.0), (3.25, 59.75)),
    Case("udp", (192, 256), (48, 64), 2.0, (30.5, 70.25, 150.0, 90.0), (43.75, 6.25)),
    Case("udp", (288, 384), (72, 96), 3.0, (250.0, 120.0, 101.0, 333.0), (66.25, 89.75)),
    Case("udp", (256, 256), (64, 64), 2.0, (5.0, 300.0, 222.0, 140.0), (12.75, 47.25)),
    # the project's own codec, on a pixel and a quarter pixel off one
    Case("project", (192, 256), (48, 64), 2.0, (100.0, 50.0, 80.0, 200.0), (24, 32)),
    Case("project", (192, 256), (48, 64), 2.0, (30.5, 70.25, 150.0, 90.0), (7.25, 50.75)),
    Case("project", (256, 256), (64, 64), 1.0, (5.0, 300.0, 222.0, 140.0), (40.75, 9.25)),
]


def case_id(case: Case) -> str:
    return f"{case.codebase}-{case.input_size[0]}x{case.input_size[1]}-cell{case.cell[0]}_{case.cell[1]}"


def decode_error(case: Case, convention: str, flip: bool) -> float:
    """Decode ``case``'s target with this project's pipeline as ``convention`` (averaged with the
    mirrored target mapped back by ``codec.mirror_back`` when ``flip``); distance to the true point in
    input-crop pixels."""
    conv = CONVENTIONS[convention]
    codec = HeatmapCodec(case.input_size, case.heatmap_size, case.sigma, convention)
    heatmaps = case.render()[None, None]
    if flip:
        mirrored = torch.from_numpy(case.render(mirrored=True)[None, None])
        back = codec.mirror_back(mirrored, ONE_JOINT).numpy()
        heatmaps = (heatmaps + back) * 0.5
    joints, _ = codec.decode(heatmaps)
    center, box_height = case.center_and_box_height
    matrix = crop_affine(center, box_height, case.input_size, 0.0, False, conv.crop_center, conv.size_offset)
    decoded = apply_affine(joints[0], invert_affine(matrix))[0]
    return float(np.linalg.norm(decoded - case.point) * case.input_size[1] / box_height)


def _same_numbers(a: str, b: str) -> bool:
    ca, cb = CONVENTIONS[a], CONVENTIONS[b]
    return (ca.crop_center, ca.anchor, ca.flip_shift) == (cb.crop_center, cb.anchor, cb.flip_shift)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.codebase == "hrnet"], ids=case_id)
def test_hrnet_box_and_crop_are_box_to_center_scale_and_crop_affine_at_half(case: Case) -> None:
    """HRNet's center/scale is ``box_to_center_scale`` (scale * 200 = box height) and its
    ``get_affine_transform`` is ``crop_affine`` with the box centre at (w / 2, h / 2)."""
    aspect = case.input_size[0] / case.input_size[1]
    center, scale = hrnet_center_scale(np.array(case.box), aspect)
    ours_center, box_height = box_to_center_scale(np.array(case.box), aspect)
    np.testing.assert_allclose(ours_center, center, atol=1e-9)
    np.testing.assert_allclose(scale * PIXEL_STD, [box_height * aspect, box_height], rtol=1e-12)
    theirs = hrnet_affine(center, scale, case.input_size)
    np.testing.assert_allclose(
        crop_affine(center, box_height, case.input_size, 0.0, False, 0.5), theirs, atol=1e-9
    )
    assert CONVENTIONS["hrnet"].crop_center == 0.5


@pytest.mark.parametrize("case", [c for c in CASES if c.codebase == "princeton-vl"], ids=case_id)
def test_princeton_vl_label_transform_is_crop_affine_in_pixel_edge_coordinates(case: Case) -> None:
    """princeton-vl's ``get_transform`` puts the box centre at res / 2 in pixel-edge coordinates:
    it is ``crop_affine`` (centre at (res - 1) / 2 in pixel-centre coordinates) plus 0.5."""
    center, scale, res = np.array(case.box[:2]), case.box[2], case.input_size[0]
    ours = crop_affine(center, PIXEL_STD * scale, case.input_size, 0.0, False, 0.0)
    np.testing.assert_allclose(
        ours + np.array([[0, 0, 0.5], [0, 0, 0.5]]), pvl_matrix(center, scale, res), atol=1e-9
    )
    assert CONVENTIONS["princeton-vl"].crop_center == 0.0


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_target_lands_on_the_chosen_cell(case: Case) -> None:
    """The premise of the round trips: each codebase's own target peaks on ``case.cell``."""
    width = case.heatmap_size[0]
    mirrored_x = {  # where each codebase's own flip puts cell x
        "hrnet": width - case.cell[0],  # int((w - 1 - x) / stride + 0.5) with x / stride whole
        "princeton-vl": width - 1 - case.cell[0],  # int(width - (x + 0.5)): its cell's mirror
        "project": width - 1 - case.cell[0],  # the mirrored sub-pixel centre
        "udp": width - 1 - case.cell[0],  # (w - 1 - x) / feat_stride = W - 1 - x / feat_stride
    }[case.codebase]
    for mirrored, cell_x in ((False, case.cell[0]), (True, mirrored_x)):
        target = case.render(mirrored)
        y, x = np.unravel_index(int(target.argmax()), target.shape)
        assert (x, y) == (round(cell_x), round(case.cell[1])), mirrored
        if case.codebase not in ("project", "udp"):  # whole-pixel Gaussians peak at exactly 1
            assert target.max() == 1.0


@pytest.mark.parametrize("flip", [False, True], ids=["direct", "flip"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_own_convention_decodes_the_point(case: Case, flip: bool) -> None:
    assert decode_error(case, case.codebase, flip) <= TOLERANCE


WRONG_PAIRS = [
    (case, name)
    for case in CASES
    for name in conventions_of("heatmap")
    if name != case.codebase and "udp" not in (name, case.codebase)
]


def placed(case: Case, convention: str) -> np.ndarray:
    """The image point that ``convention`` decodes a peak exactly on ``case.cell`` to."""
    conv = CONVENTIONS[convention]
    codec = HeatmapCodec(case.input_size, case.heatmap_size, case.sigma, convention)
    center, box_height = case.center_and_box_height
    matrix = crop_affine(center, box_height, case.input_size, 0.0, False, conv.crop_center, conv.size_offset)
    return apply_affine(codec.to_input_frame(np.array([case.cell], dtype=np.float64)), invert_affine(matrix))[
        0
    ]


def separation(case: Case, convention: str) -> float:
    """How far apart (input px) ``convention`` and the case's own place ``case.cell``."""
    _, box_height = case.center_and_box_height
    gap = placed(case, convention) - placed(case, case.codebase)
    return float(np.linalg.norm(gap) * case.input_size[1] / box_height)


# UDP and the project's convention place the heatmap's centre at the same image point (both put the box
# centre at (w - 1) / 2) and part towards the edges, by up to half a heatmap pixel; UDP and HRNet's meet
# at the top-left corner (both map u = 0 to the box's edge). So UDP is told from another convention
# where the two place the cell more than twice the tolerance apart (those must miss);
# test_udp_agrees_with_the_project_at_the_centre_only tests the geometry itself.
UDP_WRONG_PAIRS = [
    (case, name)
    for case in CASES
    for name in conventions_of("heatmap")
    if name != case.codebase and "udp" in (name, case.codebase) and separation(case, name) > 2 * TOLERANCE
]


@pytest.mark.parametrize("flip", [False, True], ids=["direct", "flip"])
@pytest.mark.parametrize(
    ("case", "convention"), WRONG_PAIRS, ids=[f"{case_id(c)}-as-{name}" for c, name in WRONG_PAIRS]
)
def test_a_wrong_convention_misses_the_point(case: Case, convention: str, flip: bool) -> None:
    """Decoding as another codebase misses by more than the tolerance, unless the two
    conventions have the same numbers (princeton-vl's are the project's: that is their claim)."""
    error = decode_error(case, convention, flip)
    if _same_numbers(convention, case.codebase):
        assert error <= TOLERANCE
    else:
        assert error > TOLERANCE


@pytest.mark.parametrize("flip", [False, True], ids=["direct", "flip"])
@pytest.mark.parametrize(
    ("case", "convention"), UDP_WRONG_PAIRS, ids=[f"{case_id(c)}-as-{name}" for c, name in UDP_WRONG_PAIRS]
)
def test_udp_and_a_wrong_convention_miss_each_others_points(case: Case, convention: str, flip: bool) -> None:
    assert decode_error(case, convention, flip) > TOLERANCE


def test_udp_pairs_test_every_udp_case_against_every_other_convention() -> None:
    for case in (c for c in CASES if c.codebase == "udp"):
        assert {name for c, name in UDP_WRONG_PAIRS if c is case} == set(conventions_of("heatmap")) - {"udp"}
    assert {c.codebase for c, name in UDP_WRONG_PAIRS if name == "udp"} == {
        "hrnet",
        "princeton-vl",
        "project",
    }


def test_udp_agrees_with_the_project_at_the_centre_only() -> None:
    """Where UDP and the project's convention put heatmap column u of a 48-wide map for a 192-wide
    crop: at the same x for the centre u = (W - 1) / 2, (u - (W - 1) / 2) w / (W (W - 1)) apart
    elsewhere (about half a heatmap pixel, 2 input px, at the edges)."""
    width, map_width = 192, 48
    u = np.array([[0.0, 0.0], [(map_width - 1) / 2, 0.0], [map_width - 1.0, 0.0]])
    xs = {}
    for name in ("project", "udp"):
        conv = CONVENTIONS[name]
        codec = HeatmapCodec((width, width), (map_width, map_width), 2.0, name)
        # a box as large as the crop: image px are crop px up to the zoom
        matrix = crop_affine(
            np.zeros(2), width, (width, width), 0.0, False, conv.crop_center, conv.size_offset
        )
        xs[name] = apply_affine(codec.to_input_frame(u), invert_affine(matrix))[:, 0]
    expected = (u[:, 0] - (map_width - 1) / 2) * width / (map_width * (map_width - 1))
    np.testing.assert_allclose(xs["udp"] - xs["project"], expected, atol=1e-9)
    assert expected[1] == 0 and abs(expected[0]) == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("rotation", [0.0, 30.0, -17.5])
@pytest.mark.parametrize("case", [c for c in CASES if c.codebase == "udp"], ids=case_id)
def test_udp_crop_is_get_warp_matrix(case: Case, rotation: float) -> None:
    """``crop_affine`` with size_offset 1 is UDP's ``get_warp_matrix``: the box's sides on the crop's
    first and last pixel centres, each axis zoomed by (size - 1) / box size. Their angle turns the
    other way (a random rotation drawn symmetrically either way, so it changes no training)."""
    center, box_height = case.center_and_box_height
    _, box_size = case.udp_box
    np.testing.assert_allclose(box_size[1], box_height, rtol=1e-12)
    conv = CONVENTIONS["udp"]
    ours = crop_affine(
        center, box_height, case.input_size, rotation, False, conv.crop_center, conv.size_offset
    )
    np.testing.assert_allclose(ours, udp_warp_matrix(-rotation, center, box_size, case.input_size), atol=1e-9)
    if rotation == 0:
        corners = np.array([center - box_size / 2, center + box_size / 2])
        np.testing.assert_allclose(
            apply_affine(corners, ours), [[0, 0], np.array(case.input_size) - 1.0], atol=1e-9
        )


def test_udp_targets_are_the_codecs_in_their_window() -> None:
    """The codec's UDP target is ViTPose's Gaussian, centred at x (W - 1) / (w - 1), cut as theirs
    to a 6 sigma + 1 window (tests/test_authors_targets.py checks every rule on random poses)."""
    rng = np.random.default_rng(3)
    codec = HeatmapCodec((192, 256), (48, 64), 2.0, "udp")
    for joint in rng.uniform([10, 10], [180, 245], size=(20, 2)):
        theirs = udp_target(joint, (192, 256), (48, 64), 2.0)
        ours, weight = codec.encode(joint[None], np.ones(1))
        window = theirs > 0
        assert weight[0] == 1 and window.sum() >= 49
        np.testing.assert_allclose(ours[0][window], theirs[window], atol=2e-6)
        assert not ours[0][~window].any()


def test_udp_flip_test_is_exact_on_a_mirrored_pose() -> None:
    """A pose and its mirror (x -> w - 1 - x, left and right swapped) rendered by ViTPose's UDP target
    code: the mirrored heatmaps mapped back with no shift (UDP's flip_shift, their
    shift_heatmap=False) are the direct ones, so the flip test decodes the pose unchanged."""
    rng = np.random.default_rng(5)
    input_size, heatmap_size = (192, 256), (48, 64)
    permutation = np.array([0, 2, 1, 4, 3])  # a nose and two left/right pairs
    joints = rng.uniform([20, 20], [170, 235], size=(5, 2))
    mirrored = np.stack([input_size[0] - 1 - joints[:, 0], joints[:, 1]], axis=1)[permutation]
    direct = np.stack([udp_target(j, input_size, heatmap_size, 2.0) for j in joints])[None]
    flipped = np.stack([udp_target(j, input_size, heatmap_size, 2.0) for j in mirrored])[None]
    assert CONVENTIONS["udp"].flip_shift == 0
    back = HeatmapCodec(input_size, heatmap_size, 2.0, "udp").mirror_back(
        torch.from_numpy(flipped), permutation
    )
    np.testing.assert_allclose(back.numpy(), direct, atol=1e-6)
    back = back.numpy()
    shifted = mirror_back_columns(torch.from_numpy(flipped), permutation, 1).numpy()
    assert np.abs(shifted - direct).max() > 0.1  # HRNet's shift would move every joint a column
    for post_process in ("quarter", "dark"):
        codec = HeatmapCodec(input_size, heatmap_size, 2.0, "udp", post_process)
        alone, _ = codec.decode(direct)
        averaged, _ = codec.decode((direct + back) * 0.5)
        np.testing.assert_allclose(averaged, alone, atol=1e-5)
        bound = 0.05 if post_process == "dark" else 0.25 * 191 / 47 * 2**0.5
        assert np.linalg.norm(alone[0] - joints, axis=1).max() < bound, post_process


def gaussian_blobs(peaks, heatmap_size: tuple[int, int], sigma: float) -> list[np.ndarray]:
    """One (H, W) float32 Gaussian of ``sigma`` per (x, y) in ``peaks``, centred there (heatmap px)."""
    ys, xs = np.mgrid[0 : heatmap_size[1], 0 : heatmap_size[0]]
    return [
        np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2)).astype(np.float32) for px, py in peaks
    ]


@pytest.mark.parametrize("flip", [False, True], ids=["direct", "flip"])
def test_udp_decode_matches_vitposes_decoder_on_sub_pixel_blobs(flip: bool) -> None:
    """On Gaussians at random sub-pixel places (away from the border), ViTPose's own decoding
    (post_dark_udp, transform_preds with use_udp; flip_back without a shift) and this project's
    ("dark" with the udp convention, the inverse of crop_affine; mirror_back with flip_shift 0)
    give the same image point. Their DARK blurs with cv2's 11x11 kernel and steps from the raw
    argmax, ours smooths to 3 sigma and steps from the smoothed one: on clean Gaussians both land
    on the peak, to well under a hundredth of a heatmap pixel."""
    rng = np.random.default_rng(11)
    input_size, heatmap_size, sigma = (192, 256), (48, 64), 2.0
    box = np.array([40.0, 60.0, 90.0, 170.0])
    case = Case("udp", input_size, heatmap_size, sigma, tuple(box), (0, 0))
    center, box_height = case.center_and_box_height
    _, box_size = case.udp_box
    conv = CONVENTIONS["udp"]
    codec = HeatmapCodec(input_size, heatmap_size, sigma, "udp", "dark")
    matrix = crop_affine(center, box_height, input_size, 0.0, False, conv.crop_center, conv.size_offset)
    worst = 0.0
    for _ in range(30):
        peak = rng.uniform(6, np.array(heatmap_size) - 7)
        # the mirrored output: the peak's mirror (W - 1 - x), a little off as a network's would be
        mirror = np.array([heatmap_size[0] - 1 - peak[0], peak[1]]) + rng.uniform(-0.3, 0.3, size=2)
        peaks = (peak, mirror)
        blobs = gaussian_blobs(peaks, heatmap_size, sigma)
        if flip:
            theirs_map = (blobs[0] + blobs[1][..., ::-1]) * 0.5
            back = codec.mirror_back(torch.from_numpy(blobs[1][None, None]), ONE_JOINT)
            ours_map = (blobs[0][None, None] + back.numpy()) * 0.5
            np.testing.assert_array_equal(ours_map[0, 0], theirs_map)
        else:
            theirs_map, ours_map = blobs[0], blobs[0][None, None]
        theirs = udp_decode(theirs_map, center, box_size, heatmap_size)
        joints, _ = codec.decode(ours_map)
        ours = apply_affine(joints[0], invert_affine(matrix))[0]
        worst = max(worst, float(np.abs(ours - theirs).max() * input_size[1] / box_height))
    assert worst < 0.02  # input px


def test_princeton_vl_numbers_are_the_projects() -> None:
    """Derived independently above: princeton-vl's label frame is the project's, so the two
    conventions cannot (and need not) be told apart by decoding."""
    assert _same_numbers("princeton-vl", "project")
    assert not _same_numbers("hrnet", "project")


@pytest.mark.parametrize("flip", [False, True], ids=["direct", "flip"])
@pytest.mark.parametrize("codebase", ["hrnet", "princeton-vl"])
def test_decode_matches_the_codebases_own_decoder_on_sub_pixel_blobs(codebase: str, flip: bool) -> None:
    """Beyond exact targets: on Gaussians at random sub-pixel places (no ties, away from the
    border), the project's decode with the codebase's convention gives the codebase's own image
    point (HRNet: get_final_preds, flip_back + SHIFT_HEATMAP; princeton-vl: adjust + post_process,
    flip test unshifted)."""
    rng = np.random.default_rng(7)
    if codebase == "hrnet":
        input_size, heatmap_size, sigma = (192, 256), (48, 64), 2.0
        box = np.array([40.0, 60.0, 90.0, 170.0])
        center, scale = hrnet_center_scale(box, input_size[0] / input_size[1])
        box_height = scale[1] * PIXEL_STD
    else:
        input_size, heatmap_size, sigma = (256, 256), (64, 64), 1.0
        center, scale = np.array([210.5, 333.3]), 1.9
        box_height = scale * PIXEL_STD
    conv = CONVENTIONS[codebase]
    codec = HeatmapCodec(input_size, heatmap_size, sigma, codebase)
    matrix = crop_affine(center, box_height, input_size, 0.0, False, conv.crop_center)
    for _ in range(50):
        peaks = rng.uniform(3, np.array(heatmap_size) - 4, size=(2, 2))  # direct, mirrored
        blobs = gaussian_blobs(peaks, heatmap_size, sigma)
        if flip:
            if codebase == "hrnet":
                theirs_map = (blobs[0] + hrnet_flip_back(blobs[1])) * 0.5
            else:
                theirs_map = (blobs[0] + blobs[1][..., ::-1]) * 0.5
            back = codec.mirror_back(torch.from_numpy(blobs[1][None, None]), ONE_JOINT)
            ours_map = (blobs[0][None, None] + back.numpy()) * 0.5
            np.testing.assert_array_equal(ours_map[0, 0], theirs_map)
        else:
            theirs_map, ours_map = blobs[0], blobs[0][None, None]
        if codebase == "hrnet":
            theirs = hrnet_decode(theirs_map, center, scale, heatmap_size)
        else:
            theirs = pvl_decode(theirs_map, center, scale, input_size[0], input_size[0] // heatmap_size[0])
        joints, _ = codec.decode(ours_map)
        ours = apply_affine(joints[0], invert_affine(matrix))[0]
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
