"""Chained Predictions Using Convolutional Neural Networks (Gkioxari, Toshev & Jaitly, ECCV 2016)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import resize_to, torchvision_backbone
from models.layers import ConvTranspose2d
from models.registry import register_model

# Chain orders: from the head down the torso, then each limb from its root outwards, so every joint
# is predicted after the joints it hangs from. Entries are dataset joint indices.
MPII_CHAIN = (
    9, 8, 7, 6,  # head_top, upper_neck, thorax, pelvis
    12, 11, 10, 13, 14, 15,  # right arm (shoulder, elbow, wrist), left arm
    2, 1, 0, 3, 4, 5,  # right leg (hip, knee, ankle), left leg
)  # fmt: skip
COCO_CHAIN = (
    0, 1, 2, 3, 4,  # nose, eyes, ears
    6, 8, 10, 5, 7, 9,  # right arm (shoulder, elbow, wrist), left arm
    12, 14, 16, 11, 13, 15,  # right leg (hip, knee, ankle), left leg
)  # fmt: skip
DEFAULT_CHAINS: dict[int, tuple[int, ...]] = {16: MPII_CHAIN, 17: COCO_CHAIN}

EMBED_CHANNELS = 32  # width of e(heatmap), the embedding of an earlier prediction
DECODER_CHANNELS = 32  # width inside each deception decoder
HIDDEN_STRIDE = 32  # the encoder's (a ResNet trunk's) output stride: the hidden grid is H/32 x W/32
# inputRes / outputRes values it can produce: each is reached from the hidden grid by x2 steps
# (1/4: the paper's 64x64 maps for a 256 input; 1/8: the original PyTorch project's)
OUTPUT_STRIDES = (1, 2, 4, 8, 16)


def default_chain(n_joints: int) -> tuple[int, ...]:
    """The paper-style order for MPII (16) and COCO (17) joints, index order otherwise."""
    return DEFAULT_CHAINS.get(n_joints, tuple(range(n_joints)))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MultiScaleUp(nn.Module):
    """x2 upsampling by three parallel transposed convolutions of kernel 2, 4 and 6 (padding 0, 1,
    2, so each output is exactly twice the input), summed: the multi-scale unit of 'deception'."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                ConvTranspose2d(channels, channels, k, stride=2, padding=k // 2 - 1, bias=False)
                for k in (2, 4, 6)
            ]
        )
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = sum(branch(x) for branch in self.branches)  # (N, C, 2h, 2w)
        return F.relu(self.norm(x), inplace=True)


class Deception(nn.Module):
    """Decoder m_t: hidden state (N, D, h, w) -> one heatmap (N, 1, h * 2**n_up, w * 2**n_up)."""

    def __init__(self, hidden_channels: int, n_up: int) -> None:
        super().__init__()
        self.reduce = _conv_bn_relu(hidden_channels, DECODER_CHANNELS, 1)
        self.up = nn.Sequential(*[MultiScaleUp(DECODER_CHANNELS) for _ in range(n_up)])
        # A 3x3 output layer smooths the checkerboard pattern left by stride-2 transposed convolutions.
        self.out = nn.Conv2d(DECODER_CHANNELS, 1, 3, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.reduce(hidden)))


class ChainedPredictions(nn.Module):
    """Image encoder, then one joint at a time along a chain, each conditioned on all earlier ones:

        h_0 = CNN_x(image)
        h_t = ReLU(BN(w^h_t * h_{t-1} + sum_{i<t} w^y_{i,t} * e(heatmap_i)))
        heatmap_t = m_t(h_t)

    with ``*`` a convolution (kernel ``hh_kernel`` for w^h, ``oh_kernel`` for w^y), weights untied
    across steps as in the paper's single-image model, e(.) a strided CNN shared by all joints and m_t
    a per-step multi-scale deconvolution ("deception") decoder. The sum over earlier joints is one
    convolution over their concatenated embeddings, which is the same linear map.

    Returns ``[heatmaps]``: one stage, (N, K, H/s, W/s) for ``output_stride`` s (one of
    ``OUTPUT_STRIDES``; the builder takes it from inputRes / outputRes), in the dataset's joint order.

    Differences from the paper: the encoder is a torchvision ResNet trunk (the paper used an
    ImageNet-pretrained Inception network); the output is a Gaussian heatmap per joint trained with
    MSE (this framework's target), not a softmax over locations with cross-entropy; predictions are
    fed back as heatmaps with gradients flowing through the chain; BatchNorm is added to the
    recurrence for trainability. Differences from the original PyTorch project: that one fixed the
    hidden grid to 8x8 and the output to H/8, gave each (earlier joint, step) pair its own embedding
    CNN instead of one shared e(.), defaulted to 1x1 recurrent kernels and chained joints in index
    order; here the hidden grid is H/32 x W/32 for any input, the output stride follows the config
    (1/8 as in that project's configs, 1/4 as in the paper) and the chain runs head to limbs.
    """

    def __init__(
        self,
        n_joints: int,
        model_name: str,
        hh_kernel: int,
        oh_kernel: int,
        pretrained_path: str | None,
        hidden_channels: int,
        chain_order: Sequence[int] | None,
        output_stride: int = 4,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride}"
            )
        # x2 steps between the hidden grid and the heatmap: 3 for 1/4, 2 for 1/8
        steps = (HIDDEN_STRIDE // output_stride).bit_length() - 1
        self.output_stride = output_stride
        for name, kernel in (("hh_kernel", hh_kernel), ("oh_kernel", oh_kernel)):
            if kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"{name} must be an odd kernel size >= 1, got {kernel}")
        order = tuple(int(j) for j in (chain_order if chain_order is not None else default_chain(n_joints)))
        if sorted(order) != list(range(n_joints)):
            raise ValueError(f"chain_order must be a permutation of 0..{n_joints - 1}, got {order}")
        self.n_joints = n_joints
        self.chain_order = order

        self.encoder, encoder_channels = torchvision_backbone(model_name, pretrained_path)
        self.init_hidden = _conv_bn_relu(encoder_channels, hidden_channels, 1)
        # e(.): heatmap at H/s -> embedding at the hidden grid H/32 (``steps`` stride-2 convolutions)
        self.embed = nn.Sequential(
            _conv_bn_relu(1, EMBED_CHANNELS, 3, stride=2),
            *[_conv_bn_relu(EMBED_CHANNELS, EMBED_CHANNELS, 3, stride=2) for _ in range(steps - 1)],
        )
        # Step t (t >= 1) has its own w^h_t and, over the t earlier embeddings, its own w^y_{i,t}.
        self.hidden_to_hidden = nn.ModuleList(
            [
                nn.Conv2d(hidden_channels, hidden_channels, hh_kernel, padding=hh_kernel // 2, bias=False)
                for _ in range(1, n_joints)
            ]
        )
        self.output_to_hidden = nn.ModuleList(
            [
                nn.Conv2d(t * EMBED_CHANNELS, hidden_channels, oh_kernel, padding=oh_kernel // 2, bias=False)
                for t in range(1, n_joints)
            ]
        )
        self.hidden_norm = nn.ModuleList([nn.BatchNorm2d(hidden_channels) for _ in range(1, n_joints)])
        self.decoders = nn.ModuleList([Deception(hidden_channels, n_up=steps) for _ in range(n_joints)])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        height, width = image.shape[-2:]
        grid = (math.ceil(height / HIDDEN_STRIDE), math.ceil(width / HIDDEN_STRIDE))
        out_size = (height // self.output_stride, width // self.output_stride)
        # ResNet features are exactly H/32 x W/32 for inputs divisible by 32; Inception's are not.
        features = resize_to(self.encoder(image), grid)  # (N, C, H/32, W/32)
        hidden = self.init_hidden(features)  # (N, D, H/32, W/32)

        heatmaps: list[torch.Tensor | None] = [None] * self.n_joints
        embeddings: list[torch.Tensor] = []
        for step, joint in enumerate(self.chain_order):
            if step > 0:
                recurrent = self.hidden_to_hidden[step - 1](hidden)  # (N, D, H/32, W/32)
                earlier = torch.cat(embeddings, dim=1)  # (N, t*E, H/32, W/32)
                conditioned = self.output_to_hidden[step - 1](earlier)  # (N, D, H/32, W/32)
                hidden = F.relu(self.hidden_norm[step - 1](recurrent + conditioned))
            heatmap = resize_to(self.decoders[step](hidden), out_size)  # (N, 1, H/s, W/s)
            heatmaps[joint] = heatmap
            if step < self.n_joints - 1:
                embeddings.append(resize_to(self.embed(heatmap), grid))  # (N, E, H/32, W/32)
        return [torch.cat(heatmaps, dim=1)]  # [(N, K, H/s, W/s)]


@register_model("ChainedPredictions", target="heatmap", output_strides=OUTPUT_STRIDES)
def chained_predictions(
    n_joints: int = 16,
    model_name: str = "resnet50",
    hh_kernel: int = 3,
    oh_kernel: int = 3,
    pretrained_path: str | None = None,
    hidden_channels: int = 128,
    chain_order: Sequence[int] | None = None,
    input_res: int = 256,
    output_res: int = 64,
) -> ChainedPredictions:
    """Chained Predictions with a torchvision encoder (resnet18/34/50/101/152 or inception_v3).

    ``model_name`` defaults to resnet50, the torchvision ResNet closest in depth and cost to the
    paper's Inception encoder. ``hh_kernel`` / ``oh_kernel`` are the kernel sizes of the
    hidden-to-hidden and output-to-hidden convolutions (3x3: the recurrences are spatial, so an
    earlier joint's position can move evidence for the next one across neighbouring cells).
    ``chain_order`` lists dataset joint indices in prediction order (default: head, torso, then
    arms and legs from the root outwards for MPII/COCO; index order for other joint sets).
    ``input_res / output_res`` (the config's inputRes / outputRes) is the output stride: heatmaps
    of 1/4 of the input (the paper's 64x64 for 256) or 1/8 (the original project's configs).
    """
    return ChainedPredictions(
        n_joints,
        model_name,
        hh_kernel,
        oh_kernel,
        pretrained_path,
        hidden_channels,
        chain_order,
        output_stride=input_res // output_res,
    )
