"""The modern training recipe (docs/running.md, Training recipes): warm-up and flat-then-cosine LR
of every optimizer step, parameter groups without decay and with layer-wise LR decay, the moving
average of the weights, the late augmentation switch, their option checks and resume policy, and
an interrupted run that resumes to the same bits."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
import recipe
from build import build_optimizer, make_scheduler
from conftest import TINY_RUN, parse_error, read_metrics
from datasets import Augmentation, AugmentationSwitch, SyntheticPeople, make_codec
from engine import train_one_epoch
from losses import make_loss
from models import build_model
from recipe import ExpMomentumEMA, StepwiseLR, parameter_groups
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distributed import DistributedContext
from utils.options import parse_options

CPU = DistributedContext(0, 1, 0, torch.device("cpu"))


def tiny_hourglass() -> nn.Module:
    torch.manual_seed(0)
    return build_model("StackedHourGlass", nChannels=8, nStack=1, nModules=1, nReductions=2, nJoints=16)


# --- the LR of every optimizer step ----------------------------------------------------------------


def test_warmup_then_flat_then_cosine_per_optimizer_step_with_accumulation() -> None:
    """7 batches of 2 and 3 batches per optimizer step: steps after batches 3, 6 and 7, so 3 steps
    per epoch, 9 in 3 epochs. Warm-up over 4 steps from 0.2 (MMEngine's LinearLR: the full rate at
    the fourth, step 3); flat for epoch 1, then a cosine over the 6 steps of epochs 2-3 down to
    0.05 (its last step one sixth of the way short)."""
    codec = make_codec("heatmap", (32, 32), (8, 8), 1.0)
    loader = torch.utils.data.DataLoader(
        SyntheticPeople("train", 14, codec, (32, 32), image_size=48), batch_size=2
    )
    model = tiny_hourglass()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = StepwiseLR(optimizer, warmup_steps=4, warmup_start=0.2, cosine=(1, 3, 0.05))
    rates = []
    for epoch in (1, 2, 3):
        train_one_epoch(
            model, make_loss(codec), loader, optimizer, codec, CPU, epoch, accumulation=3,
            progress_mode="none", on_step=lambda step, loss, pck, lr: rates.append((step, lr)),
            set_lr=schedule.before_step,
        )  # fmt: skip
        schedule.step()
    root3 = math.sqrt(3) / 2  # cos(pi / 6)
    expected = [
        0.1 * 0.2, 0.1 * (0.2 + 0.8 / 3), 0.1 * (0.2 + 1.6 / 3),  # epoch 1: warm-up, flat
        0.1 * 1.0,  # epoch 2's first step: the warm-up's end, the cosine's first (cos 0)
        0.1 * (0.05 + 0.95 * (1 + root3) / 2), 0.1 * (0.05 + 0.95 * (1 + 0.5) / 2),
        0.1 * (0.05 + 0.95 * (1 + 0) / 2), 0.1 * (0.05 + 0.95 * (1 - 0.5) / 2),
        0.1 * (0.05 + 0.95 * (1 - root3) / 2),
    ]  # fmt: skip
    assert [step for step, _ in rates] == [3, 6, 7] * 3
    assert [lr for _, lr in rates] == pytest.approx(expected, rel=1e-12)
    assert schedule.state_dict() == {"optimizer_steps": 9, "last_epoch": 3, "scale": 1.0}


def test_warmup_composes_with_step_and_multistep_drops() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    step = StepwiseLR(optimizer, warmup_steps=3, warmup_start=0.4, gamma=0.1, drop_every=2)
    # (epoch, index) of 2 steps per epoch: warm-up 0.4, 0.7, then 1; a drop every 2 epochs
    assert [step.factor(t, t // 2 + 1, t % 2, 2) for t in range(9)] == pytest.approx(
        [0.4, 0.7, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01], rel=1e-12
    )
    multistep = StepwiseLR(optimizer, warmup_steps=1, warmup_start=0.5, gamma=0.5, milestones=[1, 3])
    assert [multistep.factor(e, e + 1, 0, 1) for e in range(5)] == pytest.approx(
        [0.5, 0.5, 0.5, 0.25, 0.25], rel=1e-12
    )


def test_step_and_multistep_without_warmup_keep_pytorchs_epoch_schedulers() -> None:
    """The schedules that existed keep their scheduler, so their LRs stay the same bit for bit."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plain = make_scheduler(optimizer, parse_options(["--dropLR", "2"]))
    assert type(plain) is torch.optim.lr_scheduler.StepLR and plain.step_size == 2
    milestones = make_scheduler(
        optimizer, parse_options(["--lrSchedule", "multistep", "--lrMilestones", "3"])
    )
    assert type(milestones) is torch.optim.lr_scheduler.MultiStepLR
    assert isinstance(make_scheduler(optimizer, parse_options(["--warmupSteps", "10"])), StepwiseLR)


def test_a_stepwise_checkpoint_continues_an_epoch_scheduler_at_its_closed_form() -> None:
    """A resume that turns the warm-up off (back to StepLR) continues from the epoch's LR, not
    from the last step's warm-up LR the optimizer state holds."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    optimizer.param_groups[0]["lr"] = 0.003  # a warm-up step's LR
    recipe.continue_epoch_schedule(scheduler, {"optimizer_steps": 30, "last_epoch": 3, "scale": 1.0})
    assert optimizer.param_groups[0]["lr"] == 0.5
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.25  # epoch 5: the second drop


# --- parameter groups ------------------------------------------------------------------------------


class TinyViT(nn.Module):
    """What a model offers layer-wise LR decay: layer_index(name) and num_lr_layers."""

    num_lr_layers = 4

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2)])
        self.head = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 2, bias=False))

    def layer_index(self, name: str) -> int:
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_lr_layers - 1


def group_names(model: nn.Module, groups: list[dict]) -> dict[str, list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {group["name"]: [names[id(p)] for p in group["params"]] for group in groups}


def test_layer_decay_and_no_decay_groups_with_their_lrs() -> None:
    model = TinyViT()
    groups = parameter_groups(model, lr=1e-3, no_decay=True, layer_decay=0.5)
    assert group_names(model, groups) == {
        "layer_3_decay": ["head.1.weight"],
        "layer_3_no_decay": ["head.0.weight", "head.0.bias"],
        "layer_2_decay": ["blocks.1.1.weight"],
        "layer_2_no_decay": ["blocks.1.0.weight", "blocks.1.0.bias", "blocks.1.1.bias"],
        "layer_1_decay": ["blocks.0.1.weight"],
        "layer_1_no_decay": ["blocks.0.0.weight", "blocks.0.0.bias", "blocks.0.1.bias"],
        "layer_0_decay": ["patch_embed.weight"],
        "layer_0_no_decay": ["pos_embed", "cls_token", "patch_embed.bias"],
    }
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    # layer i: LR x 0.5 ** (4 - 1 - i); the top layer's group first, at the configured LR
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {
        f"layer_{i}_{kind}": 1e-3 * 0.5 ** (3 - i) for i in range(4) for kind in ("decay", "no_decay")
    }
    assert optimizer.param_groups[0]["lr"] == 1e-3
    decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {name: 0.0 if name.endswith("no_decay") else 0.05 for name in decays}


def test_no_decay_alone_splits_norm_layers_and_biases_from_weights() -> None:
    model = tiny_hourglass()
    groups = parameter_groups(model, lr=1.0, no_decay=True, layer_decay=0)
    named = group_names(model, groups)
    norms = {
        f"{m}.{p}"
        for m, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    biases = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
    assert set(named["no_decay"]) == norms | biases and norms and biases - norms
    assert all(not name.endswith(".bias") and name not in norms for name in named["decay"])
    assert parameter_groups(model, lr=1.0, no_decay=False, layer_decay=1) is None  # one group, as before


def test_layer_decay_on_a_model_without_layer_numbers_is_refused_naming_the_key(capsys) -> None:
    opts = parse_options(["--layerDecay", "0.75", "--optimizer_type", "AdamW"])
    with pytest.raises(SystemExit) as stop:
        build_optimizer(opts, tiny_hourglass(), torch.device("cpu"))
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("main.py: error: layerDecay: model StackedHourglass provides no layer_index(name)")
    assert line.endswith("(on the command line)")


# --- the moving average of the weights ------------------------------------------------------------


def test_ema_momentum_schedule() -> None:
    ema = ExpMomentumEMA(nn.Linear(1, 1), momentum=0.0002, gamma=2000)
    # (1 - momentum) * exp(-(1 + n) / gamma) + momentum
    assert ema.weight(1) == pytest.approx(0.9998 * math.exp(-0.001) + 0.0002, rel=1e-15)
    assert ema.weight(1999) == pytest.approx(0.9998 / math.e + 0.0002, rel=1e-15)
    assert ema.weight(10**6) == pytest.approx(0.0002, rel=1e-12)
    assert ExpMomentumEMA(nn.Linear(1, 1), momentum=0.5, gamma=1).weight(2) == pytest.approx(
        0.5 * math.exp(-3) + 0.5
    )


def test_ema_weights_and_batchnorm_statistics_after_a_few_steps_equal_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    ema = ExpMomentumEMA(model, momentum=0.01, gamma=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots = []
    for _ in range(4):
        model(torch.randn(8, 3)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update()
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    expected = dict(snapshots[0])  # the first update copies
    for n, snapshot in enumerate(snapshots[1:], start=1):
        w = 0.99 * math.exp(-(1 + n) / 3) + 0.01
        expected = {
            k: (1 - w) * v + w * snapshot[k] if v.is_floating_point() else snapshot[k]
            for k, v in expected.items()
        }
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-6, atol=1e-7)
    # BatchNorm's running statistics are averaged (RTMPose's update_buffers=True), its count copied
    assert not torch.allclose(averaged["1.running_mean"], model.state_dict()["1.running_mean"])
    assert int(averaged["1.num_batches_tracked"]) == 4 and ema.steps == 4
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


# --- the augmentation switch -----------------------------------------------------------------------

EARLY = Augmentation(max_scale=0.3, max_rotate=40, rotate_prob=1.0, flip_prob=0.5, color_jitter=0.2)
LATE = Augmentation(max_scale=0.1, max_rotate=5, rotate_prob=0.5, flip_prob=0.5)


def synthetic(augmentation: Augmentation, switch: AugmentationSwitch | None = None) -> SyntheticPeople:
    data = SyntheticPeople(
        "train", 6, make_codec("heatmap", (32, 32), (8, 8), 1.0), (32, 32), 48, augmentation, 3
    )
    data.augmentation_switch = switch
    return data


@pytest.mark.parametrize("workers", [0, 1])
def test_from_the_switch_epoch_on_samples_use_the_stage2_augmentation(workers: int) -> None:
    """Epochs 1-2 as the early augmentation draws them, 3-4 as the late one: a sample is a
    function of (seed, epoch, index) and the epoch's augmentation. With a persistent worker the
    epoch reaches it through shared memory."""
    switching = synthetic(EARLY, AugmentationSwitch(3, LATE))
    loader = torch.utils.data.DataLoader(
        switching, batch_size=6, num_workers=workers, persistent_workers=workers > 0
    )
    for epoch in (1, 2, 3, 4):
        switching.set_epoch(epoch)
        (batch,) = list(loader)
        reference = synthetic(LATE if epoch >= 3 else EARLY)
        reference.set_epoch(epoch)
        other = synthetic(EARLY if epoch >= 3 else LATE)
        other.set_epoch(epoch)
        expected = torch.stack([reference[i]["image"] for i in range(6)])
        assert torch.equal(batch["image"], expected), epoch
        assert not torch.equal(batch["image"], torch.stack([other[i]["image"] for i in range(6)]))


def test_the_switch_sets_the_half_body_probability_of_coco_format_data(shared_data: Path) -> None:
    from datasets.coco import COCODataset

    def coco(half_body: float, switch: AugmentationSwitch | None = None) -> COCODataset:
        codec = make_codec("heatmap", (192, 256), (48, 64), 2.0)
        data = COCODataset(shared_data / "coco_mini", "val2017", codec, (192, 256), Augmentation(),
                           annotation_file="test_coco.json", half_body_prob=half_body)  # fmt: skip
        data.augmentation_switch = switch
        return data

    switching, never, always = coco(0.0, AugmentationSwitch(2, Augmentation(), 1.0)), coco(0.0), coco(1.0)
    boxes = {}
    for epoch in (1, 2):
        for name, data in (("switching", switching), ("never", never), ("always", always)):
            data.set_epoch(epoch)
            boxes[name, epoch] = [
                tuple(data.sample_transform(i)[0]) + (data.sample_transform(i)[1],) for i in range(len(data))
            ]
    assert boxes["switching", 1] == boxes["never", 1] and boxes["switching", 2] == boxes["always", 2]
    assert boxes["always", 2] != boxes["never", 2]  # some persons get a half-body box


# --- options: bad values, the resume policy --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--warmupSteps", "-1"], "warmupSteps: must be >= 0, got -1"),
        (["--warmupStartFactor", "1.5"], "warmupStartFactor: must be in [0, 1], got 1.5"),
        (["--lrSchedule", "cosine"], "lrSchedule: 'cosine' is not one of step, multistep, flatcosine"),
        (["--minLRFactor", "-0.1"], "minLRFactor: must be in [0, 1], got -0.1"),
        (["--layerDecay", "2"], "layerDecay: must be in [0, 1], got 2.0"),
        (["--emaMomentum", "0"], "emaMomentum: must be in (0, 1], got 0.0"),
        (["--emaGamma", "0"], "emaGamma: must be > 0, got 0.0"),
        (["--ema", "yes please"], "argument --ema: expected 0 or 1, got 'yes please'"),
        (["--stage2Epoch", "3"], "stage2Epoch: 3 switches to stage2Augmentation, which is empty"),
        (["--stage2Augmentation", "maxRotate=5"], "stage2Augmentation: is never used with stage2Epoch 0"),
        (
            ["--stage2Epoch", "3", "--stage2Augmentation", "maxScale=0.1,hmGauss=2"],
            "stage2Augmentation: 'hmGauss' is not an augmentation key",
        ),
        (
            ["--stage2Epoch", "3", "--stage2Augmentation", "maxRotat=5"],
            "stage2Augmentation: 'maxRotat' is not an augmentation key",
        ),
        (
            ["--stage2Epoch", "3", "--stage2Augmentation", "flipProb=2"],
            "stage2Augmentation: flipProb must be a probability",
        ),
        (
            ["--stage2Epoch", "3", "--stage2Augmentation", "maxScale=big"],
            "stage2Augmentation: maxScale='big' is not",
        ),
    ],
)
def test_bad_recipe_values_stop_in_one_line_naming_the_key(capsys, argv: list[str], expected: str) -> None:
    line = parse_error(capsys, argv)
    assert expected in line and line.endswith("(on the command line)"), line


def test_stage2_augmentation_parses_and_keeps_the_other_keys() -> None:
    opts = parse_options(
        ["--stage2Epoch", "7", "--stage2Augmentation", " maxScale=0.25, maxRotate=30,halfBodyProb=0"]
    )
    assert opts.stage2_augmentation == {"maxScale": 0.25, "maxRotate": 30.0, "halfBodyProb": 0.0}


@pytest.fixture
def stored_run(tmp_path: Path) -> Path:
    """A checkpoint holding only the options of a run (what a resume's option check reads)."""
    path = tmp_path / "run" / "last.pth"
    save_checkpoint({"model": {}, "config": parse_options(["--ema", "1"]).config}, path)
    return path


def test_a_resume_may_change_the_lr_schedule_but_not_the_ema_groups_or_augmentation(
    stored_run: Path, capsys
) -> None:
    steering = ["--warmupSteps", "100", "--warmupStartFactor", "0.01", "--lrSchedule", "flatcosine",
                "--flatEpochs", "4", "--minLRFactor", "0.1"]  # fmt: skip
    opts = parse_options(["--loadModel", str(stored_run), *steering])
    assert set(opts.resume_changes) == {
        "warmupSteps",
        "warmupStartFactor",
        "lrSchedule",
        "flatEpochs",
        "minLRFactor",
    }
    refused = ["--ema", "0", "--emaMomentum", "0.001", "--noDecayNormBias", "1", "--layerDecay", "0.5",
               "--stage2Epoch", "5", "--stage2Augmentation", "maxRotate=5"]  # fmt: skip
    line = parse_error(capsys, ["--loadModel", str(stored_run), *refused], skip_notes=True)
    for named in ("ema stored True, typed False", "emaMomentum stored 0.0002, typed 0.001",
                  "noDecayNormBias stored False, typed True", "layerDecay stored 0.0, typed 0.5",
                  "stage2Epoch stored 0, typed 5", "stage2Augmentation stored '', typed 'maxRotate=5'"):  # fmt: skip
        assert named in line, named


def test_a_checkpoint_without_the_new_keys_resumes_with_their_defaults(tmp_path: Path, capsys) -> None:
    config = parse_options([]).config
    for key in ("warmupSteps", "ema", "emaMomentum", "stage2Epoch", "stage2Augmentation", "layerDecay"):
        del config[key]
    path = tmp_path / "old" / "last.pth"
    save_checkpoint({"model": {}, "config": config}, path)
    opts = parse_options(["--loadModel", str(path)])
    assert opts.resume_changes == {} and opts.ema is False and opts.warmupSteps == 0
    line = parse_error(capsys, ["--loadModel", str(path), "--ema", "1"], skip_notes=True)
    assert "ema stored False, typed True" in line  # not turned on unnoticed


# --- an interrupted run resumes to the same bits --------------------------------------------------

RECIPE_RUN = [*TINY_RUN, "--data_loader_size", "4", "--nEpochs", "3", "--mini_batch_count", "2",
              "--optimizer_type", "AdamW", "--optimizer_pars", "weight_decay=0.05", "--noDecayNormBias", "1",
              "--ema", "1", "--emaGamma", "5", "--warmupSteps", "4", "--warmupStartFactor", "0.1",
              "--lrSchedule", "flatcosine", "--flatEpochs", "1", "--stage2Epoch", "3",
              "--stage2Augmentation", "maxScale=0.05,maxRotate=5,colorJitter=0"]  # fmt: skip


def signal_after_update(monkeypatch, update: int):
    """SIGTERM to this process right after the EMA's ``update``-th update: the run stops after
    the next optimizer step, as it does for a cluster's pre-emption."""
    original = ExpMomentumEMA.update

    def update_then_signal(self) -> None:
        original(self)
        if self.steps == update:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ExpMomentumEMA, "update", update_then_signal)
    return original


@pytest.mark.e2e
def test_a_recipe_run_stopped_mid_epoch_resumes_to_the_same_bits(tmp_path: Path, monkeypatch) -> None:
    """Warm-up, flat-then-cosine, EMA, no-decay groups and the stage-2 switch: stopped by SIGTERM
    in epoch 2 (6 optimizer steps per epoch), then resumed; weights, EMA, optimizer, schedule and
    metrics.jsonl equal an uninterrupted run's."""
    assert entry.main([*RECIPE_RUN, "--expDir", str(tmp_path), "--expID", "straight"]) == 0
    original = signal_after_update(monkeypatch, 8)
    assert entry.main([*RECIPE_RUN, "--expDir", str(tmp_path), "--expID", "cut"]) == 128 + signal.SIGTERM
    monkeypatch.setattr(ExpMomentumEMA, "update", original)
    cut = load_checkpoint(tmp_path / "cut" / "last.pth")
    assert (cut["mid_epoch"]["epoch"], cut["mid_epoch"]["step"]) == (2, 6) and cut["ema"]["steps"] == 9
    assert cut["scheduler"]["optimizer_steps"] == 9
    assert entry.main(["--loadModel", str(tmp_path / "cut" / "last.pth")]) == 0

    straight, resumed = (
        load_checkpoint(tmp_path / "straight" / "last.pth"),
        load_checkpoint(tmp_path / "cut" / "last.pth"),
    )
    assert straight["ema"]["steps"] == resumed["ema"]["steps"] == 18
    for part in ("model", "optimizer", "ema"):
        flat_a, flat_b = _leaves(straight[part]), _leaves(resumed[part])
        assert flat_a.keys() == flat_b.keys()
        for key, value in flat_a.items():
            assert torch.equal(value, flat_b[key]) if torch.is_tensor(value) else value == flat_b[key], (
                part,
                key,
            )
    assert straight["scheduler"] == resumed["scheduler"]
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "straight")
    # the EMA's weights are what validation scored and what -test evaluates
    assert not any(
        torch.equal(v, straight["model"][k]) for k, v in straight["ema"]["model"].items() if v.ndim == 4
    )
    best = max(r["PCKh"] for r in read_metrics(tmp_path / "straight") if r["split"] == "val")
    assert load_checkpoint(tmp_path / "straight" / "best.pth")["best"] == pytest.approx(best)
    last_val = [r for r in read_metrics(tmp_path / "straight") if r["split"] == "val"][-1]
    command = ["-test", "--loadModel", str(tmp_path / "straight" / "last.pth"), "--expDir", str(tmp_path)]
    assert entry.main([*command, "--expID", "test", "--progress", "none"]) == 0
    (tested,) = read_metrics(tmp_path / "test")
    assert tested["PCKh"] == pytest.approx(last_val["PCKh"]) and tested["loss"] == pytest.approx(
        last_val["loss"]
    )


def _leaves(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{prefix}{key}/").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, value in enumerate(tree) for k, v in _leaves(value, f"{prefix}{i}/").items()}
    return {prefix: tree}
