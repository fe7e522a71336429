"""What a command does: the modes, in one table.

A command trains unless one mode's option is given (``-test``, ``-predict PATH``, ``-export FILE``,
``--browse N``). Everything that depends on the mode reads this table: the option parser (the
flags and their help), main.py's dispatch (the module whose ``run(opts)`` it calls), the checks
(one mode at a time; a checkpoint where it needs one; a dataset root where it reads data), which
keys a checkpoint's stored config does not pass on, whether a command is a resume, and the name of
the run directory it makes. A new mode is one ``register_mode`` call (CONTRIBUTING.md). Imports no
torch, so ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mode:
    """One thing a command can do instead of training."""

    key: str  # the option's name in the options ("test")
    flag: str  # as typed ("-test")
    module: str  # the module main.py imports; its ``run(opts) -> int`` is the mode
    help: str
    value: str = "flag"  # "flag" (present or not), "path" (a file or folder), or "count" (an int)
    metavar: str | None = None
    needs_checkpoint: bool = True  # refuses to run without --loadModel
    reads_data: bool = True  # builds the dataset, so --dataDir must hold it
    run_dir_suffix: str = ""  # its new run directory: <model>-<dataset><suffix>-<time>
    checkpoint_role: str = "the checkpoint to use"  # what --loadModel is to it, for the error
    # keys the command owns beside the flag: a checkpoint's stored config never sets them
    command_keys: tuple[str, ...] = ()

    def add_argument(self, group: Any) -> None:
        """The mode's option in the parser's group."""
        if self.value == "flag":
            group.add_argument(self.flag, dest=self.key, action="store_true", help=self.help)
        elif self.value == "count":
            group.add_argument(
                self.flag, dest=self.key, type=int, default=0, metavar=self.metavar, help=self.help
            )
        else:
            group.add_argument(self.flag, dest=self.key, default="", metavar=self.metavar, help=self.help)


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Add ``mode`` to the table (its key must be new)."""
    if mode.key in MODES:
        raise ValueError(f"mode {mode.key!r} is registered already")
    MODES[mode.key] = mode
    return mode


TRAINING = Mode("", "", "train", "train a model (no mode option given)", needs_checkpoint=False)

register_mode(
    Mode(
        "test", "-test", "evaluate", "evaluate --loadModel only", run_dir_suffix="-test",
        checkpoint_role="the checkpoint to evaluate",
    )
)  # fmt: skip
register_mode(
    Mode(
        "predict", "-predict", "predict", "run --loadModel on an image, a folder of images or a video",
        value="path", metavar="PATH", reads_data=False, run_dir_suffix="-predict",
        command_keys=(
            "onnx", "detector", "detectorWeights", "drawThreshold", "smooth", "smoothMinCutoff", "smoothBeta",
            "smoothDCutoff", "trackIoU", "trackOKS", "trackMemory",
        ),
    )
)  # fmt: skip
register_mode(
    Mode(
        "export", "-export", "export", "export --loadModel to ONNX and exit", value="path",
        metavar="FILE.onnx", reads_data=False, run_dir_suffix="-export",
    )
)  # fmt: skip
register_mode(
    Mode(
        "browse", "--browse", "browse",
        "write N augmented training samples as PNG into browse/ of a new run directory, and exit",
        value="count", metavar="N", needs_checkpoint=False, run_dir_suffix="-browse",
    )
)  # fmt: skip

# keys every command owns whatever its mode: the run's name and what it does with a checkpoint
RUN_COMMAND_KEYS = (
    "expID",
    "loadModel",
    "resume",
    "loadOptim",
    "loadEpoch",
    "dropPreLoaded",
    "dropMagPreLoaded",
)


def chosen_modes(opts: Any) -> list[Mode]:
    """The modes whose option this command gives (the checks refuse more than one)."""
    return [mode for mode in MODES.values() if getattr(opts, mode.key, None)]


def mode_of(opts: Any) -> Mode:
    """The command's mode: the one whose option is given, else training."""
    chosen = chosen_modes(opts)
    return chosen[0] if chosen else TRAINING


def command_keys() -> tuple[str, ...]:
    """Keys a checkpoint's stored config does not pass on: they say what this command does."""
    owned = [key for mode in MODES.values() for key in (mode.key, *mode.command_keys)]
    return (*RUN_COMMAND_KEYS, *dict.fromkeys(owned))


def mode_problem(opts: Any) -> str | None:
    """What is wrong with the modes of ``opts`` (one line), or None: two at once, or one without
    the checkpoint it needs."""
    chosen = chosen_modes(opts)
    if len(chosen) > 1:
        return f"{chosen[1].flag}: cannot be combined with {chosen[0].flag}; run them one at a time"
    mode = mode_of(opts)
    if mode.needs_checkpoint and not opts.loadModel:
        return f"{mode.flag}: needs --loadModel PATH, {mode.checkpoint_role}"
    return None
