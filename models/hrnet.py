"""HRNet: Deep High-Resolution Representation Learning for Human Pose Estimation (Sun, Xiao, Liu &
Wang, CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.pixels import InputNorm
from models.registry import register_model

STEM_WIDTH = 64  # the stem's two stride-2 convolutions and the first stage's bottleneck width
STAGE1_BLOCKS = 4  # bottlenecks of the first stage, 64 -> 256 channels
STAGE_MODULES = (1, 4, 3)  # high-resolution modules of stages 2, 3 and 4 (2, 3 and 4 branches)
BRANCH_BLOCKS = 4  # basic blocks per branch in every module
HEAD_INIT_STD = 0.001  # the authors' initialisation of the heatmap convolution


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    """Conv (no bias: BatchNorm follows) -> BatchNorm [-> ReLU]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches, branch b at 1/2^b the resolution of branch 0 with ``widths[b]`` channels,
    each ``n_blocks`` basic blocks deep, then a fusion: output i sums every branch brought to its
    resolution and width. A lower-resolution branch j > i: 1x1 conv + BN, then nearest-neighbour
    upsampling; a higher-resolution branch j < i: i - j stride-2 3x3 conv + BN steps (ReLU between
    them, not after the last). ReLU after the sum. ``n_outputs`` < len(widths) fuses only the first
    outputs (the network's last module keeps only the highest resolution)."""

    def __init__(self, widths: list[int], n_blocks: int, n_outputs: int) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock  # here: importing torchvision costs 3 s

        self.branches = nn.ModuleList(
            [nn.Sequential(*[BasicBlock(width, width) for _ in range(n_blocks)]) for width in widths]
        )
        self.fuse = nn.ModuleList()
        for i in range(n_outputs):
            row = nn.ModuleList()
            for j, width in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(conv_bn(width, widths[i], 1, 1, relu=False))
                else:
                    steps = [conv_bn(width, width, 3, 2, relu=True) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, conv_bn(width, widths[i], 3, 2, relu=False)))
            self.fuse.append(row)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = [
            branch(x) for branch, x in zip(self.branches, features, strict=True)
        ]  # (N, C_b, H_b, W_b)
        fused = []
        for i, row in enumerate(self.fuse):
            size = features[i].shape[-2:]
            total = None
            for j, (layer, x) in enumerate(zip(row, features, strict=True)):
                y = layer(x)
                if j > i:
                    # to the exact size, not by 2^(j - i): equal for sizes divisible by 32, and odd
                    # sizes (whose stride-2 convolutions round up) still line up
                    y = F.interpolate(y, size=size, mode="nearest")
                total = y if total is None else total + y  # summed in branch order, as the authors do
            fused.append(F.relu(total))
        return fused


class HRNet(nn.Module):
    """Stem (two stride-2 3x3 convolutions, 64 channels), stage 1 (four bottlenecks, 256 channels,
    at 1/4 of the input), then stages 2-4 with 2, 3 and 4 parallel branches of width ``width``,
    2x, 4x and 8x at 1/4, 1/8, 1/16 and 1/32 of the input, made of 1, 4 and 3 high-resolution
    modules; each new branch comes from the previous stage's lowest-resolution one through a
    stride-2 3x3 convolution. Heatmaps: a 1x1 convolution on the highest-resolution branch.
    (N, 3, H, W) -> [(N, K, H/4, W/4)], one stage.

    Equal to the authors' network (leoxiaobin/deep-high-resolution-net.pytorch, ``pose_hrnet.py``
    with the ``w32_*``/``w48_*`` experiment configs) tensor for tensor: 28,536,113 parameters for
    W32 with 17 joints. ``models.import_weights hrnet`` converts their weights.

    Deviations: the authors initialise every convolution N(0, 0.001) and then load an ImageNet-
    trained HRNet into everything but the head. That classification network is not available
    here, so the trunk starts from He initialisation (fan-out, as torchvision's ResNets): their
    N(0, 0.001) was only ever a placeholder under the ImageNet weights, and He initialisation is
    the usual start from scratch for BatchNorm ResNets. The head is N(0, 0.001) as theirs. Upsampling goes to the exact size of the target branch (the authors upsample by
    2^(j - i)); the two agree whenever H and W are divisible by 32. ``input_norm`` as for
    SimpleBaseline (see ``models.pixels``); their HRNet configs feed ImageNet-normalised RGB.
    """

    def __init__(self, n_joints: int, width: int, input_norm: str) -> None:
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        if width < 1:
            raise ValueError(f"hrnet width must be >= 1, got {width}")
        self.input_norm = InputNorm(input_norm)
        self.stem = nn.Sequential(
            conv_bn(3, STEM_WIDTH, 3, 2, relu=True),
            conv_bn(STEM_WIDTH, STEM_WIDTH, 3, 2, relu=True),
        )
        wide = STEM_WIDTH * Bottleneck.expansion
        project = conv_bn(STEM_WIDTH, wide, 1, 1, relu=False)  # the first bottleneck's skip: 64 -> 256
        self.stage1 = nn.Sequential(
            Bottleneck(STEM_WIDTH, STEM_WIDTH, downsample=project),
            *[Bottleneck(wide, STEM_WIDTH) for _ in range(STAGE1_BLOCKS - 1)],
        )
        widths = [width * 2**branch for branch in range(len(STAGE_MODULES) + 1)]
        # into stage 2: the 256-channel map to branch 0 (same resolution) and branch 1 (half);
        # into stages 3 and 4: one new branch from the lowest-resolution one
        self.transitions = nn.ModuleList(
            [
                nn.ModuleList(
                    [conv_bn(wide, widths[0], 3, 1, relu=True), conv_bn(wide, widths[1], 3, 2, relu=True)]
                ),
                nn.ModuleList([conv_bn(widths[1], widths[2], 3, 2, relu=True)]),
                nn.ModuleList([conv_bn(widths[2], widths[3], 3, 2, relu=True)]),
            ]
        )
        self.stages = nn.ModuleList()
        for stage, n_modules in enumerate(STAGE_MODULES):
            branches = widths[: stage + 2]
            last_stage = stage == len(STAGE_MODULES) - 1
            self.stages.append(
                nn.Sequential(
                    *[
                        HighResolutionModule(
                            branches,
                            BRANCH_BLOCKS,
                            1 if last_stage and index == n_modules - 1 else len(branches),
                        )
                        for index in range(n_modules)
                    ]
                )
            )
        self.head = nn.Conv2d(widths[0], n_joints, 1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage1(self.stem(self.input_norm(image)))  # (N, 256, H/4, W/4)
        features = [transition(x) for transition in self.transitions[0]]  # 2 x (N, C_b, H/4/2^b, W/4/2^b)
        features = self.stages[0](features)
        for transition, stage in zip(self.transitions[1:], self.stages[1:], strict=True):
            features = stage([*features, transition[0](features[-1])])  # one more, lower branch
        return [self.head(features[0])]  # [(N, K, H/4, W/4)]


# heatmaps come from the branch at 1/4 of the input; its stride-2 convolutions pad, so no grid is too small
@register_model("HRNet", target="heatmap", output_strides=(4,))
def hrnet(n_joints: int = 17, hrnet_width: int = 32, input_norm: str = "imagenet") -> HRNet:
    """HRNet-W32 by default; the authors published W32 and W48 (``hrnet_width`` 48)."""
    return HRNet(n_joints, hrnet_width, input_norm)
