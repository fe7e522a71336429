"""DeepPose, Chained Predictions and the torchvision backbones they share, at tiny sizes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torchvision

import models.deeppose  # noqa: F401  (registers DeepPose)
from models import backbones
from models.backbones import torchvision_backbone
from models.chained_predictions import COCO_CHAIN, MPII_CHAIN, default_chain
from models.registry import build_model, target_type_of

K = 16


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # No test depends on (or finds) ImageNet weights this machine happens to have cached.
    empty = tmp_path_factory.mktemp("hub")
    # These tiny tensors gain nothing from threads, and on a shared CPU spinning OpenMP workers
    # make them up to 100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: str(empty))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chained() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("ChainedPredictions", nJoints=K, modelName="resnet18")


@pytest.fixture(scope="module")
def cascade() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("DeepPose", nJoints=K, baseName="resnet18", nCascade=2, crop_size=32)


# --- backbones ---------------------------------------------------------------------------------


def test_unknown_backbone_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="resnet50.*inception_v3"):
        torchvision_backbone("vgg16")


def test_notice_when_no_local_weights(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(backbones, "_NOTICED", set())
    trunk, channels = torchvision_backbone("resnet18")
    err = capsys.readouterr().err
    assert channels == 512
    assert err.count("\n") == 1
    assert "note: no local ImageNet weights for resnet18" in err
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert trunk(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_explicit_weights_file_is_loaded(tmp_path, capsys) -> None:
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    trunk, _ = torchvision_backbone("resnet18", pretrained_path=str(path))
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert "note:" not in capsys.readouterr().err


def test_cached_weights_are_found(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(backbones, "_NOTICED", set())
    trunk, _ = torchvision_backbone("resnet18")
    assert torch.equal(trunk.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert "note:" not in capsys.readouterr().err


def test_missing_explicit_weights_file_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="resnet18"):
        torchvision_backbone("resnet18", pretrained_path=str(tmp_path / "absent.pth"))


def test_mismatched_weights_file_is_an_error(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match torchvision's resnet34"):
        torchvision_backbone("resnet34", pretrained_path=str(path))


def test_inception_trunk_drops_aux_head_and_checks_input_size(tmp_path) -> None:
    # The standard ImageNet file carries the auxiliary classifier; the trunk must accept and drop it.
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pth"
    torch.save(reference.state_dict(), path)
    trunk, channels = torchvision_backbone("inception_v3", pretrained_path=str(path))
    assert channels == 2048 and trunk.transform_input
    assert not any("AuxLogits" in key for key in trunk.state_dict())
    assert torch.equal(trunk.layers.Mixed_7c.branch1x1.conv.weight, reference.Mixed_7c.branch1x1.conv.weight)
    trunk.eval()
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 96, 96)).shape == (1, 2048, 1, 1)
        with pytest.raises(ValueError, match="at least 75"):
            trunk(torch.zeros(1, 3, 64, 64))


# --- DeepPose ----------------------------------------------------------------------------------


def test_deeppose_single_stage() -> None:
    model = build_model("DeepPose", nJoints=K, baseName="resnet18")
    assert target_type_of("DeepPose") == "regression"
    outputs = model(torch.randn(2, 3, 64, 64))
    assert isinstance(outputs, list) and len(outputs) == 1
    assert outputs[0].shape == (2, K, 2)
    assert torch.isfinite(outputs[0]).all()


def test_deeppose_cascade_stages_and_backward(cascade: torch.nn.Module) -> None:
    outputs = cascade(torch.randn(2, 3, 64, 64))
    assert len(outputs) == 1 + 2
    for pose in outputs:
        assert pose.shape == (2, K, 2)
        assert torch.isfinite(pose).all()
    # Zero-initialised refinement heads start as the identity on the previous estimate.
    assert torch.equal(outputs[1], outputs[0]) and torch.equal(outputs[2], outputs[0])
    sum(pose.square().mean() for pose in outputs).backward()
    for stage in (cascade.initial.head, cascade.stages[0], cascade.stages[1]):
        assert stage.weight.grad is not None and stage.weight.grad.abs().sum() > 0
        assert torch.isfinite(stage.weight.grad).all()


def test_refinement_moves_joint_by_box_scaled_displacement(cascade: torch.nn.Module) -> None:
    stage = cascade.stages[0]
    pose = torch.zeros(1, K, 2)
    pose[0, 13] = torch.tensor([-0.1, -0.2])  # l_shoulder
    pose[0, 2] = torch.tensor([0.2, 0.2])  # r_hip: torso diagonal 0.5 of the 64x64 crop = 32 px
    with torch.no_grad():
        stage.bias[0] = torch.tensor([0.25, -0.5])  # joint 0: a quarter box right, half a box up
        refined = stage(torch.randn(1, 3, 64, 64), pose)
        stage.bias.zero_()
    side = stage.box_sigma * 32.0
    assert torch.allclose(refined[0, 0], torch.tensor([0.25 * side / 64, -0.5 * side / 64]), atol=1e-5)
    assert torch.equal(refined[0, 1:], pose[0, 1:])


def test_refinement_crops_are_centred_on_joints(cascade: torch.nn.Module) -> None:
    stage = cascade.stages[0]
    image = torch.zeros(1, 3, 64, 48)  # non-square: x and y scale differently
    image[0, :, 20, 40] = 1.0  # one bright pixel at x = 40, y = 20
    pose = torch.zeros(1, K, 2)
    pose[0, 13] = torch.tensor([-0.1, -0.1])
    pose[0, 2] = torch.tensor([0.1, 0.1])
    pose[0, 0] = torch.tensor([(40 + 0.5) / 48 - 0.5, (20 + 0.5) / 64 - 0.5])
    crops, side = stage.crop(image, pose)
    assert crops.shape == (K, 3, 32, 32)
    assert side.shape == (1,) and side[0] >= 0.1 * 64
    peak = crops[0, 0]
    y, x = divmod(int(peak.argmax()), 32)
    assert {x, y} <= {15, 16}  # the joint's pixel sits at the centre of its crop
    assert peak.sum() > 0


# --- Chained Predictions -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (64, 48)])
def test_chained_shapes_and_backward(chained: torch.nn.Module, size: tuple[int, int]) -> None:
    assert target_type_of("ChainedPredictions") == "heatmap"
    chained.zero_grad()
    outputs = chained(torch.randn(2, 3, *size))
    assert isinstance(outputs, list) and len(outputs) == 1
    assert outputs[0].shape == (2, K, size[0] // 4, size[1] // 4)
    assert torch.isfinite(outputs[0]).all()
    outputs[0].square().mean().backward()
    grad = chained.encoder.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_chained_output_channels_follow_dataset_order(chained: torch.nn.Module) -> None:
    # The last decoder in the chain only feeds its own joint: changing it moves one channel.
    chained.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = chained(image)[0]
        chained.decoders[-1].out.bias += 1.0
        after = chained(image)[0]
        chained.decoders[-1].out.bias -= 1.0
    chained.train()
    changed = [j for j in range(K) if not torch.allclose(before[:, j], after[:, j])]
    assert changed == [MPII_CHAIN[-1]]


def test_chain_orders() -> None:
    assert sorted(MPII_CHAIN) == list(range(16)) and MPII_CHAIN[0] == 9  # head_top first
    assert sorted(COCO_CHAIN) == list(range(17)) and COCO_CHAIN[0] == 0  # nose first
    assert default_chain(5) == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="permutation"):
        build_model("ChainedPredictions", nJoints=3, modelName="resnet18", chain_order=[0, 0, 1])
