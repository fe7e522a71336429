"""Tracking and smoothing of a video's poses (video/), without a model: track ids across frames,
the One-Euro filter against hand-computed values, and the video options' checks."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import parse_error
from datasets.skeletons import COCO_JOINTS, MPII_JOINTS
from metrics.coco import COCO_SIGMAS, cross_oks, pairwise_oks
from video.smoothing import OneEuroFilter, smoothing_factor
from video.tracking import PoseTracker, assign, box_iou, tracking_sigmas

FPS = 30.0
# a standing person's 17 COCO joints in a 40 x 100 box, relative to its top-left corner
TEMPLATE = np.random.default_rng(7).uniform((0, 0), (40, 100), (17, 2))


def person(x: float, y: float = 20.0, noise: float = 0.0, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """(box (4,), pose (17, 3)) of the template person whose box's top-left corner is (x, y)."""
    joints = TEMPLATE + (x, y)
    if noise:
        joints = joints + rng.normal(0, noise, joints.shape)
    return np.array([x, y, 40.0, 100.0]), np.concatenate([joints, np.full((17, 1), 0.8)], axis=1)


def tracker(memory: int = 15, smoother=None) -> PoseTracker:
    return PoseTracker(COCO_SIGMAS, 0.3, 0.5, memory, FPS, smoother)


# --- the One-Euro filter ------------------------------------------------------------------------


def test_one_euro_matches_hand_computed_values() -> None:
    # min_cutoff 1 Hz, beta 0.1, d_cutoff 1 Hz at 10 frames per second (dt 0.1 s), x = 0, 1, 1, 1:
    # alpha(f) = 2 pi f dt / (1 + 2 pi f dt); alpha(1 Hz) = 0.628319 / 1.628319 = 0.385870
    # t1: dx = (1 - 0) / 0.1 = 10; dx_hat = 0.385870 * 10 = 3.858695; cutoff = 1 + 0.1 * 3.858695
    #     = 1.385870; alpha = 0.870766 / 1.870766 = 0.465460; x_hat = 0.465460
    # t2: dx = (1 - 0.465460) / 0.1 = 5.345400; dx_hat = 3.858695 + 0.385870 * (5.345400 - 3.858695)
    #     = 4.432369; cutoff = 1.443237; alpha = 0.475565; x_hat = 0.465460 + 0.475565 * 0.534540
    #     = 0.719668
    # t3: dx = 2.803317; dx_hat = 3.803768; cutoff = 1.380377; alpha = 0.464472; x_hat = 0.849875
    assert smoothing_factor(1.0, 0.1) == pytest.approx(0.385870, abs=1e-6)
    smooth = OneEuroFilter(min_cutoff=1.0, beta=0.1, d_cutoff=1.0)
    out = [smooth(np.array([[x]]), 0.1 * t)[0, 0] for t, x in enumerate([0.0, 1.0, 1.0, 1.0])]
    np.testing.assert_allclose(out, [0.0, 0.465460, 0.719668, 0.849875], atol=1e-6)
    # in 2-D a joint's speed is the length of its velocity: the same steps along (0.6, 0.8) give
    # the same filtered distances, whatever the direction
    plane = OneEuroFilter(min_cutoff=1.0, beta=0.1, d_cutoff=1.0)
    direction = np.array([[0.6, 0.8]])
    moved = [plane(direction * x, 0.1 * t) for t, x in enumerate([0.0, 1.0, 1.0, 1.0])]
    np.testing.assert_allclose([m[0] for m in moved], direction * np.array(out)[:, None], atol=1e-6)


def test_one_euro_passes_a_constant_signal_unchanged() -> None:
    pose = np.random.default_rng(0).uniform(0, 500, (17, 2))
    smooth = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    for time in (0.0, 0.04, 0.08, 0.2, 0.24, 1.0):  # steps of 1, 3 and 19 frames at 25 fps alike
        np.testing.assert_array_equal(smooth(pose, time), pose)


def test_one_euro_reduces_jitter_and_follows_a_steady_motion_with_a_bounded_lag() -> None:
    rng = np.random.default_rng(1)
    # 2 s still, then 3 s at 150 px/s; the joint seen with 3 px of Gaussian jitter
    still, moving, speed = 60, 90, 150.0
    truth = np.zeros((still + moving, 1, 2))
    truth[still:, 0, 0] = np.arange(1, moving + 1) * speed / FPS
    seen = truth + rng.normal(0, 3.0, truth.shape)
    smooth = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    out = np.stack([smooth(frame, n / FPS) for n, frame in enumerate(seen)])

    def jitter(track: np.ndarray, part: slice) -> float:  # px per frame beyond the true motion
        return float(np.linalg.norm(np.diff(track - truth, axis=0)[part], axis=-1).mean())

    assert jitter(out, slice(0, still - 1)) < jitter(seen, slice(0, still - 1)) / 3  # at rest
    assert jitter(out, slice(still + 15, None)) < jitter(seen, slice(still + 15, None)) / 1.5
    # the steady motion without jitter: followed within half a frame once under way
    clean = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    followed = np.stack([clean(frame, n / FPS) for n, frame in enumerate(truth)])
    lag_frames = (truth - followed)[still + 15 :, 0, 0] / (speed / FPS)
    assert lag_frames.min() > 0 and lag_frames.max() < 0.5


def test_one_euro_continues_across_a_gap_and_passes_missing_joints_through() -> None:
    smooth = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    smooth(np.array([[0.0, 0.0], [5.0, 5.0]]), 0.0)
    # 10 frames later at 10 fps: one step of dt = 1 s, alpha(1 Hz, 1 s) = 2 pi / (1 + 2 pi)
    out = smooth(np.array([[10.0, 0.0], [np.nan, 7.0]]), 1.0)
    np.testing.assert_allclose(out[0], [10 * 2 * np.pi / (1 + 2 * np.pi), 0.0])
    assert np.isnan(out[1, 0]) and out[1, 1] == 7.0  # passed through, its state kept
    np.testing.assert_array_equal(smooth.x_hat[1], [5.0, 5.0])
    with pytest.raises(ValueError, match="timestamps must increase"):
        smooth(np.zeros((2, 2)), 1.0)


# --- tracking ------------------------------------------------------------------------------------


def test_a_still_person_keeps_one_track_id() -> None:
    rng = np.random.default_rng(2)
    track = tracker()
    ids = []
    for frame in range(60):
        box, pose = person(100, noise=2.0, rng=rng)
        ids += track.update(frame, box[None], pose[None])[0]
    assert ids == [0] * 60


def test_two_persons_swapping_places_keep_their_ids() -> None:
    # A walks right and B left at 10 px per frame, B 8 px lower (further back); they pass each
    # other between frames 9 and 10 (x 95 and 105, then 105 and 95). Compared with where they were
    # last, each person of frame 10 fits the other's track best (IoU 0.85 against 0.6); compared
    # with where each track is going, their own
    rng = np.random.default_rng(3)
    track = tracker()
    seen: dict[str, list[int]] = {"A": [], "B": []}
    for frame in range(21):
        persons = {"A": person(5 + 10.0 * frame, noise=1.0, rng=rng),
                   "B": person(195 - 10.0 * frame, 28.0, noise=1.0, rng=rng)}  # fmt: skip
        order = list(rng.permutation(["A", "B"]))  # the detector's order tells nothing
        boxes = np.stack([persons[name][0] for name in order])
        poses = np.stack([persons[name][1] for name in order])
        ids, _ = track.update(frame, boxes, poses)
        for name, track_id in zip(order, ids, strict=True):
            seen[name].append(track_id)
    assert seen == {"A": [seen["A"][0]] * 21, "B": [seen["B"][0]] * 21} and seen["A"][0] != seen["B"][0]
    np.testing.assert_allclose(
        box_iou([person(105)[0]], [person(105, 28)[0], person(95)[0]]), [[0.85, 0.6]], atol=0.01
    )


def test_a_missed_person_keeps_their_id_within_the_memory() -> None:
    for memory, missed, expected in ((5, 5, 0), (5, 6, 1), (0, 1, 1)):
        track = tracker(memory)
        last = 0
        for frame in range(3):  # walking right at 4 px per frame
            track.update(frame, *(a[None] for a in person(4.0 * frame)))
            last = frame
        frame = last + missed + 1  # back further along the way
        (track_id,), _ = track.update(frame, *(a[None] for a in person(4.0 * frame)))
        assert track_id == expected, (memory, missed)


def test_a_track_owns_its_smoother() -> None:
    # two persons, each smoothed on their own: a constant person stays exactly constant beside a
    # moving one, and the tracker returns the raw confidences
    track = tracker(smoother=lambda: OneEuroFilter(1.0, 0.05))
    for frame in range(10):
        (box_a, pose_a), (box_b, pose_b) = person(0.0), person(200.0 + 5 * frame)
        ids, out = track.update(frame, np.stack([box_a, box_b]), np.stack([pose_a, pose_b]))
        assert ids == [0, 1]
        np.testing.assert_array_equal(out[0], pose_a)
        np.testing.assert_array_equal(out[:, :, 2], 0.8)
    assert (out[1, :, 0] < pose_b[:, 0]).all()  # the moving one lags a little behind


def test_box_iou_oks_and_assignment() -> None:
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 0, 2, 2], [5, 5, 1, 1]]), [[1 / 3, 0.0]])
    # the assignment maximises the sum over allowed pairs only
    score = np.array([[0.9, 0.8], [0.7, 0.1]])
    assert assign(score, np.ones((2, 2), bool)) == [(0, 1), (1, 0)]  # 1.5 beats 1.0
    assert assign(score, np.array([[True, True], [False, False]])) == [(0, 0)]
    # one strong pair beats two weak ones: the most summed score, not the most pairs
    assert assign(np.array([[1.9, 0.4], [0.4, 0.0]]), np.array([[True, True], [True, False]])) == [(0, 0)]
    assert assign(np.zeros((0, 3)), np.zeros((0, 3), bool)) == []
    # OKS between two sets is pairwise_oks's off-diagonal block
    poses = np.random.default_rng(4).uniform(0, 100, (5, 17, 2))
    areas = np.array([900.0, 1600, 2500, 400, 100])
    full = pairwise_oks(poses, areas)
    np.testing.assert_array_equal(cross_oks(poses[:2], areas[:2], poses[2:], areas[2:]), full[:2, 2:])
    # a joint set without OKS sigmas (MPII) is matched with COCO's mean sigma
    np.testing.assert_array_equal(tracking_sigmas(MPII_JOINTS.sigmas, 16), np.full(16, COCO_SIGMAS.mean()))
    np.testing.assert_array_equal(tracking_sigmas(COCO_JOINTS.sigmas, 17), COCO_SIGMAS)


# --- options and the frame rate -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--smooth", "kalman"], "smooth: 'kalman' is not one of none, oneeuro (on the command line)"),
        (["--smoothMinCutoff", "0"], "smoothMinCutoff: must be > 0 Hz, got 0.0 (on the command line)"),
        (["--smoothDCutoff", "nan"], "smoothDCutoff: must be > 0 Hz, got nan (on the command line)"),
        (["--smoothBeta", "-1"], "smoothBeta: must be >= 0, got -1.0 (on the command line)"),
        (["--trackIoU", "1.5"], "trackIoU: must be in [0, 1], got 1.5 (on the command line)"),
        (["--trackOKS", "-0.1"], "trackOKS: must be in [0, 1], got -0.1 (on the command line)"),
        (["--trackMemory", "-1"], "trackMemory: must be >= 0 frames, got -1 (on the command line)"),
    ],
)
def test_bad_video_options_are_one_line(capsys, argv: list[str], message: str) -> None:
    assert parse_error(capsys, argv) == f"main.py: error: {message}"


def test_a_video_without_a_frame_rate_is_taken_at_25_fps(tmp_path, capsys) -> None:
    from predict import FALLBACK_FPS, video_fps

    unreadable = tmp_path / "clip.mp4"
    unreadable.write_bytes(b"not a video")  # its container states nothing
    assert video_fps(unreadable) == FALLBACK_FPS == 25.0
    assert (
        capsys.readouterr().out.strip()
        == f"note: -predict: {unreadable} states no frame rate; taking 25 frames per second"
    )
