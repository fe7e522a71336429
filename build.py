"""The objects a run needs, built from the options in one place: the device and process group,
the network (profiled, its output checked against the targets), the codec and loss its target type
implies, the datasets and their loaders, the optimizer and its schedule. Training, -test and
--browse start with :func:`build_run`; -predict and -export with :func:`load_trained` (a trained
network rebuilt from a checkpoint's stored options, its weights loaded).
"""

from __future__ import annotations

import os
import random
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from checkpoints import load_weights
from datasets import Augmentation, AugmentationSwitch, KeypointDataset, build_datasets, make_codec
from datasets.codecs import Codec
from datasets.loading import BadSampleReport, GuardedDataLoader
from datasets.registry import get_dataset_entry, joint_spec_for, list_datasets
from datasets.skeletons import JointSpec
from engine import Precision
from losses import make_loss
from models import build_model
from models.complexity import ModelProfile, profile_model
from models.registry import get_entry, option_to_parameter
from recipe import ExpMomentumEMA, LayerDecayError, StepwiseLR, parameter_groups
from utils.distributed import DistributedContext, setup_distributed
from utils.option_checks import AUGMENTATION_KEYS
from utils.options import fail_option
from utils.threads import ThreadPlan, apply_thread_plan

if TYPE_CHECKING:
    from utils.options import Options


@dataclass
class RunParts:
    """What every mode that reads a dataset works with."""

    context: DistributedContext
    say: Callable[..., None]  # print on rank 0, nothing elsewhere
    model: nn.Module  # on the device, in its dtype and memory format
    profile: ModelProfile
    precision: Precision
    channels_last: bool
    codec: Codec
    loss_fn: nn.Module
    train_set: KeypointDataset | None
    val_set: KeypointDataset
    train_loader: DataLoader | None
    val_loader: DataLoader
    threads: ThreadPlan  # the CPU threads and DataLoader workers chosen (utils/threads.py)
    # the registry's declarations (models/registry.py): train with model(image, target); score
    # every stage as "<metric>_<stage_label><stage>"
    with_target: bool = False
    stage_label: str | None = None


def build_run(opts: Options, with_train: bool) -> RunParts:
    """Device, seed, network, codec, loss, datasets and loaders, in that order."""
    configure_numerics(opts.deterministic)  # before CUDA starts: cuBLAS reads its workspace setting once
    context = setup_distributed(opts.gpuid, opts.distTimeout)
    threads = apply_thread_plan(opts.cpuThreads, opts.nThreads, max(1, context.local_world_size))
    # the same seed on every rank gives identical initial weights; augmentation and data order
    # have their own (seed, epoch, index) generators, so ranks still see different samples
    seed_everything(opts.seed)
    say = print if context.is_main else (lambda *a, **k: None)
    if context.device.type == "cuda" and not opts.deterministic:
        torch.backends.cudnn.benchmark = with_train  # fixed crop sizes: the fastest kernels, found once

    input_size, _ = frame_sizes(opts)  # (width, height)
    codec = build_codec(opts)
    model, profile = build_profiled(opts, input_size, count_flops=context.is_main)
    check_output_shape(profile.output_shapes, opts, codec)
    say(
        f"model {opts.model}: {profile.parameters / 1e6:.2f} M parameters, {profile.gflops:.2f} GFLOPs per image"
    )
    if opts.amp == "fp16" and context.device.type == "cpu":
        say("note: --amp fp16 on the CPU is slow and gains nothing; bf16 is the CPU's mixed precision")
    model = with_sync_batchnorm(model, opts.syncBN and with_train, context, say)
    precision = Precision(opts.amp, torch.float64 if opts.usedouble else torch.float32)
    model = model.to(context.device, dtype=precision.dtype)
    # channels_last was the fastest correct variant for all seven models on a 2-core CPU (1.06x to
    # 1.57x a training step, benchmarks/training_step.py) and is what cuDNN's NHWC kernels want
    channels_last = bool(opts.channelsLast)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_set, val_set = build_data(opts, codec, input_size, with_train)
    entry = get_entry(opts.model)
    if entry.uses_training_poses and train_set is not None:
        # from the records, before any image is read; without a training set (-test) the
        # checkpoint's start pose is loaded with the weights
        model.set_start_pose(training_start_pose(train_set, codec))
    # a training batch of one gives BatchNorm a single value per channel where a feature map is 1x1
    min_batch = 2 if profile.norm_values == 1 and not opts.browse else 1
    train_loader, val_loader = make_loaders(train_set, val_set, opts, context, min_batch, threads.workers)
    return RunParts(
        context, say, model, profile, precision, channels_last, codec, make_loss(codec),
        train_set, val_set, train_loader, val_loader, threads, entry.trains_with_target, entry.stage_metrics,
    )  # fmt: skip


def training_start_pose(train_set: KeypointDataset, codec: Codec) -> np.ndarray:
    """The median training pose (K, 2) in the codec's normalised crop coordinates (IEF's y_0):
    every record's labelled joints in its unaugmented crop (``KeypointDataset.crop_joints``)."""
    from models.ief import median_pose

    joints, visible = train_set.crop_joints()
    return median_pose(codec.normalise(joints), visible)


def build_codec(opts: Options) -> Codec:
    """The codec of the model's target type at the run's sizes (targets in, decoded joints out)."""
    input_size, heatmap_size = frame_sizes(opts)
    return make_codec(
        opts.target_type, input_size, heatmap_size, opts.hmGauss, opts.coordConvention, opts.postProcess,
        split_ratio=opts.simccSplitRatio, simcc_sigma=opts.simcc_sigma, hierarchy=opts.hierarchy,
    )  # fmt: skip


def build_data(
    opts: Options, codec: Codec, input_size: tuple[int, int], with_train: bool
) -> tuple[KeypointDataset | None, KeypointDataset]:
    values = {key: getattr(opts, key) for key in AUGMENTATION_KEYS}
    augmentation = augmentation_of(values)
    switch = None
    if opts.stage2Epoch:
        later = values | opts.stage2_augmentation
        switch = AugmentationSwitch(opts.stage2Epoch, augmentation_of(later), later["halfBodyProb"])
    return build_datasets(
        opts.dataset, codec, input_size, augmentation, opts.seed,
        with_train=with_train, data_dir=opts.dataDir,
        train_annotation=opts.trainAnnotation, val_annotation=opts.valAnnotation, image_dir=opts.imageDir,
        head_boxes_mat=opts.headBoxesMat, bbox_file=opts.bboxFile, det_score_threshold=opts.detScoreThreshold,
        half_body_prob=opts.halfBodyProb, joint_spec=joint_spec_of(opts),
        synthetic_sizes=(opts.syntheticTrain, opts.syntheticVal), synthetic_image_size=opts.imageRes,
        skip_bad_samples=opts.skipBadSamples, max_bad_fraction=opts.maxBadFraction,
        allow_outside_paths=opts.allowOutsidePaths, image_cache=opts.imageCache, augmentation_switch=switch,
    )  # fmt: skip


def augmentation_of(values: dict[str, float]) -> Augmentation:
    """The Augmentation of option values keyed as ``AUGMENTATION_KEYS`` (halfBodyProb is the dataset's)."""
    return Augmentation(
        values["maxScale"], values["maxRotate"], values["rotateProb"], values["maxTranslate"],
        values["flipProb"], values["colorJitter"],
    )  # fmt: skip


def build_optimizer(
    opts: Options, model: nn.Module, device: torch.device
) -> tuple[
    torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | StepwiseLR, torch.amp.GradScaler | None
]:
    """The optimizer, its LR schedule and, for --amp fp16, the GradScaler (the same one on every
    device, so the CPU tests run the save and restore a GPU run takes). ``--noDecayNormBias`` and
    ``--layerDecay`` split the parameters into groups (recipe.parameter_groups)."""
    try:
        groups = parameter_groups(model, opts.LR, opts.noDecayNormBias, opts.layerDecay)
    except LayerDecayError as error:
        fail_option(opts, f"layerDecay: {error}; use --layerDecay 0 for {opts.model}")
    optimizer = getattr(torch.optim, opts.optimizer_type)(
        model.parameters() if groups is None else groups, lr=opts.LR, **opts.optimizer_kwargs
    )
    scaler = torch.amp.GradScaler(device.type) if opts.amp == "fp16" else None
    return optimizer, make_scheduler(optimizer, opts), scaler


def build_ema(opts: Options, model: nn.Module) -> ExpMomentumEMA | None:
    """``--ema 1``: the moving average of ``model`` (the unwrapped module) the run validates and saves."""
    return ExpMomentumEMA(model, opts.emaMomentum, opts.emaGamma) if opts.ema else None


def configure_numerics(deterministic: bool) -> None:
    """``--deterministic 1``: the same weights from the same seed on CUDA too, at a cost in speed
    (docs/gpus.md): deterministic kernels only (an op without one stops the run naming it),
    cuDNN's autotuner off, TF32 off for convolutions and matrix products. Set both ways, since
    the switches are process-wide and a caller may run several commands in one process."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    if deterministic != torch.are_deterministic_algorithms_enabled():
        # only when it changes: the call imports torch._inductor, 2 s of every process's start
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.conv.fp32_precision = "ieee" if deterministic else "tf32"  # PyTorch's default: tf32
    torch.backends.cudnn.benchmark = False  # build_run turns it on for non-deterministic CUDA training


def with_sync_batchnorm(model: nn.Module, wanted: bool, context: DistributedContext, say) -> nn.Module:
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
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_profiled(
    opts: Options, input_size: tuple[int, int], count_flops: bool = True
) -> tuple[nn.Module, ModelProfile]:
    """The model and its profile (one forward pass at ``input_size``, (width, height); FLOPs
    counted only with ``count_flops``, see models.complexity.profile_model). A builder
    refusing a value (a kernel size, a backbone name, an input too small for it) stops in one line
    that names the config keys."""
    try:
        model = build_model(opts.model, **vars(opts))
        return model, profile_model(model, input_size[::-1], count_flops)
    except (ValueError, FileNotFoundError) as error:
        # builders name their parameters (hh_kernel), the user wrote config keys (hhKernel)
        keys = {option_to_parameter(key): key for key in opts.config}
        message = re.sub(r"\b[a-z]\w*_\w+\b", lambda found: keys.get(found[0], found[0]), str(error))
        named = [keys[found] for found in re.findall(r"\b[a-z]\w*_\w+\b", str(error)) if found in keys]
        fail_option(opts, f"model {opts.model}: {message}", named[0] if named else None)


def check_output_shape(shapes: list[tuple[int, ...]], opts: Options, codec: Codec) -> None:
    """The model's last stage must match what the codec encodes, else training is meaningless."""
    expected = (1, *codec.output_shape(opts.nJoints))
    if tuple(shapes[-1]) != expected:
        fail_option(
            opts,
            f"outputRes: model {opts.model} outputs {tuple(shapes[-1])[1:]} for inputRes {opts.inputRes} "
            f"but the targets are {expected[1:]}; {codec.shape_hint}",
        )


def make_loaders(
    train_set: KeypointDataset | None,
    val_set: KeypointDataset,
    opts: Options,
    context: DistributedContext,
    min_batch: int,
    workers: int,
) -> tuple[DataLoader | None, DataLoader]:
    """Validation and training loaders with ``workers`` DataLoader workers (``--nThreads`` capped
    at the cores: utils/threads.py). A last training batch smaller than ``min_batch`` (the smallest
    batch the model can train on) is left out of every epoch; a batch size or training set that
    leaves no such batch at all is refused in one line."""
    pin = context.device.type == "cuda" and not opts.dont_pin_memory
    common = {"batch_size": opts.data_loader_size, "num_workers": workers, "pin_memory": pin}
    # bad samples go to <run>/bad_samples.txt; a dead worker's error names its sample (datasets/loading.py)
    common["report"] = BadSampleReport(opts.run_dir, [train_set, val_set], context.is_main, context.device)
    if workers > 0:
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


def data_notes(parts: RunParts, opts: Options) -> list[str]:
    """What the machine, the sampler and the schedule do to training that a user should know, one line each:
    a run shorter than its conf file's recipe (a one-epoch try of RTMPose's 420-epoch schedule)
    keeps the part it reaches."""
    loader, train_set, context = parts.train_loader, parts.train_set, parts.context
    notes = []
    if context.device.type == "cpu" or parts.threads.workers_capped:
        notes.append(parts.threads.note)
    if loader is None:
        return notes
    if opts.lrSchedule == "flatcosine" and opts.flatEpochs >= opts.nEpochs:
        notes.append(
            f"the run ends before flatEpochs {opts.flatEpochs} (nEpochs {opts.nEpochs}): the LR stays flat, "
            f"no cosine (RTMPose's recipe: flatEpochs nEpochs / 2)"
        )
    if opts.stage2Epoch > opts.nEpochs:
        notes.append(
            f"the run ends before stage2Epoch {opts.stage2Epoch} (nEpochs {opts.nEpochs}): its augmentation "
            f"never switches to stage2Augmentation"
        )
    if loader.sampler.tail:
        notes.append(
            f"dropping the last training batch of every epoch, {loader.sampler.tail} sample(s) per process "
            f"of {len(train_set)}: a batch that small gives BatchNorm in {opts.model} a single value per channel"
        )
    if context.world_size > 1:
        effective = opts.data_loader_size * opts.mini_batch_count * context.world_size
        padding = -len(train_set) % context.world_size
        repeated = (
            f"; the distributed sampler repeats {padding} of the {len(train_set)} training samples every epoch "
            f"so that each process gets {len(loader.sampler) + loader.sampler.tail}"
        )
        notes.append(
            f"{context.world_size} processes: effective batch {effective} (data_loader_size "
            f"{opts.data_loader_size} x mini_batch_count {opts.mini_batch_count} x processes)"
            + (repeated if padding else "")
        )
    return notes


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


def _quiet_worker(_: int) -> None:
    # Ctrl-C, and the SIGTERM of `timeout`, a scheduler or scancel, reach every process of the job:
    # the main process decides how to stop (it checkpoints at the step, then shuts the workers
    # down). A worker whose main process is gone exits by itself (PyTorch's watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(0)  # workers are already one process per core; OpenCV threads would oversubscribe


def make_scheduler(
    optimizer: torch.optim.Optimizer, opts: Options
) -> torch.optim.lr_scheduler.LRScheduler | StepwiseLR:
    """The LR schedule: step and multistep without warm-up are PyTorch's epoch schedulers, as
    they always were (the same LR, bit for bit); a warm-up or flatcosine sets the LR of every
    optimizer step (recipe.StepwiseLR)."""
    if opts.warmupSteps > 0 or opts.lrSchedule == "flatcosine":
        return StepwiseLR(
            optimizer, warmup_steps=opts.warmupSteps, warmup_start=opts.warmupStartFactor, gamma=opts.dropMag,
            drop_every=opts.dropLR if opts.lrSchedule == "step" else 0,
            milestones=opts.milestones if opts.lrSchedule == "multistep" else (),
            cosine=(opts.flatEpochs, opts.nEpochs, opts.minLRFactor) if opts.lrSchedule == "flatcosine" else None,
        )  # fmt: skip
    if opts.lrSchedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=opts.milestones, gamma=opts.dropMag)
    step = opts.dropLR if opts.dropLR > 0 else 10**9  # dropLR 0: never drop
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=opts.dropMag)


# the registered datasets' own joint sets; custom's comes from its spec, so ask joint_spec_of(opts)
JOINT_SPECS = {
    name: spec for name in list_datasets() if (spec := get_dataset_entry(name).joint_spec) is not None
}


def frame_sizes(opts: Options) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input (w, h), heatmap (w, h)); COCO's 256x192 crops use aspectRatio 0.75."""
    input_size = (round(opts.inputRes * opts.aspectRatio), opts.inputRes)
    heatmap_size = (round(opts.outputRes * opts.aspectRatio), opts.outputRes)
    return input_size, heatmap_size


def joint_spec_of(opts: Options) -> JointSpec:
    """The run's joint set: its dataset's, or for custom the spec ``jointSpec`` holds (the JSON a
    run records, so a checkpoint's options are enough)."""
    return joint_spec_for(opts.dataset, getattr(opts, "jointSpec", None))


@dataclass
class TrainedModel:
    model: nn.Module  # eval mode, on ``device``, weights loaded
    codec: Codec
    input_size: tuple[int, int]  # (width, height)
    joint_spec: JointSpec
    device: torch.device


def load_trained(opts: Options, device: torch.device | str = "cpu") -> TrainedModel:
    """The network ``--loadModel`` holds, in eval mode on ``device``, with its codec and joints."""
    model = build_model(opts.model, **vars(opts))
    load_weights(model, opts)
    device = torch.device(device)
    return TrainedModel(
        model.to(device).eval(), build_codec(opts), frame_sizes(opts)[0], joint_spec_of(opts), device
    )
