"""Process-group helpers for torchrun / DistributedDataParallel; a plain run is world size 1.

Launch several processes with ``torchrun --nproc_per_node N main.py ...``; torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK, which is all this module reads. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def choose_device(gpuid: int, local_rank: int | None = None) -> torch.device:
    """CUDA when present (``gpuid``, or the local rank under torchrun), else the CPU; a GPU
    index that does not exist falls back to GPU 0 with a notice instead of failing."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = local_rank if local_rank is not None else gpuid
    if index >= torch.cuda.device_count():
        print(
            f"note: gpuid {index} not present ({torch.cuda.device_count()} GPUs); using GPU 0",
            file=sys.stderr,
        )
        index = 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def setup_distributed(gpuid: int) -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(0, 1, 0, choose_device(gpuid))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(gpuid, local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_arrays(arrays: dict[str, np.ndarray], context: DistributedContext) -> dict[str, np.ndarray]:
    """Concatenate each rank's arrays along axis 0 (rank order); identity for one process."""
    if not context.is_distributed:
        return arrays
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, arrays)
    return {key: np.concatenate([part[key] for part in gathered], axis=0) for key in arrays}


def reduce_mean(value: float, context: DistributedContext) -> float:
    if not context.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def all_ranks(flag: bool, context: DistributedContext) -> bool:
    """True only if ``flag`` is true on every rank, so all ranks take the same branch (a rank
    that stopped alone would leave the others waiting in their next collective forever)."""
    if not context.is_distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()
