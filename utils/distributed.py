"""Process-group helpers for torchrun, SLURM and DistributedDataParallel; a plain run is world
size 1.

Launch several processes with ``torchrun --nproc_per_node N main.py ...`` (torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE) or as the tasks of ``srun -n N python main.py ...``
(SLURM sets SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID and the node list; see
:func:`slurm_launch`). A process started by either always joins a process group, even alone
(``--nproc_per_node 1`` runs the same NCCL or gloo code as eight). Joining waits at most
``--distTimeout`` seconds, saying on stderr what it waits for; a launch that sets RANK by hand
without MASTER_ADDR is refused in one line. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class DeviceSetupError(RuntimeError):
    """A process that cannot get the GPU it should use, or a launch that cannot form its process
    group; the message names the variable or the address at fault."""


class PeerLostError(RuntimeError):
    """Another process of the run died while this one waited for it in a collective."""


# a SLURM job's rendezvous port, when MASTER_PORT is not set: this base plus the job id modulo
# 10000, so two jobs sharing a node do not collide (docs/gpus.md)
SLURM_PORT_BASE = 20000
# how long joining may take before the waiting process says what it waits for
JOIN_NOTICE_S = 10.0


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # processes per node as the launcher started them (0: not started by torchrun or srun)
    local_world_size: int = 0
    launcher: str = ""  # "torchrun" or "srun"; "" for one plain process

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
        if self.launcher == "srun":
            return f"srun -n {self.world_size} python main.py"
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


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed node list as host names: ``node[01-03,07],gpu5`` ->
    node01, node02, node03, node07, gpu5 (what ``scontrol show hostnames`` prints)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            last = last or first
            hosts += [f"{prefix}{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)]
    return hosts


def _tasks_on_node(tasks_per_node: str, node: int) -> int:
    """SLURM_STEP_TASKS_PER_NODE (``2(x3),1``: two tasks on each of three nodes, then one) at ``node``."""
    counts = []
    for count, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", tasks_per_node):
        counts += [int(count)] * int(repeat or 1)
    return counts[node] if node < len(counts) else counts[-1]


def slurm_launch(env: dict[str, str]) -> dict[str, str] | None:
    """The torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) for a task of ``srun -n N`` with N > 1, from SLURM's own: rank SLURM_PROCID, world
    size SLURM_STEP_NUM_TASKS, local rank SLURM_LOCALID, the master the step's first node, the port
    MASTER_PORT or SLURM_PORT_BASE + job id % 10000. None outside an srun step of several tasks
    (a batch script's own shell is no task of a step: SLURM_STEP_ID is unset there)."""
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return None
    world_size = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if world_size < 2:
        return None
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    hosts = expand_hostlist(nodes)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or str(world_size)
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(_tasks_on_node(per_node, int(env.get("SLURM_NODEID", "0")))),
        "MASTER_ADDR": env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
        "MASTER_PORT": env.get("MASTER_PORT")
        or str(SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % 10000),
    }


def setup_distributed(gpuid: int, timeout_s: float = 600.0) -> DistributedContext:
    """This process's place in the run: one plain process, a torchrun worker or an srun task.
    ``timeout_s`` bounds joining the group and every collective after it (--distTimeout)."""
    launcher = "torchrun" if "RANK" in os.environ else ""
    if not launcher and (slurm := slurm_launch(dict(os.environ))) is not None:
        os.environ.update(slurm)  # init_process_group's env:// reads them
        launcher = "srun"
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:  # one plain process
        return DistributedContext(0, 1, 0, choose_device(gpuid))
    # this rank's own GPU first: a missing device is this machine's fault, whatever the launch
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    device = choose_device(gpuid, local_rank, local_world_size)
    missing = [key for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise DeviceSetupError(
            f"{missing[0]}: not set, while {' and '.join(k for k in ('RANK', 'WORLD_SIZE') if k in os.environ)} "
            f"{'are' if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ else 'is'} set: start the processes with torchrun (torchrun --nproc_per_node N main.py ...) or srun, which set "
            f"all of RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, or set them all by hand"
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not dist.is_initialized():
        _join(device, rank, world_size, timeout_s)
    return DistributedContext(rank, world_size, local_rank, device, local_world_size, launcher or "torchrun")


def _join(device: torch.device, rank: int, world_size: int, timeout_s: float) -> None:
    """init_process_group, bounded: after JOIN_NOTICE_S a line on stderr names what this process
    waits for; after ``timeout_s`` it stops with one line, whatever the store or backend does
    meanwhile (a rank that never starts leaves the others waiting in C++, where no exception can
    reach them)."""
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    joined = threading.Event()

    def watch() -> None:
        if joined.wait(min(JOIN_NOTICE_S, timeout_s)):
            return
        print(
            f"note: rank {rank} is waiting for the {world_size} processes of this run to join at {address} "
            f"(--distTimeout {timeout_s:g} s)",
            file=sys.stderr,
            flush=True,
        )
        if joined.wait(max(timeout_s - JOIN_NOTICE_S, 0.0)):
            return
        print(
            f"main.py: error: {_never_joined(rank, world_size, address, timeout_s)}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    threading.Thread(target=watch, name="join-watch", daemon=True).start()
    started = time.monotonic()
    timeout = timedelta(seconds=timeout_s)
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        # an elastic restart may meet the store of the attempt before it, whose keys (the ranks'
        # gloo addresses) are stale: each attempt keeps its keys apart
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"pose/attempt_{attempt}", store)
        common = {"store": store, "rank": rank, "world_size": world_size, "timeout": timeout}
        if device.type == "cuda":
            # device_id binds the NCCL communicator to this rank's GPU at once (no guessing, no
            # warning at every barrier)
            dist.init_process_group("nccl", device_id=device, **common)
        else:
            dist.init_process_group("gloo", **common)
    except (RuntimeError, ValueError) as error:  # the store's and the backend's errors
        waited = time.monotonic() - started
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DeviceSetupError(f"{_never_joined(rank, world_size, address, waited)} ({first})") from None
    finally:
        joined.set()


def _never_joined(rank: int, world_size: int, address: str, waited: float) -> str:
    return (
        f"distTimeout: rank {rank} waited {waited:.0f} s at {address} and the {world_size}-process group never "
        f"formed: start every process (torchrun --nproc_per_node N, srun -n N), check RANK, WORLD_SIZE, "
        f"MASTER_ADDR and MASTER_PORT, or raise --distTimeout"
    )


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because another process is gone (gloo's closed or reset
    connection, NCCL's remote error or abort, a timeout waiting for it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        marker in text
        for marker in (
            "connection closed by peer",
            "connection reset",
            "broken pipe",
            "gloo",
            "nccl",
            "timed out",
        )
    )


def lost_ranks(context: DistributedContext, wait_s: float = 5.0) -> list[int] | None:
    """After a peer failure: the ranks that did not answer within ``wait_s`` (every survivor
    writes a key into the run's store, which torchrun's agent keeps up), or None when the store
    itself is gone (it lived in a process that died)."""
    try:
        store = dist.distributed_c10d._get_default_store()
        key = "pose/alive/{}"  # the default store is this attempt's own (_join)
        store.set(key.format(context.rank), "1")
        deadline = time.monotonic() + wait_s
        alive = set()
        while time.monotonic() < deadline:
            alive = {r for r in range(context.world_size) if store.check([key.format(r)])}
            if len(alive) == context.world_size:
                break
            time.sleep(0.2)
        return [r for r in range(context.world_size) if r not in alive]
    except Exception:  # the store was hosted by a process that is gone
        return None


def cleanup_distributed(clean: bool = True) -> None:
    """Leave the process group. After a clean end every rank first meets the others at a barrier,
    so none tears its connections down while a peer still uses them (CI once saw rank 1 abort in
    gloo as rank 0 left); after a failure nothing is waited for and nothing torn down: the
    process exits and its sockets close with it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not clean:
        return
    dist.barrier()
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
