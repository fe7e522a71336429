"""Shared test helpers: the repository root on sys.path, tiny run options, the shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine spinning
# threads slow them down many times over.
torch.set_num_threads(1)

# A model and dataset small enough that an epoch takes about a second on one CPU core.
TINY_RUN = [
    "--inputRes", "32", "--outputRes", "8", "--imageRes", "48",
    "--nChannels", "16", "--nStack", "2", "--nModules", "1", "--nReductions", "2",
    "--syntheticTrain", "48", "--syntheticVal", "16", "--data_loader_size", "8",
    "--nThreads", "0", "--valInterval", "1", "--saveInterval", "1", "--progress", "none",
    "--optimizer_type", "Adam", "--LR", "2e-3",
]  # fmt: skip


def parse_error(capsys, argv: list[str]) -> str:
    """parse_options(argv) must exit with status 2 and one stderr line, which is returned."""
    from utils.options import parse_options

    with pytest.raises(SystemExit) as exit_info:
        parse_options(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


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


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite checks the CPU's exact numbers (resumes bit for bit, two runs alike), so on a GPU
    machine every test not marked ``cuda`` still runs on the CPU: in this process and in the
    main.py and torchrun processes it starts. tests/test_cuda.py has the GPU's own checks."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
