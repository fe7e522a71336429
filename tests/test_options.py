import subprocess
import sys

import pytest

from conftest import REPO_ROOT, parse_error
from utils.option_checks import parse_optimizer_pars
from utils.options import parse_options


def test_defaults_are_the_demo():
    opts = parse_options([])
    assert opts.dataset == "synthetic" and opts.model == "StackedHourGlass"
    assert (opts.nChannels, opts.nStack, opts.inputRes, opts.outputRes) == (64, 2, 128, 32)
    assert opts.target_type == "heatmap" and opts.nJoints == 16


def test_config_file_values_and_command_line_override(tmp_path):
    config = tmp_path / "model.defconf"
    config.write_text(
        "model: stackedhourglass\nnStack = 3\nLR: 0.01\noptimizer_type: SGD\noptimizer_pars: [momentum=0.9, nesterov=true]\n"
    )
    opts = parse_options(["-ModelConfig", str(config), "--LR", "0.5"])
    assert opts.model == "StackedHourGlass"  # case-insensitive, resolved to the registered name
    assert opts.nStack == 3
    assert opts.LR == 0.5  # command line wins over the file
    assert opts.optimizer_kwargs == {"momentum": 0.9, "nesterov": True}


def test_original_spellings_are_accepted(tmp_path):
    config = tmp_path / "old.defconf"
    config.write_text("model = StackedHourGlass\nTargetType: heatmap\nshuffle: 1\nloadOptim: 0\n")
    opts = parse_options(["-ModelConfig", str(config), "-usedouble", "-dont_pin_memory"])
    assert opts.usedouble and opts.dont_pin_memory and opts.shuffle is True and opts.loadOptim is False


def test_original_project_config_file_still_parses(tmp_path, capsys):
    # the original conf/datasets/mpii.defconf, with its retired keys
    config = tmp_path / "mpii.defconf"
    config.write_text(
        "expDir: exp\nexpID: debug\nvisdom: 0\ndataDir: ../data2\nmaxTranslate: 0.02\nmaxScale: 0.25\n"
        "maxRotate: 30\ninputRes: 256\nimageRes: 280\nhmGauss: 1\nnJoints: 16\ndataset: MPII\nshuffle: 1\n"
        "nThreads: 4\ngpuid: 1\nnEpochs: 200\nworldCoors = ../mpii/worldCoods.mat\nheadSize = ../mpii/headsize.mat\n"
    )
    opts = parse_options(["-DataConfig", str(config), "-dont_pin_memory", "1", "--dataDir", str(tmp_path)])
    assert opts.dataset == "MPII" and opts.dont_pin_memory is True and opts.gpuid == 1
    err = capsys.readouterr().err
    assert "note: option worldCoors is ignored" in err and "note: option visdom is ignored" in err


def test_optimizer_pars_repeatable():
    assert parse_optimizer_pars(["momentum=0.9", "weight_decay=1e-4"]) == {
        "momentum": 0.9,
        "weight_decay": 1e-4,
    }


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "StackedHourGlas"], "did you mean 'StackedHourGlass'"),
        (["--dataset", "MPI"], "dataset: unknown dataset 'MPI'"),
        (["--nStacks", "3"], "unknown option '--nStacks' on the command line; did you mean '--nStack'?"),
        (["--LR"], "argument --LR: expected one argument"),
        (["--LR", "fast"], "argument --LR: invalid float value: 'fast'"),
        (["--LR", "0"], "LR: must be > 0, got 0.0"),
        (["--LR=-1e-3"], "LR: must be > 0, got -0.001"),
        (["--outputRes", "30"], "outputRes: 30 with inputRes 128 is a ratio StackedHourGlass cannot produce"),
        (["--nJoints", "17"], "nJoints: 17 disagrees with dataset synthetic, which has 16 joints"),
        (["--TargetType", "direct"], "TargetType: 'direct' disagrees with model StackedHourGlass"),
        (["--optimizer_type", "Adamm"], "did you mean 'Adam'"),
        (["--amp", "fp8"], "amp: 'fp8' is not one of none, bf16, fp16"),
        (["--loadModel", "nowhere.pth"], "loadModel: no checkpoint file at nowhere.pth"),
        (["-test"], "-test: needs --loadModel"),
        (["-DataConfig", "missing.defconf"], "-DataConfig: config file not found: missing.defconf"),
    ],
)
def test_bad_input_is_one_line_with_status_2(capsys, argv, expected):
    assert expected in parse_error(capsys, argv)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("nStack", "two", "argument --nStack: invalid int value: 'two'"),
        ("model", "Foo", "model: unknown model 'Foo'"),
        ("LR", "-1", "LR: must be > 0, got -1.0"),
    ],
)
def test_bad_value_says_where_it_came_from(capsys, tmp_path, key, value, expected):
    """The same bad value ends with (in FILE) from a config file, (on the command line) typed."""
    config = tmp_path / "my.defconf"
    config.write_text(f"{key}: {value}\n")
    from_file = parse_error(capsys, ["-ModelConfig", str(config)])
    assert expected in from_file and from_file.endswith(f" (in {config})")
    typed = parse_error(capsys, [f"--{key}={value}"])
    assert expected in typed and typed.endswith(" (on the command line)")
    # a key typed on the command line wins over the file, and is named as typed
    assert parse_error(capsys, ["-ModelConfig", str(config), f"--{key}", value]) == typed


def test_unknown_key_in_config_file_names_the_file(capsys, tmp_path):
    config = tmp_path / "typo.defconf"
    config.write_text("nChanels: 128\n")
    err = parse_error(capsys, ["-ModelConfig", str(config)])
    assert f"unknown option 'nChanels' in {config}" in err and "did you mean 'nChannels'" in err


@pytest.mark.e2e
def test_cli_error_has_no_traceback():
    result = subprocess.run(
        [sys.executable, "main.py", "--model", "NoSuchNet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "main.py: error: model: unknown model 'NoSuchNet': choose one of "
        + result.stderr.split("choose one of ")[1].strip()
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_help_lists_groups():
    result = subprocess.run(
        [sys.executable, "main.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for group in ("data:", "model:", "training:", "checkpoint:", "runtime:"):
        assert group in result.stdout
    assert "--nStack" in result.stdout and "(default: RMSprop)" in result.stdout


def test_coordinate_convention_is_checked(capsys):
    assert parse_options([]).coordConvention == "project"
    assert parse_options(["--coordConvention", "hrnet"]).config["coordConvention"] == "hrnet"  # checkpointed
    err = parse_error(capsys, ["--coordConvention", "caffe"])
    assert "coordConvention: 'caffe' is not one of project, princeton-vl, hrnet, mmpose, udp" in err
    err = parse_error(capsys, ["--coordConvention", "mmpose"])
    assert "coordConvention: 'mmpose' does not apply to heatmap models (StackedHourGlass)" in err
    deeppose = str(REPO_ROOT / "conf/models/DeepPose.defconf")
    err = parse_error(capsys, ["-ModelConfig", deeppose, "--coordConvention", "hrnet"])
    assert "'hrnet' does not apply to regression models (DeepPose): choose project" in err


def test_flip_test_is_on_by_default_for_validation_and_test(tmp_path):
    mpii = str(REPO_ROOT / "conf/datasets/mpii.defconf")
    assert parse_options(["-DataConfig", mpii, "--dataDir", str(tmp_path)]).flipTest is True
    assert parse_options(["--flipTest", "0"]).flipTest is False


def test_the_typed_options_declare_every_key_the_parser_has() -> None:
    """Options (what parse_options returns) types every parser key and every derived value, so
    a key added to the parser without its type, or a stale one, fails here."""
    from utils.options import Options, build_parser

    parser_keys = {action.dest for action in build_parser()._actions if action.dest != "help"}
    derived = {"target_type", "simcc_sigma", "joint_spec", "hierarchy", "milestones", "optimizer_kwargs", "origins",
               "config", "stored_config", "resume_changes", "run_dir", "stage2_augmentation", "restarts_stranded_run",
               "restart_note", "config_file_keys"}  # fmt: skip
    assert set(Options.__annotations__) == parser_keys | derived
    opts = parse_options(["--nEpochs", "1", "--lrMilestones", "2,3"])
    assert isinstance(opts, Options) and all(hasattr(opts, key) for key in Options.__annotations__)
    assert opts.milestones == [2, 3] and opts.target_type == "heatmap" and opts.nJoints == 16
