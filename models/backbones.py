"""ImageNet backbones from torchvision, built offline.

Models are always constructed with ``weights=None`` so nothing is ever downloaded; ImageNet weights
are loaded only when a copy already exists on this machine (an explicit path, or torchvision's own
download cache). Without one, a single notice goes to stderr and the backbone trains from scratch.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.base import IMAGENET_MEAN, IMAGENET_STD
from models.layers import bilinear_resize

# name -> (torchvision.models builder, its weights enum, trunk output channels); looked up only
# when a backbone is built: importing torchvision costs every process about 3 s (torch._dynamo),
# which a run of a model without a torchvision trunk need not pay
_BACKBONES: dict[str, tuple[str, str, int]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "resnet34": ("resnet34", "ResNet34_Weights", 512),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
    "resnet101": ("resnet101", "ResNet101_Weights", 2048),
    "resnet152": ("resnet152", "ResNet152_Weights", 2048),
    "inception_v3": ("inception_v3", "Inception_V3_Weights", 2048),
    "googlenet": ("googlenet", "GoogLeNet_Weights", 1024),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(_BACKBONES)


def _torchvision_entry(name: str) -> tuple[Callable[..., nn.Module], Any, int]:
    """(builder, weights enum, channels) of backbone ``name``."""
    import torchvision

    builder, weights, channels = _BACKBONES[name]
    return getattr(torchvision.models, builder), getattr(torchvision.models, weights), channels


INCEPTION_MIN_SIZE = 75  # below this the stride-2 valid convolutions of Inception v3 leave nothing

# Backbone names whose "no weights" notice was already printed: a model with several stages that
# share a backbone type (DeepPose's cascade) should say it once, not once per stage.
_NOTICED: set[str] = set()


def to_signed_unit(image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) with the image ImageNet-normalised in its first three channels -> the same with
    the image as Google's ImageNet weights (Inception v3, GoogLeNet) were trained on it, (x - 0.5) /
    0.5 per channel; channels beyond the third (IEF's joint maps) pass unchanged."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (image[:, :3] * std + mean - 0.5) / 0.5
    return rgb if image.shape[1] == 3 else torch.cat([rgb, image[:, 3:]], dim=1)


class InceptionTrunk(nn.Module):
    """Inception v3 without its classifier and auxiliary head: (N, 3, H, W) -> (N, 2048, ~H/32, ~W/32).

    Its convolutions are unpadded, so the output is slightly smaller than H/32 (8x8 at 299, 6x6 at 256);
    callers that need an exact grid resize the features. The Google-trained ImageNet weights expect
    inputs scaled to [-1, 1], so when they are loaded ``transform_input`` converts our ImageNet
    mean/std normalisation to that range (as torchvision does for its pretrained model)."""

    def __init__(self, model: nn.Module, transform_input: bool = False) -> None:
        super().__init__()
        self.transform_input = transform_input
        names = [
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
            "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
        ]  # fmt: skip
        self.layers = nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if min(height, width) < INCEPTION_MIN_SIZE:
            raise ValueError(
                f"inception_v3 needs inputs of at least {INCEPTION_MIN_SIZE}x{INCEPTION_MIN_SIZE} px, "
                f"got {height}x{width}; use a larger inputRes or a ResNet backbone"
            )
        return self.layers(to_signed_unit(image) if self.transform_input else image)


class GoogLeNetTrunk(nn.Module):
    """GoogLeNet (torchvision's, with batch normalisation) without its classifier and auxiliary
    heads: (N, C, H, W) -> (N, 1024, ceil(H/32), ceil(W/32)) (its pools round up). Like Inception
    v3, its ImageNet weights were trained on inputs scaled to [-1, 1], so when they are loaded
    ``transform_input`` converts the image to that range (:func:`to_signed_unit`)."""

    def __init__(self, model: nn.Module, transform_input: bool = False) -> None:
        super().__init__()
        self.transform_input = transform_input
        names = [
            "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
            "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
            "inception5a", "inception5b",
        ]  # fmt: skip
        self.layers = nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(to_signed_unit(image) if self.transform_input else image)


def widen_first_convolution(trunk: nn.Module, in_channels: int, zero_extra: bool) -> None:
    """Give ``trunk``'s first convolution ``in_channels`` input channels (more than its 3), in
    place. The first three keep their filters; the extra ones start at zero when ``zero_extra``
    (ImageNet weights: the trunk then computes exactly the ImageNet features until the extra
    inputs' filters are learnt), else at the convolution's own initialisation scaled like the
    rest (a trunk trained from scratch)."""
    parent, name, conv = next(
        (module, child_name, child)
        for module in trunk.modules()
        for child_name, child in module.named_children()
        if isinstance(child, nn.Conv2d)
    )
    if in_channels <= conv.in_channels:
        raise ValueError(f"in_channels must exceed {conv.in_channels}, got {in_channels}")
    wider = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None,
    )  # fmt: skip
    with torch.no_grad():
        extra = wider.weight[:, conv.in_channels :]
        if zero_extra:
            extra.zero_()
        else:  # the image's filters' scale, so the extra inputs neither dominate nor vanish
            extra.normal_().mul_(conv.weight.std())
        wider.weight[:, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            wider.bias.copy_(conv.bias)
    setattr(parent, name, wider)


def _resnet_trunk(model: nn.Module) -> nn.Sequential:
    # Keeping torchvision's child names keeps state-dict keys identical (minus "fc.").
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))


def cached_weight_paths(name: str) -> list[Path]:
    """Where torchvision's downloader would have stored ``name``'s ImageNet weights, V1 first."""
    _, weights_enum, _ = _torchvision_entry(name)
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    ordered = sorted(weights_enum, key=lambda w: w.name != "IMAGENET1K_V1")
    return [checkpoints / Path(w.url).name for w in ordered]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Accept the common training-script wrappers around a bare state dict.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_imagenet(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    # Classifier and auxiliary-head weights are not part of the trunk, so they may be absent or extra.
    def is_head(key: str) -> bool:
        return key.startswith(("fc.", "AuxLogits.", "aux1.", "aux2."))

    state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "aux1.", "aux2."))}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not is_head(k)]
    unexpected = [k for k in result.unexpected_keys if not is_head(k)]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match torchvision's {name}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def torchvision_backbone(
    name: str, pretrained_path: str | None = None, in_channels: int = 3
) -> tuple[nn.Module, int]:
    """Classifier-free torchvision trunk and its output channel count.

    ``name`` is one of resnet18/34/50/101/152, inception_v3 or googlenet. ResNet trunks map
    (N, 3, H, W) to (N, C, H/32, W/32) (exactly, for H and W divisible by 32). ImageNet weights
    come from ``pretrained_path`` if given (it must exist), else from torchvision's cache
    (``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``); nothing is downloaded.
    ``in_channels`` above 3 widens the first convolution (:func:`widen_first_convolution`): the
    extra channels' filters start at zero over ImageNet weights.
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONE_NAMES)}")
    builder, _, channels = _torchvision_entry(name)
    if name in ("inception_v3", "googlenet"):
        # The auxiliary classifiers only serve ImageNet training; without them forward returns one tensor.
        model = builder(weights=None, aux_logits=False, init_weights=True)
    else:
        model = builder(weights=None)

    if pretrained_path is not None:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights for {name} not found: {path}")
        candidates = [path]
    else:
        candidates = [p for p in cached_weight_paths(name) if p.is_file()]

    loaded = False
    if candidates:
        _load_imagenet(model, _read_state_dict(candidates[0]), name, candidates[0])
        loaded = True
    elif name not in _NOTICED:
        _NOTICED.add(name)
        looked = ", ".join(str(p) for p in cached_weight_paths(name))
        print(
            f"note: no local ImageNet weights for {name} (looked in {looked}); training from scratch",
            file=sys.stderr,
        )

    if name == "inception_v3":
        trunk = InceptionTrunk(model, transform_input=loaded)
    elif name == "googlenet":
        trunk = GoogLeNetTrunk(model, transform_input=loaded)
    else:
        trunk = _resnet_trunk(model)
    if in_channels != 3:
        widen_first_convolution(trunk, in_channels, zero_extra=loaded)
    return trunk, channels


def resize_to(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size`` when needed; a no-op (same tensor) when the size already matches."""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return bilinear_resize(features, size, align_corners=False)
