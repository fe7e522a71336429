"""What a newcomer meets in the first hour: docs that name only what exists, the help text, the
thread count a shared CPU needs, a first -predict picture, and commands that do nothing saying so."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main as entry
from conftest import REPO_ROOT, parse_error, run
from utils.threads import plan_threads

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# options the docs show for other programs, by program; anything else that looks like an option
# must be one of the project's own (main.py's or one of its scripts')
OTHER_PROGRAMS_OPTIONS = {
    "torchrun": {"--nproc_per_node", "--nnodes", "--max-restarts", "--rdzv-backend", "--rdzv-endpoint"},
    "sbatch / srun": {
        "--cpus-per-task", "--gpus-per-node", "--job-name", "--nodes", "--ntasks-per-node", "--open-mode",
        "--output", "--requeue", "--signal", "--time", "-n",
    },
    "pytest": {"-m", "-n", "--durations"},
    "python / pip / shell": {"-m", "-r", "-p", "-c"},
    "tensorboard": {"--logdir"},
    "kill": {"-TERM", "-PGID"},
    "argparse": {"--help", "-h"},
    "the original Torch code of DLCM": {"-catPartEnds"},
    # ViTPose's sizes written as suffixes (`ViTPose-S`, `-B`); the docs' own examples of what is
    # refused; the placeholder of any key
    "examples": {"-S", "-B", "-L", "-H", "--nEpoch", "--nStacks", "-nEpochs", "--key"},
}  # fmt: skip


def project_options() -> set[str]:
    """Every option string any of the project's programs defines (main.py, metrics, importers,
    benchmarks), read from their add_argument calls, and the modes' flags (modes.py)."""
    found = set()
    for path in REPO_ROOT.rglob("*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        found.update(re.findall(r"add_argument\(\s*\"(-{1,2}\w+)\"", path.read_text()))
    from modes import MODES

    return found | {mode.flag for mode in MODES.values()}


def code_of(text: str) -> str:
    """The page's code: fenced blocks and inline spans, one per line (where commands and options are)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return "\n".join([*blocks, *re.findall(r"`([^`\n]+)`", prose)])


def test_every_option_file_and_module_the_docs_name_exists() -> None:
    known = project_options() | set().union(*OTHER_PROGRAMS_OPTIONS.values())
    missing = []
    for page in DOCS:
        text = page.read_text()
        name = page.relative_to(REPO_ROOT)
        # an option is typed at the start of a span or after a space
        for option in re.findall(r"(?:(?<=\s)|^)(-{1,2}[A-Za-z]\w*)(?=[\s=,)\]]|$)", code_of(text), re.M):
            if option not in known:
                missing.append(f"{name}: option {option}")
        folders = "conf|benchmarks|tests|docs|utils|models|datasets|metrics|video"
        for path in re.findall(rf"(?<![\w/.-])((?:{folders})/[\w./-]+\.(?:defconf|py|sh|md))", text):
            if not (REPO_ROOT / path).exists():
                missing.append(f"{name}: file {path}")
        for module in re.findall(r"python -m ((?:metrics|models|datasets|benchmarks)\.\w+)", text):
            if not (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file():
                missing.append(f"{name}: module {module}")
    assert not missing, "\n".join(missing)


def test_running_md_lists_every_model_config() -> None:
    listed = (REPO_ROOT / "docs" / "running.md").read_text()
    unlisted = [
        p.stem
        for p in sorted((REPO_ROOT / "conf" / "models").glob("*.defconf"))
        if f"`{p.stem}`" not in listed
    ]
    assert not unlisted, f"docs/running.md does not list {unlisted}"


def test_a_config_file_not_found_suggests_the_one_meant(capsys) -> None:
    line = parse_error(capsys, ["-ModelConfig", "conf/models/HRNet.defconf"])
    assert "config file not found: conf/models/HRNet.defconf" in line
    assert line.endswith("did you mean 'conf/models/HRNet-W32.defconf'?")
    # from another folder, the project's conf files are the candidates
    line = parse_error(capsys, ["-DataConfig", "nowhere/mpi.defconf"])
    assert line.endswith(f"did you mean '{REPO_ROOT / 'conf' / 'datasets' / 'mpii.defconf'}'?")
    assert "did you mean" not in parse_error(capsys, ["-DataConfig", "conf/datasets/zzzz.defconf"])


def test_the_help_text_has_the_projects_footer_and_says_what_each_option_does() -> None:
    from datasets.codecs import target_types
    from utils.options import DEFAULT_DETECTOR_THRESHOLD, build_parser

    parser = build_parser()
    text = parser.format_help()
    assert "goo.gl" not in text and "Config file syntax" not in text
    assert "'key: value' per line" in " ".join(text.split())
    undocumented = [
        a.dest for a in parser._actions if a.help != "==SUPPRESS==" and not (a.help or "").strip()
    ]
    assert not undocumented, f"options without help: {undocumented}"
    helps = {a.dest: " ".join((a.help or "").split()) for a in parser._actions}
    assert all(kind in helps["TargetType"] for kind in target_types())
    assert f"{DEFAULT_DETECTOR_THRESHOLD}" in helps["detScoreThreshold"]
    assert "-predict" in helps["bboxFile"] and "frame" in helps["bboxFile"]


@pytest.mark.parametrize("module", ["metrics.mpii", "metrics.coco"])
def test_metrics_errors_name_their_program(module: str, tmp_path: Path, capsys) -> None:
    import importlib

    status = importlib.import_module(module).main([str(tmp_path / "no.file"), str(tmp_path / "no.file")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith(f"python -m {module}: error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_check_stops_at_once_in_one_line_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "benchmarks/cuda_check.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "cuda_check.sh: error: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU machine"
    ]
    assert list(tmp_path.iterdir()) == []  # stopped before its log or any step


# --- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "workers", "cores", "processes", "omp", "threads", "kept_workers", "words"),
    [
        (0, 1, 2, 1, None, 1, 1, "CPU threads: 1 (chosen: 2 cores, 1 kept for DataLoader workers"),
        (0, 0, 2, 1, None, 2, 0, "CPU threads: 2 (chosen: 2 cores, 0 kept for DataLoader workers"),
        (0, 4, 2, 1, None, 1, 2, "2 DataLoader workers instead of --nThreads 4, the cores there are"),
        (0, 1, 8, 2, None, 3, 1, "chosen: 4 of 8 cores, 1 kept for DataLoader workers"),
        (0, 8, 8, 4, None, 1, 2, "2 DataLoader workers instead of --nThreads 8, the cores per process"),
        (0, 1, 2, 1, "3", 3, 1, "CPU threads: 3 (OMP_NUM_THREADS=3)"),
        (2, 1, 2, 1, "1", 2, 1, "CPU threads: 2 (--cpuThreads)"),
        (0, 0, 2, 1, "junk", 2, 0, "(chosen: 2 cores"),
    ],
)  # fmt: skip
def test_threads_leave_a_core_to_each_worker_and_workers_are_capped_at_the_cores(
    asked, workers, cores, processes, omp, threads, kept_workers, words
) -> None:
    plan = plan_threads(asked, workers, cores, processes, omp)
    assert (plan.threads, plan.workers) == (threads, kept_workers)
    assert words in plan.note and plan.workers_capped == (kept_workers < workers)


@pytest.fixture
def chosen_threads(monkeypatch):
    """The run chooses its own thread count (no OMP_NUM_THREADS); the suite's one thread after it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(1)


@pytest.mark.e2e
def test_a_run_says_and_logs_the_threads_it_chose(
    tmp_path: Path, chosen_threads, monkeypatch, capsys
) -> None:
    from utils import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    run(tmp_path, "--nEpochs", "1", "--expID", "t", "--nThreads", "0")
    assert torch.get_num_threads() == 2
    note = "CPU threads: 2 (chosen: 2 cores, 0 kept for DataLoader workers; --cpuThreads N sets it)"
    assert f"note: {note}" in capsys.readouterr().out
    assert note in (tmp_path / "t" / "log.txt").read_text()
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    run(tmp_path, "--nEpochs", "1", "--expID", "w", "--nThreads", "3")
    log = (tmp_path / "w" / "log.txt").read_text()
    assert "CPU threads: 1 (chosen: 1 cores, 1 kept for DataLoader workers" in log
    assert "1 DataLoader workers instead of --nThreads 3" in log


# --- what a command that does nothing says ---------------------------------------------------------


@pytest.mark.e2e
def test_resuming_a_finished_run_says_so_and_an_lr_drop_is_logged(tmp_path: Path, capsys) -> None:
    last = run(tmp_path, "--nEpochs", "1", "--expID", "r") / "r" / "last.pth"
    capsys.readouterr()
    assert entry.main(["--loadModel", str(last)]) == 0
    said = "nothing to train: the run already trained its 1 epochs (--nEpochs 1); --nEpochs 2 or more continues it"
    assert f"note: {said}" in capsys.readouterr().out
    assert said in (tmp_path / "r" / "log.txt").read_text()
    longer = ["--nEpochs", "2", "--dropPreLoaded", "1", "--dropMagPreLoaded", "0.1"]
    assert entry.main(["--loadModel", str(last), *longer]) == 0
    log = (tmp_path / "r" / "log.txt").read_text()
    # the no-op's line came after the checkpoint: the resume that trains rewinds it, as any record
    assert "nothing to train" not in log and "resumed from" in log and "nEpochs 1 -> 2" in log
    assert "LR scaled once by --dropMagPreLoaded 0.1 (--dropPreLoaded 1): 0.002 -> 0.0002" in log
    assert "epoch 2/2" in log and "| lr 0.0002 |" in log


@pytest.mark.e2e
def test_compile_says_it_is_compiling_and_how_long_the_first_step_took(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # torch.compile itself takes minutes on a CPU; what is checked here is what the run says
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **_: compiled.append(module) or module)
    run(tmp_path, "--nEpochs", "1", "--compile", "1")
    out = capsys.readouterr().out
    assert compiled and "compiling the model for training (--compile 1)" in out
    assert re.search(r"compiled: the first training step took \d+\.\d s", out)
    assert out.count("compiled: the first") == 1


def write_video(path: Path, frames: int = 4) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.e2e
def test_a_video_box_file_that_matches_no_frame_says_so(tmp_path: Path, checkpoint: Path, capsys) -> None:
    video = write_video(tmp_path / "clip.mp4")
    boxes = tmp_path / "boxes.json"
    common = [
        "-predict",
        str(video),
        "--loadModel",
        str(checkpoint),
        "--expDir",
        str(tmp_path),
        "--progress",
        "none",
    ]
    boxes.write_text(
        json.dumps([{"file_name": "clip.MP4", "frame": f, "bbox": [4, 4, 30, 30]} for f in range(4)])
    )
    assert entry.main([*common, "--bboxFile", str(boxes), "--expID", "a"]) == 0
    out = capsys.readouterr().out
    assert "0 poses in 4 frames" in out
    assert "note: bboxFile: " in out and "no entry matched a frame read here" in out
    assert "names match exactly: 'clip.MP4' is not 'clip.mp4'" in out
    # a frame alone is the video's own frame
    boxes.write_text(json.dumps([{"frame": f, "bbox": [4, 4, 30, 30]} for f in range(3)]))
    assert entry.main([*common, "--bboxFile", str(boxes), "--expID", "b"]) == 0
    out = capsys.readouterr().out
    assert "3 poses in 4 frames" in out and "no entry matched" not in out


# --- the first picture ----------------------------------------------------------------------------


def test_a_predicted_person_is_drawn_in_its_colour_with_its_box_and_score_and_only_confident_joints() -> None:
    from utils.drawing import draw_person

    canvas = np.zeros((200, 200, 3), dtype=np.uint8)
    pose = np.array([[50.0, 50.0, 0.9], [150.0, 50.0, 0.9], [100.0, 150.0, 0.1]])
    color = (31, 119, 180)
    drawn = draw_person(canvas, pose, [20, 20, 160, 160], "0.63", color, ((0, 1), (1, 2)), (), 0.3)
    assert tuple(drawn[50, 100]) == color  # the limb between the two confident joints
    black = (0, 0, 0)
    assert tuple(drawn[150, 100]) == black and tuple(drawn[125, 125]) == black  # neither joint 2 nor its limb
    assert tuple(drawn[100, 20]) == color and tuple(drawn[180, 100]) == color  # the box's edges
    assert (drawn[20:40, 20:60] != 0).any(axis=-1).sum() > 40  # the label at the box's corner


@pytest.mark.e2e
def test_the_demo_leaves_pictures_its_printed_predict_command_runs_on(tmp_path: Path, capsys) -> None:
    from datasets.coco import box_to_center_scale
    from datasets.codecs import BOX_PADDING

    run(tmp_path, "--nEpochs", "1", "--expID", "d")
    out = capsys.readouterr().out
    command = re.search(r"pictures to try it on: \S+; (python main.py -predict .*)", out).group(1)
    examples = tmp_path / "d" / "examples"
    boxes = json.loads((examples / "boxes.json").read_text())
    assert len(boxes) == 4 and all((examples / b["file_name"]).is_file() for b in boxes)
    # a box frames its person as the training crops do: -predict's padded box is the record's scale
    from datasets.synthetic import SPLIT_IDS, sample_person

    record = sample_person(np.random.default_rng([0, SPLIT_IDS["examples"], 0]), 48)
    center, scale = box_to_center_scale(np.array(boxes[0]["bbox"]), 1.0, BOX_PADDING)
    np.testing.assert_allclose(center, record["center"], atol=0.01)
    assert scale == pytest.approx(record["scale"], abs=0.02)
    arguments = shlex.split(command)[2:]
    assert (
        entry.main([*arguments, "--expDir", str(tmp_path / "p"), "--expID", "p", "--progress", "none"]) == 0
    )
    out = capsys.readouterr().out
    assert "4 poses in 4 frames" in out and "(--drawThreshold)" in out
    assert sorted(p.name for p in (tmp_path / "p" / "p").glob("*.png")) == [
        f"person_{i}.png.png" for i in range(4)
    ]


@pytest.mark.e2e
def test_export_prints_absolute_paths(tmp_path: Path, checkpoint: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert entry.main(["-export", "pose.onnx", "--loadModel", str(checkpoint)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"to {tmp_path / 'pose.onnx'} (opset" in line and line.endswith(f"notes: {tmp_path / 'pose.json'}")


def test_each_person_of_a_picture_is_drawn_in_a_colour_of_its_own(tmp_path: Path) -> None:
    import cv2

    import predict

    frame = predict.Frame("two.png", None, np.zeros((120, 200, 3), dtype=np.uint8))
    frame.boxes = [([10.0, 10.0, 60.0, 100.0], 1.0), ([120.0, 10.0, 60.0, 100.0], 0.5)]
    frame.poses = [
        np.array([[40.0, 30.0, 0.9], [40.0, 90.0, 0.9]]),
        np.array([[150.0, 30.0, 0.9], [150.0, 90.0, 0.1]]),
    ]
    (first, second) = predict.write_outputs([frame], tmp_path, ((0, 1),), (), {}, draw_threshold=0.3)
    assert first["score"] == pytest.approx(0.9) and second["score"] == pytest.approx(0.25)
    drawn = cv2.cvtColor(cv2.imread(str(tmp_path / "two.png.png")), cv2.COLOR_BGR2RGB)
    assert tuple(drawn[60, 40]) == predict.TRACK_COLORS[0]  # the first person's limb
    assert tuple(drawn[60, 120]) == predict.TRACK_COLORS[1]  # the second's box edge
    assert not drawn[60, 150].any()  # its limb to a joint of confidence 0.1 is not drawn
