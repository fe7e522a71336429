"""Training, validation, -test and --browse: everything main.py does with a dataset.

``run(opts)`` reads top to bottom: model, codec, data, optimizer, checkpoint, then the epoch loop
(``engine.train_one_epoch`` and ``engine.predict``). main.py parses the options and calls it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from datasets import Augmentation, KeypointDataset, build_datasets, make_codec
from datasets.loading import BadSampleReport, GuardedDataLoader
from engine import (
    EpochState,
    NonFiniteLossError,
    Precision,
    StepRequests,
    predict,
    score_predictions,
    train_one_epoch,
)
from inference import frame_sizes, joint_spec_of, load_weights
from losses import make_loss
from metrics import coco, mpii
from models import build_model
from models.complexity import ModelProfile, profile_model
from models.registry import option_to_parameter
from utils.checkpoint import (
    CheckpointWriteError,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from utils.distributed import (
    DistributedContext,
    barrier,
    broadcast_buffers,
    gather_objects,
    setup_distributed,
)
from utils.drawing import browse_samples, save_skeletons
from utils.logging import RunRecorder, evaluation_line, notice_start
from utils.options import config_file_keys, fail, fail_option, is_resume
from utils.watch import TrainingWatcher


def run(opts: argparse.Namespace) -> int:
    """Train (or resume, fine-tune), evaluate with -test, or write --browse samples."""
    configure_numerics(opts.deterministic)  # before CUDA starts: cuBLAS reads its workspace setting once
    context = setup_distributed(opts.gpuid)
    # the same seed on every rank gives identical initial weights; augmentation and data order
    # have their own (seed, epoch, index) generators, so ranks still see different samples
    seed_everything(opts.seed)
    say = print if context.is_main else (lambda *a, **k: None)
    if context.device.type == "cuda" and not opts.deterministic:
        torch.backends.cudnn.benchmark = not opts.test  # fixed crop sizes: the fastest kernels, found once

    input_size, heatmap_size = frame_sizes(opts)  # (width, height)
    model, profile = build_profiled(opts, input_size)
    check_output_shape(profile.output_shapes, opts, heatmap_size)
    say(
        f"model {opts.model}: {profile.parameters / 1e6:.2f} M parameters, {profile.gflops:.2f} GFLOPs per image"
    )
    if opts.amp == "fp16" and context.device.type == "cpu":
        say("note: --amp fp16 on the CPU is slow and gains nothing; bf16 is the CPU's mixed precision")
    model = with_sync_batchnorm(model, opts.syncBN and not opts.test, context, say)
    precision = Precision(opts.amp, torch.float64 if opts.usedouble else torch.float32)
    model = model.to(context.device, dtype=precision.dtype)
    # channels_last was the fastest correct variant for all seven models on a 2-core CPU (1.06x to
    # 1.57x a training step, benchmarks/training_step.py) and is what cuDNN's NHWC kernels want
    channels_last = bool(opts.channelsLast)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    codec = make_codec(
        opts.target_type, input_size, heatmap_size, opts.hmGauss, opts.coordConvention, opts.postProcess
    )
    loss_fn = make_loss(opts.target_type)
    augmentation = Augmentation(
        opts.maxScale, opts.maxRotate, opts.rotateProb, opts.maxTranslate, opts.flipProb, opts.colorJitter
    )
    train_set, val_set = build_datasets(
        opts.dataset, codec, input_size, augmentation, opts.seed,
        with_train=not opts.test, data_dir=opts.dataDir,
        train_annotation=opts.trainAnnotation, val_annotation=opts.valAnnotation, image_dir=opts.imageDir,
        head_boxes_mat=opts.headBoxesMat, bbox_file=opts.bboxFile, det_score_threshold=opts.detScoreThreshold,
        half_body_prob=opts.halfBodyProb, joint_spec=joint_spec_of(opts),
        synthetic_sizes=(opts.syntheticTrain, opts.syntheticVal), synthetic_image_size=opts.imageRes,
        skip_bad_samples=opts.skipBadSamples, max_bad_fraction=opts.maxBadFraction,
        allow_outside_paths=opts.allowOutsidePaths, image_cache=opts.imageCache,
    )  # fmt: skip
    # a training batch of one gives BatchNorm a single value per channel where a feature map is 1x1
    min_batch = 2 if profile.norm_values == 1 and not opts.browse else 1
    train_loader, val_loader = make_loaders(train_set, val_set, opts, context, min_batch)

    optimizer = getattr(torch.optim, opts.optimizer_type)(
        model.parameters(), lr=opts.LR, **opts.optimizer_kwargs
    )
    scheduler = make_scheduler(optimizer, opts)
    # the same scaler on every device, so the CPU tests run the save and restore a GPU run takes
    scaler = torch.amp.GradScaler(context.device.type) if opts.amp == "fp16" else None
    resumed = restore(opts, model, optimizer, scheduler, scaler, context) if opts.loadModel else Resumed()
    start_epoch, best, partial, pending = resumed.start_epoch, resumed.best, resumed.partial, resumed.pending
    for note in resumed.notes:
        say(note)

    run_dir = make_run_dir(opts, context)
    if opts.resume_changes and context.is_main:
        changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in opts.resume_changes.items())
        RunRecorder(run_dir).log_line(f"resumed from {opts.loadModel} with {changed}")
    if opts.browse:
        if context.is_main:
            train_set.set_epoch(start_epoch)
            paths = browse_samples(train_set, codec, opts.browse, run_dir / "browse")
            say(f"wrote {len(paths)} augmented training samples to {run_dir / 'browse'}")
        return 0
    recorder = RunRecorder(run_dir, enabled=context.is_main)
    for note in data_notes(train_loader, train_set, opts, context):
        recorder.log_line(note)
        say(f"note: {note}")
    for note in resumed.notes:
        if note.startswith(("random state", "resumed on", "the checkpoint holds")):
            recorder.log_line(note)
    main_metric = val_set.main_metric
    # validation runs `model` itself, never the wrapper (engine.predict says why); checkpoints
    # always hold `model`'s own names
    net = DistributedDataParallel(model) if context.is_distributed else model
    # compiled for training only: validation runs the eager module (eval-mode BatchNorm would
    # otherwise cost a second compilation)
    train_net = torch.compile(net) if opts.compile else net
    flip = val_set.joint_spec.flip_permutation() if opts.flipTest else None
    stop = StopRequest(context.is_main) if not opts.test else None
    predict_val = functools.partial(
        predict, model, val_loader, codec, context,
        loss_fn=loss_fn, precision=precision, progress_mode=opts.progress, flip_permutation=flip,
        channels_last=channels_last, should_stop=stop.requested if stop else None,
    )  # fmt: skip

    pictured: dict[str, np.ndarray] = {}  # the last validation's first crops and predictions

    def validate(output_dir: Path | None = None) -> dict[str, np.ndarray] | None:
        """Every rank's predictions with rank 0's weights and BatchNorm statistics (None when a
        stop request ended it early)."""
        broadcast_buffers(model, context)
        results = predict_val(keep=PICTURE_CROPS if context.is_main else 0)
        if results is not None:
            kept = ("crop_images", "crop_truth", "crop_preds")
            pictured.update({key: results[key] for key in kept if key in results})
        return results

    def scores(results: dict[str, np.ndarray], output_dir: Path | None = None) -> dict[str, float]:
        """Generic metrics plus the dataset's official ones (files only from rank 0)."""
        return score_predictions(results) | val_set.evaluate(results, output_dir if context.is_main else None)

    if opts.test:
        metrics = scores(validate(), run_dir)
        recorder.log_metrics(start_epoch - 1, "test", metrics)
        recorder.log_line(evaluation_line(opts.loadModel, metrics, main_metric))
        say(format_metrics(metrics))
        say(f"run directory: {run_dir}")
        return 0

    say(f"run directory: {run_dir}")
    watcher = TrainingWatcher(
        run_dir, enabled=context.is_main, tensorboard=opts.tensorboard,
        steps_per_epoch=len(train_loader), main_metric=main_metric, start_epoch=start_epoch,
        start_step=partial.step if partial else 0,
    )  # fmt: skip
    checkpoint = functools.partial(
        save, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, opts=opts, context=context
    )
    metrics: dict[str, float] = {}
    saved_at = [time.monotonic()]

    def save_mid_epoch(state: EpochState) -> None:
        checkpoint(run_dir / "last.pth", state.epoch - 1, best, partial=state)
        saved_at[0] = time.monotonic()

    requests = StepRequests(
        stop=lambda: stop.signal is not None,
        # every rank takes part in the save, or none: the flag is agreed in the step's collective
        save_due=lambda: (
            opts.saveEveryMinutes > 0 and time.monotonic() - saved_at[0] >= 60 * opts.saveEveryMinutes
        ),
        save=save_mid_epoch,
    )

    def validate_epoch(epoch: int, train_metrics: dict[str, float], seconds: float) -> bool:
        """Validate after ``epoch`` (whose checkpoint is already written), record the metrics,
        update best.pth and the epoch's line; False when a stop request ended validation."""
        nonlocal best, metrics
        stop.doing = f"stopping this validation (epoch {epoch}'s checkpoint is already saved)"
        started = time.monotonic()
        results = validate()
        if results is None:
            return False
        metrics = scores(results)
        watcher.log_predictions(epoch, val_set, results)
        recorder.log_metrics(epoch, "val", metrics)
        watcher.log_epoch(epoch, "val", metrics)
        watcher.write_curves()
        if metrics[main_metric] > best:
            best = metrics[main_metric]
            checkpoint(run_dir / "best.pth", epoch, best)
        checkpoint(run_dir / "last.pth", epoch, best)  # validated: the new best travels with it
        finish_epoch_line(epoch, train_metrics, seconds + time.monotonic() - started, metrics)
        return True

    def finish_epoch_line(epoch, train_metrics, seconds, val_metrics) -> None:
        line = f"epoch {epoch}/{opts.nEpochs} train loss {train_metrics['loss']:.6f} PCK {train_metrics['PCK']:.2f}"
        if val_metrics is not None:
            loss = f" loss {val_metrics['loss']:.6f}" if "loss" in val_metrics else ""
            line += f" | val{loss} {main_metric} {val_metrics[main_metric]:.2f}"
        line += f" | lr {optimizer.param_groups[0]['lr']:.3g} | {seconds:.0f}s"
        recorder.log_line(line)
        say(line)

    if pending is not None:  # the run stopped while validating this epoch: validate it first
        epoch = int(pending["epoch"])
        if not validate_epoch(epoch, pending["train"], float(pending["seconds"])):
            watcher.close()
            return stop.exit(run_dir / "last.pth", f"the validation of epoch {epoch}", say, context)

    for epoch in range(start_epoch, opts.nEpochs + 1):
        started = time.monotonic()
        train_loader.sampler.set_epoch(epoch)
        train_loader.sampler.skip = partial.step * opts.data_loader_size if partial else 0
        train_set.set_epoch(epoch)
        stop.doing = "stopping after this training step"
        try:
            state = train_one_epoch(
                train_net, loss_fn, train_loader, optimizer, codec, context, epoch,
                accumulation=opts.mini_batch_count, precision=precision, scaler=scaler, progress_mode=opts.progress,
                on_step=watcher.step_logger(epoch), resume_from=partial, requests=requests,
                channels_last=channels_last,
            )  # fmt: skip
            partial = None
            if not state.complete:
                checkpoint(run_dir / "last.pth", epoch - 1, best, partial=state)
                watcher.close()
                return stop.exit(run_dir / "last.pth", f"epoch {epoch}, batch {state.step}", say, context)
            train_metrics = state.metrics(context)
        except NonFiniteLossError as error:
            watcher.close()
            last = run_dir / "last.pth"
            kept = (
                f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint was written"
            )
            raise NonFiniteLossError(f"{error}; {kept}") from None
        scheduler.step()
        recorder.log_metrics(epoch, "train", train_metrics)
        watcher.log_epoch(epoch, "train", train_metrics)
        seconds = time.monotonic() - started
        validating = epoch % opts.valInterval == 0 or epoch == opts.nEpochs
        stop.doing = f"finishing epoch {epoch}'s checkpoint, then stopping"
        # written before validation, so a stop (or torchrun's kill 30 s after it) while validating
        # keeps the epoch; the resumed run validates it first
        waiting = {"epoch": epoch, "train": train_metrics, "seconds": seconds} if validating else None
        checkpoint(run_dir / "last.pth", epoch, best, pending_validation=waiting)
        if validating:
            if not validate_epoch(epoch, train_metrics, seconds):
                watcher.close()
                return stop.exit(run_dir / "last.pth", f"the validation of epoch {epoch}", say, context)
        else:
            finish_epoch_line(epoch, train_metrics, seconds, None)
        saved_at[0] = time.monotonic()
        if epoch % opts.saveInterval == 0:
            checkpoint(run_dir / f"model_{epoch}.pth", epoch, best)
        if stop.signal is not None and epoch < opts.nEpochs:
            watcher.close()
            return stop.exit(run_dir / "last.pth", f"the end of epoch {epoch}", say, context)
    watcher.close()
    stop.restore()

    if context.is_main:
        picture = None
        if pictured:  # the last validation's own outputs: no second forward pass
            picture = save_skeletons(
                pictured["crop_images"],
                pictured["crop_truth"],
                pictured["crop_preds"],
                val_set.joint_spec,
                run_dir / "predictions.png",
            )
        say(f"run directory: {run_dir}")
        say(f"checkpoint: {run_dir / 'last.pth'} (best {main_metric} {best:.2f}: {run_dir / 'best.pth'})")
        if metrics:
            say(format_metrics(metrics))
        if picture is not None:
            say(f"predicted skeletons: {picture}")
    return 0


def configure_numerics(deterministic: bool) -> None:
    """``--deterministic 1``: the same weights from the same seed on CUDA too, at a cost in speed
    (README, GPU section): deterministic kernels only (an op without one stops the run naming
    it), cuDNN's autotuner off, TF32 off for convolutions and matrix products. Set both ways,
    since the switches are process-wide and a caller may run several commands in one process."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic  # PyTorch's default is on
    torch.backends.cudnn.benchmark = False  # run() turns it on for non-deterministic CUDA training


def with_sync_batchnorm(
    model: torch.nn.Module, wanted: bool, context: DistributedContext, say
) -> torch.nn.Module:
    """``--syncBN 1``: BatchNorm statistics over the whole batch of all GPUs (pose batches per GPU
    are small). Same state_dict names, so checkpoints are interchangeable with plain BatchNorm."""
    if not wanted:
        return model
    if context.world_size < 2:
        say("note: --syncBN 1 has no effect on one process (BatchNorm already sees the whole batch)")
        return model
    if context.device.type != "cuda":
        say(
            "note: --syncBN 1 needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); plain BatchNorm is used"
        )
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_profiled(
    opts: argparse.Namespace, input_size: tuple[int, int]
) -> tuple[torch.nn.Module, ModelProfile]:
    """The model and its profile (one forward pass at ``input_size``, (width, height)). A builder
    refusing a value (a kernel size, a backbone name, an input too small for it) stops in one line
    that names the config keys."""
    try:
        model = build_model(opts.model, **vars(opts))
        return model, profile_model(model, input_size[::-1])
    except (ValueError, FileNotFoundError) as error:
        # builders name their parameters (hh_kernel), the user wrote config keys (hhKernel)
        keys = {option_to_parameter(key): key for key in opts.config}
        message = re.sub(r"\b[a-z]\w*_\w+\b", lambda found: keys.get(found[0], found[0]), str(error))
        named = [keys[found] for found in re.findall(r"\b[a-z]\w*_\w+\b", str(error)) if found in keys]
        fail_option(opts, f"model {opts.model}: {message}", named[0] if named else None)


def check_output_shape(
    shapes: list[tuple[int, ...]], opts: argparse.Namespace, heatmap_size: tuple[int, int]
) -> None:
    """The model's last stage must match what the codec encodes, else training is meaningless."""
    expected = (
        (1, opts.nJoints, heatmap_size[1], heatmap_size[0])
        if opts.target_type == "heatmap"
        else (1, opts.nJoints, 2)
    )
    if tuple(shapes[-1]) != expected:
        fail_option(
            opts,
            f"outputRes: model {opts.model} outputs {tuple(shapes[-1])[1:]} for inputRes {opts.inputRes} "
            f"but the targets are {expected[1:]}; set outputRes to the model's output height",
        )


def data_notes(
    train_loader: DataLoader | None, train_set: KeypointDataset | None, opts, context: DistributedContext
) -> list[str]:
    """What the sampler does to the training set that a user should know, one line each."""
    if train_loader is None:
        return []
    notes = []
    if train_loader.sampler.tail:
        notes.append(
            f"dropping the last training batch of every epoch, {train_loader.sampler.tail} sample(s) per process "
            f"of {len(train_set)}: a batch that small gives BatchNorm in {opts.model} a single value per channel"
        )
    if context.world_size > 1:
        padding = -len(train_set) % context.world_size
        notes.append(
            f"{context.world_size} processes: effective batch {opts.data_loader_size * opts.mini_batch_count * context.world_size} "
            f"(data_loader_size {opts.data_loader_size} x mini_batch_count {opts.mini_batch_count} x processes)"
            + (
                f"; the distributed sampler repeats {padding} of the {len(train_set)} training samples every epoch "
                f"so that each process gets {len(train_loader.sampler) + train_loader.sampler.tail}"
                if padding
                else ""
            )
        )
    return notes


def make_loaders(
    train_set: KeypointDataset | None,
    val_set: KeypointDataset,
    opts: argparse.Namespace,
    context: DistributedContext,
    min_batch: int = 1,
) -> tuple[DataLoader | None, DataLoader]:
    """Validation and training loaders. A last training batch smaller than ``min_batch`` (the
    smallest batch the model can train on) is left out of every epoch; a batch size or training
    set that leaves no such batch at all is refused in one line."""
    pin = context.device.type == "cuda" and not opts.dont_pin_memory
    common = {"batch_size": opts.data_loader_size, "num_workers": opts.nThreads, "pin_memory": pin}
    # bad samples go to <run>/bad_samples.txt; a dead worker's error names its sample (datasets/loading.py)
    common["report"] = BadSampleReport(opts.run_dir, [train_set, val_set], context.is_main, context.device)
    if opts.nThreads > 0:
        common["worker_init_fn"] = _quiet_worker
        # workers (and their imports, open files, decoded-image maps) live for the whole run; a
        # dataset's epoch is in shared memory, so they follow set_epoch
        common["persistent_workers"] = True
    # each rank scores a disjoint strided share of the validation set, without padding duplicates
    val_loader = GuardedDataLoader(
        val_set, sampler=range(context.rank, len(val_set), context.world_size), **common
    )
    if train_set is None:
        return None, val_loader
    # DistributedSampler with one replica is a seeded shuffle; its (seed, epoch) order replays on resume
    sampler = ResumableSampler(
        train_set, num_replicas=context.world_size, rank=context.rank, shuffle=opts.shuffle, seed=opts.seed
    )
    if opts.data_loader_size < min_batch:
        fail_option(
            opts,
            f"data_loader_size: {opts.data_loader_size} gives BatchNorm in {opts.model} a single value per "
            f"channel (a feature map is 1x1 at inputRes {opts.inputRes}); use data_loader_size >= {min_batch} "
            f"or a larger inputRes",
        )
    per_rank = len(sampler)  # the same on every rank: DistributedSampler pads the shares to equal length
    if per_rank < min_batch:
        size_key = "syntheticTrain" if opts.dataset == "synthetic" else "trainAnnotation"
        fail_option(
            opts,
            f"{size_key}: {len(train_set)} training samples give {per_rank} per process, fewer than the "
            f"{min_batch} a batch of {opts.model} needs at inputRes {opts.inputRes} (BatchNorm would see a "
            f"single value per channel)",
        )
    short = per_rank % opts.data_loader_size
    sampler.tail = short if short < min_batch else 0  # every rank drops the same last batch
    return GuardedDataLoader(train_set, sampler=sampler, drop_last=False, **common), val_loader


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can skip the first ``skip`` indices of its next pass: the batches an
    interrupted epoch already trained on (the order is a function of (seed, epoch), so the rest
    of the epoch is exactly what the uninterrupted run saw). The last ``tail`` indices of every
    pass are left out (a last batch too small to train on)."""

    skip = 0
    tail = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        order = list(super().__iter__())
        return iter(order[skip : len(order) - self.tail])

    def __len__(self) -> int:
        return super().__len__() - self.skip - self.tail


class StopRequest:
    """SIGINT / SIGTERM ask the run to stop cleanly: training after the current optimizer step,
    validation at its next batch (the epoch's checkpoint is written before it), each with a
    resumable checkpoint; a second SIGINT stops at once (checkpoints are written atomically, so
    the newest complete one stays usable). ``doing`` is what the loop is finishing, for the one
    line rank 0 prints."""

    def __init__(self, announce: bool = True) -> None:
        self.signal: int | None = None
        self.announce = announce
        self.doing = "stopping after this training step"
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self.previous:
            signal.signal(sig, self._handle)

    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _frame) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:
                if self.announce:
                    print(
                        f"{notice_start()}second interrupt: stopping now; the newest complete checkpoint is kept",
                        file=sys.stderr,
                    )
                os._exit(130)
            return  # torchrun follows a Ctrl-C with SIGTERM: the same request
        self.signal = signum
        if self.announce:
            print(f"{notice_start()}{signal.Signals(signum).name}: {self.doing}", file=sys.stderr)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def exit(self, checkpoint: Path, where: str, say, context: DistributedContext) -> int:
        """Say where the run stopped and how to resume it (with the launcher it was started by);
        the shell's status for the signal."""
        self.restore()
        say(f"interrupted at {where}; resume with: {context.launch_command} --loadModel {checkpoint}")
        return 128 + int(self.signal)


def _quiet_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides how to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(0)  # workers are already one process per core; OpenCV threads would oversubscribe


def make_scheduler(
    optimizer: torch.optim.Optimizer, opts: argparse.Namespace
) -> torch.optim.lr_scheduler.LRScheduler:
    if opts.lrSchedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=opts.milestones, gamma=opts.dropMag)
    step = opts.dropLR if opts.dropLR > 0 else 10**9  # dropLR 0: never drop
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=opts.dropMag)


@dataclass
class Resumed:
    """Where a run continues from a checkpoint, and what a resume must say about it."""

    start_epoch: int = 1
    best: float = -math.inf
    partial: EpochState | None = None  # a mid-epoch checkpoint: the batches already done
    pending: dict[str, Any] | None = None  # the run stopped while validating this epoch
    notes: list[str] = field(default_factory=list)  # for the log and the terminal


def restore(opts, model, optimizer, scheduler, scaler, context: DistributedContext) -> Resumed:
    """Load --loadModel; --loadOptim, --loadEpoch and --dropPreLoaded choose what is kept."""
    state = load_weights(model, opts)
    resumed = Resumed()
    if opts.loadOptim and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        # keep the schedule's progress but this run's dropLR / dropMag / lrMilestones
        progress = {
            k: v for k, v in state["scheduler"].items() if k not in ("step_size", "gamma", "milestones")
        }
        scheduler.load_state_dict({**scheduler.state_dict(), **progress})
        if scaler is not None and not opts.test:
            if state.get("grad_scaler"):
                scaler.load_state_dict(state["grad_scaler"])
            else:
                resumed.notes.append(
                    "the checkpoint holds no GradScaler state (not trained with --amp fp16): "
                    f"the loss scale starts at {scaler.get_scale():g}"
                )
    if opts.dropPreLoaded:
        for group in optimizer.param_groups:
            group["lr"] *= opts.dropMagPreLoaded
    if not opts.loadEpoch:
        resumed.notes.append(f"loaded weights from {opts.loadModel}; counting epochs from 1")
        return resumed
    if "rng" in state:
        note = restore_rng_state(state["rng"], context.rank, context.world_size, context.device)
        if note:
            resumed.notes.append(note)
    resumed.best = float(state.get("best", -math.inf))
    middle = state.get("mid_epoch")
    if middle and not opts.test:
        # the running sums and sample positions are per rank: only the same number of ranks continues
        written_by = int(state.get("world_size", len(middle["loss_sum"])))
        if written_by != context.world_size:
            launch = state.get("launch") or (
                "python main.py" if written_by == 1 else f"torchrun --nproc_per_node {written_by} main.py"
            )
            stop_run(
                f"loadModel: {opts.loadModel} was written in the middle of epoch {middle['epoch']} by {written_by} "
                f"process(es) and this run has {context.world_size}; a mid-epoch checkpoint continues only on the "
                f"same number: {launch} --loadModel {opts.loadModel} (end-of-epoch checkpoints may change it)",
                context,
            )
        rank = context.rank
        resumed.partial = EpochState(
            int(middle["epoch"]), int(middle["step"]), middle["loss_sum"][rank], middle["pck_sum"][rank]
        )
        resumed.start_epoch = resumed.partial.epoch
        resumed.notes.append(
            f"resumed {opts.loadModel} in epoch {resumed.partial.epoch} after batch {resumed.partial.step}"
        )
    else:
        resumed.start_epoch = int(state["epoch"]) + 1
        if not opts.test and state.get("pending_validation"):
            resumed.pending = state["pending_validation"]
        verb = "evaluating" if opts.test else "resumed"
        resumed.notes.append(f"{verb} {opts.loadModel} after epoch {state['epoch']}")
    if not opts.test:
        change = world_size_change(state, opts, context)
        if change:
            resumed.notes.append(change)
    return resumed


def world_size_change(state: dict[str, Any], opts, context: DistributedContext) -> str | None:
    """One line when a resume runs on another number of processes: the effective batch changes."""
    written_by = int(state.get("world_size", 1))
    if written_by == context.world_size:
        return None
    stored = state.get("config") or {}
    before = int(stored.get("data_loader_size", opts.data_loader_size)) * int(
        stored.get("mini_batch_count", opts.mini_batch_count)
    )
    after = opts.data_loader_size * opts.mini_batch_count
    return (
        f"resumed on {context.world_size} process(es) a run written by {written_by}: effective batch "
        f"{before * written_by} -> {after * context.world_size} (data_loader_size x mini_batch_count x "
        f"processes); the learning rate is as configured, not rescaled"
    )


def stop_run(message: str, context: DistributedContext) -> NoReturn:
    """Stop every rank with status 2; rank 0 prints the one line."""
    if context.is_main:
        fail(message)
    raise SystemExit(2)


def save(
    path: Path,
    epoch: int,
    best: float,
    *,
    model,
    optimizer,
    scheduler,
    scaler: torch.amp.GradScaler | None,
    opts,
    context: DistributedContext,
    partial: EpochState | None = None,
    pending_validation: dict[str, Any] | None = None,
) -> None:
    """Checkpoint after ``epoch`` completed epochs; with ``partial``, also the batches done of the
    next epoch (a mid-epoch checkpoint, resumed at the next batch); with ``pending_validation``,
    an epoch whose validation has not run yet (a resume runs it first). A collective: every rank
    calls it, and each rank's generators and running sums reach rank 0 in one gather."""
    own = {"rng": capture_rng_state(context.device)}
    if partial is not None:
        own["sums"] = (partial.loss_sum, partial.pck_sum)
    ranks = gather_objects(own, context)
    if context.is_main:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best": best,
            "rng": {"ranks": [entry["rng"] for entry in ranks]},  # one per rank, in rank order
            # the data order is a function of (seed, epoch), so these two replay it exactly
            "data_order": {"seed": opts.seed, "next_epoch": epoch + 1},
            "world_size": context.world_size,
            "launch": context.launch_command,
            "config": opts.config,
        }
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        if pending_validation is not None:
            state["pending_validation"] = pending_validation
        if partial is not None:
            state["mid_epoch"] = {
                "epoch": partial.epoch,
                "step": partial.step,
                "loss_sum": [float(entry["sums"][0]) for entry in ranks],  # one per rank, in rank order
                "pck_sum": [float(entry["sums"][1]) for entry in ranks],
            }
        try:
            save_checkpoint(state, path)
        except OSError as error:
            reason = error.strerror or str(error)
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {reason}; the previous checkpoint there is intact"
            ) from None
    barrier(context)


def make_run_dir(opts: argparse.Namespace, context: DistributedContext) -> Path:
    """Create the run directory ``parse_options`` planned. A resume continues in its own run and
    leaves its config.defconf as it was (log.txt notes what changed); every other command gets a
    new directory whose config.defconf names the checkpoint it started from (``loadModel``)."""
    run_dir = opts.run_dir
    if context.is_main and is_resume(opts) and run_dir.is_dir():
        for stale in run_dir.glob(".*.pth.*.tmp"):  # a checkpoint write cut off by kill -9
            stale.unlink(missing_ok=True)
    if context.is_main and not (is_resume(opts) and run_dir.is_dir()):
        run_dir.mkdir(parents=True, exist_ok=False)
        settable = config_file_keys()
        with open(run_dir / "config.defconf", "w") as stream:
            for key, value in opts.config.items():
                if value is None or key not in settable:
                    continue
                # false is written too: several flags (flipTest, tensorboard, shuffle) default to on
                text = (
                    f"[{', '.join(value)}]"
                    if isinstance(value, list)
                    else ("true" if value is True else "false" if value is False else value)
                )
                stream.write(f"{key}: {text}\n")
    return run_dir


def format_metrics(metrics: dict[str, float]) -> str:
    """The official MPII PCKh table when present, then the other numbers."""
    lines = []
    if "PCKh" in metrics:
        columns = {name: metrics[f"PCKh_{name}"] for name in mpii.PART_JOINTS}
        columns |= {"Mean": metrics["PCKh"], "Mean@0.1": metrics["PCKh_Mean@0.1"]}
        lines += ["PCKh (official MPII table):", mpii.format_table(columns)]
    if "AP" in metrics:
        lines += [
            "COCO keypoints (official COCOeval):",
            coco.format_table({k: metrics[k] for k in coco.STAT_NAMES}),
        ]
    shown = {*coco.STAT_NAMES} if "AP" in metrics else set()
    lines += [
        f"{key}: {value:.4g}"
        for key, value in metrics.items()
        if not key.startswith("PCKh") and key not in shown
    ]
    return "\n".join(lines)


# validation crops in predictions.png, kept from the last validation
PICTURE_CROPS = 8


def one_line(error: Exception) -> str:
    """The error's own message; a DataLoader worker wraps it in a traceback whose last line it is."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text
