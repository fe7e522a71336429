"""Stacked Hourglass Networks (Newell, Yang & Deng, ECCV 2016)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import BlockFactory, Hourglass, Residual, conv_bn_relu, residual_stack
from models.pixels import InputNorm
from models.registry import register_model


@dataclasses.dataclass(frozen=True)
class HourglassSizes:
    """The sizes of every model of the hourglass family (StackedHourGlass, PyraNet,
    PoseAttention), with the paper's configuration as defaults: 8 stacks of 256 features, one
    residual per step, 4 reductions (64x64 -> 4x4 inside each hourglass for a 256x256 input)."""

    n_joints: int = 16
    n_channels: int = 256
    n_stack: int = 8
    n_modules: int = 1
    n_reductions: int = 4


def register_hourglass_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``build(sizes, **own_options)`` as model ``name`` of the hourglass family.

    The builder the registry (and a caller) sees takes, by keyword, the fields of
    :class:`HourglassSizes` with their defaults and then ``build``'s own options; its signature
    says so, as the registry reads it. Every model of the family has a stem that takes the input
    to 1/4, where the hourglasses work and the heatmaps come out, and halves its heatmap-sized
    features ``nReductions`` times."""
    sizes = [
        inspect.Parameter(
            field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=field.type
        )
        for field in dataclasses.fields(HourglassSizes)
    ]

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        signature = inspect.signature(build)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in list(signature.parameters.values())[1:]
        ]

        @functools.wraps(build)
        def builder(**options: Any) -> nn.Module:
            given = {size.name: options.pop(size.name) for size in sizes if size.name in options}
            return build(HourglassSizes(**given), **options)

        builder.__signature__ = signature.replace(parameters=[*sizes, *own])  # what the registry reads
        register_model(name, target="heatmap", output_strides=(4,), heatmap_halvings="nReductions")(builder)
        return builder

    return decorate


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
        sizes: HourglassSizes,
        block: BlockFactory = Residual,
        input_norm: str = "imagenet",
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        n_joints, n_channels, n_stack, n_modules, n_reductions = dataclasses.astuple(sizes)
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


@register_hourglass_model("StackedHourGlass")
def stacked_hourglass(
    sizes: HourglassSizes, input_norm: str = "imagenet", stem_channels: int | None = None
) -> StackedHourglass:
    """Paper configuration by default (see :class:`HourglassSizes`). ``stem_channels``: the stem's
    first width (None: n_channels / 4); models.import_weights sets the port's 64 for other widths."""
    return StackedHourglass(sizes, input_norm=input_norm, stem_channels=stem_channels)
