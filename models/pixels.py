"""The pixel format a network's weights expect, made from what the data pipeline hands over.

The pipeline always feeds ImageNet-normalised RGB: (rgb / 255 - mean) / std, channel by channel.
Weights trained elsewhere may expect something else; converting inside the network keeps one data
pipeline for every model, and an ONNX export carries the conversion in its graph.
"""

from __future__ import annotations

import torch
from torch import nn

from datasets.base import IMAGENET_MEAN, IMAGENET_STD

# imagenet: as the pipeline gives it; unit: RGB in [0, 1] (Newell et al.'s PyTorch port feeds
# image / 255); bgr: OpenCV's BGR channel order normalised with ImageNet's RGB-ordered mean and std,
# what Simple Baselines' code feeds its network (cv2.imread without a colour conversion).
INPUT_NORMS = ("imagenet", "unit", "bgr")


class InputNorm(nn.Module):
    """(N, 3, H, W) ImageNet-normalised RGB -> (N, 3, H, W) in the format ``mode`` names."""

    def __init__(self, mode: str = "imagenet") -> None:
        super().__init__()
        if mode not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {mode!r}")
        self.mode = mode
        # not persistent: constants of the input format, not learnt weights (no state-dict keys)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.mode == "imagenet":
            return image
        mean, std = self.mean.to(image.dtype), self.std.to(image.dtype)
        unit = image * std + mean  # (N, 3, H, W) RGB in [0, 1]
        if self.mode == "unit":
            return unit
        return (unit.flip(1) - mean) / std  # BGR, each channel normalised with the RGB-ordered statistics

    def extra_repr(self) -> str:
        return self.mode
