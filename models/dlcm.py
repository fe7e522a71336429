"""Deeply Learned Compositional Models (DLCM; Tang, Yu & Wu, "Deeply Learned Compositional Models
for Human Pose Estimation", ECCV 2018).

A hierarchy of parts (:class:`datasets.skeletons.PartHierarchy`: MPII's 16 joints, 12 parts of one
bone, 6 parts of two parts) is inferred bottom-up, level by level, then refined top-down, one
hourglass stage per step, each predicting its level's score maps under its own supervision: for
three levels the stages predict levels 0, 1, 2, 1, 0, and the last one, the joints, is the
prediction. The targets, the loss and the decoding are the "compositional" target type's
(:class:`datasets.codecs.CompositionalCodec`, :class:`losses.CompositionalMSELoss`).

Built from the project's hourglass blocks (``models.layers``). Where the paper is silent the
authors' Torch code is followed, as far as its derivative idotc/DLMSCM keeps it (its first commit
holds DLCM's own training scripts, ``train_dlcm_l3.sh``; its network file adds multi-scale modules
and is read for the wiring only):

- stem: the Stacked Hourglass stem (7x7 stride-2 convolution, residual, max-pool, two residuals:
  256x256 -> 64x64 features), the network DLCM builds on;
- each stage: an hourglass of ``n_reductions`` halvings with ``n_modules`` residuals per step,
  then a 1x1 convolution-BatchNorm-ReLU and a 1x1 convolution to the level's K_l maps (the
  authors' wiring, as DLMSCM keeps it, has the residual there commented out);
- between stages, as in stacked hourglasses: features += 1x1(stage features) + 1x1(stage maps);
- a top-down stage of level l takes the bottom-up stage's maps of the same level, concatenated
  with the running features narrowed to C - K_l channels by a residual module (the authors'
  wiring); the level above reaches it through the running features. So ``n_channels`` must exceed
  every level's map count below the top.

Departures from the paper and from the authors' release, and why:

- The authors' training scripts predict, at every level above the joints, the joints' maps as
  well (``-catPartEnds true``: K_l + K_0 maps per stage). The paper's network has each stage
  predict its own level's maps, which is what is built here; the extra maps are a choice of the
  release's training scripts.
- Bone maps are a Gaussian of the exact distance to the bone, where the authors' code stamps the
  joints' Gaussian at the pixels a Bresenham line visits (the same maps up to the line's
  rasterisation; see ``datasets.codecs.bone_maps``). A bone with a joint off the heatmap is
  still drawn and supervised while it passes within 3 sigma of the map, where their code leaves
  it out (see ``datasets.codecs.CompositionalCodec``).
- The authors also shear images in augmentation (probability 0.5), which this project does not.
- Initialisation is PyTorch's default (the authors' Torch code used Torch's).
- Training (conf/models/DLCM.defconf) takes their script's settings; their batch of 16 was split
  over 4 GPUs, so their BatchNorm saw 4 images at a time (``torchrun --nproc_per_node 4`` with
  ``data_loader_size 4`` does the same here).
"""

from __future__ import annotations

import torch
from torch import nn

from datasets.skeletons import MPII_JOINTS, PartHierarchy
from models.layers import Hourglass, Residual, conv_bn_relu
from models.registry import register_model
from models.stacked_hourglass import HourglassStem


class DLCM(nn.Module):
    """One hourglass stage per entry of ``hierarchy.stage_levels``; returns every stage's maps,
    (N, K_l, H/4, W/4) for stage level l, in that order (bottom-up, then top-down)."""

    def __init__(
        self, hierarchy: PartHierarchy, n_channels: int = 256, n_modules: int = 1, n_reductions: int = 4
    ) -> None:
        super().__init__()
        self.stage_levels = hierarchy.stage_levels
        self.num_levels = hierarchy.num_levels
        sizes = [hierarchy.sizes[level] for level in self.stage_levels]
        stages = len(self.stage_levels)
        self.stem = HourglassStem(n_channels)
        self.hourglasses = nn.ModuleList(
            [Hourglass(n_reductions, n_channels, n_modules) for _ in range(stages)]
        )
        self.features = nn.ModuleList([conv_bn_relu(n_channels, n_channels, 1) for _ in range(stages)])
        self.heads = nn.ModuleList([nn.Conv2d(n_channels, size, 1) for size in sizes])
        self.merge_features = nn.ModuleList([nn.Conv2d(n_channels, n_channels, 1) for _ in range(stages - 1)])
        self.merge_maps = nn.ModuleList([nn.Conv2d(size, n_channels, 1) for size in sizes[:-1]])
        # top-down stages: the running features narrowed to make room for the bottom-up maps
        self.narrow = nn.ModuleList(
            [Residual(n_channels, n_channels - size) for size in sizes[self.num_levels :]]
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image)  # (N, C, H/4, W/4)
        outputs: list[torch.Tensor] = []
        bottom_up: dict[int, torch.Tensor] = {}
        for stage, level in enumerate(self.stage_levels):
            if stage >= self.num_levels:  # top-down: beside the bottom-up maps of this level
                x = torch.cat([bottom_up[level], self.narrow[stage - self.num_levels](x)], dim=1)
            feature = self.features[stage](self.hourglasses[stage](x))
            maps = self.heads[stage](feature)  # (N, K_level, H/4, W/4)
            outputs.append(maps)
            bottom_up.setdefault(level, maps)
            if stage < len(self.stage_levels) - 1:
                x = x + self.merge_features[stage](feature) + self.merge_maps[stage](maps)
        return outputs


@register_model("DLCM", target="compositional", output_strides=(4,), heatmap_halvings="nReductions")
def dlcm(
    hierarchy: PartHierarchy | None = None,
    n_joints: int | None = None,
    n_channels: int = 256,
    n_modules: int = 1,
    n_reductions: int = 4,
) -> DLCM:
    """The paper's configuration by default: MPII's three-level hierarchy (5 stages), 256
    features, one residual per hourglass step, 4 halvings (64x64 -> 4x4 for a 256x256 input).

    ``hierarchy``: the run's joint set's (the options' derived ``hierarchy``); ``n_joints``, when
    given, must be its joint count."""
    hierarchy = hierarchy if hierarchy is not None else MPII_JOINTS.hierarchy
    if n_joints is not None and n_joints != hierarchy.sizes[0]:
        raise ValueError(
            f"n_joints: {n_joints} joints, but the part hierarchy's level 0 has {hierarchy.sizes[0]}"
        )
    widest = max(hierarchy.sizes[:-1])
    if n_channels <= widest:
        raise ValueError(
            f"n_channels: {n_channels} leaves no room beside the {widest} maps a top-down stage sets beside "
            f"its features; use n_channels > {widest}"
        )
    return DLCM(hierarchy, n_channels, n_modules, n_reductions)
