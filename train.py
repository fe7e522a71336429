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
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from datasets import Augmentation, KeypointDataset, build_datasets, make_codec
from datasets.loading import BadSampleReport, GuardedDataLoader
from datasets.skeletons import JointSpec
from engine import (
    EpochState,
    NonFiniteLossError,
    Precision,
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
from utils.distributed import DistributedContext, all_ranks, barrier, gather_arrays, setup_distributed
from utils.drawing import browse_samples, draw_pose, save_grid, to_uint8_image
from utils.logging import RunRecorder
from utils.options import config_file_keys, fail, is_resume
from utils.watch import TrainingWatcher


def run(opts: argparse.Namespace) -> int:
    """Train (or resume, fine-tune), evaluate with -test, or write --browse samples."""
    context = setup_distributed(opts.gpuid)
    # the same seed on every rank gives identical initial weights; augmentation and data order
    # have their own (seed, epoch, index) generators, so ranks still see different samples
    seed_everything(opts.seed)
    say = print if context.is_main else (lambda *a, **k: None)

    input_size, heatmap_size = frame_sizes(opts)  # (width, height)
    model, profile = build_profiled(opts, input_size)
    check_output_shape(profile.output_shapes, opts, heatmap_size)
    say(
        f"model {opts.model}: {profile.parameters / 1e6:.2f} M parameters, {profile.gflops:.2f} GFLOPs per image"
    )
    if opts.amp == "fp16" and context.device.type == "cpu":
        say("note: --amp fp16 on the CPU is slow and gains nothing; bf16 is the CPU's mixed precision")
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
    scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" and context.device.type == "cuda" else None
    start_epoch, best, partial = 1, -math.inf, None
    if opts.loadModel:
        start_epoch, best, partial = restore(opts, model, optimizer, scheduler, context, say)

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
    if train_loader is not None and train_loader.sampler.tail:
        note = (
            f"dropping the last training batch of every epoch, {train_loader.sampler.tail} sample(s) per process "
            f"of {len(train_set)}: a batch that small gives BatchNorm in {opts.model} a single value per channel"
        )
        recorder.log_line(note)
        say(f"note: {note}")
    main_metric = val_set.main_metric
    net = DistributedDataParallel(model) if context.is_distributed else model
    # compiled for training only: validation runs the eager module (eval-mode BatchNorm would
    # otherwise cost a second compilation); checkpoints always hold `model`'s own names
    train_net = torch.compile(net) if opts.compile else net
    flip = val_set.joint_spec.flip_permutation() if opts.flipTest else None
    predict_val = functools.partial(
        predict, net, val_loader, codec, context,
        loss_fn=loss_fn, precision=precision, progress_mode=opts.progress, flip_permutation=flip,
        channels_last=channels_last,
    )  # fmt: skip

    pictured: dict[str, np.ndarray] = {}  # the last validation's first crops and predictions

    def validate(output_dir: Path | None = None, epoch: int | None = None) -> dict[str, float]:
        """Generic metrics plus the dataset's official ones (files only from rank 0); with
        ``epoch``, TensorBoard's skeleton grid drawn from these same predictions."""
        results = predict_val(keep=PICTURE_CROPS if context.is_main else 0)
        pictured.update({key: results[key] for key in ("crop_images", "crop_preds") if key in results})
        if epoch is not None:
            watcher.log_predictions(epoch, val_set, results)
        return score_predictions(results) | val_set.evaluate(results, output_dir if context.is_main else None)

    if opts.test:
        metrics = validate(run_dir)
        recorder.log_metrics(start_epoch - 1, "test", metrics)
        say(format_metrics(metrics))
        say(f"run directory: {run_dir}")
        return 0

    say(f"run directory: {run_dir}")
    watcher = TrainingWatcher(
        run_dir, enabled=context.is_main, tensorboard=opts.tensorboard,
        steps_per_epoch=len(train_loader), main_metric=main_metric, start_epoch=start_epoch,
        start_step=partial.step if partial else 0,
    )  # fmt: skip
    metrics: dict[str, float] = {}
    stop = StopRequest()
    last_save = time.monotonic()

    def pause(state: EpochState) -> bool:
        """At an optimizer step: stop on a signal; write a mid-epoch checkpoint when due."""
        nonlocal last_save
        due = opts.saveEveryMinutes > 0 and time.monotonic() - last_save >= 60 * opts.saveEveryMinutes
        if opts.saveEveryMinutes > 0:
            due = not all_ranks(not due, context)  # every rank takes part in the save, or none
        if due and not stop.signal:
            save(
                run_dir / "last.pth", state.epoch - 1, best, model, optimizer, scheduler, opts, context, state
            )
            last_save = time.monotonic()
        return stop.signal is not None

    for epoch in range(start_epoch, opts.nEpochs + 1):
        started = time.monotonic()
        train_loader.sampler.set_epoch(epoch)
        train_loader.sampler.skip = partial.step * opts.data_loader_size if partial else 0
        train_set.set_epoch(epoch)
        try:
            state = train_one_epoch(
                train_net, loss_fn, train_loader, optimizer, codec, context, epoch,
                accumulation=opts.mini_batch_count, precision=precision, scaler=scaler, progress_mode=opts.progress,
                on_step=watcher.step_logger(epoch), resume_from=partial, pause=pause,
                channels_last=channels_last,
            )  # fmt: skip
            partial = None
            if not state.complete:
                save(run_dir / "last.pth", epoch - 1, best, model, optimizer, scheduler, opts, context, state)
                watcher.close()
                return stop.exit(run_dir / "last.pth", f"epoch {epoch}, batch {state.step}", say)
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
        line = f"epoch {epoch}/{opts.nEpochs} train loss {train_metrics['loss']:.6f} PCK {train_metrics['PCK']:.2f}"
        if epoch % opts.valInterval == 0 or epoch == opts.nEpochs:
            metrics = validate(epoch=epoch)
            recorder.log_metrics(epoch, "val", metrics)
            watcher.log_epoch(epoch, "val", metrics)
            watcher.write_curves()
            loss = f" loss {metrics['loss']:.6f}" if "loss" in metrics else ""
            line += f" | val{loss} {main_metric} {metrics[main_metric]:.2f}"
            if metrics[main_metric] > best:
                best = metrics[main_metric]
                save(run_dir / "best.pth", epoch, best, model, optimizer, scheduler, opts, context)
        line += f" | lr {optimizer.param_groups[0]['lr']:.3g} | {time.monotonic() - started:.0f}s"
        recorder.log_line(line)
        say(line)
        save(run_dir / "last.pth", epoch, best, model, optimizer, scheduler, opts, context)
        last_save = time.monotonic()
        if epoch % opts.saveInterval == 0:
            save(run_dir / f"model_{epoch}.pth", epoch, best, model, optimizer, scheduler, opts, context)
        if stop.signal is not None and epoch < opts.nEpochs:
            watcher.close()
            return stop.exit(run_dir / "last.pth", f"the end of epoch {epoch}", say)
    watcher.close()
    stop.restore()

    if context.is_main:
        picture = None
        if pictured:  # the last validation's own outputs: no second forward pass
            picture = draw_predictions(
                pictured["crop_images"],
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
        fail(f"model {opts.model}: {message}")


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
        fail(
            f"outputRes: model {opts.model} outputs {tuple(shapes[-1])[1:]} for inputRes {opts.inputRes} "
            f"but the targets are {expected[1:]}; set outputRes to the model's output height"
        )


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
        fail(
            f"data_loader_size: {opts.data_loader_size} gives BatchNorm in {opts.model} a single value per "
            f"channel (a feature map is 1x1 at inputRes {opts.inputRes}); use data_loader_size >= {min_batch} "
            f"or a larger inputRes"
        )
    per_rank = len(sampler)  # the same on every rank: DistributedSampler pads the shares to equal length
    if per_rank < min_batch:
        size_key = "syntheticTrain" if opts.dataset == "synthetic" else "trainAnnotation"
        fail(
            f"{size_key}: {len(train_set)} training samples give {per_rank} per process, fewer than the "
            f"{min_batch} a batch of {opts.model} needs at inputRes {opts.inputRes} (BatchNorm would see a "
            f"single value per channel)"
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
    """SIGINT / SIGTERM ask training to stop after the current optimizer step, with a resumable
    checkpoint; a second SIGINT stops at once (checkpoints are written atomically, so the newest
    complete one stays usable)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self.previous:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: stopping now; the newest complete checkpoint is kept", file=sys.stderr)
            os._exit(130)
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this training step", file=sys.stderr)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def exit(self, checkpoint: Path, where: str, say) -> int:
        """Say where training stopped and how to resume; the shell's status for the signal."""
        self.restore()
        say(f"interrupted at {where}; resume with: python main.py --loadModel {checkpoint}")
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


def restore(opts, model, optimizer, scheduler, context, say) -> tuple[int, float, EpochState | None]:
    """Load --loadModel; --loadOptim, --loadEpoch and --dropPreLoaded choose what is kept."""
    state = load_weights(model, opts)
    if opts.loadOptim and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        # keep the schedule's progress but this run's dropLR / dropMag / lrMilestones
        progress = {
            k: v for k, v in state["scheduler"].items() if k not in ("step_size", "gamma", "milestones")
        }
        scheduler.load_state_dict({**scheduler.state_dict(), **progress})
    if opts.dropPreLoaded:
        for group in optimizer.param_groups:
            group["lr"] *= opts.dropMagPreLoaded
    if opts.loadEpoch:
        if "rng" in state:
            restore_rng_state(state["rng"])
        best = float(state.get("best", -math.inf))
        middle = state.get("mid_epoch")
        if middle and not opts.test:
            # the running sums are per rank: each rank continues its own share of the epoch
            rank = context.rank
            partial = EpochState(
                int(middle["epoch"]), int(middle["step"]), middle["loss_sum"][rank], middle["pck_sum"][rank]
            )
            say(f"resumed {opts.loadModel} in epoch {partial.epoch} after batch {partial.step}")
            return partial.epoch, best, partial
        verb = "evaluating" if opts.test else "resumed"
        say(f"{verb} {opts.loadModel} after epoch {state['epoch']}")
        return int(state["epoch"]) + 1, best, None
    say(f"loaded weights from {opts.loadModel}; counting epochs from 1")
    return 1, -math.inf, None


def save(
    path: Path,
    epoch: int,
    best: float,
    model,
    optimizer,
    scheduler,
    opts,
    context: DistributedContext,
    partial: EpochState | None = None,
) -> None:
    """Checkpoint after ``epoch`` completed epochs; with ``partial``, also the batches done of the
    next epoch (a mid-epoch checkpoint, resumed at the next batch)."""
    if partial is not None:  # every rank's running sums (a collective: all ranks call save)
        sums = gather_arrays({"sums": np.array([[partial.loss_sum, partial.pck_sum]])}, context)["sums"]
    if context.is_main:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best": best,
            "rng": capture_rng_state(),
            # the data order is a function of (seed, epoch), so these two replay it exactly
            "data_order": {"seed": opts.seed, "next_epoch": epoch + 1},
            "config": opts.config,
        }
        if partial is not None:
            state["mid_epoch"] = {
                "epoch": partial.epoch,
                "step": partial.step,
                "loss_sum": [float(v) for v in sums[:, 0]],  # one per rank, in rank order
                "pck_sum": [float(v) for v in sums[:, 1]],
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


def draw_predictions(images: np.ndarray, joints: np.ndarray, spec: JointSpec, path: Path) -> Path:
    """Predicted skeletons, ``joints`` (n, K, 2) in crop pixels, on validation crops ``images``
    (n, 3, h, w) as the loader gave them (left-side joints have white centres)."""
    drawn = [
        draw_pose(
            to_uint8_image(image), pose, np.ones(len(pose)), spec.skeleton, (0, 255, 0), spec.left_joints
        )
        for image, pose in zip(images, joints, strict=True)
    ]
    return save_grid(drawn, path)


def one_line(error: Exception) -> str:
    """The error's own message; a DataLoader worker wraps it in a traceback whose last line it is."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text
