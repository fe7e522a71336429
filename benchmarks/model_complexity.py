"""Parameters and GFLOPs per image of every registered model at its conf file's (paper) settings.

    python benchmarks/model_complexity.py          # prints a markdown table

A multiply-add counts as two FLOPs (torch's FlopCounterMode); pooling, interpolation and
element-wise operations are not counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model, list_models  # noqa: E402
from models.complexity import profile_model  # noqa: E402
from utils.options import REPO_ROOT, parse_options  # noqa: E402


def main() -> None:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print("| model | target | parameters (M) | GFLOPs / image | GMACs / image | input (h x w) | stages |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in list_models():
        conf = REPO_ROOT / "conf" / "models" / f"{name}.defconf"
        opts = parse_options(["-ModelConfig", str(conf)])
        model = build_model(opts.model, **vars(opts))
        size = (opts.inputRes, round(opts.inputRes * opts.aspectRatio))
        profile = profile_model(model, size)
        print(
            f"| {name} | {opts.target_type} | {profile.parameters / 1e6:.2f} | {profile.gflops:.2f} | "
            f"{profile.gflops / 2:.2f} | {size[0]} x {size[1]} | {len(profile.output_shapes)} |"
        )


if __name__ == "__main__":
    main()
