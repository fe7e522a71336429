"""A target type is one registered codec: a toy one, registered from this file alone with a toy
model, trains, validates, and runs through -test, -predict and -export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import main as entry
from datasets.codecs import CONVENTIONS, TARGET_TYPES, Codec, CodecRequest, register_target_type
from models.registry import MODEL_REGISTRY, register_model


class UnitL1Loss(nn.Module):
    """Mean absolute error of the labelled joints' unit coordinates, summed over stages."""

    def forward(
        self, outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        return sum(((output - target).abs() * weight[..., None]).mean() for output in outputs)


class UnitCoordinates(Codec):
    """Joints as (x / (w - 1), y / (h - 1)): 0 at the first pixel centre, 1 at the last."""

    convention = CONVENTIONS["project"]
    output_names = ("unit_xy",)

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = tuple(input_size)
        self._span = np.array(self.input_size, dtype=np.float64) - 1

    @classmethod
    def build(cls, request: CodecRequest) -> UnitCoordinates:
        return cls(request.input_size)

    def encode(self, joints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        unit = np.asarray(joints, dtype=np.float64) / self._span
        weight = ((np.asarray(visible) > 0) & ((unit >= 0) & (unit <= 1)).all(axis=1)).astype(np.float32)
        return np.where(weight[:, None] > 0, unit, 0.0).astype(np.float32), weight

    def decode(self, outputs: Any) -> tuple[Any, Any]:
        span = torch.as_tensor(self._span) if isinstance(outputs, torch.Tensor) else self._span
        joints = outputs * span
        ones = (
            torch.ones_like(joints[..., 0])
            if isinstance(joints, torch.Tensor)
            else np.ones(joints.shape[:-1])
        )
        return joints, ones

    decode_tensor = decode

    def output_shape(self, num_joints: int) -> tuple[int, ...]:
        return (num_joints, 2)

    def mirror_back(self, outputs: torch.Tensor, flip_permutation: np.ndarray) -> torch.Tensor:
        swapped = outputs[:, torch.as_tensor(flip_permutation, device=outputs.device)].clone()
        swapped[..., 0] = 1 - swapped[..., 0]
        return swapped

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        return scores

    def describe_decoding(self) -> dict[str, Any]:
        return {"rule": "input px = u x (size - 1) per axis", "flip_test": "x -> 1 - x, flip pairs swapped"}

    def loss(self) -> nn.Module:
        return UnitL1Loss()


class TinyRegressor(nn.Module):
    def __init__(self, n_joints: int) -> None:
        super().__init__()
        self.n_joints = n_joints
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(8, n_joints * 2)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        # (N, 3, H, W) -> one stage of (N, K, 2)
        return [torch.sigmoid(self.head(self.features(image).flatten(1))).view(-1, self.n_joints, 2)]


@pytest.fixture
def toy_target_type():
    register_target_type("unit", conventions=("project",))(UnitCoordinates)
    register_model("UnitRegressor", target="unit")(lambda n_joints=16: TinyRegressor(n_joints))
    yield
    MODEL_REGISTRY.remove("UnitRegressor")
    TARGET_TYPES.remove("unit")


@pytest.mark.e2e
def test_a_target_type_registered_in_a_test_file_trains_tests_predicts_and_exports(
    toy_target_type, tmp_path: Path, capsys
) -> None:
    conf = tmp_path / "unit.defconf"
    conf.write_text("model: UnitRegressor\ninputRes: 32\noutputRes: 8\n")
    common = ["--expDir", str(tmp_path), "--progress", "none", "--nThreads", "0"]
    train = ["-ModelConfig", str(conf), "--syntheticTrain", "32", "--syntheticVal", "8", "--imageRes", "48",
             "--data_loader_size", "8", "--nEpochs", "1", "--expID", "unit", "--optimizer_type", "Adam"]  # fmt: skip
    assert entry.main([*train, *common]) == 0
    run_dir = tmp_path / "unit"
    (record,) = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in line
    ]
    assert record["split"] == "val" and np.isfinite(record["loss"]) and "PCKh" in record
    checkpoint = run_dir / "last.pth"
    assert entry.main(["-test", "--loadModel", str(checkpoint), "--expID", "test", *common]) == 0
    assert "PCKh" in capsys.readouterr().out
    examples = run_dir / "examples"
    assert entry.main(["-predict", str(examples), "--bboxFile", str(examples / "boxes.json"), "--loadModel",
                       str(checkpoint), "--expID", "predict", *common]) == 0  # fmt: skip
    poses = json.loads((tmp_path / "predict" / "keypoints.json").read_text())
    assert len(poses) == 4 and all(len(p["keypoints"]) == 16 * 3 for p in poses)
    assert entry.main(["-export", str(tmp_path / "unit.onnx"), "--loadModel", str(checkpoint)]) == 0
    notes = json.loads((tmp_path / "unit.json").read_text())
    assert notes["decoding"]["rule"] == "input px = u x (size - 1) per axis"
    assert notes["target_type"] == "unit" and notes["output"]["name"] == "unit_xy"
    assert notes["output"]["shape"] == ["batch", 16, 2] and notes["decoding"]["crop"].startswith(
        "A person box"
    )


def test_a_codec_without_what_has_no_safe_default_cannot_be_made() -> None:
    class Half(Codec):  # no decoding, no confidence, no loss
        def encode(self, joints, visible):
            return joints, visible

    with pytest.raises(TypeError, match="abstract"):
        Half()
