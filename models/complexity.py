"""Parameter and FLOP counts, printed at start-up and used by the README's model table."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelProfile:
    parameters: int
    gflops: float  # per image, one forward pass
    output_shapes: list[tuple[int, ...]]  # one per stage, for a batch of one
    # the fewest values per channel that a BatchNorm layer normalises for one image (its smallest
    # input's N*H*W for a batch of one); training needs more than one per channel over the batch,
    # so 1 means a batch of one sample fails. None: the model has no BatchNorm
    norm_values: int | None = None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def profile_model(model: nn.Module, input_size: tuple[int, int], count_flops: bool = True) -> ModelProfile:
    """Parameters, GFLOPs and stage output shapes of one forward pass on a (1, 3, height, width)
    input. A multiply-add counts as two FLOPs (torch's FlopCounterMode convention; papers quoting
    'GFLOPs' often mean multiply-adds, i.e. half of this). ``count_flops=False`` leaves ``gflops``
    NaN: counting imports torch._dynamo, about 2 s of a process's start, which a process that does
    not print the count (a torchrun worker other than rank 0) need not pay."""
    height, width = input_size
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    norm_values: list[int] = []

    def count_values(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        norm_values.append(inputs[0].numel() // max(inputs[0].shape[1], 1))  # N*H*W for N = 1 image

    hooks = [
        module.register_forward_pre_hook(count_values)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        counter = FlopCounterMode(display=False) if count_flops else None
        with counter if counter is not None else contextlib.nullcontext():
            outputs = model(torch.zeros(1, 3, height, width, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return ModelProfile(
        count_parameters(model),
        counter.get_total_flops() / 1e9 if counter is not None else math.nan,
        [tuple(o.shape) for o in outputs],
        min(norm_values) if norm_values else None,
    )


def gflops_per_image(model: nn.Module, input_size: tuple[int, int]) -> float:
    """GFLOPs of one forward pass on a (1, 3, height, width) input (see ``profile_model``)."""
    return profile_model(model, input_size).gflops
