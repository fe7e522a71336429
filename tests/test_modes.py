"""A mode is one entry in modes.py's table: a toy mode registered here, from this file alone, gets
its option, its dispatch, its checks, its run directory and its command keys."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import main as entry
from conftest import parse_error
from modes import MODES, TRAINING, Mode, command_keys, mode_of, register_mode

CALLS: list = []


def run(opts) -> int:
    """The toy mode itself: what main.py dispatched to."""
    CALLS.append(opts)
    return 7


@pytest.fixture
def calibrate():
    mode = register_mode(
        Mode(
            "calibrate", "-calibrate", __name__, "fit a confidence calibration to --loadModel's outputs",
            value="count", metavar="BINS", run_dir_suffix="-calibrate", command_keys=("calibrationBins",),
        )
    )  # fmt: skip
    CALLS.clear()
    yield mode
    MODES.pop("calibrate")


def test_a_mode_registered_in_a_test_file_runs_with_its_own_option_checks_and_run_directory(
    calibrate: Mode, checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import train

    monkeypatch.setattr(train, "run", lambda opts: pytest.fail("a mode fell through to training"))
    from utils.options import build_parser

    assert "-calibrate BINS" in " ".join(build_parser().format_help().split())
    status = entry.main(["-calibrate", "10", "--loadModel", str(checkpoint), "--expDir", str(tmp_path)])
    assert status == 7 and len(CALLS) == 1
    (opts,) = CALLS
    assert mode_of(opts) is calibrate and opts.calibrate == 10
    # not a resume: a new run directory named by the mode, never the checkpoint's own
    assert opts.run_dir.parent == tmp_path.resolve() and "-calibrate-" in opts.run_dir.name
    assert opts.run_dir != checkpoint.parent.resolve()
    assert {"calibrate", "calibrationBins"} <= set(command_keys())
    # one mode at a time, and a checkpoint where it needs one
    line = parse_error(capsys, ["-calibrate", "3", "-test", "--loadModel", str(checkpoint)])
    assert "-calibrate: cannot be combined with -test; run them one at a time" in line
    assert "-calibrate: needs --loadModel PATH, the checkpoint to use" in parse_error(
        capsys, ["-calibrate", "3"]
    )


def test_without_a_mode_option_a_command_trains(tmp_path: Path) -> None:
    from utils.options import parse_options

    assert mode_of(parse_options(["--expDir", str(tmp_path)])) is TRAINING
    assert [mode.flag for mode in MODES.values()] == ["-test", "-predict", "-export", "--browse"]
    assert all(mode.module in sys.modules or __import__(mode.module) for mode in MODES.values())
