"""Every registered model, built from its own conf file at a small size, trains with the shared
codec and loss chosen from its declared target type."""

import pytest
import torch

from conftest import REPO_ROOT
from datasets import SyntheticPeople, make_codec
from engine import prepare_images
from losses import make_loss
from models import build_model, list_models
from models.registry import get_entry
from utils.options import parse_options

# Overrides that make each paper configuration small enough for a CPU test.
SMALL = {
    "StackedHourGlass": ["--nChannels", "16", "--nStack", "2", "--nReductions", "2"],
    "PoseAttention": ["--nChannels", "16", "--nStack", "2", "--nReductions", "3", "--LRNSize", "3"],
    "PyraNet": ["--nChannels", "16", "--nStack", "2", "--nReductions", "3", "--baseWidth", "4"],
    "DeepPose": ["--baseName", "resnet18", "--nCascade", "1"],
    "ChainedPredictions": ["--modelName", "resnet18"],
    "SimpleBaseline": ["--baseName", "resnet18", "--deconvFilters", "32"],
    "HRNet": ["--hrnetWidth", "8"],
}
CONF_NAMES = {"HRNet": "HRNet-W32"}  # the paper's width names the file
CONF_FILES = {name: REPO_ROOT / "conf" / "models" / f"{CONF_NAMES.get(name, name)}.defconf" for name in SMALL}


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
    codec = make_codec(target_type, (64, 64), (16, 16), 1.0)
    loss_fn = make_loss(target_type)
    data = SyntheticPeople("train", 4, codec, (64, 64), image_size=80)
    batch = [data[i] for i in range(4)]
    image = prepare_images(torch.stack([s["image"] for s in batch]), None, torch.device("cpu"))
    target = torch.stack([s["target"] for s in batch])
    weight = torch.stack([s["target_weight"] for s in batch])

    outputs = model(image)
    expected_stages = {"StackedHourGlass": 2, "PoseAttention": 2, "PyraNet": 2, "DeepPose": 2}.get(name, 1)
    assert isinstance(outputs, list) and len(outputs) == expected_stages
    expected_shape = (4, 16, 16, 16) if target_type == "heatmap" else (4, 16, 2)
    assert all(tuple(o.shape) == expected_shape for o in outputs)
    assert all(torch.isfinite(o).all() for o in outputs)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = loss_fn(model(image), target, weight)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
