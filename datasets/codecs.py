"""Codecs turn joints into training targets and network outputs back into joints.

A model declares its target type; ``make_codec`` picks the codec from that, never from the
model's name. Arrays are numpy; joints are in input-crop pixels (pixel centres at integers). The
quarter rule and the changes of frame are written once, in torch, so that they also decode a
batch where it is (``decode_tensor``, the running training PCK on the device) and numpy goes
through the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import torch

from utils.registry import Registry, UnknownNameError
from utils.transforms import crop_affine

if TYPE_CHECKING:
    from datasets.skeletons import PartHierarchy


# context around a person box in a crop: the box grows by this in both sides (Simple Baselines / HRNet)
BOX_PADDING = 1.25


@dataclass(frozen=True)
class CoordinateConvention:
    """How a codebase places a person box in the input crop and a crop pixel in the heatmap.

    Coordinates are pixel centres at integers (cv2's convention) in the image, the crop and the
    heatmap. ``crop_center``: where the box centre lands in the crop, added to (w - 1) / 2.
    ``anchor``: input x maps to heatmap ``(x + anchor) / stride - anchor``. ``flip_shift``:
    heatmap columns by which the flip test moves the mirrored-back heatmap to the right.
    ``size_offset``: what a side of n pixels measures in the scalings, n - size_offset: 0 measures
    across the pixels (edge to edge); 1 from the first pixel centre to the last (UDP), so the box
    spans the crop's pixel centres 0 to w - 1 (zoom (w - 1) / box width on x, (h - 1) / box height
    on y) and input x maps to heatmap x (W - 1) / (w - 1).
    """

    name: str
    crop_center: float
    anchor: float
    flip_shift: int
    size_offset: float = 0.0

    def crop(
        self,
        center: np.ndarray,
        box_height: float,
        input_size: tuple[int, int],
        rotation: float = 0.0,
        flip: bool = False,
    ) -> np.ndarray:
        """The (2, 3) image -> crop matrix (utils.transforms.crop_affine) placed as this convention
        places the box: what training, -predict and the start pose of IEF all crop with."""
        return crop_affine(center, box_height, input_size, rotation, flip, self.crop_center, self.size_offset)


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
    # MMPose's top-down SimCC models (RTMPose): HRNet's crop (the box centre at (w / 2, h / 2)), input
    # x at bin x * split_ratio (``SimCCLabel``, decoded as argmax / split_ratio), and a flip test that
    # mirrors the x vectors without a shift (``flip_vectors``). That mirror is split_ratio - 1 bins off
    # (x * r mirrors to W r - r - b, the reversed vector to W r - 1 - b); kept, since it is what the
    # authors' figures were measured with.
    "mmpose": CoordinateConvention("mmpose", crop_center=0.5, anchor=0.0, flip_shift=0),
    # UDP (Huang et al., CVPR 2020), as ViTPose's configs use it (use_udp=True; MMPose 0.x and 1.x):
    # get_warp_matrix maps the box [c - s / 2, c + s / 2] onto the crop's pixel centres [0, w - 1],
    # so the centre lands at (w - 1) / 2 and each axis zooms by (size - 1) / box size; targets sit at
    # x / feat_stride with feat_stride = (w - 1) / (W - 1) (not rounded), transform_preds maps back
    # with the same scale; x -> w - 1 - x mirrors to u -> W - 1 - u exactly, so no flip shift
    # (their test config: shift_heatmap=False).
    "udp": CoordinateConvention("udp", crop_center=0.0, anchor=0.0, flip_shift=0, size_offset=1.0),
}


# The conventions whose heatmaps are encoded as their authors' code encodes them: rounded centre,
# a 6 sigma + 1 window and its supervision band (HeatmapCodec._authors_window).
AUTHORS_WINDOW = ("hrnet", "udp")


def get_convention(name: str, target_type: str | None = None) -> CoordinateConvention:
    """Convention ``name``; with ``target_type``, one that applies to that target type."""
    if name not in CONVENTIONS:
        raise ValueError(f"unknown coordinate convention {name!r}: choose one of {', '.join(CONVENTIONS)}")
    allowed = conventions_of(target_type) if target_type is not None else tuple(CONVENTIONS)
    if name not in allowed:
        raise ValueError(
            f"coordinate convention {name!r} does not apply to {target_type} models: choose one of "
            f"{', '.join(allowed)}"
        )
    return CONVENTIONS[name]


def mirror_back_columns(output: torch.Tensor, flip_permutation: np.ndarray, shift: int = 0) -> torch.Tensor:
    """output (N, K, ..., W) for a mirrored input -> the original input's frame: the left/right
    channels swapped, the last axis reversed, then moved ``shift`` columns right keeping the first
    column (HRNet's flip test; 0 for an exact mirror)."""
    swapped = output[:, torch.as_tensor(flip_permutation, device=output.device)]
    mirrored = swapped.flip(-1)
    if shift > 0:
        mirrored = torch.cat([mirrored[..., :shift], mirrored[..., :-shift]], dim=-1)
    return mirrored


@dataclass(frozen=True)
class CodecRequest:
    """What the options say about targets; each target type's codec takes the fields it needs."""

    input_size: tuple[int, int]  # (width, height)
    heatmap_size: tuple[int, int]  # (width, height)
    sigma: float  # heatmap Gaussian, heatmap px
    convention: str = "project"
    post_process: str = "quarter"
    split_ratio: float = 2.0  # SimCC bins per input px
    simcc_sigma: tuple[float, float] = (4.9, 5.66)  # SimCC label sigma, bins (x, y)
    hierarchy: PartHierarchy | None = None  # the joint set's levels of parts (DLCM)


class Codec(ABC):
    """A target type: how joints become a model's training target, how its outputs become joints
    again, which loss trains it, and how it reads to someone without this code (-export's notes).

    A target type is one subclass registered with ``@register_target_type(name, conventions=...)``;
    ``make_codec``, ``losses.make_loss``, the export's notes and the output-shape check ask the
    codec, never a name. What has no safe default is abstract; a codec whose network output is one
    tensor of the joints alone keeps the defaults of ``split_outputs``, ``join_outputs``,
    ``joint_target`` and ``target_shape``."""

    target_type: ClassVar[str]  # the name the registry gives it
    # the coordinate conventions it decodes in; the first the project's
    conventions: ClassVar[tuple[str, ...]]
    heatmap_decoded: ClassVar[bool] = False  # a heatmap per joint last: --postProcess decodes it
    needs_hierarchy: ClassVar[bool] = False  # its targets are the joint set's levels of parts
    # what to change when a model's last stage is not the target's shape (build.check_output_shape)
    shape_hint: ClassVar[str] = "set outputRes to the model's output height"
    output_names: tuple[str, ...] = ("output",)
    input_size: tuple[int, int]
    convention: CoordinateConvention

    @classmethod
    @abstractmethod
    def build(cls, request: CodecRequest) -> Codec:
        """The codec at the run's sizes."""

    @abstractmethod
    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> one sample's target, weight (K,) float32."""

    @abstractmethod
    def decode(self, outputs: Array) -> tuple[Array, Array]:
        """A batch of last-stage outputs -> joints (N, K, 2) input px, scores (N, K)."""

    @abstractmethod
    def decode_tensor(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode`` on the device (the running training PCK decodes outputs and targets so)."""

    @abstractmethod
    def output_shape(self, num_joints: int) -> tuple[int, ...]:
        """A stage output's shape without the batch."""

    @abstractmethod
    def mirror_back(self, outputs: torch.Tensor, flip_permutation: np.ndarray) -> torch.Tensor:
        """Outputs for a mirrored input -> the original's (the flip test)."""

    @abstractmethod
    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """Decoded scores as -predict writes them per joint."""

    @abstractmethod
    def describe_decoding(self) -> dict[str, Any]:
        """The decoding in words and numbers, with a "flip_test" entry (-export's notes)."""

    @abstractmethod
    def loss(self) -> torch.nn.Module:
        """The loss that trains a model on these targets, over every stage output."""

    def describe_crop(self) -> str:
        """How a person box becomes the input crop, in words (-export's notes), by the codec's
        coordinate convention."""
        crop_center, offset = self.convention.crop_center, self.convention.size_offset
        span = "the box height maps to the input height"
        if offset:  # UDP: the box's sides onto the first and last pixel centres
            span = (
                f"the box's sides map to the input's first and last pixel centres (size_offset {offset:g}: "
                f"x zooms by (W - {offset:g}) / box width, y by (H - {offset:g}) / box height)"
            )
        return (
            f"{self._box_growth()}; {span}. The box centre lands at ((W - 1) / 2 + "
            f"crop_center, (H - 1) / 2 + crop_center) in the input crop (crop_center "
            f"{crop_center}). Map joints back to the image with the inverse of that affine."
        )

    def _box_growth(self) -> str:
        """The first words of ``describe_crop``: the box's growth to the input's aspect ratio."""
        width, height = self.input_size
        return (
            f"A person box [x, y, w, h] keeps its centre, grows in one dimension to the input aspect "
            f"ratio (width / height = {width / height:g}), then both sides grow {BOX_PADDING}x"
        )

    def split_outputs(self, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A stage output -> the exported graph's outputs."""
        return (output,)

    def join_outputs(self, outputs: list[np.ndarray]) -> np.ndarray:
        """The exported graph's outputs (ONNX Runtime's list) -> one stage output."""
        return outputs[0]

    def joint_target(self, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's target and weight cut to the joints the last stage predicts (what ``decode``
        reads: the running training PCK compares them): all of them, for a codec whose target is
        the joints alone."""
        return target, weight

    def target_shape(self, num_joints: int) -> tuple[int, ...]:
        """A sample's target shape (without the batch): the last stage's, for a codec whose target
        is the joints alone."""
        return self.output_shape(num_joints)


class UnknownTargetTypeError(UnknownNameError, ValueError):
    """A target type no codec is registered as."""


TARGET_TYPES: Registry[type[Codec]] = Registry("target type", UnknownTargetTypeError, sort=False)


def register_target_type(
    name: str, *, conventions: tuple[str, ...], heatmap_decoded: bool = False
) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator registering a codec as target type ``name``, decoding in ``conventions``
    (names of ``CONVENTIONS``; the first is the project's own)."""
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if not conventions or unknown:
        raise ValueError(
            f"target type {name!r}: conventions must be some of {', '.join(CONVENTIONS)}, got {conventions}"
        )

    def register(codec: type[Codec]) -> type[Codec]:
        codec.target_type = name
        codec.conventions = tuple(conventions)
        codec.heatmap_decoded = heatmap_decoded
        TARGET_TYPES.add(name, codec)
        return codec

    return register


def target_types() -> list[str]:
    """The registered target types' names, in registration order."""
    return TARGET_TYPES.names()


def conventions_of(target_type: str) -> tuple[str, ...]:
    """The coordinate conventions ``target_type`` decodes in."""
    return TARGET_TYPES.get(target_type).conventions


def decodes_heatmaps(target_type: str) -> bool:
    """Whether ``target_type``'s last stage is a heatmap per joint (decoded by --postProcess,
    sized by an output stride)."""
    return TARGET_TYPES.get(target_type).heatmap_decoded


# How a heatmap becomes a sub-pixel position (``--postProcess``): see quarter_peaks and dark_peaks.
POST_PROCESSES = ("quarter", "dark")
# DARK's log needs positive values: maps are floored here (about exp(-23), far below any peak a
# network outputs), so background, zero and negative values all become one flat level.
LOG_FLOOR = 1e-10
# Second differences of the log smaller than this are float32 rounding on a plateau, not a peak:
# a smoothed Gaussian of sigma s curves by -1 / (4 s^2), -0.0025 even at s = 10 px.
MIN_CURVATURE = 1e-5
# Within this many sigmas of the map's edge, DARK steps on the map as given (see dark_peaks).
DARK_EDGE_REACH = 1.5


# The quarter rule and the changes of frame run on numpy arrays and on tensors alike (where a
# tensor is, on its device), written once with the operations both share; these name the few
# that differ.
Array = np.ndarray | torch.Tensor


def _is_tensor(values: Array) -> bool:
    return isinstance(values, torch.Tensor)


def _float64(values: Array) -> Array:
    return values.double() if _is_tensor(values) else np.asarray(values, dtype=np.float64)


def _take(flat: Array, index: Array) -> Array:
    """flat (N, K, P), index (N, K, 1) -> flat[n, k, index[n, k]] (N, K, 1)."""
    return flat.gather(2, index) if _is_tensor(flat) else np.take_along_axis(flat, index, axis=2)


def _rescale(points: Array, anchor: float, scale: tuple[float, float], inverse: bool = False) -> Array:
    """points (..., 2) -> (p + anchor) * scale - anchor per axis, or (p + anchor) / scale - anchor
    with ``inverse``, float64: every change of frame of the codecs. The scale stays Python
    numbers, so a tensor's change of frame copies no constant to its device."""
    values = _float64(points)
    axes = [
        (values[..., axis] + anchor) / factor - anchor
        if inverse
        else (values[..., axis] + anchor) * factor - anchor
        for axis, factor in enumerate(scale)
    ]
    return (torch if _is_tensor(values) else np).stack(axes, -1)


def argmax_peaks(heatmaps: Array) -> tuple[Array, Array, Array]:
    """heatmaps (N, K, H, W) -> column x (N, K), row y (N, K) of each map's maximum (the first
    one on a tie), and its value (N, K)."""
    n, k, height, width = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    peak = flat.argmax(2)  # (N, K)
    scores = _take(flat, peak[..., None])[..., 0]
    return peak % width, peak // width, scores


def _value_at(maps: Array, x: Array, y: Array) -> Array:
    """maps (N, K, H, W), x and y (N, K) -> maps[n, k, y, x] (N, K), indices clipped to the map."""
    n, k, height, width = maps.shape
    x, y = x.clip(0, width - 1), y.clip(0, height - 1)
    return _take(maps.reshape(n, k, -1), (y * width + x)[..., None])[..., 0]


def quarter_step(heatmaps: Array) -> tuple[Array, Array]:
    """The quarter rule: heatmaps (N, K, H, W) -> joints (N, K, 2) heatmap px, scores (N, K) peak
    values, float64; numpy for numpy, tensors on the heatmaps' device for a tensor.

    The argmax moved a quarter pixel towards the higher neighbour on each axis (Newell et al.'s
    refinement, which bounds the round-trip error of a target by 0.25 px); no step at the map's
    border or on a tie."""
    # The maps keep their own float type: widening every pixel to float64 cost 10x the rest, and
    # argmax and the neighbours' comparison come out the same (widening is exact and monotonic,
    # and the difference of two distinct floats is never zero).
    floating = (
        heatmaps.is_floating_point() if _is_tensor(heatmaps) else np.issubdtype(heatmaps.dtype, np.floating)
    )
    if not floating:
        heatmaps = _float64(heatmaps)
    xp = torch if _is_tensor(heatmaps) else np
    _, _, height, width = heatmaps.shape
    x, y, scores = argmax_peaks(heatmaps)
    right, left = _value_at(heatmaps, x + 1, y), _value_at(heatmaps, x - 1, y)
    below, above = _value_at(heatmaps, x, y + 1), _value_at(heatmaps, x, y - 1)
    dx = _float64(xp.where((x > 0) & (x < width - 1), xp.sign(right - left), 0.0))
    dy = _float64(xp.where((y > 0) & (y < height - 1), xp.sign(below - above), 0.0))
    return xp.stack([x + 0.25 * dx, y + 0.25 * dy], -1), _float64(scores)


def quarter_peaks(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps (N, K, H, W) -> joints (N, K, 2) heatmap px, scores (N, K) peak values, by the
    quarter rule (:func:`quarter_step`): the numpy decoding of ``post_process`` "quarter"."""
    return quarter_step(np.asarray(heatmaps))


def modulate(heatmaps: np.ndarray, sigma: float) -> np.ndarray:
    """DARK's distribution modulation: heatmaps (N, K, H, W) smoothed with a Gaussian of the
    training ``sigma`` (truncated at 3 sigma) and rescaled so each map keeps its maximum;
    float32 (N, K, H, W).

    Smoothing turns a network's ragged, multi-peaked output back into the near-Gaussian shape
    the Taylor step assumes, while a clean Gaussian stays a Gaussian (of sigma * sqrt(2)).
    Pixels beyond the map count as zero, as in the paper's code (no padding is right for a peak
    near the edge; see dark_peaks). All maps go through one OpenCV separable filter, stacked into
    one tall image with 3 sigma of zero rows between them so none leaks into the next: 2 to 4
    times faster than two matrix products with numpy, and float32 loses nothing the step can
    see (its relative error of 1e-7 moves a step by about 1e-6 px)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, height, width = heatmaps.shape
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).astype(np.float32)
    stacked = np.zeros((n * k, height + 2 * radius, width), dtype=np.float32)
    stacked[:, radius : radius + height] = heatmaps.reshape(n * k, height, width)
    tall = cv2.sepFilter2D(stacked.reshape(-1, width), -1, kernel, kernel, borderType=cv2.BORDER_CONSTANT)
    smoothed = tall.reshape(n, k, height + 2 * radius, width)[:, :, radius : radius + height]
    before = heatmaps.reshape(n, k, -1).max(axis=2)  # (N, K)
    after = smoothed.reshape(n, k, -1).max(axis=2)
    # the rescale moves the log by a constant only, but keeps LOG_FLOOR at the network's scale
    scale = np.divide(before, after, out=np.ones_like(before), where=(after > 0) & (before > 0))
    return smoothed * scale[..., None, None]


def taylor_step(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """maps (N, K, H, W), expansion points x, y (N, K) -> the top (N, K, 2) of the quadratic
    that the log of each map's 3x3 neighbourhood of (x, y) defines: offset = -H^-1 g, the
    gradient g and Hessian H by central differences.

    Fallbacks, per joint: on the map's border (no neighbour on one side) or where the 2-D
    Hessian is not negative definite (flat, singular, a saddle), each axis that has both
    neighbours and a second difference below -``MIN_CURVATURE`` takes its 1-D step -g / h; an
    axis without keeps the argmax. A step longer than one pixel means the quadratic does not
    describe the map there: that axis keeps the argmax too. So a map with nothing above
    ``LOG_FLOOR``, or with non-finite values, keeps its argmax; the step never gives a NaN."""
    _, _, height, width = maps.shape

    def log_at(dx: int, dy: int) -> np.ndarray:
        values = _value_at(maps, x + dx, y + dy).astype(np.float64)  # (N, K)
        return np.log(np.maximum(values, LOG_FLOOR))

    center = log_at(0, 0)
    gx, gy = (log_at(1, 0) - log_at(-1, 0)) / 2, (log_at(0, 1) - log_at(0, -1)) / 2
    hxx = log_at(1, 0) - 2 * center + log_at(-1, 0)
    hyy = log_at(0, 1) - 2 * center + log_at(0, -1)
    hxy = (log_at(1, 1) - log_at(1, -1) - log_at(-1, 1) + log_at(-1, -1)) / 4
    # an axis curves down where its second difference is below -MIN_CURVATURE
    bent_x = (x > 0) & (x < width - 1) & (hxx < -MIN_CURVATURE)
    bent_y = (y > 0) & (y < height - 1) & (hyy < -MIN_CURVATURE)
    det = hxx * hyy - hxy**2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        full = bent_x & bent_y & (det > MIN_CURVATURE**2)  # a maximum: H negative definite
        step_x = np.where(full, -(hyy * gx - hxy * gy) / det, np.where(bent_x, -gx / hxx, 0.0))
        step_y = np.where(full, -(hxx * gy - hxy * gx) / det, np.where(bent_y, -gy / hyy, 0.0))
    step_x = np.where(np.abs(step_x) <= 1, step_x, 0.0)  # NaN fails the test too
    step_y = np.where(np.abs(step_y) <= 1, step_y, 0.0)
    return np.stack([x + step_x, y + step_y], axis=-1)


def dark_peaks(heatmaps: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps (N, K, H, W) -> joints (N, K, 2) heatmap px, scores (N, K) peak values of the
    maps as given, by DARK (Zhang et al., "Distribution-Aware Coordinate Representation for
    Human Pose Estimation", CVPR 2020).

    The map is smoothed with the training Gaussian (``modulate``); the log of a Gaussian is a
    quadratic, whose top one Newton step from the smoothed map's maximum reaches
    (``taylor_step``). Two choices differ from the paper's code, both measured by
    benchmarks/decoding_accuracy.py: the step starts from the smoothed map's maximum, not the raw
    one's (on a noisy map the raw maximum is often a pixel off, where the fit is worse); and
    within ``DARK_EDGE_REACH`` sigmas of the edge the step is taken on the raw map instead,
    because smoothing treats the pixels beyond the edge as zero and so pulls a peak near the edge
    inwards (at sigma 2 by 0.8 px on average for clean peaks less than a pixel from the edge,
    where the quarter rule errs by 0.25 at most)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)  # a network's precision; the step is float64
    _, _, height, width = heatmaps.shape
    raw_x, raw_y, scores = argmax_peaks(heatmaps)
    smoothed = modulate(heatmaps, sigma)
    x, y, _ = argmax_peaks(smoothed)
    reach = DARK_EDGE_REACH * sigma
    near_edge = (np.minimum(x, width - 1 - x) < reach) | (np.minimum(y, height - 1 - y) < reach)
    joints = np.where(near_edge[..., None], taylor_step(heatmaps, raw_x, raw_y), taylor_step(smoothed, x, y))
    return joints, scores.astype(np.float64)


@register_target_type(
    "heatmap", conventions=("project", "princeton-vl", "hrnet", "udp"), heatmap_decoded=True
)
class HeatmapCodec(Codec):
    """One Gaussian heatmap per joint. Decoding follows ``post_process``: "quarter" (argmax plus
    a quarter-pixel step towards the higher neighbour, ``quarter_peaks``) or "dark" (Gaussian
    smoothing and a Taylor step on the log, ``dark_peaks``); both give heatmap px, which
    ``to_input_frame`` maps to the input crop by the coordinate convention."""

    output_names = ("heatmaps",)

    def __init__(
        self,
        input_size: tuple[int, int],
        heatmap_size: tuple[int, int],
        sigma: float,
        convention: str = "project",
        post_process: str = "quarter",
    ) -> None:
        if post_process not in POST_PROCESSES:
            raise ValueError(
                f"unknown post-process {post_process!r}: choose one of {', '.join(POST_PROCESSES)}"
            )
        self.input_size = tuple(input_size)  # (width, height)
        self.heatmap_size = tuple(heatmap_size)  # (width, height)
        self.sigma = float(sigma)
        self.convention = get_convention(convention, self.target_type)
        self.post_process = post_process
        # heatmap px per input px, (x, y); each size less the convention's offset (UDP measures from
        # the first pixel centre to the last)
        offset = self.convention.size_offset
        self._to_heatmap = (
            (self.heatmap_size[0] - offset) / (self.input_size[0] - offset),
            (self.heatmap_size[1] - offset) / (self.input_size[1] - offset),
        )

    @classmethod
    def build(cls, request: CodecRequest) -> HeatmapCodec:
        return cls(
            request.input_size, request.heatmap_size, request.sigma, request.convention, request.post_process
        )

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """The heatmap peak, as it is."""
        return scores

    def loss(self) -> torch.nn.Module:
        from losses import HeatmapMSELoss

        return HeatmapMSELoss()

    def to_heatmap_frame(self, joints: Array) -> Array:
        """joints (..., 2) input px -> heatmap px (float64; numpy or a tensor, as given)."""
        # anchor 0.5 for the project: scale pixel edges, not centres
        return _rescale(joints, self.convention.anchor, self._to_heatmap)

    def to_input_frame(self, joints: Array) -> Array:
        """joints (..., 2) heatmap px -> input px (float64; numpy or a tensor, as given)."""
        return _rescale(joints, self.convention.anchor, self._to_heatmap, inverse=True)

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> heatmaps (K, H, W) float32, weight (K,) float32.

        A labelled joint is supervised (weight 1) while its Gaussian's 3-sigma window reaches the
        map: a joint just outside the crop still teaches the network, through the visible part of
        its Gaussian, that the limb leaves the frame. Missing joints, and joints whose window is
        off the map, get weight 0 and an all-zero heatmap.

        The project's convention (and princeton-vl's) draws the whole Gaussian at the exact,
        unrounded position, and supervises while the window [c - 3 sigma, c + 3 sigma] overlaps the
        map's extent [-0.5, size - 0.5]. ``hrnet`` and ``udp`` encode as their authors' code does
        (``_authors_window``; ``hrnet`` with DARK decoding: ``_unbiased``, as DARK's configs encode):
        a heatmap model trained under them sees their targets."""
        if self.convention.name == "hrnet" and self.post_process == "dark":
            return self._unbiased(joints, visible)
        if self.convention.name in AUTHORS_WINDOW:
            return self._authors_window(joints, visible)
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

    def _authors_window(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HRNet's ``generate_target`` and MMPose's ``MSRAHeatmap`` (``hrnet``), MMPose's
        ``UDPHeatmap`` and ViTPose's UDP target (``udp``), rule for rule:

        - the centre is rounded to a whole heatmap pixel with ``int(x + 0.5)``, which rounds toward
          zero: a joint at x = -3 is placed at -2 (-2.5 truncated);
        - the Gaussian is cut to a window of 2 radius + 1 pixels, radius = 3 sigma, whose first
          pixel is ``int(mu - radius)``; its values are exp(-d^2 / (2 sigma^2)) at whole offsets d
          from the window's middle (``size // 2``), under ``udp`` moved by the sub-pixel remainder
          (x - mu), so that UDP's peak stays at the exact position;
        - the joint is supervised unless int(mu - radius) >= size or int(mu + radius + 1) < 0 on
          either axis, so on the left and top it reaches 2 heatmap pixels further out than the
          project's rule (a joint down to x > -8.5 heatmap px, -34 input px at stride 4).

        Where 3 sigma is not whole (their sigmas, 2 and 3, make it 6 and 9), their arithmetic puts
        the window's middle a pixel off the rounded centre when the window starts left of 0; that
        is kept too, as the targets a model trained under their code saw.
        """
        width, height = self.heatmap_size
        centers = self._authors_centers(joints)
        labelled = (np.asarray(visible) > 0) & np.isfinite(centers).all(axis=1)
        radius = 3 * self.sigma
        window = np.arange(0, 2 * radius + 1, 1, dtype=np.float64)  # np.arange(0, size): as their code
        middle = (2 * radius + 1) // 2
        heatmaps = np.zeros((len(centers), height, width), dtype=np.float32)
        weight = np.zeros(len(centers), dtype=np.float32)
        for k in np.flatnonzero(labelled):
            mu = np.trunc(centers[k] + 0.5)
            left, top = np.trunc(mu - radius)
            right, bottom = np.trunc(mu + radius + 1)
            if left >= width or top >= height or right < 0 or bottom < 0:
                continue
            weight[k] = 1.0
            x0, y0 = (middle + centers[k] - mu) if self.convention.name == "udp" else (middle, middle)
            gauss_x = np.exp(-((window - x0) ** 2) / (2 * self.sigma**2))
            gauss_y = np.exp(-((window - y0) ** 2) / (2 * self.sigma**2))
            # window pixel i lands on heatmap pixel left + i; the map keeps what lies on it
            x1, x2 = int(max(0, left)), int(min(width, right, left + len(window)))
            y1, y2 = int(max(0, top)), int(min(height, bottom, top + len(window)))
            heatmaps[k, y1:y2, x1:x2] = np.outer(
                gauss_y[y1 - int(top) : y2 - int(top)], gauss_x[x1 - int(left) : x2 - int(left)]
            )
        return heatmaps, weight

    def _authors_centers(self, joints: np.ndarray) -> np.ndarray:
        """joints (K, 2) input px -> heatmap px (K, 2) as the authors' codecs compute them:
        keypoints / scale_factor, both float32 (the authors' conventions have anchor 0), so that a
        centre near a half pixel rounds, and UDP's sub-pixel remainder comes out, as theirs."""
        offset = self.convention.size_offset
        scale = (np.array(self.input_size) - offset) / (np.array(self.heatmap_size) - offset)
        with np.errstate(invalid="ignore", over="ignore"):
            return (np.asarray(joints, dtype=np.float32) / scale.astype(np.float32)).astype(np.float64)

    def _unbiased(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MMPose's ``MSRAHeatmap(unbiased=True)``, DARK's encoding (Zhang et al. 2020; MMPose's
        DARK configs for HRNet and Simple Baselines): the whole Gaussian at the exact position, a
        joint supervised unless mu - 3 sigma >= size or mu + 3 sigma + 1 < 0 on either axis."""
        width, height = self.heatmap_size
        centers = self._authors_centers(joints)
        reach = 3 * self.sigma
        with np.errstate(invalid="ignore"):
            on_map = (centers - reach < (width, height)).all(axis=1) & (centers + reach + 1 >= 0).all(axis=1)
        weight = ((np.asarray(visible) > 0) & np.isfinite(centers).all(axis=1) & on_map).astype(np.float32)
        centers = np.where(weight[:, None] > 0, centers, 0.0)
        gauss_x = np.exp(-((np.arange(width)[None, :] - centers[:, :1]) ** 2) / (2 * self.sigma**2))
        gauss_y = np.exp(-((np.arange(height)[None, :] - centers[:, 1:]) ** 2) / (2 * self.sigma**2))
        heatmaps = gauss_y[:, :, None] * gauss_x[:, None, :] * weight[:, None, None]
        return heatmaps.astype(np.float32), weight

    def output_shape(self, num_joints: int) -> tuple[int, ...]:
        """A stage output's shape without the batch: (K, H, W)."""
        return (num_joints, self.heatmap_size[1], self.heatmap_size[0])

    def mirror_back(self, heatmaps: torch.Tensor, flip_permutation: np.ndarray) -> torch.Tensor:
        """heatmaps (N, K, H, W) for a mirrored input -> the original input's frame (the flip test).

        In the project's convention pixel centres sit at integers in both the input and the
        heatmap, so input column x <-> W - 1 - x is exactly heatmap column u <-> W' - 1 - u: no
        shift (so too in UDP's, where u = x (W' - 1) / (W - 1)). A model trained in HRNet's convention (targets at x / stride, which mirrors to a
        point 1 - 1 / stride columns off) is decoded as its authors did: the mirrored heatmap
        moves ``flip_shift`` columns right, the first column kept."""
        return mirror_back_columns(heatmaps, flip_permutation, self.convention.flip_shift)

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """heatmaps (N, K, H, W) -> joints (N, K, 2) input px, scores (N, K) peak values."""
        if self.post_process == "dark":
            joints, scores = dark_peaks(heatmaps, self.sigma)
        else:
            joints, scores = quarter_peaks(heatmaps)
        return self.to_input_frame(joints), scores

    def decode_tensor(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """heatmaps (N, K, H, W) tensor -> joints (N, K, 2) input px, scores (N, K), float64 on
        the heatmaps' device, by the quarter rule whatever ``post_process`` (DARK's smoothing runs
        in numpy): the running training PCK, which costs no copy to the host."""
        joints, scores = quarter_step(heatmaps)
        return self.to_input_frame(joints), scores

    def describe_decoding(self) -> dict[str, Any]:
        """This decoding for a reader without this code (-export's notes beside an ONNX graph
        that ends at the heatmaps): the convention's numbers, the sizes, and in words the
        post-process, the change of frame and the flip test."""
        convention = self.convention
        heatmap_width, heatmap_height = self.heatmap_size
        return {
            "convention": convention.name,
            "crop_center": convention.crop_center,
            "anchor": convention.anchor,
            "flip_shift": convention.flip_shift,
            "size_offset": convention.size_offset,
            "heatmap_size": [heatmap_width, heatmap_height],
            # input px per heatmap px: (input size - size_offset) / (heatmap size - size_offset)
            "stride": [
                (self.input_size[0] - convention.size_offset) / (heatmap_width - convention.size_offset),
                (self.input_size[1] - convention.size_offset) / (heatmap_height - convention.size_offset),
            ],
            "sigma": self.sigma,
            "post_process": self.post_process,
            "rule": self._post_process_in_words()
            + f" Then input px = (u + anchor) * stride - anchor per axis (anchor {convention.anchor}).",
            "flip_test": (
                "Optional: run the horizontally mirrored input too; mirror its heatmaps back (reverse "
                "the width axis, swap the channels of each flip pair), move them flip_shift columns "
                "right keeping the first column, and average with the direct output before decoding."
            ),
        }

    def _post_process_in_words(self) -> str:
        """``quarter_step`` or ``dark_peaks`` in words, from heatmap px (u, v)."""
        if self.post_process == "quarter":
            return (
                "For each joint take the argmax (u, v) of its heatmap; its value is the joint's score. "
                "Move u by 0.25 toward the higher of its left and right neighbours, and v by 0.25 toward "
                "the higher of the rows above and below (no step at the map's border or on a tie)."
            )
        return (
            "DARK (Zhang et al., CVPR 2020). For each joint the heatmap's maximum is the joint's score. "
            "Smooth the heatmap with a Gaussian of sigma heatmap px truncated at 3 sigma (zero beyond the "
            "map) and rescale it to the heatmap's maximum; take its argmax (u, v). If u or v lies less than "
            f"{DARK_EDGE_REACH} sigma from the map's edge, use the unsmoothed heatmap and its argmax instead. "
            f"With L = log(max(map, {LOG_FLOOR:g})) at the 3x3 pixels around (u, v): gradient g = "
            "((L[u+1] - L[u-1]) / 2, (L[v+1] - L[v-1]) / 2), Hessian H = [[L[u+1] - 2 L + L[u-1], c], "
            "[c, L[v+1] - 2 L + L[v-1]]] with c = (L[u+1, v+1] - L[u+1, v-1] - L[u-1, v+1] + L[u-1, v-1]) / 4. "
            f"Where both axes have both neighbours and second differences below -{MIN_CURVATURE:g}, and "
            f"det H > {MIN_CURVATURE**2:g}, (u, v) += -H^-1 g; otherwise each axis with both neighbours and a "
            f"second difference h below -{MIN_CURVATURE:g} moves by -g / h. An axis whose step is longer "
            "than 1 keeps its argmax."
        )


@register_target_type("regression", conventions=("project",))
class RegressionCodec(Codec):
    """Joint coordinates normalised to the crop, (x + 0.5) / width - 0.5, so the crop spans
    [-0.5, 0.5] whatever its size (DeepPose regresses these directly)."""

    convention = CONVENTIONS["project"]
    output_names = ("coordinates",)

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = tuple(input_size)
        self._size = (float(self.input_size[0]), float(self.input_size[1]))

    @classmethod
    def build(cls, request: CodecRequest) -> RegressionCodec:
        return cls(request.input_size)  # its one convention: make_codec checked it

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """All ones: a regressor states no confidence."""
        return scores

    def loss(self) -> torch.nn.Module:
        from losses import RegressionL2Loss

        return RegressionL2Loss()

    def describe_crop(self) -> str:
        return (
            f"{self._box_growth()}; the box height maps to the input height and its centre lands at "
            "((W - 1) / 2, (H - 1) / 2)."
        )

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> target (K, 2) float32, weight (K,) float32."""
        normalised = self.normalise(joints)
        inside = (np.abs(normalised) <= 0.5).all(axis=1)
        weight = ((np.asarray(visible) > 0) & inside).astype(np.float32)
        target = np.where(weight[:, None] > 0, normalised, 0.0)
        return target.astype(np.float32), weight

    def normalise(self, joints: Array) -> Array:
        """joints (..., 2) input px -> normalised crop coordinates (float64; numpy or a tensor):
        the inverse of :meth:`decode`'s change of frame."""
        return _rescale(joints, 0.5, self._size, inverse=True)

    def decode(self, outputs: Array) -> tuple[Array, Array]:
        """outputs (N, K, 2) normalised -> joints (N, K, 2) input px, scores (N, K) all ones
        (a regressor has no confidence of its own); float64, numpy or a tensor as given."""
        joints = _rescale(outputs, 0.5, self._size)
        return joints, (torch if _is_tensor(joints) else np).ones_like(joints[..., 0])

    decode_tensor = decode  # the same on the device

    def output_shape(self, num_joints: int) -> tuple[int, ...]:
        """A stage output's shape without the batch: (K, 2)."""
        return (num_joints, 2)

    def mirror_back(self, outputs: torch.Tensor, flip_permutation: np.ndarray) -> torch.Tensor:
        """outputs (N, K, 2) for a mirrored input -> the original's: rows swapped, x negated (the
        crop's normalised coordinates are symmetric about 0)."""
        swapped = outputs[:, torch.as_tensor(flip_permutation, device=outputs.device)]
        return swapped * torch.tensor([-1.0, 1.0], device=outputs.device, dtype=outputs.dtype)

    def describe_decoding(self) -> dict[str, Any]:
        """This decoding for a reader without this code (-export's notes): in words, the change
        of frame and the flip test."""
        width, height = self.input_size
        return {
            "rule": (
                "The output (N, K, 2) is (x, y) normalised to the crop, which spans [-0.5, 0.5]: input px = "
                f"(v + 0.5) * size - 0.5 per axis, size = (width, height) = ({width}, {height}). A regressor "
                "gives no confidence: every score is 1."
            ),
            "flip_test": (
                "Optional: run the horizontally mirrored input too; negate x of its output, swap the rows "
                "of each flip pair, and average with the direct output before decoding."
            ),
        }


@register_target_type("simcc", conventions=("project", "mmpose"))
class SimCCCodec(Codec):
    """SimCC (Li et al., "SimCC: a Simple Coordinate Classification Perspective for Human Pose
    Estimation", ECCV 2022), as RTMPose uses it: each joint is two 1-D classifications, over
    Wx = round(w x split_ratio) bins for x and Wy = round(h x split_ratio) for y.

    A stage output (and a target) is one tensor (N, K, Wx + Wy), the x vector then the y vector
    (see models/registry.py), so the loop handles it as any other. Input px x sits at bin
    (x + anchor) x split_ratio - anchor: with MMPose's convention ("mmpose", anchor 0) bin x r, as
    ``SimCCLabel`` encodes and decodes; with the project's (anchor 0.5) pixel edges scale, so
    mirroring the input mirrors the vector exactly.

    Labels are MMPose's Gaussian labels with ``normalize=False`` (peak 1; RTMPose's setting). Under
    ``mmpose`` they are ``SimCCLabel``'s exactly: the centre rounded to a whole bin (``np.around``,
    halves to even) before the Gaussian and the supervision test. The project's convention centres
    on the exact bin position instead (at most half a bin, a quarter pixel at split ratio 2, from
    MMPose's): rounding throws the sub-bin position away, and at split ratio 2 in the project's
    convention every whole-pixel joint would sit on a rounding tie.
    Decoding is MMPose's ``get_simcc_maximum``: the argmax of each vector (the first on a tie), and
    as the score the smaller of the two maxima, raw logits as the network gives them.
    """

    output_names = ("simcc_x", "simcc_y")
    shape_hint = "the model's SimCC bins follow inputRes, aspectRatio and simccSplitRatio"

    def __init__(
        self,
        input_size: tuple[int, int],
        split_ratio: float = 2.0,
        sigma: tuple[float, float] = (4.9, 5.66),
        convention: str = "project",
    ) -> None:
        if not split_ratio > 0:
            raise ValueError(f"SimCC split ratio must be > 0, got {split_ratio}")
        if len(sigma) != 2 or not min(sigma) > 0:
            raise ValueError(f"SimCC sigma must be two values > 0 (x, y), got {tuple(sigma)}")
        self.input_size = tuple(input_size)  # (width, height)
        self.split_ratio = float(split_ratio)
        self.sigma = (float(sigma[0]), float(sigma[1]))  # in bins, (x, y)
        self.convention = get_convention(convention, self.target_type)
        self.bins = (
            round(self.input_size[0] * self.split_ratio),
            round(self.input_size[1] * self.split_ratio),
        )

    @classmethod
    def build(cls, request: CodecRequest) -> SimCCCodec:
        return cls(request.input_size, request.split_ratio, request.simcc_sigma, request.convention)

    def loss(self) -> torch.nn.Module:
        from losses import SimCCKLLoss

        return SimCCKLLoss(self.bins[0])

    def output_shape(self, num_joints: int) -> tuple[int, ...]:
        """A stage output's shape without the batch: (K, Wx + Wy)."""
        return (num_joints, self.bins[0] + self.bins[1])

    def to_bin_frame(self, joints: Array) -> Array:
        """joints (..., 2) input px -> bins (float64; numpy or a tensor, as given)."""
        return _rescale(joints, self.convention.anchor, (self.split_ratio, self.split_ratio))

    def to_input_frame(self, bins: Array) -> Array:
        """bins (..., 2) -> input px (float64; numpy or a tensor, as given)."""
        return _rescale(bins, self.convention.anchor, (self.split_ratio, self.split_ratio), inverse=True)

    def split_outputs(self, output: Array) -> tuple[Array, Array]:
        """(..., Wx + Wy) -> x vectors (..., Wx), y vectors (..., Wy)."""
        return output[..., : self.bins[0]], output[..., self.bins[0] :]

    def join_outputs(self, outputs: list[np.ndarray]) -> np.ndarray:
        """[x (N, K, Wx), y (N, K, Wy)] (the exported graph's two outputs) -> (N, K, Wx + Wy)."""
        return np.concatenate(outputs, axis=-1)

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> target (K, Wx + Wy) float32, weight (K,) float32.

        A labelled joint is supervised while its Gaussian's 3-sigma window overlaps the bins on both
        axes (MMPose's test: mu - 3 sigma < W and mu + 3 sigma + 1 >= 0); otherwise, and for a missing
        joint, weight 0 and all-zero vectors. The vectors are the whole Gaussian (no window), as
        MMPose's."""
        centers = self.to_bin_frame(np.asarray(joints, dtype=np.float64))  # (K, 2)
        if self.convention.name == "mmpose":
            centers = np.around(centers)  # SimCCLabel._map_coordinates
        sizes, sigma = np.array(self.bins, dtype=np.float64), np.array(self.sigma)
        with np.errstate(invalid="ignore"):
            overlaps = ((centers - 3 * sigma < sizes) & (centers + 3 * sigma + 1 >= 0)).all(axis=1)
        weight = ((np.asarray(visible) > 0) & overlaps & np.isfinite(centers).all(axis=1)).astype(np.float32)
        centers = np.where(weight[:, None] > 0, centers, 0.0)
        vectors = []
        for axis in range(2):
            positions = np.arange(self.bins[axis], dtype=np.float64)
            gauss = np.exp(
                -((positions[None, :] - centers[:, axis : axis + 1]) ** 2) / (2 * sigma[axis] ** 2)
            )
            vectors.append(gauss * weight[:, None])  # (K, W_axis)
        return np.concatenate(vectors, axis=1).astype(np.float32), weight

    def decode(self, outputs: Array) -> tuple[Array, Array]:
        """outputs (N, K, Wx + Wy) -> joints (N, K, 2) input px, scores (N, K): each vector's argmax
        (the first on a tie) in bins, back to input px; the score is the smaller of the two maxima
        (MMPose's raw value, which exceeds 1 at times: see ``confidence``). float64; numpy for
        numpy, tensors on the outputs' device for a tensor."""
        xp = torch if _is_tensor(outputs) else np
        peaks, values = [], []
        for vectors in self.split_outputs(outputs):
            index = vectors.argmax(-1)  # (N, K)
            peaks.append(index)
            values.append(_take(vectors, index[..., None])[..., 0])
        bins = _float64(xp.stack(peaks, -1))
        scores = _float64(xp.minimum(values[0], values[1]))
        return self.to_input_frame(bins), scores

    decode_tensor = decode  # the same on the device: the running training PCK

    def mirror_back(self, outputs: torch.Tensor, flip_permutation: np.ndarray) -> torch.Tensor:
        """outputs (N, K, Wx + Wy) for a mirrored input -> the original's: the joints' rows swapped,
        each x vector reversed (then moved ``flip_shift`` bins right), the y vectors as they are."""
        x, y = self.split_outputs(outputs)
        x = mirror_back_columns(x, flip_permutation, self.convention.flip_shift)
        y = y[:, torch.as_tensor(flip_permutation, device=y.device)]
        return torch.cat([x, y], dim=-1)

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """The per-joint confidence -predict writes: the raw score clipped to [0, 1].

        The raw maximum is a logit whose level the KL loss leaves free (a softmax ignores a constant
        added to a vector); trained against peak-1 labels it reads about 1 at a confident joint and
        goes above 1 at times, and MMPose marks a joint with a value <= 0 as not found. Clipping keeps
        the order of joints below 1 and reads as a confidence. Validation and the COCO rescoring use
        the raw values, as MMPose does, so AP is computed on the authors' numbers."""
        return np.clip(scores, 0.0, 1.0)

    def describe_decoding(self) -> dict[str, Any]:
        """This decoding for a reader without this code (-export's notes beside the ONNX graph's
        two outputs, ``simcc_x`` (N, K, Wx) and ``simcc_y`` (N, K, Wy))."""
        anchor = self.convention.anchor
        return {
            "convention": self.convention.name,
            "crop_center": self.convention.crop_center,
            "anchor": anchor,
            "flip_shift": self.convention.flip_shift,
            "split_ratio": self.split_ratio,
            "bins": list(self.bins),
            "sigma": list(self.sigma),
            "rule": (
                "For each joint take the argmax bx of its simcc_x vector and by of its simcc_y vector (the "
                "first on a tie); its score is min(simcc_x[bx], simcc_y[by]), the raw values (they can "
                f"exceed 1; <= 0 means not found). Then input px = (b + anchor) / split_ratio - anchor per "
                f"axis (anchor {anchor}, split_ratio {self.split_ratio:g})."
            ),
            "flip_test": (
                "Optional: run the horizontally mirrored input too; for its outputs swap the rows of each "
                "flip pair, reverse each simcc_x vector and move it flip_shift bins right keeping the first "
                "bin, keep simcc_y as it is, and average with the direct outputs before decoding."
            ),
        }


# A bone is supervised where some heatmap pixel centre lies within 3 sigma of it: its map peaks
# at exp(-3^2 / 2) or more (the joints' rule, a Gaussian window reaching the map, for a segment).
BONE_REACH = float(np.exp(-4.5))


def bone_maps(starts: np.ndarray, ends: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """starts, ends (B, 2) heatmap px -> (B, H, W) float64 maps, size = (W, H): at each pixel
    centre (integer coordinates) exp(-d^2 / (2 sigma^2)), d its distance to the segment from start
    to end (to the point, for a segment of length 0). DLCM's bone-based part representation,
    exactly: the authors' code stamps the joints' Gaussian at the pixels a Bresenham line visits."""
    width, height = size
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    along = ends - starts  # (B, 2)
    length2 = (along**2).sum(axis=1)[:, None, None]  # (B, 1, 1)
    dx = np.arange(width, dtype=np.float64)[None, None, :] - starts[:, 0, None, None]  # (B, 1, W)
    dy = np.arange(height, dtype=np.float64)[None, :, None] - starts[:, 1, None, None]  # (B, H, 1)
    ax, ay = along[:, 0, None, None], along[:, 1, None, None]
    # where the pixel projects onto the segment, as a fraction of it (0: the start, 1: the end)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(length2 > 0, np.clip((dx * ax + dy * ay) / length2, 0.0, 1.0), 0.0)  # (B, H, W)
    squared = (dx - t * ax) ** 2 + (dy - t * ay) ** 2
    return np.exp(-squared / (2 * sigma**2))


@register_target_type("compositional", conventions=("project",), heatmap_decoded=True)
class CompositionalCodec(HeatmapCodec):
    """DLCM's targets (Tang, Yu & Wu, "Deeply Learned Compositional Models for Human Pose
    Estimation", ECCV 2018): a score map per part of every level of a hierarchy
    (:class:`datasets.skeletons.PartHierarchy`), joints first.

    A sample's target is one tensor (K0 + K1 + ..., H, W), the levels' maps concatenated (level 0,
    the joints, first), with a weight per map, so the dataset, the loader and the loop carry it as
    a heatmap. The network returns one stage per level, bottom-up then top-down (``stage_levels``:
    0, 1, ..., L - 1, ..., 1, 0), each with its level's K_l maps; the loss matches stage to level
    (``level_slices``). The last stage is the joints' heatmaps, so decoding, the flip test, the
    output shape and the export are the heatmap codec's, applied to it.

    Joints are the heatmap codec's Gaussians. A composite part is drawn along its bones (the
    paper's bone-based part representation): the maximum over its bones of a Gaussian of the
    distance to the bone (:func:`bone_maps`), with the joints' sigma, as the authors' code draws
    them. Which parts are supervised (weight 1):

    - a level-1 part when every joint it joins is labelled and its map reaches the heatmap (some
      pixel centre within 3 sigma of a bone); its map is then drawn, else it is all zero. The
      authors' code also leaves out a bone with a joint off the heatmap; here the part of a limb
      inside the crop is still ground truth, as a joint's Gaussian reaching the map is;
    - a part of a higher level when any of its children is supervised; its map is the maximum of
      those children's maps (the authors' rule: a leg whose ankle is unlabelled keeps its thigh).
    """

    needs_hierarchy = True

    def __init__(
        self,
        input_size: tuple[int, int],
        heatmap_size: tuple[int, int],
        sigma: float,
        hierarchy: PartHierarchy,
        convention: str = "project",
        post_process: str = "quarter",
    ) -> None:
        super().__init__(input_size, heatmap_size, sigma, convention, post_process)
        self.hierarchy = hierarchy
        sizes = hierarchy.sizes
        offsets = np.cumsum((0, *sizes))
        self.level_slices = tuple(
            slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        )
        self.stage_levels = hierarchy.stage_levels
        self._first_bones = hierarchy.bones(1)  # per level-1 part, its (joint, joint) pairs

    @classmethod
    def build(cls, request: CodecRequest) -> CompositionalCodec:
        if request.hierarchy is None:
            raise ValueError("a compositional codec needs the joint set's hierarchy of parts")
        return cls(
            request.input_size, request.heatmap_size, request.sigma, request.hierarchy, request.convention,
            request.post_process,
        )  # fmt: skip

    def loss(self) -> torch.nn.Module:
        from losses import CompositionalMSELoss

        return CompositionalMSELoss(self.level_slices, self.stage_levels)

    @property
    def num_maps(self) -> int:
        """Maps of all levels: 34 for the paper's MPII hierarchy (16 + 12 + 6)."""
        return self.level_slices[-1].stop

    def target_shape(self, num_joints: int) -> tuple[int, ...]:
        """A sample's target shape: every level's maps, (K0 + K1 + ..., H, W)."""
        self._check_joints(num_joints)
        return (self.num_maps, self.heatmap_size[1], self.heatmap_size[0])

    def stage_shapes(self, num_joints: int) -> list[tuple[int, ...]]:
        """Each stage output's shape without the batch, in stage order."""
        self._check_joints(num_joints)
        height, width = self.heatmap_size[1], self.heatmap_size[0]
        return [(self.hierarchy.sizes[level], height, width) for level in self.stage_levels]

    def _check_joints(self, num_joints: int) -> None:
        if num_joints != self.hierarchy.sizes[0]:
            raise ValueError(f"{num_joints} joints, but the hierarchy has {self.hierarchy.sizes[0]}")

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """joints (K, 2) input px, visible (K,) -> maps (K0 + K1 + ..., H, W) float32 and their
        weights (K0 + K1 + ...,) float32: the joints as :class:`HeatmapCodec` encodes them, then
        each composite level (see the class docstring)."""
        heatmaps, weight = super().encode(joints, visible)
        centers = self.to_heatmap_frame(np.asarray(joints, dtype=np.float64))  # (K, 2) heatmap px
        labelled = (np.asarray(visible) > 0) & np.isfinite(centers).all(axis=1)
        maps, weights = [heatmaps.astype(np.float64)], [weight]
        level_maps, level_weight = self._first_level(centers, labelled)
        maps.append(level_maps)
        weights.append(level_weight)
        for level in range(2, self.hierarchy.num_levels):
            children = self.hierarchy.levels[level - 1].children
            below, below_weight = maps[-1], weights[-1]
            level_maps, level_weight = np.zeros((len(children), *below.shape[1:])), np.zeros(len(children))
            for part, members in enumerate(children):
                supervised = [child for child in members if below_weight[child] > 0]
                if supervised:
                    level_maps[part], level_weight[part] = below[supervised].max(axis=0), 1.0
            maps.append(level_maps)
            weights.append(level_weight)
        return np.concatenate(maps).astype(np.float32), np.concatenate(weights).astype(np.float32)

    def _first_level(self, centers: np.ndarray, labelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level 1's maps (K1, H, W) and weights (K1,) from the joints in heatmap px."""
        width, height = self.heatmap_size
        parts = self._first_bones
        maps, weight = np.zeros((len(parts), height, width)), np.zeros(len(parts))
        for part, bones in enumerate(parts):
            ends = np.array(bones)  # (B, 2) joint indices
            if not labelled[ends].all():
                continue
            drawn = bone_maps(centers[ends[:, 0]], centers[ends[:, 1]], self.heatmap_size, self.sigma).max(
                axis=0
            )
            if drawn.max() >= BONE_REACH:
                maps[part], weight[part] = drawn, 1.0
        return maps, weight

    def split_levels(self, maps: Array) -> list[Array]:
        """(N, K0 + K1 + ..., H, W) -> one (N, K_l, H, W) per level, joints first."""
        return [maps[:, part] for part in self.level_slices]

    def joint_target(self, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The joints' maps and weights (level 0), what the last stage predicts."""
        joints = self.level_slices[0]
        return target[:, joints], weight[:, joints]

    def mirror_back_level(self, maps: torch.Tensor, level: int) -> torch.Tensor:
        """maps (N, K_l, H, W) of level ``level`` for a mirrored input -> the original input's frame:
        the width reversed and each part swapped with its left/right twin (the hierarchy's
        ``flip_permutation``). Level 0 is ``mirror_back`` with the joint set's flip pairs."""
        return mirror_back_columns(maps, self.hierarchy.flip_permutation(level), self.convention.flip_shift)

    def describe_decoding(self) -> dict[str, Any]:
        """The heatmap decoding of the last stage (the joints), and the hierarchy it was trained with."""
        return {
            **super().describe_decoding(),
            "hierarchy": self.hierarchy.to_json(),
            "stages": (
                "The exported output is the last stage: one heatmap per joint. The composite parts' "
                "maps (the hierarchy's levels) are intermediate outputs, not exported."
            ),
        }


def make_codec(
    target_type: str,
    input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
    convention: str = "project",
    post_process: str = "quarter",
    *,
    split_ratio: float = 2.0,
    simcc_sigma: tuple[float, float] = (4.9, 5.66),
    hierarchy: PartHierarchy | None = None,
) -> Codec:
    """The codec for a model's declared target type ("heatmap", "regression", "simcc" or
    "compositional").

    Heatmap codecs follow ``convention`` (see ``CONVENTIONS``) and decode by ``post_process`` (see
    ``POST_PROCESSES``); regressors keep the project's convention and their own decoding; SimCC
    codecs take ``split_ratio`` and ``simcc_sigma`` (x, y in bins) and decode by the argmax;
    compositional codecs (DLCM) take the joint set's ``hierarchy`` of parts and decode their last
    stage as heatmaps."""
    codec = TARGET_TYPES.get(target_type)  # an unknown one: one line naming the registered
    if post_process != "quarter" and not codec.heatmap_decoded:
        raise ValueError(f"post-process {post_process!r} applies to heatmap models only")
    get_convention(convention, target_type)
    request = CodecRequest(
        tuple(input_size), tuple(heatmap_size), sigma, convention, post_process, split_ratio,
        tuple(simcc_sigma), hierarchy,
    )  # fmt: skip
    return codec.build(request)
