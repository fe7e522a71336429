"""DARK decoding (``--postProcess dark``): accurate to a small fraction of a pixel on Gaussians,
safe on degenerate maps, equal to the rule the -export notes spell out, and the rule that
validation, -test, -predict and -export actually use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import datasets.codecs as codecs
import main as entry
from conftest import REPO_ROOT, TINY_RUN, parse_error
from datasets.codecs import HeatmapCodec, dark_peaks, make_codec, quarter_peaks, taylor_step
from utils.checkpoint import load_checkpoint
from utils.options import parse_options

HEIGHT, WIDTH = 64, 48  # COCO's heatmaps


def gaussians(centres: np.ndarray, sigma: float, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """centres (N, K, 2) heatmap px -> unit-peak Gaussians (N, K, H, W), written out here rather
    than taken from the codec's encode."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = xs - centres[..., 0, None, None]
    dy = ys - centres[..., 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2))


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_dark_is_far_more_accurate_than_the_quarter_rule_on_clean_gaussians(sigma: float) -> None:
    rng = np.random.default_rng(int(sigma * 10))
    centres = rng.uniform((0, 0), (WIDTH - 1, HEIGHT - 1), size=(40, 17, 2))  # anywhere on the map
    maps = gaussians(centres, sigma).astype(np.float32)
    dark = np.linalg.norm(dark_peaks(maps, sigma)[0] - centres, axis=-1)
    quarter = np.linalg.norm(quarter_peaks(maps)[0] - centres, axis=-1)
    print(f"sigma {sigma}: mean error DARK {dark.mean():.4f} px, quarter {quarter.mean():.4f} px")
    assert dark.mean() < quarter.mean() / 5
    # the quarter rule cannot get below about 0.19 px on uniform centres: it only knows four places
    assert dark.mean() < 0.05 < 0.15 < quarter.mean()
    interior = (centres.min(axis=-1) >= 3 * sigma) & (
        (np.array([WIDTH, HEIGHT]) - 1 - centres).min(axis=-1) >= 3 * sigma
    )
    assert dark[interior].max() < 0.01


def test_a_gaussian_on_a_pixel_decodes_to_that_pixel_inside_and_near_the_edge() -> None:
    sigma = 2.0
    on_pixels = np.array([[[20.0, 30.0], [1.0, 30.0], [20.0, 62.0], [5.0, 5.0], [47.0, 63.0]]])
    maps = gaussians(on_pixels, sigma).astype(np.float32)
    joints, scores = dark_peaks(maps, sigma)
    np.testing.assert_allclose(joints[0, 0], on_pixels[0, 0], atol=1e-6)  # symmetric: exact
    # near the edge the zero-padded smoothing (or the raw map's step) leaves a trace
    np.testing.assert_allclose(joints, on_pixels, atol=1e-3)
    np.testing.assert_allclose(scores, 1.0)


def test_a_tilted_elongated_gaussian_needs_the_cross_term() -> None:
    """An anisotropic Gaussian at 35 degrees: the Hessian's off-diagonal is large, and only the
    full 2-D step -H^-1 g (not two 1-D steps) lands on the centre."""
    centre = np.array([23.3, 31.7])
    angle = math.radians(35)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    precision = np.linalg.inv(rotation @ np.diag([3.0**2, 1.2**2]) @ rotation.T)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    d = np.stack([xs - centre[0], ys - centre[1]], axis=-1)
    heatmap = np.exp(-0.5 * np.einsum("hwi,ij,hwj->hw", d, precision, d))
    joints, _ = dark_peaks(heatmap[None, None].astype(np.float32), 2.0)
    assert np.linalg.norm(joints[0, 0] - centre) < 0.02


def test_degenerate_maps_give_finite_joints_and_border_peaks_keep_their_free_axis() -> None:
    sigma = 2.0
    ridge = np.exp(-((np.arange(HEIGHT) - 20.4) ** 2) / (2 * sigma**2))[:, None].repeat(WIDTH, axis=1)
    edge_peak = gaussians(np.array([[[0.0, 30.3]]]), sigma)[0, 0]  # on the left column
    corner = np.zeros((HEIGHT, WIDTH))
    corner[0, 0] = 1.0
    spike = np.zeros((HEIGHT, WIDTH))
    spike[30, 20] = 1.0  # one hot pixel: log-flat around it after the floor
    maps = np.stack(
        [
            np.zeros((HEIGHT, WIDTH)),  # flat zero
            np.full((HEIGHT, WIDTH), 0.3),  # flat positive
            np.full((HEIGHT, WIDTH), -0.2),  # flat negative
            -gaussians(np.array([[[20.0, 30.0]]]), sigma)[0, 0],  # a valley: no maximum
            ridge,  # constant along x: singular Hessian
            edge_peak,
            corner,
            spike,
        ]
    )[None]
    with np.errstate(divide="raise", invalid="raise"):  # no division by zero or log of zero slips through
        joints, scores = dark_peaks(maps, sigma)
    assert np.isfinite(joints).all() and np.isfinite(scores).all()
    assert ((joints >= 0) & (joints <= np.array([WIDTH - 1, HEIGHT - 1]))).all()
    # nothing above the log floor (zero, negative, a valley): no step from a pixel
    np.testing.assert_array_equal(joints[0, [0, 2, 3]], np.round(joints[0, [0, 2, 3]]))
    assert abs(joints[0, 4, 1] - 20.4) < 0.01  # ridge: y found, x anywhere on it
    assert joints[0, 5, 0] == 0.0 and abs(joints[0, 5, 1] - 30.3) < 0.01  # edge: x kept, y refined
    np.testing.assert_array_equal(joints[0, 6], [0.0, 0.0])
    assert np.abs(joints[0, 7] - [20.0, 30.0]).max() < 0.5
    nan_joints, _ = dark_peaks(np.full((1, 1, 8, 8), np.nan, dtype=np.float32), 1.0)
    assert np.isfinite(nan_joints).all()
    # on the ridge itself the Hessian is singular (no curvature along x): x stays, y steps alone
    stepped = taylor_step(ridge[None, None], np.array([[20]]), np.array([[20]]))
    assert stepped[0, 0, 0] == 20 and abs(stepped[0, 0, 1] - 20.4) < 1e-6


@pytest.mark.parametrize("convention", ["project", "hrnet"])
def test_dark_goes_through_the_same_frame_conversion_as_the_quarter_rule(convention: str) -> None:
    """Encode joints in input px, decode with both rules: the same conversion to the input frame,
    DARK within a few hundredths of a heatmap pixel, the quarter rule within its quarter."""
    input_size, heatmap_size, sigma = (192, 256), (WIDTH, HEIGHT), 2.0
    dark = make_codec("heatmap", input_size, heatmap_size, sigma, convention, "dark")
    quarter = make_codec("heatmap", input_size, heatmap_size, sigma, convention, "quarter")
    rng = np.random.default_rng(3)
    joints = rng.uniform(16, np.array(input_size) - 17, size=(30, 17, 2))
    targets = np.stack([dark.encode(person, np.ones(17))[0] for person in joints])
    stride = np.array(input_size) / np.array(heatmap_size)
    dark_error = np.abs(dark.decode(targets)[0] - joints) / stride
    quarter_error = np.abs(quarter.decode(targets)[0] - joints) / stride
    assert dark_error.max() < 0.05 and quarter_error.max() <= 0.25 + 1e-6
    assert dark_error.mean() < quarter_error.mean() / 5


def test_unknown_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown post-process 'darker'"):
        HeatmapCodec((32, 32), (8, 8), 1.0, post_process="darker")
    with pytest.raises(ValueError, match="heatmap models only"):
        make_codec("regression", (32, 32), (8, 8), 1.0, post_process="dark")


def test_option_errors_are_one_line(capsys) -> None:
    err = parse_error(capsys, ["--postProcess", "Dark"])
    assert err == "main.py: error: postProcess: 'Dark' is not one of quarter, dark (on the command line)"
    deeppose = str(REPO_ROOT / "conf" / "models" / "DeepPose.defconf")
    err = parse_error(capsys, ["-ModelConfig", deeppose, "--postProcess", "dark"])
    assert err == "main.py: error: postProcess: 'dark' applies to heatmap models only (on the command line)"


# --- the rule as the -export notes write it, one joint at a time -----------------------------


def dark_by_the_notes(
    heatmap: np.ndarray, sigma: float, reach: float, floor: float, curvature: float
) -> tuple[float, float]:
    """One (H, W) heatmap -> (u, v), following the words of the JSON's DARK rule with explicit
    loops (a 2-D convolution tap by tap, a 2x2 solve), nothing shared with the codec."""
    height, width = heatmap.shape
    radius = math.ceil(3 * sigma)
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = np.pad(heatmap, radius)  # zero beyond the map
    smoothed = np.zeros_like(heatmap)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            smoothed += kernel[dy, dx] * padded[dy : dy + height, dx : dx + width]
    if smoothed.max() > 0 and heatmap.max() > 0:
        smoothed *= heatmap.max() / smoothed.max()
    source = smoothed
    v, u = np.unravel_index(np.argmax(smoothed), smoothed.shape)
    if min(u, width - 1 - u) < reach * sigma or min(v, height - 1 - v) < reach * sigma:
        source = heatmap
        v, u = np.unravel_index(np.argmax(heatmap), heatmap.shape)

    def log(du: int, dv: int) -> float:
        return math.log(max(source[min(max(v + dv, 0), height - 1), min(max(u + du, 0), width - 1)], floor))

    gradient = np.array([(log(1, 0) - log(-1, 0)) / 2, (log(0, 1) - log(0, -1)) / 2])
    cross = (log(1, 1) - log(1, -1) - log(-1, 1) + log(-1, -1)) / 4
    hessian = np.array(
        [[log(1, 0) - 2 * log(0, 0) + log(-1, 0), cross], [cross, log(0, 1) - 2 * log(0, 0) + log(0, -1)]]
    )
    inside = (0 < u < width - 1, 0 < v < height - 1)
    bent = [inside[axis] and hessian[axis, axis] < -curvature for axis in (0, 1)]
    if all(bent) and np.linalg.det(hessian) > curvature**2:
        step = -np.linalg.solve(hessian, gradient)
    else:
        step = [-gradient[axis] / hessian[axis, axis] if bent[axis] else 0.0 for axis in (0, 1)]
    step = [s if abs(s) <= 1 else 0.0 for s in step]
    return u + step[0], v + step[1]


def test_the_vectorised_decoding_equals_the_rule_joint_by_joint() -> None:
    sigma = 2.0
    rng = np.random.default_rng(5)
    centres = rng.uniform((0, 0), (WIDTH - 1, HEIGHT - 1), size=(3, 17, 2))
    maps = gaussians(centres, sigma) + 0.08 * rng.standard_normal((3, 17, HEIGHT, WIDTH))
    maps[0, :3] = 0.0  # flat
    maps[1, :2] = -maps[1, :2]  # valleys
    maps = maps.astype(np.float32)
    joints, _ = dark_peaks(maps, sigma)
    expected = np.array(
        [
            [dark_by_the_notes(maps[n, k].astype(np.float64), sigma, 1.5, 1e-10, 1e-5) for k in range(17)]
            for n in range(3)
        ]
    )
    np.testing.assert_allclose(joints, expected, atol=1e-3)


# --- the option reaches every decoding: validation, -test, -predict, -export ---------------------


@pytest.fixture
def decode_calls(monkeypatch) -> dict[str, int]:
    """Counts the calls of each rule (HeatmapCodec.decode looks them up in datasets.codecs)."""
    calls = {"quarter": 0, "dark": 0}
    quarter, dark = codecs.quarter_peaks, codecs.dark_peaks

    def counting_quarter(heatmaps):
        calls["quarter"] += 1
        return quarter(heatmaps)

    def counting_dark(heatmaps, sigma):
        calls["dark"] += 1
        return dark(heatmaps, sigma)

    monkeypatch.setattr(codecs, "quarter_peaks", counting_quarter)
    monkeypatch.setattr(codecs, "dark_peaks", counting_dark)
    return calls


@pytest.mark.e2e
@pytest.mark.slow
def test_the_rule_reaches_training_test_predict_and_export(tmp_path: Path, decode_calls) -> None:
    run = ["--expDir", str(tmp_path), "--progress", "none"]
    assert entry.main([*TINY_RUN, "--nEpochs", "1", *run, "--expID", "train", "--postProcess", "dark"]) == 0
    assert decode_calls["dark"] > 0 and decode_calls["quarter"] == 0  # training PCK and validation
    checkpoint = tmp_path / "train" / "last.pth"
    assert load_checkpoint(checkpoint)["config"]["postProcess"] == "dark"
    assert "postProcess: dark\n" in (tmp_path / "train" / "config.defconf").read_text()
    # a resume may change the rule: it steers evaluation, not what is trained
    opts = parse_options(["--loadModel", str(checkpoint), "--nEpochs", "2", "--postProcess", "quarter"])
    assert opts.resume_changes == {"nEpochs": (1, 2), "postProcess": ("dark", "quarter")}
    assert opts.run_dir == checkpoint.parent

    # -test keeps the checkpoint's rule unless the command names another
    decode_calls.update(quarter=0, dark=0)
    assert entry.main(["-test", "--loadModel", str(checkpoint), *run, "--expID", "test-dark"]) == 0
    assert decode_calls["dark"] > 0 and decode_calls["quarter"] == 0
    decode_calls.update(quarter=0, dark=0)
    argv = [
        "-test",
        "--loadModel",
        str(checkpoint),
        *run,
        "--expID",
        "test-quarter",
        "--postProcess",
        "quarter",
    ]
    assert entry.main(argv) == 0
    assert decode_calls["quarter"] > 0 and decode_calls["dark"] == 0
    assert "postProcess: quarter\n" in (tmp_path / "test-quarter" / "config.defconf").read_text()

    # -predict decodes its crops by the checkpoint's rule
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    decode_calls.update(quarter=0, dark=0)
    assert (
        entry.main(["-predict", str(image), "--loadModel", str(checkpoint), *run, "--expID", "predict"]) == 0
    )
    assert decode_calls["dark"] > 0 and decode_calls["quarter"] == 0

    # -export: the graph ends at the heatmaps, so the notes name the rule consumers must apply
    for rule, extra in (("dark", []), ("quarter", ["--postProcess", "quarter"])):
        onnx_path = tmp_path / f"pose-{rule}.onnx"
        assert entry.main(["-export", str(onnx_path), "--loadModel", str(checkpoint), *extra]) == 0
        decoding = json.loads(onnx_path.with_suffix(".json").read_text())["decoding"]
        assert decoding["post_process"] == rule and decoding["sigma"] == 1.0
        if rule == "dark":
            # the numbers dark_by_the_notes takes are the ones the notes state
            assert decoding["rule"].startswith("DARK") and "1.5 sigma" in decoding["rule"]
            assert "log(max(map, 1e-10))" in decoding["rule"] and "-H^-1 g" in decoding["rule"]
            assert "below -1e-05" in decoding["rule"] and "det H > 1e-10" in decoding["rule"]
        else:
            assert decoding["rule"].startswith("For each joint take the argmax")
