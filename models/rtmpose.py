"""RTMPose: Real-Time Multi-Person Pose Estimation based on MMPose (Jiang, Lu, Zhang, Ma, Han, Lyu,
Li & Chen, arXiv 2303.07399, 2023): a CSPNeXt backbone (RTMDet's, Lyu et al. 2022) and the RTMCC
head, which turns the coarsest feature map into one token per joint, mixes the tokens with a gated
attention unit and classifies each token's x and y coordinates into SimCC bins."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.pixels import InputNorm
from models.registry import register_model

# size letter -> (deepen factor, widen factor), the authors' configs
# (configs/body_2d_keypoint/rtmpose/coco/rtmpose-{t,s,m,l}_8xb256-420e_coco-256x192.py)
SIZES = {"t": (0.167, 0.375), "s": (0.33, 0.5), "m": (0.67, 0.75), "l": (1.0, 1.0)}
# CSPNeXt's P5 layout at both factors 1: (input width, output width, CSP blocks, identity inside the
# blocks, SPP before the CSP layer), one row per stride-2 stage
P5_STAGES = (
    (64, 128, 3, True, False),
    (128, 256, 6, True, False),
    (256, 512, 6, True, False),
    (512, 1024, 3, False, True),
)
EXPAND_RATIO = 0.5  # a CSP layer's two halves, each this fraction of its width
BLOCK_KERNEL = 5  # a CSPNeXt block's depthwise convolution
SPP_KERNELS = (5, 9, 13)
STRIDE = 32  # the backbone halves the input five times; the head reads that map only
# The configs pass norm_cfg=dict(type='SyncBN'), which replaces CSPNeXt's default BatchNorm settings
# (momentum 0.03, eps 1e-3) as a whole: the released weights ran with PyTorch's defaults
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
HEAD_KERNEL = 7  # final_layer_kernel_size: the conv from the features to one map per joint
HIDDEN = 256  # gau_cfg hidden_dims: the width of a joint token
GAU_S = 128  # gau_cfg s: the width of the shared query/key base
GAU_EXPANSION = 2  # gau_cfg expansion_factor: u and v are 2 x 256 wide
SCALE_NORM_EPS = 1e-5
HEAD_CONV_STD, HEAD_LINEAR_STD = 0.001, 0.01  # RTMCCHead.default_init_cfg


def size_factors(size: str) -> tuple[float, float]:
    """(deepen, widen) of RTMPose-``size``; ValueError naming ``rtmpose_size`` otherwise."""
    if size not in SIZES:
        raise ValueError(f"rtmpose_size must be one of {', '.join(SIZES)}, got {size!r}")
    return SIZES[size]


def stage_layout(size: str) -> tuple[int, list[tuple[int, int, int, bool, bool]]]:
    """RTMPose-``size``'s stem width and its four stages as (in, out, blocks, identity, spp), computed
    as CSPNeXt does (``int`` of the scaled width, ``max(round(blocks x deepen), 1)``)."""
    deepen, widen = size_factors(size)
    stem = int(P5_STAGES[0][0] * widen // 2)
    stages = [
        (int(n_in * widen), int(n_out * widen), max(round(blocks * deepen), 1), identity, spp)
        for n_in, n_out, blocks, identity, spp in P5_STAGES
    ]
    return stem, stages


class ConvBNAct(nn.Module):
    """Conv (no bias: BatchNorm follows) -> BatchNorm -> SiLU, padded to keep the size at stride 1:
    mmcv's ConvModule as CSPNeXt builds it."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class CSPNeXtBlock(nn.Module):
    """A 3x3 conv, then a depthwise-separable 5x5 (depthwise 5x5 and pointwise 1x1, each with its
    BatchNorm and SiLU), plus the input where ``identity``. Width kept: (N, C, h, w) -> same."""

    def __init__(self, channels: int, identity: bool) -> None:
        super().__init__()
        self.conv = ConvBNAct(channels, channels, 3)
        self.depthwise = ConvBNAct(channels, channels, BLOCK_KERNEL, groups=channels)
        self.pointwise = ConvBNAct(channels, channels, 1)
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pointwise(self.depthwise(self.conv(x)))
        return out + x if self.identity else out


class ChannelAttention(nn.Module):
    """Each channel scaled by hard-sigmoid(1x1 conv (with bias) of the channel means)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a global average pool rather than a mean: ONNX Runtime keeps it in its blocked layout
        weights = F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))  # (N, C, 1, 1)
        return x * weights


class CSPLayer(nn.Module):
    """Cross-stage partial layer: two 1x1 convs split the input into halves; one half goes through
    ``n_blocks`` CSPNeXt blocks, the other is kept; the concatenation is reweighted per channel and
    fused by a 1x1 conv. (N, C, h, w) -> same."""

    def __init__(self, channels: int, n_blocks: int, identity: bool) -> None:
        super().__init__()
        half = int(channels * EXPAND_RATIO)
        self.main = ConvBNAct(channels, half, 1)
        self.short = ConvBNAct(channels, half, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(half, identity) for _ in range(n_blocks)])
        self.attention = ChannelAttention(2 * half)
        self.final = ConvBNAct(2 * half, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.blocks(self.main(x)), self.short(x)], dim=1)  # (N, 2 half, h, w)
        return self.final(self.attention(both))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: a 1x1 conv halves the width, max-pools of 5, 9 and 13 (stride 1)
    are concatenated with it, a 1x1 conv restores the width. (N, C, h, w) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.reduce = ConvBNAct(channels, half, 1)
        self.expand = ConvBNAct(half * (len(SPP_KERNELS) + 1), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)  # (N, C/2, h, w)
        pooled = [F.max_pool2d(x, kernel, stride=1, padding=kernel // 2) for kernel in SPP_KERNELS]
        return self.expand(torch.cat([x, *pooled], dim=1))  # (N, 4 C/2, h, w) -> (N, C, h, w)


class CSPNeXtStage(nn.Module):
    """A stride-2 3x3 conv to the stage's width, [SPP,] a CSP layer: (N, C_in, h, w) -> (N, C_out, h/2, w/2)."""

    def __init__(self, n_in: int, n_out: int, n_blocks: int, identity: bool, spp: bool) -> None:
        super().__init__()
        self.down = ConvBNAct(n_in, n_out, 3, stride=2)
        self.spp = SPPBottleneck(n_out) if spp else None
        self.csp = CSPLayer(n_out, n_blocks, identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        if self.spp is not None:
            x = self.spp(x)
        return self.csp(x)


class CSPNeXt(nn.Module):
    """CSPNeXt, P5 layout: a stem of three 3x3 convs (the first stride 2), then four stages.
    (N, 3, H, W) -> (N, C, H/32, W/32), the last stage only (the head reads nothing else)."""

    def __init__(self, size: str) -> None:
        super().__init__()
        stem, stages = stage_layout(size)
        first = stages[0][0]
        self.stem = nn.Sequential(
            ConvBNAct(3, stem, 3, stride=2), ConvBNAct(stem, stem, 3), ConvBNAct(stem, first, 3)
        )
        self.stages = nn.ModuleList([CSPNeXtStage(*stage) for stage in stages])
        self.out_channels = stages[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, C_0, H/2, W/2)
        for stage in self.stages:
            x = stage(x)
        return x  # (N, C, H/32, W/32)


class ScaleNorm(nn.Module):
    """x / max(|x| / sqrt(d), eps) x g over the last axis, g one learnt gain (Nguyen & Salazar 2019)."""

    def __init__(self, dim: int, eps: float = SCALE_NORM_EPS) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale  # one ReduceL2 in ONNX
        return x / norm.clamp(min=self.eps) * self.g


class GatedAttentionUnit(nn.Module):
    """RTMCCBlock with RTMPose's settings (Hua et al. 2022's gated attention unit): self-attention
    among the K joint tokens, SiLU, s = 128, expansion 2, no relative position bias, no rotary
    encoding, no dropout. (N, K, D) -> (N, K, D), plus the input scaled per channel."""

    def __init__(self, dim: int, s: int = GAU_S, expansion: int = GAU_EXPANSION) -> None:
        super().__init__()
        self.e, self.s = dim * expansion, s
        self.norm = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.e + s, bias=False)
        # per-row scale and offset that turn the shared base into the query (row 0) and key (row 1)
        self.gamma = nn.Parameter(torch.rand(2, s))
        self.beta = nn.Parameter(torch.rand(2, s))
        self.out = nn.Linear(self.e, dim, bias=False)
        self.scale = nn.Parameter(torch.ones(dim))  # the skip connection's per-channel scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.uv(self.norm(tokens)))  # (N, K, 2e + s)
        u, v, base = hidden.split([self.e, self.e, self.s], dim=-1)  # (N, K, e), (N, K, e), (N, K, s)
        q, k = (base.unsqueeze(2) * self.gamma + self.beta).unbind(dim=2)  # 2 x (N, K, s)
        kernel = F.relu(q @ k.transpose(1, 2) / math.sqrt(self.s)).square()  # (N, K, K)
        return tokens * self.scale + self.out(u * (kernel @ v))  # (N, K, D)


class RTMCCHead(nn.Module):
    """A 7x7 conv to one map per joint, each map flattened into a token, ScaleNorm and a linear
    layer to 256, the gated attention unit, then linear classifiers into ``bins`` = (Wx, Wy) x and
    y bins. (N, C, h, w) -> the x logits (N, K, Wx) and the y logits (N, K, Wy)."""

    def __init__(
        self, n_in: int, n_joints: int, feature_size: tuple[int, int], bins: tuple[int, int]
    ) -> None:
        super().__init__()
        flat = feature_size[0] * feature_size[1]
        self.conv = nn.Conv2d(n_in, n_joints, HEAD_KERNEL, padding=HEAD_KERNEL // 2)
        self.norm = ScaleNorm(flat)
        self.embed = nn.Linear(flat, HIDDEN, bias=False)
        self.gau = GatedAttentionUnit(HIDDEN)
        self.cls_x = nn.Linear(HIDDEN, bins[0], bias=False)
        self.cls_y = nn.Linear(HIDDEN, bins[1], bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.conv(features)  # (N, K, h, w)
        tokens = self.gau(self.embed(self.norm(maps.flatten(2))))  # (N, K, h w) -> (N, K, 256)
        return self.cls_x(tokens), self.cls_y(tokens)


class RTMPose(nn.Module):
    """CSPNeXt (P5, RTMPose-``size``'s depth and width) and the RTMCC head on its stride-32 map.
    (N, 3, H, W) -> [(N, K, Wx + Wy)], one stage: Wx = round(W x split_ratio) x bins, then
    Wy = round(H x split_ratio) y bins. H and W must be multiples of 32 (the head's flatten size is
    fixed by them).

    Equal to the authors' network (MMPose ``TopdownPoseEstimator`` with mmdet's ``CSPNeXt`` and
    ``RTMCCHead`` as the RTMPose configs set them) tensor for tensor: 3,337,007 parameters for
    RTMPose-t with 17 joints at 256x192 (tests/test_rtmpose.py); ``models.import_weights rtmpose``
    converts their checkpoints. Their data preprocessor feeds RGB normalised with ImageNet's mean
    and std (x 255), what the pipeline gives (``input_norm`` imagenet).

    Initialisation as the authors' code without its pretrained backbone: convolutions as PyTorch's
    default (their Kaiming init, a = sqrt(5), uniform, fan-in, is that), conv biases 0; head conv
    N(0, 0.001), linear layers N(0, 0.01), query/key scales and offsets U(0, 1). They start the
    backbone from a CSPNeXt trained on AIC + COCO (``cspnext-*_udp-aic-coco_210e-256x192``), which
    is not available here.
    """

    def __init__(
        self, n_joints: int, size: str, input_size: tuple[int, int], split_ratio: float, input_norm: str
    ) -> None:
        super().__init__()
        height, width = input_size
        if n_joints < 1:
            raise ValueError(f"n_joints must be >= 1, got {n_joints}")
        if not split_ratio > 0:
            raise ValueError(f"simcc_split_ratio must be > 0, got {split_ratio}")
        self.bins = (round(width * split_ratio), round(height * split_ratio))  # (Wx, Wy)
        if min(self.bins) < 1:
            raise ValueError(
                f"simcc_split_ratio {split_ratio} gives {self.bins} bins for a {height}x{width} input"
            )
        self.input_norm = InputNorm(input_norm)
        self.backbone = CSPNeXt(size)
        self.head = RTMCCHead(
            self.backbone.out_channels, n_joints, (height // STRIDE, width // STRIDE), self.bins
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                nn.init.zeros_(module.bias)  # the weights keep PyTorch's default, their Kaiming rule
        nn.init.normal_(self.head.conv.weight, std=HEAD_CONV_STD)
        nn.init.zeros_(self.head.conv.bias)
        for linear in (
            self.head.embed,
            self.head.gau.uv,
            self.head.gau.out,
            self.head.cls_x,
            self.head.cls_y,
        ):
            nn.init.normal_(linear.weight, std=HEAD_LINEAR_STD)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [torch.cat(self.exported_outputs(image), dim=-1)]  # [(N, K, Wx + Wy)]

    def exported_outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What -export's graph gives: the last stage as the codec's outputs (x (N, K, Wx), y (N, K,
        Wy)), each straight from its classifier. Splitting ``forward``'s concatenation gives the same
        numbers, but ONNX Runtime runs the Concat and the Split it leaves, 0.5% of RTMPose-t's time."""
        features = self.backbone(self.input_norm(image))  # (N, C, H/32, W/32)
        return self.head(features)


@register_model("RTMPose", target="simcc")
def rtmpose(
    n_joints: int = 17,
    rtmpose_size: str = "m",
    input_res: int = 256,
    aspect_ratio: float = 0.75,
    simcc_split_ratio: float = 2.0,
    input_norm: str = "imagenet",
) -> RTMPose:
    """RTMPose-m at 256x192 by default; ``rtmpose_size`` t, s, m or l. The input is ``input_res``
    high and round(input_res x aspect_ratio) wide; both must be multiples of 32."""
    size_factors(rtmpose_size)
    height, width = input_res, round(input_res * aspect_ratio)
    if height < STRIDE or width < STRIDE or height % STRIDE or width % STRIDE:
        raise ValueError(
            f"input_res {input_res} with aspect_ratio {aspect_ratio} gives a {height}x{width} input; "
            f"RTMPose needs both sides multiples of {STRIDE}, e.g. 256x192"
        )
    return RTMPose(n_joints, rtmpose_size, (height, width), simcc_split_ratio, input_norm)
