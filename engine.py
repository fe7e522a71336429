"""One train/validate loop for every model: nothing here depends on a model's name, only on its
outputs (a list of stages) and the codec chosen from its target type."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets.base import normalise_batch
from datasets.codecs import Codec
from utils.distributed import DistributedContext, all_ranks, gather_arrays, reduce_sums
from utils.logging import EpochProgress
from utils.transforms import apply_affine, invert_affine


class NonFiniteLossError(RuntimeError):
    """Training diverged; raised before the optimizer applies the bad step."""


@dataclass(frozen=True)
class Precision:
    """Numerics of the loop: ``amp`` is "none", "bf16" or "fp16"; ``dtype`` the model's dtype."""

    amp: str = "none"
    dtype: torch.dtype = torch.float32

    def autocast(self, device: torch.device):
        if self.amp == "none":
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)


def prepare_images(
    images: torch.Tensor,
    gains: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 crops (N, 3, h, w) and colour gains (N, 3) -> the network input on ``device``, by
    datasets.base.normalise_batch (as -predict's crops): scaled to [0, 1], times the gain, minus
    the ImageNet mean, over its std. Done here, not in the workers, so a quarter of the bytes
    cross worker shared memory and the host-to-device copy, and the arithmetic runs on the device
    (its constants made once per device). A float batch is taken as already normalised."""
    images = images.to(device, non_blocking=device.type == "cuda")
    normalised = images if images.dtype != torch.uint8 else normalise_batch(images, gains)
    pixels = normalised.to(dtype)
    return pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels


def _to_device(
    batch: dict[str, Any], device: torch.device, dtype: torch.dtype, channels_last: bool = False
) -> tuple[torch.Tensor, ...]:
    non_blocking = device.type == "cuda"
    image = prepare_images(batch["image"], batch["meta"].get("color_gain"), device, dtype, channels_last)
    target = batch["target"].to(device, dtype=dtype, non_blocking=non_blocking)
    weight = batch["target_weight"].to(device, dtype=dtype, non_blocking=non_blocking)
    return image, target, weight


def _batch_pck(
    codec: Codec, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Running training metric, as a 0-d tensor on the output's device (read with the loss, so
    the step costs no extra host synchronisation): PCK@0.5 in percent of the last stage on this
    batch, against the joints decoded from the batch's own targets, with normaliser heatmap size
    / 10 (input height / 10 in input pixels: the heatmap spans the whole crop). NaN when no joint
    of the batch is supervised. metrics.pck.pck_summary is the same number in numpy; the joints
    come from the codec's own decoding (the quarter rule for heatmaps, see
    ``HeatmapCodec.decode_tensor``), where the outputs are. The codec cuts the target and weight
    to the joints the last stage predicts (``joint_target``: a compositional target also holds its
    composite parts' maps)."""
    with torch.no_grad():
        target, weight = codec.joint_target(target, weight)
        pred, _ = codec.decode_tensor(output.detach().float())
        truth, _ = codec.decode_tensor(target.float())
        labelled = weight.reshape(weight.shape[0], -1) > 0  # (N, K)
        close = (pred - truth).norm(dim=-1) <= 0.5 * codec.input_size[1] / 10.0
        return 100.0 * (close & labelled).sum().double() / labelled.sum()


@dataclass
class StepRequests:
    """What the caller may ask of training at each optimizer step, read on this rank and agreed
    over all ranks in the step's one collective: ``stop()`` (a signal: stop after this step) and
    ``save_due()`` (write a mid-epoch checkpoint now, through ``save(state)``, on every rank)."""

    stop: Callable[[], bool] = lambda: False
    save_due: Callable[[], bool] = lambda: False
    save: Callable[[EpochState], None] | None = None


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    codec: Codec,
    context: DistributedContext,
    epoch: int,
    *,
    accumulation: int = 1,
    precision: Precision = Precision(),
    scaler: torch.amp.GradScaler | None = None,
    progress_mode: str = "auto",
    on_step: Callable[[int, float, float, float], None] | None = None,
    resume_from: EpochState | None = None,
    requests: StepRequests | None = None,
    channels_last: bool = False,
    set_lr: Callable[[int, int, int], None] | None = None,
    after_step: Callable[[], None] | None = None,
    with_target: bool = False,
    grad_clip: float = 0.0,
) -> EpochState:
    """Train one epoch; returns its state, whose ``metrics()`` are the mean loss and running PCK
    over the epoch (averaged over ranks).

    ``on_step(step, loss, pck, lr)``, when given, is called on this rank after every optimizer
    step: the batch index in the epoch (1-based), the mean loss of the batches that step applied
    (more than one with ``accumulation``), the epoch's running PCK so far and the step's LR.
    ``channels_last``: feed the model channels_last inputs (give it channels_last weights too).
    ``set_lr(epoch, index, steps_in_epoch)``, when given, sets the LR just before each optimizer
    step: its index in the epoch (0-based) of ``steps_in_epoch`` (a per-step schedule).
    ``after_step()`` is called after each (a moving average of the weights). ``grad_clip`` > 0
    scales the gradients down to that 2-norm over all parameters before each step (ViTPose's 1.0).
    ``with_target``: call ``model(image, target)`` (the registry's ``trains_with_target``: a model
    that needs the ground truth inside its training forward, IEF's fixed path); under
    DistributedDataParallel the target passes through its forward as any positional argument.

    ``resume_from``: the state of an epoch interrupted after ``resume_from.step`` batches, whose
    loader already skips those batches. ``requests`` are asked before every optimizer step's
    collective; when any rank asks to stop, every rank stops after that same step and the state
    returned is not ``complete``. Cost per batch: one host synchronisation (the loss, the running PCK and the agreed flags in
    one read); per optimizer step, one collective of three numbers, and under
    DistributedDataParallel the gradients are all-reduced only for the batch that steps
    (``no_sync`` on the others).
    """
    model.train()
    device = context.device
    requests = requests or StepRequests()
    state = resume_from or EpochState(epoch)
    total = state.step + len(loader)
    mode = progress_mode if context.is_main else "none"
    progress = EpochProgress(f"train {epoch}", total, mode, done=state.step)
    window_loss, window = 0.0, 0  # the batches of the optimizer step being accumulated
    window_finite = torch.ones((), dtype=torch.bool, device=device)  # every loss of the window
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(loader, start=state.step + 1):
        stepping = step % accumulation == 0 or step == total
        image, target, weight = _to_device(batch, device, precision.dtype, channels_last)
        # the gradients of a micro-batch that does not step stay local (DDP would all-reduce them)
        accumulate_only = not stepping and hasattr(model, "no_sync")
        with model.no_sync() if accumulate_only else nullcontext():
            with precision.autocast(device):
                outputs = model(image, target) if with_target else model(image)
                loss = loss_fn(outputs, target, weight)
            pck = _batch_pck(codec, outputs[-1], target, weight)
            window_finite = window_finite & torch.isfinite(loss.detach())
            asked = (requests.stop(), requests.save_due()) if stepping else (False, False)
            value, batch_pck, *agreed = _read_step(loss, pck, window_finite, asked, stepping, context)
            if stepping and agreed[0]:
                raise NonFiniteLossError(f"loss became non-finite at epoch {epoch}, step {step}; stopping")
            scaled = loss / accumulation
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if stepping:
            if set_lr is not None:
                set_lr(epoch, (step - 1) // accumulation, -(-total // accumulation))
            _apply_step(optimizer, scaler, grad_clip)
            if after_step is not None:
                after_step()
            window_finite = torch.ones((), dtype=torch.bool, device=device)
        state.loss_sum += value
        state.pck_sum += batch_pck
        state.step = step
        window_loss, window = window_loss + value, window + 1
        if not requests.stop():  # once a stop is asked, the line at the stop says where it is
            progress.update(loss=state.loss_sum / step, PCK=state.pck_sum / step)
        if stepping:
            if on_step is not None:
                on_step(step, window_loss / window, state.pck_sum / step, optimizer.param_groups[0]["lr"])
            window_loss, window = 0.0, 0
            stop_asked, save_due = agreed[1] > 0, agreed[2] > 0
            if stop_asked and step < total:
                progress.finish()
                return state  # every rank stops after the same optimizer step
            if save_due and requests.save is not None:
                requests.save(state)
    progress.finish()
    state.complete = True
    return state


def _apply_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, grad_clip: float = 0.0
) -> None:
    if grad_clip > 0:  # MMEngine's OptimWrapper(clip_grad=dict(max_norm=...)): after unscaling, the 2-norm
        if scaler is not None:
            scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _read_step(
    loss: torch.Tensor,
    pck: torch.Tensor,
    window_finite: torch.Tensor,
    asked: tuple[bool, bool],
    stepping: bool,
    context: DistributedContext,
) -> list[float]:
    """[loss, PCK, non-finite, stop asked, save due] of a batch, in its one host synchronisation
    (the optimizer must not apply a non-finite loss, and reading the loss, the PCK and the flags
    with it costs nothing more). At an optimizer step under torchrun the three flags are agreed
    over ranks in one all-reduce (MAX), the host's two crossing to the device in one copy."""
    flags = (~window_finite).double().reshape(1)
    if stepping and context.is_distributed:
        host = torch.tensor([float(flag) for flag in asked], dtype=torch.float64)
        flags = torch.cat([flags, host.to(context.device, non_blocking=True)])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    loss_value, pck_value, *agreed = torch.cat(
        [loss.detach().double().reshape(1), pck.double().reshape(1), flags]
    ).tolist()
    if len(agreed) == 1:  # not agreed over ranks: this rank's own requests
        agreed += [float(flag) for flag in asked]
    return [loss_value, pck_value, *agreed]


@dataclass
class EpochState:
    """How far an epoch has got: batches done and the running sums of loss and PCK over them.
    Saved in a mid-epoch checkpoint, so a resumed epoch reports what an uninterrupted one would."""

    epoch: int
    step: int = 0
    loss_sum: float = 0.0
    pck_sum: float = 0.0
    complete: bool = False

    def metrics(self, context: DistributedContext) -> dict[str, float]:
        """Mean loss and PCK over every batch of every rank (one collective)."""
        loss_sum, pck_sum, batches = reduce_sums([self.loss_sum, self.pck_sum, self.step], context)
        batches = max(batches, 1)
        return {"loss": loss_sum / batches, "PCK": pck_sum / batches}


def flip_averaged(
    model: nn.Module, image: torch.Tensor, last: torch.Tensor, flip_permutation: np.ndarray, codec: Codec
) -> torch.Tensor:
    """The flip test: ``last``, the model's final output for ``image`` (N, 3, h, w), averaged with
    its final output for the mirrored image (:func:`average_with_mirrored`)."""
    mirrored = model(image.flip(-1))[-1].float()
    return average_with_mirrored(last, mirrored, flip_permutation, codec)


def _scored_stages(
    model: nn.Module,
    image: torch.Tensor,
    outputs: list[torch.Tensor],
    flip_permutation: np.ndarray | None,
    codec: Codec,
    all_stages: bool,
) -> list[torch.Tensor]:
    """The stage outputs validation decodes, float32: the last, or with ``all_stages`` every one,
    each averaged with the mirrored image's same stage when ``flip_permutation`` is given (one
    mirrored forward pass either way)."""
    if not all_stages:
        last = outputs[-1].float()
        if flip_permutation is not None:
            last = flip_averaged(model, image, last, flip_permutation, codec)
        return [last]
    if flip_permutation is None:
        return [output.float() for output in outputs]
    mirrored = model(image.flip(-1))
    return [
        average_with_mirrored(output.float(), other.float(), flip_permutation, codec)
        for output, other in zip(outputs, mirrored, strict=True)
    ]


def _stage_values(codec: Codec, stages: list[torch.Tensor], inverse: np.ndarray) -> dict[str, np.ndarray]:
    """Every stage's joints in original-image px, ``stage_preds`` (N, S, K, 2), and scores,
    ``stage_scores`` (N, S, K); ``inverse`` (N, 2, 3) maps crop px to the image."""
    decoded = [codec.decode(stage.cpu().numpy()) for stage in stages]
    return {
        "stage_preds": np.stack([apply_affine(joints, inverse) for joints, _ in decoded], axis=1),
        "stage_scores": np.stack([scores for _, scores in decoded], axis=1),
    }


def average_with_mirrored(
    output: torch.Tensor, mirrored: torch.Tensor, flip_permutation: np.ndarray, codec: Codec
) -> torch.Tensor:
    """The flip test's output: ``output`` for an image, averaged with ``mirrored``, the output for
    the mirrored image mapped back by the codec (``codec.mirror_back``: the left/right joints
    swapped and the mirror undone as the codec's convention says); however either was computed
    (validation's model, -predict's PyTorch or ONNX Runtime)."""
    return (output + codec.mirror_back(mirrored, flip_permutation)) / 2


@torch.no_grad()
def predict_all(
    model: nn.Module,
    loader: DataLoader,
    codec: Codec,
    context: DistributedContext,
    *,
    loss_fn: nn.Module | None = None,
    precision: Precision = Precision(),
    progress_mode: str = "auto",
    title: str = "val",
    flip_permutation: np.ndarray | None = None,
    keep: int = 0,
    channels_last: bool = False,
    should_stop: Callable[[], bool] | None = None,
    all_stages: bool = False,
) -> dict[str, np.ndarray] | None:
    """Run the model over ``loader`` and return, gathered over all ranks, one entry per sample
    index in index order: ``preds`` (N, K, 2) in original-image pixels, ``scores`` (N, K), the ground truth from
    each sample's meta, and ``loss`` (N,) per sample (its batch's mean).

    With ``keep``, also this rank's first ``keep`` crops as the loader gave them (``crop_images``,
    (n, 3, h, w), the batches' own ``image`` dtype), their predictions and ground truth in crop
    pixels (``crop_preds``, ``crop_truth``, (n, K, 2), NaN where unlabelled), so a picture of them
    needs no second forward pass.

    With ``flip_permutation`` (the dataset's left/right swap), each prediction is averaged with
    the prediction for the mirrored image, mirrored back (flip test).

    Give ``model`` unwrapped, never its DistributedDataParallel wrapper: a wrapper's forward is a
    collective (it broadcasts buffers), so a rank with fewer batches, or none, would leave the
    others waiting forever; here the only collectives come after the loop, on every rank.

    ``should_stop`` is asked before every batch; when it is true on any rank, every rank returns
    None (a stopped validation has no metrics).

    ``all_stages`` (a model whose stages are predictions of the same kind, the registry's
    ``stage_metrics``): also every stage's predictions, ``stage_preds`` (N, S, K, 2) in
    original-image pixels and ``stage_scores`` (N, S, K), each stage flip-averaged as the last."""
    model.eval()
    device = context.device
    progress = EpochProgress(title, len(loader), progress_mode if context.is_main else "none")
    parts: dict[str, list[np.ndarray]] = {}
    kept: dict[str, list[np.ndarray]] = {"crop_images": [], "crop_preds": [], "crop_truth": []}
    stopped = False
    for batch in loader:
        if should_stop is not None and should_stop():
            stopped = True
            break
        image, target, weight = _to_device(batch, device, precision.dtype, channels_last)
        with precision.autocast(device):
            outputs = model(image)
            scored = _scored_stages(model, image, outputs, flip_permutation, codec, all_stages)
        joints, scores = codec.decode(scored[-1].cpu().numpy())  # (N, K, 2) input px
        wanted = keep - sum(len(crops) for crops in kept["crop_images"])
        if wanted > 0:
            kept["crop_images"].append(batch["image"][:wanted].clone().numpy())  # (n, 3, h, w)
            kept["crop_preds"].append(joints[:wanted])
            shown = {
                key: batch["meta"][key][:wanted].numpy() for key in ("joints", "visible", "inverse_affine")
            }
            truth = apply_affine(shown["joints"], invert_affine(shown["inverse_affine"]))  # crop px
            kept["crop_truth"].append(np.where(shown["visible"][..., None] > 0, truth, np.nan))
        inverse = batch["meta"]["inverse_affine"].numpy().astype(np.float64)  # (N, 2, 3)
        meta = batch["meta"]
        batch_loss = loss_fn(outputs, target, weight).item() if loss_fn is not None else math.nan
        values = {
            "index": meta["index"].numpy(),
            "preds": apply_affine(joints, inverse),
            "scores": scores,
            "joints": meta["joints"].numpy(),
            "visible": meta["visible"].numpy(),
            "head_size": meta["head_size"].numpy(),
            "scale": meta["scale"].numpy(),
            "image_id": meta["image_id"].numpy(),
            "box_score": meta["box_score"].numpy(),
            # each sample carries its batch's mean loss, so the mean over samples is the dataset loss
            "loss": np.full(len(image), batch_loss),
        }
        if all_stages:
            values |= _stage_values(codec, scored, inverse)
        for key, value in values.items():
            parts.setdefault(key, []).append(np.asarray(value))
        if should_stop is None or not should_stop():  # as in training: no progress after a stop
            progress.update()
    progress.finish()
    if should_stop is not None and not all_ranks(not stopped, context):
        return None
    local = {key: np.concatenate(value, axis=0) for key, value in parts.items()}  # {} without batches
    gathered = gather_arrays(local, context)
    # ranks see disjoint index sets; sorting restores dataset order whatever the world size. A
    # sample whose image was bad came back as the next good one (--skipBadSamples 1): that one
    # is scored once, and the bad one not at all (the datasets leave its ground truth out)
    _, order = np.unique(gathered.get("index", np.zeros(0, dtype=np.int64)), return_index=True)
    results = {key: value[order] for key, value in gathered.items()}
    if keep and kept["crop_images"]:
        results.update({key: np.concatenate(value, axis=0) for key, value in kept.items()})
    return results
