"""CPU autocast (bf16, fp16) gives finite outputs for every registered model, whatever kernels the
CPU's oneDNN picks (issue 36: CI's CPU, with AVX-512, turned a fresh SimpleBaseline's bf16 heatmaps
non-finite; this machine's AVX2 CPU never calls oneDNN for them). The transposed convolutions,
the layer that went wrong, run in float32 under CPU autocast (models.layers.ConvTranspose2d)."""

from __future__ import annotations

import pytest
import torch
from test_models import SMALL

from conftest import CONF_FILES
from models import build_model, list_models
from models.layers import ConvTranspose2d
from models.registry import get_entry
from utils.options import parse_options

SEEDS = {torch.bfloat16: range(5), torch.float16: range(3)}
# 64x32, CI's failing case: SimpleBaseline's first deconvolution sees 2x1 (a side not a multiple of
# its stride), what oneDNN's bf16 deconvolution got wrong; RTMPose needs multiples of 32
INPUT = (64, 32)
# DeepPose's refinement stage crops 32x32 around each joint (the input height by default)
FASTER = {"DeepPose": ["--nCascade", "1", "--cropSize", "32"]}


def first_non_finite(model: torch.nn.Module, run) -> str:
    """The first module (in call order) whose output holds a NaN or an infinity, for the failure
    message: which kernel a machine got wrong."""
    found: list[str] = []

    def check(name):
        def hook(_module, _inputs, output):
            tensors = output if isinstance(output, (list, tuple)) else [output]
            if not found and any(torch.is_tensor(t) and not torch.isfinite(t.float()).all() for t in tensors):
                found.append(f"{name} ({type(_module).__name__})")

        return hook

    handles = [module.register_forward_hook(check(name)) for name, module in model.named_modules() if name]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "no module (the model's own arithmetic after its layers)"


def small_model(name: str, seed: int) -> torch.nn.Module:
    height, width = INPUT
    opts = parse_options(
        ["-ModelConfig", str(CONF_FILES[name]), "--inputRes", str(height), "--aspectRatio", str(width / height),
         "--outputRes", str(height // 4), *SMALL[name], *FASTER.get(name, [])]
    )  # fmt: skip
    torch.manual_seed(seed)
    return build_model(name, **vars(opts)).eval()


def set_batchnorm_statistics(model: torch.nn.Module, images: torch.Tensor, forward) -> None:
    """BatchNorm's running statistics those of ``images`` (one float32 training-mode pass), as a
    trained network's are of its data. A fresh network in eval mode normalises nothing (mean 0,
    variance 1): He-initialised residual sums then grow layer by layer (a fresh HRNet reaches 2e7),
    past float16's 65504 though well inside bfloat16's range."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = None  # a cumulative average: after one pass, that pass's statistics
        norm.reset_running_stats()
        norm.train()
    with torch.no_grad():
        forward(images)
    model.eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_forward_under_cpu_autocast_is_finite(name: str, dtype: torch.dtype) -> None:
    """bf16: the freshly built network in eval mode, as the failing test ran it. fp16: with its
    BatchNorm statistics set from the input first (set_batchnorm_statistics says why)."""
    assert set(SMALL) == set(list_models())
    with_target = get_entry(name).trains_with_target
    for seed in SEEDS[dtype]:
        model = small_model(name, seed)
        image = torch.randn(1, 3, *INPUT, generator=torch.Generator().manual_seed(seed))

        def plain(x, model=model):
            return model(x, None) if with_target else model(x)

        if dtype == torch.float16:
            images = torch.randn(8, 3, *INPUT, generator=torch.Generator().manual_seed(100 + seed))
            set_batchnorm_statistics(model, images, plain)

        def forward(plain=plain, image=image):
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                return plain(image)

        outputs = forward()
        finite = all(torch.isfinite(output.float()).all() for output in outputs)
        assert finite, f"{name} seed {seed}: first non-finite output in {first_non_finite(model, forward)}"


def test_the_transposed_convolution_runs_in_float32_under_cpu_autocast() -> None:
    """The same numbers as float32 outside autocast, in float32, with the state_dict of
    nn.ConvTranspose2d (imported weights load unchanged)."""
    torch.manual_seed(0)
    layer = ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False)
    plain = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 2, 1)  # the odd side of SimpleBaseline's 64x32 crops
    expected = plain(x)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            got = layer(x)
            lowered = plain(x)  # plain PyTorch lowers it: what the layer avoids
        assert got.dtype == torch.float32 and torch.equal(got, expected)
        assert lowered.dtype == dtype
    assert torch.equal(layer(x), expected)  # outside autocast it is nn.ConvTranspose2d


def test_a_non_finite_pose_reaches_the_loss_instead_of_crashing_deeppose_refinement() -> None:
    """An fp16 overflow in DeepPose's first stage gave roi_align infinite boxes: a segmentation
    fault in the refinement stage's crop. Now the refined pose is non-finite too, which the
    loop's non-finite-loss check stops with its one line."""
    torch.manual_seed(0)
    model = build_model("DeepPose", n_joints=4, base_name="resnet18", n_cascade=1, crop_size=16).eval()
    image = torch.randn(1, 3, 32, 32)
    for bad in (float("nan"), float("inf")):
        pose = torch.full((1, 4, 2), 0.5)
        pose[0, 1] = bad
        with torch.no_grad():
            refined = model.stages[0](image, pose)  # (1, 4, 2)
        assert refined.shape == (1, 4, 2) and not torch.isfinite(refined[0, 1]).all()
