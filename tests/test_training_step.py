"""The training step's fast paths: the running PCK computed on the device equals the numpy
metric, and --channelsLast / --compile train to the same numbers as the plain step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_RUN, read_metrics, run
from datasets.codecs import make_codec
from engine import _batch_pck
from metrics.pck import pck_summary


def numpy_pck(codec, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    """The straightforward running PCK: both decoded by the codec, scored by pck_summary."""
    pred, _ = codec.decode(output.numpy())
    truth, _ = codec.decode(target.numpy())
    normaliser = np.full(len(pred), codec.input_size[1] / 10.0)
    return pck_summary(pred, truth, weight.numpy(), normaliser)[0]


@pytest.mark.parametrize("convention", ["project", "hrnet", "udp"])
def test_device_pck_equals_the_numpy_metric_for_heatmaps(convention: str) -> None:
    codec = make_codec("heatmap", (48, 64), (12, 16), 1.0, convention)
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        target = torch.stack(
            [
                torch.from_numpy(
                    codec.encode(np.random.default_rng(trial * 7 + i).uniform(-4, 60, (5, 2)), np.ones(5))[0]
                )
                for i in range(6)
            ]
        )  # (6, 5, 16, 12)
        noise = torch.rand(target.shape, generator=generator) * (0.3 + 0.1 * trial)
        output = target.roll(shifts=trial % 3, dims=-1) + noise
        if trial % 4 == 0:
            output[:, :, 3:5, 3:5] = 2.0  # ties and far peaks
        weight = (torch.rand(6, 5, generator=generator) > 0.3).float()
        expected = numpy_pck(codec, output, target, weight)
        assert _batch_pck(codec, output, target, weight).item() == pytest.approx(expected, abs=1e-9)


def test_device_pck_equals_the_numpy_metric_for_regression() -> None:
    codec = make_codec("regression", (64, 64), (16, 16), 1.0)
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(8, 16, 2, generator=generator) - 0.5
    output = target + 0.08 * torch.randn(8, 16, 2, generator=generator)
    weight = (torch.rand(8, 16, generator=generator) > 0.2).float()
    expected = numpy_pck(codec, output, target, weight)
    assert 0 < expected < 100
    assert _batch_pck(codec, output, target, weight).item() == pytest.approx(expected, abs=1e-9)


def test_device_pck_is_nan_without_supervised_joints() -> None:
    codec = make_codec("heatmap", (32, 32), (8, 8), 1.0)
    zeros = torch.zeros(2, 3, 8, 8)
    assert np.isnan(_batch_pck(codec, zeros, zeros, torch.zeros(2, 3)).item())


def one_epoch(tmp_path: Path, name: str, *extra: str) -> list[dict]:
    run(tmp_path, "--expID", name, "--nEpochs", "1", *extra)
    return read_metrics(tmp_path / name)


@pytest.mark.parametrize("name", ["StackedHourGlass", "PyraNet"])
def test_channels_last_computes_the_same_outputs(name: str) -> None:
    from engine import prepare_images
    from models import build_model
    from utils.options import parse_options

    opts = parse_options([*TINY_RUN, "--model", name])
    torch.manual_seed(0)
    # eval mode: PyraNet's training-mode pooling is random by design
    model = build_model(opts.model, **vars(opts)).eval()
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = model(prepare_images(batch, None, torch.device("cpu")))[-1]
    model = model.to(memory_format=torch.channels_last)
    last = model(prepare_images(batch, None, torch.device("cpu"), channels_last=True))[-1]
    torch.testing.assert_close(last, plain, rtol=1e-3, atol=1e-4)  # float32 rounding only


@pytest.mark.e2e
def test_channels_last_run_trains_and_records_the_choice(tmp_path: Path) -> None:
    plain = one_epoch(tmp_path, "plain", "--channelsLast", "0")
    last = one_epoch(tmp_path, "last")  # the default
    # rounding differs (see the test above), and six Adam steps amplify it a little
    for a, b in zip(plain, last, strict=True):
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=0.1)
    checkpoint = torch.load(tmp_path / "last" / "last.pth", weights_only=True)
    assert checkpoint["config"]["channelsLast"] is True


@pytest.mark.e2e
@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path: Path) -> None:
    plain = one_epoch(tmp_path, "plain")
    compiled = one_epoch(tmp_path, "compiled", "--compile", "1")
    # a forward pass matches eager to 1e-4 (benchmarks/training_step.py checks it per model);
    # over an epoch Adam amplifies the rounding differences to a few percent
    for a, b in zip(plain, compiled, strict=True):
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=0.1)
    state = torch.load(tmp_path / "compiled" / "last.pth", weights_only=True)["model"]
    assert not any(key.startswith("_orig_mod") for key in state)
