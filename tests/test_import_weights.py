"""models.import_weights princeton-vl: a checkpoint laid out as Newell et al.'s PyTorch port saves
it becomes a checkpoint of this project that -test / -predict / -export can use.

``PortPoseNet`` below rebuilds the port's module tree (princeton-vl/pytorch_stacked_hourglass,
models/posenet.py and models/layers.py) from reading it: the same attribute names, so the same
state-dict keys, and the same forward pass, so the converted network can be compared output for
output with the source network, not only key by key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
from conftest import REPO_ROOT
from models.import_weights import main as import_main
from utils.checkpoint import load_checkpoint


class PortConv(nn.Module):
    def __init__(
        self, inp: int, out: int, kernel: int = 3, stride: int = 1, bn: bool = False, relu: bool = True
    ):
        super().__init__()
        self.conv = nn.Conv2d(inp, out, kernel, stride, padding=(kernel - 1) // 2, bias=True)
        self.relu = nn.ReLU() if relu else None
        self.bn = nn.BatchNorm2d(out) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x) if self.bn is not None else x
        return self.relu(x) if self.relu is not None else x


class PortResidual(nn.Module):
    def __init__(self, inp: int, out: int):
        super().__init__()
        half = out // 2
        self.relu = nn.ReLU()
        self.bn1, self.conv1 = nn.BatchNorm2d(inp), PortConv(inp, half, 1, relu=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(half), PortConv(half, half, 3, relu=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(half), PortConv(half, out, 1, relu=False)
        self.skip_layer = PortConv(inp, out, 1, relu=False)  # built always, used only if widths differ
        self.need_skip = inp != out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip_layer(x) if self.need_skip else x
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return self.conv3(self.relu(self.bn3(out))) + residual


class PortHourglass(nn.Module):
    def __init__(self, n: int, f: int):
        super().__init__()
        self.up1, self.pool1, self.low1 = PortResidual(f, f), nn.MaxPool2d(2, 2), PortResidual(f, f)
        self.low2 = PortHourglass(n - 1, f) if n > 1 else PortResidual(f, f)
        self.low3, self.up2 = PortResidual(f, f), nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up1(x) + self.up2(self.low3(self.low2(self.low1(self.pool1(x)))))


class PortMerge(nn.Module):
    def __init__(self, x_dim: int, y_dim: int):
        super().__init__()
        self.conv = PortConv(x_dim, y_dim, 1, relu=False, bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PortPoseNet(nn.Module):
    def __init__(self, nstack: int, inp_dim: int, oup_dim: int):
        super().__init__()
        self.nstack = nstack
        self.pre = nn.Sequential(
            PortConv(3, 64, 7, 2, bn=True, relu=True), PortResidual(64, 128), nn.MaxPool2d(2, 2),
            PortResidual(128, 128), PortResidual(128, inp_dim),
        )  # fmt: skip
        self.hgs = nn.ModuleList([nn.Sequential(PortHourglass(4, inp_dim)) for _ in range(nstack)])
        self.features = nn.ModuleList(
            [
                nn.Sequential(PortResidual(inp_dim, inp_dim), PortConv(inp_dim, inp_dim, 1, bn=True))
                for _ in range(nstack)
            ]
        )
        self.outs = nn.ModuleList([PortConv(inp_dim, oup_dim, 1, relu=False) for _ in range(nstack)])
        self.merge_features = nn.ModuleList([PortMerge(inp_dim, inp_dim) for _ in range(nstack - 1)])
        self.merge_preds = nn.ModuleList([PortMerge(oup_dim, inp_dim) for _ in range(nstack - 1)])

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:  # (N, H, W, 3) RGB in [0, 1], as the port feeds it
        x = self.pre(imgs.permute(0, 3, 1, 2))
        preds = []
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            preds.append(self.outs[i](feature))
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](preds[-1]) + self.merge_features[i](feature)
        return torch.stack(preds, 1)


class PortTrainer(nn.Module):
    """The port's train.py wraps PoseNet in DataParallel inside a Trainer: keys 'model.module.*'."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.model = nn.DataParallel(net)


@pytest.fixture(scope="module")
def port_checkpoint(tmp_path_factory) -> tuple[Path, PortPoseNet]:
    torch.manual_seed(0)
    net = PortPoseNet(nstack=2, inp_dim=256, oup_dim=16)
    for module in net.modules():  # non-trivial BatchNorm statistics, so eval mode is tested too
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    path = tmp_path_factory.mktemp("port") / "checkpoint.pt"
    state = {"state_dict": PortTrainer(net).state_dict(), "optimizer": {}, "epoch": 100}
    torch.save(state, path)
    return path, net.eval()


def test_converted_port_checkpoint_gives_the_ports_heatmaps(port_checkpoint, tmp_path: Path, capsys) -> None:
    source, port = port_checkpoint
    destination = tmp_path / "hg2.pth"
    assert import_main(["princeton-vl", str(source), str(destination)]) == 0
    assert "2 stacks of 256, 16 joints" in capsys.readouterr().out
    state = load_checkpoint(destination)
    config = state["config"]
    assert (config["model"], config["nStack"], config["nChannels"], config["nJoints"]) == (
        "StackedHourGlass",
        2,
        256,
        16,
    )
    assert config["coordConvention"] == "princeton-vl" and config["inputNorm"] == "unit"
    # the same picture through both networks: the port reads RGB in [0, 1], ours normalised RGB
    from build import load_trained
    from datasets.base import IMAGENET_MEAN, IMAGENET_STD
    from utils.options import parse_options

    pixels = torch.rand(2, 64, 64, 3)
    normalised = ((pixels - torch.from_numpy(IMAGENET_MEAN)) / torch.from_numpy(IMAGENET_STD)).permute(
        0, 3, 1, 2
    )
    trained = load_trained(
        parse_options(["-export", str(tmp_path / "x.onnx"), "--loadModel", str(destination)])
    )
    with torch.no_grad():
        theirs = port(pixels)  # (N, stacks, K, H, W)
        ours = trained.model(normalised.contiguous())
    for stack in range(2):
        torch.testing.assert_close(ours[stack], theirs[:, stack], atol=1e-5, rtol=1e-4)
    # 14 unused equal-width skip convs per stack (+ the stem's) were dropped, nothing else
    port_keys = {k for k in PortTrainer(port).state_dict() if not k.endswith("num_batches_tracked")}
    assert len(port_keys) - len([k for k in state["model"] if not k.endswith("num_batches_tracked")]) == 2 * (
        14 * 2 + 1
    )


@pytest.mark.parametrize("width", [128, 64])
def test_narrower_port_checkpoint_keeps_the_ports_64_wide_stem(width: int, tmp_path: Path, capsys) -> None:
    """The port's stem is 64, 128, 128 wide whatever inp_dim is; ours is nChannels / 4 wide unless
    --stemChannels says otherwise, which the import sets."""
    from build import load_trained
    from utils.options import parse_options

    torch.manual_seed(0)
    port = PortPoseNet(nstack=2, inp_dim=width, oup_dim=16).eval()
    source, destination = tmp_path / "port.pt", tmp_path / "hg.pth"
    torch.save({"state_dict": PortTrainer(port).state_dict()}, source)
    assert import_main(["princeton-vl", str(source), str(destination)]) == 0
    assert f"2 stacks of {width}, 16 joints" in capsys.readouterr().out
    config = load_checkpoint(destination)["config"]
    assert (config["nChannels"], config["stemChannels"]) == (width, 64)
    trained = load_trained(
        parse_options(["-export", str(tmp_path / "x.onnx"), "--loadModel", str(destination)])
    )
    from datasets.base import IMAGENET_MEAN, IMAGENET_STD

    pixels = torch.rand(1, 64, 64, 3)  # 16x16 at the hourglasses: 4 halvings to 1x1
    normalised = (pixels - torch.from_numpy(IMAGENET_MEAN)) / torch.from_numpy(IMAGENET_STD)
    with torch.no_grad():
        theirs = port(pixels)
        ours = trained.model(normalised.permute(0, 3, 1, 2).contiguous())
    for stack in range(2):
        torch.testing.assert_close(ours[stack], theirs[:, stack], atol=1e-5, rtol=1e-4)


@pytest.mark.e2e
def test_converted_checkpoint_runs_test_predict_and_export(
    port_checkpoint, tmp_path: Path, shared_data
) -> None:
    source, _ = port_checkpoint
    destination = tmp_path / "hg2.pth"
    assert import_main(["princeton-vl", str(source), str(destination)]) == 0
    common = [
        "--loadModel",
        str(destination),
        "--expDir",
        str(tmp_path),
        "--progress",
        "none",
        "--nThreads",
        "0",
    ]
    mpii = [
        "--dataDir",
        str(shared_data / "mpii_mini"),
        "--valAnnotation",
        "valid_first5.h5",
        "--flipTest",
        "0",
    ]
    assert entry.main(["-test", *common, *mpii, "--expID", "t"]) == 0
    assert (tmp_path / "t" / "pred.mat").is_file()
    assert (
        entry.main(["-predict", str(shared_data / "mpii_mini" / "005808361.jpg"), *common, "--expID", "p"])
        == 0
    )
    assert (tmp_path / "p" / "keypoints.json").is_file()


def test_bad_sources_are_one_line(tmp_path: Path, port_checkpoint, capsys) -> None:
    source, _ = port_checkpoint
    (tmp_path / "taken.pth").write_bytes(b"")
    assert import_main(["princeton-vl", str(source), str(tmp_path / "taken.pth")]) == 2
    assert "exists; choose a new file name" in capsys.readouterr().err
    # a pickled object that weights_only refuses
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Path("x")}, tmp_path / "odd.pt")
    assert import_main(["princeton-vl", str(tmp_path / "odd.pt"), str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trustSource" in err
    # a tensor of the wrong shape is named
    state = torch.load(source, weights_only=True)
    state["state_dict"]["model.module.outs.1.conv.weight"] = torch.zeros(17, 256, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    assert import_main(["princeton-vl", str(tmp_path / "bad.pt"), str(tmp_path / "b.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'outs.1.conv.weight' has shape (17, 256, 1, 1)" in err and "heads.1.weight" in err


@pytest.mark.e2e  # a subprocess
@pytest.mark.parametrize(("argv", "status"), [(["--help"], 0), ([], 2), (["nosuch", "a.pt", "b.pth"], 2)])
def test_help_and_argument_errors_answer_before_torch_is_imported(argv: list[str], status: int) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "models.import_weights", *argv],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == status, result.stderr
    assert "princeton-vl" in result.stdout + result.stderr  # the usage names the formats
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "models.registry" not in imported
