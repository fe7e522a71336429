"""Multi-Context Attention for Human Pose Estimation (Chu, Yang, Ouyang, Ma, Yuille & Wang, CVPR 2017)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import (
    Hourglass,
    Residual,
    bilinear_resize,
    bn_relu_conv,
    conv_bn_relu,
    residual_stack,
)
from models.stacked_hourglass import HourglassSizes, register_hourglass_model


class HourglassResidualUnit(nn.Module):
    """Hourglass Residual Unit (HRU): x + F(x) + P(x).

    F is the bottleneck of Newell et al.; P is a side branch that sees the input at half
    resolution (BN-ReLU, 2x2 max-pool, 3x3 conv, BN-ReLU, 3x3 conv, nearest upsampling), so a unit
    has a receptive field twice as large as a residual unit at the same depth.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.residual = Residual(in_channels, out_channels)  # F(x) + identity (or projection)
        self.pre = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.side = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            bn_relu_conv(out_channels, out_channels, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ceil_mode keeps odd or 1-pixel maps (e.g. 4x3 -> 2x2, 2x1 -> 1x1) valid at the hourglass bottom
        side = self.side(F.max_pool2d(self.pre(x), 2, ceil_mode=True))  # (N, C, ceil(H/2), ceil(W/2))
        return self.residual(x) + F.interpolate(side, size=x.shape[-2:], mode="nearest")  # (N, C, H, W)


def release_hourglass(depth: int, channels: int, n_modules: int) -> Hourglass:
    """The authors' hourglass (``hg-attention.lua``) with ``depth`` reductions.

    Each skip branch holds ``n_modules`` chains of one residual unit and ``depth - 2`` HRUs, so
    the outermost skip (full resolution) gets the most HRUs: these are the branches whose
    receptive field is otherwise smallest (for four reductions, 2 HRUs at 64x64, 1 at 32x32, none
    below). At the bottom level the chains after the first are single HRUs. ``down`` has
    ``n_modules`` residual units; the bottom and ``up`` one each. With ``n_modules`` 1 (the
    paper's configuration) this is Newell's hourglass with HRUs appended to the skip branches.
    """
    hourglass = Hourglass(1, channels, 1, Residual)
    skip: list[nn.Module] = []
    for module in range(n_modules):
        if depth > 1:
            skip += [Residual(channels, channels)]
            skip += [HourglassResidualUnit(channels, channels) for _ in range(depth - 2)]
        else:
            skip += [
                Residual(channels, channels) if module == 0 else HourglassResidualUnit(channels, channels)
            ]
    hourglass.skip = nn.Sequential(*skip)
    hourglass.down = residual_stack(channels, n_modules)
    if depth > 1:
        hourglass.inner = release_hourglass(depth - 1, channels, n_modules)
    return hourglass


class CRFAttention(nn.Module):
    """Attention maps refined by mean-field inference of a spatial CRF.

    The unary term is a 3x3 convolution of the features, ``u = W_a * f``. Each mean-field step
    passes messages between neighbouring positions with one ``lrn_size`` x ``lrn_size`` kernel per
    map, the same kernel at every step (weight sharing makes the iterations one recurrent CRF
    rather than ``iter_size`` unrelated layers). As in the authors' release, the recursion starts
    from the unary map itself: ``q_1 = sigmoid(u + k * u)``, ``q_t = sigmoid(u + k * q_{t-1})``.
    A sigmoid rather than a spatial softmax keeps each position's weight in (0, 1) independently
    of the map size.
    """

    def __init__(self, in_channels: int, n_maps: int = 1, lrn_size: int = 11, iter_size: int = 3) -> None:
        super().__init__()
        if lrn_size < 1 or lrn_size % 2 == 0:
            raise ValueError(f"lrn_size must be a positive odd kernel size, got {lrn_size}")
        if iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        self.iter_size = iter_size
        self.unary = nn.Conv2d(in_channels, n_maps, 3, padding=1)
        # groups=n_maps: each part's CRF has its own kernel, as if it were a separate 1-channel conv
        self.message = nn.Conv2d(n_maps, n_maps, lrn_size, padding=lrn_size // 2, groups=n_maps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        unary = self.unary(features)  # (N, M, H, W)
        q = unary
        for _ in range(self.iter_size):
            q = torch.sigmoid(unary + self.message(q))
        return q  # (N, M, H, W) in (0, 1)


class MultiResolutionAttention(nn.Module):
    """Holistic attention from features at several resolutions of one hourglass.

    One CRF attention map per source (the stack's output features, then the coarser decoder levels
    of its hourglass, ``source_channels`` wide each); maps are upsampled to the output size and
    summed, and the features are re-weighted by the sum: ``h = f * sum_r up(Phi_r)``.
    """

    def __init__(self, source_channels: list[int], lrn_size: int, iter_size: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(
            [CRFAttention(channels, 1, lrn_size, iter_size) for channels in source_channels]
        )

    def attention(self, sources: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Summed attention (N, 1, *size) from ``sources``, one feature map per resolution."""
        total = 0
        for attend, source in zip(self.maps, sources, strict=True):
            total = total + bilinear_resize(attend(source), size, align_corners=False)
        return total

    def forward(self, features: torch.Tensor, coarser: list[torch.Tensor]) -> torch.Tensor:
        return features * self.attention([features, *coarser], features.shape[-2:])  # (N, C, H, W)


class PartAttention(nn.Module):
    """Part attention head: joint ``k``'s heatmap is ``w_k . (h * Phi_k) + b_k``.

    Each joint gets its own CRF attention map on the holistically attended features ``h``.
    Because the 1x1 classifier is linear and ``Phi_k`` is one channel,
    ``w_k . (h * Phi_k) = Phi_k * (w_k . h)``; computing it that way gives the same heatmaps
    without materialising K re-weighted copies of the (N, C, H, W) features.
    """

    def __init__(self, channels: int, n_joints: int, lrn_size: int, iter_size: int) -> None:
        super().__init__()
        self.attention = CRFAttention(channels, n_joints, lrn_size, iter_size)
        self.classifier = nn.Conv2d(channels, n_joints, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(n_joints))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.attention(features)  # (N, K, H, W)
        return maps * self.classifier(features) + self.bias[:, None, None]  # (N, K, H, W)


class FullResolutionStem(nn.Module):
    """The release's stem, input (N, 3, H, W) -> features (N, C, H/4, W/4): a 7x7 stride-1
    conv-BN-ReLU at full resolution, a residual, max-pool, two residuals, max-pool, three
    residuals. Widths C/4 and C/2 (64 and 128 for C = 256, the release's fixed widths)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        quarter, half = max(channels // 4, 8), max(channels // 2, 8)
        self.conv = conv_bn_relu(3, quarter, 7)
        self.at_full = Residual(quarter, quarter)
        self.at_half = nn.Sequential(Residual(quarter, quarter), Residual(quarter, half))
        self.at_quarter = nn.Sequential(Residual(half, half), Residual(half, half), Residual(half, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.at_full(self.conv(x))  # (N, C/4, H, W)
        x = self.at_half(F.max_pool2d(x, 2))  # (N, C/2, H/2, W/2)
        return self.at_quarter(F.max_pool2d(x, 2))  # (N, C, H/4, W/4)


class PoseAttention(nn.Module):
    """Stacked hourglass with HRUs and multi-context attention, laid out as the authors' release
    (bearpaw/pose-attention, ``train/models/hg-attention.lua``) wherever the paper is silent.

    Per stack: hourglass (HRUs nested on its skip branches) -> two 1x1 conv-BN-ReLU layers ->
    multi-resolution holistic attention (features re-weighted by CRF attention maps computed from
    this stack's output and from its hourglass's coarser decoder levels). The first stacks predict
    heatmaps with a 1x1 convolution of the attended features; the last ``n_part_stacks`` add
    hierarchical part attention (one CRF map per joint) on them. The next stack's input adds a 1x1
    conv of the heatmaps and a third 1x1 conv-BN-ReLU of the first layer's output. The last stack
    is twice as wide (2C) after its hourglass, and the stem works at full resolution
    (``FullResolutionStem``), both as in the release.

    Where this differs from the release, and why:
      * Holistic attention reads ``n_reductions`` resolutions (the stack's features and the coarser
        decoder levels of its hourglass), as the paper's multi-resolution attention describes; the
        release computes one map from the stack's features only. This adds ``n_reductions - 1``
        small CRF units per stack (3x3 unary and ``lrn_size`` message kernels).
      * ``n_modules`` is a config key; the release derives it from the stack count (8 / nStack).
      * The feedback of heatmaps into the next stack is C wide; the release hard-codes 256 (equal
        at the paper's C = 256).

    Where the original PyTorch project (Naman-ntc, models/PoseAttention.py) departs from the paper,
    this follows the paper: it defines HRUs but never uses them; creates the holistic attention
    modules but never registers or calls them; applies part attention to the raw stack features;
    gives each mean-field iteration its own kernel plus a BatchNorm and computes ``u + sigmoid(k * q)``
    (maps not in (0, 1)); and its defaults (2 stacks, 2 modules, LRNSize 1) are not the paper's.
    """

    def __init__(
        self, sizes: HourglassSizes, lrn_size: int, iter_size: int, n_part_stacks: int | None = None
    ) -> None:
        super().__init__()
        n_joints, n_channels, n_stack, n_modules, n_reductions = dataclasses.astuple(sizes)
        if n_part_stacks is None:
            n_part_stacks = max(1, n_stack - 4)  # the release: stacks after the 4th, and the last
        if not 0 <= n_part_stacks <= n_stack:
            raise ValueError(f"n_part_stacks must be in [0, n_stack={n_stack}], got {n_part_stacks}")
        self.part_stacks = tuple(range(n_stack - n_part_stacks, n_stack))
        widths = [n_channels] * (n_stack - 1) + [2 * n_channels]  # the release's wider last stack
        self.stem = FullResolutionStem(n_channels)
        self.hourglasses = nn.ModuleList(
            [release_hourglass(n_reductions, n_channels, n_modules) for _ in range(n_stack)]
        )
        self.lin1 = nn.ModuleList([conv_bn_relu(n_channels, width, 1) for width in widths])
        self.lin2 = nn.ModuleList([conv_bn_relu(width, width, 1) for width in widths])
        # sources: the stack's output features plus the n_reductions - 1 coarser decoder levels
        self.holistic = nn.ModuleList(
            [
                MultiResolutionAttention([width] + [n_channels] * (n_reductions - 1), lrn_size, iter_size)
                for width in widths
            ]
        )
        self.heads = nn.ModuleList(
            [
                PartAttention(width, n_joints, lrn_size, iter_size)
                if stack in self.part_stacks
                else nn.Conv2d(width, n_joints, 1)
                for stack, width in enumerate(widths)
            ]
        )
        self.merge_features = nn.ModuleList(
            [conv_bn_relu(n_channels, n_channels, 1) for _ in range(n_stack - 1)]
        )
        self.merge_heatmaps = nn.ModuleList([nn.Conv2d(n_joints, n_channels, 1) for _ in range(n_stack - 1)])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image)  # (N, C, H/4, W/4)
        outputs = []
        for stack, hourglass in enumerate(self.hourglasses):
            levels = hourglass.forward_levels(x)  # [(N, C, H/4, W/4), (N, C, H/8, W/8), ...]
            feature = self.lin1[stack](levels[0])  # (N, C, H/4, W/4); 2C in the last stack
            attended = self.holistic[stack](self.lin2[stack](feature), levels[1:])
            heatmaps = self.heads[stack](attended)  # (N, K, H/4, W/4)
            outputs.append(heatmaps)
            if stack < len(self.hourglasses) - 1:
                x = x + self.merge_heatmaps[stack](heatmaps) + self.merge_features[stack](feature)
        return outputs


@register_hourglass_model("PoseAttention")
def pose_attention(
    sizes: HourglassSizes, lrn_size: int = 11, iter_size: int = 3, n_part_stacks: int | None = None
) -> PoseAttention:
    """Paper configuration by default: 8 stacks of 256 features (:class:`HourglassSizes`), part
    attention in stacks 5-8 (``n_part_stacks`` None = the release's rule: the stacks after the
    4th, at least the last), 3 mean-field iterations. ``lrn_size`` 11 is the CRF kernel of the
    authors' released training command (their option default, 1, would make the CRF a per-pixel
    scalar with no spatial messages)."""
    return PoseAttention(sizes, lrn_size, iter_size, n_part_stacks)
