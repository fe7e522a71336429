"""Convert published checkpoints into checkpoints of this project.

    python -m models.import_weights princeton-vl SRC DST.pth [--trustSource]
    python -m models.import_weights hrnet SRC DST.pth [--inputRes 384] [--aspectRatio 0.75]
    python -m models.import_weights simplebaseline SRC DST.pth [--inputRes 384] [--aspectRatio 0.75]
    python -m models.import_weights rtmpose SRC DST.pth
    python -m models.import_weights vitpose SRC DST.pth [--inputRes 256] [--aspectRatio 0.75] [--vitNumHeads N]

``princeton-vl``: Newell et al.'s own PyTorch port of the Stacked Hourglass
(princeton-vl/pytorch_stacked_hourglass), which published 2- and 8-stack MPII checkpoints. Its
``train.py`` saves ``{'state_dict': ..., 'optimizer': ..., 'epoch': ...}`` whose keys carry the
wrappers' prefixes (``model.module.pre.0.conv.weight``). The network is this project's
``StackedHourGlass`` tensor for tensor, except that its ``Residual`` builds a 1x1 skip convolution
it never calls where the widths match; those are dropped.

``hrnet``: HRNet as leoxiaobin/deep-high-resolution-net.pytorch publishes it (``pose_hrnet_w32_256x192.pth``
and the others: a plain state dict of ``PoseHighResolutionNet``, keys possibly prefixed
``module.``), onto this project's ``HRNet``, tensor for tensor; width and joints from the shapes.

``simplebaseline``: Simple Baselines as microsoft/human-pose-estimation.pytorch publishes it
(``pose_resnet_50_256x192.pth.tar``, ...) and as the HRNet repository republishes it
(``pose_resnet_*.pth``): a plain state dict of ``PoseResNet``, onto ``SimpleBaseline``; ResNet
depth, deconvolutions, their filters and the joints from the shapes. Both codebases feed this
network BGR images normalised with ImageNet's RGB-ordered statistics, so the config says
``inputNorm: bgr``.

``rtmpose``: RTMPose-t/s/m/l as MMPose publishes them (``rtmpose-m_simcc-coco_pt-aic-coco_420e-
256x192-d8dd5ca4_20230127.pth`` and the others: ``{'meta', 'state_dict'}``, keys ``backbone.*``
(mmdet's CSPNeXt) and ``head.*`` (RTMCCHead)), onto ``RTMPose``, tensor for tensor. The size from
the backbone's widths and block counts, the joints from the head, and the input size and split
ratio from the head's shapes alone: its linear layer takes (H/32)(W/32) inputs and its classifiers
give W x r and H x r bins, which fix H, W and r (a checkpoint they do not fit is refused). The
config: COCO for 17 joints, MPII for 16, the input the weights were trained at (256x192, 384x288,
256x256), ImageNet-normalised RGB (what MMPose's data preprocessor feeds, bgr_to_rgb with ImageNet's
mean and std x 255), the SimCC label sigma MMPose's configs give that input (sqrt(side / 8) bins:
4.9 for 192, 5.66 for 256, 6 for 288, 6.93 for 384), MMPose's ``mmpose`` coordinate convention
(the crop's centre at (w/2, h/2), bin = x x r, the flip test mirrors the vectors without a shift),
flip test on. MMEngine keeps the dataset's metainfo, numpy arrays among it, in ``meta``: numpy
arrays, dtypes and scalars are allowed in a ``weights_only`` read (data, no code), for every
source.

``vitpose``: ViTPose as ViTAE-Transformer/ViTPose publishes it (mmcv checkpoints whose
``state_dict`` holds ``backbone.*``, timm's ViT names, and ``keypoint_head.*``) and as MMPose 1.x
republishes and retrains it (``td-hm_ViTPose-*_coco-256x192-*.pth``: MMPretrain's
``VisionTransformer`` names, ``backbone.layers.N.ln1``, ``ffn.layers``, ``backbone.ln1``, and
``head.*``), told apart by their keys, onto ``ViTPose``. Width, depth, decoder (classic or simple),
its filters and the joints from the shapes; the attention heads from the width (the authors' S, B,
L, H: 12, 12, 16, 16), or ``--vitNumHeads`` for another width. MMPose's position embedding has no
class slot (theirs is added to every token): ours gets a zero one. Config: COCO (17 joints) or MPII
(16) at the authors' 256x192 unless typed, heatmaps at 1/4, Gaussian sigma 2, the ``udp``
convention, flip test on without a shift, and DARK decoding (their test config's ``use_udp=True``
decodes Gaussian heatmaps with ``post_dark_udp``); ImageNet-normalised RGB as both pipelines feed.

The result holds the weights and a complete config, so ``-test --loadModel DST.pth``, ``-predict``
and ``-export`` run the published model. princeton-vl: stacks, width and joints inferred from the
shapes; MPII, 256x256 input, 64x64 heatmaps, the port's coordinate convention and its [0, 1] pixel
scale. hrnet and simplebaseline: COCO for 17 joints, MPII for 16; the input size the authors
published for that dataset (256x192 and 256x256) unless ``--inputRes``/``--aspectRatio`` say
otherwise (their 384x288 and 384x384 models); heatmaps at 1/4; Gaussian sigma 2; their ``hrnet``
coordinate convention; flip test on, as their results are reported.

The source is read with ``weights_only=True``; a file that needs more is refused unless
``--trustSource``. Every tensor is checked by name and shape, and a mismatch names the first key.
BatchNorm ``num_batches_tracked`` counters, which checkpoints saved by PyTorch 0.4.0 lack, are set
to 0 when absent (they only matter for BatchNorm with momentum None).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.options import REPO_ROOT, config_from_files

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that need it, so --help and argument errors answer at once

PREFIXES = ("model.", "module.")
# the port's PoseNet: pre = Conv(3, 64), Residual(64, 128), pool, Residual(128, 128), Residual(128, inp_dim)
PORT_STEM_CHANNELS = 64


class ConversionError(ValueError):
    """A source that cannot be converted; the message is one line naming the file and key."""


def numpy_data_globals() -> list[Any]:
    """What a pickled numpy array, dtype or scalar names, under numpy 1's module path (the releases'
    era) and numpy 2's: they rebuild data from bytes and call no other code, so a ``weights_only``
    read may allow them (MMEngine checkpoints keep numpy arrays in ``meta``)."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    # a dtype is rebuilt as an instance of its class (numpy.dtypes.Float32DType, ...), then given its state
    allowed += sorted({type(np.dtype(code)) for code in np.typecodes["All"]}, key=str)
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    return allowed


def read_source(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The source's state dict, wrapper prefixes removed."""
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(numpy_data_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not trust:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConversionError(
                f"{path} cannot be read with weights_only=True ({first}); if you trust its origin, "
                f"pass --trustSource to load it with full unpickling"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} holds no state dict (a dict of tensors, or one under 'state_dict')")
    cleaned = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


# ------------------------------------------------------------------------------ princeton-vl


def _residual_names(theirs: str, ours: str, with_skip: bool) -> dict[str, str]:
    """A port ``Residual`` (bn1, conv1.conv, bn2, conv2.conv, bn3, conv3.conv, skip_layer.conv)
    onto ours (branch.{0,1,2}.{0: BatchNorm, 2: Conv2d}, skip)."""
    names = {}
    for step in range(3):
        names[f"{theirs}.bn{step + 1}"] = f"{ours}.branch.{step}.0"
        names[f"{theirs}.conv{step + 1}.conv"] = f"{ours}.branch.{step}.2"
    if with_skip:
        names[f"{theirs}.skip_layer.conv"] = f"{ours}.skip"
    return names


def _hourglass_names(theirs: str, ours: str, depth: int) -> dict[str, str]:
    """The port's Hourglass (up1, low1, low2, low3) onto ours (skip, down, inner, up)."""
    names = _residual_names(f"{theirs}.up1", f"{ours}.skip.0", False)
    names |= _residual_names(f"{theirs}.low1", f"{ours}.down.0", False)
    if depth > 1:
        names |= _hourglass_names(f"{theirs}.low2", f"{ours}.inner", depth - 1)
    else:
        names |= _residual_names(f"{theirs}.low2", f"{ours}.inner.0", False)
    return names | _residual_names(f"{theirs}.low3", f"{ours}.up.0", False)


def princeton_vl_names(n_stack: int, depth: int = 4, width: int = 256) -> dict[str, str]:
    """Module name in the port -> module name in ``StackedHourglass`` (``models/posenet.py``)."""
    names = {"pre.0.conv": "stem.conv.0", "pre.0.bn": "stem.conv.1"}
    names |= _residual_names("pre.1", "stem.res1", True)  # 64 -> 128
    names |= _residual_names("pre.3", "stem.res2", False)  # 128 -> 128 (pre.2 is the max-pool)
    # 128 -> inp_dim: a projection unless inp_dim is 128 too
    names |= _residual_names("pre.4", "stem.res3", width != 2 * PORT_STEM_CHANNELS)
    for stack in range(n_stack):
        names |= _hourglass_names(f"hgs.{stack}.0", f"hourglasses.{stack}", depth)
        names |= _residual_names(f"features.{stack}.0", f"features.{stack}.0.0", False)
        names[f"features.{stack}.1.conv"] = f"features.{stack}.1.0"
        names[f"features.{stack}.1.bn"] = f"features.{stack}.1.1"
        names[f"outs.{stack}.conv"] = f"heads.{stack}"
    for stack in range(n_stack - 1):
        names[f"merge_features.{stack}.conv.conv"] = f"merge_features.{stack}"
        names[f"merge_preds.{stack}.conv.conv"] = f"merge_heatmaps.{stack}"
    return names


def princeton_vl_config(source: dict[str, torch.Tensor]) -> list[str]:
    """Options of the network the weights describe: stacks, width and joints from the shapes; the
    port's stem is 64, 128, 128 wide at every width (ours scales with the width unless told)."""
    stacks = sorted({int(m.group(1)) for k in source if (m := re.match(r"hgs\.(\d+)\.", k))})
    if not stacks or "outs.0.conv.weight" not in source or "pre.4.conv3.conv.weight" not in source:
        raise ConversionError("the source is not a princeton-vl PoseNet: no hgs.N, outs.0.conv or pre.4 keys")
    width = source["pre.4.conv3.conv.weight"].shape[0]
    joints = source["outs.0.conv.weight"].shape[0]
    return [
        "-DataConfig", str(REPO_ROOT / "conf" / "datasets" / "mpii.defconf"),
        "-ModelConfig", str(REPO_ROOT / "conf" / "models" / "StackedHourGlass.defconf"),
        "--nStack", str(len(stacks)), "--nChannels", str(width), "--nJoints", str(joints),
        "--stemChannels", str(PORT_STEM_CHANNELS),
        "--nModules", "1", "--nReductions", "4", "--inputRes", "256", "--outputRes", "64", "--hmGauss", "1",
        "--coordConvention", "princeton-vl", "--inputNorm", "unit", "--flipTest", "1",
    ]  # fmt: skip


def _build(config: dict[str, Any]) -> torch.nn.Module:
    """The network ``config`` describes (the registry imports torch and the models)."""
    from models.registry import build_model

    return build_model(config["model"], **config)


def convert(
    source: dict[str, torch.Tensor],
    names: dict[str, str],
    target: dict[str, torch.Tensor],
    model_name: str = "StackedHourGlass",
) -> dict[str, torch.Tensor]:
    """Rename every tensor of ``source`` by its module prefix and check it against ``target``
    (the state dict of the network built from the inferred config): same keys, same shapes.
    Tensors of modules the port builds but never calls are dropped; BatchNorm counters the source
    lacks (PyTorch 0.4.0 saved none) start at 0."""
    import torch

    converted: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        module, _, leaf = key.rpartition(".")
        if module not in names:
            if module.endswith("skip_layer.conv"):
                continue  # an equal-width residual's unused projection
            raise ConversionError(f"source key {key!r} has no counterpart in {model_name}")
        ours = f"{names[module]}.{leaf}"
        if ours not in target:
            raise ConversionError(f"source key {key!r} maps to {ours!r}, which the model does not have")
        if tuple(target[ours].shape) != tuple(value.shape):
            raise ConversionError(
                f"source key {key!r} has shape {tuple(value.shape)} but {ours!r} needs {tuple(target[ours].shape)}"
            )
        converted[ours] = value
    for key in target:
        if key.endswith(".num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros_like(target[key])
    missing = [key for key in target if key not in converted]
    if missing:
        raise ConversionError(f"the source has nothing for {missing[0]!r} ({len(missing)} tensors missing)")
    return converted


@dataclass(frozen=True)
class InputSize:
    """The input the weights were trained on, as typed (``--inputRes``, ``--aspectRatio``); None:
    the published default."""

    res: int | None = None
    aspect_ratio: float | None = None

    def options(self) -> list[str]:
        """Only what was typed, as config keys: for a source with a single published size."""
        typed = [("--inputRes", self.res), ("--aspectRatio", self.aspect_ratio)]
        options = [str(item) for key, value in typed if value is not None for item in (key, value)]
        if self.res is not None:
            options += ["--outputRes", str(self.res // 4)]
        return options


def import_princeton_vl(source: dict[str, torch.Tensor], size: InputSize) -> tuple[dict[str, Any], str]:
    config = config_from_files([*princeton_vl_config(source), *size.options()])
    model = _build(config)
    stacks = config["nStack"]
    weights = convert(source, princeton_vl_names(stacks, width=config["nChannels"]), model.state_dict())
    summary = f"{config['model']}, {stacks} stacks of {config['nChannels']}, {config['nJoints']} joints"
    return {"model": weights, "config": config, "epoch": 0, "source": "princeton-vl"}, summary


# ------------------------------------------------------------------------------ hrnet, simplebaseline

# joints -> (data config, the authors' input height and width / height): COCO 256x192, MPII 256x256
PUBLISHED_DATA = {17: ("coco", 256, 0.75), 16: ("mpii", 256, 1.0)}
# Both codebases' experiment files: Gaussian sigma 2 for COCO and MPII, heatmaps at 1/4.
AUTHORS_SIGMA = 2
HEATMAP_STRIDE = 4


def published_data(
    joints: int, published: dict[int, tuple[str, int, float]] = PUBLISHED_DATA
) -> tuple[str, int, float]:
    """(data config, input height, width / height) the authors published for ``joints`` joints."""
    if joints not in published:
        raise ConversionError(
            f"the weights predict {joints} joints: neither COCO's 17 nor MPII's 16, the joint sets the "
            f"authors published"
        )
    return published[joints]


def authors_data_options(
    joints: int,
    size: InputSize,
    multiple: int,
    published: dict[int, tuple[str, int, float]] = PUBLISHED_DATA,
    convention: str = "hrnet",
) -> list[str]:
    """Data config and sizes for weights with ``joints`` joints: the dataset whose joint order they
    use and its published input size (``published``), unless typed. The input's sides must be
    multiples of ``multiple`` (the network's coarsest stride), so its heatmaps are exactly 1/4 of
    it. ``convention``: the authors' coordinate convention."""
    dataset, default_res, default_aspect = published_data(joints, published)
    res = size.res or default_res
    aspect = size.aspect_ratio or default_aspect
    width = round(res * aspect)
    if res % multiple or width % multiple:
        raise ConversionError(
            f"--inputRes {res} with --aspectRatio {aspect} gives a {res}x{width} input; both sides must be "
            f"multiples of {multiple} for this network"
        )
    return [
        "-DataConfig", str(REPO_ROOT / "conf" / "datasets" / f"{dataset}.defconf"),
        "--nJoints", str(joints), "--inputRes", str(res), "--outputRes", str(res // HEATMAP_STRIDE),
        "--aspectRatio", str(aspect), "--hmGauss", str(AUTHORS_SIGMA), "--coordConvention", convention,
        "--flipTest", "1",
    ]  # fmt: skip


def _conv_bn(theirs_conv: str, theirs_bn: str, ours: str) -> dict[str, str]:
    """A conv and its BatchNorm onto ours, a Sequential (0: conv, 1: BatchNorm)."""
    return {theirs_conv: f"{ours}.0", theirs_bn: f"{ours}.1"}


def _residual_block_names(theirs: str, ours: str, bottleneck: bool, downsample: bool) -> dict[str, str]:
    """A ResNet BasicBlock/Bottleneck: both codebases use torchvision's attribute names."""
    layers = ("conv1", "bn1", "conv2", "bn2", *(("conv3", "bn3") if bottleneck else ()))
    names = {f"{theirs}.{layer}": f"{ours}.{layer}" for layer in layers}
    if downsample:
        names |= {f"{theirs}.downsample.{i}": f"{ours}.downsample.{i}" for i in (0, 1)}
    return names


def hrnet_names(modules: tuple[int, ...] = (1, 4, 3), blocks: int = 4) -> dict[str, str]:
    """Module name in ``PoseHighResolutionNet`` (lib/models/pose_hrnet.py with the w32/w48 configs)
    -> module name in ``models.hrnet.HRNet``.

    Theirs: conv1, bn1, conv2, bn2, layer1 (4 bottlenecks), transition1 (to branch 0: conv-BN-ReLU
    Sequential; to branch 1: a Sequential holding one such Sequential), stage2, transition2 (None
    for the kept branches, then the new one like transition1's second), stage3, transition3, stage4
    (``HighResolutionModule``: branches.b.k BasicBlocks, fuse_layers.i.j with None on the diagonal),
    final_layer."""
    names = _conv_bn("conv1", "bn1", "stem.0") | _conv_bn("conv2", "bn2", "stem.1")
    for block in range(4):
        names |= _residual_block_names(f"layer1.{block}", f"stage1.{block}", True, block == 0)
    names |= _conv_bn("transition1.0.0", "transition1.0.1", "transitions.0.0")
    names |= _conv_bn("transition1.1.0.0", "transition1.1.0.1", "transitions.0.1")
    for stage, n_modules in enumerate(modules):
        n_branches = stage + 2
        if stage > 0:  # transition{s} into stage s + 1 adds branch s, built from the last one
            theirs = f"transition{stage + 1}.{n_branches - 1}.0"
            names |= _conv_bn(f"{theirs}.0", f"{theirs}.1", f"transitions.{stage}.0")
        for index in range(n_modules):
            theirs, ours = f"stage{stage + 2}.{index}", f"stages.{stage}.{index}"
            for branch in range(n_branches):
                for block in range(blocks):
                    names |= _residual_block_names(
                        f"{theirs}.branches.{branch}.{block}",
                        f"{ours}.branches.{branch}.{block}",
                        False,
                        False,
                    )
            last = stage == len(modules) - 1 and index == n_modules - 1
            for i in range(1 if last else n_branches):
                for j in range(n_branches):
                    fuse, ours_fuse = f"{theirs}.fuse_layers.{i}.{j}", f"{ours}.fuse.{i}.{j}"
                    if j > i:  # 1x1 conv, BN (then their nn.Upsample, no tensors)
                        names |= _conv_bn(f"{fuse}.0", f"{fuse}.1", ours_fuse)
                    for step in range(i - j):  # stride-2 conv-BN(-ReLU) steps
                        names |= _conv_bn(f"{fuse}.{step}.0", f"{fuse}.{step}.1", f"{ours_fuse}.{step}")
    names["final_layer"] = "head"
    return names


def import_hrnet(source: dict[str, torch.Tensor], size: InputSize) -> tuple[dict[str, Any], str]:
    if "final_layer.weight" not in source or not any(k.startswith("stage4.") for k in source):
        raise ConversionError("the source is not an HRNet pose network: no final_layer or stage4 keys")
    joints, width = source["final_layer.weight"].shape[:2]
    config = config_from_files(
        [
            "-ModelConfig", str(REPO_ROOT / "conf" / "models" / "HRNet-W32.defconf"),
            "--hrnetWidth", str(width), *authors_data_options(joints, size, 32),
        ]
    )  # fmt: skip
    model = _build(config)
    weights = convert(source, hrnet_names(), model.state_dict(), "HRNet")
    summary = f"HRNet-W{width}, {joints} joints, {_input(config)} input"
    return {"model": weights, "config": config, "epoch": 0, "source": "hrnet"}, summary


# (blocks per layer, bottleneck) -> ResNet depth, as torchvision and both codebases build them
RESNET_DEPTHS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}


def simple_baseline_names(blocks: tuple[int, ...], bottleneck: bool, n_deconv: int) -> dict[str, str]:
    """Module name in ``PoseResNet`` (lib/models/pose_resnet.py) -> module name in
    ``models.simple_baseline.SimpleBaseline``. Theirs: the ResNet's conv1, bn1, layer1-4 at the top
    level, ``deconv_layers`` one flat Sequential of (ConvTranspose2d, BatchNorm2d, ReLU) triples,
    ``final_layer``; ours: ``trunk`` (torchvision's names), ``deconvs.i`` (0: deconv, 1: BN), ``head``."""
    names = {"conv1": "trunk.conv1", "bn1": "trunk.bn1"}
    for layer, count in enumerate(blocks, start=1):
        for block in range(count):
            # the first block of layers 2-4 halves the resolution; layer 1's widens 64 -> 256 (bottleneck)
            downsample = block == 0 and (layer > 1 or bottleneck)
            names |= _residual_block_names(
                f"layer{layer}.{block}", f"trunk.layer{layer}.{block}", bottleneck, downsample
            )
    for index in range(n_deconv):
        names[f"deconv_layers.{3 * index}"] = f"deconvs.{index}.0"
        names[f"deconv_layers.{3 * index + 1}"] = f"deconvs.{index}.1"
    names["final_layer"] = "head"
    return names


def import_simple_baseline(source: dict[str, torch.Tensor], size: InputSize) -> tuple[dict[str, Any], str]:
    if "final_layer.weight" not in source or "deconv_layers.0.weight" not in source:
        raise ConversionError(
            "the source is not a Simple Baselines network: no final_layer or deconv_layers keys"
        )
    counts = {}
    for key in source:
        if match := re.match(r"layer([1-4])\.(\d+)\.", key):
            layer, block = int(match.group(1)), int(match.group(2))
            counts[layer] = max(counts.get(layer, 0), block + 1)
    blocks = tuple(counts.get(layer, 0) for layer in (1, 2, 3, 4))
    bottleneck = "layer1.0.conv3.weight" in source
    depth = RESNET_DEPTHS.get((blocks, bottleneck))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ConversionError(
            f"the source's ResNet has {blocks} {kind} blocks per layer: not ResNet 18/34/50/101/152"
        )
    deconvs = sorted(
        int(m.group(1)) for k in source if (m := re.fullmatch(r"deconv_layers\.(\d+)\.weight", k))
    )
    deconvs = [index for index in deconvs if source[f"deconv_layers.{index}.weight"].dim() == 4]
    if len(deconvs) != 3:  # heatmaps at input / 32 * 2^n: 1/4 with the published three
        raise ConversionError(
            f"the source has {len(deconvs)} deconvolutions; the published networks have 3 "
            f"(heatmaps at 1/4 of the input)"
        )
    first = source["deconv_layers.0.weight"]  # (in, out, k, k): a transposed convolution's layout
    if first.shape[-1] != 4:
        raise ConversionError(
            f"source key 'deconv_layers.0.weight' has {first.shape[-1]}x{first.shape[-1]} kernels; "
            f"SimpleBaseline has the published 4x4 only"
        )
    joints = source["final_layer.weight"].shape[0]
    config = config_from_files(
        [
            "-ModelConfig", str(REPO_ROOT / "conf" / "models" / "SimpleBaseline.defconf"),
            "--baseName", f"resnet{depth}", "--nDeconv", str(len(deconvs)), "--deconvFilters", str(first.shape[1]),
            "--inputNorm", "bgr", *authors_data_options(joints, size, 32),
        ]
    )  # fmt: skip
    model = _build(config)
    weights = convert(
        source, simple_baseline_names(blocks, bottleneck, len(deconvs)), model.state_dict(), "SimpleBaseline"
    )
    summary = (
        f"SimpleBaseline resnet{depth}, {len(deconvs)} deconvolutions of {config['deconvFilters']}, "
        f"{joints} joints, {_input(config)} input"
    )
    return {"model": weights, "config": config, "epoch": 0, "source": "simplebaseline"}, summary


# ------------------------------------------------------------------------------ rtmpose


def _conv_module(theirs: str, ours: str) -> dict[str, str]:
    """mmcv's ConvModule (conv, bn, activate) onto ``models.rtmpose.ConvBNAct`` (conv, bn, act)."""
    return {f"{theirs}.conv": f"{ours}.conv", f"{theirs}.bn": f"{ours}.bn"}


def rtmpose_names(blocks: tuple[int, ...]) -> dict[str, str]:
    """Module name in MMPose's RTMPose (``TopdownPoseEstimator``: mmdet's ``CSPNeXt`` as
    ``backbone``, ``RTMCCHead`` as ``head``) -> module name in ``models.rtmpose.RTMPose``, for
    ``blocks`` CSPNeXt blocks in each of the four stages.

    Theirs: ``stem.0-2`` ConvModules; ``stage{s}`` a Sequential of the stride-2 ConvModule, in the
    last stage ``SPPBottleneck`` (conv1, conv2), then ``CSPLayer`` (main_conv, short_conv,
    final_conv, ``blocks.j`` = CSPNeXtBlock with conv1 and conv2 a DepthwiseSeparableConvModule of
    depthwise_conv and pointwise_conv, ``attention.fc``); the head's final_layer, ``mlp`` =
    (ScaleNorm g, Linear), ``gau`` (RTMCCBlock: uv, o, gamma, beta, ``ln`` ScaleNorm,
    ``res_scale.scale``), cls_x, cls_y."""
    names = {}
    for index in range(3):
        names |= _conv_module(f"backbone.stem.{index}", f"backbone.stem.{index}")
    for stage, count in enumerate(blocks):
        theirs, ours = f"backbone.stage{stage + 1}", f"backbone.stages.{stage}"
        names |= _conv_module(f"{theirs}.0", f"{ours}.down")
        spp = stage == len(blocks) - 1  # P5: only the last stage pools
        if spp:
            names |= _conv_module(f"{theirs}.1.conv1", f"{ours}.spp.reduce")
            names |= _conv_module(f"{theirs}.1.conv2", f"{ours}.spp.expand")
        csp = f"{theirs}.{2 if spp else 1}"
        for their_name, our_name in (("main_conv", "main"), ("short_conv", "short"), ("final_conv", "final")):
            names |= _conv_module(f"{csp}.{their_name}", f"{ours}.csp.{our_name}")
        names[f"{csp}.attention.fc"] = f"{ours}.csp.attention.fc"
        for block in range(count):
            their_block, our_block = f"{csp}.blocks.{block}", f"{ours}.csp.blocks.{block}"
            names |= _conv_module(f"{their_block}.conv1", f"{our_block}.conv")
            names |= _conv_module(f"{their_block}.conv2.depthwise_conv", f"{our_block}.depthwise")
            names |= _conv_module(f"{their_block}.conv2.pointwise_conv", f"{our_block}.pointwise")
    return names | {
        "head.final_layer": "head.conv",
        "head.mlp.0": "head.norm",
        "head.mlp.1": "head.embed",
        "head.gau": "head.gau",  # gamma, beta
        "head.gau.ln": "head.gau.norm",
        "head.gau.uv": "head.gau.uv",
        "head.gau.o": "head.gau.out",
        "head.gau.res_scale": "head.gau",  # res_scale.scale -> gau.scale
        "head.cls_x": "head.cls_x",
        "head.cls_y": "head.cls_y",
    }


def rtmpose_size_of(source: dict[str, torch.Tensor]) -> tuple[str, tuple[int, ...]]:
    """The size letter and the blocks per stage, from the stem's output width and the block count
    of each stage: the four sizes differ in both."""
    from models.rtmpose import SIZES, stage_layout

    needed = ("backbone.stem.2.conv.weight", "head.gau.uv.weight", "head.final_layer.weight")
    if not all(key in source for key in needed):
        raise ConversionError(
            "the source is not an RTMPose network: no backbone.stem.2.conv, head.gau.uv or head.final_layer keys"
        )
    width = source["backbone.stem.2.conv.weight"].shape[0]
    counts: dict[int, int] = {}
    for key in source:
        if match := re.match(r"backbone\.stage(\d+)\.\d+\.blocks\.(\d+)\.", key):
            stage, block = int(match.group(1)), int(match.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    blocks = tuple(counts.get(stage, 0) for stage in range(1, 5))
    for size in SIZES:
        _, stages = stage_layout(size)
        if stages[0][0] == width and tuple(stage[2] for stage in stages) == blocks:
            return size, blocks
    raise ConversionError(
        f"the source's CSPNeXt has {width} channels after the stem and {blocks} blocks per stage: none "
        f"of RTMPose's sizes {', '.join(SIZES)}"
    )


def rtmpose_input_of(source: dict[str, torch.Tensor]) -> tuple[int, int, float]:
    """(height, width, split ratio) the head was built for: its linear layer takes h x w inputs
    (the stride-32 map flattened) and its classifiers give W x r and H x r bins, so
    Wy / Wx = h / w; with h x w known that fixes h and w, then r = Wx / W."""
    keys = ("head.mlp.1.weight", "head.cls_x.weight", "head.cls_y.weight")
    if not all(key in source and source[key].dim() == 2 for key in keys):
        raise ConversionError("the source's head lacks a 2-D head.mlp.1, head.cls_x or head.cls_y weight")
    from models.rtmpose import STRIDE  # the head reads the backbone's stride-32 map, flattened

    flat = source["head.mlp.1.weight"].shape[1]
    bins_x, bins_y = source["head.cls_x.weight"].shape[0], source["head.cls_y.weight"].shape[0]
    for rows in range(1, flat + 1):
        cols = flat // rows
        if rows * cols == flat and bins_y * cols == bins_x * rows:
            height, width = rows * STRIDE, cols * STRIDE
            ratio = bins_x / width
            if round(width * ratio) == bins_x and round(height * ratio) == bins_y:
                return height, width, ratio
    raise ConversionError(
        f"the source's head fits no input: 'head.mlp.1.weight' takes {flat} values (a stride-32 map "
        f"h x w) but 'head.cls_x.weight' and 'head.cls_y.weight' give {bins_x} and {bins_y} bins, not "
        f"in the ratio w : h of any such map"
    )


def simcc_sigma(height: int, width: int) -> str:
    """MMPose's SimCCLabel sigma (x,y) for a height x width input, as its RTMPose configs set it:
    sqrt(side / 8) to 2 decimals gives each of their values (4.9 for 192, 5.66 for 256, 6 for 288,
    6.93 for 384)."""
    return ",".join(f"{round((side / 8) ** 0.5, 2):g}" for side in (width, height))


def import_rtmpose(source: dict[str, torch.Tensor], size: InputSize) -> tuple[dict[str, Any], str]:
    letter, blocks = rtmpose_size_of(source)
    joints = source["head.final_layer.weight"].shape[0]
    dataset, _, _ = published_data(joints)
    height, width, ratio = rtmpose_input_of(source)
    typed_width = round((size.res or height) * (size.aspect_ratio or width / height))
    if (size.res or height) != height or typed_width != width:
        raise ConversionError(
            f"--inputRes/--aspectRatio give a {size.res or height}x{typed_width} input, but the source's "
            f"head was built for {height}x{width} (its shapes fix the input; leave both out)"
        )
    config = config_from_files(
        [
            "-ModelConfig", str(REPO_ROOT / "conf" / "models" / f"RTMPose-{letter}.defconf"),
            "-DataConfig", str(REPO_ROOT / "conf" / "datasets" / f"{dataset}.defconf"),
            "--rtmposeSize", letter, "--nJoints", str(joints), "--inputRes", str(height),
            "--aspectRatio", str(width / height), "--simccSplitRatio", str(ratio),
            "--simccSigma", simcc_sigma(height, width), "--inputNorm", "imagenet",
            "--coordConvention", "mmpose", "--flipTest", "1",
        ]
    )  # fmt: skip
    model = _build(config)
    weights = convert(source, rtmpose_names(blocks), model.state_dict(), "RTMPose")
    summary = f"RTMPose-{letter}, {joints} joints, {height}x{width} input, {ratio:g} bins per pixel"
    return {"model": weights, "config": config, "epoch": 0, "source": "rtmpose"}, summary


# ------------------------------------------------------------------------------ vitpose

# ViTPose's own configs use 256x192 crops for COCO and for MPII (ViTPose_*_mpii_256x192.py)
VITPOSE_DATA = {17: ("coco", 256, 0.75), 16: ("mpii", 256, 0.75)}


@dataclass(frozen=True)
class ViTPoseLayout:
    """Where a ViTPose checkpoint keeps its tensors: the repository's (``backbone.blocks``,
    ``keypoint_head``, timm's names) or MMPose 1.x's (MMPretrain's ``VisionTransformer``:
    ``backbone.layers``, ``ln1``/``ln2``, ``ffn.layers``, ``head``)."""

    name: str
    blocks: str  # the blocks' prefix
    head: str  # the decoder's prefix
    pos_embed: str
    patch: str  # the patch convolution
    last_norm: str
    block_parts: tuple[tuple[str, str], ...]  # (their module in a block, ours)


VITPOSE_LAYOUTS = (
    ViTPoseLayout(
        "ViTPose", "backbone.blocks", "keypoint_head", "backbone.pos_embed", "backbone.patch_embed.proj",
        "backbone.last_norm",
        (("norm1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("norm2", "norm2"),
         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")),
    ),
    ViTPoseLayout(
        "MMPose 1.x", "backbone.layers", "head", "backbone.pos_embed", "backbone.patch_embed.projection",
        "backbone.ln1",
        (("ln1", "norm1"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("ln2", "norm2"),
         ("ffn.layers.0.0", "mlp.fc1"), ("ffn.layers.1", "mlp.fc2")),
    ),
)  # fmt: skip


def vitpose_layout(source: dict[str, torch.Tensor]) -> ViTPoseLayout:
    """The layout whose blocks and decoder the source's keys hold."""
    for layout in VITPOSE_LAYOUTS:
        if (
            any(k.startswith(f"{layout.blocks}.") for k in source)
            and f"{layout.head}.final_layer.weight" in source
        ):
            return layout
    raise ConversionError(
        "the source is not a ViTPose network: neither backbone.blocks and keypoint_head keys (the ViTPose "
        "repository's) nor backbone.layers and head keys (MMPose 1.x's)"
    )


def vitpose_names(layout: ViTPoseLayout, depth: int, n_deconv: int) -> dict[str, str]:
    """Module name in ``layout`` -> module name in ``models.vitpose.ViTPose`` (the position
    embedding, a parameter of the backbone itself, is converted apart). Both layouts' decoders are
    one Sequential of (ConvTranspose2d, BatchNorm2d, ReLU) triples, ``deconv_layers``, then
    ``final_layer``; ours: ``deconvs.i`` (0: deconv, 1: BN), ``head``."""
    names = {layout.patch: "patch_embed.proj", layout.last_norm: "last_norm"}
    for block in range(depth):
        for theirs, ours in layout.block_parts:
            names[f"{layout.blocks}.{block}.{theirs}"] = f"blocks.{block}.{ours}"
    for index in range(n_deconv):
        names[f"{layout.head}.deconv_layers.{3 * index}"] = f"deconvs.{index}.0"
        names[f"{layout.head}.deconv_layers.{3 * index + 1}"] = f"deconvs.{index}.1"
    names[f"{layout.head}.final_layer"] = "head"
    return names


def _vitpose_decoder(source: dict[str, torch.Tensor], layout: ViTPoseLayout) -> tuple[str, int, int]:
    """(decoder, its deconvolutions, their filters) from the shapes: ``classic`` has two 4x4
    deconvolutions and a 1x1 convolution, ``simple`` none and a 3x3 one."""
    deconvs = sorted(
        int(m.group(1))
        for k in source
        if (m := re.fullmatch(rf"{re.escape(layout.head)}\.deconv_layers\.(\d+)\.weight", k))
        and source[k].dim() == 4
    )
    final_key = f"{layout.head}.final_layer.weight"
    kernel = source[final_key].shape[-1] if source[final_key].dim() == 4 else 0
    if not deconvs:
        if kernel != 3:
            raise ConversionError(
                f"source key {final_key!r} has {kernel}x{kernel} kernels without deconvolutions; ViTPose's "
                f"simple decoder has a 3x3 one"
            )
        return "simple", 0, 256
    if len(deconvs) != 2:
        raise ConversionError(
            f"the source has {len(deconvs)} deconvolutions; ViTPose's classic decoder has 2 (heatmaps at 1/4)"
        )
    first_key = f"{layout.head}.deconv_layers.{deconvs[0]}.weight"
    if source[first_key].shape[-1] != 4:
        size = source[first_key].shape[-1]
        raise ConversionError(f"source key {first_key!r} has {size}x{size} kernels; ViTPose's are 4x4")
    return "classic", 2, source[first_key].shape[1]  # (in, out, k, k): a transposed convolution's layout


def import_vitpose(
    source: dict[str, torch.Tensor], size: InputSize, heads: int | None = None
) -> tuple[dict[str, Any], str]:
    import torch

    from models.vitpose import PATCH, VIT_SIZES

    layout = vitpose_layout(source)
    if layout.pos_embed not in source or source[layout.pos_embed].dim() != 3:
        raise ConversionError(f"the source has no {layout.pos_embed!r} of shape (1, positions, width)")
    positions, width = source[layout.pos_embed].shape[1:]
    depth = 1 + max(
        int(m.group(1)) for k in source if (m := re.match(rf"{re.escape(layout.blocks)}\.(\d+)\.", k))
    )
    # the authors' sizes by token width; heads cannot be read from shapes
    sizes_by_width = {size.width: (name, size.depth, size.heads) for name, size in VIT_SIZES.items()}
    known = width in sizes_by_width
    if heads is None and not known:
        widths = ", ".join(f"{w} ({name})" for w, (name, _, _) in sizes_by_width.items())
        raise ConversionError(
            f"source key {layout.pos_embed!r} is {width} wide, none of the authors' sizes ({widths}); give "
            f"its attention heads with --vitNumHeads"
        )
    # an unknown width takes B's settings (drop path, recipe) with its own width, depth and heads
    vit_size, size_depth, size_heads = sizes_by_width[width] if known else ("B", None, None)
    heads = heads or size_heads
    if width % heads:
        raise ConversionError(
            f"source key {layout.pos_embed!r} is {width} wide: not divisible by {heads} heads"
        )
    overrides = [] if known else ["--vitWidth", str(width)]
    overrides += ["--vitDepth", str(depth)] if depth != size_depth else []
    overrides += ["--vitNumHeads", str(heads)] if heads != size_heads else []
    decoder, n_deconv, filters = _vitpose_decoder(source, layout)
    joints = source[f"{layout.head}.final_layer.weight"].shape[0]
    config = config_from_files(
        [
            "-ModelConfig", str(REPO_ROOT / "conf" / "models" / f"ViTPose-{vit_size}.defconf"),
            "--vitSize", vit_size, "--vitDecoder", decoder, "--deconvFilters", str(filters),
            *overrides,
            *authors_data_options(joints, size, PATCH, VITPOSE_DATA, "udp"),
            # their test config's decoding: use_udp with Gaussian heatmaps runs DARK (post_dark_udp)
            "--postProcess", "dark", "--inputNorm", "imagenet",
        ]
    )  # fmt: skip
    model = _build(config)
    target = model.state_dict()
    # the position embedding: theirs (1, 1 + h*w, C) with the class slot that the forward pass adds to
    # every token; MMPose's (1, h*w, C) without one (the slot is 0 here, which adds nothing)
    ours = tuple(target["pos_embed"].shape)
    slots = 1 if layout.name == "ViTPose" else 0
    if positions + 1 - slots != ours[1] or width != ours[2]:
        grid = model.grid
        raise ConversionError(
            f"source key {layout.pos_embed!r} has shape {tuple(source[layout.pos_embed].shape)} but a "
            f"{_input(config)} input needs {(1, ours[1] - 1 + slots, ours[2])} ({grid[0]}x{grid[1]} patches); "
            f"give the input size the weights were trained at with --inputRes and --aspectRatio"
        )
    position = source[layout.pos_embed]
    if not slots:
        position = torch.cat([torch.zeros_like(position[:, :1]), position], dim=1)
    rest = {key: value for key, value in source.items() if key != layout.pos_embed}
    without = {key: value for key, value in target.items() if key != "pos_embed"}
    weights = convert(rest, vitpose_names(layout, depth, n_deconv), without, "ViTPose")
    weights["pos_embed"] = position
    summary = (
        f"ViTPose ({layout.name} layout), width {width}, {depth} blocks, {heads} heads, {decoder} decoder, "
        f"{joints} joints, {_input(config)} input"
    )
    return {"model": weights, "config": config, "epoch": 0, "source": "vitpose"}, summary


def _input(config: dict[str, Any]) -> str:
    return f"{config['inputRes']}x{round(config['inputRes'] * config['aspectRatio'])}"


IMPORTERS: dict[str, Callable[[dict[str, torch.Tensor], InputSize], tuple[dict[str, Any], str]]] = {
    "princeton-vl": import_princeton_vl,
    "hrnet": import_hrnet,
    "simplebaseline": import_simple_baseline,
    "rtmpose": import_rtmpose,
    "vitpose": import_vitpose,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.import_weights", description=__doc__.splitlines()[0]
    )
    parser.add_argument("source_format", choices=sorted(IMPORTERS), help="who published the checkpoint")
    parser.add_argument("source", type=Path, help="the published checkpoint")
    parser.add_argument("destination", type=Path, help="the checkpoint of this project to write")
    parser.add_argument("--trustSource", action="store_true", help="allow full unpickling of the source")
    parser.add_argument(
        "--inputRes",
        type=int,
        default=None,
        help="input height the weights were trained at (default: published; rtmpose: from the shapes)",
    )
    parser.add_argument(
        "--aspectRatio", type=float, default=None, help="input width / height (default: published)"
    )
    parser.add_argument(
        "--vitNumHeads",
        type=int,
        default=None,
        help="vitpose: attention heads, for a width none of the authors' sizes has (default: by width)",
    )
    args = parser.parse_args(argv)
    try:
        if args.destination.exists():
            raise ConversionError(
                f"{args.destination} exists; choose a new file name (nothing is overwritten)"
            )
        for key in ("inputRes", "aspectRatio"):
            if getattr(args, key) is not None and not getattr(args, key) > 0:
                raise ConversionError(f"--{key} must be > 0, got {getattr(args, key)}")
        size = InputSize(args.inputRes, args.aspectRatio)
        extra = {}
        if args.vitNumHeads is not None:
            if args.source_format != "vitpose" or args.vitNumHeads < 1:
                raise ConversionError(
                    f"--vitNumHeads applies to vitpose and must be >= 1, got {args.vitNumHeads} for "
                    f"{args.source_format}"
                )
            extra["heads"] = args.vitNumHeads
        source = read_source(args.source, args.trustSource)
        state, summary = IMPORTERS[args.source_format](source, size, **extra)
    except ConversionError as error:
        print(f"import_weights: error: {error}", file=sys.stderr)
        return 2
    from utils.checkpoint import save_checkpoint

    state["config"]["loadModel"] = ""
    save_checkpoint(state, args.destination)
    config = state["config"]
    print(
        f"wrote {args.destination}: {summary}, {len(state['model'])} tensors, "
        f"convention {config['coordConvention']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
