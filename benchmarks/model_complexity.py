"""Parameters and GFLOPs per image of every registered model at its conf file's (paper) settings,
beside the parameter count of the authors' released network at the same settings.

    python benchmarks/model_complexity.py          # prints a markdown table

A multiply-add counts as two FLOPs (torch's FlopCounterMode); pooling, interpolation and
element-wise operations are not counted. Release counts come from ``models.release_layouts``
(the released networks' parameter shapes written out from the authors' code). HRNet and
SimpleBaseline are measured at COCO's 256x192, beside the figures their authors published and what
the authors' own counting rule gives on our network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.codecs import decodes_heatmaps  # noqa: E402
from models import build_model, get_entry, list_models  # noqa: E402
from models.complexity import profile_model  # noqa: E402
from models.registry import ModelEntry  # noqa: E402
from models.release_layouts import (  # noqa: E402
    count,
    pose_attention_release_shapes,
    pyranet_release_shapes,
    stacked_hourglass_release_shapes,
)
from utils.options import REPO_ROOT, parse_options  # noqa: E402

# conf file of a model, where it is not the model's name (RTMPose: the size the authors lead with;
# ViTPose: the paper's base size)
CONF_NAMES = {"HRNet": "HRNet-W32", "RTMPose": "RTMPose-m", "ViTPose": "ViTPose-B"}
# Their figures are for COCO's 256x192 crops: the COCO data config gives those (nothing is read).
COCO_SETTINGS = {
    name: ["-DataConfig", str(REPO_ROOT / "conf" / "datasets" / "coco.defconf"), "--dataDir", str(REPO_ROOT)]
    for name in ("HRNet", "SimpleBaseline", "RTMPose", "ViTPose")
}
# The authors' README tables (256x192): code, parameters (M), GFLOPs. Their get_model_summary counts
# multiply-adds of convolutions only, as weight size x output pixels (so a stride-2 transposed
# convolution counts 4x its multiply-adds), divided by 2^30.
PUBLISHED = {
    "HRNet": ("leoxiaobin/deep-high-resolution-net.pytorch", 28.5, 7.1),
    "SimpleBaseline": ("microsoft/human-pose-estimation.pytorch", 34.0, 8.9),
}


@torch.no_grad()
def authors_gflops(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """The authors' counter's rule on ``model``: every convolution's weight size times its output
    pixels, summed, / 2^30, for one (1, 3, height, width) image."""
    total = 0

    def count_conv(module: torch.nn.Module, _: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += module.weight.numel() * output.shape[2:].numel()

    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    hooks = [m.register_forward_hook(count_conv) for m in model.modules() if isinstance(m, convs)]
    model.eval()
    model(torch.zeros(1, 3, *size))
    for hook in hooks:
        hook.remove()
    return total / 2**30


def published_column(name: str, model: torch.nn.Module, size: tuple[int, int]) -> str:
    repo, parameters, gflops = PUBLISHED[name]
    return (
        f"equal to {repo}'s network tensor for tensor (tests/test_import_modern.py); published: {parameters} M, "
        f"{gflops} GFLOPs by their counter (conv multiply-adds as weight size x output pixels / 2^30), "
        f"which gives {authors_gflops(model, size):.2f} on ours"
    )


def release_column() -> dict[str, str]:
    """The authors' released network at each conf file's settings: parameters and how counted."""
    used = count(stacked_hourglass_release_shapes())
    unused = count(stacked_hourglass_release_shapes(include_unused=True)) - used
    return {
        "ViTPose": "equal to ViTAE-Transformer/ViTPose's network tensor for tensor (tests/test_vitpose.py): "
        "ViTPose-B with the classic decoder, 89,994,513 (published: about 90.0 M)",
        "StackedHourGlass": f"{used / 1e6:.2f} M used, plus {unused / 1e6:.2f} M in 1x1 skip convs the code "
        "never calls (princeton-vl/pytorch_stacked_hourglass, transcribed)",
        "PyraNet": f"{count(pyranet_release_shapes()) / 1e6:.2f} M (bearpaw/PyraNet `hg-prm.lua`, transcribed; "
        "paper: 28.1 M)",
        "PoseAttention": f"{count(pose_attention_release_shapes()) / 1e6:.2f} M (bearpaw/pose-attention "
        "`hg-attention.lua`, transcribed)",
        "RTMPose": "equal to open-mmlab/mmpose's RTMPose-m tensor for tensor (tests/test_rtmpose.py); published: "
        "13.59 M, 1.93 GFLOPs by MMPose's counter (multiply-adds; t/s/l: 3.34/5.47/27.66 M)",
        "IEF": "Caffe weights only (pulkitag/ief downloads `ief-googlenet-dec2015`; the network definition "
        "is not in the repository): not counted; 4 iterations of GoogLeNet on 3 + 16 channels",
        # the release is a zip on the authors' project page, not in a repository this project reads
        "DLCM": "Torch code on the authors' project page (DLCM-release.zip), not transcribed; its trainings "
        "add the joints' maps to every level's stage (`-catPartEnds`), which this network does not",
    }


def main() -> None:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    releases = release_column()
    print(
        "| model | target | parameters (M) | GFLOPs / image | GMACs / image | input (h x w) | stages "
        "| authors' release |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in list_models():
        print(table_row(name, releases))
    print("\n`outputRes / inputRes` each model accepts (any other stops before training, in one line):\n")
    for name in list_models():
        print(f"- {name}: {accepted_outputs(get_entry(name))}")


def table_row(name: str, releases: dict[str, str]) -> str:
    """Model ``name`` at its conf file's settings, as a row of the table."""
    conf = REPO_ROOT / "conf" / "models" / f"{CONF_NAMES.get(name, name)}.defconf"
    opts = parse_options(["-ModelConfig", str(conf), *COCO_SETTINGS.get(name, [])])
    model = build_model(opts.model, **vars(opts))
    size = (opts.inputRes, round(opts.inputRes * opts.aspectRatio))
    profile = profile_model(model, size)
    release = published_column(name, model, size) if name in PUBLISHED else releases.get(name)
    return (
        f"| {name} | {opts.target_type} | {profile.parameters / 1e6:.2f} | {profile.gflops:.2f} | "
        f"{profile.gflops / 2:.2f} | {size[0]} x {size[1]} | {len(profile.output_shapes)} | "
        f"{release or 'no code released by the authors'} |"
    )


def accepted_outputs(entry: ModelEntry) -> str:
    """The heatmap sizes a model accepts, as its registry entry states them."""
    if entry.target_type == "simcc":
        return "any divisor of inputRes (unused: it classifies x and y into SimCC bins, simccSplitRatio per pixel)"
    if not decodes_heatmaps(entry.target_type):
        return "any divisor of inputRes (it regresses coordinates: no heatmap)"
    if entry.output_strides is None:
        return "the heatmap its network builds (checked against outputRes before training)"
    if entry.heatmap_halvings is None:
        return entry.output_ratios()
    key = entry.heatmap_halvings
    return f"{entry.output_ratios()}, with a heatmap of at least 2^{key} pixels a side (`{key}` halves it)"


if __name__ == "__main__":
    main()
