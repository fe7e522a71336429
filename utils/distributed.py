"""Process-group helpers for torchrun / DistributedDataParallel; a plain run is world size 1.

Launch several processes with ``torchrun --nproc_per_node N main.py ...``; torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE, which is all this module reads. A process started by
torchrun always joins a process group, even alone (``--nproc_per_node 1`` runs the same NCCL or
gloo code as eight). Only rank 0 writes files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class DeviceSetupError(RuntimeError):
    """A process that cannot get the GPU it should use; the message names LOCAL_RANK and the GPUs."""


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # processes per node as torchrun started them (0: not started by torchrun)
    local_world_size: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """A process group is in use (started by torchrun, however many processes)."""
        return self.local_world_size > 0

    @property
    def launch_command(self) -> str:
        """How this run was started, for a printed resume command."""
        if not self.is_distributed:
            return "python main.py"
        nodes = self.world_size // max(self.local_world_size, 1)
        if nodes > 1:
            return f"torchrun --nnodes {nodes} --nproc_per_node {self.local_world_size} <rendezvous options> main.py"
        return f"torchrun --nproc_per_node {self.local_world_size} main.py"


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


def choose_device(gpuid: int, local_rank: int | None = None, local_world_size: int = 0) -> torch.device:
    """CUDA when present (``gpuid``, or the local rank under torchrun), else the CPU.

    A single process asking for a GPU that does not exist falls back to GPU 0 with a notice. Under
    torchrun a rank without a GPU of its own is a launch mistake (several ranks would share one
    GPU and NCCL would fail later with an unrelated message), so it stops in one line."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank is None:
        index = gpuid
        if index >= count:
            print(f"note: gpuid {index} not present ({count} GPUs); using GPU 0", file=sys.stderr)
            index = 0
    else:
        if local_rank >= count or local_world_size > count:
            raise DeviceSetupError(
                f"LOCAL_RANK {local_rank}: {local_world_size} processes on this node and {count} GPU(s) visible "
                f"(CUDA_VISIBLE_DEVICES={visible_devices()}); every process needs a GPU of its own: start at "
                f"most {count} (torchrun --nproc_per_node {count}), make more GPUs visible, or hide them all "
                f"(CUDA_VISIBLE_DEVICES=) to run every process on the CPU"
            )
        index = local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def setup_distributed(gpuid: int) -> DistributedContext:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # not started by torchrun
        return DistributedContext(0, 1, 0, choose_device(gpuid))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = choose_device(gpuid, local_rank, local_world_size)
    if not dist.is_initialized():
        if device.type == "cuda":
            # device_id binds the NCCL communicator to this rank's GPU at once (no guessing, no
            # warning at every barrier)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistributedContext(rank, world_size, local_rank, device, local_world_size)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank; ``[value]`` for one process."""
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def gather_arrays(arrays: dict[str, np.ndarray], context: DistributedContext) -> dict[str, np.ndarray]:
    """Concatenate each rank's arrays along axis 0 (rank order); identity for one process. A rank
    with nothing to contribute passes ``{}`` (it still takes part in the collective)."""
    if not context.is_distributed:
        return arrays
    parts = [part for part in gather_objects(arrays, context) if part]
    keys = parts[0].keys() if parts else ()
    return {key: np.concatenate([part[key] for part in parts], axis=0) for key in keys}


def reduce_sums(values: Iterable[float], context: DistributedContext) -> list[float]:
    """Each value summed over ranks, in one collective (float64)."""
    values = [float(v) for v in values]
    if not context.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_ranks(flag: bool, context: DistributedContext) -> bool:
    """True only if ``flag`` is true on every rank, so all ranks take the same branch (a rank
    that stopped alone would leave the others waiting in their next collective forever)."""
    if not context.is_distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def broadcast_buffers(module: torch.nn.Module, context: DistributedContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DistributedDataParallel
    broadcasts them at the start of each training forward, so after the last step every rank's
    statistics have moved on its own batch; validation and checkpoints use rank 0's."""
    if not context.is_distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():  # one collective per dtype, not per tensor
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for buffer in buffers:
            buffer.data.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()
