"""PoseAttention (Chu et al. 2017) and PyraNet (Yang et al. 2017) at toy sizes: output contract,
gradients, the paper structures (HRUs, multi-resolution/holistic/part attention, CRF iterations,
pyramid residual modules A-D, variance remedy) and the multi-branch initialisation."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.complexity import count_parameters
from models.layers import Hourglass
from models.pose_attention import (
    CRFAttention,
    HourglassResidualUnit,
    PartAttention,
    PoseAttention,
    pose_attention,
)
from models.pyranet import (
    PRM_TYPES,
    PyramidResidualModule,
    PyraNet,
    fixed_fractional_max_pool2d,
    multibranch_init_,
    multibranch_std,
    pyranet,
    subsample,
)
from models.registry import build_model, get_entry

SIZES = [(64, 64), (64, 48)]
JOINTS = 5


@pytest.fixture(scope="module")
def attention_model() -> PoseAttention:
    torch.manual_seed(0)
    return pose_attention(n_joints=JOINTS, n_channels=16, n_stack=2, n_reductions=3, lrn_size=3)


@pytest.fixture(scope="module")
def pyranet_model() -> PyraNet:
    torch.manual_seed(0)
    return pyranet(n_joints=JOINTS, n_channels=16, n_stack=2, n_reductions=3, base_width=4)


def _check_forward_backward(model: nn.Module, height: int, width: int) -> None:
    model.train()
    model.zero_grad()
    outputs = model(torch.randn(2, 3, height, width))
    assert isinstance(outputs, list) and len(outputs) == 2  # one per stack
    for heatmaps in outputs:
        assert heatmaps.shape == (2, JOINTS, height // 4, width // 4)
        assert torch.isfinite(heatmaps).all()
    sum(h.square().mean() for h in outputs).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("height,width", SIZES)
def test_pose_attention_forward_backward(attention_model: PoseAttention, height: int, width: int) -> None:
    _check_forward_backward(attention_model, height, width)


@pytest.mark.parametrize("height,width", SIZES)
def test_pyranet_forward_backward(pyranet_model: PyraNet, height: int, width: int) -> None:
    _check_forward_backward(pyranet_model, height, width)


def test_paper_defaults_and_registry() -> None:
    defaults = {k: p.default for k, p in inspect.signature(pose_attention).parameters.items()}
    assert defaults == {
        "n_joints": 16,
        "n_channels": 256,
        "n_stack": 8,
        "n_modules": 1,
        "n_reductions": 4,
        "lrn_size": 11,
        "iter_size": 3,
        "n_part_stacks": None,
    }
    defaults = {k: p.default for k, p in inspect.signature(pyranet).parameters.items()}
    assert defaults["n_stack"] == 8 and defaults["cardinality"] == 4 and defaults["prm_type"] == "B"
    assert get_entry("poseattention").name == "PoseAttention"
    assert get_entry("PyraNet").target_type == "heatmap"
    # config spellings reach the builders
    model = build_model(
        "PoseAttention", nJoints=4, nChannels=8, nStack=1, nReductions=2, LRNSize=5, IterSize=2
    )
    assert isinstance(model, PoseAttention) and model.target_type == "heatmap"
    assert model.heads[0].attention.message.kernel_size == (5, 5)
    assert model.heads[0].attention.iter_size == 2
    model = build_model(
        "PyraNet", nJoints=4, nChannels=8, nStack=1, nReductions=2, prmType="c", cardinality=2
    )
    assert {m.prm_type for m in model.modules() if isinstance(m, PyramidResidualModule)} == {"C"}


# ---------------------------------------------------------------- PoseAttention structure


def test_part_attention_in_the_last_half_of_the_stacks(attention_model: PoseAttention) -> None:
    model = pose_attention(n_channels=8, n_stack=8, n_reductions=2, lrn_size=3)
    assert model.part_stacks == (4, 5, 6, 7)  # paper: stacks 5-8
    for stack, head in enumerate(model.heads):
        assert isinstance(head, PartAttention) == (stack >= 4)
        assert isinstance(head, nn.Conv2d) == (stack < 4)
    assert attention_model.part_stacks == (1,)
    # the release's rule for other depths: the stacks after the 4th, and always the last
    assert pose_attention(n_channels=8, n_stack=6, n_reductions=2, lrn_size=3).part_stacks == (4, 5)
    assert pose_attention(n_channels=8, n_stack=3, n_reductions=2, lrn_size=3).part_stacks == (2,)
    # every stack has holistic attention, one CRF map per resolution it reads
    assert all(len(holistic.maps) == 3 for holistic in attention_model.holistic)


def test_hrus_nested_on_the_skip_branches() -> None:
    model = pose_attention(n_channels=8, n_stack=1, n_reductions=4, lrn_size=3)
    hourglass, counts = model.hourglasses[0], []
    while isinstance(hourglass, Hourglass):
        counts.append(sum(isinstance(m, HourglassResidualUnit) for m in hourglass.skip))
        hourglass = hourglass.inner
    assert counts == [2, 1, 0, 0]  # 64x64, 32x32, 16x16, 8x8 for a 256 input
    # the release's n_modules chains: (residual, depth - 2 HRUs) per module; single HRUs at the bottom
    hourglass, layout = (
        pose_attention(n_channels=8, n_stack=1, n_modules=2, n_reductions=3).hourglasses[0],
        [],
    )
    while isinstance(hourglass, Hourglass):
        layout.append([type(m).__name__[0] for m in hourglass.skip] + ["/", len(hourglass.down)])
        hourglass = hourglass.inner
    assert layout == [["R", "H", "R", "H", "/", 2], ["R", "R", "/", 2], ["R", "H", "/", 2]]
    assert len(hourglass) == 1  # the bottom: one residual, as the release


def test_hru_side_branch_adds_to_residual() -> None:
    unit = HourglassResidualUnit(6, 6).eval()
    x = torch.randn(2, 6, 5, 3)  # odd sizes: the pooled branch must come back to 5x3
    assert unit(x).shape == x.shape
    nn.init.zeros_(unit.side[1][2].weight)
    nn.init.zeros_(unit.side[1][2].bias)
    torch.testing.assert_close(unit(x), unit.residual(x))


def test_hourglass_levels_match_forward(attention_model: PoseAttention) -> None:
    hourglass = attention_model.hourglasses[0].eval()
    x = torch.randn(1, 16, 16, 12)
    levels = hourglass.forward_levels(x)
    assert [tuple(level.shape[-2:]) for level in levels] == [(16, 12), (8, 6), (4, 3)]
    torch.testing.assert_close(levels[0], hourglass(x))


def test_crf_iterations_change_the_output() -> None:
    torch.manual_seed(1)
    one = pose_attention(n_joints=JOINTS, n_channels=8, n_stack=2, n_reductions=2, lrn_size=3, iter_size=1)
    three = pose_attention(n_joints=JOINTS, n_channels=8, n_stack=2, n_reductions=2, lrn_size=3, iter_size=3)
    assert count_parameters(one) == count_parameters(three)  # iterations share the message kernel
    three.load_state_dict(one.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out_one, out_three = one.eval()(x), three.eval()(x)
    for a, b in zip(out_one, out_three, strict=True):
        assert not torch.allclose(a, b)


def test_crf_attention_is_a_weight_shared_mean_field() -> None:
    attention = CRFAttention(4, n_maps=2, lrn_size=5, iter_size=1)
    features = torch.randn(1, 4, 9, 7)
    q = attention(features)
    assert q.shape == (1, 2, 9, 7) and (q > 0).all() and (q < 1).all()
    unary = attention.unary(features)
    expected = torch.sigmoid(unary + attention.message(unary))  # the release starts from u itself
    torch.testing.assert_close(q, expected)
    for _ in range(2):
        expected = torch.sigmoid(unary + attention.message(expected))
    attention.iter_size = 3
    torch.testing.assert_close(attention(features), expected)
    with pytest.raises(ValueError):
        CRFAttention(4, lrn_size=4)


def test_part_attention_equals_per_joint_reweighting() -> None:
    head = PartAttention(6, 3, lrn_size=3, iter_size=2)
    nn.init.normal_(head.bias)
    features = torch.randn(2, 6, 7, 5)
    maps = head.attention(features)
    explicit = torch.cat(
        [
            F.conv2d(features * maps[:, k : k + 1], head.classifier.weight[k : k + 1]) + head.bias[k]
            for k in range(3)
        ],
        dim=1,
    )
    torch.testing.assert_close(head(features), explicit)


# ---------------------------------------------------------------- PyraNet structure


@pytest.mark.parametrize("prm_type", PRM_TYPES)
def test_every_prm_type_builds_and_runs(prm_type: str) -> None:
    module = PyramidResidualModule(8, 16, prm_type=prm_type, cardinality=3, base_width=4)
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 16, 12, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert len(module.inputs) == (3 if prm_type == "A" else 1)
    assert module.fuse[2].in_channels == (4 * 3 if prm_type == "C" else 4)
    if prm_type == "D":
        assert [conv.dilation for conv in module.branches] == [(1, 1), (2, 2), (3, 3)]
    model = pyranet(
        n_joints=JOINTS, n_channels=16, n_stack=1, n_reductions=2, prm_type=prm_type, base_width=4
    )
    with torch.no_grad():
        (heatmaps,) = model.eval()(torch.randn(1, 3, 64, 48))
    assert heatmaps.shape == (1, JOINTS, 16, 12) and torch.isfinite(heatmaps).all()


def test_pyramid_ratios_and_fractional_pooling() -> None:
    module = PyramidResidualModule(8, 8, cardinality=4)
    assert module.ratios == pytest.approx([2 ** (-c / 4) for c in range(1, 5)])
    x = torch.randn(2, 3, 64, 64)
    sizes = [tuple(subsample(x, r, training=False).shape[-2:]) for r in module.ratios]
    assert sizes == [(53, 53), (45, 45), (38, 38), (32, 32)]
    # evaluation: torch's fractional max-pooling with every random offset fixed at 0.5
    for size in [(53, 40), (32, 24), (1, 1)]:
        fixed = torch.full((2, 3, 2), 0.5)
        expected = F.fractional_max_pool2d(x[..., :48], 2, output_size=size, _random_samples=fixed)
        torch.testing.assert_close(fixed_fractional_max_pool2d(x[..., :48], size), expected)
    # ratio 1/2 of an even map is ordinary 2x2 max-pooling
    torch.testing.assert_close(subsample(x, 0.5, training=False), F.max_pool2d(x, 2))
    # training draws new regions each call; evaluation is deterministic
    assert not torch.equal(subsample(x, 0.7, training=True), subsample(x, 0.7, training=True))
    assert torch.equal(subsample(x, 0.7, training=False), subsample(x, 0.7, training=False))


def test_variance_remedy_and_prm_levels(pyranet_model: PyraNet) -> None:
    def kinds(units: nn.Sequential) -> set[str]:
        return {type(unit).__name__ for unit in units}

    def projected(units: nn.Sequential) -> bool:
        return all(not isinstance(unit.skip, nn.Identity) for unit in units)

    hourglass, scale = pyranet_model.hourglasses[0], 0
    while isinstance(hourglass, Hourglass):
        assert kinds(hourglass.skip) == {"PyramidResidualModule"}  # scales 0, 1, 2 < 3 PRM levels
        assert kinds(hourglass.up) == ({"PyramidResidualModule"} if scale + 1 < 3 else {"Residual"})
        # the units whose output is upsampled into the merge get BN-ReLU-1x1 shortcuts
        assert projected(hourglass.up) and not projected(hourglass.skip)
        hourglass, scale = hourglass.inner, scale + 1
    assert kinds(hourglass) == {"Residual"}  # the bottom, at 1/8 of the hourglass input


def test_multibranch_initialisation_statistics() -> None:
    torch.manual_seed(0)
    module = multibranch_init_(PyramidResidualModule(256, 256, prm_type="B", cardinality=4, base_width=9))
    # pyramid 3x3 convs: 28 -> 28 channels, outputs summed over C = 4 branches that share one input
    n = 9 * 28
    expected = math.sqrt(2 / (0.5 * (4 * n + 4 * n)))
    for conv in module.branches:
        assert multibranch_std(conv) == pytest.approx(expected)
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0
    # f_0's 3x3 is summed with the pyramid (C_i = 2)
    conv = module.main[1][2]
    expected = math.sqrt(2 / (0.5 * (2 * 9 * 128 + 9 * 128)))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    # one branch after a ReLU with n_in = n_out reduces to He et al.'s sqrt(2 / n)
    assert multibranch_std(nn.Conv2d(64, 64, 3)) == pytest.approx(math.sqrt(2 / (9 * 64)))
    # the whole model is initialised by the same rule
    model = pyranet(n_channels=64, n_stack=1, n_reductions=2)
    assert model.stem.conv[0].init_alpha == 1.0
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.weight.numel() >= 16384:
            assert conv.weight.std().item() == pytest.approx(multibranch_std(conv), rel=0.1), name


def test_next_stack_reads_the_first_linear_layer_and_the_heatmaps(attention_model: PoseAttention) -> None:
    """The release feeds stack i + 1 with ``x + conv(heatmaps) + lin(ll1)``: ll1, not ll2 or the
    attended features, goes through the third conv-BN-ReLU."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attention_model.lin1[0].register_forward_hook(lambda m, i, o: seen.__setitem__("ll1", o)),
        attention_model.merge_features[0].register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0])),
        attention_model.heads[0].register_forward_hook(lambda m, i, o: seen.__setitem__("heatmaps", o)),
        attention_model.merge_heatmaps[0].register_forward_hook(
            lambda m, i, o: seen.__setitem__("hm_in", i[0])
        ),
    ]
    with torch.no_grad():
        attention_model.eval()(torch.randn(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert seen["in"] is seen["ll1"] and seen["hm_in"] is seen["heatmaps"]
    assert attention_model.lin1[-1][0].out_channels == 2 * attention_model.lin1[0][0].out_channels


def test_pyranet_stem_starts_without_preactivation(pyranet_model: PyraNet) -> None:
    first = pyranet_model.stem.res1
    assert isinstance(first.main[0][0], nn.Conv2d) and isinstance(first.inputs[0][0][0], nn.Conv2d)
    assert isinstance(pyranet_model.stem.res2.main[0][0], nn.BatchNorm2d)
    # after each hourglass: BN-ReLU, then 1x1 conv-BN-ReLU, with no residual unit
    assert [type(m).__name__ for m in pyranet_model.features[0]] == ["BatchNorm2d", "ReLU", "Sequential"]


def test_pyranet_starts_with_small_heatmaps_like_the_hourglass() -> None:
    """The multi-branch rule keeps unit variance up to the heads; He-style heads started every
    heatmap at variance ~1 (initial MSE ~1.5 per stack against mostly-zero targets)."""
    from models.stacked_hourglass import stacked_hourglass

    torch.manual_seed(0)
    image = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ours = pyranet(n_joints=JOINTS, n_channels=32, n_stack=2, n_reductions=3).train()(image)
        hourglass = stacked_hourglass(n_joints=JOINTS, n_channels=32, n_stack=2, n_reductions=3).train()(
            image
        )
    assert ours[-1].square().mean() < 0.01
    assert ours[-1].square().mean() < 10 * hourglass[-1].square().mean()
