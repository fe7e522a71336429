"""One training step (forward, the project's loss, backward, Adam step) of every registered model at
a CPU-sized configuration: eager, channels_last and ``torch.compile`` side by side, with the
achieved GFLOP/s as a fraction of a float32 matmul measured in the same run.

    python benchmarks/training_step.py [--quick] [--threads 2] [--models StackedHourGlass,PyraNet]

Every model is built at the CPU size the speed benchmarks share (benchmarks/cpu_models.py: its
conf file at inputRes 128 / outputRes 32 with the narrow overrides in ``SMALL``), on 16 synthetic persons (``--quick``: 8) with targets from the project's
codec. Variants run in rounds, in a rotating order, and each keeps its best round, so a busy
machine slows all alike; the matmul reference is timed in every round too.

Correctness: every variant starts from the same weights and data. Its loss at step 1 (same
weights: the forward numerics alone) must be within ``--tolForward`` of eager's, relative, and its
loss after one Adam step within ``--tol``. The second check is loose because one Adam step from
scratch amplifies rounding: eager itself, fed the same images with a few ulps of noise, moves its
loss after one step by up to ~5e-3 (measured and printed as the noise floor); a wrong update (none
applied, wrong layout) moves it by several percent. Prints markdown tables, then one line naming
the fastest correct variant of each model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._inductor.config
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cpu_models import INPUT_RES, OUTPUT_RES, model_argv  # noqa: E402
from datasets import SyntheticPeople, make_codec  # noqa: E402
from engine import prepare_images  # noqa: E402
from losses import make_loss  # noqa: E402
from models import build_model, list_models  # noqa: E402
from models.complexity import count_parameters, gflops_per_image  # noqa: E402
from models.registry import get_entry, option_to_parameter  # noqa: E402
from utils.options import parse_options  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile")
LEARNING_RATE = 1e-3
MATMUL_SIZE = 1024
# eager fed images x (1 + NUDGE x Gaussian noise), a few float32 ulps per pixel: how far rounding
# alone moves the losses (the noise floor). Not a uniform scale: the first BatchNorm would undo that.
NUDGE = 1e-6


@dataclass
class Variant:
    name: str
    step: Callable[[], torch.Tensor] | None = None
    losses: list[float] = field(default_factory=list)  # steps 1 and 2, from identical weights and data
    warmup_seconds: list[float] = field(default_factory=list)
    best_round: float = math.inf  # seconds per step
    failure: str = ""


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception, shortened: a table cell, not a traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return (text[:157] + "...") if len(text) > 160 else text


def describe(name: str, opts: object) -> str:
    """The settings that size the model, read back from the parsed options."""
    keys = ("nChannels", "nStack", "nModules", "nReductions", "baseWidth", "LRNSize", "IterSize",
            "baseName", "nCascade", "cropSize", "modelName", "nDeconv", "deconvFilters", "hrnetWidth")  # fmt: skip
    wanted = set(get_entry(name).parameter_names())
    parts = []
    for key in keys:
        value = getattr(opts, key, None)
        if option_to_parameter(key) in wanted:
            shown = value if value is not None else f"{get_entry(name).default(key)} (default)"
            parts.append(f"{key} {shown}")
    return ", ".join(parts) or "defaults"


def matmul_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def make_step(
    model: nn.Module,
    loss_fn: nn.Module,
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    with_target: bool = False,
) -> Callable[[], torch.Tensor]:
    """One optimizer step as engine.train_one_epoch takes it (``model(image, target)`` for a model
    that trains with its targets, IEF)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> torch.Tensor:
        loss = loss_fn(model(image, target) if with_target else model(image), target, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def build_variant(
    name: str,
    base: nn.Module,
    loss_fn: nn.Module,
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    with_target: bool = False,
) -> Callable[[], torch.Tensor]:
    model = copy.deepcopy(base)
    if name == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    runner: nn.Module = torch.compile(model) if name == "compile" else model
    # the optimizer holds the parameters of ``model``; the compiled wrapper shares them
    step = make_step(runner, loss_fn, image, target, weight, with_target)
    return step


@dataclass
class ModelResult:
    name: str
    config: str = ""
    parameters: float = math.nan
    gflops: float = math.nan  # forward, per image
    variants: dict[str, Variant] = field(default_factory=dict)
    floor: list[float] = field(default_factory=list)  # eager's losses with nudged images
    failure: str = ""


def bench_model(name: str, args: argparse.Namespace, matmul: Callable[[], None]) -> ModelResult:
    result = ModelResult(name)
    try:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                opts = parse_options(model_argv(name))
        except SystemExit:
            raise ValueError(captured.getvalue().strip().removeprefix("main.py: error: ")) from None
        result.config = describe(name, opts)
        torch.manual_seed(0)
        base = build_model(opts.model, **vars(opts))
        base.train()
        entry = get_entry(name)
        with_target = entry.trains_with_target  # as engine.train_one_epoch calls it
        result.parameters = count_parameters(base) / 1e6
        result.gflops = gflops_per_image(base, (INPUT_RES, INPUT_RES))
        codec = make_codec(
            entry.target_type, (INPUT_RES, INPUT_RES), (OUTPUT_RES, OUTPUT_RES), 1.0, hierarchy=opts.hierarchy
        )
        data = SyntheticPeople("train", args.batch, codec, (INPUT_RES, INPUT_RES), image_size=160)
        samples = [data[i] for i in range(args.batch)]
        image = prepare_images(torch.stack([s["image"] for s in samples]), None, torch.device("cpu"))
        target = torch.stack([s["target"] for s in samples])  # (N, K, h, w) or (N, K, 2)
        weight = torch.stack([s["target_weight"] for s in samples])  # (N, K)
        loss_fn = make_loss(codec)
    except Exception as error:  # a model that cannot be built gets a row saying why
        result.failure = f"build failed: {one_line(error)}"
        return result

    for variant_name in args.variants:
        variant = Variant(variant_name)
        result.variants[variant_name] = variant
        try:
            variant.step = build_variant(variant_name, base, loss_fn, image, target, weight, with_target)
            # identical weights (copies of ``base``) and data; reseeded so random layers (PyraNet's
            # fractional pooling) draw the same regions in every variant
            for index in range(2 + args.warmup):
                torch.manual_seed(index)
                start = time.perf_counter()
                loss = variant.step()
                variant.warmup_seconds.append(time.perf_counter() - start)
                if index < 2:
                    variant.losses.append(loss.item())
        except Exception as error:
            variant.failure = one_line(error)
            variant.step = None
    if len(args.variants) > 1:
        try:
            noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
            nudged = build_variant(
                "eager", base, loss_fn, image * (1 + NUDGE * noise), target, weight, with_target
            )
            for index in range(2):
                torch.manual_seed(index)
                result.floor.append(nudged().item())
            del nudged
        except Exception:
            result.floor = []

    runnable = [v for v in result.variants.values() if v.step is not None]
    for round_index in range(args.rounds):
        matmul()
        shift = round_index % max(len(runnable), 1)  # rotate who goes first
        for variant in runnable[shift:] + runnable[:shift]:
            if variant.step is None:
                continue
            try:
                start = time.perf_counter()
                for _ in range(args.steps):
                    variant.step()
                variant.best_round = min(variant.best_round, (time.perf_counter() - start) / args.steps)
            except Exception as error:
                variant.failure = one_line(error)
                variant.step = None
    for variant in result.variants.values():
        variant.step = None  # free the model copies and their optimizer state
    del base
    torch._dynamo.reset()
    gc.collect()
    return result


def relative_differences(losses: list[float], reference: list[float]) -> list[float]:
    """Per checked step: |loss - reference| / |reference|."""
    return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference, strict=True)]


def eager_ok(result: ModelResult) -> bool:
    eager = result.variants.get("eager")
    return bool(
        eager and not eager.failure and len(eager.losses) == 2 and all(map(math.isfinite, eager.losses))
    )


def is_correct(result: ModelResult, variant: Variant, args: argparse.Namespace) -> bool:
    if not eager_ok(result) or variant.failure or len(variant.losses) != 2:
        return False
    forward, after_step = relative_differences(variant.losses, result.variants["eager"].losses)
    return forward <= args.tolForward and after_step <= args.tol


def fastest_correct(result: ModelResult, args: argparse.Namespace) -> tuple[str, Variant] | None:
    candidates = [
        v for v in result.variants.values() if math.isfinite(v.best_round) and is_correct(result, v, args)
    ]
    if not candidates:
        return None
    best = min(candidates, key=lambda v: v.best_round)
    return best.name, best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 rounds of 1 step, no extra warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 16, quick 8)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 4, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default 2, quick 1)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps after the two checked ones (default 1, quick 0)",
    )
    parser.add_argument("--models", default="", help="comma-separated subset (default: every registered)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--tolForward", type=float, default=1e-4, help="largest relative difference to eager's loss at step 1"
    )
    parser.add_argument(
        "--tol", type=float, default=1e-2, help="largest relative difference to eager's loss after one step"
    )
    args = parser.parse_args()
    args.batch = args.batch or (8 if args.quick else 16)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.steps = args.steps or (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := sorted(set(args.variants) - set(VARIANTS)):
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "eager" not in args.variants:
        args.variants.insert(0, "eager")  # the reference every other variant is checked against
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list_models()

    torch.set_num_threads(args.threads)
    # Inductor's random numbers differ from eager's; with this fallback they are eager's, so a
    # model with random layers can be checked against eager (the draws are a tiny share of the work).
    torch._inductor.config.fallback_random = True
    # a fresh cache, so the compile time is what a first run pays, not a cache hit from an earlier run
    cache = tempfile.TemporaryDirectory(prefix="inductor-cache-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    warnings.filterwarnings("ignore", category=UserWarning)

    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    matmul_best = [matmul_seconds(a, b, 5)]

    def matmul() -> None:
        matmul_best.append(matmul_seconds(a, b, 5))

    total_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    results = []
    for name in names:
        start = time.perf_counter()
        results.append(bench_model(name, args, matmul))
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    matmul_gflops = 2 * MATMUL_SIZE**3 / min(matmul_best) / 1e9
    cache.cleanup()

    print("## Training step on the CPU: eager vs channels_last vs torch.compile\n")
    print(
        f"torch {torch.__version__}, {args.threads} threads (torch.set_num_threads), float32, batch {args.batch}, "
        f"inputRes {INPUT_RES} / outputRes {OUTPUT_RES}, synthetic persons; a step is forward, the project's loss "
        f"(losses.make_loss by target type), backward and an Adam step (lr {LEARNING_RATE:g}, eager in every "
        f"variant). Each variant's figure is its best of {args.rounds} rounds of {args.steps} step(s), rounds "
        "interleaved in rotating order, after 2 checked steps and "
        f"{args.warmup} more warm-up step(s). Total time {time.perf_counter() - total_start:.0f} s; 1-minute "
        f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} "
        "cores).\n"
    )
    print(
        f"Matmul reference: float32 `torch.matmul` of {MATMUL_SIZE}x{MATMUL_SIZE} matrices, best of "
        f"{5 * len(matmul_best)} timed in the same run (once per round): **{matmul_gflops:.1f} GFLOP/s**. "
        "Forward FLOPs per image from the project's counter (`models.complexity.gflops_per_image`: torch's "
        "FlopCounterMode, a multiply-add = 2 FLOPs, pooling / interpolation / element-wise not counted); "
        "a training step counts 3x the forward FLOPs.\n"
    )
    print("| model | configuration (inputRes 128 / outputRes 32) | parameters (M) | forward GFLOPs / image |")
    print("| --- | --- | --- | --- |")
    for r in results:
        if r.failure and not r.config:
            print(f"| {r.name} | {r.failure} | | |")
        else:
            print(f"| {r.name} | {r.config} | {r.parameters:.2f} | {r.gflops:.3f} |")
    print()

    print(
        "| model | variant | images / s | speed-up vs eager | GFLOP/s | of matmul | loss rel. diff vs eager: "
        f"step 1 / after one step | correct (<= {args.tolForward:g} / {args.tol:g}) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if r.failure:
            print(f"| {r.name} | - | {r.failure} | | | | | |")
            continue
        eager = r.variants["eager"]
        for v in r.variants.values():
            if v.failure or not math.isfinite(v.best_round):
                print(f"| {r.name} | {v.name} | failed: {v.failure} | | | | | |")
                continue
            rate = args.batch / v.best_round
            speedup = eager.best_round / v.best_round if math.isfinite(eager.best_round) else math.nan
            achieved = 3 * r.gflops * args.batch / v.best_round
            if not eager_ok(r):
                diff, correct = "no finite eager reference", "unknown"
            elif v is eager:
                floor = relative_differences(r.floor, v.losses) if r.floor else []
                shown = " / ".join(f"{d:.1e}" for d in floor) if floor else "not measured"
                diff, correct = f"reference; noise floor (images x (1 + {NUDGE:g} x N(0, 1))): {shown}", "yes"
            else:
                shown = " / ".join(f"{d:.1e}" for d in relative_differences(v.losses, eager.losses))
                diff, correct = shown, "yes" if is_correct(r, v, args) else "no"
            print(
                f"| {r.name} | {v.name} | {rate:.1f} | {speedup:.2f}x | {achieved:.1f} | "
                f"{achieved / matmul_gflops:.0%} | {diff} | {correct} |"
            )
    print()

    if "compile" in args.variants:
        print(
            "torch.compile (default mode, inductor, cold cache, `fallback_random` so random layers draw eager's "
            "numbers): the first steps include tracing and compiling the forward and backward graphs; compile "
            "time = those steps minus as many steady steps.\n"
        )
        print(
            "| model | first step (s) | second step (s) | steady step (s) | compile time (s) | pays off after (steps) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for r in results:
            v = r.variants.get("compile")
            if r.failure or v is None:
                continue
            if v.failure or not math.isfinite(v.best_round):
                print(f"| {r.name} | failed: {v.failure} | | | | |")
                continue
            compile_seconds = sum(v.warmup_seconds) - len(v.warmup_seconds) * v.best_round
            saved = r.variants["eager"].best_round - v.best_round
            pays = f"{compile_seconds / saved:.0f}" if saved > 0 else "never (not faster)"
            print(
                f"| {r.name} | {v.warmup_seconds[0]:.1f} | {v.warmup_seconds[1]:.2f} | {v.best_round:.3f} | "
                f"{compile_seconds:.1f} | {pays} |"
            )
        print()

    picks = []
    for r in results:
        pick = None if r.failure else fastest_correct(r, args)
        if pick is None:
            picks.append(f"{r.name}: none ({r.failure or 'no correct variant measured'})")
        else:
            name, v = pick
            speedup = r.variants["eager"].best_round / v.best_round
            picks.append(f"{r.name}: {name} ({speedup:.2f}x eager)")
    print("Fastest correct variant: " + "; ".join(picks))


if __name__ == "__main__":
    main()
