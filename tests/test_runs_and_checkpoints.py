"""Runs are append-only, a checkpoint alone is enough to evaluate, resume or fine-tune, and every
command-line slip is named in one line. Driven through main.main (and a subprocess where the exit
status or the imports matter) on tiny synthetic runs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import main as entry
from conftest import REPO_ROOT, TINY_RUN, parse_error, read_metrics
from utils.checkpoint import load_checkpoint
from utils.options import MODEL_NAMES, parse_options

# non-default sizes: nothing about them can come from the defaults
TRAINED = [*TINY_RUN, "--nChannels", "8", "--inputRes", "48", "--outputRes", "12", "--syntheticTrain", "24"]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch run with non-default sizes; tests copy what they change."""
    root = tmp_path_factory.mktemp("runs")
    assert entry.main([*TRAINED, "--nEpochs", "2", "--expDir", str(root), "--expID", "source"]) == 0
    return root / "source"


@pytest.mark.e2e
def test_later_commands_leave_the_source_run_byte_identical(trained: Path, capsys) -> None:
    before = tree_hashes(trained)
    root, best = trained.parent, str(trained / "best.pth")
    base = ["--expDir", str(root), "--progress", "none", "--nThreads", "0"]
    # a fine-tune, an evaluation and a browse, none with --expID: each gets its own new run
    assert (
        entry.main([*base, "--loadModel", best, "--loadOptim", "0", "--loadEpoch", "0", "--nEpochs", "1"])
        == 0
    )
    assert entry.main([*base, "-test", "--loadModel", best]) == 0
    assert entry.main([*base, "--browse", "2", "--loadModel", best]) == 0
    # a new run that names the existing run is refused, with a free name suggested
    err = parse_error(capsys, [*TRAINED, "--expDir", str(root), "--expID", "source"], skip_notes=True)
    assert "expID: run directory" in err and "already exists" in err and "--expID source-2" in err
    assert tree_hashes(trained) == before
    new_runs = sorted(p.name for p in root.iterdir() if p.name != "source")
    assert (
        len(new_runs) == 3
        and any("-finetune-" in n for n in new_runs)
        and any("-test-" in n for n in new_runs)
    )
    for run in new_runs:  # each records the checkpoint it came from
        assert f"loadModel: {best}" in (root / run / "config.defconf").read_text()


@pytest.mark.e2e
def test_a_test_run_writes_its_summary_to_log_txt(trained: Path, tmp_path: Path) -> None:
    checkpoint = trained / "best.pth"
    command = ["-test", "--loadModel", str(checkpoint), "--expDir", str(tmp_path), "--expID", "t"]
    assert entry.main([*command, "--progress", "none"]) == 0
    (tested,) = read_metrics(tmp_path / "t")
    summary = f"PCKh {tested['PCKh']:.2f} | loss {tested['loss']:.6f} | PCK {tested['PCK']:.2f}"
    threads = "CPU threads: 1 (OMP_NUM_THREADS=1)"
    assert (tmp_path / "t" / "log.txt").read_text() == f"{threads}\ntest {checkpoint.resolve()}: {summary}\n"


@pytest.mark.e2e
def test_run_directory_is_absolute_on_a_fresh_run_as_on_a_resume(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path / "exp" / "old")
    fresh = parse_options([*TRAINED, "--expDir", "exp", "--expID", "new"]).run_dir
    resumed = parse_options(["--loadModel", "exp/old/last.pth", "--nEpochs", "3"]).run_dir
    assert (fresh, resumed) == ((tmp_path / "exp" / "new").resolve(), (tmp_path / "exp" / "old").resolve())
    assert entry.main([*TRAINED, "--nEpochs", "1", "--expDir", "exp", "--expID", "new"]) == 0
    assert f"run directory: {fresh}" in capsys.readouterr().out.splitlines()


@pytest.mark.e2e
def test_test_and_resume_from_the_checkpoint_alone(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config_before = (run / "config.defconf").read_bytes()
    last_val = [r for r in read_metrics(run) if r["split"] == "val"][-1]
    # -test with nothing but the checkpoint: sizes, model and data come from its stored config
    assert (
        entry.main(["-test", "--loadModel", str(run / "last.pth"), "--expDir", str(tmp_path), "--expID", "t"])
        == 0
    )
    (tested,) = read_metrics(tmp_path / "t")
    assert tested["PCKh"] == pytest.approx(last_val["PCKh"])
    # resume with nothing but the checkpoint and a longer schedule: continues in its own run
    assert entry.main(["--loadModel", str(run / "last.pth"), "--nEpochs", "3"]) == 0
    assert [r["epoch"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3]
    assert load_checkpoint(run / "last.pth")["config"]["nChannels"] == 8
    assert (run / "config.defconf").read_bytes() == config_before  # the run's config is not rewritten
    log = (run / "log.txt").read_text()
    assert f"resumed from {run / 'last.pth'} with nEpochs 2 -> 3" in log


@pytest.mark.e2e
def test_a_resume_refuses_data_or_model_changes(trained: Path, capsys) -> None:
    checkpoint = str(trained / "last.pth")
    err = parse_error(
        capsys, ["--loadModel", checkpoint, "--inputRes", "96", "--maxRotate", "10"], skip_notes=True
    )
    assert "a resume continues the same run" in err
    assert "inputRes stored 48, typed 96" in err and "maxRotate stored 30.0, typed 10.0" in err
    assert "--allowConfigChange 1" in err
    # steering keys may change; nothing is written by parsing
    opts = parse_options(["--loadModel", checkpoint, "--nEpochs", "5", "--valInterval", "2"])
    assert opts.resume_changes == {"nEpochs": (2, 5), "valInterval": (1, 2)}
    assert opts.run_dir == trained.resolve()
    # a fine-tune may change anything, into a new run
    opts = parse_options(
        ["--loadModel", checkpoint, "--loadOptim", "0", "--inputRes", "64", "--outputRes", "16"]
    )
    assert opts.inputRes == 64 and opts.run_dir != trained.resolve()


@pytest.mark.e2e
def test_a_checkpoint_of_another_model_is_named_in_one_line(trained: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "main.py", "-test", "--loadModel", str(trained / "last.pth"), "--nStack", "1",
         "--expDir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("main.py: error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert (
        "checkpoint: StackedHourGlass, 16 joints, 48x48; config: StackedHourGlass, 16 joints, 48x48"
        in lines[0]
    )
    assert "options: nStack 2 vs 1" in lines[0]
    assert 'first difference: unexpected key(s) in state_dict "hourglasses.1.' in lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--nEpoch", "1"], "unknown option '--nEpoch' on the command line; did you mean '--nEpochs'?"),
        (["--model", "Hourglass"], "unknown model 'Hourglass'"),
        (["--DataConfig", "x.defconf"], "did you mean '-DataConfig' (one dash)?"),
        (
            ["-nEpochs", "1"],
            "unknown option '-nEpochs' on the command line; did you mean '--nEpochs' (two dashes)?",
        ),
        (["--amp", "fp8"], "amp: 'fp8' is not one of none, bf16, fp16"),
    ],
)
def test_command_line_slips_are_named(capsys, argv: list[str], expected: str) -> None:
    err = parse_error(capsys, argv, skip_notes=True)
    assert expected in err
    assert "defconf" not in err.replace("x.defconf", "")  # a command-line slip never blames a config file


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "mine.defconf"
    config.write_text("nStack: two\n")
    err = parse_error(capsys, ["-ModelConfig", str(config)], skip_notes=True)
    assert "--nStack: invalid int value: 'two'" in err and f"(in {config})" in err
    err = parse_error(capsys, ["-ModelConfig", str(config), "--nStack", "x"], skip_notes=True)
    assert "invalid int value: 'x'" in err and "in " + str(config) not in err  # typed, so not the file


@pytest.mark.e2e
def test_help_lists_the_models_once_each_default_and_needs_no_torch() -> None:
    from models import list_models

    assert ", ".join(list_models()) == MODEL_NAMES
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "main.py", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    assert MODEL_NAMES in " ".join(result.stdout.split())
    assert (
        "(default: by layout) (default" not in result.stdout and result.stdout.count("(default: None)") == 0
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "numpy" not in imported


def test_the_conf_files_commented_path_examples_work_uncommented(shared_data: Path, tmp_path: Path) -> None:
    from datasets import build_datasets, make_codec

    mpii, coco = shared_data / "mpii_mini", shared_data / "coco_mini"
    # MPII layout under dataDir with the gt_valid.mat the example names
    mpii_root = tmp_path / "mpii"
    (mpii_root / "annot").mkdir(parents=True)
    (mpii_root / "images").symlink_to(mpii, target_is_directory=True)
    (mpii_root / "annot" / "valid.json").write_bytes((mpii / "test_mpii.json").read_bytes())
    (mpii_root / "annot" / "gt_valid.mat").write_bytes((mpii / "gt_valid_first5.mat").read_bytes())
    # COCO layout with the detection file the example names
    coco_root = tmp_path / "coco"
    (coco_root / "annotations").mkdir(parents=True)
    (coco_root / "images").mkdir()
    (coco_root / "images" / "val2017").symlink_to(coco, target_is_directory=True)
    (coco_root / "annotations" / "person_keypoints_val2017.json").write_bytes(
        (coco / "test_coco.json").read_bytes()
    )
    detections = coco_root / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json"
    detections.parent.mkdir()
    detections.write_bytes((coco / "test_coco_det_AP_H_56.json").read_bytes())

    for name, root, key in (("mpii", mpii_root, "headBoxesMat"), ("coco", coco_root, "bboxFile")):
        text = (REPO_ROOT / "conf" / "datasets" / f"{name}.defconf").read_text()
        assert f"# {key}: " in text
        config = tmp_path / f"{name}.defconf"
        config.write_text(text.replace(f"# {key}: ", f"{key}: "))
        opts = parse_options(
            ["-DataConfig", str(config), "--dataDir", str(root), "--inputRes", "64", "--outputRes", "16"]
        )
        codec = make_codec("heatmap", (64, 64), (16, 16), 1.0)
        _, val = build_datasets(
            opts.dataset, codec, (64, 64), None, 0, with_train=False, data_dir=opts.dataDir,
            head_boxes_mat=opts.headBoxesMat, bbox_file=opts.bboxFile,
        )  # fmt: skip
        if name == "mpii":
            assert val.has_head_sizes and len(val) == 5
        else:
            assert val.bbox_file == detections and len(val) == 118


@pytest.mark.e2e
def test_config_defconf_reads_back_as_the_run_options(trained: Path) -> None:
    """config.defconf is usable as a config file again: every key a file can set comes back."""
    from utils.options import config_file_keys

    stored = load_checkpoint(trained / "last.pth")["config"]
    again = parse_options(["-ModelConfig", str(trained / "config.defconf"), "--expID", "other"]).config
    for key in config_file_keys() - {"expID", "help"}:
        assert again[key] == stored[key], key
    assert "flipTest: false" in (trained / "config.defconf").read_text()  # false values are written
