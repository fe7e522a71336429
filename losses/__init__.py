"""Losses over every stage output, chosen by the codec's target type (the codec carries what a
loss needs to read its targets: the SimCC vectors' split, the compositional levels' slices)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from datasets.codecs import Codec


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


class SimCCKLLoss(nn.Module):
    """MMPose's ``KLDiscretLoss`` as RTMPose trains with it (beta 10, label softmax, target weights):
    per joint and axis, KL(softmax(beta_label x label) || softmax(beta x logits)) averaged over the
    bins, weighted by ``target_weight``, summed over the batch and both axes, divided by K; summed
    over stages. The sum over the batch (not a mean) is MMPose's, so the authors' learning rates
    apply at their per-GPU batch size."""

    def __init__(self, x_bins: int, beta: float = 10.0, label_beta: float = 10.0) -> None:
        super().__init__()
        self.x_bins, self.beta, self.label_beta = x_bins, beta, label_beta

    def forward(
        self, outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        # outputs: S x (N, K, Wx + Wy) logits; target (N, K, Wx + Wy) labels; weight (N, K)
        labels = target.float().split([self.x_bins, target.shape[-1] - self.x_bins], dim=-1)
        labels = [F.softmax(label * self.label_beta, dim=-1) for label in labels]
        total = 0.0
        for output in outputs:
            logits = output.float().split([self.x_bins, output.shape[-1] - self.x_bins], dim=-1)
            for logit, label in zip(logits, labels, strict=True):
                log_p = F.log_softmax(logit * self.beta, dim=-1)
                divergence = F.kl_div(log_p, label, reduction="none").mean(dim=-1)  # (N, K)
                total = total + (divergence * weight).sum()
        return total / target.shape[1]


class CompositionalMSELoss(nn.Module):
    """DLCM's intermediate supervision: each stage's maps against its level's slice of the target
    (``stage_levels[s]`` is stage s's level, ``level_slices[l]`` level l's channels), weighted per
    map by ``target_weight``; per stage the mean squared error over its elements, as
    :class:`HeatmapMSELoss` (and the authors' MSE criterion per output), summed over stages."""

    def __init__(self, level_slices: tuple[slice, ...], stage_levels: tuple[int, ...]) -> None:
        super().__init__()
        self.level_slices, self.stage_levels = level_slices, stage_levels

    def forward(
        self, outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        # outputs: S x (N, K_l, H, W); target (N, K0 + K1 + ..., H, W); weight (N, K0 + K1 + ...)
        if len(outputs) != len(self.stage_levels):
            raise ValueError(
                f"{len(outputs)} stage outputs for {len(self.stage_levels)} stages (levels {self.stage_levels})"
            )
        total = 0.0
        for output, level in zip(outputs, self.stage_levels, strict=True):
            maps = self.level_slices[level]
            total = total + ((output - target[:, maps]) ** 2 * weight[:, maps, None, None]).mean()
        return total


def make_loss(codec: Codec) -> nn.Module:
    """The loss of ``codec``'s target type: the one its codec names (``Codec.loss``)."""
    return codec.loss()
