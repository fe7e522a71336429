"""Blocks shared by the models: the hourglass family's units (Stacked Hourglass, PoseAttention,
PyraNet), the transposed convolution of the heatmap decoders, their initialisation."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state_dict names) that runs in float32 on the
    CPU under autocast.

    CPU autocast sends transposed convolutions to oneDNN in bfloat16 / float16 on processors with
    AVX-512 or AMX; on an AVX2-only CPU PyTorch computes them itself (no oneDNN primitive runs,
    ONEDNN_VERBOSE shows), and they are finite. CI saw a freshly initialised SimpleBaseline's bf16
    heatmaps turn non-finite on such a machine while its float32 ones were finite. oneDNN fixed
    its brgemm deconvolution in 2026 for inputs whose side is not a multiple of the stride (a tail
    buffer left unzeroed, an out-of-bounds write), which is what a 64x32 crop gives
    SimpleBaseline's first deconvolution (2x1), and a 384x288 one (12x9). Float32 keeps these
    layers off that path; they are a small share of a CPU step. CUDA autocast is left as it is."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float(), output_size)
        return super().forward(x, output_size)


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Pre-activation unit: BatchNorm -> ReLU -> Conv (the order of Newell et al.'s Torch code)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
    )


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Post-activation unit: Conv -> BatchNorm -> ReLU (the hourglass stem and 'linear' layers)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Bottleneck residual module of Newell et al.: 1x1 (out/2) -> 3x3 (out/2) -> 1x1 (out),
    pre-activation, with a 1x1 projection on the skip path when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.branch = nn.Sequential(
            bn_relu_conv(in_channels, mid, 1),
            bn_relu_conv(mid, mid, 3),
            bn_relu_conv(mid, out_channels, 1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.skip(x)


BlockFactory = Callable[[int, int], nn.Module]


def residual_stack(channels: int, count: int, block: BlockFactory = Residual) -> nn.Sequential:
    return nn.Sequential(*[block(channels, channels) for _ in range(count)])


class Hourglass(nn.Module):
    """Recursive hourglass: ``depth`` max-pool reductions, ``n_modules`` blocks at every step,
    a skip branch at each resolution, nearest-neighbour upsampling and element-wise addition.

    ``block`` builds the unit used everywhere (``Residual`` for Newell et al.; PyraNet passes its
    pyramid residual module, PoseAttention its hourglass residual unit).
    """

    def __init__(self, depth: int, channels: int, n_modules: int, block: BlockFactory = Residual) -> None:
        super().__init__()
        self.skip = residual_stack(channels, n_modules, block)
        self.down = residual_stack(channels, n_modules, block)
        if depth > 1:
            self.inner: nn.Module = Hourglass(depth - 1, channels, n_modules, block)
        else:
            self.inner = residual_stack(channels, n_modules, block)
        self.up = residual_stack(channels, n_modules, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(x)[0]

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The merged output at every level, finest first: [(N, C, H, W), (N, C, H/2, W/2), ...]
        (multi-resolution attention reads the coarser ones)."""
        skip = self.skip(x)  # (N, C, H, W)
        low = self.down(F.max_pool2d(x, 2))  # (N, C, H/2, W/2)
        if isinstance(self.inner, Hourglass):
            inner_levels = self.inner.forward_levels(low)
            low = inner_levels[0]
        else:
            inner_levels = []
            low = self.inner(low)
        low = self.up(low)
        # interpolating to the skip's size (not a fixed x2) keeps odd sizes such as 64x48 -> 8x6 -> 4x3 working
        return [skip + F.interpolate(low, size=skip.shape[-2:], mode="nearest"), *inner_levels]


def _needs_deterministic_kernel(x: torch.Tensor) -> bool:
    """CUDA's bilinear-resize and fractional-pooling backward passes add with atomics (results
    vary run to run) and refuse to run under ``torch.use_deterministic_algorithms`` (--deterministic)."""
    return x.is_cuda and torch.are_deterministic_algorithms_enabled() and torch.is_grad_enabled()


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(
    size_in: int, size_out: int, align_corners: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(size_out, size_in) weights of 1-D linear interpolation with F.interpolate's sampling rule,
    made once per size, device and dtype (no host-to-device copy per call)."""
    out = torch.arange(size_out, dtype=torch.float64)
    if align_corners:
        source = out * ((size_in - 1) / (size_out - 1)) if size_out > 1 else torch.zeros_like(out)
    else:
        source = ((out + 0.5) * (size_in / size_out) - 0.5).clamp(min=0.0)
    lower = source.floor().long().clamp(max=size_in - 1)
    upper = (lower + 1).clamp(max=size_in - 1)
    fraction = source - lower
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights[out.long(), lower] += 1.0 - fraction
    weights[out.long(), upper] += fraction
    return weights.to(device=device, dtype=dtype)


def bilinear_resize(
    x: torch.Tensor, size: tuple[int, int], align_corners: bool, matrix_form: bool | None = None
) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear")`` for (N, C, H, W); under --deterministic on CUDA
    the same numbers as two matrix products (rows, then columns), whose backward is deterministic.
    ``matrix_form`` forces either form (tests)."""
    if matrix_form is None:
        matrix_form = _needs_deterministic_kernel(x)
    if not matrix_form:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    rows = _bilinear_matrix(x.shape[-2], size[0], align_corners, x.device, x.dtype)  # (h, H)
    cols = _bilinear_matrix(x.shape[-1], size[1], align_corners, x.device, x.dtype)  # (w, W)
    return rows @ x @ cols.T  # (N, C, h, w)


def fractional_max_pool2d(
    x: torch.Tensor, output_size: tuple[int, int], gather_form: bool | None = None
) -> torch.Tensor:
    """``F.fractional_max_pool2d(x, 2, output_size)`` with fresh random regions; under
    --deterministic on CUDA the regions' maxima are picked with a gather, whose backward is
    deterministic, from the indices torch's kernel chose (the same draw, the same output).
    ``gather_form`` forces either form (tests)."""
    if gather_form is None:
        gather_form = _needs_deterministic_kernel(x)
    if not gather_form:
        return F.fractional_max_pool2d(x, 2, output_size=output_size)
    with torch.no_grad():
        _, indices = F.fractional_max_pool2d(x, 2, output_size=output_size, return_indices=True)
    n, c = x.shape[:2]
    return x.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).view(n, c, *output_size)


def init_heatmap_decoder(modules: Iterable[nn.Module], std: float = 0.001) -> None:
    """The deconvolution decoders' initialisation, as Simple Baselines' and ViTPose's authors write
    it: every (transposed) convolution N(0, ``std``) with zero bias, every BatchNorm weight 1, bias 0."""
    for module in modules:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
