"""How many CPU threads torch computes with, and how many DataLoader workers a run starts.

PyTorch's default is one OpenMP thread per core. Each operator then waits at a barrier for all of
them; on a CPU that other work also uses (another job, the DataLoader's own workers), one thread
descheduled keeps the others waiting, and a training step becomes many times slower
(benchmarks/shared_cpu.py; docs/performance.md). So a run leaves a core to each DataLoader
worker and takes the rest, the same count on every start of the same command: a CPU run is
bit-exact only with the same thread count, and its checkpoint records it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` may
    narrow), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    """torch's CPU threads and the DataLoader workers of one process, and what to say of them."""

    threads: int
    workers: int
    requested_workers: int  # --nThreads
    note: str  # one line for the terminal and log.txt

    @property
    def workers_capped(self) -> bool:
        """Fewer workers than --nThreads asked for."""
        return self.workers < self.requested_workers


def plan_threads(
    requested_threads: int,
    requested_workers: int,
    cores: int,
    processes_here: int = 1,
    omp_num_threads: str | None = None,
) -> ThreadPlan:
    """``requested_threads`` (``--cpuThreads``; 0: choose) and ``requested_workers``
    (``--nThreads``) for one of ``processes_here`` processes sharing ``cores``.

    Workers are capped at the process's share of the cores: more only take turns on them. Chosen
    threads: ``OMP_NUM_THREADS`` when it is set (the user's, or torchrun's 1 for several processes),
    else the share of cores left after one per worker, at least 1."""
    share = max(1, cores // max(1, processes_here))
    workers = min(requested_workers, share)
    capped = (
        f"; {workers} DataLoader workers instead of --nThreads {requested_workers}, the "
        f"{'cores' if processes_here == 1 else 'cores per process'} there are"
        if workers < requested_workers
        else ""
    )
    if requested_threads > 0:
        threads, why = requested_threads, "--cpuThreads"
    elif omp_num_threads and omp_num_threads.strip().isdigit() and int(omp_num_threads) > 0:
        threads, why = int(omp_num_threads), f"OMP_NUM_THREADS={omp_num_threads.strip()}"
    else:
        threads = max(1, share - workers)
        per = f"{share} of {cores} cores" if processes_here > 1 else f"{cores} cores"
        why = f"chosen: {per}, {workers} kept for DataLoader workers; --cpuThreads N sets it"
    return ThreadPlan(threads, workers, requested_workers, f"CPU threads: {threads} ({why}){capped}")


def apply_thread_plan(requested_threads: int, requested_workers: int, processes_here: int = 1) -> ThreadPlan:
    """``plan_threads`` for this process (its cores, its ``OMP_NUM_THREADS``), set in torch."""
    import torch

    plan = plan_threads(
        requested_threads,
        requested_workers,
        usable_cores(),
        processes_here,
        os.environ.get("OMP_NUM_THREADS"),
    )
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    return plan
