"""What a CPU user can expect from the published modern models: RTMPose-t/s/m and ViTPose-S at the
authors' 256x192, their weights imported with ``models.import_weights`` and exported with
``-export`` (``export.export_onnx``), against the authors' own networks exported by torch with the
same exporter, both run by ONNX Runtime in one process.

The authors' networks are the ones ``tests/test_rtmpose.py`` and ``tests/test_vitpose.py`` rebuild
from their code (their module trees, names and forward passes), with random weights: the imported
checkpoint is made from those very weights, so both graphs compute the same numbers (checked here
to 1e-4 of the output's size) and differ only in how the networks are written.

Per model: ONNX Runtime latency at batch 1 with one intra-op thread and with all cores (median of
interleaved runs of the two graphs, so both see the same load), PyTorch throughput (eval mode,
``torch.inference_mode``, all cores, batch 8), the achieved GFLOP/s of the one-thread ONNX run
against the same run's one-thread float32 matrix-product rate, and the authors' published ONNX
Runtime latency (projects/rtmpose/README.md: an Intel i7-11700, its thread count not stated).
Used by ``benchmarks/evaluation_inference.py`` (its third table) and runnable alone:

    python benchmarks/published_models.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(1, str(REPO_ROOT / "tests"))  # the authors' networks, as the tests rebuild them

from build import load_trained  # noqa: E402
from export import LastStage, export_onnx  # noqa: E402
from models.complexity import profile_model  # noqa: E402
from models.import_weights import main as import_weights  # noqa: E402
from utils.options import parse_options  # noqa: E402

INPUT = (192, 256)  # (width, height): the authors' COCO input
# ONNX Runtime latency the authors publish (ms, i7-11700; projects/rtmpose/README.md); none for ViTPose
PUBLISHED_MS = {"RTMPose-t": 3.20, "RTMPose-s": 4.48, "RTMPose-m": 11.06, "RTMPose-l": 18.85}
MODELS = ("RTMPose-t", "RTMPose-s", "RTMPose-m", "ViTPose-S")


@dataclass
class Pair:
    """One model as this project exports it and as its authors wrote it, with the same weights."""

    name: str
    ours: nn.Module  # the imported checkpoint's network, LastStage-wrapped (the exported module)
    theirs: nn.Module  # the authors' network
    output_names: tuple[str, ...]
    gflops: float
    parameters: int


def authors_rtmpose(size: str, folder: Path) -> tuple[nn.Module, Path]:
    import test_rtmpose

    torch.manual_seed(0)
    theirs = test_rtmpose.randomise(test_rtmpose.AuthorsRTMPose(size, 17, INPUT), seed=1).float().eval()
    return theirs, test_rtmpose.save_published(theirs, folder / f"rtmpose-{size}.pth")


def authors_vitpose(size: str, folder: Path) -> tuple[nn.Module, Path]:
    import test_vitpose

    width, depth, heads = {"S": (384, 12, 12), "B": (768, 12, 12)}[size]
    torch.manual_seed(0)
    net = test_vitpose.AuthorsTopDown(INPUT[::-1], width, depth, heads)
    theirs = test_vitpose.randomise(net, seed=1).float().eval()
    return theirs, test_vitpose.save_mmcv(theirs.state_dict(), folder / f"vitpose-{size}.pth")


def make_pair(name: str, folder: Path) -> Pair:
    family, size = name.split("-")
    if family == "RTMPose":
        theirs, source = authors_rtmpose(size, folder)
    else:
        theirs, source = authors_vitpose(size, folder)
    imported = folder / f"{name}-imported.pth"
    if import_weights([family.lower(), str(source), str(imported)]) != 0:
        raise RuntimeError(f"models.import_weights {family.lower()} failed on {source}")
    # as -export reads a checkpoint: its own config, no dataset needed
    trained = load_trained(
        parse_options(["-export", str(imported.with_suffix(".onnx")), "--loadModel", str(imported)]), "cpu"
    )
    model = trained.model.float().eval()
    profile = profile_model(model, INPUT[::-1])
    return Pair(
        name, LastStage(model, trained.codec).eval(), theirs, trained.codec.output_names,
        profile.gflops, profile.parameters,
    )  # fmt: skip


def check_same_numbers(pair: Pair) -> float:
    """The two networks' outputs on one image, as the largest difference relative to the output."""
    image = torch.randn(1, 3, INPUT[1], INPUT[0], generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = torch.cat([output.flatten() for output in pair.ours(image)])
        raw = pair.theirs(image)
        theirs = torch.cat([output.flatten() for output in (raw if isinstance(raw, tuple) else (raw,))])
    return float((ours - theirs).abs().max() / theirs.abs().max())


def session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # several sessions take turns here: a session's idle threads spinning for work would hold the
    # cores the next one runs on (measured: one graph in three sessions at 2 threads, 42-48 ms a
    # run with spinning, 24.6 ms without, which is what a session alone takes)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_ms(calls: list[Callable[[], object]], runs: int) -> list[float]:
    """Median milliseconds of each call, their runs interleaved (the same load for all)."""
    for call in calls:  # warm-up: allocations, kernel selection
        for _ in range(3):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for run in range(runs):
        order = list(zip(calls, times, strict=True))
        for call, kept in order if run % 2 == 0 else reversed(order):  # no call always first
            start = time.perf_counter()
            call()
            kept.append((time.perf_counter() - start) * 1000)
    return [statistics.median(kept) for kept in times]


MATMUL_SIDE = 1024  # a float32 (1024 x 1024) @ (1024 x 1024) product: 2 x 1024^3 FLOPs


def matmul_call() -> Callable[[], object]:
    """One float32 matrix product on the current torch threads, timed beside the graphs."""
    a, b = torch.randn(MATMUL_SIDE, MATMUL_SIDE), torch.randn(MATMUL_SIDE, MATMUL_SIDE)
    return lambda: a @ b


def torch_throughput(model: nn.Module, threads: int, batch: int, runs: int) -> float:
    torch.set_num_threads(threads)
    image = torch.randn(batch, 3, INPUT[1], INPUT[0])
    with torch.inference_mode():
        (ms,) = interleaved_ms([lambda: model(image)], runs)
    return batch / (ms / 1000)


def published_table(quick: bool) -> list[str]:
    cores = os.cpu_count() or 1
    runs, batch_runs = (10, 2) if quick else (100, 5)
    rates: list[float] = []
    same_graph: list[float] = []  # per model, one thread: |authors' - authors' again| / the faster
    lines = [
        "| model | parameters (M) | GFLOPs / image | ORT batch 1, 1 thread: ours / authors' export (ms) "
        f"| ORT batch 1, {cores} threads: ours / authors' (ms) | ORT 1 thread: GFLOP/s (of the matmul rate) "
        f"| PyTorch batch 8, {cores} threads (img/s) | authors' published ORT (ms, i7-11700) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            pair = make_pair(name, Path(folder))
            difference = check_same_numbers(pair)
            if difference > 1e-4:
                raise RuntimeError(
                    f"{name}: the imported network differs from the authors' by {difference:.1e}"
                )
            ours_path, theirs_path = Path(folder) / f"{name}-ours.onnx", Path(folder) / f"{name}-theirs.onnx"
            export_onnx(pair.ours, INPUT, pair.output_names, ours_path)
            export_onnx(pair.theirs, INPUT, pair.output_names, theirs_path)
            image = np.random.default_rng(3).standard_normal((1, 3, INPUT[1], INPUT[0])).astype(np.float32)
            cells = []
            for threads in (1, cores):
                torch.set_num_threads(threads)
                # the authors' graph twice: how far two sessions of one graph differ is the noise
                # floor of the ours-against-theirs comparison (each session places its memory anew)
                paths = (ours_path, theirs_path, theirs_path)
                sessions = [session(path, threads) for path in paths]
                calls = [lambda s=s, x=image: s.run(None, {"image": x}) for s in sessions]
                if (
                    threads == 1
                ):  # the matrix product interleaved with the graphs: its rate under the same load
                    *ms, matmul_ms = interleaved_ms([*calls, matmul_call()], runs)
                    rates.append(2 * MATMUL_SIDE**3 / (matmul_ms / 1000) / 1e9)
                    same_graph.append(abs(ms[1] - ms[2]) / min(ms[1], ms[2]))
                else:
                    ms = interleaved_ms(calls, runs)
                cells.append(ms[:2])
            achieved = pair.gflops / (cells[0][0] / 1000)
            rate_1 = rates[-1]
            rate = torch_throughput(pair.ours, cores, 8, batch_runs)
            published = PUBLISHED_MS.get(name)
            lines.append(
                f"| {name} | {pair.parameters / 1e6:.2f} | {pair.gflops:.2f} | {cells[0][0]:.1f} / {cells[0][1]:.1f} "
                f"| {cells[1][0]:.1f} / {cells[1][1]:.1f} | {achieved:.0f} ({achieved / rate_1:.0%} of {rate_1:.0f}) | {rate:.1f} "
                f"| {published if published else '-'} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)  # progress while the table builds
    lines.append(
        f"\n256x192 input, 17 joints, float32, ONNX Runtime's CPU provider at its default graph optimisation; "
        f"median of {runs} interleaved runs of both graphs. Ours: the authors' weights through "
        "`models.import_weights` and `-export`'s exporter; authors': their network (as tests/test_rtmpose.py and "
        f"tests/test_vitpose.py rebuild it) through the same exporter. Same numbers to 1e-4. The matmul rate: a "
        "one-thread float32 (1024 x 1024)^2 product timed interleaved with that model's graphs "
        f"(median {statistics.median(rates):.0f} GFLOP/s over the models). The authors' graph run in a second "
        f"session beside the first differed from it by {min(same_graph):.1%} to {max(same_graph):.1%} (one thread): "
        "differences between ours and theirs within that are noise. ViTPose has no published CPU latency."
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a short run")
    args = parser.parse_args(argv)
    print("\n".join(published_table(args.quick)))


if __name__ == "__main__":
    main()
