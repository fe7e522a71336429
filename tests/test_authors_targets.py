"""Training targets and the warm-up under the authors' conventions equal their code's.

The references below are the authors' rules written out (the project does not depend on MMPose):
HRNet's ``JointsDataset.generate_target`` / MMPose's ``generate_gaussian_heatmaps``
(``MSRAHeatmap``), MMPose's ``generate_udp_gaussian_heatmaps`` (``UDPHeatmap``), MMPose's
``SimCCLabel`` with Gaussian labels, and MMEngine's ``LinearLR`` as it updates the rate step by
step. They compute in float32 as their code does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.codecs import HeatmapCodec, SimCCCodec
from recipe import StepwiseLR

INPUT = (192, 256)  # (w, h): COCO's crop
HEATMAP = (48, 64)
SIGMA = 2.0


def off_the_map(left: float, top: float, right: float, bottom: float, W: int, H: int) -> bool:
    """Their codecs' one supervision test: the window [left, right) x [top, bottom) misses the map."""
    return left >= W or top >= H or right < 0 or bottom < 0


def msra_heatmaps(keypoints: np.ndarray, visible: np.ndarray, udp: bool) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) input px -> (K, H, W), (K,): MSRAHeatmap (udp=False) or UDPHeatmap (udp=True)."""
    W, H = HEATMAP
    if udp:
        scale = ((np.array(INPUT) - 1) / (np.array(HEATMAP) - 1)).astype(np.float32)
    else:
        scale = (np.array(INPUT) / np.array(HEATMAP)).astype(np.float32)
    points = keypoints.astype(np.float32) / scale
    heatmaps = np.zeros((len(points), H, W), dtype=np.float32)
    weights = visible.astype(np.float32).copy()
    radius = SIGMA * 3
    size = 2 * radius + 1
    x = np.arange(0, size, 1, dtype=np.float32)
    y = x[:, None]
    for k, point in enumerate(points):
        if visible[k] < 0.5:
            continue
        mu = (point + 0.5).astype(np.int64)
        left, top = (mu - radius).astype(np.int64)
        right, bottom = (mu + radius + 1).astype(np.int64)
        if off_the_map(left, top, right, bottom, W, H):
            weights[k] = 0
            continue
        x0 = y0 = size // 2
        if udp:
            x0 += point[0] - mu[0]
            y0 += point[1] - mu[1]
        gaussian = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * SIGMA**2))
        g_x1, g_x2 = max(0, -left), min(W, right) - left
        g_y1, g_y2 = max(0, -top), min(H, bottom) - top
        h_x1, h_x2 = max(0, left), min(W, right)
        h_y1, h_y2 = max(0, top), min(H, bottom)
        region = heatmaps[k, h_y1:h_y2, h_x1:h_x2]
        np.maximum(region, gaussian[g_y1:g_y2, g_x1:g_x2], out=region)
    return heatmaps, weights


def unbiased_heatmaps(keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) input px -> (K, H, W), (K,): MSRAHeatmap(unbiased=True), DARK's encoding."""
    W, H = HEATMAP
    points = keypoints.astype(np.float32) / (np.array(INPUT) / np.array(HEATMAP)).astype(np.float32)
    heatmaps = np.zeros((len(points), H, W), dtype=np.float32)
    weights = visible.astype(np.float32).copy()
    radius = SIGMA * 3
    x = np.arange(0, W, 1, dtype=np.float32)
    y = np.arange(0, H, 1, dtype=np.float32)[:, None]
    for k, mu in enumerate(points):
        if visible[k] < 0.5:
            continue
        if off_the_map(*(mu - radius), *(mu + radius + 1), W, H):
            weights[k] = 0
            continue
        gaussian = np.exp(-((x - mu[0]) ** 2 + (y - mu[1]) ** 2) / (2 * SIGMA**2))
        np.maximum(gaussian, heatmaps[k], out=heatmaps[k])
    return heatmaps, weights


def simcc_labels(keypoints: np.ndarray, visible: np.ndarray, ratio: float, sigma: np.ndarray):
    """(K, 2) input px -> x (K, Wx), y (K, Wy), weights (K,): SimCCLabel, gaussian, normalize=False."""
    w, h = INPUT
    W, H = int(np.around(w * ratio)), int(np.around(h * ratio))
    split = np.around(keypoints.astype(np.float32) * ratio).astype(np.int64)
    weights = visible.astype(np.float32).copy()
    target_x = np.zeros((len(split), W), dtype=np.float32)
    target_y = np.zeros((len(split), H), dtype=np.float32)
    radius = sigma * 3
    x = np.arange(0, W, 1, dtype=np.float32)
    y = np.arange(0, H, 1, dtype=np.float32)
    for k, mu in enumerate(split):
        if visible[k] < 0.5:
            continue
        if off_the_map(*(mu - radius), *(mu + radius + 1), W, H):
            weights[k] = 0
            continue
        target_x[k] = np.exp(-((x - mu[0]) ** 2) / (2 * sigma[0] ** 2))
        target_y[k] = np.exp(-((y - mu[1]) ** 2) / (2 * sigma[1] ** 2))
    return target_x, target_y, weights


def random_poses(seed: int, count: int = 400, joints: int = 17) -> list[tuple[np.ndarray, np.ndarray]]:
    """Poses of 17 joints: most inside the crop, some on its edges, some up to 40 px outside, a
    few far away, about one in six unlabelled."""
    rng = np.random.default_rng(seed)
    poses = []
    for _ in range(count):
        points = rng.uniform([-40, -40], [INPUT[0] + 40, INPUT[1] + 40], size=(joints, 2))
        edge = rng.random(joints) < 0.15  # exactly on an edge or a pixel centre of it
        points[edge, 0] = rng.choice([0.0, INPUT[0] - 1.0, -0.5, INPUT[0] - 0.5], size=edge.sum())
        far = rng.random(joints) < 0.05
        points[far] = rng.uniform(-400, 600, size=(far.sum(), 2))
        visible = (rng.random(joints) > 0.17).astype(np.float32)
        poses.append((points, visible))
    return poses


@pytest.mark.parametrize("convention", ["hrnet", "udp"])
def test_heatmaps_under_the_authors_conventions_are_their_codecs(convention: str) -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, SIGMA, convention)
    largest, weighted = 0.0, 0
    for points, visible in random_poses(0):
        ours, our_weight = codec.encode(points, visible)
        theirs, their_weight = msra_heatmaps(points, visible, udp=convention == "udp")
        np.testing.assert_array_equal(our_weight, their_weight)
        largest = max(largest, float(np.abs(ours - theirs).max()))
        weighted += int(our_weight.sum())
    assert largest <= 1e-6 and weighted > 4000  # most joints supervised, the rest tested too


def test_hrnet_heatmaps_for_dark_decoding_are_darks_unbiased_encoding() -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, SIGMA, "hrnet", post_process="dark")
    for points, visible in random_poses(2, count=100):
        ours, weight = codec.encode(points, visible)
        theirs, their_weight = unbiased_heatmaps(points, visible)
        np.testing.assert_array_equal(weight, their_weight)
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_the_hrnet_rule_rounds_toward_zero_and_supervises_down_to_minus_34_px() -> None:
    hrnet = HeatmapCodec(INPUT, HEATMAP, SIGMA, "hrnet")
    # heatmap x = -3 (input -12): int(-2.5) = -2, so the Gaussian's middle lands on x = -2, and
    # column 0 is 2 pixels from it
    maps, weight = hrnet.encode(np.array([[-12.0, 100.0]]), np.ones(1))
    assert weight[0] == 1 and maps[0, 25, 0] == pytest.approx(np.exp(-4 / 8), abs=1e-7)
    # the 6 sigma + 1 window: nothing 7 pixels or more from the middle
    inside, _ = hrnet.encode(np.array([[96.0, 128.0]]), np.ones(1))  # heatmap (24, 32)
    assert inside[0, 32, 30] > 0 and inside[0, 32, 17] == 0 and inside[0, 32, 18] > 0
    # supervised down to heatmap x > -8.5 (input x > -34), and up to x < 53.5 (214 px)
    for x, supervised in ((-33.9, 1), (-34.1, 0), (213.9, 1), (214.1, 0)):
        assert hrnet.encode(np.array([[x, 100.0]]), np.ones(1))[1][0] == supervised, x


def test_simcc_labels_under_mmpose_are_simcc_labels() -> None:
    sigma = np.array([4.9, 5.66], dtype=np.float32)
    codec = SimCCCodec(INPUT, 2.0, (4.9, 5.66), "mmpose")
    largest = 0.0
    for points, visible in random_poses(1):
        target, weight = codec.encode(points, visible)
        x, y, their_weight = simcc_labels(points, visible, 2.0, sigma)
        np.testing.assert_array_equal(weight, their_weight)
        largest = max(largest, float(np.abs(target - np.concatenate([x, y], axis=1)).max()))
    assert largest <= 1e-6


def test_the_projects_own_convention_keeps_the_exact_position() -> None:
    """The project's targets peak where the joint is (a sub-pixel position), not at a whole pixel."""
    codec = HeatmapCodec(INPUT, HEATMAP, SIGMA, "project")
    point = np.array([[101.3, 57.9]])
    maps, _ = codec.encode(point, np.ones(1))
    center = codec.to_heatmap_frame(point)[0]
    ys, xs = np.mgrid[0 : HEATMAP[1], 0 : HEATMAP[0]]
    expected = np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * SIGMA**2))
    np.testing.assert_allclose(maps[0], expected, atol=1e-7)
    # SimCC: the label centred between bins ((101.3 + 0.5) x 2 - 0.5 = bin 203.1), where MMPose's
    # peaks at 1 on the rounded bin (101.3 x 2 = 202.6 -> 203)
    exact = SimCCCodec(INPUT, 2.0, (4.9, 5.66), "project").encode(point, np.ones(1))[0]
    rounded = SimCCCodec(INPUT, 2.0, (4.9, 5.66), "mmpose").encode(point, np.ones(1))[0]
    assert rounded[0, 203] == 1.0
    assert exact[0, 203] == pytest.approx(np.exp(-(0.1**2) / (2 * 4.9**2)), abs=1e-6) and exact[0, 203] < 1


class LinearLR:
    """MMEngine's LinearLR(start_factor, end_factor=1, by_epoch=False, begin=0, end) as it runs:
    the rate set at construction, then updated after every optimizer step while begin <= step < end."""

    def __init__(self, base: float, start: float, end: int) -> None:
        self.start, self.total = start, end - 1  # total_iters = end - begin - 1
        self.end, self.step_count, self.lr = end, 0, base * start

    def step(self) -> None:
        self.step_count += 1
        if self.step_count < self.end:
            change = (1.0 - self.start) / (
                self.total * self.start + (self.step_count - 1) * (1.0 - self.start)
            )
            self.lr *= 1.0 + change


@pytest.mark.parametrize(("steps", "start"), [(1000, 1e-5), (500, 0.001), (3, 0.2)])
def test_the_warmup_equals_mmengines_linear_lr_at_every_step(steps: int, start: float) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    ours = StepwiseLR(optimizer, warmup_steps=steps, warmup_start=start)
    theirs = LinearLR(4e-3, start, steps)
    for taken in range(steps + 20):
        assert ours.factor(taken, 1, taken, steps + 20) * 4e-3 == pytest.approx(theirs.lr, rel=1e-9, abs=0), (
            taken
        )
        theirs.step()
    assert ours.factor(steps - 1, 1, steps - 1, steps) == 1.0  # the full rate at step N - 1


def test_grad_clip_scales_the_gradients_to_the_norm_before_the_step(tmp_path) -> None:
    from engine import _apply_step

    weights = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    optimizer = torch.optim.SGD(weights, lr=1.0)
    weights[0].grad, weights[1].grad = torch.full((3,), 3.0), torch.full((4,), 4.0)  # norm sqrt(27 + 64)
    norm = float(np.sqrt(27 + 64))
    _apply_step(optimizer, None, grad_clip=1.0)
    moved = torch.cat([-weights[0].detach(), -weights[1].detach()])
    assert float(moved.norm()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(moved.numpy(), np.r_[np.full(3, 3.0), np.full(4, 4.0)] / norm, rtol=1e-5)


@pytest.mark.e2e
def test_grad_clip_reaches_every_optimizer_step_and_vitposes_confs_use_it(tmp_path, monkeypatch) -> None:
    from conftest import REPO_ROOT, run
    from utils.options import parse_options

    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda p, norm: calls.append(norm) or real(p, norm)
    )
    run(tmp_path, "--nEpochs", "1", "--gradClip", "1.0")
    assert calls == [1.0] * 6  # 48 samples in batches of 8
    for size in "SBLH":
        opts = parse_options(["-ModelConfig", str(REPO_ROOT / "conf" / "models" / f"ViTPose-{size}.defconf")])
        assert opts.gradClip == 1.0 and opts.warmupSteps == 500
