"""PyraNet and PoseAttention against the authors' released networks, tensor by tensor.

``models.release_layouts`` lists the parameter shapes of bearpaw/PyraNet and bearpaw/pose-attention
as written out by hand from their Lua definitions. Here our models are walked in the same module
order and compared shape by shape, at small configurations and at the papers' configurations
(built on the meta device: no memory, no initialisation cost).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.complexity import count_parameters
from models.pose_attention import PartAttention, PoseAttention, pose_attention
from models.pyranet import PyraNet, pyranet
from models.release_layouts import (
    count,
    pose_attention_release_shapes,
    pyranet_release_shapes,
    stacked_hourglass_release_shapes,
)
from models.stacked_hourglass import stacked_hourglass

Shape = tuple[int, ...]


def _shapes(*modules: nn.Module) -> list[Shape]:
    return [tuple(p.shape) for module in modules for p in module.parameters()]


def pyranet_in_release_order(model: PyraNet) -> list[Shape]:
    """Our PyraNet's parameters in the order of ``hg-prm.lua``: stem, then per stack the
    hourglass, BN + lin, heatmap conv, and the two feedback convs."""
    shapes = _shapes(model.stem)
    for stack, hourglass in enumerate(model.hourglasses):
        shapes += _shapes(hourglass, model.features[stack], model.heads[stack])
        if stack < len(model.merge_features):
            shapes += _shapes(model.merge_features[stack], model.merge_heatmaps[stack])
    return shapes


def _part_attention_per_joint(head: PartAttention) -> list[Shape]:
    """Our joint-batched part attention as the release's K separate units (unary 3x3, message,
    1x1 classifier per joint): every tensor's first axis is the joint."""
    tensors = [
        head.attention.unary.weight,
        head.attention.unary.bias,
        head.attention.message.weight,
        head.attention.message.bias,
        head.classifier.weight,
        head.bias,
    ]
    return [(1, *t.shape[1:]) for _ in range(head.bias.numel()) for t in tensors]


def pose_attention_in_release_order(model: PoseAttention) -> tuple[list[Shape], list[Shape]]:
    """Our PoseAttention in the order of ``hg-attention.lua``, plus what the release does not have
    (the multi-resolution attention maps on the hourglass's coarser levels)."""
    shapes, extra = _shapes(model.stem), []
    for stack, hourglass in enumerate(model.hourglasses):
        holistic = model.holistic[stack]
        shapes += _shapes(hourglass, model.lin1[stack], model.lin2[stack], holistic.maps[0])
        extra += _shapes(*holistic.maps[1:])
        head = model.heads[stack]
        shapes += _part_attention_per_joint(head) if isinstance(head, PartAttention) else _shapes(head)
        if stack < len(model.merge_features):
            shapes += _shapes(model.merge_heatmaps[stack], model.merge_features[stack])
    return shapes, extra


@pytest.mark.parametrize("n_stack", [1, 2, 8])
def test_stacked_hourglass_matches_newells_port_tensor_by_tensor(n_stack: int) -> None:
    with torch.device("meta"):
        ours = stacked_hourglass(n_joints=16, n_channels=256, n_stack=n_stack, n_reductions=4)
    assert _shapes(ours) == stacked_hourglass_release_shapes(16, 256, n_stack)
    # the port also creates a 1x1 skip conv, never used, in each equal-width residual: 14 per
    # stack (13 in the hourglass, 1 in the features) and the stem's 128 -> 128 one
    unused = count(stacked_hourglass_release_shapes(16, 256, n_stack, include_unused=True)) - count(
        _shapes(ours)
    )
    assert unused == 14 * n_stack * (256 * 256 + 256) + (128 * 128 + 128)


def test_stem_channels_64_is_the_ports_stem_at_other_widths() -> None:
    with torch.device("meta"):
        ours = stacked_hourglass(n_joints=16, n_channels=128, n_stack=2, n_reductions=4, stem_channels=64)
        scaled = stacked_hourglass(n_joints=16, n_channels=128, n_stack=2, n_reductions=4)
    assert _shapes(ours) == stacked_hourglass_release_shapes(16, 128, 2)
    assert _shapes(scaled.stem)[0] == (32, 3, 7, 7)  # by default the stem scales with the width


def test_release_layouts_are_internally_consistent() -> None:
    # PRM-B's pyramid width is floor(256 / 9) = 28, with four 28->28 3x3 convs per PRM: 7 PRMs
    # in a depth-4 hourglass (3 at 64 px, 3 at 32, the skip at 16) and the stem's last unit
    assert pyranet_release_shapes(n_stack=1).count((28, 28, 3, 3)) == 4 * (7 + 1)
    # the last stack of pose-attention is 512 wide after its hourglass
    assert (512, 256, 1, 1) in pose_attention_release_shapes(n_stack=2)
    assert count(pyranet_release_shapes()) == count(pyranet_release_shapes(n_stack=1)) + 7 * (
        count(pyranet_release_shapes(n_stack=2)) - count(pyranet_release_shapes(n_stack=1))
    )


@pytest.mark.parametrize(
    "config",
    [
        dict(n_joints=5, n_stack=2, n_modules=1, base_width=9, cardinality=4),
        dict(n_joints=3, n_stack=1, n_modules=2, base_width=6, cardinality=2),
    ],
)
def test_pyranet_matches_the_release_tensor_by_tensor(config: dict) -> None:
    with torch.device("meta"):
        ours = pyranet(n_channels=256, n_reductions=4, **config)
    assert pyranet_in_release_order(ours) == pyranet_release_shapes(n_feats=256, **config)


@pytest.mark.parametrize(
    "config",
    [
        dict(n_joints=5, n_stack=2, n_modules=1, lrn_size=3),
        dict(n_joints=4, n_stack=6, n_modules=2, lrn_size=5),  # part attention in stacks 5 and 6
    ],
)
def test_pose_attention_matches_the_release_but_for_multi_resolution(config: dict) -> None:
    n_pool = 3
    with torch.device("meta"):
        ours = pose_attention(n_channels=256, n_reductions=n_pool, **config)
    shapes, extra = pose_attention_in_release_order(ours)
    assert shapes == pose_attention_release_shapes(n_feats=256, n_pool=n_pool, **config)
    # the paper's multi-resolution attention: per stack, one CRF unit on each coarser decoder level
    lrn = config["lrn_size"]
    per_level = [(1, 256, 3, 3), (1,), (1, 1, lrn, lrn), (1,)]
    assert extra == per_level * (n_pool - 1) * config["n_stack"]


def test_paper_configurations_have_the_released_parameter_counts() -> None:
    with torch.device("meta"):
        ours_pyranet, ours_attention = pyranet(), pose_attention()
    released_pyranet = count(pyranet_release_shapes())
    assert released_pyranet == count_parameters(ours_pyranet) == 28_131_832
    assert abs(released_pyranet / 28.1e6 - 1) < 0.005  # the paper's 28.1 M
    _, extra = pose_attention_in_release_order(ours_attention)
    released_attention = count(pose_attention_release_shapes())
    assert count_parameters(ours_attention) == released_attention + count(extra)
    assert released_attention == 58_312_088
    assert count(extra) == 8 * 3 * (256 * 9 + 1 + 11 * 11 + 1)  # 3 coarser levels per stack
