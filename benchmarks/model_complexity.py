"""Parameters and GFLOPs per image of every registered model at its conf file's (paper) settings,
beside the parameter count of the authors' released network at the same settings.

    python benchmarks/model_complexity.py          # prints a markdown table

A multiply-add counts as two FLOPs (torch's FlopCounterMode); pooling, interpolation and
element-wise operations are not counted. Release counts come from ``models.release_layouts``
(the released networks' parameter shapes written out from the authors' code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model, list_models  # noqa: E402
from models.complexity import profile_model  # noqa: E402
from models.release_layouts import (  # noqa: E402
    count,
    pose_attention_release_shapes,
    pyranet_release_shapes,
    stacked_hourglass_release_shapes,
)
from utils.options import REPO_ROOT, parse_options  # noqa: E402


def release_column() -> dict[str, str]:
    """The authors' released network at each conf file's settings: parameters and how counted."""
    used = count(stacked_hourglass_release_shapes())
    unused = count(stacked_hourglass_release_shapes(include_unused=True)) - used
    return {
        "StackedHourGlass": f"{used / 1e6:.2f} M used, plus {unused / 1e6:.2f} M in 1x1 skip convs the code "
        "never calls (princeton-vl/pytorch_stacked_hourglass, transcribed)",
        "PyraNet": f"{count(pyranet_release_shapes()) / 1e6:.2f} M (bearpaw/PyraNet `hg-prm.lua`, transcribed; "
        "paper: 28.1 M)",
        "PoseAttention": f"{count(pose_attention_release_shapes()) / 1e6:.2f} M (bearpaw/pose-attention "
        "`hg-attention.lua`, transcribed)",
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
        conf = REPO_ROOT / "conf" / "models" / f"{name}.defconf"
        opts = parse_options(["-ModelConfig", str(conf)])
        model = build_model(opts.model, **vars(opts))
        size = (opts.inputRes, round(opts.inputRes * opts.aspectRatio))
        profile = profile_model(model, size)
        print(
            f"| {name} | {opts.target_type} | {profile.parameters / 1e6:.2f} | {profile.gflops:.2f} | "
            f"{profile.gflops / 2:.2f} | {size[0]} x {size[1]} | {len(profile.output_shapes)} | "
            f"{releases.get(name, 'no code released by the authors')} |"
        )


if __name__ == "__main__":
    main()
