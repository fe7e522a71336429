"""Evaluation and inference speed on this machine, in one process:

1. the metrics and the heatmap decoder beside plain per-joint Python loops computing the same
   thing (``benchmarks/loop_references.py``): MPII PCKh over 3,000 persons, COCO OKS-NMS over
   1,000 poses, decoding 64 sets of 16 heatmaps at 64x64; each pair timed alternately and its
   results checked equal;
2. every registered model at a CPU-sized configuration: latency at batch 1 and throughput at
   batch 32, with and without the flip test (``engine.flip_averaged``, as validation runs it);
3. the published modern models at the authors' size (RTMPose-t/s/m, ViTPose-S): ONNX Runtime
   latency of this project's export against the authors' network exported by torch, PyTorch
   throughput, achieved GFLOP/s and the authors' published figures (``benchmarks/published_models.py``).

    python benchmarks/evaluation_inference.py            # full run (several minutes on 2 cores)
    python benchmarks/evaluation_inference.py --quick    # fewer repeats (about two minutes)

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cpu_models import SMALL, conf_file, model_argv  # noqa: E402
from benchmarks.loop_references import decode_quarter_loop, oks_nms_loop, pckh_table_loop  # noqa: E402
from benchmarks.published_models import published_table  # noqa: E402
from build import build_codec, frame_sizes, joint_spec_of  # noqa: E402
from datasets.codecs import HeatmapCodec  # noqa: E402
from engine import flip_averaged  # noqa: E402
from metrics.coco import oks_nms  # noqa: E402
from metrics.mpii import pckh_table  # noqa: E402
from models import build_model, list_models  # noqa: E402
from models.complexity import profile_model  # noqa: E402
from utils.options import parse_options  # noqa: E402


def speed_up(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def timed(function: Callable[[], Any]) -> float:
    """Milliseconds one call of ``function`` takes."""
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


def side_by_side(fast: Callable[[], Any], loop: Callable[[], Any], fast_runs: int, loop_runs: int):
    """Median milliseconds of ``fast`` and ``loop``, their runs interleaved so that both see the
    same load on a shared machine."""
    fast_ms, loop_ms = [], []
    for run in range(max(fast_runs, loop_runs)):
        if run < fast_runs:
            fast_ms.append(timed(fast))
        if run < loop_runs:
            loop_ms.append(timed(loop))
    return statistics.median(fast_ms), statistics.median(loop_ms)


# --------------------------------------------------------------------------------------------
# Inputs of the metric and decoder comparisons (fixed seeds, so every run times the same data)
# --------------------------------------------------------------------------------------------


def pckh_inputs(persons: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Predictions scattered around the truth by about a third of the head size, so that both
    thresholds see hits and misses; 15% of the joints missing, as in MPII's validation set."""
    gt = rng.uniform(0, 1000, (persons, 16, 2))  # (N, 16, 2)
    head_sizes = rng.uniform(20, 80, persons)
    pred = gt + rng.normal(0, 1, (persons, 16, 2)) * (0.3 * head_sizes)[:, None, None]
    missing = rng.random((persons, 16)) < 0.15
    return pred, gt, missing, head_sizes


def clustered_poses(poses: int, per_person: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A top-down detector's output: ``poses / per_person`` people in one 2,000-px-wide image, each
    found ``per_person`` times with jittered keypoints, so OKS-NMS has work to do."""
    people = poses // per_person
    skeleton = rng.normal(0, 30, (people, 17, 2)) + rng.uniform(0, 2000, (people, 1, 2))
    kpts = np.repeat(skeleton, per_person, axis=0) + rng.normal(0, 2, (people * per_person, 17, 2))
    kpts = np.concatenate([kpts, rng.random((len(kpts), 17, 1))], axis=2)  # (N, 17, 3)
    areas = np.repeat(rng.uniform(60, 200, people) ** 2, per_person)
    return kpts, rng.random(len(kpts)), areas


def heatmap_inputs(sets: int, codec: HeatmapCodec, rng: np.random.Generator) -> np.ndarray:
    """Gaussian targets at random joints plus noise, float32 like a network's output."""
    joints = rng.uniform(-8, 263, (sets, 16, 2))  # a few just outside the 256 x 256 crop
    maps = np.stack([codec.encode(j, np.ones(16))[0] for j in joints])  # (N, 16, 64, 64)
    return (maps + rng.normal(0, 0.02, maps.shape)).astype(np.float32)


def metrics_table(quick: bool) -> list[str]:
    rng = np.random.default_rng(0)
    fast_runs, loop_runs = (5, 1) if quick else (20, 3)
    rows = []

    pred, gt, missing, head_sizes = pckh_inputs(3000, rng)
    fast, loop = pckh_table(pred, gt, missing, head_sizes), pckh_table_loop(pred, gt, missing, head_sizes)
    same = fast["columns"] == loop["columns"] and np.array_equal(fast["counts"], loop["counts"])
    times = side_by_side(
        lambda: pckh_table(pred, gt, missing, head_sizes),
        lambda: pckh_table_loop(pred, gt, missing, head_sizes),
        fast_runs,
        loop_runs,
    )
    name = "PCKh table, 3,000 persons x 16 joints, thresholds 0.5 and 0.1"
    rows.append((name, "metrics.mpii.pckh_table", times, same))

    for label, per_person in (
        ("100 people x 10 detections", 10),
        ("1,000 separate people, none suppressed", 1),
    ):
        kpts, scores, areas = clustered_poses(1000, per_person, rng)
        kept = oks_nms(kpts, scores, areas)
        same = kept.tolist() == oks_nms_loop(kpts, scores, areas)
        times = side_by_side(
            lambda k=kpts, s=scores, a=areas: oks_nms(k, s, a),
            lambda k=kpts, s=scores, a=areas: oks_nms_loop(k, s, a),
            fast_runs,
            loop_runs,
        )
        name = f"OKS-NMS at 0.9, 1,000 poses ({label}; {len(kept)} kept)"
        rows.append((name, "metrics.coco.oks_nms", times, same))

    codec = HeatmapCodec((256, 256), (64, 64), 2.0)
    heatmaps = heatmap_inputs(64, codec, rng)
    joints, scores = codec.decode(heatmaps)
    loop_joints, loop_scores = decode_quarter_loop(heatmaps, codec.input_size, codec.convention.anchor)
    same = np.allclose(joints, loop_joints, rtol=0, atol=1e-9) and np.array_equal(scores, loop_scores)
    times = side_by_side(
        lambda: codec.decode(heatmaps),
        lambda: decode_quarter_loop(heatmaps, codec.input_size, codec.convention.anchor),
        fast_runs,
        loop_runs,
    )
    name = "heatmap decode (quarter rule), 64 sets x 16 joints at 64x64, float32"
    rows.append((name, "HeatmapCodec.decode", times, same))

    lines = [
        "| computation | project function | project (ms) | per-joint loop (ms) | speed-up | same result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, function, (fast_ms, loop_ms), same in rows:
        lines.append(
            f"| {name} | `{function}` | {fast_ms:.2f} | {loop_ms:.1f} | {speed_up(loop_ms / fast_ms)} "
            f"| {'yes' if same else 'NO'} |"
        )
    lines.append(
        f"\nMedian of {fast_runs} runs (project) and {loop_runs} (loop), interleaved. The loops are "
        "`benchmarks/loop_references.py`; `tests/test_fast_paths.py` checks both agree on edge cases."
    )
    return lines


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def cpu_options(name: str) -> tuple[argparse.Namespace, str]:
    """The model at the benchmarks' CPU size (benchmarks/cpu_models.py), and that configuration
    in words for the table."""
    extra = SMALL.get(name, [])
    opts = parse_options(model_argv(name))
    words = ", ".join(
        f"{key.lstrip('-')} {value}" for key, value in zip(extra[::2], extra[1::2], strict=True)
    )
    return opts, f"{conf_file(name).name}" + (f" with {words}" if words else "")


def inference_row(name: str, quick: bool) -> str:
    opts, size_words = cpu_options(name)
    torch.manual_seed(0)
    model = build_model(opts.model, **vars(opts)).eval()
    input_size, _ = frame_sizes(opts)  # (width, height)
    codec = build_codec(opts)
    permutation = joint_spec_of(opts).flip_permutation()
    profile = profile_model(model, input_size[::-1])
    width, height = input_size
    images = torch.randn(32, 3, height, width)  # a normalised batch, as engine.prepare_images gives

    def infer(batch: torch.Tensor, flip: bool) -> None:
        # what engine.predict_all does per batch: last stage, optional flip test, decode
        with torch.inference_mode():
            last = model(batch)[-1].float()
            if flip:
                last = flip_averaged(model, batch, last, permutation, codec)
            codec.decode(last.numpy())

    latency_runs, batch_runs = (3, 1) if quick else (15, 3)
    single = images[:1]
    infer(single, True)  # warm-up: first-call allocations and kernel selection
    infer(images, False)
    cells = []
    for flip in (False, True):
        cells.append(statistics.median(timed(lambda f=flip: infer(single, f)) for _ in range(latency_runs)))
    for flip in (False, True):
        seconds = statistics.median(timed(lambda f=flip: infer(images, f)) for _ in range(batch_runs)) / 1000
        cells.append(len(images) / seconds)
    return (
        f"| {name} | {height}x{width}, {size_words} | {profile.parameters / 1e6:.2f} | {profile.gflops:.2f} "
        f"| {cells[0]:.1f} | {cells[1]:.1f} | {cells[2]:.1f} | {cells[3]:.1f} |"
    )


def inference_table(quick: bool) -> list[str]:
    lines = [
        "| model | input, configuration | parameters (M) | GFLOPs / image | latency, batch 1 (ms) "
        "| latency, batch 1, flip test (ms) | throughput, batch 32 (img/s) "
        "| throughput, batch 32, flip test (img/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in list_models():
        try:
            lines.append(inference_row(name, quick))
        except (Exception, SystemExit) as error:  # no conf file, options refused, a failing model
            lines.append(f"| {name} | not measured: {' '.join(str(error).split())[:200]} |||||||")
        print(lines[-1], file=sys.stderr, flush=True)  # progress while the table builds
    latency_runs, batch_runs = (3, 1) if quick else (15, 3)
    threads = plural(torch.get_num_threads(), "torch thread")
    batches = plural(batch_runs, "batch", "batches")
    lines.append(
        f"\nFloat32, eager, `torch.inference_mode`, eval mode, {threads}. Latency: median of "
        f"{latency_runs} runs; throughput: 32 / median time of {batches} of 32. A run is the model on "
        "a normalised input batch, its last stage, the flip test when on (the mirrored batch through "
        "the model, `engine.flip_averaged`) and the decode to joints."
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a short run")
    # One thread by default: on a machine that other work also loads, torch's threads wait on
    # each other (measured here: batch-1 latency 10x slower with 2 threads than with 1).
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("metrics", "inference", "published"),
        help="leave a table out",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    threads = plural(args.threads, "torch thread")
    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, {threads}{', --quick' if args.quick else ''}\n"
    )
    if "metrics" not in args.skip:
        print("\n".join(metrics_table(args.quick)) + "\n")
    if "inference" not in args.skip:
        print("\n".join(inference_table(args.quick)) + "\n")
    if "published" not in args.skip:
        print("\n".join(published_table(args.quick)))


if __name__ == "__main__":
    main()
