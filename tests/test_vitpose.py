"""ViTPose: the authors' network, their checkpoints in both published layouts, MAE weights, and
layer-wise LR decay.

``AuthorsViT`` and ``AuthorsHead`` below rebuild ViTAE-Transformer/ViTPose's modules from reading
their code (``mmpose/models/backbones/vit.py``: ``PatchEmbed`` padded by 4 + 2 * (ratio // 2 - 1),
``Attention``, ``Block``, ``ViT.forward_features`` adding ``pos_embed[:, 1:] + pos_embed[:, :1]``;
``mmpose/models/heads/topdown_heatmap_simple_head.py``: ``deconv_layers``, ``final_layer``, the
``upsample`` path of ``_transform_inputs``) with their attribute names, so their state-dict keys,
and their forward passes. MMPose 1.x's checkpoints (MMPretrain's ``VisionTransformer`` with
``with_cls_token=False``, ``HeatmapHead``) are made from the same network by renaming its keys as
MMPretrain names them; their position embedding has no class slot, so it holds the sum the
authors' forward pass adds. A converted network is compared output for output with the source.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_import_modern import load_imported
from test_rtmpose import relative_error
from torch import nn

from build import build_profiled, frame_sizes
from conftest import REPO_ROOT
from models import build_model
from models.complexity import count_parameters
from models.import_weights import VITPOSE_LAYOUTS, convert, vitpose_names
from models.import_weights import main as import_main
from models.vitpose import VIT_SIZES, drop_path
from utils.checkpoint import load_checkpoint
from utils.options import parse_options

CONF = REPO_ROOT / "conf"

# ------------------------------------------------------------------------ the authors' network


class AuthorsPatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, ratio: int = 1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, 16, stride=16 // ratio, padding=4 + 2 * (ratio // 2 - 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        hp, wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (hp, wp)


class AuthorsMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = (
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class AuthorsAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)  # their configs: qkv_bias=True
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(0.0), nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1)))


class AuthorsBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = AuthorsAttention(dim, num_heads)
        self.drop_path = nn.Identity()  # DropPath is the identity in eval mode
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = AuthorsMlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AuthorsViT(nn.Module):
    """``ViT(img_size, patch_size=16, embed_dim, depth, num_heads, ratio=1, mlp_ratio=4, qkv_bias=True)``."""

    def __init__(self, img_size: tuple[int, int], embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.patch_embed = AuthorsPatchEmbed(embed_dim)
        num_patches = (img_size[1] // 16) * (img_size[0] // 16)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList([AuthorsBlock(embed_dim, num_heads) for _ in range(depth)])
        self.last_norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x, (hp, wp) = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for blk in self.blocks:
            x = blk(x)
        x = self.last_norm(x)
        return x.permute(0, 2, 1).reshape(b, -1, hp, wp).contiguous()


class AuthorsHead(nn.Module):
    """``TopdownHeatmapSimpleHead``: classic (two deconvolutions, final_conv_kernel 1) or simple
    (num_deconv_layers 0, upsample 4, final_conv_kernel 3)."""

    def __init__(self, in_channels: int, joints: int, simple: bool, filters: int = 256) -> None:
        super().__init__()
        self.upsample = 4 if simple else 0
        if simple:
            self.deconv_layers = nn.Identity()
            self.final_layer = nn.Conv2d(in_channels, joints, 3, 1, 1)
        else:
            layers, channels = [], in_channels
            for _ in range(2):
                layers += [
                    nn.ConvTranspose2d(channels, filters, 4, 2, 1, 0, bias=False),
                    nn.BatchNorm2d(filters),
                    nn.ReLU(inplace=True),
                ]
                channels = filters
            self.deconv_layers = nn.Sequential(*layers)
            self.final_layer = nn.Conv2d(filters, joints, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 0:
            x = F.interpolate(F.relu(x), None, self.upsample, "bilinear", False)
        return self.final_layer(self.deconv_layers(x))


class AuthorsTopDown(nn.Module):
    """The detector's module tree: ``backbone`` and ``keypoint_head`` (their checkpoint's prefixes)."""

    def __init__(self, img_size, embed_dim, depth, num_heads, joints=17, simple=False, filters=256) -> None:
        super().__init__()
        self.backbone = AuthorsViT(img_size, embed_dim, depth, num_heads)
        self.keypoint_head = AuthorsHead(embed_dim, joints, simple, filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keypoint_head(self.backbone(x))


def authors_layer_id(var_name: str, num_max_layer: int) -> int:
    """``get_num_layer_for_vit`` of their mmcv_custom/layer_decay_optimizer_constructor.py."""
    if var_name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    if var_name.startswith("backbone.patch_embed"):
        return 0
    if var_name.startswith("backbone.blocks"):
        return int(var_name.split(".")[2]) + 1
    return num_max_layer - 1


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Weights large enough that every layer matters; LayerNorm and BatchNorm away from 1 and 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")) or name.endswith("pos_embed"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
            elif tensor.dim() == 1:  # LayerNorm and BatchNorm scales
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                fan_in = tensor.shape[0] * 16 if "deconv" in name else tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.5 / fan_in) ** 0.5)
    return net.eval()


MMPRETRAIN_PARTS = (
    ("norm1", "ln1"),
    ("mlp.fc1", "ffn.layers.0.0"),
    ("mlp.fc2", "ffn.layers.1"),
    ("norm2", "ln2"),
)


def mmpose_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' state dict as MMPose 1.x saves the same network: MMPretrain's VisionTransformer
    names (``patch_embed.projection``, ``layers.N.ln1``/``ln2``, ``ffn.layers.0.0``/``ffn.layers.1``,
    ``ln1`` for the last norm), ``head`` for ``keypoint_head``, and a position embedding without the
    class slot (with_cls_token=False), which therefore holds what the authors add to every token."""
    renamed = {}
    for key, value in state.items():
        if key == "backbone.pos_embed":
            value = value[:, 1:] + value[:, :1]
        key = key.replace("backbone.patch_embed.proj.", "backbone.patch_embed.projection.")
        key = key.replace("backbone.last_norm.", "backbone.ln1.").replace("keypoint_head.", "head.")
        if key.startswith("backbone.blocks."):
            key = key.replace("backbone.blocks.", "backbone.layers.", 1)
            for theirs, mmpretrain in MMPRETRAIN_PARTS:
                key = key.replace(f".{theirs}.", f".{mmpretrain}.")
        renamed[key] = value
    return renamed


def save_mmcv(state: dict[str, torch.Tensor], path: Path) -> Path:
    """As mmcv's save_checkpoint and MMEngine's (published, without the optimizer): a meta dict and
    the state dict."""
    torch.save({"meta": {"epoch": 210, "mmpose_version": "0.24.0"}, "state_dict": state}, path)
    return path


def our_name(layout, depth: int, n_deconv: int, key: str) -> str:
    """A source key under its name in our network, through the importer's renaming."""
    if key == layout.pos_embed:
        return "pos_embed"
    module, _, leaf = key.rpartition(".")
    return f"{vitpose_names(layout, depth, n_deconv)[module]}.{leaf}"


# Tiny networks: width 32 (no published size: the heads are given), 2 blocks, a 64x48 input (4x3 patches)
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 4}
TINY_INPUT = (64, 48)  # (height, width)


def tiny_source(tmp_path: Path, simple: bool, layout: str, seed: int = 0) -> tuple[Path, AuthorsTopDown]:
    torch.manual_seed(seed)
    theirs = randomise(AuthorsTopDown(TINY_INPUT, **TINY, simple=simple, filters=16), seed)
    state = theirs.state_dict()
    if layout == "MMPose 1.x":
        state = mmpose_layout(state)
    return save_mmcv(
        state, tmp_path / f"vitpose-{layout[:6].strip()}-{'simple' if simple else 'classic'}.pth"
    ), theirs


# ------------------------------------------------------------------------ conversion, outputs


@pytest.mark.parametrize("layout", ["ViTPose", "MMPose 1.x"])
@pytest.mark.parametrize("decoder", ["classic", "simple"])
def test_converted_vitpose_gives_the_authors_heatmaps(
    layout: str, decoder: str, tmp_path: Path, capsys
) -> None:
    source, theirs = tiny_source(tmp_path, decoder == "simple", layout)
    destination = tmp_path / "vitpose.pth"
    argv = ["vitpose", str(source), str(destination), "--inputRes", "64", "--vitNumHeads", "4"]
    assert import_main(argv) == 0
    out = capsys.readouterr().out
    assert (
        f"ViTPose ({layout} layout), width 32, 2 blocks, 4 heads, {decoder} decoder, 17 joints, 64x48 input"
        in out
    )
    config = load_checkpoint(destination)["config"]
    assert (config["model"], config["vitWidth"], config["vitDepth"], config["vitNumHeads"]) == (
        "ViTPose",
        32,
        2,
        4,
    )
    assert (config["vitDecoder"], config["dataset"], config["nJoints"]) == (decoder, "COCO", 17)
    assert (config["inputRes"], config["outputRes"], config["aspectRatio"], config["hmGauss"]) == (
        64,
        16,
        0.75,
        2.0,
    )
    assert (config["coordConvention"], config["flipTest"], config["postProcess"], config["inputNorm"]) == (
        "udp", True, "dark", "imagenet",
    )  # fmt: skip
    trained = load_imported(destination)
    image = torch.randn(3, 3, *TINY_INPUT, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        expected = theirs.double()(image)
        (ours,) = trained.model.double()(image)
    assert ours.shape == expected.shape == (3, 17, 16, 12)
    error = relative_error(ours, expected)
    print(f"{layout}, {decoder}: max relative error {error:.1e}")
    assert error < 1e-5
    assert expected.abs().max() > 1e-2 and expected.std() > 1e-3  # a real signal
    # float32, as the network runs: still within 1e-5 of the float64 source, relative to its scale
    with torch.no_grad():
        (single,) = trained.model.float()(image.float())
    assert relative_error(single.double(), expected) < 1e-5


def test_a_published_width_needs_no_heads_and_keeps_its_size(tmp_path: Path, capsys) -> None:
    """ViTPose-S's width (384, 12 heads) at one block, simple decoder, MPII's 16 joints: the size is
    S with the depth overridden; the heads come from the width."""
    torch.manual_seed(1)
    theirs = randomise(AuthorsTopDown((64, 48), 384, 1, 12, joints=16, simple=True), 3)
    source = save_mmcv(theirs.state_dict(), tmp_path / "small.pth")
    destination = tmp_path / "small-converted.pth"
    assert import_main(["vitpose", str(source), str(destination), "--inputRes", "64"]) == 0
    assert "width 384, 1 blocks, 12 heads, simple decoder, 16 joints, 64x48 input" in capsys.readouterr().out
    config = load_checkpoint(destination)["config"]
    assert (config["vitSize"], config["vitDepth"], config["vitWidth"], config["vitNumHeads"]) == (
        "S",
        1,
        None,
        None,
    )
    assert (config["dataset"], config["aspectRatio"]) == (
        "MPII",
        0.75,
    )  # ViTPose's MPII crops are 256x192 too
    image = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        expected = theirs.double()(image)
        (ours,) = load_imported(destination).model.double()(image)
    assert relative_error(ours, expected) < 1e-5


# ------------------------------------------------------------------------ full sizes, parameters

# the authors' networks at 256x192, 17 joints, classic decoder: theirs and ours, the same count
PARAMETERS = {"S": 24_290_577, "B": 89_994_513, "L": 308_544_785, "H": 637_208_849}
PUBLISHED_MILLIONS = {"S": 24.3, "B": 90.0}  # the published figures (classic decoder)


@pytest.mark.parametrize("size", sorted(PARAMETERS))
def test_full_size_key_layout_and_parameter_counts(size: str) -> None:
    spec = VIT_SIZES[size]
    with torch.device("meta"):
        theirs = AuthorsTopDown((256, 192), spec.width, spec.depth, spec.heads)
        ours = build_model("ViTPose", vit_size=size, input_res=256, aspect_ratio=0.75)
    counted = sum(p.numel() for p in theirs.parameters())
    assert counted == count_parameters(ours) == PARAMETERS[size]
    if size in PUBLISHED_MILLIONS:
        assert round(counted / 1e6, 1) == PUBLISHED_MILLIONS[size]
    state, target = theirs.state_dict(), ours.state_dict()
    for layout in VITPOSE_LAYOUTS:
        source = state if layout.name == "ViTPose" else mmpose_layout(state)
        rest = {k: v for k, v in source.items() if k != "backbone.pos_embed"}
        converted = convert(
            rest, vitpose_names(layout, spec.depth, 2), {k: v for k, v in target.items() if k != "pos_embed"}
        )
        assert len(converted) == len(target) - 1 and len(source) == len(target)
    assert tuple(target["pos_embed"].shape) == (1, 1 + 16 * 12, spec.width)


@pytest.mark.parametrize("size", ["S", "B", "L"])
def test_conf_files_build_the_paper_networks_at_256x192(size: str) -> None:
    opts = parse_options(
        ["-ModelConfig", str(CONF / "models" / f"ViTPose-{size}.defconf"), "-DataConfig",
         str(CONF / "datasets" / "coco.defconf"), "--dataDir", str(REPO_ROOT)]
    )  # fmt: skip
    assert frame_sizes(opts) == ((192, 256), (48, 64))
    assert (opts.optimizer_type, opts.LR, opts.optimizer_pars, opts.nEpochs, opts.lrMilestones) == (
        "AdamW", 5e-4, ["weight_decay=0.1"], 210, "170,200",
    )  # fmt: skip
    assert (opts.coordConvention, opts.hmGauss, opts.dropPath) == ("project", 2, VIT_SIZES[size].drop_path)
    with torch.device("meta"):
        model = build_model(opts.model, **vars(opts))
        (heatmaps,) = model(torch.empty(1, 3, 256, 192))
    assert count_parameters(model) == PARAMETERS[size]
    assert tuple(heatmaps.shape) == (1, 17, 64, 48)
    assert [round(block.drop_rate, 6) for block in model.blocks][-1] == VIT_SIZES[size].drop_path


# ------------------------------------------------------------------------ layer-wise LR decay


@pytest.mark.parametrize(("size", "decoder"), [("tiny", "classic"), ("tiny", "simple"), ("B", "classic")])
def test_layer_index_gives_the_authors_layer_ids(size: str, decoder: str) -> None:
    """Every parameter of the authors' network (rebuilt, named as theirs) has, under its converted
    name, the layer our model gives: their get_num_layer_for_vit with num_layers = depth + 2."""
    simple = decoder == "simple"
    if size == "tiny":
        theirs = AuthorsTopDown(TINY_INPUT, **TINY, simple=simple, filters=16)
        ours = build_model("ViTPose", vit_width=32, vit_depth=2, vit_num_heads=4, deconv_filters=16,
                           vit_decoder=decoder, input_res=64, aspect_ratio=0.75)  # fmt: skip
        depth = TINY["depth"]
    else:
        spec = VIT_SIZES[size]
        with torch.device("meta"):
            theirs = AuthorsTopDown((256, 192), spec.width, spec.depth, spec.heads, simple=simple)
            ours = build_model("ViTPose", vit_size=size, vit_decoder=decoder)
        depth = spec.depth
    assert ours.num_lr_layers == depth + 2
    layout = VITPOSE_LAYOUTS[0]
    mapped = {}
    for name, _ in theirs.named_parameters():
        mapped[our_name(layout, depth, 0 if simple else 2, name)] = authors_layer_id(name, depth + 2)
    assert set(mapped) == {name for name, _ in ours.named_parameters()}
    assert {name: ours.layer_index(name) for name in mapped} == mapped
    assert set(mapped.values()) == set(range(depth + 2))
    # a wrapper's prefix (DistributedDataParallel, torch.compile) does not change the layer
    assert (
        ours.layer_index("module.blocks.1.attn.qkv.weight")
        == ours.layer_index("_orig_mod.blocks.1.mlp.fc2.bias")
        == 2
    )
    assert ours.layer_index("module.head.weight") == depth + 1


# ------------------------------------------------------------------------ MAE weights


def mae_state(width: int, depth: int, generator: torch.Generator, side: int = 14, kernel: int = 16) -> dict:
    """Random tensors under MAE's names (facebookresearch/mae models_mae.py / models_vit.py, timm's
    VisionTransformer): the encoder, its norm, and the pre-training decoder and mask token."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    state = {
        "cls_token": rand(1, 1, width),
        "pos_embed": rand(1, 1 + side * side, width),
        "patch_embed.proj.weight": rand(width, 3, kernel, kernel),
        "patch_embed.proj.bias": rand(width),
        "norm.weight": rand(width),
        "norm.bias": rand(width),
        "mask_token": rand(1, 1, 16),
        "decoder_embed.weight": rand(16, width),
        "decoder_pos_embed": rand(1, 1 + side * side, 16),
        "decoder_blocks.0.norm1.weight": rand(16),
        "decoder_norm.weight": rand(16),
        "decoder_pred.weight": rand(768, 16),
    }
    for block in range(depth):
        parts = {"norm1.weight": (width,), "norm1.bias": (width,), "attn.qkv.weight": (3 * width, width),
                 "attn.qkv.bias": (3 * width,), "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
                 "norm2.weight": (width,), "norm2.bias": (width,), "mlp.fc1.weight": (4 * width, width),
                 "mlp.fc1.bias": (4 * width,), "mlp.fc2.weight": (width, 4 * width), "mlp.fc2.bias": (width,)}  # fmt: skip
        state |= {f"blocks.{block}.{name}": rand(*shape) for name, shape in parts.items()}
    return state


def tiny_with(path: Path | None, **options) -> nn.Module:
    options = {
        "vit_width": 32,
        "vit_depth": 2,
        "vit_num_heads": 4,
        "input_res": 64,
        "aspect_ratio": 0.75,
    } | options
    return build_model("ViTPose", pretrained_path=None if path is None else str(path), **options)


def test_mae_weights_load_with_the_position_embedding_resized(tmp_path: Path, capsys) -> None:
    state = mae_state(32, 2, torch.Generator().manual_seed(7))
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": state}, path)
    torch.manual_seed(0)
    model = tiny_with(path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"note: {path}: MAE weights loaded into the backbone (27 tensors"
    )
    assert "cls_token, norm.weight, norm.bias, mask_token, decoder_* (5)" in err[0]
    loaded = model.state_dict()
    # the 14x14 grid resized to the 64x48 input's 4x3 patches by torch's bicubic interpolation, the class slot kept
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    resized = (
        F.interpolate(grid, size=(4, 3), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, 12, 32)
    )
    assert torch.equal(loaded["pos_embed"][:, :1], state["pos_embed"][:, :1])
    assert torch.equal(loaded["pos_embed"][:, 1:], resized)
    for key in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "patch_embed.proj.weight"):
        assert torch.equal(loaded[key], state[key]), key
    # what MAE has no counterpart for keeps its initialisation: the last norm, the decoder
    assert torch.equal(loaded["last_norm.weight"], torch.ones(32)) and not torch.equal(
        loaded["last_norm.bias"], state["norm.bias"]
    )
    torch.manual_seed(0)
    assert torch.equal(tiny_with(None).state_dict()["head.weight"], loaded["head.weight"])


def test_mae_vit_h_patch_kernel_is_zero_padded(tmp_path: Path, capsys) -> None:
    """MAE's ViT-H has 14x14 patches: the kernel is padded with zeros to 16x16, as the authors' loader does."""
    state = mae_state(32, 2, torch.Generator().manual_seed(8), side=16, kernel=14)
    path = tmp_path / "mae_pretrain_vit_huge_like.pth"
    torch.save({"model": state}, path)
    weight = tiny_with(path).state_dict()["patch_embed.proj.weight"]
    assert torch.equal(weight[..., 1:15, 1:15], state["patch_embed.proj.weight"])
    border = weight.clone()
    border[..., 1:15, 1:15] = 0
    assert not border.any()


def test_bad_mae_files_are_one_line_naming_file_and_key(tmp_path: Path, capsys) -> None:
    generator = torch.Generator().manual_seed(9)

    def error_of(state: dict, **options) -> str:
        path = tmp_path / f"mae-{len(list(tmp_path.iterdir()))}.pth"
        torch.save({"model": state}, path)
        with pytest.raises(ValueError) as error:
            tiny_with(path, **options)
        message = str(error.value)
        assert len(message.splitlines()) == 1 and str(path) in message
        return message

    wider = mae_state(64, 2, generator) | {"pos_embed": torch.zeros(1, 197, 32)}
    assert (
        "key 'patch_embed.proj.weight' has shape (64, 3, 16, 16) but ViTPose needs (32, 3, 16, 16)"
        in error_of(wider)
    )
    assert "key 'pos_embed' has width 64 but ViTPose's is 32" in error_of(mae_state(64, 2, generator))
    assert "no tensor for 'blocks.2.norm1.weight' (12 missing; the file has 2 blocks, ViTPose 3)" in error_of(
        mae_state(32, 2, generator), vit_depth=3
    )
    relative = mae_state(32, 2, generator) | {"blocks.0.attn.relative_position_bias_table": torch.zeros(3)}
    assert "key 'blocks.0.attn.relative_position_bias_table' has no counterpart" in error_of(relative)
    assert "'pos_embed' has shape (1, 190, 32)" in error_of(
        mae_state(32, 2, generator) | {"pos_embed": torch.zeros(1, 190, 32)}
    )
    # through the options: one line, exit status 2
    path = tmp_path / "wrong-width.pth"
    torch.save({"model": mae_state(64, 2, generator)}, path)
    opts = parse_options(
        ["-ModelConfig", str(CONF / "models" / "ViTPose-S.defconf"), "--vitWidth", "32", "--vitDepth", "2",
         "--vitNumHeads", "4", "--inputRes", "64", "--outputRes", "16", "--pretrainedPath", str(path)]
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        build_profiled(opts, frame_sizes(opts)[0])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("main.py: error: model ViTPose: ") and f"{path}: key 'pos_embed'" in line


# ------------------------------------------------------------------------ importer refusals


def test_bad_vitpose_sources_are_one_line(tmp_path: Path, capsys) -> None:
    source, _ = tiny_source(tmp_path, False, "ViTPose")
    state = torch.load(source, weights_only=True)["state_dict"]
    mmpose = mmpose_layout(state)

    def error_of(bad: dict, *options: str) -> str:
        path = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}.pth"
        torch.save({"state_dict": bad}, path)
        argv = ["vitpose", str(path), str(tmp_path / f"{path.stem}-out.pth"), "--inputRes", "64", *options]
        assert import_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    heads = ("--vitNumHeads", "4")
    wrong = dict(state) | {"backbone.blocks.1.mlp.fc1.weight": torch.zeros(128, 16)}
    err = error_of(wrong, *heads)
    assert (
        "'backbone.blocks.1.mlp.fc1.weight' has shape (128, 16) but 'blocks.1.mlp.fc1.weight' needs (128, 32)"
        in err
    )
    experts = dict(mmpose) | {"backbone.layers.0.ffn.experts.0.weight": torch.zeros(8, 32)}
    assert "'backbone.layers.0.ffn.experts.0.weight' has no counterpart in ViTPose" in error_of(
        experts, *heads
    )
    missing = {k: v for k, v in state.items() if not k.startswith("backbone.last_norm.")}
    assert "the source has nothing for 'last_norm.weight'" in error_of(missing, *heads)
    assert (
        "is 32 wide, none of the authors' sizes (384 (S), 768 (B), 1024 (L), 1280 (H)); give its attention heads with --vitNumHeads"
        in error_of(state)
    )
    assert "not divisible by 5 heads" in error_of(state, "--vitNumHeads", "5")
    err = error_of(state, *heads, "--aspectRatio", "1.0")  # a 64x64 input has 4x4 patches
    assert "'backbone.pos_embed' has shape (1, 13, 32) but a 64x64 input needs (1, 17, 32)" in err
    assert "--inputRes and --aspectRatio" in err
    three = dict(state) | {"keypoint_head.deconv_layers.6.weight": torch.zeros(16, 16, 4, 4)}
    assert "the source has 3 deconvolutions; ViTPose's classic decoder has 2" in error_of(three, *heads)
    assert "not a ViTPose network" in error_of({"final_layer.weight": torch.zeros(17, 4, 1, 1)})
    path = tmp_path / "hrnet-like.pth"
    torch.save(state, path)
    assert import_main(["hrnet", str(path), str(tmp_path / "x.pth"), "--vitNumHeads", "4"]) == 2
    assert "--vitNumHeads applies to vitpose" in capsys.readouterr().err


# ------------------------------------------------------------------------ the model itself


@pytest.mark.parametrize("decoder", ["classic", "simple"])
@pytest.mark.parametrize("size", [(64, 48), (32, 80)])
def test_heatmaps_at_a_quarter_of_the_input(decoder: str, size: tuple[int, int]) -> None:
    model = tiny_with(None, vit_decoder=decoder, input_res=size[0], aspect_ratio=size[1] / size[0]).eval()
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        (heatmaps,) = model(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (low,) = model(image)
    assert tuple(heatmaps.shape) == (2, 17, size[0] // 4, size[1] // 4)
    assert torch.isfinite(heatmaps).all() and torch.isfinite(low.float()).all()
    with pytest.raises(ValueError, match="built for a 16x12 patch grid"):
        tiny_with(None, input_res=256)(torch.zeros(1, 3, 64, 48))


def test_bad_model_options_are_value_errors_naming_the_parameter() -> None:
    cases = [
        ({"vit_size": "M"}, "vit_size must be one of S, B, L, H, got 'M'"),
        ({"vit_decoder": "deconv"}, "vit_decoder must be one of classic, simple, got 'deconv'"),
        ({"vit_num_heads": 5}, "vit_width 32 is not divisible by vit_num_heads 5"),
        ({"drop_path": 1.0}, "drop_path must be in [0, 1), got 1.0"),
        (
            {"input_res": 72},
            "input_res 72 with aspect_ratio 0.75 gives a 72x54 input; ViTPose needs both sides multiples of 16",
        ),
    ]
    for options, message in cases:
        with pytest.raises(ValueError) as error:
            tiny_with(None, **options)
        assert message in str(error.value), options


def test_drop_path_rates_and_stochastic_depth() -> None:
    """The authors' rule: rates from 0 to drop_path_rate over the blocks (torch.linspace, float32);
    a dropped sample's branch is 0, a kept one's scaled by 1 / (1 - rate); nothing in eval mode."""
    model = build_model(
        "ViTPose", vit_size="L", vit_width=16, vit_num_heads=2, input_res=32, aspect_ratio=1.0
    )
    assert [block.drop_rate for block in model.blocks] == [r.item() for r in torch.linspace(0, 0.5, 24)]
    torch.manual_seed(0)
    ones = torch.ones(4000, 3, 2)
    dropped = drop_path(ones, 0.25, training=True)
    assert dropped.unique().tolist() == [0.0, pytest.approx(4 / 3)]
    assert (dropped[:, 0, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal((dropped == 0).all(dim=(1, 2)), (dropped == 0).any(dim=(1, 2)))  # whole samples
    assert drop_path(ones, 0.25, training=False) is ones
    assert math.isclose(model.blocks[-1].drop_rate, 0.5)
