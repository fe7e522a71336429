"""On a CUDA GPU: mixed-precision training stopped mid-epoch by a signal and resumed ends exactly
where an uninterrupted run does (the GradScaler's state included), ``--deterministic 1`` repeats a
run bit for bit, ``-predict`` and ``-export`` work from a GPU-trained checkpoint, a one-process
torchrun trains over NCCL, and every registered model runs forward and backward in channels_last,
agreeing with the CPU, and trains bit for bit again under deterministic algorithms.

    python -m pytest -m cuda -q -rs        # or: bash benchmarks/cuda_check.sh

Every test is marked ``cuda`` and is skipped, saying so, where no CUDA device is visible. Runs of
main.py go through subprocesses, as a user starts them: the program sets up the device,
``--deterministic`` and CUBLAS_WORKSPACE_CONFIG itself, and its global switches (deterministic
algorithms) stay out of this test process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from test_models import SMALL as MODEL_SIZES

from conftest import CONF_FILES, REPO_ROOT, SHARED_DATA, TINY_RUN
from datasets import make_codec
from losses import make_loss
from models import build_model, list_models
from models.registry import get_entry
from utils.checkpoint import load_checkpoint
from utils.options import parse_options

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no CUDA device visible"),
]

# 2 epochs of 24 batches of 4 (96 synthetic persons) with --deterministic 1; --progress lines
# prints a line at every tenth of an epoch, the first one after batch 3.
STEPS = 24
RUN = [*TINY_RUN, "--syntheticTrain", str(4 * STEPS), "--data_loader_size", "4", "--nEpochs", "2",
       "--maxTranslate", "0.05", "--deterministic", "1"]  # fmt: skip


# The program must set CUBLAS_WORKSPACE_CONFIG itself for --deterministic, so the tests do not.
def child_env() -> dict[str, str]:
    """A child's environment when it starts (this test's POSE_CACHE_DIR included), one thread."""
    env = {key: value for key, value in os.environ.items() if key != "CUBLAS_WORKSPACE_CONFIG"}
    return {**env, "OMP_NUM_THREADS": "1"}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "main.py"]

# metrics.jsonl of a resumed run against the uninterrupted one. The weights are required to be
# bit-equal (--deterministic 1), so the logged numbers should be too; the margin only keeps this
# check independent of how the loop accumulates its float64 means, while a resume that replays or
# drops a batch moves an epoch's mean loss by whole percents.
METRICS_RTOL = 1e-6
# CUDA float32 (TF32 off) against CPU float32 outputs of the same weights, relative to the largest
# CPU output: float32 rounding alone is ~2e-6 of it for these models (measured against float64 on
# the CPU); cuDNN's Winograd / FFT / implicit-GEMM kernels sum in other orders and lose up to ~1e-4
# more. A wrong memory layout or kernel is off by the output's whole size.
FORWARD_RTOL = 1e-3
# ONNX Runtime on the CPU against PyTorch: on the CPU as tests/test_export.py requires; on CUDA
# (TF32 off) with the margin above for cuDNN's summation orders.
ONNX_CPU_RTOL = 1e-4
ONNX_CUDA_RTOL = 1e-3


def main_py(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "main.py", *map(str, args)]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=child_env()
    )


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same(first: Any, second: Any, where: str = "") -> None:
    """Nested dicts / lists of tensors and Python values, equal exactly (tensors bit for bit)."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor), where
        assert first.dtype == second.dtype and first.shape == second.shape, where
        assert torch.equal(first, second), (
            f"{where}: max |difference| {(first.double() - second.double()).abs().max()}"
        )
    elif isinstance(first, dict):
        assert isinstance(second, dict) and set(first) == set(second), where
        for key in first:
            assert_same(first[key], second[key], f"{where}.{key}" if where else str(key))
    elif isinstance(first, (list, tuple)):
        assert isinstance(second, (list, tuple)) and len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert first == second, f"{where}: {first!r} != {second!r}"


def assert_same_metrics(first: list[dict], second: list[dict]) -> None:
    assert [(r["epoch"], r["split"], sorted(r)) for r in first] == [
        (r["epoch"], r["split"], sorted(r)) for r in second
    ]
    for a, b in zip(first, second, strict=True):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=METRICS_RTOL), (a["epoch"], a["split"], key)
            else:
                assert b[key] == value, (a["epoch"], a["split"], key)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for cuBLAS matmuls and cuDNN convolutions (Ampere and later run float32
    convolutions in TF32 by default), restored afterwards. The fp32_precision API where torch has
    it: torch refuses reads of the legacy ``allow_tf32`` flags once that API has been used."""
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision") and hasattr(backends.cudnn, "conv"):
        switches = [backends.cuda.matmul, backends.cudnn.conv]
        saved = [switch.fp32_precision for switch in switches]
        for switch in switches:
            switch.fp32_precision = "ieee"
        try:
            yield
        finally:
            for switch, value in zip(switches, saved, strict=True):
                switch.fp32_precision = value
    else:  # an older torch: the legacy flags
        saved = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
        backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------------------------
# Mixed precision, deterministic, stopped mid-epoch by a signal and resumed
# --------------------------------------------------------------------------------------------


@dataclass
class ResumePair:
    straight: Path  # run directory of the uninterrupted run
    cut: Path  # run directory of the interrupted and resumed run
    mid_epoch: dict[str, Any]  # the interrupted run's mid-epoch last.pth, read before the resume


def interrupted_and_straight(root: Path, amp: str, sig: int) -> ResumePair:
    succeeded(main_py(*RUN, "--amp", amp, "--expDir", root, "--expID", "straight"))
    command = [sys.executable, "main.py", *RUN, "--amp", amp, "--progress", "lines",
               "--expDir", str(root), "--expID", "cut"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        for line in process.stderr:  # epoch 1's first progress line: after its 3rd batch
            if line.startswith("train 1 "):
                break
        else:
            raise AssertionError(f"no progress line of epoch 1; exit {process.wait()}")
        process.send_signal(sig)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + sig, f"exit {process.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert "Traceback" not in err, err[-4000:]
    assert f"resume with: python main.py --loadModel {root / 'cut' / 'last.pth'}" in out, out[-2000:]
    mid_epoch = load_checkpoint(root / "cut" / "last.pth")
    assert "mid_epoch" in mid_epoch, "the signal came during training, so last.pth must be mid-epoch"
    assert mid_epoch["mid_epoch"]["epoch"] == 1 and 3 <= mid_epoch["mid_epoch"]["step"] < STEPS
    shutil.copy2(root / "cut" / "last.pth", root / "mid_epoch.pth")
    succeeded(main_py("--loadModel", root / "cut" / "last.pth", "--progress", "none"))
    return ResumePair(root / "straight", root / "cut", mid_epoch)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """``resumed(amp)``: the uninterrupted and the interrupted-then-resumed run at that precision
    (made once per module: the GradScaler test reuses the fp16 pair)."""
    made: dict[str, ResumePair | BaseException] = {}
    signals = {"fp16": signal.SIGINT, "bf16": signal.SIGTERM}

    def get(amp: str) -> ResumePair:
        if amp not in made:
            try:
                made[amp] = interrupted_and_straight(tmp_path_factory.mktemp(f"amp-{amp}"), amp, signals[amp])
            except (
                AssertionError,
                subprocess.SubprocessError,
            ) as error:  # fail its other tests without rerunning
                made[amp] = error
                raise
        if isinstance(made[amp], BaseException):
            raise AssertionError(f"the {amp} runs failed in an earlier test: {made[amp]}")
        return made[amp]

    return get


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_resumed_mid_epoch_equals_an_uninterrupted_run(resumed, amp: str) -> None:
    pair = resumed(amp)
    straight = load_checkpoint(pair.straight / "last.pth")
    cut = load_checkpoint(pair.cut / "last.pth")
    assert straight["epoch"] == cut["epoch"] == 2 and "mid_epoch" not in cut
    assert_same(cut["model"], straight["model"], "model")  # --deterministic 1: bit for bit
    assert_same(cut["optimizer"]["state"], straight["optimizer"]["state"], "optimizer")
    assert_same_metrics(metrics(pair.cut), metrics(pair.straight))


def test_the_grad_scaler_state_survives_a_mid_epoch_resume(resumed) -> None:
    pair = resumed("fp16")
    scale = pair.mid_epoch["grad_scaler"]["scale"]
    assert isinstance(scale, float) and math.isfinite(scale) and scale > 0
    final_cut = load_checkpoint(pair.cut / "last.pth")["grad_scaler"]
    final_straight = load_checkpoint(pair.straight / "last.pth")["grad_scaler"]
    assert final_cut["scale"] == final_straight["scale"]
    # the growth tracker (steps since the last overflow) too: restarting it would show here
    assert_same(final_cut, final_straight, "grad_scaler")


def test_deterministic_runs_give_identical_weights(tmp_path: Path) -> None:
    for name in ("first", "second"):
        succeeded(main_py(*RUN, "--expDir", tmp_path, "--expID", name))
    first, second = (load_checkpoint(tmp_path / name / "last.pth") for name in ("first", "second"))
    assert first["epoch"] == second["epoch"] == 2
    assert_same(first["model"], second["model"], "model")  # torch.equal on every tensor
    assert_same(first["optimizer"]["state"], second["optimizer"]["state"], "optimizer")
    assert metrics(tmp_path / "first") == metrics(tmp_path / "second")


# --------------------------------------------------------------------------------------------
# -predict and -export from a checkpoint trained on the GPU
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuda-trained")
    succeeded(main_py(*TINY_RUN, "--nEpochs", "1", "--expDir", root, "--expID", "m"))
    return root / "m" / "last.pth"


def test_predict_from_a_cuda_trained_checkpoint(tmp_path: Path, cuda_checkpoint: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(photos / "synthetic.png"), pixels)
    expected = {"synthetic.png"}
    real = sorted((SHARED_DATA / "coco_mini").glob("*.jpg"))
    if real:  # a real photo too, where the shared fixtures are present
        shutil.copy2(real[0], photos / real[0].name)
        expected.add(real[0].name)
    result = main_py("-predict", photos, "--loadModel", cuda_checkpoint, "--expDir", tmp_path / "out",
                     "--expID", "p", "--progress", "none", "--flipTest", "1")  # fmt: skip
    succeeded(result)
    assert "cuda" in result.stdout, f"-predict did not report running on CUDA:\n{result.stdout[-2000:]}"
    run = tmp_path / "out" / "p"
    entries = json.loads((run / "keypoints.json").read_text())
    assert sorted(e["image"] for e in entries) == sorted(expected)
    for entry in entries:
        keypoints = np.asarray(entry["keypoints"], dtype=float).reshape(-1, 3)
        assert keypoints.shape == (16, 3) and np.isfinite(keypoints).all()
        assert (run / f"{entry['image']}.png").is_file()  # x.jpg -> x.jpg.png: the whole name kept
    (whole,) = [e for e in entries if e["image"] == "synthetic.png"]
    assert whole["bbox"] == [0.0, 0.0, 120.0, 90.0]  # no boxes: the whole image is the person
    assert cv2.imread(str(run / "synthetic.png.png")).shape == (90, 120, 3)


def test_export_from_a_cuda_trained_checkpoint_matches_pytorch(tmp_path: Path, cuda_checkpoint: Path) -> None:
    import onnxruntime

    from build import load_trained

    onnx_path = tmp_path / "pose.onnx"
    succeeded(main_py("-export", onnx_path, "--loadModel", cuda_checkpoint))
    assert onnx_path.is_file() and onnx_path.with_suffix(".json").is_file()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    opts = parse_options(["--loadModel", str(cuda_checkpoint)])
    width, height = load_trained(opts, "cpu").input_size
    image = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(2))
    (exported,) = session.run(None, {"image": image.numpy()})
    for device, tolerance in (("cpu", ONNX_CPU_RTOL), ("cuda", ONNX_CUDA_RTOL)):
        trained = load_trained(opts, device)
        with torch.no_grad(), exact_float32():
            expected = trained.model(image.to(device))[-1].float().cpu().numpy()
        assert exported.shape == expected.shape
        difference, scale = float(np.abs(exported - expected).max()), float(np.abs(expected).max())
        assert difference <= tolerance * scale, (device, difference, scale)


# --------------------------------------------------------------------------------------------
# torchrun with one process: a process group over NCCL and DistributedDataParallel on the GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.e2e  # a subprocess
@pytest.mark.parametrize("sync_bn", ["0", "1"])
def test_one_process_torchrun_trains_over_nccl(tmp_path: Path, sync_bn: str) -> None:
    result = subprocess.run(
        [*TORCHRUN, *TINY_RUN, "--nEpochs", "1", "--syncBN", sync_bn, "--expDir", str(tmp_path), "--expID", "ddp"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**child_env(), "NCCL_DEBUG": "INFO"},  # NCCL announces itself when its communicator starts
    )  # fmt: skip
    succeeded(result)
    assert "NCCL INFO" in result.stdout + result.stderr, "no NCCL communicator was started"
    state = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert state["epoch"] == 1
    # the plain model's names, not DistributedDataParallel's "module." ones
    assert not [key for key in state["model"] if key.startswith("module.")]
    assert [(r["epoch"], r["split"]) for r in metrics(tmp_path / "ddp")] == [(1, "train"), (1, "val")]


# --------------------------------------------------------------------------------------------
# Every registered model on the GPU in channels_last, against the CPU
# --------------------------------------------------------------------------------------------


def test_every_registered_model_is_checked_on_cuda() -> None:
    assert set(MODEL_SIZES) == set(list_models())


# Run in a child process: deterministic algorithms are a process-wide switch, and cuBLAS reads its
# workspace setting once, before CUDA starts. The switches are those --deterministic 1 sets.
DETERMINISTIC_CHILD = """
import json, os, sys
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
import torch
torch.use_deterministic_algorithms(True)
torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
from datasets import make_codec
from losses import make_loss
from models import build_model
from models.registry import get_entry
from utils.options import parse_options

results = {}
for name, argv in json.loads(sys.argv[1]).items():
    try:
        states = []
        for _ in range(2):
            opts = parse_options(argv)
            torch.manual_seed(0)  # the weights, and the GPU's draws (PyraNet's fractional pooling)
            model = build_model(opts.model, **vars(opts)).to("cuda").to(memory_format=torch.channels_last)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            codec = make_codec(get_entry(name).target_type, (64, 64), (16, 16), 1.0, hierarchy=opts.hierarchy)
            loss_fn = make_loss(codec)
            data = torch.Generator().manual_seed(1)
            for _ in range(2):
                image = torch.randn(4, 3, 64, 64, generator=data).to("cuda")
                outputs = model(image.contiguous(memory_format=torch.channels_last))
                target = torch.rand((4, *codec.target_shape(16)), generator=data).to("cuda")
                loss = loss_fn(outputs, target, torch.ones(4, target.shape[1], device="cuda"))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        results[name] = {"differing": [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]}
    except Exception as error:
        results[name] = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"}
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.e2e  # a subprocess
def test_every_model_trains_bit_for_bit_again_under_deterministic_algorithms() -> None:
    """The switches of --deterministic 1 on CUDA: no model uses a kernel without a deterministic
    version (those stop the run), and two trainings from one seed give the same tensors."""
    sizes = {
        name: [
            "-ModelConfig",
            str(CONF_FILES[name]),
            "--inputRes",
            "64",
            "--outputRes",
            "16",
            *MODEL_SIZES[name],
        ]
        for name in sorted(MODEL_SIZES)
    }
    result = subprocess.run(
        [sys.executable, "-c", DETERMINISTIC_CHILD, json.dumps(sizes)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=child_env(),
    )  # fmt: skip
    succeeded(result)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    results = json.loads(line.removeprefix("RESULTS "))
    assert set(results) == set(list_models())
    failed = {name: r.get("error") or f"differs in {r['differing'][:3]}" for name, r in results.items()
              if r.get("error") or r["differing"]}  # fmt: skip
    assert not failed, failed


@pytest.mark.parametrize("name", sorted(MODEL_SIZES))
def test_model_forward_and_backward_on_cuda_in_channels_last(name: str) -> None:
    opts = parse_options(
        ["-ModelConfig", str(CONF_FILES[name]), "--inputRes", "64", "--outputRes", "16", *MODEL_SIZES[name]]
    )
    torch.manual_seed(0)
    on_cpu = build_model(opts.model, **vars(opts)).eval()
    on_gpu = copy.deepcopy(on_cpu).to("cuda").to(memory_format=torch.channels_last)
    image = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    image_gpu = image.to("cuda").contiguous(memory_format=torch.channels_last)

    # evaluation mode (running statistics; PyraNet's fractional pooling fixed): the same numbers
    with torch.no_grad(), exact_float32():
        expected, outputs = on_cpu(image), on_gpu(image_gpu)
    assert len(outputs) == len(expected)
    for stage, (output, reference) in enumerate(zip(outputs, expected, strict=True)):
        assert output.is_cuda and output.dtype == torch.float32 and output.shape == reference.shape
        difference = (output.cpu() - reference).abs().max().item()
        scale = reference.abs().max().item()
        assert difference <= FORWARD_RTOL * scale, (
            f"stage {stage}: |cuda - cpu| {difference:.3g}, scale {scale:.3g}"
        )

    # training mode, float32 and bf16 autocast: every stage has the codec's shape, every
    # parameter gets a finite gradient
    codec = make_codec(get_entry(name).target_type, (64, 64), (16, 16), 1.0, hierarchy=opts.hierarchy)
    shape = (4, *codec.output_shape(16))
    # a compositional target holds every level's maps, its stages each their level's
    target_shape = (4, *codec.target_shape(16))
    shapes = [(4, *s) for s in codec.stage_shapes(16)] if hasattr(codec, "stage_shapes") else None
    target = torch.rand(target_shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    weight = torch.ones(target_shape[:2], device="cuda")
    loss_fn = make_loss(codec)
    on_gpu.train()
    for amp in ("none", "bf16"):
        on_gpu.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        with autocast:
            outputs = on_gpu(image_gpu)
            loss = loss_fn(outputs, target, weight)
        assert [tuple(output.shape) for output in outputs] == (shapes or [shape] * len(outputs)), amp
        assert all(torch.isfinite(output).all() for output in outputs), amp
        assert torch.isfinite(loss), amp
        loss.backward()
        trained = [(key, p) for key, p in on_gpu.named_parameters() if p.requires_grad]
        assert trained
        assert not [key for key, p in trained if p.grad is None], amp
        assert not [key for key, p in trained if not torch.isfinite(p.grad).all()], amp
