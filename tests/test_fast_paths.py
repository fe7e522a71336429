"""The vectorised metrics and decoder give what straightforward per-person, per-joint loops give
(benchmarks/loop_references.py): the PCKh table, OKS-NMS's kept poses and the heatmap decode,
on random inputs with the edge cases that a vectorised path can get wrong."""

import math

import numpy as np
import pytest

from benchmarks.loop_references import decode_quarter_loop, oks_loop, oks_nms_loop, pckh_table_loop
from datasets.codecs import HeatmapCodec
from metrics.coco import COCO_SIGMAS, oks_nms, pairwise_oks
from metrics.mpii import pckh_table


def assert_same_table(fast: dict, loop: dict) -> None:
    assert list(fast["columns"]) == list(loop["columns"])
    for name, value in fast["columns"].items():
        other = loop["columns"][name]
        assert (math.isnan(value) and math.isnan(other)) or value == other, (name, value, other)
    assert list(fast["per_joint"]) == list(loop["per_joint"])
    for t in fast["per_joint"]:
        np.testing.assert_array_equal(fast["per_joint"][t], loop["per_joint"][t])
    np.testing.assert_array_equal(fast["counts"], loop["counts"])
    assert fast["num_persons"] == loop["num_persons"]


def pckh_case(seed: int, persons: int = 300) -> tuple[np.ndarray, ...]:
    """Random persons with the edge cases: missing joints, persons with none annotated (head
    size 0 or NaN), a joint never annotated, distances exactly at a threshold, non-finite
    predictions."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 500, (persons, 16, 2)).astype(np.float64)
    head_sizes = rng.choice([2.0, 4.0, 10.0, 40.0], persons)  # with whole-pixel joints: exact ties
    pred = gt + rng.normal(0, 1, (persons, 16, 2)) * (0.4 * head_sizes)[:, None, None]
    missing = rng.random((persons, 16)) < 0.2
    # exactly 0.5 head sizes away: dist / size == 0.5 must count as correct
    sizes = np.broadcast_to(head_sizes[:, None], (persons, 16))
    at_half = rng.random((persons, 16)) < 0.1
    pred[at_half] = gt[at_half] + np.stack([np.zeros(at_half.sum()), 0.5 * sizes[at_half]], axis=-1)
    pred[rng.random((persons, 16)) < 0.02] = np.nan
    pred[rng.random((persons, 16)) < 0.02] = np.inf
    nobody = rng.random(persons) < 0.05
    missing[nobody] = True
    head_sizes[nobody] = rng.choice([0.0, np.nan], int(nobody.sum()))
    missing[:, 0] = True  # r_ankle never annotated: the Ankle column is the left side alone
    return pred, gt, missing, head_sizes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("pool_sides", [False, True])
def test_pckh_table_equals_the_loop(seed, pool_sides):
    pred, gt, missing, head_sizes = pckh_case(seed)
    thresholds = (0.5, 0.1, 0.2)
    fast = pckh_table(pred, gt, missing, head_sizes, thresholds, pool_sides=pool_sides)
    loop = pckh_table_loop(pred, gt, missing, head_sizes, thresholds, pool_sides=pool_sides)
    assert_same_table(fast, loop)
    assert 0 < fast["columns"]["Mean"] < 100  # hits and misses both present: the case has teeth


def test_pckh_table_equals_the_loop_when_a_part_is_never_annotated():
    pred, gt, missing, head_sizes = pckh_case(7, persons=40)
    missing[:, [0, 5]] = True  # both ankles: the Ankle column is NaN
    fast = pckh_table(pred, gt, missing, head_sizes)
    assert math.isnan(fast["columns"]["Ankle"])
    assert_same_table(fast, pckh_table_loop(pred, gt, missing, head_sizes))


def test_pckh_threshold_ties_are_correct_in_both():
    gt = np.zeros((1, 16, 2))
    pred = gt.copy()
    pred[0, :, 0] = 2.0  # distance 2 = 0.5 x head size 4: exactly at the threshold
    missing = np.zeros((1, 16), dtype=bool)
    for table in (pckh_table(pred, gt, missing, [4.0]), pckh_table_loop(pred, gt, missing, [4.0])):
        assert table["columns"]["Mean"] == 100.0
        assert table["columns"]["Mean@0.1"] == 0.0


def nms_case(seed: int, poses: int = 120, joints: int = 17) -> tuple[np.ndarray, ...]:
    """Clusters of jittered duplicates, exact duplicates, tied scores, zero-area persons."""
    rng = np.random.default_rng(seed)
    people = rng.uniform(0, 600, (poses // 6, 1, 2)) + rng.normal(0, 20, (poses // 6, joints, 2))
    kpts = people[rng.integers(0, len(people), poses)] + rng.normal(
        0, rng.uniform(0.5, 6), (poses, joints, 2)
    )
    duplicates = rng.integers(0, poses, poses // 10)
    kpts[duplicates[1:]] = kpts[duplicates[:-1]]  # identical poses: OKS exactly 1
    kpts = np.concatenate([kpts, rng.random((poses, joints, 1))], axis=2)
    scores = rng.integers(0, 8, poses) / 8.0  # many ties: input order decides
    areas = rng.uniform(20, 150, poses) ** 2
    areas[rng.random(poses) < 0.1] = 0.0  # zero-area persons
    return kpts, scores, areas


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9, 1.0])
def test_oks_nms_keeps_what_the_loop_keeps(seed, threshold):
    kpts, scores, areas = nms_case(seed)
    fast = oks_nms(kpts, scores, areas, threshold)
    loop = oks_nms_loop(kpts, scores, areas, threshold)
    assert fast.tolist() == loop
    if threshold < 1.0:
        assert 1 < len(loop) < len(kpts)  # suppression happened, and not of everything


def test_oks_nms_keeps_what_the_loop_keeps_for_another_joint_set():
    sigmas = np.array([0.05, 0.08, 0.08, 0.1, 0.1])
    kpts, scores, areas = nms_case(11, poses=60, joints=5)
    assert oks_nms(kpts, scores, areas, 0.7, sigmas).tolist() == oks_nms_loop(
        kpts, scores, areas, 0.7, sigmas
    )


def test_oks_of_the_loop_matches_the_matrix():
    kpts, _, areas = nms_case(3, poses=30)
    matrix = pairwise_oks(kpts, areas)
    for i in range(0, 30, 7):
        for j in range(30):
            assert oks_loop(kpts[i], kpts[j], areas[i], areas[j], COCO_SIGMAS) == pytest.approx(
                matrix[i, j], rel=1e-12, abs=1e-300
            )


def test_oks_nms_empty_and_single():
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)).tolist() == oks_nms_loop(
        np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)
    )
    one = np.ones((1, 17, 3))
    assert oks_nms(one, np.ones(1), np.zeros(1)).tolist() == oks_nms_loop(one, np.ones(1), np.zeros(1)) == [0]


def heatmap_case(seed: int, size: tuple[int, int], dtype: type) -> np.ndarray:
    """(6, 16, H, W) maps: noise with planted peaks on borders and corners, tied maxima, ties
    between the peak's neighbours, all-zero maps (missing joints) and negative maps."""
    rng = np.random.default_rng(seed)
    width, height = size
    maps = rng.random((6, 16, height, width))
    peak = 2.0
    maps[0, 0, 0, rng.integers(width)] = peak  # top row
    maps[0, 1, height - 1, rng.integers(width)] = peak  # bottom row
    maps[0, 2, rng.integers(height), 0] = peak  # left column
    maps[0, 3, rng.integers(height), width - 1] = peak  # right column
    maps[0, 4, 0, 0] = maps[0, 5, height - 1, width - 1] = peak  # corners
    maps[1, 0, 3, 5] = maps[1, 0, 7, 2] = peak  # two equal maxima: the first in row-major order
    maps[1, 0, 3, 4] = maps[1, 0, 3, 6] = maps[1, 0, 2, 5] = maps[1, 0, 4, 5] = 1.0
    maps[1, 1, 4, 4] = peak  # equal neighbours on both axes: no step
    maps[1, 1, 4, 3] = maps[1, 1, 4, 5] = maps[1, 1, 3, 4] = maps[1, 1, 5, 4] = 1.5
    maps[1, 2, 5, 6], maps[1, 2, 5, 7], maps[1, 2, 6, 6] = peak, 1.9, 1.9  # steps right and down
    maps[1, 3] = 0.0  # a missing joint's all-zero map
    maps[1, 4] = -maps[1, 4]  # a negative map
    maps[1, 5] = 0.5  # flat
    return maps.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("input_size", "heatmap_size", "convention"),
    [((64, 64), (16, 16), "project"), ((48, 64), (12, 16), "project"), ((48, 64), (12, 16), "hrnet")],
)
def test_decode_equals_the_loop(dtype, input_size, heatmap_size, convention):
    codec = HeatmapCodec(input_size, heatmap_size, 1.0, convention)
    maps = heatmap_case(0, heatmap_size, dtype)
    joints, scores = codec.decode(maps)
    loop_joints, loop_scores = decode_quarter_loop(maps, codec.input_size, codec.convention.anchor)
    np.testing.assert_allclose(joints, loop_joints, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(scores, loop_scores)


def test_decode_of_encoded_targets_equals_the_loop():
    codec = HeatmapCodec((256, 256), (64, 64), 2.0)
    rng = np.random.default_rng(5)
    joints = rng.uniform(-10, 266, (8, 16, 2))  # some off the crop: zero maps, border peaks
    maps = np.stack([codec.encode(j, rng.random(16) > 0.2)[0] for j in joints])
    fast, fast_scores = codec.decode(maps)
    loop, loop_scores = decode_quarter_loop(maps, codec.input_size, codec.convention.anchor)
    np.testing.assert_allclose(fast, loop, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(fast_scores, loop_scores)


def test_loop_decode_handles_the_planted_cases_as_written():
    """The reference itself, on hand-checked cases (so a shared mistake cannot pass unseen)."""
    maps = heatmap_case(0, (16, 16), np.float64)
    joints, scores = decode_quarter_loop(maps, (16, 16), anchor=0.5)  # same size: identity frame
    assert tuple(joints[1, 0]) == (5.0, 3.0)  # the first of two equal maxima (equal neighbours)
    assert tuple(joints[1, 1]) == (4.0, 4.0)  # equal neighbours: no step
    assert tuple(joints[1, 2]) == (6.25, 5.25)  # towards the higher neighbours
    assert tuple(joints[1, 3]) == (0.0, 0.0) and scores[1, 3] == 0.0  # all zero: the first pixel
    assert joints[0, 4, 0] == 0.0 and joints[0, 4, 1] == 0.0  # a corner peak: no step
    assert scores[0, 0] == 2.0
