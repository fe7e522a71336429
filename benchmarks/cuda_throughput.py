"""Training and inference speed of every registered model on one CUDA GPU, at the paper size of
its conf file, with ``--amp`` none, bf16 and fp16 and with ``--deterministic 1``; and the peak GPU
memory of training.

    python benchmarks/cuda_throughput.py                  # every model (a few minutes on an H200)
    python benchmarks/cuda_throughput.py --quick          # fewer steps
    python benchmarks/cuda_throughput.py --models HRNet,SimpleBaseline --batch 64

Each model is built from ``conf/models/<name>.defconf`` (the full 8-stack Stacked Hourglass, not
the demo) at its inputRes; HRNet and SimpleBaseline at COCO's 256x192 with 17 joints, as in
benchmarks/model_complexity.py. A training step is what the training loop does: channels_last
weights and input, forward and the project's loss under autocast (bf16, or fp16 with a GradScaler),
backward and the conf file's optimizer. The deterministic variant is float32 under the switches
``--deterministic 1`` sets (build.configure_numerics: deterministic kernels, no cuDNN autotuning, no
TF32), turned off again after it. Input and targets are random tensors already on the GPU,
so the data pipeline is not measured. Each variant runs on a fresh copy of the same weights: some
warm-up steps (cuDNN's autotuning with ``cudnn.benchmark`` happens there), then timed steps between
``torch.cuda.synchronize()`` calls. Peak memory is ``torch.cuda.max_memory_allocated`` over the
variant's steps (weights, optimizer state and activations), reset between variants. Inference is
eval mode under ``torch.no_grad()`` at the same batch. A variant that runs out of memory is retried
at half the batch, which its cell then names. Prints one markdown table.
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cpu_models import CONF_DIR, conf_file  # noqa: E402
from benchmarks.model_complexity import COCO_SETTINGS, CONF_NAMES  # noqa: E402
from build import build_codec, configure_numerics, frame_sizes  # noqa: E402
from losses import make_loss  # noqa: E402
from models import build_model, get_entry, list_models  # noqa: E402
from models.complexity import profile_model  # noqa: E402
from utils.options import parse_options  # noqa: E402

VARIANTS = ("none", "bf16", "fp16", "deterministic")  # training: --amp, or float32 with --deterministic 1
MEMORY_VARIANTS = ("none", "bf16", "fp16")
INFERENCE_MODES = ("none", "bf16")
SMALLEST_BATCH = 2  # BatchNorm in training needs two samples where a feature map is 1x1
DEVICE = torch.device("cuda")


@dataclass
class Measured:
    rate: float = math.nan  # images / s
    peak_mib: float = math.nan
    batch: int = 0
    failure: str = ""
    finite: bool = True  # the last step's loss

    def cell(self, batch: int) -> str:
        if self.failure:
            return self.failure
        text = f"{self.rate:.0f}" if self.rate >= 100 else f"{self.rate:.3g}"
        if self.batch != batch:
            text += f" (batch {self.batch})"
        return text if self.finite else f"{text} (non-finite loss)"

    def memory(self) -> str:
        return self.failure.split(":")[0] if self.failure else f"{self.peak_mib:.0f}"


@dataclass
class ModelRow:
    name: str
    size: str = ""
    gflops: float = math.nan
    failure: str = ""
    train: dict[str, Measured] = field(default_factory=dict)
    infer: dict[str, Measured] = field(default_factory=dict)


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception, shortened: a table cell, not a traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".replace("|", "/")
    return (text[:117] + "...") if len(text) > 120 else text


def model_options(name: str) -> argparse.Namespace:
    """The options of ``name``'s own conf file (the paper configuration)."""
    conf = CONF_DIR / f"{CONF_NAMES.get(name, name)}.defconf"
    if not conf.is_file():  # a model registered later: the conf file whose model: line names it
        conf = conf_file(name)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parse_options(["-ModelConfig", str(conf), "--model", name, *COCO_SETTINGS.get(name, [])])
    except SystemExit:
        raise ValueError(captured.getvalue().strip().removeprefix("main.py: error: ")) from None


def autocast(amp: str):
    if amp in ("none", "deterministic"):
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def timed_steps(
    step: Callable[[], torch.Tensor], args: argparse.Namespace
) -> tuple[float, int, torch.Tensor]:
    """Warm-up steps, then up to ``args.steps`` timed ones (at least 2, and fewer once
    ``args.seconds`` have passed): (seconds, steps, last output)."""
    for _ in range(args.warmup):
        last = step()
    torch.cuda.synchronize()
    start, count = time.perf_counter(), 0
    while count < args.steps and (count < 2 or time.perf_counter() - start < args.seconds):
        last = step()
        count += 1
    torch.cuda.synchronize()
    return time.perf_counter() - start, count, last


def prepared(
    base: torch.nn.Module, opts: argparse.Namespace, batch: int, training: bool
) -> tuple[torch.nn.Module, torch.Tensor]:
    """A fresh channels_last copy of ``base`` on the GPU in train or eval mode, and a random batch
    (N, 3, h, w) at the run's input size, after freeing what the previous variant held."""
    free_memory()
    width, height = frame_sizes(opts)[0]
    model = copy.deepcopy(base).to(DEVICE).to(memory_format=torch.channels_last).train(training)
    image = torch.randn(batch, 3, height, width, device=DEVICE).contiguous(memory_format=torch.channels_last)
    return model, image


def measure_training(
    base: torch.nn.Module, opts: argparse.Namespace, amp: str, batch: int, args: argparse.Namespace
) -> Measured:
    model, image = prepared(base, opts, batch, training=True)
    optimizer = getattr(torch.optim, opts.optimizer_type)(
        model.parameters(), lr=opts.LR, **opts.optimizer_kwargs
    )
    scaler = torch.amp.GradScaler(DEVICE.type) if amp == "fp16" else None
    codec = build_codec(opts)
    loss_fn = make_loss(codec)
    shape = (batch, *codec.target_shape(opts.nJoints))  # a compositional target holds every level's maps
    with_target = get_entry(opts.model).trains_with_target
    # a target that enters the forward (engine.train_one_epoch: IEF's) is a pose in the crop's [-0.5, 0.5]
    target = torch.rand(shape, device=DEVICE) - (0.5 if with_target else 0.0)
    weight = torch.ones(shape[:2], device=DEVICE)

    def step() -> torch.Tensor:
        with autocast(amp):
            outputs = model(image, target) if with_target else model(image)
            loss = loss_fn(outputs, target, weight)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()

    if amp == "deterministic":
        configure_numerics(True)
    try:
        seconds, count, loss = timed_steps(step, args)
    finally:
        if amp == "deterministic":
            configure_numerics(False)
            torch.backends.cudnn.benchmark = bool(args.cudnnBenchmark)
    peak = torch.cuda.max_memory_allocated() / 2**20
    return Measured(batch * count / seconds, peak, batch, finite=math.isfinite(loss.item()))


def measure_inference(
    base: torch.nn.Module, opts: argparse.Namespace, amp: str, batch: int, args: argparse.Namespace
) -> Measured:
    model, image = prepared(base, opts, batch, training=False)

    @torch.no_grad()
    def step() -> torch.Tensor:
        with autocast(amp):
            return model(image)[-1]

    seconds, count, output = timed_steps(step, args)
    peak = torch.cuda.max_memory_allocated() / 2**20
    return Measured(batch * count / seconds, peak, batch, finite=bool(torch.isfinite(output).all()))


def is_out_of_memory(error: BaseException) -> bool:
    # cuDNN and cuBLAS report a failed workspace allocation as a plain RuntimeError
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def with_smaller_batches(measure: Callable[[int], Measured], batch: int) -> Measured:
    """``measure(batch)``, halving the batch after each out-of-memory error. Memory is freed
    outside the ``except`` block: the exception's traceback holds the failed step's tensors."""
    while True:
        try:
            return measure(batch)
        except Exception as error:  # a variant that fails gets a cell saying why
            if not is_out_of_memory(error):
                failure = f"failed: {one_line(error)}"
            elif batch // 2 < SMALLEST_BATCH:
                failure = f"OOM at batch {batch}"
            else:
                failure = ""
        free_memory()
        if failure:
            return Measured(failure=failure)
        batch //= 2


def bench_model(name: str, args: argparse.Namespace) -> ModelRow:
    row = ModelRow(name)
    try:
        opts = model_options(name)
        width, height = frame_sizes(opts)[0]
        row.size = f"{height} x {width}"
        torch.manual_seed(0)
        base = build_model(opts.model, **vars(opts))
        base.train()
        row.gflops = profile_model(copy.deepcopy(base).to(DEVICE), (height, width)).gflops
        free_memory()
    except Exception as error:  # a model that cannot be built gets a row saying why
        row.failure = f"build failed: {one_line(error)}"
        return row
    for amp in args.variants:
        row.train[amp] = with_smaller_batches(
            lambda batch, amp=amp: measure_training(base, opts, amp, batch, args), args.batch
        )
        print(f"  {name} train {amp}: {row.train[amp].cell(args.batch)} img/s", file=sys.stderr, flush=True)
    for amp in INFERENCE_MODES:
        row.infer[amp] = with_smaller_batches(
            lambda batch, amp=amp: measure_inference(base, opts, amp, batch, args), args.batch
        )
        print(f"  {name} infer {amp}: {row.infer[amp].cell(args.batch)} img/s", file=sys.stderr, flush=True)
    return row


def float32_note() -> str:
    """How float32 convolutions and matmuls run (TF32 or not), in the API this torch has."""
    backends = torch.backends
    try:
        if hasattr(backends.cudnn, "conv") and hasattr(backends.cuda.matmul, "fp32_precision"):
            return (
                f"float32 precision: cuDNN convolutions {backends.cudnn.conv.fp32_precision}, "
                f"cuBLAS matmuls {backends.cuda.matmul.fp32_precision}"
            )
        return (
            f"TF32: cuDNN {'on' if backends.cudnn.allow_tf32 else 'off'}, "
            f"cuBLAS {'on' if backends.cuda.matmul.allow_tf32 else 'off'}"
        )
    except RuntimeError as error:
        return f"float32 precision: unknown ({one_line(error)})"


def print_table(rows: list[ModelRow], args: argparse.Namespace, total: float, numerics: str) -> None:
    properties = torch.cuda.get_device_properties(0)
    print("## Training and inference on CUDA\n")
    print(
        f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark "
        f"{'on' if args.cudnnBenchmark else 'off'}, {numerics}. Batch {args.batch}, channels_last, random input "
        f"and targets on the GPU; per variant {args.warmup} warm-up step(s), then up to {args.steps} timed steps "
        f"(fewer after {args.seconds:g} s). Training: forward, the project's loss, backward and the conf file's "
        "optimizer; fp16 with a GradScaler; deterministic: float32 under --deterministic 1's switches "
        f"(CUBLAS_WORKSPACE_CONFIG {os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')} for the whole run). "
        "Inference: eval mode, no_grad, the last stage. Peak memory: training, max_memory_allocated. "
        f"Total time {total:.0f} s.\n"
    )
    print(
        "| model | input (h x w) | GFLOPs / image | train img/s none | train img/s bf16 | train img/s fp16 "
        "| train img/s deterministic | infer img/s bf16 | infer img/s none | peak MiB train (none / bf16 / fp16) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if row.failure:
            print(f"| {row.name} | {row.size} | | {row.failure} | | | | | | |")
            continue
        train = [row.train[v].cell(args.batch) if v in row.train else "not run" for v in VARIANTS]
        infer = [row.infer[a].cell(args.batch) for a in ("bf16", "none")]
        memory = " / ".join(row.train[v].memory() if v in row.train else "-" for v in MEMORY_VARIANTS)
        print(
            f"| {row.name} | {row.size} | {row.gflops:.1f} | {' | '.join(train)} | {' | '.join(infer)} | {memory} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 warm-up and at most 5 timed steps per variant"
    )
    parser.add_argument("--models", default="", help="comma-separated subset (default: every registered)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per variant (default 3, quick 1)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="most timed steps per variant (default 20, quick 5)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop timing a variant after this long (default 3, quick 1)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0,
        help="seconds; models not started by then are listed as skipped (0: none)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"training variants (default {','.join(VARIANTS)})"
    )
    parser.add_argument(
        "--cudnnBenchmark", type=int, default=1, help="torch.backends.cudnn.benchmark (default 1)"
    )
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps or (5 if args.quick else 20)
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := sorted(set(args.variants) - set(VARIANTS)):
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list_models()
    if unknown := sorted(set(names) - set(list_models())):
        parser.error(f"--models: unknown {', '.join(unknown)}; registered: {', '.join(list_models())}")
    if not torch.cuda.is_available():
        print(
            "cuda_throughput.py: needs a CUDA GPU, and none is visible (torch.cuda.is_available() is False); "
            "nothing was measured",
            file=sys.stderr,
        )
        return 1
    if "deterministic" in args.variants:
        # cuBLAS reads its workspace setting when CUDA starts, so it is set for the whole run
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    torch.backends.cudnn.benchmark = bool(args.cudnnBenchmark)
    numerics = float32_note()  # before the deterministic variant switches anything
    start = time.perf_counter()
    rows = []
    for name in names:
        if args.budget and time.perf_counter() - start > args.budget:
            rows.append(ModelRow(name, failure=f"skipped: the {args.budget:g} s budget was spent"))
            continue
        began = time.perf_counter()
        rows.append(bench_model(name, args))
        print(f"  {name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print_table(rows, args, time.perf_counter() - start, numerics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
