"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python primitives (no pickled objects), so loading
one from an untrusted source cannot run code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not one of ours; the message names the file."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, no permission); the previous one is intact."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to a temporary file in the same directory, fsync it, then rename it over
    ``path``: a crash at any moment leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
    return path


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``; one-line CheckpointError otherwise.
    ``mmap`` maps the tensors instead of reading them (for a look at the config alone)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' entry)")
    return state


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's Python, numpy and torch generator states as weights_only-loadable values;
    on a CUDA ``device``, also that GPU's generator (each rank owns one GPU)."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _per_rank(stored: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """The generator states of each rank that wrote ``stored``, oldest layout included: one
    process's states with ``cuda`` holding every visible GPU's (get_rng_state_all)."""
    if "ranks" in stored:
        return list(stored["ranks"])
    own = {key: value for key, value in stored.items() if key != "cuda"}
    cuda = stored.get("cuda")
    if isinstance(cuda, (list, tuple)) and cuda:
        index = (device.index or 0) if device.type == "cuda" else 0
        own["cuda"] = cuda[index] if index < len(cuda) else None
        own["cuda_of"] = (index, len(cuda))
    return [own]


def restore_rng_state(
    stored: dict[str, Any], rank: int = 0, world_size: int = 1, device: torch.device | None = None
) -> str | None:
    """Restore this rank's own generators from a checkpoint's ``rng``; never fails on a different
    number of processes or GPUs. Returns one line saying what could not be restored (the same on
    every rank, for rank 0 to print), or None when everything was."""
    device = device or torch.device("cpu")
    ranks = _per_rank(stored, device)
    notes = []
    if len(ranks) != world_size:
        restored = min(len(ranks), world_size)
        notes.append(
            f"the checkpoint holds the generators of {len(ranks)} process(es) and this run has {world_size}: "
            + (f"ranks {restored}-{world_size - 1} start from the seed" if world_size > len(ranks)
               else f"the states of ranks {restored}-{len(ranks) - 1} are not used")
        )  # fmt: skip
    own = ranks[rank] if rank < len(ranks) else None
    if own is not None:
        version, internal, gauss = own["python"]
        random.setstate((version, tuple(internal), gauss))
        numpy_state = own["numpy"]
        np.random.set_state(
            {
                "bit_generator": numpy_state["bit_generator"],
                "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                "has_gauss": numpy_state["has_gauss"],
                "gauss": numpy_state["gauss"],
            }
        )
        torch.set_rng_state(own["torch"])
    saved_cuda = any(entry.get("cuda") is not None for entry in ranks)
    if device.type == "cuda":
        if own is not None and own.get("cuda") is not None:
            torch.cuda.set_rng_state(own["cuda"], device)
        elif "cuda_of" in ranks[0]:
            index, count = ranks[0]["cuda_of"]
            notes.append(
                f"the checkpoint holds {count} GPU generator(s), none for cuda:{index}; it starts from the seed"
            )
        elif not saved_cuda:
            notes.append("the checkpoint was written without CUDA: the GPU generators start from the seed")
    elif saved_cuda:
        notes.append("the checkpoint's CUDA generators are not restored (this run is on the CPU)")
    if not notes:
        return None
    # the data order and augmentation have their own (seed, epoch, sample) generators: these
    # states matter only to random layers (PyraNet's fractional pooling in training)
    return "random state: " + "; ".join(notes) + " (data order and augmentation are unaffected)"
