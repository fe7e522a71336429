"""Fraction of labelled joints that get a training signal, with the COCO recipe on the COCO fixture.

    python benchmarks/supervised_joints.py [--epochs 60] [--data ../shared/data/coco_mini]

Augmented crops (scale, rotation, flips, half-body) push some labelled joints out of the crop.
Two rules for them, counted over the same samples:
* centre on the map: a joint is supervised only while its heatmap centre lies on the map (this
  project's rule before HRNet's was adopted);
* 3-sigma window (HRNet, MMPose, and this project's ``HeatmapCodec``): supervised while any of the
  Gaussian's 3-sigma window lies on the map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.base import Augmentation  # noqa: E402
from datasets.coco import COCODataset  # noqa: E402
from datasets.codecs import HeatmapCodec  # noqa: E402
from utils.options import REPO_ROOT, parse_options  # noqa: E402
from utils.transforms import apply_affine, invert_affine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "coco_mini"))
    args = parser.parse_args()
    opts = parse_options(
        [
            "-DataConfig",
            str(REPO_ROOT / "conf" / "datasets" / "coco.defconf"),
            "--inputRes",
            "256",
            "--outputRes",
            "64",
        ]
    )
    input_size = (round(opts.inputRes * opts.aspectRatio), opts.inputRes)
    heatmap_size = (round(opts.outputRes * opts.aspectRatio), opts.outputRes)
    codec = HeatmapCodec(input_size, heatmap_size, opts.hmGauss)
    augmentation = Augmentation(
        opts.maxScale, opts.maxRotate, opts.rotateProb, opts.maxTranslate, opts.flipProb, opts.colorJitter
    )
    dataset = COCODataset(
        args.data, "train2017", codec, input_size, augmentation, seed=opts.seed,
        annotation_file="test_coco.json", half_body_prob=opts.halfBodyProb,
    )  # fmt: skip
    labelled = centre_rule = window_rule = 0
    width, height = heatmap_size
    for epoch in range(1, args.epochs + 1):
        dataset.set_epoch(epoch)
        for index, record in enumerate(dataset.records):
            sample = dataset[index]
            forward = invert_affine(np.asarray(sample["meta"]["inverse_affine"], dtype=np.float64))
            centers = codec.to_heatmap_frame(apply_affine(record["joints"], forward))  # record order
            visible = np.asarray(record["visible"]) > 0
            on_map = (
                (centers >= -0.5).all(axis=1) & (centers[:, 0] < width - 0.5) & (centers[:, 1] < height - 0.5)
            )
            labelled += int(visible.sum())
            centre_rule += int((visible & on_map).sum())
            window_rule += int((sample["target_weight"].numpy() > 0).sum())
    print(
        f"COCO recipe on {args.data}: {len(dataset)} persons x {args.epochs} epochs, {labelled} labelled joints"
    )
    print()
    print("| rule | supervised joints | fraction |")
    print("| --- | --- | --- |")
    print(f"| heatmap centre on the map (before) | {centre_rule} | {100 * centre_rule / labelled:.1f}% |")
    print(
        f"| any of the 3-sigma window on the map (HRNet, now) | {window_rule} | {100 * window_rule / labelled:.1f}% |"
    )


if __name__ == "__main__":
    main()
