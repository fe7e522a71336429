"""IEF (models/ief.py): the joint maps, the bounded corrections, the fixed path, the starting pose
from the training records, and, end to end, training, -test from the checkpoint alone (PCKh after
every iteration) and -export equal to PyTorch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from test_modern_models import fixture_data

import main as entry
from build import training_start_pose
from conftest import REPO_ROOT, TINY_RUN, parse_error, read_metrics
from datasets import SyntheticPeople, make_codec
from losses import make_loss
from models import build_model
from models.ief import PAPER_INPUT, bounded_towards, fixed_path, median_pose, render_joint_maps
from models.registry import get_entry
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.options import parse_options

K = 16
GOOGLENET_LAYERS = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3", "inception4a",
    "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b",
)  # fmt: skip
CONF = str(REPO_ROOT / "conf" / "models" / "IEF.defconf")


def small_ief(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("IEF", nJoints=K, **options)


def to_normalised(px: list[float], width: int, height: int) -> list[float]:
    return [(px[0] + 0.5) / width - 0.5, (px[1] + 0.5) / height - 0.5]


# --- the trunk ------------------------------------------------------------------------------------


def test_imagenet_googlenet_widened_computes_the_imagenet_features(tmp_path: Path, capsys) -> None:
    """Over ImageNet weights the extra channels' filters start at zero: the widened trunk gives
    torchvision's own GoogLeNet features (its input transform applied to the image channels only)."""
    import torchvision

    from models.backbones import torchvision_backbone

    torch.manual_seed(0)
    # the weights file as torchvision publishes it: auxiliary heads included, inputs in [-1, 1]
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    trunk, channels = torchvision_backbone("googlenet", str(path), in_channels=3 + K)
    trunk.eval()
    assert channels == 1024 and trunk.transform_input and "note:" not in capsys.readouterr().err
    first = trunk.layers.conv1.conv.weight
    assert first.shape == (64, 3 + K, 7, 7) and not first[:, 3:].any()
    assert torch.equal(first[:, :3], reference.conv1.conv.weight)
    image, maps = torch.randn(2, 3, 64, 64), torch.rand(2, K, 64, 64)
    reference.transform_input = True
    with torch.no_grad():
        expected = reference._transform_input(image)
        for name in GOOGLENET_LAYERS:  # torchvision's forward, up to the classifier
            expected = getattr(reference, name)(expected)
        torch.testing.assert_close(trunk(torch.cat([image, maps], dim=1)), expected)


def test_inception_with_imagenet_weights_reads_the_joint_maps_too(tmp_path) -> None:
    # the [-1, 1] input transform of Google's weights applies to the image channels only, so a
    # widened Inception v3 (zero filters on the maps) computes exactly the 3-channel trunk's features
    import torchvision

    from models.backbones import torchvision_backbone

    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(
        torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path
    )
    widened, _ = torchvision_backbone("inception_v3", str(path), in_channels=3 + K)
    plain, _ = torchvision_backbone("inception_v3", str(path))
    assert widened.transform_input and plain.transform_input
    image, maps = torch.randn(1, 3, 80, 80), torch.rand(1, K, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(widened.eval()(torch.cat([image, maps], dim=1)), plain.eval()(image))


def test_from_scratch_the_extra_channels_start_like_the_image_ones() -> None:
    from models.backbones import torchvision_backbone

    torch.manual_seed(0)
    trunk, _ = torchvision_backbone("resnet18", in_channels=3 + K)
    weight = trunk.conv1.weight
    assert weight.shape == (64, 3 + K, 7, 7)
    assert weight[:, 3:].std().item() == pytest.approx(weight[:, :3].std().item(), rel=0.2)


# --- the joint maps -------------------------------------------------------------------------------


def test_joint_maps_are_gaussians_at_the_joints_hand_computed() -> None:
    # a 4 px wide, 3 px high crop; joint 0 at pixel (2, 1), joint 1 half a pixel right of (0, 0)
    pose = torch.tensor([[to_normalised([2, 1], 4, 3), to_normalised([0.5, 0], 4, 3)]])
    maps = render_joint_maps(pose, height=3, width=4, sigma=1.0)
    assert maps.shape == (1, 2, 3, 4) and maps.dtype == torch.float32
    e = math.exp
    # exp(-d^2 / 2) at every pixel (u, v), d^2 = (u - 2)^2 + (v - 1)^2, row by row
    expected_0 = [
        [e(-5 / 2), e(-2 / 2), e(-1 / 2), e(-2 / 2)],
        [e(-4 / 2), e(-1 / 2), 1.0, e(-1 / 2)],
        [e(-5 / 2), e(-2 / 2), e(-1 / 2), e(-2 / 2)],
    ]
    # d^2 = (u - 0.5)^2 + v^2
    expected_1 = [[e(-(((u - 0.5) ** 2) + v**2) / 2) for u in range(4)] for v in range(3)]
    torch.testing.assert_close(maps[0, 0], torch.tensor(expected_0), rtol=0, atol=1e-6)
    torch.testing.assert_close(maps[0, 1], torch.tensor(expected_1), rtol=0, atol=1e-6)
    assert maps[0, 1, 0, 0] == maps[0, 1, 0, 1]  # symmetric about x = 0.5


def test_the_network_reads_the_image_and_maps_of_the_papers_width_scaled_to_the_crop() -> None:
    model = small_ief(renderSigma=28.0, nIterations=1).eval()
    seen = []
    model.trunk.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
    image = torch.randn(1, 3, 64, 48)  # 48 wide, 64 high
    with torch.no_grad():
        model(image)
    (inputs,) = seen
    assert inputs.shape == (1, 3 + K, 64, 48)
    torch.testing.assert_close(inputs[:, :3], image)
    # the start pose (untrained: the crop centre) rendered at sigma 28 px of 224 = 8 px of 64
    expected = render_joint_maps(torch.zeros(1, K, 2), 64, 48, sigma=28.0 * 64 / PAPER_INPUT)
    torch.testing.assert_close(inputs[:, 3:], expected)
    centre = inputs[0, 3, 31, 23].item()  # the centre is (23.5, 31.5): four pixels at 0.5 px a side
    assert centre == pytest.approx(math.exp(-(0.5**2 + 0.5**2) / (2 * 8.0**2)), abs=1e-6)


# --- the bounded corrections and the fixed path ---------------------------------------------------


def test_fixed_path_hand_computed_on_a_square_and_a_narrow_crop() -> None:
    start = torch.zeros(1, 2, 2)
    # joint 0 is 0.5 away (a 3-4-5 triangle), joint 1 only 0.05
    truth = torch.tensor([[[0.3, 0.4], [0.0, -0.05]]])
    path = fixed_path(start, truth, steps=6, bound=0.1, aspect=1.0)
    assert len(path) == 7
    for t in range(6):  # joint 0: 0.1 along (0.6, 0.8) per step, there after 5 steps
        expected = min(t + 1, 5) * 0.1 * np.array([0.6, 0.8])
        np.testing.assert_allclose(path[t + 1][0, 0].numpy(), expected, atol=1e-7)
        np.testing.assert_allclose(path[t + 1][0, 1].numpy(), [0.0, -0.05], atol=1e-7)  # one step
    # a crop 0.75 as wide as high: normalised dx 0.4 is 0.3 crop heights; a step of 0.1 heights is
    # dx 0.1 / 0.75 normalised
    step = bounded_towards(torch.tensor([[[0.4, 0.0]]]), torch.zeros(1, 1, 2), bound=0.1, aspect=0.75)
    np.testing.assert_allclose(step[0, 0].numpy(), [0.1 / 0.75, 0.0], atol=1e-7)


def test_no_test_time_step_is_longer_than_the_bound_in_pixels() -> None:
    bound_px, height, width = 20.0, 64, 48
    model = small_ief(stepBound=bound_px, nIterations=3).eval()
    with torch.no_grad():  # corrections of 5 L along x and 0.1 L along y for every joint
        model.head.bias.copy_(torch.tensor([5.0, 0.1]).repeat(K))
        outputs = model(torch.randn(2, 3, height, width))
        model.head.bias.copy_(torch.tensor([0.3, -0.4]).repeat(K))  # 0.5 L: not clamped
        short = model(torch.randn(2, 3, height, width))
    assert len(outputs) == 3 and all(o.shape == (2, K, 2) for o in outputs)
    scale = torch.tensor([width, height])
    limit = bound_px * height / PAPER_INPUT  # L in this crop's pixels: 5.71 px
    previous = torch.zeros(2, K, 2)
    for pose in outputs:
        steps = ((pose - previous) * scale).norm(dim=-1)  # px
        torch.testing.assert_close(steps, torch.full_like(steps, limit))  # clamped to exactly L
        previous = pose
    torch.testing.assert_close(((short[0] - 0) * scale).norm(dim=-1), torch.full((2, K), 0.5 * limit))


def test_training_runs_the_fixed_path_steps_of_the_schedule() -> None:
    model = small_ief(pathSteps=3, stepEpochs=2, nIterations=4).train()
    image, truth = torch.randn(2, 3, 32, 32), torch.rand(2, K, 2) - 0.5
    counts = []
    for epoch in range(1, 8):
        model.set_epoch(epoch)
        counts.append(len(model(image, truth)))
    assert counts == [1, 1, 2, 2, 3, 3, 3]  # one more step every 2 epochs, up to pathSteps
    model.eval()
    assert len(model(image, truth)) == 4  # evaluation ignores the target: nIterations corrections


def test_fixed_path_outputs_make_the_loss_the_corrections_squared_error() -> None:
    model = small_ief(pathSteps=3, stepBound=30.0).train()
    start = torch.tensor(np.random.default_rng(1).uniform(-0.2, 0.2, size=(K, 2)), dtype=torch.float32)
    model.set_start_pose(start)
    image = torch.randn(2, 3, 32, 32)
    truth = torch.tensor(np.random.default_rng(2).uniform(-0.5, 0.5, size=(2, K, 2)), dtype=torch.float32)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.25, -0.5]).repeat(K))  # eps: (0.25 L, -0.5 L) per joint
        outputs = model(image, truth)
    bound = 30.0 / PAPER_INPUT
    path = fixed_path(start.expand(2, K, 2), truth, 3, bound, 1.0)
    eps = torch.tensor([0.25 * bound, -0.5 * bound])
    loss = make_loss(make_codec("regression", (32, 32), (8, 8), 1.0))(outputs, truth, torch.ones(2, K))
    squared_error = 0.0
    for t, output in enumerate(outputs):
        target = path[t + 1] - path[t]  # e_t
        torch.testing.assert_close(output, truth + eps - target)
        squared_error += ((eps - target) ** 2).sum(-1).mean()
    torch.testing.assert_close(loss, squared_error)


def test_options_are_checked_in_one_line(capsys) -> None:
    assert parse_error(capsys, ["-ModelConfig", CONF, "--stepBound", "0"]) == (
        "main.py: error: stepBound: must be > 0, got 0.0 (on the command line)"
    )
    assert parse_error(capsys, ["-ModelConfig", CONF, "--nIterations", "0"]) == (
        "main.py: error: nIterations: must be >= 1, got 0 (on the command line)"
    )
    assert parse_error(capsys, ["-ModelConfig", CONF, "--stepEpochs", "-1"]) == (
        "main.py: error: stepEpochs: must be >= 0, got -1 (on the command line)"
    )


def test_the_conf_file_is_the_papers_configuration() -> None:
    opts = parse_options(["-ModelConfig", CONF])
    assert (opts.model, opts.target_type, opts.inputRes, opts.baseName) == (
        "IEF",
        "regression",
        224,
        "googlenet",
    )
    assert (opts.nIterations, opts.stepBound, opts.pathSteps, opts.stepEpochs) == (4, 20.0, 4, 3)
    entry_ = get_entry("IEF")
    assert entry_.trains_with_target and entry_.stage_metrics == "iter" and entry_.uses_training_poses


# --- the starting pose ------------------------------------------------------------------------------


def test_median_pose_of_the_labelled_joints() -> None:
    joints = np.array([[[0.1, 0.2], [9.0, 9.0]], [[0.3, -0.2], [9.0, 9.0]], [[0.2, 0.0], [9.0, 9.0]]])
    visible = np.array([[1, 0], [1, 0], [0, 0]])
    np.testing.assert_allclose(median_pose(joints, visible), [[0.2, 0.0], [0.0, 0.0]])


def test_start_pose_is_the_median_of_the_unaugmented_crops_targets() -> None:
    codec = make_codec("regression", (40, 48), (10, 12), 1.0)
    data = SyntheticPeople("train", 7, codec, (40, 48), image_size=64)
    crop, visible = data.crop_joints()
    normalised = codec.normalise(crop)
    for index in range(len(data)):  # the same crop as the samples, joint for joint
        sample = data[index]
        inside = sample["target_weight"].numpy() > 0
        np.testing.assert_allclose(normalised[index][inside], sample["target"].numpy()[inside], atol=1e-5)
    start = training_start_pose(data, codec)
    np.testing.assert_allclose(start, median_pose(normalised, visible))
    assert start.shape == (K, 2) and np.abs(start).max() > 0.05


# --- end to end ------------------------------------------------------------------------------------

RUN = [*TINY_RUN, "-ModelConfig", CONF, "--nIterations", "3", "--pathSteps", "2", "--stepEpochs", "1"]


@pytest.mark.e2e
def test_one_epoch_then_test_from_the_checkpoint_alone(tmp_path: Path) -> None:
    assert entry.main([*RUN, "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "train"]) == 0
    train, val = read_metrics(tmp_path / "train")
    assert train["split"] == "train" and {"PCKh_iter1", "PCKh_iter2", "PCKh_iter3"} <= set(val)
    assert val["PCKh_iter3"] == val["PCKh"] and "PCKh_iter4" not in val
    checkpoint = tmp_path / "train" / "last.pth"
    stored = load_checkpoint(checkpoint)["model"]["start_pose"]
    codec = make_codec("regression", (32, 32), (8, 8), 1.0)
    expected = training_start_pose(SyntheticPeople("train", 48, codec, (32, 32), image_size=48), codec)
    np.testing.assert_allclose(stored.numpy(), expected)

    # -test reads no training set: the start pose comes from the checkpoint with the weights
    argv = ["-test", "--loadModel", str(checkpoint), "--expDir", str(tmp_path), "--expID", "test"]
    assert entry.main(argv) == 0
    (tested,) = read_metrics(tmp_path / "test")
    for key in ("PCKh", "PCKh_iter1", "PCKh_iter2", "PCKh_iter3", "PCKh_Head", "loss"):
        assert tested[key] == pytest.approx(val[key], abs=1e-9), key
    assert "PCKh_iter4" not in tested


@pytest.mark.e2e
def test_one_epoch_on_the_coco_fixture(shared_data: Path, tmp_path: Path) -> None:
    data = fixture_data(shared_data, "coco")
    assert entry.main([*RUN, *data, "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "coco"]) == 0
    val = read_metrics(tmp_path / "coco")[-1]
    # COCO's main metric after every iteration; the last is the usual AP
    assert {"AP", "AP_iter1", "AP_iter2", "AP_iter3", "PCK"} <= set(val) and val["AP_iter3"] == val["AP"]
    start = load_checkpoint(tmp_path / "coco" / "last.pth")["model"]["start_pose"]
    assert start.shape == (17, 2) and start.abs().max() > 0.05  # the median COCO pose, not the centre


@pytest.mark.e2e
def test_export_runs_every_iteration_and_equals_pytorch(tmp_path: Path) -> None:
    opts = parse_options(
        ["-ModelConfig", CONF, "--inputRes", "32", "--outputRes", "8", "--aspectRatio", "0.75",
         "--nIterations", "3", "--expDir", str(tmp_path)]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(opts.model, **vars(opts))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking network: corrections of a fraction of L, some clamped
        model.head.weight.normal_(0, 0.05, generator=generator)
        model.head.bias.normal_(0, 0.5, generator=generator)
        model.set_start_pose(torch.rand(K, 2, generator=generator) * 0.6 - 0.3)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    model.eval()
    checkpoint = save_checkpoint({"model": model.state_dict(), "config": opts.config}, tmp_path / "ief.pth")
    onnx_path = tmp_path / "ief.onnx"
    assert entry.main(["-export", str(onnx_path), "--loadModel", str(checkpoint)]) == 0
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        image = torch.randn(batch, 3, 32, 24, generator=generator)
        with torch.no_grad():
            outputs = model(image)
        (exported,) = session.run(None, {"image": image.numpy()})
        expected = outputs[-1].numpy()
        assert np.abs(exported - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))
        # the iterations moved the pose: the graph holds all of them, not the start pose
        assert np.abs(expected - outputs[0].numpy()).max() > 1e-3
    notes = json.loads(onnx_path.with_suffix(".json").read_text())
    assert notes["model"] == "IEF" and notes["output"]["shape"] == ["batch", K, 2]


# --- every stage scored ------------------------------------------------------------------------------


class TwoStages(torch.nn.Module):
    """Two pose 'stages' read off the image: its mean per (channel, row) as (x, y) of 3 joints."""

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        pose = torch.stack([image.mean(dim=(2, 3)), image[:, :, 0].mean(dim=-1)], dim=-1)  # (N, 3, 2)
        return [pose, 2 * pose]


def test_every_stage_is_flip_averaged_like_the_last() -> None:
    from engine import _scored_stages, flip_averaged

    codec = make_codec("regression", (8, 8), (2, 2), 1.0)
    model, image = TwoStages(), torch.randn(2, 3, 8, 8)
    flip = np.array([2, 1, 0])
    outputs = model(image)
    stages = _scored_stages(model, image, outputs, flip, codec, all_stages=True)
    last_only = _scored_stages(model, image, outputs, flip, codec, all_stages=False)
    assert len(stages) == 2 and len(last_only) == 1
    torch.testing.assert_close(stages[-1], last_only[0], rtol=0, atol=0)
    torch.testing.assert_close(last_only[0], flip_averaged(model, image, outputs[-1], flip, codec))
    mirrored = model(image.flip(-1))[0][:, flip] * torch.tensor([-1.0, 1.0])  # x negated, joints swapped
    torch.testing.assert_close(stages[0], (outputs[0] + mirrored) / 2)


def test_the_per_iteration_line_under_the_table() -> None:
    from evaluate import format_metrics

    metrics = {"loss": 0.5, "AP_iter1": 0.01234, "AP_iter2": 0.5}
    assert format_metrics(metrics, "iter").splitlines() == [
        "AP per iter: iter1 0.01234, iter2 0.5",
        "loss: 0.5",
    ]
    assert "AP_iter1: 0.01234" in format_metrics(metrics, None)  # undeclared: listed as any key
