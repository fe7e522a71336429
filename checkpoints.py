"""The checkpoint and its policy, in one place: what a training checkpoint holds, how a run saves
and restores it, which keys a resume may change, how weights are loaded into a network, and which
run directory a command writes (runs are append-only: only a resume writes into an existing run).

The policy parts (keys, run directories) import no torch, so ``--help`` and option errors stay
fast; the atomic file I/O is :mod:`utils.checkpoint`.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from modes import TRAINING, command_keys, mode_of
from utils.names import DATASET_JOINTS
from utils.option_errors import ON_COMMAND_LINE, OptionError, fail

if TYPE_CHECKING:
    import torch
    from torch import nn

    from engine import EpochState
    from recipe import ExpMomentumEMA, StepwiseLR
    from utils.distributed import DistributedContext
    from utils.options import Options

# Keys a resumed run may change: they steer training or the machine, not what is trained on.
# The LR schedule's keys steer (warm-up and flat-then-cosine too: their state is the steps taken,
# and the LR of each step is a closed form of it). Not here, so a resume refuses them: the
# augmentation keys, stage2Epoch and stage2Augmentation (what the samples are), noDecayNormBias
# and layerDecay (the optimizer's parameter groups, whose stored state belongs to them), and ema,
# emaMomentum and emaGamma (which weights are validated, picked as best.pth and exported: a run
# must not mix two kinds of metric).
STEERING_KEYS = (
    "nEpochs", "dropLR", "dropMag", "lrMilestones", "lrSchedule", "warmupSteps", "warmupStartFactor",
    "flatEpochs", "minLRFactor", "valInterval", "saveInterval",
    "nThreads", "cpuThreads", "progress", "gpuid", "dont_pin_memory", "amp", "flipTest", "expDir", "dataDir",
    "imageDir", "allowConfigChange", "saveEveryMinutes", "tensorboard", "visdom",
    "skipBadSamples", "maxBadFraction", "allowOutsidePaths", "imageCache", "channelsLast", "compile",
    "postProcess", "deterministic", "syncBN", "distTimeout",
)  # fmt: skip
# the files of a run that a training run writes before its first checkpoint: a directory holding
# nothing else was stopped before one (kill -9 in its first write) and --resume auto starts it again
RUN_START_FILES = ("config.defconf", "tb", "log.txt", "metrics.jsonl", "bad_samples.txt")
# the records a checkpoint notes the length of, so a resume rewinds them to it (no epoch twice)
RECORD_FILES = ("log.txt", "metrics.jsonl")


# --- which run, which keys -------------------------------------------------------------------------


def read_stored_config(path: str | Path) -> dict[str, Any]:
    """The options a checkpoint was trained with (its ``config``), read with ``weights_only=True``."""
    from utils.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path, mmap=True)  # the weights are read once, when they are loaded
    except CheckpointError as error:
        fail(f"loadModel: {error} {ON_COMMAND_LINE}")
    config = state.get("config")
    if not isinstance(config, dict):
        fail(
            f"loadModel: {path} stores no config; give the model's options (-ModelConfig) to use it "
            f"{ON_COMMAND_LINE}"
        )
    return config


def is_resume(opts: Options) -> bool:
    """A true resume continues the same run: a training command with weights, optimizer and epoch
    all restored."""
    return bool(opts.loadModel) and opts.loadOptim and opts.loadEpoch and mode_of(opts) is TRAINING


def resume_changes(
    opts: Options, stored: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, tuple[Any, Any]]:
    """{key: (stored, now)} for every option that differs from the checkpoint's, command keys
    aside. A key the checkpoint predates counts as stored with its value in ``defaults`` (the
    parser's), the value its run had, so a resume of an older run cannot turn a newer key on
    unnoticed."""
    defaults = defaults or {}
    written = {key: stored[key] if key in stored else defaults[key] for key in {*stored, *defaults}}
    owned = command_keys()
    return {
        key: (written[key], value)
        for key, value in opts.config.items()
        if key in written and key not in owned and value != written[key]
    }


def refused_resume_changes(changes: dict[str, tuple[Any, Any]]) -> str | None:
    """The one line refusing a resume that changes what it trains (keys beyond STEERING_KEYS)."""
    refused = {k: v for k, v in changes.items() if k not in STEERING_KEYS}
    if not refused:
        return None
    listed = "; ".join(f"{k} stored {_show(a)}, typed {_show(b)}" for k, (a, b) in refused.items())
    return (
        f"loadModel: a resume continues the same run, but this command changes what it trains: "
        f"{listed} (fine-tune instead with --loadOptim 0 --loadEpoch 0, or pass --allowConfigChange 1)"
    )


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_writable(path: Path, key: str) -> None:
    """OptionError (naming ``key``) unless a run could create and write ``path``: its nearest
    existing folder is a folder, and a file can be made there (tried: a read-only mount or a full
    quota says no whoever asks, root included). Checked when the options are read, before any
    data, so a run does not read a dataset only to fail at its first write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{key}: {existing} is a file, not a folder, so {path} cannot be made")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OptionError(f"{key}: cannot write in {existing} ({reason}), so {path} cannot be made") from None


def plan_run_dir(opts: Options) -> Path:
    """Where this command writes. Runs are append-only: only a resume writes into an existing
    run (the checkpoint's own, when no --expID names another); every other command gets a new
    directory, and a new run never takes over an existing one. The path is absolute and resolved,
    as a resume's (its checkpoint's folder) is, so every command prints its run the same way."""
    if is_resume(opts):
        own = Path(opts.loadModel).resolve().parent
        if not opts.expID or (Path(opts.expDir) / opts.expID).resolve() == own:
            check_writable(own, "loadModel")
            return own
    root = Path(opts.expDir).resolve()
    check_writable(root, "expDir")
    if opts.expID:
        path = root / opts.expID
        if path.exists() and not getattr(opts, "restarts_stranded_run", False):
            free = next(
                f"{opts.expID}-{n}" for n in range(2, 10**6) if not (root / f"{opts.expID}-{n}").exists()
            )
            how = (
                f"--resume auto or --loadModel {path / 'last.pth'} continues it"
                if (path / "last.pth").is_file()
                else "it holds no checkpoint; --resume auto starts it again there if it was stopped before its first one"
            )
            raise OptionError(
                f"expID: run directory {path} already exists and only a resume of its own checkpoint may "
                f"write there ({how}); choose a new name, e.g. --expID {free}"
            )
        return path
    mode = mode_of(opts)
    kind = mode.run_dir_suffix if mode is not TRAINING else ("-finetune" if opts.loadModel else "")
    base = f"{opts.model}-{opts.dataset}{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return next(
        root / name
        for name in (base, *(f"{base}-{n}" for n in range(2, 10**6)))
        if not (root / name).exists()
    )


def stranded_run_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` (which has no last.pth) is not a run stopped before its first checkpoint,
    or None when it is: it holds only what such a run writes first (RUN_START_FILES) and the
    temporary file of a cut-off checkpoint write."""
    foreign = sorted(
        entry.name
        for entry in run_dir.iterdir()
        if entry.name not in RUN_START_FILES
        and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    )
    if not foreign:
        return None
    return (
        f"run directory {run_dir} has no last.pth but holds what a run writes only later or never "
        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
    )


def make_run_dir(opts: Options, is_main: bool) -> Path:
    """Create the run directory ``plan_run_dir`` chose. A resume continues in its own run and
    leaves its config.defconf as it was (log.txt notes what changed); every other command gets a
    new directory whose config.defconf names the checkpoint it started from (``loadModel``)."""
    import shutil

    run_dir = opts.run_dir
    restarts = getattr(opts, "restarts_stranded_run", False)
    if is_main and (is_resume(opts) or restarts) and run_dir.is_dir():
        for stale in run_dir.glob(".*.pth.*.tmp"):  # a checkpoint write cut off by kill -9
            stale.unlink(missing_ok=True)
    if is_main and restarts and run_dir.is_dir():
        for name in RUN_START_FILES:  # the stopped attempt's: this run starts from nothing again
            entry = run_dir / name
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
    if is_main and not (is_resume(opts) and run_dir.is_dir()):
        run_dir.mkdir(parents=True, exist_ok=restarts)
        settable = opts.config_file_keys
        with open(run_dir / "config.defconf", "w") as stream:
            for key, value in opts.config.items():
                if value is None or key not in settable:
                    continue
                # false is written too: several flags (flipTest, tensorboard, shuffle) default to on
                text = (
                    f"[{', '.join(value)}]"
                    if isinstance(value, list)
                    else ("true" if value is True else "false" if value is False else value)
                )
                stream.write(f"{key}: {text}\n")
    return run_dir


# --- weights into a network --------------------------------------------------------------------------


def describe(config: dict[str, Any]) -> str:
    """'PyraNet, 16 joints, 256x256' (model, joints, input height x width) from a run's options."""
    height = config.get("inputRes")
    width = round(height * config.get("aspectRatio", 1.0)) if height else "?"
    joints = config.get("nJoints") or DATASET_JOINTS.get(config.get("dataset"), "?")
    return f"{config.get('model')}, {joints} joints, {height}x{width}"


def first_mismatch(error: RuntimeError) -> str:
    """The first missing, unexpected or mis-shaped tensor in load_state_dict's (long) message."""
    for line in str(error).splitlines()[1:]:
        line = line.strip()
        if line.startswith("size mismatch"):
            return line.rstrip(".")
        if ":" in line:
            kind, keys = line.split(":", 1)
            return f"{kind.strip().lower()} {keys.split(',')[0].strip()}"
    return str(error).splitlines()[0]


def load_weights(model: nn.Module, opts: Options, averaged: bool = True) -> dict[str, Any]:
    """Load ``--loadModel`` into ``model``: the moving average of a ``--ema 1`` run when
    ``averaged`` (what its validation scored), else the weights the optimizer trains (a resume).
    One line naming what differs if the weights do not fit. Returns the whole checkpoint
    (optimizer, epoch, ... for a resume)."""
    from utils.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(opts.loadModel)
    except CheckpointError as error:
        fail(f"loadModel: {error}")
    weights = state["ema"]["model"] if averaged and state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        stored = state.get("config") or {}
        free = (*command_keys(), *STEERING_KEYS)  # keys that say nothing of the network
        differing = [
            f"{k} {stored[k]} vs {v}"
            for k, v in opts.config.items()
            if k in stored and stored[k] != v and k not in free
        ]
        fail(
            f"loadModel: the weights do not fit: checkpoint: {describe(stored)}; config: {describe(opts.config)}"
            f"{'; options: ' + ', '.join(differing) if differing else ''}; first difference: {first_mismatch(error)}"
        )
    return state


def averaged_note(path: str) -> str:
    return f"using the moving average of the weights in {path} (--ema 1)"


def from_epoch_one_note(path: str) -> str:
    return f"loaded weights from {path}; counting epochs from 1"


@dataclass
class ReadCheckpoint:
    """What a command that only reads --loadModel (-test, --browse) takes from it."""

    epoch: int  # the whole epochs it had trained (0 with --loadEpoch 0)
    next_epoch: int  # the epoch a resume would train: the interrupted one of a mid-epoch checkpoint
    notes: list[str]  # for the terminal


def read_weights(model: nn.Module, opts: Options) -> ReadCheckpoint:
    """Load --loadModel's weights as its validation scored them (the moving average of a --ema 1
    run) into ``model``, for -test and --browse: no optimizer, schedule or random state."""
    state = load_weights(model, opts, averaged=True)
    notes = [averaged_note(opts.loadModel)] if state.get("ema") else []
    if not opts.loadEpoch:
        return ReadCheckpoint(0, 1, [*notes, from_epoch_one_note(opts.loadModel)])
    epoch = int(state.get("epoch", 0))
    middle = state.get("mid_epoch")
    return ReadCheckpoint(epoch, int(middle["epoch"]) if middle else epoch + 1, notes)


# --- a training run's checkpoint ---------------------------------------------------------------------


@dataclass
class Resumed:
    """Where a run continues from a checkpoint, and what a resume must say about it."""

    start_epoch: int = 1
    best: float = -math.inf
    partial: EpochState | None = None  # a mid-epoch checkpoint: the batches already done
    pending: dict[str, Any] | None = None  # the run stopped while validating this epoch
    notes: list[str] = field(default_factory=list)  # for the terminal
    logged: list[str] = field(default_factory=list)  # the notes that also go to log.txt
    # {record file: its length when the checkpoint was written}; None: the checkpoint predates it
    records: dict[str, int] | None = None


class TrainingCheckpoint:
    """Everything needed to continue a run, and nothing that needs code to load: the model,
    optimizer, LR schedule and fp16 GradScaler states, the epoch and best metric, every rank's
    random generators (its own GPU's included), the batches done of an interrupted epoch, an epoch
    waiting for its validation, the number of processes and the launch command, and the options.
    With ``--ema 1``, also ``ema``: the moving average's weights and its update count (``model``
    stays the weights the optimizer trains, which a resume continues; every other use of the
    checkpoint takes the average, see :func:`load_weights`). ``save`` is a collective: every
    rank calls it and rank 0 writes."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | StepwiseLR | None,
        scaler: torch.amp.GradScaler | None,
        opts: Options,
        context: DistributedContext,
        ema: ExpMomentumEMA | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.opts, self.context, self.ema = opts, context, ema

    def save(
        self,
        path: Path,
        epoch: int,
        best: float,
        partial: EpochState | None = None,
        pending_validation: dict[str, Any] | None = None,
    ) -> None:
        """Checkpoint after ``epoch`` completed epochs; with ``partial``, also the batches done of
        the next epoch (resumed at the next batch); with ``pending_validation``, an epoch whose
        validation has not run yet (a resume runs it first). Each rank's generators and running
        sums reach rank 0 in one gather."""
        from utils.checkpoint import CheckpointWriteError, capture_rng_state, save_checkpoint
        from utils.distributed import barrier, gather_objects

        context = self.context
        own = {"rng": capture_rng_state(context.device)}
        if partial is not None:
            own["sums"] = (partial.loss_sum, partial.pck_sum)
        ranks = gather_objects(own, context)
        if context.is_main:
            state = self._state(epoch, best, ranks, path.parent)
            if pending_validation is not None:
                state["pending_validation"] = pending_validation
            if partial is not None:
                state["mid_epoch"] = {
                    "epoch": partial.epoch,
                    "step": partial.step,
                    "loss_sum": [float(entry["sums"][0]) for entry in ranks],  # one per rank, in rank order
                    "pck_sum": [float(entry["sums"][1]) for entry in ranks],
                }
            existed = path.is_file()
            try:
                save_checkpoint(state, path)
            except Exception as error:  # torch.save turns the OSError of a full disk into a RuntimeError
                kept = (
                    "the previous checkpoint there is intact"
                    if existed
                    else "no earlier checkpoint of that name existed"
                )
                raise CheckpointWriteError(
                    f"cannot write checkpoint {path}: {write_failure(error)}; {kept}"
                ) from None
        barrier(context)

    def _state(self, epoch: int, best: float, ranks: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
        import torch

        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best": best,
            "rng": {"ranks": [entry["rng"] for entry in ranks]},  # one per rank, in rank order
            "world_size": self.context.world_size,
            "launch": self.context.launch_command,
            # CPU arithmetic repeats bit for bit only with the same number of threads
            "cpu_threads": torch.get_num_threads(),
            # the records' lengths now: a resume rewinds them to this point (no epoch logged twice)
            "records": {
                name: (run_dir / name).stat().st_size if (run_dir / name).is_file() else 0
                for name in RECORD_FILES
            },
            "config": self.opts.config,
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()  # rank 0's: validation uses its BatchNorm statistics too
        return state

    def restore(self) -> Resumed:
        """Load --loadModel into a training run (a resume or a fine-tune); --loadOptim, --loadEpoch
        and --dropPreLoaded choose what is kept. Commands that only read weights use read_weights."""
        opts = self.opts
        # the optimizer's state belongs to the weights it trains; anything else takes the average
        continuing = bool(opts.loadOptim) and self.optimizer is not None
        state = load_weights(self.model, opts, averaged=not continuing)
        resumed = Resumed()
        if state.get("ema") and not continuing:
            resumed.notes.append(averaged_note(opts.loadModel))
        self._restore_ema(state if continuing else {})
        if opts.loadOptim and "optimizer" in state and self.optimizer is not None:
            self._restore_optimizer(state, resumed)
        if opts.dropPreLoaded and self.optimizer is not None:
            before = self.optimizer.param_groups[0]["lr"]
            for group in self.optimizer.param_groups:
                group["lr"] *= opts.dropMagPreLoaded
            if hasattr(self.scheduler, "scale_lr"):  # a per-step schedule sets every step's LR
                self.scheduler.scale_lr(opts.dropMagPreLoaded)
            drop = (
                f"LR scaled once by --dropMagPreLoaded {opts.dropMagPreLoaded} (--dropPreLoaded 1): "
                f"{before:g} -> {self.optimizer.param_groups[0]['lr']:g}"
            )
            resumed.notes.append(drop)
            resumed.logged.append(drop)
        if not opts.loadEpoch:
            resumed.notes.append(from_epoch_one_note(opts.loadModel))
            return resumed
        if "rng" in state:
            from utils.checkpoint import restore_rng_state

            note = restore_rng_state(
                state["rng"], self.context.rank, self.context.world_size, self.context.device
            )
            if note:
                resumed.notes.append(note)
                resumed.logged.append(note)
        resumed.best = float(state.get("best", -math.inf))
        resumed.records = state.get("records")
        threads = thread_count_change(state, self.context)
        if threads:
            resumed.notes.append(threads)
            resumed.logged.append(threads)
        middle = state.get("mid_epoch")
        if middle:
            self._restore_mid_epoch(state, middle, resumed)
        else:
            resumed.start_epoch = int(state["epoch"]) + 1
            if state.get("pending_validation"):
                resumed.pending = state["pending_validation"]
            resumed.notes.append(f"resumed {opts.loadModel} after epoch {state['epoch']}")
        change = world_size_change(state, opts, self.context.world_size)
        if change:
            resumed.notes.append(change)
            resumed.logged.append(change)
        return resumed

    def _restore_ema(self, state: dict[str, Any]) -> None:
        """The average and its update count, continued; without them in ``state`` (a run without
        --ema, a fine-tune), a new average of the weights just loaded."""
        if self.ema is None:
            return
        if state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        else:
            self.ema.reset()

    def _restore_optimizer(self, state: dict[str, Any], resumed: Resumed) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:
            stored = len(state["optimizer"]["param_groups"])
            stop_run(
                f"loadModel: its optimizer state has {stored} parameter group(s) and this run's optimizer "
                f"{len(self.optimizer.param_groups)} (noDecayNormBias or layerDecay changed); resume "
                f"with --loadOptim 0 to start the optimizer afresh",
                self.context.is_main,
            )
        self._restore_schedule(state["scheduler"])
        if self.scaler is None:
            return
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        else:
            note = (
                "the checkpoint holds no GradScaler state (not trained with --amp fp16): "
                f"the loss scale starts at {self.scaler.get_scale():g}"
            )
            resumed.notes.append(note)
            resumed.logged.append(note)

    def _restore_schedule(self, stored: dict[str, Any]) -> None:
        """The schedule's progress, with this run's dropLR / dropMag / lrMilestones (and warm-up
        and cosine keys); across a change between an epoch scheduler and the per-step one."""
        from recipe import StepwiseLR, continue_epoch_schedule

        if isinstance(self.scheduler, StepwiseLR):
            self.scheduler.load_state_dict(stored)
        elif "optimizer_steps" in stored:
            continue_epoch_schedule(self.scheduler, stored)
        else:
            progress = {k: v for k, v in stored.items() if k not in ("step_size", "gamma", "milestones")}
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), **progress})

    def _restore_mid_epoch(self, state: dict[str, Any], middle: dict[str, Any], resumed: Resumed) -> None:
        """The batches done of an interrupted epoch. The running sums and sample positions are per
        rank, so only the number of processes that wrote the checkpoint continues it."""
        from engine import EpochState

        opts, context = self.opts, self.context
        written_by = int(state.get("world_size", len(middle["loss_sum"])))
        if written_by != context.world_size:
            launch = state.get("launch") or (
                "python main.py" if written_by == 1 else f"torchrun --nproc_per_node {written_by} main.py"
            )
            stop_run(
                f"loadModel: {opts.loadModel} was written in the middle of epoch {middle['epoch']} by {written_by} "
                f"process(es) and this run has {context.world_size}; a mid-epoch checkpoint continues only on the "
                f"same number: {launch} --loadModel {opts.loadModel} (end-of-epoch checkpoints may change it)",
                context.is_main,
            )
        rank = context.rank
        resumed.partial = EpochState(
            int(middle["epoch"]), int(middle["step"]), middle["loss_sum"][rank], middle["pck_sum"][rank]
        )
        resumed.start_epoch = resumed.partial.epoch
        resumed.notes.append(
            f"resumed {opts.loadModel} in epoch {resumed.partial.epoch} after batch {resumed.partial.step}"
        )


def write_failure(error: BaseException) -> str:
    """What went wrong in a write, from the innermost OSError behind ``error`` (torch.save wraps a
    full disk's in a RuntimeError of its own), else the first line of its message."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(error).strip()
    if "enforce fail" in text or "unexpected pos" in text:  # torch.save's wording for a short write
        return "the file could not be written in full (disk full or quota reached?)"
    return text.splitlines()[0] if text else type(error).__name__


def thread_count_change(state: dict[str, Any], context: DistributedContext) -> str | None:
    """One line when a CPU resume runs on another number of threads than its checkpoint's run:
    the same numbers to the last bit need the same count."""
    import torch

    written = state.get("cpu_threads")
    if written is None or context.device.type != "cpu" or int(written) == torch.get_num_threads():
        return None
    return (
        f"the checkpoint was written with {written} CPU thread(s) and this run has {torch.get_num_threads()}: "
        f"on the CPU a resume repeats the uninterrupted run bit for bit only with the same count "
        f"(OMP_NUM_THREADS={written})"
    )


def world_size_change(state: dict[str, Any], opts: Options, world_size: int) -> str | None:
    """One line when a resume runs on another number of processes: the effective batch changes."""
    written_by = int(state.get("world_size", 1))
    if written_by == world_size:
        return None
    stored = state.get("config") or {}
    before = int(stored.get("data_loader_size", opts.data_loader_size)) * int(
        stored.get("mini_batch_count", opts.mini_batch_count)
    )
    after = opts.data_loader_size * opts.mini_batch_count
    return (
        f"resumed on {world_size} process(es) a run written by {written_by}: effective batch "
        f"{before * written_by} -> {after * world_size} (data_loader_size x mini_batch_count x "
        f"processes); the learning rate is as configured, not rescaled"
    )


def stop_run(message: str, is_main: bool) -> NoReturn:
    """Stop every rank with status 2; rank 0 prints the one line."""
    if is_main:
        fail(message)
    raise SystemExit(2)
