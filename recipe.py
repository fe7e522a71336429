"""The modern training recipe's parts (RTMPose, ViTPose), each given the few values it needs
(build.py reads the options):

- :func:`parameter_groups`: no weight decay on normalisation layers, biases and position
  embeddings / tokens; layer-wise LR decay for a model that numbers its layers;
- :class:`StepwiseLR`: the LR of every optimizer step, a closed form of (steps taken, epoch, step
  of the epoch): linear warm-up times the step / multistep drops or flat-then-cosine;
- :class:`ExpMomentumEMA`: an exponential moving average of the weights with MMEngine's
  ExpMomentumEMA momentum schedule, updated after every optimizer step.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# every parameter of these takes no weight decay (MMEngine's norm_decay_mult: BatchNorm, SyncBN,
# InstanceNorm, GroupNorm, LayerNorm; RMSNorm likewise)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
# the transformer parameters both recipes exempt from decay, by their usual names
TOKEN_NAMES = ("pos_embed", "absolute_pos_embed", "cls_token", "mask_token", "dist_token",
               "relative_position_bias_table")  # fmt: skip


class LayerDecayError(ValueError):
    """The model cannot be given layer-wise LR decay (no layer numbering, or a bad number)."""


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that take no weight decay: every parameter of a normalisation
    layer, every bias, position embeddings and tokens (``TOKEN_NAMES``), and whatever the model's
    own ``no_weight_decay()`` names (timm's convention), if it has one."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or name == "bias" or name in TOKEN_NAMES:
                names.add(prefix + name)
    own = getattr(model, "no_weight_decay", None)
    if callable(own):
        names |= set(own())
    return names


def parameter_groups(
    model: nn.Module, lr: float, no_decay: bool, layer_decay: float
) -> list[dict[str, Any]] | None:
    """The optimizer's parameter groups, or None for one group of every parameter (neither
    option on: the optimizer is built exactly as without them).

    ``no_decay``: the parameters :func:`no_decay_names` lists get ``weight_decay`` 0 (the others
    keep the optimizer's). ``layer_decay`` (0 or 1: off): the model's ``layer_index(name)`` puts
    each parameter in a layer 0 .. ``num_lr_layers`` - 1 and layer i learns at
    ``lr * layer_decay ** (num_lr_layers - 1 - i)``, as ViTPose's LayerDecayOptimizerConstructor.
    Groups run from the top layer down, so group 0 has the configured LR (what the logs show);
    each carries its ``lr_scale`` and a ``name``."""
    decaying = layer_decay not in (0, 1)
    if not (no_decay or decaying):
        return None
    layers = _layer_numbering(model) if decaying else None
    exempt = no_decay_names(model) if no_decay else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        layer = 0
        if layers is not None:
            layer = _layer_of(model, name, layers)
        key = (layer, name in exempt)
        if key not in groups:
            scale = layer_decay ** (layers - 1 - layer) if layers is not None else 1.0
            label = f"layer_{layer}_" if layers is not None else ""
            groups[key] = {"params": [], "lr": scale * lr, "lr_scale": scale}
            groups[key]["name"] = label + ("no_decay" if key[1] else "decay")
            if key[1]:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(parameter)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], k[1]))]


def _layer_numbering(model: nn.Module) -> int:
    count = getattr(model, "num_lr_layers", None)
    if not callable(getattr(model, "layer_index", None)) or count is None:
        raise LayerDecayError(
            f"model {type(model).__name__} provides no layer_index(name) and num_lr_layers, which "
            f"layer-wise LR decay needs"
        )
    return int(count)


def _layer_of(model: nn.Module, name: str, layers: int) -> int:
    layer = int(model.layer_index(name))
    if not 0 <= layer < layers:
        raise LayerDecayError(
            f"model {type(model).__name__} puts {name} in layer {layer}, outside 0..{layers - 1} "
            f"(num_lr_layers {layers})"
        )
    return layer


class StepwiseLR:
    """The LR of every optimizer step: each group's base LR (its ``initial_lr``, the configured
    LR times its layer-decay scale) times

    - the linear warm-up of MMEngine's ``LinearLR(start_factor=warmup_start, by_epoch=False,
      begin=0, end=warmup_steps)``, as RTMPose's and MMPose's ViTPose configs schedule it: step t
      (0-based) has ``warmup_start + (1 - warmup_start) * t / (warmup_steps - 1)``, so the full
      rate is reached at step ``warmup_steps - 1`` (its ``total_iters = end - begin - 1``). mmcv's
      warm-up (the ViTPose repository's) reaches it one step later, at ``warmup_steps``;
    - the drops: ``gamma`` to the number of ``milestones`` (epochs) passed, or of whole
      ``drop_every`` epochs (step and multistep, as their epoch schedulers);
    - with ``cosine = (flat_epochs, epochs, min_factor)``: 1 for the first ``flat_epochs``
      epochs, then a cosine per optimizer step down to ``min_factor`` at the end of ``epochs``
      (MMEngine's CosineAnnealingLR from flat_epochs to epochs with eta_min = min_factor x LR,
      converted to iterations).

    Its state is the optimizer steps taken (the warm-up's clock) and the epochs done; the drops
    and the cosine are placed by epoch and step of the epoch, so a resume on another number of
    processes (another number of steps per epoch) keeps them on their epochs. ``scale``
    multiplies everything (``--dropPreLoaded``)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_steps: int = 0,
        warmup_start: float = 1.0,
        gamma: float = 1.0,
        drop_every: int = 0,
        milestones: Sequence[int] = (),
        cosine: tuple[int, int, float] | None = None,
    ) -> None:
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.warmup_steps, self.warmup_start = warmup_steps, warmup_start
        self.gamma, self.drop_every, self.milestones = gamma, drop_every, sorted(milestones)
        self.cosine = cosine
        self.taken: int | None = 0  # None: a checkpoint of an epoch schedule, counted at the next step
        self.last_epoch = 0  # epochs done
        self.scale = 1.0

    def factor(self, taken: int, epoch: int, index: int, steps_in_epoch: int) -> float:
        """The LR multiplier of optimizer step ``index`` (0-based) of ``steps_in_epoch`` in
        ``epoch`` (1-based), after ``taken`` steps of the run."""
        value = self.scale
        ramp = self.warmup_steps - 1  # steps from the first rate to the full one
        if taken < ramp:
            value *= self.warmup_start + (1 - self.warmup_start) * taken / ramp
        elif ramp == 0 and taken == 0:  # a one-step warm-up: that step at the first rate
            value *= self.warmup_start
        done = epoch - 1  # whole epochs before this step
        drops = done // self.drop_every if self.drop_every else bisect.bisect_right(self.milestones, done)
        if drops:
            value *= self.gamma**drops
        if self.cosine is not None:
            flat, epochs, floor = self.cosine
            position = done * steps_in_epoch + index - flat * steps_in_epoch  # steps into the cosine
            if position >= 0:
                progress = min(position / ((epochs - flat) * steps_in_epoch), 1.0)
                value *= floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2
        return value

    def before_step(self, epoch: int, index: int, steps_in_epoch: int) -> None:
        """Set the LR of the optimizer step about to be taken (``index`` of ``steps_in_epoch``
        in ``epoch``) and count it."""
        if self.taken is None:
            self.taken = (epoch - 1) * steps_in_epoch + index
        factor = self.factor(self.taken, epoch, index, steps_in_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self.taken += 1

    def step(self) -> None:
        """The end of an epoch (the loop calls every schedule so)."""
        self.last_epoch += 1

    def scale_lr(self, factor: float) -> None:
        self.scale *= factor

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer_steps": self.taken, "last_epoch": self.last_epoch, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """This schedule's own state, or an epoch scheduler's (StepLR, MultiStepLR: its epochs
        done; the steps taken are then counted from the epoch at the next step)."""
        self.taken = state.get("optimizer_steps")
        self.last_epoch = int(state.get("last_epoch", 0))
        self.scale = float(state.get("scale", 1.0))


def continue_epoch_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, stored: dict[str, Any]) -> None:
    """Resume an epoch scheduler (StepLR, MultiStepLR) from a :class:`StepwiseLR` checkpoint: its
    epochs done, and each group's LR as the scheduler's closed form puts it there (the stored LR
    is a step's, warm-up or cosine included)."""
    scheduler.last_epoch = int(stored.get("last_epoch", 0))
    scheduler._step_count = scheduler.last_epoch + 1
    rates = [lr * float(stored.get("scale", 1.0)) for lr in scheduler._get_closed_form_lr()]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates


class ExpMomentumEMA:
    """An exponential moving average of ``model``'s weights, as MMEngine's ExpMomentumEMA with
    ``update_buffers=True`` (RTMPose's EMAHook): the first update copies the model; update n
    (n >= 1) sets each floating-point parameter and buffer (BatchNorm's running mean and
    variance are averaged too) to ``(1 - w) * average + w * current`` with
    ``w = (1 - momentum) * exp(-(1 + n) / gamma) + momentum``, so early updates follow the model
    closely and late ones by ``momentum``. Integer buffers (BatchNorm's batch count) are copied
    at every update (MMEngine keeps the first copy; no layer with a momentum reads it).

    ``module`` is the averaged copy, in eval mode, without gradients; ``steps`` the updates
    made. ``model`` is the unwrapped module, never a DistributedDataParallel wrapper: its
    parameters are the same on every rank after each step, so the average is too, with no
    collective of its own."""

    def __init__(self, model: nn.Module, momentum: float = 0.0002, gamma: float = 2000.0) -> None:
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.momentum, self.gamma = momentum, gamma
        self.steps = 0

    def weight(self, steps: int) -> float:
        """The weight of the current model in update ``steps`` (>= 1; update 0 copies)."""
        return (1 - self.momentum) * math.exp(-float(1 + steps) / self.gamma) + self.momentum

    @torch.no_grad()
    def update(self) -> None:
        """One update, after an optimizer step."""
        # by name, each tensor once (a state_dict lists a shared weight under each of its names)
        averaged, current = _tensors(self.module), _tensors(self.source)
        floating = [key for key, value in averaged.items() if value.dtype.is_floating_point]
        if self.steps == 0:
            for key, value in averaged.items():
                value.copy_(current[key])
        else:
            weight = self.weight(self.steps)
            targets = [averaged[key] for key in floating]
            torch._foreach_mul_(targets, 1 - weight)
            torch._foreach_add_(targets, [current[key] for key in floating], alpha=weight)
            for key, value in averaged.items():
                if not value.dtype.is_floating_point:
                    value.copy_(current[key])
        self.steps += 1

    def reset(self) -> None:
        """Start again from the model's weights (a run that loads weights without an average)."""
        self.module.load_state_dict(self.source.state_dict())
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.steps = int(state["steps"])


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())
