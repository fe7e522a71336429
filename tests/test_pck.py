import numpy as np

from metrics.pck import pck, pck_summary, weighted_mean


def test_pck_known_answer_with_missing_and_threshold_edges():
    gt = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    pred[0, 0] = [3.0, 4.0]  # distance 5 = exactly 0.5 x 10: correct
    pred[0, 1] = [0.0, 5.0001]  # just beyond: wrong
    pred[1, 0] = [0.0, 20.0]  # wrong
    pred[1, 2] = [100.0, 0.0]  # missing joint: ignored however wrong
    visible = np.array([[1, 1, 1], [1, 1, 0]])
    per_joint, counts = pck(pred, gt, visible, np.array([10.0, 10.0]), 0.5)
    np.testing.assert_allclose(per_joint, [0.5, 0.5, 1.0])
    assert counts.tolist() == [2, 2, 1]


def test_person_with_no_joints_and_never_annotated_joint():
    gt = np.zeros((2, 2, 2))
    visible = np.array([[1, 0], [0, 0]])
    per_joint, counts = pck(gt, gt, visible, np.array([10.0, np.nan]))
    assert per_joint[0] == 1.0 and np.isnan(per_joint[1])
    assert counts.tolist() == [1, 0]


def test_weighted_mean_uses_counts_and_exclusions():
    assert weighted_mean(np.array([1.0, 0.0, 0.5]), np.array([3, 1, 4])) == (3 + 2) / 8
    assert weighted_mean(np.array([1.0, 0.0, 0.5]), np.array([3, 1, 4]), exclude=(1,)) == 5 / 7


def test_pck_summary_with_heatmap_normaliser():
    gt = np.zeros((1, 4, 2))
    pred = np.array([[[3.2, 0.0], [3.1, 0.0], [0.0, 0.0], [2.0, 2.0]]])
    # heatmap height 64 -> normaliser 6.4, threshold 3.2 px
    mean, per_joint = pck_summary(pred, gt, np.ones((1, 4)), np.array([6.4]))
    assert per_joint.tolist() == [100.0, 100.0, 100.0, 100.0]
    mean, _ = pck_summary(pred + [[[0.01, 0]]], gt, np.ones((1, 4)), np.array([6.4]))
    assert mean == 75.0
