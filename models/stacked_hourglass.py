"""Stacked Hourglass Networks (Newell, Yang & Deng, ECCV 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import BlockFactory, Hourglass, Residual, conv_bn_relu, residual_stack
from models.pixels import InputNorm
from models.registry import register_model


class HourglassStem(nn.Module):
    """Input (N, 3, H, W) -> features (N, C, H/4, W/4): 7x7 stride-2 conv, residual, max-pool,
    two residuals. Widths follow the paper (64, 128, 128, 256 for C = 256) scaled with C, unless
    ``stem_channels`` S sets them to (S, 2S, 2S, C): Newell et al.'s PyTorch port keeps S = 64 at
    every C."""

    def __init__(
        self, channels: int, block: BlockFactory = Residual, stem_channels: int | None = None
    ) -> None:
        super().__init__()
        quarter, half = max(channels // 4, 8), max(channels // 2, 8)
        if stem_channels is not None:
            quarter, half = stem_channels, 2 * stem_channels
        self.conv = conv_bn_relu(3, quarter, 7, stride=2)
        self.res1 = block(quarter, half)
        self.res2 = block(half, half)
        self.res3 = block(half, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(self.conv(x))  # (N, C/2, H/2, W/2)
        return self.res3(self.res2(F.max_pool2d(x, 2)))  # (N, C, H/4, W/4)


class StackedHourglass(nn.Module):
    """``n_stack`` hourglasses, each predicting heatmaps that are supervised (intermediate
    supervision) and fed back into the next stack through 1x1 convolutions.

    ``input_norm``: the pixel scale the weights expect. The data pipeline always hands over
    ImageNet-normalised RGB; "unit" turns that back into RGB in [0, 1] first, for weights trained
    that way (Newell et al.'s PyTorch port feeds image / 255); see models/pixels.py.
    """

    def __init__(
        self,
        n_joints: int,
        n_channels: int,
        n_stack: int,
        n_modules: int,
        n_reductions: int,
        block: BlockFactory = Residual,
        input_norm: str = "imagenet",
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.input_norm = InputNorm(input_norm)  # a ValueError for an unknown format
        self.stem = HourglassStem(n_channels, block, stem_channels)
        self.hourglasses = nn.ModuleList(
            [Hourglass(n_reductions, n_channels, n_modules, block) for _ in range(n_stack)]
        )
        self.features = nn.ModuleList(
            [
                nn.Sequential(
                    residual_stack(n_channels, n_modules, block), conv_bn_relu(n_channels, n_channels, 1)
                )
                for _ in range(n_stack)
            ]
        )
        self.heads = nn.ModuleList([nn.Conv2d(n_channels, n_joints, 1) for _ in range(n_stack)])
        self.merge_features = nn.ModuleList(
            [nn.Conv2d(n_channels, n_channels, 1) for _ in range(n_stack - 1)]
        )
        self.merge_heatmaps = nn.ModuleList([nn.Conv2d(n_joints, n_channels, 1) for _ in range(n_stack - 1)])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(self.input_norm(image))  # (N, C, H/4, W/4)
        outputs = []
        for stack, (hourglass, features, head) in enumerate(
            zip(self.hourglasses, self.features, self.heads, strict=True)
        ):
            feature = features(hourglass(x))
            heatmaps = head(feature)  # (N, K, H/4, W/4)
            outputs.append(heatmaps)
            if stack < len(self.heads) - 1:
                x = x + self.merge_features[stack](feature) + self.merge_heatmaps[stack](heatmaps)
        return outputs


# the stem takes the input to 1/4, where the hourglasses work and the heatmaps come out
@register_model("StackedHourGlass", target="heatmap", output_strides=(4,), heatmap_halvings="nReductions")
def stacked_hourglass(
    n_joints: int = 16,
    n_channels: int = 256,
    n_stack: int = 8,
    n_modules: int = 1,
    n_reductions: int = 4,
    input_norm: str = "imagenet",
    stem_channels: int | None = None,
) -> StackedHourglass:
    """Paper configuration by default: 8 stacks, 256 features, 1 residual per step, 4 reductions
    (64x64 -> 4x4 inside each hourglass for a 256x256 input). ``stem_channels``: the stem's first
    width (None: n_channels / 4); models.import_weights sets the port's 64 for other widths."""
    return StackedHourglass(
        n_joints,
        n_channels,
        n_stack,
        n_modules,
        n_reductions,
        input_norm=input_norm,
        stem_channels=stem_channels,
    )
