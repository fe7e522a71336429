"""Shared test helpers: the repository root on sys.path, tiny run options, the shared fixtures,
and the helpers more than one test module uses (main.py in-process, torchrun, metrics.jsonl,
writable copies of the fixtures)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine spinning
# threads slow them down many times over. The environment variable is what a run's own thread
# choice honours (utils/threads.py), in this process and in its children.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# A model and dataset small enough that an epoch takes about a second on one CPU core.
TINY_RUN = [
    "--inputRes", "32", "--outputRes", "8", "--imageRes", "48",
    "--nChannels", "16", "--nStack", "2", "--nModules", "1", "--nReductions", "2",
    "--syntheticTrain", "48", "--syntheticVal", "16", "--data_loader_size", "8",
    "--nThreads", "0", "--valInterval", "1", "--saveInterval", "1", "--progress", "none",
    "--optimizer_type", "Adam", "--LR", "2e-3",
]  # fmt: skip


# Each registered model at widths small enough for a CPU test, whatever the test's input size; the
# options that depend on the size (an hourglass's pooling steps, a trunk's input sides) are each
# test's own. The one table of small models: tests add sizes to it, never widths.
SMALL_WIDTHS = {
    "StackedHourGlass": ["--nChannels", "16", "--nStack", "2"],
    "PoseAttention": ["--nChannels", "16", "--nStack", "2", "--LRNSize", "3"],
    "PyraNet": ["--nChannels", "16", "--nStack", "2", "--baseWidth", "4"],
    "DeepPose": ["--baseName", "resnet18", "--nCascade", "1"],
    "ChainedPredictions": ["--modelName", "resnet18"],
    "SimpleBaseline": ["--baseName", "resnet18", "--deconvFilters", "16"],
    "HRNet": ["--hrnetWidth", "4"],
    "RTMPose": ["--rtmposeSize", "t"],
    "ViTPose": ["--vitWidth", "32", "--vitDepth", "2", "--vitNumHeads", "4", "--deconvFilters", "16"],
    "IEF": ["--nIterations", "2"],
    # wider than the 16 joint maps a top-down stage sets beside its features
    "DLCM": ["--nChannels", "24", "--nReductions", "2"],
}  # fmt: skip
# a paper's width or size names its conf file
CONF_NAMES = {"HRNet": "HRNet-W32", "RTMPose": "RTMPose-t", "ViTPose": "ViTPose-S"}
CONF_FILES = {
    name: REPO_ROOT / "conf" / "models" / f"{CONF_NAMES.get(name, name)}.defconf" for name in SMALL_WIDTHS
}


def small_model(name: str, *sizes: str) -> list[str]:
    """``name``'s small widths (``SMALL_WIDTHS``) with a test's size options."""
    return [*SMALL_WIDTHS[name], *sizes]


def parse_error(capsys, argv: list[str], skip_notes: bool = False) -> str:
    """parse_options(argv) must exit with status 2 and one stderr line, which is returned. With
    ``skip_notes`` the ``note:`` lines printed beside it are left out before counting."""
    from utils.options import parse_options

    with pytest.raises(SystemExit) as exit_info:
        parse_options(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    if skip_notes:
        lines = [line for line in lines if not line.startswith("note:")]
    assert len(lines) == 1, err
    return lines[0]


def error_lines(err: str) -> list[str]:
    """The lines of ``err`` other than notes (``note: ...``)."""
    return [line for line in err.splitlines() if not line.startswith("note:")]


# ---------------------------------------------------------------------------------------------
# main.py in this process, and in subprocesses
# ---------------------------------------------------------------------------------------------


def run(tmp_path: Path, *extra: str) -> Path:
    """``main.main`` on the tiny run with ``--expDir tmp_path`` and ``extra``; it must return 0."""
    import main as entry

    assert entry.main([*TINY_RUN, "--expDir", str(tmp_path), *extra]) == 0
    return tmp_path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny run, trained once for the session: the modules that only read a
    checkpoint (-predict, -export) share it."""
    return run(tmp_path_factory.mktemp("trained"), "--nEpochs", "1", "--expID", "m") / "m" / "last.pth"


def cli_output(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """main.py's ``cli`` in-process: (exit status, stdout, stderr); any other exception (a
    traceback) propagates and fails the test."""
    import main as entry

    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    capsys.readouterr()
    try:
        status = entry.cli()
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(monkeypatch, capsys, args: list[str], no_epoch: bool = False) -> tuple[int, list[str]]:
    """main.py's ``cli`` in-process: its status and its stderr lines other than notes. With
    ``no_epoch`` no epoch may start (one fails the test)."""
    import main as entry

    if no_epoch:
        import train

        monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("an epoch ran"))
    monkeypatch.setattr(sys, "argv", ["main.py", *args])
    status = entry.cli()
    return status, error_lines(capsys.readouterr().err)


def python_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


# one torch thread, as the in-process runs of this suite use (taken when the suite starts)
def child_env() -> dict[str, str]:
    """The environment of a main.py or torchrun child, made when it starts (so it carries this
    test's POSE_CACHE_DIR): one torch thread, and the CPU with gloo whatever GPUs the machine has
    (the CPU's exact numbers are what these tests check; tests/test_cuda.py has the GPU's). A
    child killed by a native abort prints every thread's Python stack, so a failure names where."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1"}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def torchrun(processes: int, *args: str, script: str = "main.py", timeout: int = 300):
    """``torchrun --nproc_per_node processes script args`` (gloo on the CPU), its output captured."""
    return subprocess.run(
        [*TORCHRUN, "--nproc_per_node", str(processes), script, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=child_env(),
    )  # fmt: skip


def same_weights(a: Path, b: Path) -> None:
    """The two checkpoints are of one epoch and hold bit-equal weights."""
    from utils.checkpoint import load_checkpoint

    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["epoch"] == second["epoch"]
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key


def free_port() -> int:
    """A TCP port on 127.0.0.1 free now (for MASTER_PORT, SLURM's daemons)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_metrics(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl, one dict per evaluation."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The shared fixtures, and writable copies of them
# ---------------------------------------------------------------------------------------------


def require_fixture(path: Path) -> Path:
    """``path`` inside ../shared/data, or skip the test saying where it was looked for."""
    if not path.exists():
        pytest.skip(f"fixture {path} not found (shared test data lives in ../shared/data next to the repo)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DATA} (clone the project next to shared/)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def index_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Annotation index caches (datasets/index_cache.py) go to a fresh temporary folder per test,
    never the home directory; subprocesses (main.py runs, torchrun) inherit the variable."""
    folder = tmp_path_factory.mktemp("index-cache")
    monkeypatch.setenv("POSE_CACHE_DIR", str(folder))
    return folder


def copy_fixture(source: Path, target: Path) -> Path:
    """A writable copy of a read-only fixture folder."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    os.chmod(target, 0o755)
    return target


@pytest.fixture
def coco_copy(shared_data, tmp_path) -> Path:
    return copy_fixture(shared_data / "coco_mini", tmp_path / "coco")


@pytest.fixture
def mpii_copy(shared_data, tmp_path) -> Path:
    return copy_fixture(shared_data / "mpii_mini", tmp_path / "mpii")


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_h5(path: Path, change) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        fields = {key: f[key][()] for key in f}
    fields["imgname"] = list(fields["imgname"])
    change(fields)
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            f[key] = np.array(value)


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite checks the CPU's exact numbers (resumes bit for bit, two runs alike), so on a GPU
    machine every test not marked ``cuda`` still runs on the CPU: in this process and in the
    main.py and torchrun processes it starts. tests/test_cuda.py has the GPU's own checks."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
