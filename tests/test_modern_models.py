"""SimpleBaseline and HRNet: the authors' sizes, the shapes they produce, and one epoch on the real
COCO and MPII fixtures through main.py (non-square crops, flip test, bf16 autocast, a resume)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

import main as entry
from conftest import REPO_ROOT, TINY_RUN
from models import build_model
from models.complexity import count_parameters
from utils.checkpoint import load_checkpoint
from utils.options import parse_options

CONF = REPO_ROOT / "conf"


def meta_parameters(name: str, **options) -> int:
    """Parameter count of a model built on the meta device: no memory, no initialisation cost."""
    with torch.device("meta"):
        return count_parameters(build_model(name, **options))


def test_paper_networks_have_the_authors_parameter_counts() -> None:
    # exact counts of the authors' networks (their code, transcribed in tests/test_import_modern.py)
    assert meta_parameters("HRNet", n_joints=17) == 28_536_113
    assert meta_parameters("SimpleBaseline", n_joints=17) == 33_999_697
    # the other published variants, against the authors' tables (0.1 M; their README's #Params)
    published = {
        ("HRNet", 48): 63.6,
        ("SimpleBaseline", "resnet101"): 53.0,
        ("SimpleBaseline", "resnet152"): 68.6,
    }
    for (name, variant), millions in published.items():
        options = {"hrnet_width": variant} if name == "HRNet" else {"base_name": variant}
        assert round(meta_parameters(name, n_joints=17, **options) / 1e6, 1) == millions, (name, variant)


@pytest.mark.parametrize(("conf", "parameters"), [("HRNet-W32", 28_536_113), ("SimpleBaseline", 33_999_697)])
def test_conf_files_build_the_paper_networks_at_256x192(conf: str, parameters: int) -> None:
    opts = parse_options(
        ["-ModelConfig", str(CONF / "models" / f"{conf}.defconf"), "-DataConfig", str(CONF / "datasets" / "coco.defconf"),
         "--dataDir", str(REPO_ROOT)]
    )  # fmt: skip
    assert (opts.inputRes, round(opts.inputRes * opts.aspectRatio), opts.outputRes, opts.hmGauss) == (
        256,
        192,
        64,
        2,
    )
    assert (opts.optimizer_type, opts.LR, opts.nJoints) == ("Adam", 1e-3, 17)
    with torch.device("meta"):
        model = build_model(opts.model, **vars(opts))
        (heatmaps,) = model(torch.empty(1, 3, 256, 192))
    assert count_parameters(model) == parameters
    assert tuple(heatmaps.shape) == (1, 17, 64, 48)


@pytest.mark.parametrize(
    ("name", "options", "size", "heatmap"),
    [
        ("HRNet", {"hrnet_width": 4}, (64, 48), (16, 12)),
        ("HRNet", {"hrnet_width": 4}, (40, 36), (10, 9)),  # not multiples of 32: still 1/4
        ("SimpleBaseline", {"base_name": "resnet18", "deconv_filters": 8}, (64, 32), (16, 8)),
        ("SimpleBaseline", {"base_name": "resnet18", "deconv_filters": 8, "n_deconv": 2}, (64, 32), (8, 4)),
    ],
)
def test_one_stage_of_heatmaps_at_the_expected_size(name, options, size, heatmap) -> None:
    torch.manual_seed(0)
    model = build_model(name, n_joints=5, **options).eval()
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        outputs = model(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (low,) = model(image)
    assert isinstance(outputs, list) and len(outputs) == 1
    assert tuple(outputs[0].shape) == (2, 5, *heatmap)
    assert torch.isfinite(outputs[0]).all() and torch.isfinite(low.float()).all()


def test_bad_model_options_are_one_line(capsys) -> None:
    from conftest import parse_error

    conf = str(CONF / "models" / "SimpleBaseline.defconf")
    assert "nDeconv: must be >= 1, got 0" in parse_error(capsys, ["-ModelConfig", conf, "--nDeconv", "0"])
    hrnet = str(CONF / "models" / "HRNet-W32.defconf")
    assert "hrnetWidth: must be >= 1" in parse_error(capsys, ["-ModelConfig", hrnet, "--hrnetWidth", "0"])
    err = parse_error(capsys, ["-ModelConfig", hrnet, "--inputRes", "256", "--outputRes", "32"])
    assert "outputRes" in err and "1/4" in err
    err = parse_error(
        capsys, ["-ModelConfig", str(CONF / "models" / "PyraNet.defconf"), "--inputNorm", "bgr"]
    )
    assert "inputNorm: model PyraNet reads ImageNet-normalised RGB only" in err


# The fixture runs: tiny networks, one epoch, the real data pipeline and metrics.
TINY = {
    "HRNet": ["-ModelConfig", str(CONF / "models" / "HRNet-W32.defconf"), "--hrnetWidth", "4"],
    "SimpleBaseline": ["-ModelConfig", str(CONF / "models" / "SimpleBaseline.defconf"), "--baseName", "resnet18",
                       "--deconvFilters", "16"],
}  # fmt: skip
# ResNet trunks need sides that are multiples of 32: 128x96 for COCO's aspect ratio
SIZES = {
    ("HRNet", "coco"): ["--inputRes", "32", "--outputRes", "8"],
    ("HRNet", "mpii"): ["--inputRes", "32", "--outputRes", "8"],
    ("SimpleBaseline", "coco"): ["--inputRes", "128", "--outputRes", "32"],
    ("SimpleBaseline", "mpii"): ["--inputRes", "64", "--outputRes", "16"],
}


def fixture_data(shared_data, dataset: str) -> list[str]:
    if dataset == "coco":
        return ["-DataConfig", str(CONF / "datasets" / "coco.defconf"), "--dataDir", str(shared_data / "coco_mini"),
                "--trainAnnotation", "test_coco.json", "--valAnnotation", "test_coco.json", "--imageDir", "."]  # fmt: skip
    return ["-DataConfig", str(CONF / "datasets" / "mpii.defconf"), "--dataDir", str(shared_data / "mpii_mini"),
            "--trainAnnotation", "test_mpii.json", "--valAnnotation", "valid_first5.h5"]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("dataset", ["coco", "mpii"])
def test_one_epoch_on_the_real_fixtures(name: str, dataset: str, shared_data, tmp_path) -> None:
    argv = [*TINY_RUN, *TINY[name], *SIZES[name, dataset], *fixture_data(shared_data, dataset)]
    argv += ["--expDir", str(tmp_path), "--nEpochs", "1", "--expID", "run"]
    # COCO: 128x96 or 32x24 crops, so the heatmaps are non-square; bf16 autocast on the CPU there
    if dataset == "coco":
        argv += ["--amp", "bf16"]
    assert entry.main(argv) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in records if r["split"] == "val"]
    main_metric = "AP" if dataset == "coco" else "PCKh"
    assert val["epoch"] == 1 and main_metric in val and math.isfinite(val["loss"])
    config = load_checkpoint(run / "last.pth")["config"]
    assert config["model"] == name and config["flipTest"]  # validation used the flip test
    if name == "HRNet" and dataset == "coco":  # a resume continues the run with a second epoch
        assert entry.main(["--loadModel", str(run / "last.pth"), "--nEpochs", "2", "--progress", "none"]) == 0
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert max(epochs) == 2


@pytest.mark.slow  # about 10 s: both paper-size networks, FLOPs counted
def test_readme_rows_are_what_the_benchmark_prints() -> None:
    spec = importlib.util.spec_from_file_location(
        "model_complexity", REPO_ROOT / "benchmarks" / "model_complexity.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    for name in ("HRNet", "SimpleBaseline"):
        row = benchmark.table_row(name, {})
        assert row in readme, row
        assert "| 256 x 192 | 1 |" in row
