"""Every registered model, built from its own conf file at a small size, trains with the shared
codec and loss chosen from its declared target type."""

import pytest
import torch

from conftest import CONF_FILES, SMALL_WIDTHS, small_model
from datasets import SyntheticPeople, make_codec
from engine import prepare_images
from losses import make_loss
from models import build_model, list_models
from models.registry import get_entry
from utils.options import parse_options

# Each model small enough for a CPU test at the tests' 64x64 input (conftest's widths)
AT_64 = {
    "StackedHourGlass": ["--nReductions", "2"],
    "PoseAttention": ["--nReductions", "3"],
    "PyraNet": ["--nReductions", "3"],
    "IEF": ["--pathSteps", "2"],
}  # fmt: skip
SMALL = {name: small_model(name, *AT_64.get(name, [])) for name in SMALL_WIDTHS}


def test_every_registered_model_has_a_conf_file_and_a_small_size():
    assert set(list_models()) == set(SMALL)
    assert all(path.is_file() for path in CONF_FILES.values())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_trains_on_a_fixed_batch(name):
    opts = parse_options(
        ["-ModelConfig", str(CONF_FILES[name]), "--inputRes", "64", "--outputRes", "16", *SMALL[name]]
    )
    assert opts.model == name
    torch.manual_seed(0)
    model = build_model(opts.model, **vars(opts))
    target_type = get_entry(name).target_type
    codec = make_codec(target_type, (64, 64), (16, 16), 1.0, hierarchy=opts.hierarchy)
    loss_fn = make_loss(codec)
    data = SyntheticPeople("train", 4, codec, (64, 64), image_size=80)
    batch = [data[i] for i in range(4)]
    image = prepare_images(torch.stack([s["image"] for s in batch]), None, torch.device("cpu"))
    target = torch.stack([s["target"] for s in batch])
    weight = torch.stack([s["target_weight"] for s in batch])

    outputs = model(image)
    multi_stage = {
        "StackedHourGlass": 2,
        "PoseAttention": 2,
        "PyraNet": 2,
        "DeepPose": 2,
        "IEF": 2,
        "DLCM": 5,
    }
    stages = multi_stage.get(name, 1)
    assert isinstance(outputs, list) and len(outputs) == stages
    # a compositional model's stages predict the levels of its hierarchy, each its own maps
    expected = codec.stage_shapes(16) if target_type == "compositional" else [codec.output_shape(16)] * stages
    assert [tuple(o.shape) for o in outputs] == [(4, *shape) for shape in expected]
    assert all(torch.isfinite(o).all() for o in outputs)

    # as engine.train_one_epoch calls it: with the targets for a model that trains with them (IEF)
    forward = (lambda: model(image, target)) if get_entry(name).trains_with_target else (lambda: model(image))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = loss_fn(forward(), target, weight)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    ("shape", "size"), [((2, 3, 5, 7), (9, 13)), ((1, 2, 8, 8), (4, 4)), ((1, 1, 1, 5), (4, 2))]
)
def test_deterministic_bilinear_resize_equals_interpolate(shape, size, align_corners) -> None:
    """The matrix form --deterministic uses on CUDA gives F.interpolate's numbers and gradients."""
    from models.layers import bilinear_resize

    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    direct = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    matrix = bilinear_resize(x, size, align_corners, matrix_form=True)
    torch.testing.assert_close(matrix, direct, rtol=0, atol=1e-12)
    weights = torch.randn_like(direct)
    torch.testing.assert_close(
        torch.autograd.grad((matrix * weights).sum(), x)[0],
        torch.autograd.grad((direct * weights).sum(), x)[0],
        rtol=0,
        atol=1e-12,
    )


def test_deterministic_fractional_pooling_is_torchs_draw_with_its_gradient() -> None:
    from models.layers import fractional_max_pool2d

    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    torch.manual_seed(5)
    direct = torch.nn.functional.fractional_max_pool2d(x, 2, output_size=(6, 7))
    torch.manual_seed(5)
    gathered = fractional_max_pool2d(x, (6, 7), gather_form=True)
    assert torch.equal(direct, gathered)
    assert torch.equal(torch.autograd.grad(direct.sum(), x)[0], torch.autograd.grad(gathered.sum(), x)[0])
