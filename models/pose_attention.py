"""Multi-Context Attention for Human Pose Estimation (Chu, Yang, Ouyang, Ma, Yuille & Wang, CVPR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Hourglass, Residual, bn_relu_conv, conv_bn_relu, residual_stack
from models.registry import register_model
from models.stacked_hourglass import HourglassStem


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


def nest_hourglass_residual_units(hourglass: Hourglass, channels: int, n_modules: int, depth: int) -> None:
    """Give each skip branch of ``hourglass`` ``depth - 2`` HRUs after its residual units.

    The outermost skip (full resolution) gets the most: these are the branches whose receptive
    field is otherwise smallest. For four reductions this is 2 HRUs at 64x64, 1 at 32x32 and none
    below, the layout of the authors' released model.
    """
    extra = [HourglassResidualUnit(channels, channels) for _ in range(max(depth - 2, 0))]
    hourglass.skip = nn.Sequential(*hourglass.skip, *extra)
    if isinstance(hourglass.inner, Hourglass):
        nest_hourglass_residual_units(hourglass.inner, channels, n_modules, depth - 1)


class CRFAttention(nn.Module):
    """Attention maps refined by mean-field inference of a spatial CRF.

    The unary term is a 3x3 convolution of the features, ``s = W_a * f``. Each mean-field step
    passes messages between neighbouring positions with one ``lrn_size`` x ``lrn_size`` kernel per
    map, the same kernel at every step (weight sharing makes the iterations one recurrent CRF
    rather than ``iter_size`` unrelated layers): ``q_0 = sigmoid(s)``,
    ``q_t = sigmoid(s + k * q_{t-1})``. A sigmoid rather than a spatial softmax keeps each
    position's weight in (0, 1) independently of the map size.
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
        q = torch.sigmoid(unary)
        for _ in range(self.iter_size):
            q = torch.sigmoid(unary + self.message(q))
        return q  # (N, M, H, W) in (0, 1)


class MultiResolutionAttention(nn.Module):
    """Holistic attention from features at several resolutions of one hourglass.

    One CRF attention map per source (the stack's output features and the coarser decoder levels
    of its hourglass); maps are upsampled to the output size and summed, and the features are
    re-weighted by the sum: ``h = f * sum_r up(Phi_r)``.
    """

    def __init__(self, channels: int, n_resolutions: int, lrn_size: int, iter_size: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(
            [CRFAttention(channels, 1, lrn_size, iter_size) for _ in range(n_resolutions)]
        )

    def attention(self, sources: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Summed attention (N, 1, *size) from ``sources``, one feature map per resolution."""
        total = 0
        for attend, source in zip(self.maps, sources, strict=True):
            total = total + F.interpolate(attend(source), size=size, mode="bilinear", align_corners=False)
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


class PoseAttention(nn.Module):
    """Stacked hourglass with HRUs and multi-context attention.

    Per stack: hourglass (with nested HRUs on its skip branches) -> residual + two 1x1 conv-BN-ReLU
    layers -> multi-resolution holistic attention (features re-weighted by CRF attention maps computed
    from this stack's output and from its hourglass's coarser decoder levels). The first stacks
    predict heatmaps with a 1x1 convolution of the attended features; the last ``n_part_stacks``
    add hierarchical part attention (one CRF map per joint). As in Newell et al., every stack's
    heatmaps are supervised and fed back into the next stack through 1x1 convolutions.

    Where the original PyTorch project (Naman-ntc, models/PoseAttention.py) departs from the paper,
    this follows the paper:
      * HRUs: the original defines them but never uses them (plain residuals everywhere).
      * Holistic attention: the original creates the modules but never registers or calls them,
        so no stack has holistic or multi-resolution attention; its early stacks predict with
        BN + 1x1 conv only.
      * Part attention: the original applies it to the raw stack features; the paper's hierarchy
        applies it to the holistically attended features.
      * Mean-field: the original gives each iteration its own kernel plus a BatchNorm (no weight
        sharing) and computes ``u + sigmoid(k * q)`` (sigmoid on the message only), so its maps
        are not in (0, 1); here one shared kernel per map and ``q = sigmoid(u + k * q)``.
      * Its defaults (2 stacks, 2 modules, LRNSize 1) are not the paper's (8, 1, and a spatial
        kernel).
    Not taken from the authors' Torch code: its full-resolution 7x7 stride-1 stem (the shared
    Newell stem is used) and its doubling of the last stack's width to 512.
    """

    def __init__(
        self,
        n_joints: int,
        n_channels: int,
        n_stack: int,
        n_modules: int,
        n_reductions: int,
        lrn_size: int,
        iter_size: int,
        n_part_stacks: int | None = None,
    ) -> None:
        super().__init__()
        if n_part_stacks is None:
            n_part_stacks = max(1, n_stack // 2)  # paper: stacks 5-8 of 8
        if not 0 <= n_part_stacks <= n_stack:
            raise ValueError(f"n_part_stacks must be in [0, n_stack={n_stack}], got {n_part_stacks}")
        self.part_stacks = tuple(range(n_stack - n_part_stacks, n_stack))
        self.stem = HourglassStem(n_channels)
        self.hourglasses = nn.ModuleList()
        for _ in range(n_stack):
            hourglass = Hourglass(n_reductions, n_channels, n_modules, Residual)
            nest_hourglass_residual_units(hourglass, n_channels, n_modules, n_reductions)
            self.hourglasses.append(hourglass)
        self.lin1 = nn.ModuleList(
            [
                nn.Sequential(residual_stack(n_channels, n_modules), conv_bn_relu(n_channels, n_channels, 1))
                for _ in range(n_stack)
            ]
        )
        self.lin2 = nn.ModuleList([conv_bn_relu(n_channels, n_channels, 1) for _ in range(n_stack)])
        # sources: the stack's output features plus the n_reductions - 1 coarser decoder levels
        self.holistic = nn.ModuleList(
            [MultiResolutionAttention(n_channels, n_reductions, lrn_size, iter_size) for _ in range(n_stack)]
        )
        self.heads = nn.ModuleList(
            [
                PartAttention(n_channels, n_joints, lrn_size, iter_size)
                if stack in self.part_stacks
                else nn.Conv2d(n_channels, n_joints, 1)
                for stack in range(n_stack)
            ]
        )
        self.merge_features = nn.ModuleList(
            [nn.Conv2d(n_channels, n_channels, 1) for _ in range(n_stack - 1)]
        )
        self.merge_heatmaps = nn.ModuleList([nn.Conv2d(n_joints, n_channels, 1) for _ in range(n_stack - 1)])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image)  # (N, C, H/4, W/4)
        outputs = []
        for stack, hourglass in enumerate(self.hourglasses):
            levels = hourglass.forward_levels(x)  # [(N, C, H/4, W/4), (N, C, H/8, W/8), ...]
            feature = self.lin1[stack](levels[0])  # (N, C, H/4, W/4)
            attended = self.holistic[stack](self.lin2[stack](feature), levels[1:])
            heatmaps = self.heads[stack](attended)  # (N, K, H/4, W/4)
            outputs.append(heatmaps)
            if stack < len(self.hourglasses) - 1:
                x = x + self.merge_features[stack](feature) + self.merge_heatmaps[stack](heatmaps)
        return outputs


@register_model("PoseAttention", target="heatmap", aliases=("MultiContextAttention",))
def pose_attention(
    n_joints: int = 16,
    n_channels: int = 256,
    n_stack: int = 8,
    n_modules: int = 1,
    n_reductions: int = 4,
    lrn_size: int = 11,
    iter_size: int = 3,
    n_part_stacks: int | None = None,
) -> PoseAttention:
    """Paper configuration by default: 8 stacks of 256 features, part attention in stacks 5-8
    (``n_part_stacks`` None = the last half), 3 mean-field iterations. ``lrn_size`` 11 is the CRF
    kernel of the authors' released training command (their option default, 1, would make the
    CRF a per-pixel scalar with no spatial messages)."""
    return PoseAttention(
        n_joints, n_channels, n_stack, n_modules, n_reductions, lrn_size, iter_size, n_part_stacks
    )
