"""Simple Baselines for Human Pose Estimation and Tracking (Xiao, Wu & Wei, ECCV 2018)."""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import torchvision_backbone
from models.layers import ConvTranspose2d, init_heatmap_decoder
from models.pixels import InputNorm
from models.registry import register_model

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DECONV_KERNEL = 4  # with stride 2 and padding 1 a transposed convolution doubles the size exactly
HEAD_INIT_STD = 0.001  # the authors' initialisation of the deconvolutions and the head


def deconv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """(N, C_in, h, w) -> (N, C_out, 2h, 2w): transposed 4x4 convolution (stride 2, no bias, as
    BatchNorm follows), BatchNorm, ReLU."""
    return nn.Sequential(
        ConvTranspose2d(in_channels, out_channels, DECONV_KERNEL, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SimpleBaseline(nn.Module):
    """A torchvision ResNet without its classifier, ``n_deconv`` transposed convolutions that each
    double the resolution, and a 1x1 convolution to one heatmap per joint. With the paper's three
    deconvolutions the heatmaps are 1/4 of the input (64x48 for 256x192): (N, 3, H, W) ->
    [(N, K, H/32 * 2^n_deconv, W/32 * 2^n_deconv)], one stage. H and W must be multiples of 32.

    Equal to the authors' network (microsoft/human-pose-estimation.pytorch, ``pose_resnet.py``,
    PyTorch-style ResNet with the stride in the 3x3 convolution, 4x4 deconvolutions without bias,
    1x1 head), tensor for tensor; ``models.import_weights simplebaseline`` converts their weights.
    Initialisation as theirs: ImageNet weights for the ResNet (here only from a local copy, see
    ``models.backbones``; without one it starts from torchvision's He initialisation and says so),
    N(0, 0.001) for the deconvolutions and the head, BatchNorm at 1 and 0.

    Deviations from the authors' code: their "caffe-style" ResNet variant (stride in the first 1x1
    convolution) and deconvolution kernels of 2 or 3 are not offered. ``input_norm`` converts the
    pipeline's ImageNet-normalised RGB to the format imported weights expect (their code feeds BGR,
    see ``models.pixels``); a model trained here keeps ``imagenet``.
    """

    def __init__(
        self,
        n_joints: int,
        base_name: str,
        n_deconv: int,
        deconv_filters: int,
        pretrained_path: str | None,
        input_norm: str,
    ) -> None:
        super().__init__()
        if base_name not in RESNETS:
            raise ValueError(
                f"SimpleBaseline needs a ResNet backbone ({', '.join(RESNETS)}), got {base_name!r}"
            )
        if n_deconv < 1 or deconv_filters < 1:
            raise ValueError(f"n_deconv and deconv_filters must be >= 1, got {n_deconv} and {deconv_filters}")
        self.input_norm = InputNorm(input_norm)
        self.trunk, channels = torchvision_backbone(base_name, pretrained_path)
        widths = [channels] + [deconv_filters] * n_deconv
        self.deconvs = nn.Sequential(
            *[deconv_bn_relu(a, b) for a, b in zip(widths, widths[1:], strict=False)]
        )
        self.head = nn.Conv2d(deconv_filters, n_joints, 1)
        init_heatmap_decoder([*self.deconvs.modules(), self.head], HEAD_INIT_STD)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = self.trunk(self.input_norm(image))  # (N, C, H/32, W/32)
        features = self.deconvs(features)  # (N, F, H/32 * 2^n, W/32 * 2^n)
        return [self.head(features)]  # [(N, K, H/4, W/4)] with three deconvolutions


# no output_strides: the stride is 32 / 2^nDeconv, which a fixed list cannot state (the built output is checked)
@register_model("SimpleBaseline", target="heatmap")
def simple_baseline(
    n_joints: int = 17,
    base_name: str = "resnet50",
    n_deconv: int = 3,
    deconv_filters: int = 256,
    pretrained_path: str | None = None,
    input_norm: str = "imagenet",
) -> SimpleBaseline:
    """The paper's network by default: ResNet-50, three 4x4 deconvolutions of 256 filters.
    ``base_name`` is resnet18/34/50/101/152; ``pretrained_path`` a local ImageNet weights file
    (default: torchvision's cache, never downloaded)."""
    return SimpleBaseline(n_joints, base_name, n_deconv, deconv_filters, pretrained_path, input_norm)
