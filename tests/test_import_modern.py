"""models.import_weights hrnet / simplebaseline: checkpoints laid out as the authors publish them
become checkpoints of this project that -test, -predict and -export run.

``AuthorsHRNet`` and ``AuthorsPoseResNet`` below rebuild the authors' module trees from reading
their code: leoxiaobin/deep-high-resolution-net.pytorch ``lib/models/pose_hrnet.py`` (with the
``w32_256x192`` experiment's stage layout: 1, 4 and 3 modules of 4 basic blocks per branch) and
microsoft/human-pose-estimation.pytorch ``lib/models/pose_resnet.py``. They keep the authors'
attribute names (so their state-dict keys, None entries included, which shift the indices) and
their forward passes (nearest upsampling by 2^(j - i), the new branch built from the previous
stage's last output, BGR input for PoseResNet), so a converted network is compared output for
output with the source network, not only key by key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

import main as entry
from build import load_trained
from datasets.base import IMAGENET_MEAN, IMAGENET_STD
from models import build_model
from models.import_weights import (
    ConversionError,
    InputSize,
    convert,
    hrnet_names,
    import_hrnet,
    import_simple_baseline,
    simple_baseline_names,
)
from models.import_weights import main as import_main
from utils.checkpoint import load_checkpoint
from utils.options import parse_options

# ------------------------------------------------------------------------ the authors' networks


def conv3x3(n_in: int, n_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False)


class AuthorsBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, n_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(n_in, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu, self.downsample = nn.ReLU(), downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class AuthorsBottleneck(nn.Module):
    expansion = 4

    def __init__(self, n_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(n_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)  # stride in the 3x3
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.relu, self.downsample = nn.ReLU(), downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def authors_layer(block: type, n_in: int, planes: int, count: int, stride: int = 1) -> nn.Sequential:
    """``_make_layer``: a 1x1 conv + BN projection on the first block when the shape changes."""
    downsample = None
    if stride != 1 or n_in != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(n_in, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    blocks = [block(n_in, planes, stride, downsample)]
    blocks += [block(planes * block.expansion, planes) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


class AuthorsHighResolutionModule(nn.Module):
    def __init__(self, widths: list[int], multi_scale_output: bool):
        super().__init__()
        self.n = len(widths)
        self.branches = nn.ModuleList([authors_layer(AuthorsBasicBlock, w, w, 4) for w in widths])
        rows = []
        for i in range(self.n if multi_scale_output else 1):
            row = []
            for j in range(self.n):
                if j > i:
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(widths[j], widths[i], 1, 1, 0, bias=False),
                            nn.BatchNorm2d(widths[i]),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        layers = [conv3x3(widths[j], widths[i] if last else widths[j], 2)]
                        layers.append(nn.BatchNorm2d(widths[i] if last else widths[j]))
                        if not last:
                            layers.append(nn.ReLU())
                        steps.append(nn.Sequential(*layers))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(rows)
        self.relu = nn.ReLU()

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x, strict=True)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, self.n):
                y = y + (x[j] if i == j else row[j](x[j]))
            out.append(self.relu(y))
        return out


def authors_transition(before: list[int], after: list[int]) -> nn.ModuleList:
    layers = []
    for i, width in enumerate(after):
        if i < len(before):
            layers.append(
                None
                if width == before[i]
                else nn.Sequential(conv3x3(before[i], width), nn.BatchNorm2d(width), nn.ReLU())
            )
        else:
            steps = []
            for k in range(i + 1 - len(before)):
                out = width if k == i - len(before) else before[-1]
                steps.append(nn.Sequential(conv3x3(before[-1], out, 2), nn.BatchNorm2d(out), nn.ReLU()))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class AuthorsHRNet(nn.Module):
    """``PoseHighResolutionNet`` with the w32/w48 experiment layout, width ``width``."""

    def __init__(self, width: int, joints: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = authors_layer(AuthorsBottleneck, 64, 64, 4)
        widths = [width * 2**b for b in range(4)]
        self.transition1 = authors_transition([256], widths[:2])
        self.stage2 = nn.Sequential(AuthorsHighResolutionModule(widths[:2], True))
        self.transition2 = authors_transition(widths[:2], widths[:3])
        self.stage3 = nn.Sequential(*[AuthorsHighResolutionModule(widths[:3], True) for _ in range(4)])
        self.transition3 = authors_transition(widths[:3], widths)
        self.stage4 = nn.Sequential(*[AuthorsHighResolutionModule(widths, m < 2) for m in range(3)])
        self.final_layer = nn.Conv2d(width, joints, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        x = self.layer1(x)
        ys = [x]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            # a kept branch passes as it is (None); every built one reads the last output
            ys = stage([ys[i] if t is None else t(ys[-1]) for i, t in enumerate(transition)])
        return self.final_layer(ys[0])


class AuthorsPoseResNet(nn.Module):
    """``PoseResNet`` (PyTorch-style), deconvolutions without bias, 1x1 final layer."""

    SPECS = {18: (AuthorsBasicBlock, [2, 2, 2, 2]), 50: (AuthorsBottleneck, [3, 4, 6, 3]),
             152: (AuthorsBottleneck, [3, 8, 36, 3])}  # fmt: skip

    def __init__(self, depth: int, joints: int, filters: int = 256, n_deconv: int = 3, kernel: int = 4):
        super().__init__()
        block, counts = self.SPECS[depth]
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        n_in = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            setattr(
                self, f"layer{index + 1}", authors_layer(block, n_in, planes, count, 1 if index == 0 else 2)
            )
            n_in = planes * block.expansion
        layers = []
        for _ in range(n_deconv):
            padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]
            layers += [
                nn.ConvTranspose2d(n_in, filters, kernel, 2, padding, output_padding, bias=False),
                nn.BatchNorm2d(filters),
                nn.ReLU(),
            ]
            n_in = filters
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(filters, joints, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Known, non-trivial tensors: weights large enough that every layer matters, BatchNorm
    statistics away from 0 and 1 so eval mode is tested too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.dim() == 1:  # BatchNorm weight: below 1, so sums of branches stay in range
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.25)
            else:  # He-scaled, so activations neither vanish nor explode through the depth
                fan_in = tensor[0].numel() if not name.startswith("deconv") else tensor.shape[0] * 4
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2 / fan_in) ** 0.5)
    return net.eval()


def save_published(net: nn.Module, path: Path, data_parallel: bool, counters: bool = True) -> Path:
    """As the authors' train.py saves ``final_state.pth``/``model_best.pth``: a plain state dict,
    'module.'-prefixed when taken from the DataParallel wrapper. ``counters`` False: no BatchNorm
    num_batches_tracked, as PyTorch 0.4.0 saved them (the Simple Baselines release era)."""
    state = {
        ("module." if data_parallel else "") + key: value
        for key, value in net.state_dict().items()
        if counters or not key.endswith("num_batches_tracked")
    }
    torch.save(state, path)
    return path


def pixels_both_ways(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same RGB picture normalised as this project feeds it and as the authors' PoseResNet
    saw it (OpenCV's BGR, normalised with the RGB-ordered ImageNet statistics)."""
    rgb = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1).double()
    std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1).double()
    rgb = rgb.double()
    return (rgb - mean) / std, (rgb.flip(1) - mean) / std


def load_imported(path: Path):
    return load_trained(parse_options(["-export", str(path.with_suffix(".onnx")), "--loadModel", str(path)]))


# ------------------------------------------------------------------------ key layout, full size


def meta_state(net_factory) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return net_factory().state_dict()


@pytest.mark.parametrize(("width", "joints", "parameters"), [(32, 17, 28_536_113), (48, 16, None)])
def test_hrnet_key_layout_maps_every_tensor_at_full_size(
    width: int, joints: int, parameters: int | None
) -> None:
    theirs = meta_state(lambda: AuthorsHRNet(width, joints))
    with torch.device("meta"):
        ours = build_model("HRNet", n_joints=joints, hrnet_width=width).state_dict()
    converted = convert(theirs, hrnet_names(), ours, "HRNet")  # checks every name and shape
    assert set(converted) == set(ours) and len(theirs) == len(ours)
    if parameters is not None:  # the authors' table: 28.5 M for W32 (COCO, 17 joints)
        counted = sum(v.numel() for k, v in theirs.items() if "running" not in k and "num_batches" not in k)
        assert counted == parameters
    # spot checks of the renaming, written out from both module trees
    names = hrnet_names()
    assert names["transition1.1.0.0"] == "transitions.0.1.0"
    assert names["transition3.3.0.1"] == "transitions.2.0.1"
    assert names["stage4.2.fuse_layers.0.3.1"] == "stages.2.2.fuse.0.3.1"  # 1x1 conv, BN, (Upsample)
    assert names["stage4.1.fuse_layers.3.0.2.0"] == "stages.2.1.fuse.3.0.2.0"  # third stride-2 step
    assert "stage4.2.fuse_layers.1.0.0.0" not in names  # the last module fuses to branch 0 only
    assert names["final_layer"] == "head"


@pytest.mark.parametrize("depth", [50, 152])
def test_simple_baseline_key_layout_maps_every_tensor_at_full_size(depth: int) -> None:
    theirs = meta_state(lambda: AuthorsPoseResNet(depth, 17))
    with torch.device("meta"):
        ours = build_model("SimpleBaseline", n_joints=17, base_name=f"resnet{depth}").state_dict()
    blocks = AuthorsPoseResNet.SPECS[depth][1]
    converted = convert(theirs, simple_baseline_names(tuple(blocks), True, 3), ours, "SimpleBaseline")
    assert set(converted) == set(ours) and len(theirs) == len(ours)
    if depth == 50:  # the authors' table: 34.0 M for ResNet-50, 3 deconvolutions
        assert (
            sum(v.numel() for k, v in theirs.items() if "running" not in k and "num_batches" not in k)
            == 33_999_697
        )
    names = simple_baseline_names(tuple(blocks), True, 3)
    assert (
        names["deconv_layers.7"] == "deconvs.2.1"
        and names["layer4.0.downsample.1"] == "trunk.layer4.0.downsample.1"
    )


# ------------------------------------------------------------------------ conversion, outputs


@pytest.fixture(scope="module")
def hrnet_source(tmp_path_factory) -> tuple[Path, AuthorsHRNet]:
    torch.manual_seed(0)
    net = randomise(AuthorsHRNet(width=4, joints=17), seed=1)
    path = tmp_path_factory.mktemp("hrnet") / "pose_hrnet_w4_128x96.pth"
    return save_published(net, path, data_parallel=True), net


@pytest.fixture(scope="module")
def simple_baseline_source(tmp_path_factory) -> tuple[Path, AuthorsPoseResNet]:
    torch.manual_seed(0)
    net = randomise(AuthorsPoseResNet(depth=18, joints=16, filters=32), seed=2)
    path = tmp_path_factory.mktemp("simplebaseline") / "pose_resnet_18_256x256.pth.tar"
    return save_published(net, path, data_parallel=False, counters=False), net


def test_converted_hrnet_gives_the_authors_heatmaps(hrnet_source, tmp_path: Path, capsys) -> None:
    source, theirs = hrnet_source
    destination = tmp_path / "hrnet.pth"
    assert import_main(["hrnet", str(source), str(destination), "--inputRes", "128"]) == 0
    assert "HRNet-W4, 17 joints, 128x96 input" in capsys.readouterr().out
    state = load_checkpoint(destination)
    config = state["config"]
    assert (config["model"], config["hrnetWidth"], config["nJoints"], config["dataset"]) == (
        "HRNet",
        4,
        17,
        "COCO",
    )
    assert (config["inputRes"], config["outputRes"], config["aspectRatio"]) == (128, 32, 0.75)
    assert (config["coordConvention"], config["inputNorm"], config["hmGauss"], config["flipTest"]) == (
        "hrnet", "imagenet", 2.0, True,
    )  # fmt: skip
    # key by key: every source tensor, found under its new name, unchanged
    published = torch.load(source, weights_only=True)
    names = hrnet_names()
    for key, value in published.items():
        module, _, leaf = key.removeprefix("module.").rpartition(".")
        assert torch.equal(state["model"][f"{names[module]}.{leaf}"], value), key
    assert len(state["model"]) == len(published)
    # and the network: the same heatmaps on a non-square batch (sides multiples of 32, as theirs needs)
    trained = load_imported(destination)
    image = pixels_both_ways(2, 128, 96, seed=3)[0]
    with torch.no_grad():  # in float64, so only a different computation could differ
        expected = theirs.double()(image.double())  # (N, K, 32, 24)
        (ours,) = trained.model.double()(image.double())
    assert ours.shape == expected.shape == (2, 17, 32, 24)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-8)
    assert expected.abs().max() > 1e-2  # a real signal, not two zero maps


@pytest.mark.parametrize("depth", [18, 50])
def test_converted_simple_baseline_gives_the_authors_heatmaps(depth: int, tmp_path: Path, capsys) -> None:
    theirs = randomise(AuthorsPoseResNet(depth=depth, joints=16, filters=32), seed=depth)
    source = save_published(
        theirs, tmp_path / "pose_resnet.pth.tar", data_parallel=depth == 50, counters=False
    )
    destination = tmp_path / "simplebaseline.pth"
    assert import_main(["simplebaseline", str(source), str(destination), "--inputRes", "64"]) == 0
    out = capsys.readouterr().out
    assert f"SimpleBaseline resnet{depth}, 3 deconvolutions of 32, 16 joints, 64x64 input" in out
    state = load_checkpoint(destination)
    config = state["config"]
    assert (config["model"], config["baseName"], config["nDeconv"], config["deconvFilters"]) == (
        "SimpleBaseline", f"resnet{depth}", 3, 32,
    )  # fmt: skip
    assert (config["dataset"], config["nJoints"], config["inputRes"], config["outputRes"]) == (
        "MPII",
        16,
        64,
        16,
    )
    assert (config["inputNorm"], config["coordConvention"], config["hmGauss"]) == ("bgr", "hrnet", 2.0)
    published = torch.load(source, weights_only=True)
    names = simple_baseline_names(AuthorsPoseResNet.SPECS[depth][1], depth == 50, 3)
    for key, value in published.items():
        module, _, leaf = key.removeprefix("module.").rpartition(".")
        assert torch.equal(state["model"][f"{names[module]}.{leaf}"], value), key
    # the source had no BatchNorm counters (PyTorch 0.4.0); they start at 0
    counters = [k for k in state["model"] if k.endswith("num_batches_tracked")]
    assert counters and all(int(state["model"][k]) == 0 for k in counters)
    trained = load_imported(destination)
    ours_input, their_input = pixels_both_ways(2, 64, 32, seed=4)  # non-square: 64 x 32
    with torch.no_grad():  # in float64: float32 rounding in the BGR conversion grows through the depth
        expected = theirs.double()(their_input.double())
        (ours,) = trained.model.double()(ours_input.double())
    assert ours.shape == expected.shape == (2, 16, 16, 8)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-8)
    assert expected.abs().max() > 1e-2


def test_published_sizes_follow_the_joint_count(hrnet_source, simple_baseline_source) -> None:
    hrnet = {k.removeprefix("module."): v for k, v in torch.load(hrnet_source[0], weights_only=True).items()}

    def size_of(state: dict) -> tuple:
        config = state["config"]
        return config["dataset"], config["inputRes"], config["aspectRatio"], config["outputRes"]

    assert size_of(import_hrnet(hrnet, InputSize())[0]) == ("COCO", 256, 0.75, 64)  # 256x192
    assert size_of(import_hrnet(hrnet, InputSize(384))[0]) == ("COCO", 384, 0.75, 96)  # 384x288
    resnet = torch.load(simple_baseline_source[0], weights_only=True)
    assert size_of(import_simple_baseline(resnet, InputSize())[0]) == ("MPII", 256, 1.0, 64)
    assert size_of(import_simple_baseline(resnet, InputSize(384))[0]) == ("MPII", 384, 1.0, 96)
    with pytest.raises(ConversionError, match="multiples of 32"):
        import_simple_baseline(resnet, InputSize(100))


def test_bad_sources_are_one_line(hrnet_source, simple_baseline_source, tmp_path: Path, capsys) -> None:
    def error_of(source_format: str, state: dict) -> str:
        path = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}.pth"
        torch.save(state, path)
        assert import_main([source_format, str(path), str(tmp_path / f"{path.stem}-out.pth")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    hrnet = torch.load(hrnet_source[0], weights_only=True)
    # a tensor of the wrong shape is named with its counterpart
    wrong = dict(hrnet) | {"module.stage3.1.fuse_layers.2.0.1.0.weight": torch.zeros(16, 3, 3, 3)}
    err = error_of("hrnet", wrong)
    assert "'stage3.1.fuse_layers.2.0.1.0.weight' has shape (16, 3, 3, 3)" in err
    assert "'stages.1.1.fuse.2.0.1.0.weight' needs (16, 4, 3, 3)" in err
    # a key the network does not have (a third-stage module more than the published layout)
    extra = dict(hrnet) | {"module.stage3.4.branches.0.0.conv1.weight": torch.zeros(4, 4, 3, 3)}
    assert "'stage3.4.branches.0.0.conv1.weight' has no counterpart in HRNet" in error_of("hrnet", extra)
    missing = {k: v for k, v in hrnet.items() if "stage4.2.branches.3.3" not in k}
    assert "the source has nothing for 'stages.2.2.branches.3.3." in error_of("hrnet", missing)
    # the wrong importer, and a joint set neither dataset has
    assert "not a Simple Baselines network" in error_of("simplebaseline", hrnet)
    seven = dict(hrnet) | {"module.final_layer.weight": torch.zeros(7, 4, 1, 1)}
    assert "7 joints: neither COCO's 17 nor MPII's 16" in error_of("hrnet", seven)
    resnet = torch.load(simple_baseline_source[0], weights_only=True)
    three = dict(resnet) | {"deconv_layers.0.weight": torch.zeros(512, 32, 3, 3)}
    assert "3x3 kernels" in error_of("simplebaseline", three)
    biased = dict(resnet) | {"deconv_layers.3.bias": torch.zeros(32)}
    assert "'deconv_layers.3.bias' maps to 'deconvs.1.0.bias', which the model does not have" in error_of(
        "simplebaseline", biased
    )


# ------------------------------------------------------------------------ -test, -predict, -export


@pytest.mark.e2e
@pytest.mark.slow  # about 20 s: two -test runs, two -predict runs, two ONNX exports
def test_imported_checkpoints_run_test_predict_and_export(
    hrnet_source, simple_baseline_source, tmp_path: Path, shared_data
) -> None:
    hrnet, resnet = tmp_path / "hrnet.pth", tmp_path / "resnet.pth"
    assert import_main(["hrnet", str(hrnet_source[0]), str(hrnet), "--inputRes", "128"]) == 0
    assert (
        import_main(["simplebaseline", str(simple_baseline_source[0]), str(resnet), "--inputRes", "64"]) == 0
    )
    common = ["--expDir", str(tmp_path / "runs"), "--progress", "none", "--nThreads", "0"]

    coco = shared_data / "coco_mini"
    coco_data = ["--dataDir", str(coco), "--valAnnotation", "test_coco.json", "--imageDir", "."]
    assert entry.main(["-test", "--loadModel", str(hrnet), *common, *coco_data, "--expID", "hrnet-test"]) == 0
    assert json.loads((tmp_path / "runs" / "hrnet-test" / "results.json").read_text())
    mpii = ["--dataDir", str(shared_data / "mpii_mini"), "--valAnnotation", "valid_first5.h5"]
    assert entry.main(["-test", "--loadModel", str(resnet), *common, *mpii, "--expID", "resnet-test"]) == 0
    assert (tmp_path / "runs" / "resnet-test" / "pred.mat").is_file()

    photo = next(coco.glob("*.jpg"))
    for name, checkpoint, joints in (("hrnet", hrnet, 17), ("resnet", resnet, 16)):
        assert (
            entry.main(
                ["-predict", str(photo), "--loadModel", str(checkpoint), *common, "--expID", f"{name}-p"]
            )
            == 0
        )
        (person,) = json.loads((tmp_path / "runs" / f"{name}-p" / "keypoints.json").read_text())
        assert len(person["keypoints"]) == 3 * joints and np.isfinite(person["keypoints"]).all()

        onnx_path = tmp_path / f"{name}.onnx"
        assert entry.main(["-export", str(onnx_path), "--loadModel", str(checkpoint)]) == 0
        notes = json.loads(onnx_path.with_suffix(".json").read_text())
        assert notes["decoding"]["convention"] == "hrnet" and notes["input"]["channel_order"] == "RGB"
        trained = load_imported(checkpoint)
        width, height = trained.input_size
        image = pixels_both_ways(2, height, width, seed=5)[0].float()
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = trained.model(image)[-1].numpy()
        # the ONNX graph takes the project's RGB input; SimpleBaseline's BGR conversion is inside it
        np.testing.assert_allclose(output, expected, atol=1e-4)
