"""-export writes an ONNX model of the last stage with a dynamic batch, equal to PyTorch's output,
and beside it a JSON whose decoding rule, applied by hand, gives the codec's joints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import main as entry
from build import load_trained
from conftest import CONF_FILES, SMALL_WIDTHS, small_model
from datasets.skeletons import MPII_JOINTS
from models import build_model, list_models
from utils.checkpoint import save_checkpoint
from utils.options import parse_options

# Each model at a size that exports in a few seconds on one core (32x32 input, 8x8 heatmaps;
# conftest's widths)
AT_32 = {
    "StackedHourGlass": ["--nReductions", "2"],
    "PoseAttention": ["--nReductions", "2"],
    "PyraNet": ["--nReductions", "2"],
    "DeepPose": ["--cropSize", "16"],
    # a ResNet trunk needs sides that are multiples of 32: a 32x64 (w x h) crop, 8x16 heatmaps
    "SimpleBaseline": ["--inputRes", "64", "--outputRes", "16", "--aspectRatio", "0.5"],
    # as SimpleBaseline: both sides multiples of 32
    "RTMPose": ["--inputRes", "64", "--outputRes", "16", "--aspectRatio", "0.5"],
    # 16x16 patches: a 48x64 (w x h) crop, 12x16 heatmaps
    "ViTPose": ["--inputRes", "64", "--outputRes", "16"],
}  # fmt: skip
SMALL = {name: small_model(name, *AT_32.get(name, [])) for name in SMALL_WIDTHS}
CASES = [(name, "project") for name in sorted(SMALL)] + [
    ("StackedHourGlass", "hrnet"), ("RTMPose", "mmpose"), ("ViTPose", "udp"),
]  # fmt: skip
# a 24x32 (w x h) crop; sigma 1 also where the conf file has the paper's 2
SIZES = ["--inputRes", "32", "--outputRes", "8", "--aspectRatio", "0.75", "--hmGauss", "1"]
# (height, width) of the crop and of the heatmaps (RTMPose: of the crop only)
FRAMES = {
    "SimpleBaseline": ((64, 32), (16, 8)),
    "RTMPose": ((64, 32), (16, 8)),
    "ViTPose": ((64, 48), (16, 12)),
}
FRAME = ((32, 24), (8, 6))
# (anchor, crop_center, flip_shift, size_offset) each convention's notes state
CONVENTION_NUMBERS = {
    "project": (0.5, 0.0, 0, 0.0), "hrnet": (0.0, 0.5, 1, 0.0), "udp": (0.0, 0.0, 0, 1.0), "mmpose": (0.0, 0.5, 0, 0.0),
}  # fmt: skip


def make_checkpoint(folder: Path, name: str, convention: str) -> tuple[Path, torch.nn.Module]:
    """An untrained model's checkpoint (random batch-norm statistics, so an export in training
    mode would show), and the model itself in eval mode."""
    conf = CONF_FILES[name]
    opts = parse_options(
        [
            "-ModelConfig",
            str(conf),
            *SIZES,
            *SMALL[name],
            "--coordConvention",
            convention,
            "--expDir",
            str(folder),
        ]
    )
    torch.manual_seed(0)
    model = build_model(opts.model, **vars(opts))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # a zero-initialised head (DeepPose's refinements, IEF's corrections) would return its
        # input pose whatever the layers before it compute: the export would be checked on nothing
        for parameter in model.parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.05, generator=generator)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    path = save_checkpoint({"model": model.state_dict(), "config": opts.config}, folder / f"{name}.pth")
    return path, model.eval()


def decode_by_the_json(output: np.ndarray, notes: dict) -> np.ndarray:
    """Joints in input px following the JSON's decoding fields only, as a deployer would."""
    decoding = notes["decoding"]
    if notes["target_type"] == "regression":
        return (output.astype(np.float64) + 0.5) * np.array(notes["input"]["size"]) - 0.5
    if notes["target_type"] == "simcc":  # output: simcc_x then simcc_y, as the JSON's outputs list them
        x_bins = notes["outputs"][0]["shape"][-1]
        bins = np.stack([output[..., :x_bins].argmax(-1), output[..., x_bins:].argmax(-1)], axis=-1)
        return (bins + decoding["anchor"]) / decoding["split_ratio"] - decoding["anchor"]
    n, k, height, width = output.shape
    flat = output.reshape(n, k, -1)
    peak = flat.argmax(axis=2)
    u, v = peak % width, peak // width
    maps = output.astype(np.float64)
    rows = np.arange(n)[:, None], np.arange(k)[None, :]

    def step(lower: np.ndarray, higher: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
        inside = (at > 0) & (at < size - 1)
        return np.where(inside, 0.25 * np.sign(higher - lower), 0.0)

    du = step(
        maps[(*rows, v, np.clip(u - 1, 0, width - 1))],
        maps[(*rows, v, np.clip(u + 1, 0, width - 1))],
        u,
        width,
    )
    dv = step(
        maps[(*rows, np.clip(v - 1, 0, height - 1), u)],
        maps[(*rows, np.clip(v + 1, 0, height - 1), u)],
        v,
        height,
    )
    heatmap_px = np.stack([u + du, v + dv], axis=-1)
    anchor, stride = decoding["anchor"], np.array(decoding["stride"])
    return (heatmap_px + anchor) * stride - anchor


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "convention"), CASES)
def test_export_matches_pytorch_and_describes_the_decoding(
    name: str, convention: str, tmp_path: Path
) -> None:
    checkpoint, model = make_checkpoint(tmp_path, name, convention)
    (height, width), (map_height, map_width) = FRAMES.get(name, FRAME)
    onnx_path = tmp_path / "exported" / "pose.onnx"
    onnx_path.parent.mkdir()
    onnx_path.write_bytes(b"an older export")  # overwritten
    assert entry.main(["-export", str(onnx_path), "--loadModel", str(checkpoint)]) == 0

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "image" and image_input.shape[1:] == [3, height, width]
    assert isinstance(image_input.shape[0], str)  # a dynamic batch
    simcc = name == "RTMPose"
    names = [node.name for node in session.get_outputs()]
    assert names == (["simcc_x", "simcc_y"] if simcc else [names[0]])
    generator = torch.Generator().manual_seed(2)
    difference, scale = 0.0, 1.0
    for batch in (2, 3):
        image = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(image)[-1].numpy()
        output = np.concatenate(session.run(None, {"image": image.numpy()}), axis=-1)  # one, or x then y
        assert output.shape == expected.shape
        difference = max(difference, float(np.abs(output - expected).max()))
        # an untrained HRNet's eval-mode outputs reach 1e4 (its fusions sum up to four branches,
        # module after module, and the running statistics are random): relative to the output there
        scale = max(scale, float(np.abs(expected).max()))
    print(f"{name} ({convention}): max |onnx - torch| = {difference:.2e}, max |torch| = {scale:.2e}")
    assert difference < 1e-4 * scale

    notes = json.loads(onnx_path.with_suffix(".json").read_text())
    assert notes["model"] == name and notes["checkpoint"] == str(checkpoint.resolve())
    assert notes["onnx"] == "pose.onnx" and notes["input"]["name"] == "image"
    assert notes["input"]["size"] == [width, height] and notes["input"]["channel_order"] == "RGB"
    assert notes["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert notes["input"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert notes["joints"]["names"] == list(MPII_JOINTS.names)
    assert notes["joints"]["flip_pairs"] == [list(p) for p in MPII_JOINTS.flip_pairs]
    assert notes["joints"]["skeleton"] == [list(p) for p in MPII_JOINTS.skeleton]
    decoding = notes["decoding"]
    assert {"rule", "crop", "flip_test"} <= set(decoding)
    if notes["target_type"] in ("heatmap", "compositional"):  # DLCM exports its last stage, the joints
        assert notes["output"]["shape"] == ["batch", 16, map_height, map_width]
        assert decoding["convention"] == convention and decoding["heatmap_size"] == [map_width, map_height]
        # UDP measures from the first pixel centre to the last: (size - 1) / (heatmap size - 1)
        offset = 1 if convention == "udp" else 0
        assert decoding["stride"] == [
            (width - offset) / (map_width - offset),
            (height - offset) / (map_height - offset),
        ]
        assert decoding["sigma"] == 1.0
        assert (
            decoding["anchor"], decoding["crop_center"], decoding["flip_shift"], decoding["size_offset"]
        ) == CONVENTION_NUMBERS[convention]  # fmt: skip
        if convention == "udp":
            assert "first and last pixel centres" in decoding["crop"]
    elif simcc:  # 2 bins per pixel of the 32x64 (w x h) crop
        assert notes["outputs"] == [
            {"name": "simcc_x", "shape": ["batch", 16, 64], "dtype": "float32"},
            {"name": "simcc_y", "shape": ["batch", 16, 128], "dtype": "float32"},
        ]
        assert (decoding["anchor"], decoding["crop_center"], decoding["flip_shift"]) == (
            CONVENTION_NUMBERS[convention][:3]
        )
        assert decoding["split_ratio"] == 2.0 and decoding["bins"] == [64, 128]
    else:
        assert notes["target_type"] == "regression" and notes["output"]["shape"] == ["batch", 16, 2]

    # the rule as written in the JSON gives the joints the project's own decoding gives
    trained = load_trained(parse_options(["--loadModel", str(checkpoint)]))
    joints, _ = trained.codec.decode(output)
    np.testing.assert_allclose(decode_by_the_json(output, notes), joints, atol=1e-9)


def test_every_registered_model_is_exported() -> None:
    assert set(list_models()) == set(SMALL)


@pytest.mark.e2e
def test_a_missing_directory_is_named_in_one_line(tmp_path: Path, capsys) -> None:
    checkpoint, _ = make_checkpoint(tmp_path, "StackedHourGlass", "project")
    target = tmp_path / "missing" / "pose.onnx"
    with pytest.raises(SystemExit) as exit_info:
        entry.main(["-export", str(target), "--loadModel", str(checkpoint)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"main.py: error: -export: directory {target.parent} does not exist (create it, or name another path)"
    ]
    assert not target.parent.exists()
