"""ViTPose: Simple Vision Transformer Baselines for Human Pose Estimation (Xu, Zhang, Zhang & Tao,
NeurIPS 2022).

A plain ViT (no class token in the sequence, no hierarchy) on 16x16 patches, then a light decoder to
heatmaps at 1/4 of the input. Equal to the authors' network (ViTAE-Transformer/ViTPose,
``mmpose/models/backbones/vit.py`` with ``TopdownHeatmapSimpleHead`` and the
``ViTPose_{small,base,large,huge}[_simple]_coco_256x192.py`` configs) tensor for tensor;
``models.import_weights vitpose`` converts their checkpoints and MMPose 1.x's.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import bilinear_resize, init_heatmap_decoder
from models.pixels import InputNorm
from models.registry import register_model
from models.simple_baseline import deconv_bn_relu

PATCH = 16
# ViTPose's PatchEmbed pads by 4 + 2 * (ratio // 2 - 1), 2 at their ratio 1: a 16k-pixel side still
# gives k patches (the last 2 pixels fall outside the last window), shifted 2 pixels left and up
PATCH_PADDING = 2
MLP_RATIO = 4
LAYER_NORM_EPS = 1e-6  # their ViT's norm_layer: partial(nn.LayerNorm, eps=1e-6)
INIT_STD = 0.02  # their trunc_normal_ of the linear layers and the position embedding
HEAD_INIT_STD = 0.001  # their head's normal_init of the deconvolutions and the last convolution
UPSAMPLE = 4  # the simple decoder's bilinear factor (ViTPose's upsample=4): 1/16 -> 1/4
DECODERS = ("classic", "simple")
# what MAE pre-training does not give: the decoder and the last norm (the authors' loader leaves it)
NOT_PRETRAINED = ("deconvs.", "head.", "last_norm.")


@dataclass(frozen=True)
class ViTSize:
    """One of the authors' sizes (``ViTPose_*_coco_256x192.py``): the backbone's width, depth and
    attention heads and the drop-path rate of their recipe (its layer-wise LR decay is each conf
    file's ``layerDecay``)."""

    width: int
    depth: int
    heads: int
    drop_path: float


VIT_SIZES = {
    "S": ViTSize(width=384, depth=12, heads=12, drop_path=0.1),
    "B": ViTSize(width=768, depth=12, heads=12, drop_path=0.3),
    "L": ViTSize(width=1024, depth=24, heads=16, drop_path=0.5),
    "H": ViTSize(width=1280, depth=32, heads=16, drop_path=0.55),
}

# What wraps a parameter's name on its way to an optimizer: DistributedDataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: the residual branch ``x`` (N, ...) zeroed for a ``rate`` share of the
    samples and scaled by 1 / (1 - rate) for the rest, in training only."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class PatchEmbed(nn.Module):
    """(N, 3, H, W) -> tokens (N, h * w, C) and the grid (h, w): one 16x16 stride-16 convolution
    with ViTPose's padding of 2."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, PATCH, stride=PATCH, padding=PATCH_PADDING)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        features = self.proj(image)  # (N, C, h, w)
        grid = (features.shape[2], features.shape[3])
        return features.flatten(2).transpose(1, 2), grid


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (with bias) and an output projection:
    (N, T, C) -> (N, T, C). Written out (not ``scaled_dot_product_attention``) as the authors do:
    q scaled before the product; the explicit form also has deterministic CUDA kernels and exports
    to ONNX at any opset."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        # heads of q, k and v side by side, then split: one Split in an exported graph, no Squeeze
        qkv = self.qkv(x).reshape(n, tokens, 3 * self.heads, -1).transpose(1, 2)  # (N, 3 heads, T, d)
        q, k, v = qkv.split(self.heads, dim=1)  # 3 x (N, heads, T, d)
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (N, heads, T, T)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, tokens, width))


class Mlp(nn.Module):
    """(N, T, C) -> (N, T, C): Linear to 4C, GELU (exact), Linear back."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, MLP_RATIO * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)), each branch under
    stochastic depth at ``drop_rate``."""

    def __init__(self, width: int, heads: int, drop_rate: float) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_rate, self.training)


class ViTPose(nn.Module):
    """ViT backbone and a heatmap decoder: (N, 3, H, W) -> [(N, K, H/4, W/4)], one stage. H and W
    must be multiples of 16; the position embedding is built for the input size given.

    Backbone: ``patch_embed`` (16x16 patches, padding 2), ``pos_embed`` (1, 1 + h*w, C) whose first
    slot (the class token's in MAE pre-training) is added to every token, as the authors do, since
    no class token enters the sequence; ``blocks`` (pre-norm, qkv bias, MLP ratio 4, LayerNorm eps
    1e-6, drop path rising linearly from 0 to ``drop_path_rate`` over the depth), ``last_norm``;
    tokens back to (N, C, H/16, W/16).

    Decoders: "classic" (``deconvs``: two 4x4 stride-2 transposed convolutions of ``deconv_filters``
    with BatchNorm and ReLU, then ``head``: a 1x1 convolution to K), or "simple" (ReLU, bilinear x4,
    ``head``: a 3x3 convolution to K).

    Initialisation as theirs without pre-trained weights: linear layers and the position embedding
    truncated normal (std 0.02), biases 0, LayerNorm 1 and 0, the patch convolution PyTorch's
    default; the decoder N(0, 0.001), BatchNorm 1 and 0. ``pretrained_path`` loads MAE weights into
    the backbone as the authors do (see :func:`load_mae_weights`).

    Layer-wise LR decay (their ``LayerDecayOptimizerConstructor``): :meth:`layer_index` gives a
    parameter's layer and ``num_lr_layers`` the count (depth + 2).

    Deviations: none in the network. The authors' ``HybridEmbed``, ``ratio`` > 1 patch overlap,
    frozen stages and ViTPose++'s mixture-of-experts MLPs are not offered. ``input_norm``: both
    ViTPose's and MMPose's pipelines feed ImageNet-normalised RGB, which is ``imagenet``.
    """

    def __init__(
        self,
        n_joints: int,
        input_size: tuple[int, int],
        dim: int,
        depth: int,
        heads: int,
        decoder: str,
        deconv_filters: int,
        drop_path_rate: float,
        input_norm: str,
    ) -> None:
        super().__init__()
        # the patch convolution's output size for the (height, width) input
        self.grid = tuple((side + 2 * PATCH_PADDING - PATCH) // PATCH + 1 for side in input_size)
        self.input_norm = InputNorm(input_norm)
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        # their stochastic depth rule, in float32 as torch.linspace gives it
        rates = [rate.item() for rate in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([Block(dim, heads, rate) for rate in rates])
        self.last_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.decoder = decoder
        if decoder == "classic":
            self.deconvs = nn.Sequential(
                deconv_bn_relu(dim, deconv_filters), deconv_bn_relu(deconv_filters, deconv_filters)
            )
            self.head = nn.Conv2d(deconv_filters, n_joints, 1)
        else:
            self.head = nn.Conv2d(dim, n_joints, 3, padding=1)
        self.num_lr_layers = depth + 2
        self._initialise()

    def _initialise(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
        init_heatmap_decoder([*getattr(self, "deconvs", nn.Sequential()).modules(), self.head], HEAD_INIT_STD)

    def layer_index(self, name: str) -> int:
        """The layer-decay group of parameter ``name`` (as ``named_parameters`` gives it, possibly
        under a DDP or torch.compile wrapper): 0 for the patch and position embeddings, i + 1 for
        block i, ``num_lr_layers - 1`` for everything after the blocks. Their group i gets
        LR x decay ** (num_lr_layers - 1 - i)."""
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if name == "pos_embed" or name.startswith("patch_embed."):
            return 0
        if match := re.match(r"blocks\.(\d+)\.", name):
            return int(match.group(1)) + 1
        return self.num_lr_layers - 1

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) ImageNet-normalised RGB -> the backbone's (N, C, H/16, W/16)."""
        tokens, grid = self.patch_embed(self.input_norm(image))  # (N, h*w, C)
        if grid != self.grid:
            raise ValueError(
                f"ViTPose was built for a {self.grid[0]}x{self.grid[1]} patch grid, the input "
                f"{tuple(image.shape[-2:])} gives {grid[0]}x{grid[1]}"
            )
        tokens = tokens + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.last_norm(tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = self.features(image)  # (N, C, H/16, W/16)
        if self.decoder == "classic":
            features = self.deconvs(features)  # (N, F, H/4, W/4)
        else:
            height, width = features.shape[-2:]
            features = bilinear_resize(
                F.relu(features), (UPSAMPLE * height, UPSAMPLE * width), align_corners=False
            )
        return [self.head(features)]  # [(N, K, H/4, W/4)]


# ------------------------------------------------------------------------------ MAE weights

# MAE checkpoint tensors this network has no place for: the class token (ViTPose adds its position
# slot only), the pre-training decoder and mask token, the classifier of a fine-tuned one, and the
# encoder's final norm (ViTPose's is ``last_norm``, which the authors' loader does not fill from
# MAE's ``norm``: it keeps its initialisation, as here)
MAE_UNUSED = re.compile(r"(cls_token|mask_token|decoder_.*|norm\..*|fc_norm\..*|head\..*)$")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pre-training checkpoint (``{'model': ...}``, ``{'state_dict': ...}`` or a
    plain state dict), read with ``weights_only=True``, ``module.`` prefixes removed."""
    if not path.is_file():
        raise FileNotFoundError(f"MAE weights for ViTPose not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} cannot be read with weights_only=True ({first})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds no state dict (a dict of tensors, or one under 'model' or 'state_dict')"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def resize_position_embedding(source: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + s*s, C) -> (1, 1 + h*w, C): the square grid resized bicubically (align_corners
    False) to ``grid`` = (h, w), the class slot kept, as the authors' ``load_checkpoint`` does."""
    side = round((source.shape[1] - 1) ** 0.5)
    cls_slot, tokens = source[:, :1], source[:, 1:]
    if (side, side) != tuple(grid):
        tokens = tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, s, s)
        tokens = F.interpolate(tokens.float(), size=grid, mode="bicubic", align_corners=False)
        tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2).to(source.dtype)  # (1, h*w, C)
    return torch.cat([cls_slot, tokens], dim=1)


def pad_patch_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A smaller patch kernel (MAE's ViT-H uses 14x14) zero-padded around to 16x16, the authors'
    default ``patch_padding='pad'``."""
    pad = PATCH - weight.shape[-1]
    before = pad // 2
    return F.pad(weight, (before, pad - before, before, pad - before))


def load_mae_weights(model: ViTPose, path: str | Path) -> list[str]:
    """Load MAE pre-trained ViT weights (``{'model': {...}}`` with timm's names) into ``model``'s
    backbone, as the authors initialise it; returns the keys skipped (tensors it has no place for:
    see ``MAE_UNUSED``), also reported in one line on stderr.

    The position embedding is resized bicubically to the model's patch grid (the class slot kept),
    a smaller patch kernel zero-padded to 16x16; every other tensor must have the model's shape and
    every backbone tensor but ``last_norm`` must be in the file. A mismatch raises ValueError naming
    the file and the key."""
    path = Path(path).expanduser()
    source = read_weights(path)
    ours = model.state_dict()
    grid = model.grid
    loaded: dict[str, torch.Tensor] = {}
    skipped = []
    for key, value in source.items():
        if MAE_UNUSED.match(key):
            skipped.append(key)
            continue
        if key not in ours or key.startswith(NOT_PRETRAINED):
            raise ValueError(f"{path}: key {key!r} has no counterpart in ViTPose's backbone")
        if key == "pos_embed":
            side = round((value.shape[1] - 1) ** 0.5) if value.dim() == 3 else 0
            if value.dim() != 3 or value.shape[0] != 1 or side * side + 1 != value.shape[1]:
                raise ValueError(
                    f"{path}: key 'pos_embed' has shape {tuple(value.shape)}; MAE's is (1, 1 + s*s, C): a class "
                    f"slot and a square grid"
                )
            if value.shape[2] != ours[key].shape[2]:
                raise ValueError(
                    f"{path}: key 'pos_embed' has width {value.shape[2]} but ViTPose's is {ours[key].shape[2]}"
                )
            value = resize_position_embedding(value, grid)
        elif (
            key == "patch_embed.proj.weight"
            and value.dim() == 4
            and value.shape[-1] < PATCH
            and value.shape[-1] == value.shape[-2]
        ):
            value = pad_patch_kernel(value)
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ValueError(
                f"{path}: key {key!r} has shape {tuple(value.shape)} but ViTPose needs {tuple(ours[key].shape)}"
            )
        loaded[key] = value
    backbone = [key for key in ours if not key.startswith(NOT_PRETRAINED)]
    missing = [key for key in backbone if key not in loaded]
    if missing:
        depth = len({m.group(1) for key in source if (m := re.match(r"blocks\.(\d+)\.", key))})
        raise ValueError(
            f"{path}: no tensor for {missing[0]!r} ({len(missing)} missing; the file has {depth} blocks, "
            f"ViTPose {len(model.blocks)})"
        )
    with torch.no_grad():
        for key, value in loaded.items():
            ours[key].copy_(value)
    grid_note = f"position embedding resized to {grid[0]}x{grid[1]}" if "pos_embed" in loaded else ""
    unused = _summarise(skipped)
    print(
        f"note: {path}: MAE weights loaded into the backbone ({len(loaded)} tensors; {grid_note}); "
        f"skipped, ViTPose has no place for them: {unused or 'none'}",
        file=sys.stderr,
    )
    return skipped


def _summarise(keys: list[str]) -> str:
    """``decoder_blocks.0.x, decoder_blocks.1.y, norm.weight`` -> ``decoder_* (2), norm.weight``."""
    decoder = [key for key in keys if key.startswith("decoder_")]
    others = [key for key in keys if not key.startswith("decoder_")]
    return ", ".join(others + ([f"decoder_* ({len(decoder)})"] if decoder else []))


@register_model("ViTPose", target="heatmap", output_strides=(4,))
def vitpose(
    n_joints: int = 17,
    input_res: int = 256,
    aspect_ratio: float = 0.75,
    vit_size: str = "B",
    vit_decoder: str = "classic",
    vit_width: int | None = None,
    vit_depth: int | None = None,
    vit_num_heads: int | None = None,
    deconv_filters: int = 256,
    drop_path: float | None = None,
    pretrained_path: str | None = None,
    input_norm: str = "imagenet",
) -> ViTPose:
    """ViTPose-B with the classic decoder for a 256x192 input by default. ``vit_size`` S, B, L or H
    (the authors' widths, depths, heads and drop-path rates); ``vit_width``, ``vit_depth`` and
    ``vit_num_heads`` override the size's (small test networks); ``drop_path`` overrides its
    drop-path rate; ``pretrained_path``: a local MAE checkpoint for the backbone."""
    if vit_size not in VIT_SIZES:
        raise ValueError(f"vit_size must be one of {', '.join(VIT_SIZES)}, got {vit_size!r}")
    if vit_decoder not in DECODERS:
        raise ValueError(f"vit_decoder must be one of {', '.join(DECODERS)}, got {vit_decoder!r}")
    size = VIT_SIZES[vit_size]
    width = vit_width if vit_width is not None else size.width
    depth = vit_depth if vit_depth is not None else size.depth
    heads = vit_num_heads if vit_num_heads is not None else size.heads
    rate = drop_path if drop_path is not None else size.drop_path
    if min(width, depth, heads, deconv_filters) < 1:
        raise ValueError(
            f"vit_width, vit_depth, vit_num_heads and deconv_filters must be >= 1, got {width}, {depth}, "
            f"{heads} and {deconv_filters}"
        )
    if width % heads:
        raise ValueError(f"vit_width {width} is not divisible by vit_num_heads {heads}")
    if not 0 <= rate < 1:
        raise ValueError(f"drop_path must be in [0, 1), got {rate}")
    height, input_width = input_res, round(input_res * aspect_ratio)
    if height % PATCH or input_width % PATCH or min(height, input_width) < PATCH:
        raise ValueError(
            f"input_res {input_res} with aspect_ratio {aspect_ratio} gives a {height}x{input_width} input; "
            f"ViTPose needs both sides multiples of {PATCH} (its patch size)"
        )
    model = ViTPose(
        n_joints, (height, input_width), width, depth, heads, vit_decoder, deconv_filters, rate, input_norm
    )
    if pretrained_path is not None:
        load_mae_weights(model, pretrained_path)
    return model
