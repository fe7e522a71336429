"""DataLoaders that name the sample a dead or stuck worker was loading, and report bad samples.

:class:`GuardedDataLoader` is a ``DataLoader`` for a :class:`~datasets.base.KeypointDataset`:

- Each worker notes in shared memory which sample it is loading (``dataset.in_flight``). A
  worker killed (a crash in a decoder, the OOM killer) or stuck for ``LOADER_TIMEOUT_S`` (the
  DataLoader ``timeout``) becomes a one-line DataError naming the annotation file and record it
  was on, not a hang or a bare "worker exited unexpectedly". :func:`loader_failure` turns such
  an error into that line wherever it surfaces (main.py calls it too: PyTorch may raise it from
  its SIGCHLD handler in the middle of a training step).
- With ``--skipBadSamples 1`` a sample whose image is bad is flagged in ``dataset.bad_flags``,
  shared memory that workers write and the main process reads; the sample dict keeps its keys.
  :class:`BadSampleReport` (rank 0) writes ``<run>/bad_samples.txt``, one line per bad sample
  (the records dropped when the annotations were read, then the bad images found so far,
  re-checked in the main process for their message), when a pass over a loader starts and ends,
  and adds a line to ``log.txt`` whenever the count changes. Under ``torchrun`` the flags are
  combined over ranks (a max all-reduce) at the end of each pass. The datasets' notes (what a
  reader passed over or mended without an error, ``dataset.notes``) go to ``log.txt`` when the
  first pass starts.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils import signal_handling

from datasets.base import DataError, KeypointDataset

LOADER_TIMEOUT_S = (
    600.0  # a worker that delivers no batch for this long is stuck (network file system, deadlock)
)
REPORT_NAME = "bad_samples.txt"

_TRACKED: list[weakref.ReferenceType] = []  # datasets whose workers note what they load
_LOADERS: weakref.WeakSet = weakref.WeakSet()  # loaders whose workers stop when the program does


@atexit.register  # registered after multiprocessing's own exit handler, so it runs before it
def _stop_workers_at_exit() -> None:
    """Workers ignore SIGTERM (a signal to the whole process group is the main process's to
    handle), so multiprocessing's exit handler, which terminates daemonic children and joins them,
    would wait for them forever: each loader's workers are told to stop, and any left are killed."""
    for loader in list(_LOADERS):
        shutdown = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(5)


def loader_failure(error: BaseException, from_loader: bool = False) -> str | None:
    """One line naming the samples being loaded when a DataLoader worker died or timed out, for
    PyTorch's RuntimeError saying so (or, ``from_loader``, any connection error or EOF a dead
    worker leaves behind while its batch is received); None for any other error."""
    if isinstance(error, DataError):
        return None
    lines = str(error).strip().splitlines()
    first = lines[0].strip().rstrip(".") if lines else ""
    if from_loader and isinstance(error, (ConnectionError, EOFError)):
        first = f"a DataLoader worker died ({type(error).__name__}: {first or 'no message'})"
    elif not (
        isinstance(error, RuntimeError)
        and (first.startswith("DataLoader worker") or first.startswith("DataLoader timed out"))
    ):
        return None
    loading = []
    for reference in list(_TRACKED):
        dataset = reference()
        if dataset is None or dataset.in_flight is None:
            continue
        for worker, (index, busy) in enumerate(dataset.in_flight.tolist()):
            if busy and 0 <= index < len(dataset):
                loading.append(f"worker {worker} was loading sample {index}, {dataset.describe(index)}")
    where = "; ".join(loading) if loading else "no worker was inside a sample (it failed between samples)"
    return f"{first}: {where}"


class _GuardedIterator:
    def __init__(self, loader: GuardedDataLoader, iterator: Any) -> None:
        self.loader, self.iterator = loader, iterator

    def __iter__(self) -> _GuardedIterator:
        return self

    def __len__(self) -> int:
        return len(self.iterator)

    def __next__(self) -> Any:
        try:
            return next(self.iterator)
        except StopIteration:
            if self.loader.report is not None:
                self.loader.report.update(self.loader.dataset, end_of_pass=True)
            raise
        except (RuntimeError, ConnectionError, EOFError) as error:
            message = loader_failure(error, from_loader=self.loader.num_workers > 0)
            if message is None:
                raise
            self.close()
            raise DataError(message) from None

    def close(self) -> None:
        """Stop the workers now: a dead one would otherwise make PyTorch's SIGCHLD handler raise
        again, anywhere, for as long as the error (and with it this iterator) is kept."""
        if getattr(self.iterator, "_worker_pids_set", False):
            # unwatched first, so the kills below do not make that handler raise here
            signal_handling._remove_worker_pids(id(self.iterator))
            self.iterator._worker_pids_set = False
        for worker in getattr(self.iterator, "_workers", []):
            if worker.is_alive():  # stuck (the timeout) or a sibling of a dead one: we are stopping
                worker.kill()  # workers ignore SIGTERM (build._quiet_worker)
        shutdown = getattr(self.iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        dataset = self.loader.dataset
        if isinstance(dataset, KeypointDataset) and dataset.in_flight is not None:
            dataset.in_flight[:, 1] = 0


class GuardedDataLoader(DataLoader):
    """A DataLoader with a ``timeout`` for its workers (``LOADER_TIMEOUT_S`` unless given), whose
    failures name the sample (see the module docstring); ``report`` collects bad samples."""

    def __init__(
        self, dataset: Any, *args: Any, report: BadSampleReport | None = None, **kwargs: Any
    ) -> None:
        if kwargs.get("num_workers", 0) > 0:
            kwargs.setdefault("timeout", LOADER_TIMEOUT_S)
        super().__init__(dataset, *args, **kwargs)
        self.report = report
        _LOADERS.add(self)
        if isinstance(dataset, KeypointDataset):
            # created here, before any worker starts, so every worker writes into the same memory
            slots = torch.zeros((max(self.num_workers, 1), 2), dtype=torch.int64)
            slots[:, 0] = -1
            dataset.in_flight = slots.share_memory_()
            _TRACKED[:] = [r for r in _TRACKED if r() is not None and r() is not dataset]
            _TRACKED.append(weakref.ref(dataset))

    def __iter__(self) -> _GuardedIterator:
        if self.report is not None:
            self.report.update(self.dataset, end_of_pass=False)
        return _GuardedIterator(self, super().__iter__())


class BadSampleReport:
    """``<run>/bad_samples.txt`` and a log line for the bad samples of ``datasets`` (written by
    the main rank; see the module docstring)."""

    def __init__(
        self, run_dir: str | Path, datasets: list[Any], is_main: bool = True, device: Any = None
    ) -> None:
        self.path = Path(run_dir) / REPORT_NAME
        self.datasets = [d for d in datasets if isinstance(d, KeypointDataset)]
        self.is_main, self.device = is_main, device
        self.messages: dict[tuple[int, int], str] = {}  # (dataset, index) -> problem, found at load
        # a resumed run keeps what its earlier processes found (the skipped part of an epoch is
        # not visited again before the next one)
        self.earlier = self.path.read_text().splitlines() if is_main and self.path.is_file() else []
        self.written: list[str] = list(self.earlier)
        self.notes_written = False

    def update(self, dataset: Any, end_of_pass: bool) -> None:
        if end_of_pass and isinstance(dataset, KeypointDataset):
            self._combine_ranks(dataset)
        if not self.is_main or not self.path.parent.is_dir():
            return
        if not self.notes_written:  # the readers' notes, printed when they read, into log.txt once
            self.notes_written = True
            notes = list(dict.fromkeys(line for d in self.datasets for line in getattr(d, "notes", [])))
            if notes:
                with open(self.path.parent / "log.txt", "a") as stream:
                    stream.writelines(f"note: {line}\n" for line in notes)
        records, images = self.lines()
        lines = list(dict.fromkeys(records + images + self.earlier))
        if lines == self.written:
            return
        temporary = self.path.with_name(f".{REPORT_NAME}.tmp")
        temporary.write_text("".join(f"{line}\n" for line in lines))
        os.replace(temporary, self.path)
        summary = (
            f"bad samples: {len(lines)} skipped ({len(records)} records dropped when the annotations were "
            f"read, {len(lines) - len(records)} with a bad image replaced by the next good sample), listed in "
            f"{self.path}"
        )
        with open(self.path.parent / "log.txt", "a") as stream:
            stream.write(summary + "\n")
        print(f"note: {summary}", file=sys.stderr)
        self.written = lines

    def lines(self) -> tuple[list[str], list[str]]:
        """Every bad sample so far, one line each: (records dropped when the annotations were
        read, samples whose image was bad), each line once (training and validation may read
        the same file)."""
        records: dict[str, None] = {}  # ordered sets
        images: dict[str, None] = {}
        for number, dataset in enumerate(self.datasets):
            records.update(dict.fromkeys(dataset.dropped))
            for index in dataset.bad_indices():
                key = (number, index)
                if key not in self.messages:
                    _, problem = dataset.try_sample(index)
                    self.messages[key] = problem or (
                        f"{dataset.describe(index)}: failed in a DataLoader worker but loads in the main process"
                    )
                images[self.messages[key]] = None
        return list(records), [line for line in images if line not in records]

    def _combine_ranks(self, dataset: KeypointDataset) -> None:
        """Every rank's bad images, on every rank: each pass ends once per rank, so this collective
        is matched."""
        import torch.distributed as dist

        if dataset.bad_flags is None or not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_world_size() < 2:
            return
        flags = dataset.bad_flags.to(self.device or "cpu", dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        dataset.bad_flags.copy_(flags.cpu().to(torch.uint8))
