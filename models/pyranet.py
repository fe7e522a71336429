"""Learning Feature Pyramids for Human Pose Estimation (PyraNet; Yang, Li, Ouyang, Li & Wang, ICCV 2017)."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from models.layers import (
    Hourglass,
    Residual,
    bilinear_resize,
    bn_relu_conv,
    conv_bn_relu,
    fractional_max_pool2d,
    residual_stack,
)
from models.stacked_hourglass import HourglassSizes, StackedHourglass, register_hourglass_model

PRM_TYPES = ("A", "B", "C", "D")
RELU_GAIN = 0.5  # the paper's alpha for a layer whose input went through a ReLU; 1 for a linear input


def tag_branches(conv: nn.Conv2d, inputs: int = 1, outputs: int = 1, alpha: float = RELU_GAIN) -> nn.Conv2d:
    """Record what the multi-branch initialisation needs to know about ``conv``.

    ``inputs`` (the paper's C_i): how many weighted branches are summed with this layer's output
    before the next normalisation. ``outputs`` (C_o): how many weighted branches read this layer's
    input, so receive its gradient back. ``alpha``: 0.5 after a ReLU, 1 for a linear input.
    """
    conv.branches_in, conv.branches_out, conv.init_alpha = inputs, outputs, alpha
    return conv


def multibranch_std(conv: nn.Conv2d) -> float:
    """Standard deviation of the paper's multi-branch initialisation for ``conv``.

    Forward propagation keeps the output variance if ``alpha * C_i * n_i * Var[w] = 1``, backward
    propagation keeps the gradient variance if ``alpha * C_o * n_o * Var[w] = 1`` (n_i = k*k*in,
    n_o = k*k*out). Like Glorot & Bengio, take the compromise
    ``Var[w] = 2 / (alpha * (C_i * n_i + C_o * n_o))``, which for one branch and a ReLU reduces to
    He et al.'s 2/n when n_i = n_o. (The printed compromise has alpha squared, which contradicts
    the two conditions it averages; we keep the conditions.)
    """
    receptive = conv.kernel_size[0] * conv.kernel_size[1]
    n_in = receptive * conv.in_channels // conv.groups
    n_out = receptive * conv.out_channels // conv.groups
    c_in = getattr(conv, "branches_in", 1)
    c_out = getattr(conv, "branches_out", 1)
    alpha = getattr(conv, "init_alpha", RELU_GAIN)
    return math.sqrt(2.0 / (alpha * (c_in * n_in + c_out * n_out)))


@torch.no_grad()
def multibranch_init_(model: nn.Module) -> nn.Module:
    """Initialise every convolution of ``model`` with ``multibranch_std`` and a zero bias;
    untagged convolutions count as single-branch layers after a ReLU."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.normal_(0.0, multibranch_std(module))
            if module.bias is not None:
                module.bias.zero_()
    return model


def _pool_starts(size_in: int, size_out: int, kernel: int, sample: float) -> torch.Tensor:
    """First index of each pooling window of fractional max-pooling (Graham 2014, overlapping
    variant) along one axis, for the pseudo-random offset ``sample`` in [0, 1)."""
    if size_out == 1:
        return torch.tensor([size_in - kernel])
    # float32 like torch's kernel, so sample 0.5 reproduces F.fractional_max_pool2d exactly
    alpha = torch.tensor((size_in - kernel) / (size_out - 1), dtype=torch.float32)
    steps = torch.arange(size_out - 1, dtype=torch.float32)
    starts = ((steps + sample) * alpha).long() - (sample * alpha).long()
    return torch.cat([starts, torch.tensor([size_in - kernel])])


def fixed_fractional_max_pool2d(
    x: torch.Tensor, output_size: tuple[int, int], kernel: int = 2, sample: float = 0.5
) -> torch.Tensor:
    """Fractional max-pooling with a fixed offset: deterministic, and identical to
    ``F.fractional_max_pool2d`` when every random sample equals ``sample``."""
    n, c, height, width = x.shape
    offsets = torch.arange(kernel)
    rows = (_pool_starts(height, output_size[0], kernel, sample)[:, None] + offsets).flatten().to(x.device)
    cols = (_pool_starts(width, output_size[1], kernel, sample)[:, None] + offsets).flatten().to(x.device)
    # a k x k max is a max over k rows followed by a max over k columns
    x = x.index_select(2, rows).view(n, c, output_size[0], kernel, width).amax(3)  # (N, C, h, W)
    return x.index_select(3, cols).view(n, c, output_size[0], output_size[1], kernel).amax(4)  # (N, C, h, w)


def _projection(in_channels: int, out_channels: int, kernel_size: int, preact: bool) -> nn.Sequential:
    """``bn_relu_conv``, or the bare convolution when the input is already normalised and
    rectified (the authors' 'no_preact' unit right after the stem's 7x7 conv-BN-ReLU)."""
    if preact:
        return bn_relu_conv(in_channels, out_channels, kernel_size)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))


def subsample(x: torch.Tensor, ratio: float, training: bool) -> torch.Tensor:
    """Fractional max-pooling of ``x`` (N, C, H, W) to ``floor(ratio * H) x floor(ratio * W)``.

    Training draws new pooling regions on every call (torch's ``F.fractional_max_pool2d``; the
    randomness is FMP's regulariser, by design). Evaluation uses one fixed draw (offset 0.5) so
    predictions are deterministic, the expected regions of the training distribution.
    """
    height, width = x.shape[-2:]
    if height < 2 or width < 2:
        return x  # a 1-pixel axis cannot be pooled by a 2x2 window
    size = (min(max(int(height * ratio), 1), height - 1), min(max(int(width * ratio), 1), width - 1))
    if training:
        return fractional_max_pool2d(x, size)
    return fixed_fractional_max_pool2d(x, size)


class PyramidResidualModule(nn.Module):
    """Pyramid Residual Module: ``x + g(f_0(x) + P(x))``.

    ``f_0`` is the bottleneck's BN-ReLU-1x1 -> BN-ReLU-3x3 (out/2 channels). The pyramid ``P``
    has ``cardinality`` (C) branches of ``out // base_width`` channels; branch c sub-samples its
    input by fractional max-pooling with ratio ``2^(-c/C)`` (c = 1..C, so the scales span
    [1/2, 1) with M = 1), applies a 3x3 convolution at that size and upsamples bilinearly back.
    ``g`` is BN-ReLU-1x1 to ``out`` channels.

    * A: each branch has its own BN-ReLU-1x1 input projection; branches are summed.
    * B: one shared input projection; branches are summed (the paper's choice).
    * C: shared projection; branches are concatenated before the 1x1 that fuses them.
    * D: shared projection; branch c is a 3x3 convolution with dilation c at full resolution
      instead of pooling (the paper does not give the rates; dilation c grows the receptive
      field with c the way a smaller ratio does).

    ``project_skip`` replaces the identity shortcut with BN-ReLU-1x1: the paper's remedy for
    output variance accumulation, used where two residual outputs are added (hourglass merge).
    ``preact=False`` drops the BN-ReLU in front of ``f_0`` and of the pyramid's projection, for
    a unit whose input was just normalised and rectified (the authors' first stem unit).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prm_type: str = "B",
        cardinality: int = 4,
        base_width: int = 9,
        project_skip: bool = False,
        preact: bool = True,
    ) -> None:
        super().__init__()
        prm_type = str(prm_type).upper()
        if prm_type not in PRM_TYPES:
            raise ValueError(f"prm_type must be one of {', '.join(PRM_TYPES)}, got {prm_type!r}")
        if cardinality < 1 or base_width < 1:
            raise ValueError(f"cardinality and base_width must be >= 1, got {cardinality}, {base_width}")
        self.prm_type = prm_type
        self.ratios = [2.0 ** (-c / cardinality) for c in range(1, cardinality + 1)]
        mid = out_channels // 2
        width = max(out_channels // base_width, 1)
        projected = in_channels != out_channels or project_skip
        readers = (cardinality if prm_type == "A" else 1) + 1 + int(projected)  # weighted readers of x

        self.main = nn.Sequential(_projection(in_channels, mid, 1, preact), bn_relu_conv(mid, mid, 3))
        tag_branches(self.main[0][-1], outputs=readers)
        tag_branches(self.main[1][2], inputs=2)  # summed with the pyramid's fused output

        n_inputs = cardinality if prm_type == "A" else 1
        # BN-ReLU after the projection: the branch convolutions see rectified features
        self.inputs = nn.ModuleList(
            [
                nn.Sequential(
                    _projection(in_channels, width, 1, preact), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
                )
                for _ in range(n_inputs)
            ]
        )
        for branch_input in self.inputs:
            tag_branches(branch_input[0][-1], outputs=readers)
        self.branches = nn.ModuleList()
        for c in range(1, cardinality + 1):
            dilation = c if prm_type == "D" else 1
            conv = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
            summed = cardinality if prm_type != "C" else 1
            shared = cardinality if prm_type != "A" else 1
            self.branches.append(tag_branches(conv, inputs=summed, outputs=shared))
        fused = width * cardinality if prm_type == "C" else width
        self.fuse = bn_relu_conv(fused, mid, 1)
        tag_branches(self.fuse[2], inputs=2)  # summed with f_0
        self.out = bn_relu_conv(mid, out_channels, 1)
        tag_branches(self.out[2], inputs=1 + int(projected))
        if projected:
            self.skip: nn.Module = bn_relu_conv(in_channels, out_channels, 1)
            tag_branches(self.skip[2], inputs=2, outputs=readers)
        else:
            self.skip = nn.Identity()

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        shared = self.inputs[0](x) if len(self.inputs) == 1 else None  # (N, D, H, W)
        outputs = []
        for c, (conv, ratio) in enumerate(zip(self.branches, self.ratios, strict=True)):
            branch = shared if shared is not None else self.inputs[c](x)
            if self.prm_type == "D":
                outputs.append(conv(branch))  # (N, D, H, W)
                continue
            low = conv(subsample(branch, ratio, self.training))  # (N, D, ~ratio*H, ~ratio*W)
            # corners aligned, as Torch's SpatialUpSamplingBilinear of the authors' release
            outputs.append(bilinear_resize(low, size, align_corners=True))
        if self.prm_type == "C":
            return torch.cat(outputs, dim=1)  # (N, C*D, H, W)
        return torch.stack(outputs).sum(0)  # (N, D, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.main(x)  # (N, out/2, H, W)
        return self.out(main + self.fuse(self.pyramid(x))) + self.skip(x)  # (N, out, H, W)


def _project_residual_skip(block: nn.Module) -> nn.Module:
    """Variance-accumulation remedy for a plain ``Residual``: BN-ReLU-1x1 instead of identity."""
    channels_in = block.branch[0][0].num_features
    channels_out = block.branch[-1][2].out_channels
    block.skip = bn_relu_conv(channels_in, channels_out, 1)
    tag_branches(block.skip[2], inputs=2, outputs=2)
    tag_branches(block.branch[-1][2], inputs=2)
    tag_branches(block.branch[0][2], outputs=2)
    return block


def configure_pyramid_hourglass(
    hourglass: Hourglass, channels: int, n_modules: int, prm: partial, prm_levels: int, scale: int = 0
) -> None:
    """Rebuild the units of ``hourglass`` level by level.

    A unit at 1/2^scale of the hourglass input is a PRM while ``scale < prm_levels`` (for 64x64
    maps and 3 levels: 64, 32 and 16 px) and a plain residual below, where a 2^(-1/C) sub-sampling
    of an 8x8 or 4x4 map has almost nothing to pool (the authors' code makes the same cut). The
    units of ``up``, whose output is upsampled and added to the skip branch, get the projection
    shortcut of the paper's variance remedy.
    """

    def units(unit_scale: int, project: bool) -> nn.Sequential:
        if unit_scale < prm_levels:
            return nn.Sequential(*[prm(channels, channels, project_skip=project) for _ in range(n_modules)])
        stack = residual_stack(channels, n_modules, Residual)
        if project:
            for block in stack:
                _project_residual_skip(block)
        return stack

    hourglass.skip = units(scale, False)
    hourglass.down = units(scale + 1, False)
    if isinstance(hourglass.inner, Hourglass):
        configure_pyramid_hourglass(hourglass.inner, channels, n_modules, prm, prm_levels, scale + 1)
    else:
        hourglass.inner = units(scale + 1, False)
    hourglass.up = units(scale + 1, True)


class PyraNet(StackedHourglass):
    """Stacked hourglass (Newell et al.) built from Pyramid Residual Modules, laid out as the
    authors' release (bearpaw/PyraNet, ``models/hg-prm.lua`` and ``models/layers/PRM.lua``).

    * Stem: 7x7 stride-2 conv-BN-ReLU, a PRM without pre-activation (its input was just
      rectified), max-pool, two PRMs.
    * Hourglass: PRMs at the ``prm_levels`` finest scales (the release's 64, 32 and 16 px for a
      256 input), plain residuals below; the units of ``up``, whose output is upsampled into the
      merge, have a BN-ReLU-1x1 shortcut (the paper's variance remedy, the release's ``useConv``).
    * After each hourglass: BN-ReLU, then 1x1 conv-BN-ReLU, no residual unit (Newell's layout has
      one here); heatmaps by a 1x1 conv; the next stack adds 1x1 convs of both.
    * Pyramid branches are upsampled bilinearly with aligned corners, as Torch does.

    Where this differs from the release, and why:
      * Initialisation: the paper's multi-branch rule (``multibranch_std``) for every convolution.
        The release tags the fusing convolution with its branch count but never reads the tag, so
        its networks start from cudnn's default initialisation; the paper describes the rule as
        part of the method.
      * Stem widths scale with ``n_channels`` (C/4, C/2); the release fixes them at 64 and 128,
        which is the same at the paper's 256 features.
      * The PRM/residual boundary is ``prm_levels`` (a config key); the release derives it from
        its fixed hourglass depth 4, which gives the default 3.
      * Fractional max-pooling is deterministic at evaluation (offset 0.5, the expected regions);
        Torch's module keeps drawing random regions at test time.
      * ``n_modules`` > 1 repeats every unit, as in Newell's hourglass; the release does the same.

    Deviations of the original PyTorch project (Naman-ntc, models/PyraNet.py) not followed here:
    its defaults cardinality 30 / nStack 4 / nModules 2 (the paper uses C = 4 pyramid levels and
    8 stacks of 1 module), nearest instead of bilinear upsampling of the pyramid, a pyramid output
    size fixed from ``inputRes`` (so it breaks on other input sizes), no multi-branch
    initialisation, no variance remedy, fractional pooling random at test time, a skip projection
    without BN-ReLU, and only PRM-B.
    """

    def __init__(
        self,
        sizes: HourglassSizes,
        prm_type: str = "B",
        cardinality: int = 4,
        base_width: int = 9,
        prm_levels: int = 3,
    ) -> None:
        prm = partial(
            PyramidResidualModule, prm_type=prm_type, cardinality=cardinality, base_width=base_width
        )
        super().__init__(sizes, block=prm)
        n_channels, n_stack, n_modules = sizes.n_channels, sizes.n_stack, sizes.n_modules
        stem_in, stem_out = self.stem.conv[0].out_channels, self.stem.res2.main[0][-1].in_channels
        self.stem.res1 = prm(stem_in, stem_out, preact=False)
        for hourglass in self.hourglasses:
            configure_pyramid_hourglass(hourglass, n_channels, n_modules, prm, prm_levels)
        self.features = nn.ModuleList(
            [
                nn.Sequential(
                    nn.BatchNorm2d(n_channels), nn.ReLU(inplace=True), conv_bn_relu(n_channels, n_channels, 1)
                )
                for _ in range(n_stack)
            ]
        )
        tag_branches(self.stem.conv[0], alpha=1.0)  # reads the image, not a ReLU output
        for merge in self.merge_heatmaps:
            tag_branches(merge, alpha=1.0)  # reads raw heatmaps
        multibranch_init_(self)
        # The rule keeps unit variance through the network, right up to the heatmaps: a He-style
        # head would start every heatmap pixel at variance ~1 against targets that are mostly 0
        # (initial MSE ~1.5 per stack, 50x the hourglass's), and the large early activations leave
        # BatchNorm's running statistics far from the trained ones. The heads start near zero
        # instead (std 0.001, as HRNet and Simple Baselines initialise their prediction layers).
        with torch.no_grad():
            for head in self.heads:
                head.weight.normal_(0.0, 0.001)
                head.bias.zero_()


@register_hourglass_model("PyraNet")
def pyranet(
    sizes: HourglassSizes,
    prm_type: str = "B",
    cardinality: int = 4,
    base_width: int = 9,
    prm_levels: int = 3,
) -> PyraNet:
    """Paper configuration by default: 8 stacks of 256 features (:class:`HourglassSizes`), PRM-B
    with C = 4 pyramid levels (ratios 2^-1/4 .. 2^-1) of 256 / 9 = 28 channels (``base_width`` 9,
    the authors' training script; their option default 6 gives 42)."""
    return PyraNet(sizes, prm_type, cardinality, base_width, prm_levels)
