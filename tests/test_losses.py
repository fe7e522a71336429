import torch

from datasets import make_codec
from losses import HeatmapMSELoss, RegressionL2Loss, make_loss


def test_heatmap_loss_ignores_zero_weight_joints_and_sums_stages():
    target = torch.zeros(2, 3, 4, 4)
    output = torch.zeros(2, 3, 4, 4)
    output[:, 1] = 10.0  # a huge error on joint 1 only
    output[:, 0] = 1.0
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    loss = HeatmapMSELoss()([output], target, weight)
    # joint 0 contributes 1 per pixel over 2*3*4*4 elements; joint 1 is masked out
    assert torch.isclose(loss, torch.tensor(2 * 16 / (2 * 3 * 16)))
    assert torch.isclose(HeatmapMSELoss()([output, output], target, weight), 2 * loss)


def test_regression_loss_is_masked_squared_distance():
    target = torch.zeros(1, 2, 2)
    output = torch.tensor([[[0.3, 0.4], [5.0, 5.0]]])
    loss = RegressionL2Loss()([output], target, torch.tensor([[1.0, 0.0]]))
    assert torch.isclose(loss, torch.tensor(0.25 / 2))  # 0.3^2 + 0.4^2 averaged over two joints


def test_loss_follows_target_type():
    assert isinstance(make_loss(make_codec("heatmap", (64, 64), (16, 16), 1.0)), HeatmapMSELoss)
    assert isinstance(make_loss(make_codec("regression", (64, 64), (16, 16), 1.0)), RegressionL2Loss)
