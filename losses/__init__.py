"""Losses over every stage output, chosen by the model's target type."""

from __future__ import annotations

import torch
from torch import nn


class HeatmapMSELoss(nn.Module):
    """Mean squared error between each stage's heatmaps and the target, joints weighted by
    ``target_weight`` (0 for missing joints), summed over stages (intermediate supervision)."""

    def forward(
        self, outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        # outputs: S x (N, K, H, W); target (N, K, H, W); weight (N, K)
        mask = weight[:, :, None, None]
        return sum(((output - target) ** 2 * mask).mean() for output in outputs)


class RegressionL2Loss(nn.Module):
    """Squared L2 distance between predicted and target normalised coordinates of the joints
    with weight 1, averaged over joints, summed over stages (DeepPose's objective)."""

    def forward(
        self, outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        # outputs: S x (N, K, 2); target (N, K, 2); weight (N, K)
        return sum((((output - target) ** 2).sum(dim=-1) * weight).mean() for output in outputs)


def make_loss(target_type: str) -> nn.Module:
    if target_type == "heatmap":
        return HeatmapMSELoss()
    if target_type == "regression":
        return RegressionL2Loss()
    raise ValueError(f"unknown target type {target_type!r}")
