"""The CPU-sized configuration of every registered model, shared by the speed benchmarks
(training_step.py, evaluation_inference.py) so their tables describe the same networks."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf" / "models"
INPUT_RES, OUTPUT_RES = 128, 32
# Narrow versions of each paper configuration, small enough for a few CPU steps a second; a
# model registered later with no entry here runs at its conf file's settings at 128 / 32.
SMALL: dict[str, list[str]] = {
    "StackedHourGlass": [],  # the demo configuration as it is
    "PoseAttention": ["--nChannels", "64", "--nStack", "2", "--nReductions", "3"],
    "PyraNet": ["--nChannels", "64", "--nStack", "2", "--nReductions", "3"],
    "DeepPose": ["--baseName", "resnet18", "--nCascade", "1", "--cropSize", "32"],
    "ChainedPredictions": ["--modelName", "resnet18"],
    "SimpleBaseline": ["--baseName", "resnet18", "--deconvFilters", "128"],
    "HRNet": ["--hrnetWidth", "16"],
    "RTMPose": ["--rtmposeSize", "t"],
    "DLCM": ["--nChannels", "64", "--nReductions", "3"],
}


def conf_file(name: str) -> Path:
    """The model's conf file: the demo's for the Stacked Hourglass, else ``<name>.defconf`` or
    the first file whose ``model:`` line names it (``HRNet-W32.defconf``)."""
    if name == "StackedHourGlass":
        return CONF_DIR / "StackedHourGlass-demo.defconf"
    if (CONF_DIR / f"{name}.defconf").is_file():
        return CONF_DIR / f"{name}.defconf"
    for path in sorted(CONF_DIR.glob("*.defconf")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if any(line.replace("=", ":").replace(" ", "") == f"model:{name}" for line in lines):
            return path
    raise FileNotFoundError(f"no conf file in {CONF_DIR.relative_to(REPO_ROOT)} names model {name}")


def model_argv(name: str) -> list[str]:
    """Command-line options that build ``name`` at the CPU size."""
    return [
        "-ModelConfig", str(conf_file(name)), "--model", name,
        "--inputRes", str(INPUT_RES), "--outputRes", str(OUTPUT_RES), "--aspectRatio", "1",
        *SMALL.get(name, []),
    ]  # fmt: skip
