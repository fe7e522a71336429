"""Convert published checkpoints into checkpoints of this project.

    python -m models.import_weights princeton-vl SRC DST.pth [--trustSource]

``princeton-vl``: Newell et al.'s own PyTorch port of the Stacked Hourglass
(princeton-vl/pytorch_stacked_hourglass), which published 2- and 8-stack MPII checkpoints. Its
``train.py`` saves ``{'state_dict': ..., 'optimizer': ..., 'epoch': ...}`` whose keys carry the
wrappers' prefixes (``model.module.pre.0.conv.weight``). The network is this project's
``StackedHourGlass`` tensor for tensor, except that its ``Residual`` builds a 1x1 skip convolution
it never calls where the widths match; those are dropped.

The result holds the weights and a complete config (stacks, width and joints inferred from the
shapes; MPII, 256x256 input, 64x64 heatmaps, the port's coordinate convention and its [0, 1] pixel
scale), so ``-test --loadModel DST.pth``, ``-predict`` and ``-export`` run the published model.
The source is read with ``weights_only=True``; a file that needs more is refused unless
``--trustSource``. Every tensor is checked by name and shape, and a mismatch names the first key.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import build_model
from utils.checkpoint import save_checkpoint
from utils.options import REPO_ROOT, config_from_files

PREFIXES = ("model.", "module.")


class ConversionError(ValueError):
    """A source that cannot be converted; the message is one line naming the file and key."""


def read_source(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The source's state dict, wrapper prefixes removed."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
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


def princeton_vl_names(n_stack: int, depth: int = 4) -> dict[str, str]:
    """Module name in the port -> module name in ``StackedHourglass`` (``models/posenet.py``)."""
    names = {"pre.0.conv": "stem.conv.0", "pre.0.bn": "stem.conv.1"}
    names |= _residual_names("pre.1", "stem.res1", True)  # 64 -> 128
    names |= _residual_names("pre.3", "stem.res2", False)  # 128 -> 128 (pre.2 is the max-pool)
    names |= _residual_names("pre.4", "stem.res3", True)  # 128 -> inp_dim
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
    """Options of the network the weights describe: stacks, width and joints from the shapes."""
    stacks = sorted({int(m.group(1)) for k in source if (m := re.match(r"hgs\.(\d+)\.", k))})
    if not stacks or "outs.0.conv.weight" not in source or "pre.4.conv3.conv.weight" not in source:
        raise ConversionError("the source is not a princeton-vl PoseNet: no hgs.N, outs.0.conv or pre.4 keys")
    width = source["pre.4.conv3.conv.weight"].shape[0]
    joints = source["outs.0.conv.weight"].shape[0]
    return [
        "-DataConfig", str(REPO_ROOT / "conf" / "datasets" / "mpii.defconf"),
        "-ModelConfig", str(REPO_ROOT / "conf" / "models" / "StackedHourGlass.defconf"),
        "--nStack", str(len(stacks)), "--nChannels", str(width), "--nJoints", str(joints),
        "--nModules", "1", "--nReductions", "4", "--inputRes", "256", "--outputRes", "64", "--hmGauss", "1",
        "--coordConvention", "princeton-vl", "--inputNorm", "unit", "--flipTest", "1",
    ]  # fmt: skip


def convert(
    source: dict[str, torch.Tensor], names: dict[str, str], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename every tensor of ``source`` by its module prefix and check it against ``target``
    (the state dict of the network built from the inferred config): same keys, same shapes.
    Tensors of modules the port builds but never calls are dropped."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        module, _, leaf = key.rpartition(".")
        if module not in names:
            if module.endswith("skip_layer.conv"):
                continue  # an equal-width residual's unused projection
            raise ConversionError(f"source key {key!r} has no counterpart in StackedHourGlass")
        ours = f"{names[module]}.{leaf}"
        if ours not in target:
            raise ConversionError(f"source key {key!r} maps to {ours!r}, which the model does not have")
        if tuple(target[ours].shape) != tuple(value.shape):
            raise ConversionError(
                f"source key {key!r} has shape {tuple(value.shape)} but {ours!r} needs {tuple(target[ours].shape)}"
            )
        converted[ours] = value
    missing = [key for key in target if key not in converted]
    if missing:
        raise ConversionError(f"the source has nothing for {missing[0]!r} ({len(missing)} tensors missing)")
    return converted


def import_princeton_vl(source: dict[str, torch.Tensor]) -> dict[str, Any]:
    config = config_from_files(princeton_vl_config(source))
    model = build_model(config["model"], **config)
    stacks = config["nStack"]
    weights = convert(source, princeton_vl_names(stacks), model.state_dict())
    return {"model": weights, "config": config, "epoch": 0, "source": "princeton-vl"}


IMPORTERS: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, Any]]] = {
    "princeton-vl": import_princeton_vl,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.import_weights", description=__doc__.splitlines()[0]
    )
    parser.add_argument("source_format", choices=sorted(IMPORTERS), help="who published the checkpoint")
    parser.add_argument("source", type=Path, help="the published checkpoint")
    parser.add_argument("destination", type=Path, help="the checkpoint of this project to write")
    parser.add_argument("--trustSource", action="store_true", help="allow full unpickling of the source")
    args = parser.parse_args(argv)
    try:
        if args.destination.exists():
            raise ConversionError(
                f"{args.destination} exists; choose a new file name (nothing is overwritten)"
            )
        state = IMPORTERS[args.source_format](read_source(args.source, args.trustSource))
    except ConversionError as error:
        print(f"import_weights: error: {error}", file=sys.stderr)
        return 2
    state["config"]["loadModel"] = ""
    save_checkpoint(state, args.destination)
    config = state["config"]
    print(
        f"wrote {args.destination}: {config['model']}, {config['nStack']} stacks of {config['nChannels']}, "
        f"{config['nJoints']} joints, {len(state['model'])} tensors, convention {config['coordConvention']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
