import numpy as np
import pytest

from datasets.codecs import HeatmapCodec, RegressionCodec, make_codec


@pytest.mark.parametrize(
    ("input_size", "heatmap_size", "sigma"), [((128, 128), (32, 32), 1.0), ((192, 256), (48, 64), 2.0)]
)
def test_heatmap_round_trip_within_quarter_pixel(input_size, heatmap_size, sigma):
    codec = HeatmapCodec(input_size, heatmap_size, sigma)
    rng = np.random.default_rng(0)
    # away from the border, where both neighbours exist for the quarter-pixel step
    margin = np.array(input_size) / np.array(heatmap_size) * 1.5
    joints = rng.uniform(margin, np.array(input_size) - 1 - margin, size=(200, 16, 2))
    targets = np.stack([codec.encode(j, np.ones(16))[0] for j in joints])
    decoded, scores = codec.decode(targets)
    error = np.abs(codec.to_heatmap_frame(decoded) - codec.to_heatmap_frame(joints))
    assert error.max() <= 0.25 + 1e-9
    assert scores.min() > 0.6  # the peak of a sub-pixel Gaussian stays close to 1


def test_heatmap_is_a_gaussian_at_the_joint():
    codec = HeatmapCodec((64, 64), (16, 16), 1.5)
    heatmaps, weight = codec.encode(np.array([[26.0, 38.0]]), np.ones(1))
    assert heatmaps.shape == (1, 16, 16) and heatmaps.dtype == np.float32
    center = codec.to_heatmap_frame(np.array([[26.0, 38.0]]))[0]  # (6.625, 9.625)
    y, x = np.mgrid[0:16, 0:16]
    expected = np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(heatmaps[0], expected, rtol=1e-6)
    assert weight.tolist() == [1.0]


def test_missing_and_far_outside_joints_get_zero_weight():
    codec = HeatmapCodec((64, 64), (16, 16), 1.0)
    joints = np.array([[10.0, 10.0], [10.0, 10.0], [-20.0, 30.0], [30.0, 90.0]])
    heatmaps, weight = codec.encode(joints, np.array([1, 0, 1, 1]))
    assert weight.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert heatmaps[1:].max() == 0.0 and heatmaps[0].max() > 0.9


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_joint_outside_the_crop_is_supervised_while_its_3_sigma_window_touches_the_map(sigma: float):
    """HRNet's rule: weight 1 until the whole 3-sigma window has left the map (extent [-0.5, 15.5])."""
    codec = HeatmapCodec((64, 64), (16, 16), sigma)
    edge = -0.5 - 3 * sigma  # heatmap x where the window's right end touches the map's left edge
    to_input = lambda u: (u + 0.5) * 4 - 0.5  # noqa: E731 (heatmap x -> input x, project convention)
    inside_x, outside_x = to_input(edge + 1e-6), to_input(edge - 1e-6)
    far_right = to_input(15.5 + 3 * sigma)  # the window's left end at the right edge: off the map
    y = to_input(7.0)  # a whole heatmap row
    joints = np.array([[inside_x, y], [outside_x, y], [to_input(-1.0), y], [far_right, y]])
    heatmaps, weight = codec.encode(joints, np.ones(4))
    assert weight.tolist() == [1.0, 0.0, 1.0, 0.0]
    # the visible part of the Gaussian: largest in column 0, as far from the centre as the edge
    column0 = heatmaps[2, :, 0]
    assert column0.max() == pytest.approx(np.exp(-1.0 / (2 * sigma**2)), rel=1e-5)
    assert heatmaps[2].max() == column0.max()
    assert heatmaps[1].max() == 0.0 and heatmaps[3].max() == 0.0


def test_regression_round_trip_and_range():
    codec = RegressionCodec((192, 256))
    joints = np.array([[-0.5, -0.5], [191.5, 255.5], [95.5, 127.5], [300.0, 10.0]])
    target, weight = codec.encode(joints, np.ones(4))
    np.testing.assert_allclose(target[:3], [[-0.5, -0.5], [0.5, 0.5], [0.0, 0.0]])
    assert weight.tolist() == [1, 1, 1, 0]  # outside the crop
    decoded, scores = codec.decode(target[None, :3])
    np.testing.assert_allclose(decoded[0], joints[:3], atol=1e-5)
    assert scores.shape == (1, 3)


def test_codec_follows_target_type():
    assert isinstance(make_codec("heatmap", (64, 64), (16, 16), 1.0), HeatmapCodec)
    assert isinstance(make_codec("regression", (64, 64), (16, 16), 1.0), RegressionCodec)
    with pytest.raises(ValueError):
        make_codec("keypoints", (64, 64), (16, 16), 1.0)


@pytest.mark.parametrize("target_type", ["heatmap", "regression", "simcc"])
def test_flip_test_mirror_is_exact(target_type):
    import torch

    from datasets.skeletons import MPII_JOINTS

    codec = make_codec(target_type, (64, 48), (16, 12), 1.0)
    rng = np.random.default_rng(1)
    joints = rng.uniform([2, 2], [61, 45], size=(16, 2))
    perm = MPII_JOINTS.flip_permutation()
    mirrored = np.stack([63 - joints[:, 0], joints[:, 1]], axis=1)[perm]  # what a mirrored image shows
    direct = torch.from_numpy(codec.encode(joints, np.ones(16))[0])[None]
    from_mirror = codec.mirror_back(torch.from_numpy(codec.encode(mirrored, np.ones(16))[0])[None], perm)
    torch.testing.assert_close(from_mirror, direct, atol=1e-6, rtol=0)
