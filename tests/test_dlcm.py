"""DLCM and its compositional target type: the part hierarchies (data and their one-line checks),
bone maps against hand-computed values, the codec's levels, flip test and running PCK, the loss
matching stages to levels, the network's levels and channels, and one-epoch runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_modern_models import fixture_data

import main as entry
from conftest import REPO_ROOT, TINY_RUN, parse_error, read_metrics
from datasets.codecs import CompositionalCodec, bone_maps, make_codec
from datasets.custom import load_joint_spec, parse_spec, spec_to_json
from datasets.skeletons import COCO_JOINTS, MPII_JOINTS, PartHierarchy
from engine import _batch_pck
from losses import CompositionalMSELoss, make_loss
from models import build_model
from utils.options import parse_options

DLCM_CONF = str(REPO_ROOT / "conf" / "models" / "DLCM.defconf")
# TINY_RUN's sizes, 24 channels wide (more than the 16 or 17 joint maps a top-down stage adds)
TINY_DLCM = [*TINY_RUN, "-ModelConfig", DLCM_CONF, "--nChannels", "24", "--nReductions", "2"]


def gauss(squared_distance: float) -> float:
    """A sigma-1 Gaussian of the squared distance."""
    return math.exp(-squared_distance / 2)


# A small joint set of its own, four levels deep: 5 joints, 4 parts, 2, 1.
STAR_JOINTS = ["head", "l_hand", "r_hand", "l_foot", "r_foot"]
STAR_LEVELS = [
    {"l_arm": ["head", "l_hand"], "r_arm": ["head", "r_hand"], "l_leg": ["head", "l_foot"], "r_leg": ["head", "r_foot"]},
    {"arms": ["l_arm", "r_arm"], "legs": ["l_leg", "r_leg"]},
    {"body": ["arms", "legs"]},
]  # fmt: skip


def star_spec(**changes: object) -> dict:
    spec = {
        "name": "star",
        "joints": STAR_JOINTS,
        "flip_pairs": [["l_hand", "r_hand"], ["l_foot", "r_foot"]],
        "skeleton": [["head", "l_hand"], ["head", "r_hand"], ["head", "l_foot"], ["head", "r_foot"]],
        "sigmas": [0.05] * 5,
        "hierarchy": STAR_LEVELS,
    }
    return spec | changes


# ---------------------------------------------------------------------------------------------
# Bone maps and the codec's targets
# ---------------------------------------------------------------------------------------------


def test_bone_map_is_a_gaussian_of_the_distance_to_the_bone() -> None:
    # on a 5x5 map, sigma 1: a horizontal bone (1, 2) - (3, 2) and a diagonal one (0, 0) - (4, 4)
    maps = bone_maps(np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([[3.0, 2.0], [4.0, 4.0]]), (5, 5), 1.0)
    horizontal, diagonal = maps  # indexed [y, x]
    assert horizontal[2, 1] == horizontal[2, 2] == horizontal[2, 3] == 1.0  # on the bone
    assert horizontal[0, 2] == pytest.approx(gauss(4))  # 2 px above its middle
    assert horizontal[2, 0] == pytest.approx(gauss(1))  # 1 px beyond its start, in line
    assert horizontal[4, 4] == pytest.approx(gauss(5))  # nearest its end (3, 2): 1^2 + 2^2
    assert diagonal[0, 4] == pytest.approx(gauss(8))  # (4, 0) projects onto the middle (2, 2)
    assert diagonal[3, 1] == pytest.approx(gauss(2))  # (1, 3) also onto (2, 2)
    assert diagonal[4, 4] == 1.0 and diagonal[1, 1] == 1.0
    # a bone of length 0 is its joint's Gaussian, here sigma 0.5 on a 4 x 3 map
    point = bone_maps(np.array([[2.0, 1.0]]), np.array([[2.0, 1.0]]), (4, 3), 0.5)[0]
    ys, xs = np.mgrid[0:3, 0:4]
    np.testing.assert_allclose(point, np.exp(-((xs - 2) ** 2 + (ys - 1) ** 2) / 0.5), rtol=1e-12)


def chain_codec() -> CompositionalCodec:
    """Joints a, b, c; level 1: bones a-b and b-c; level 2: both. A 20x20 crop, 5x5 maps, sigma 1."""
    hierarchy = PartHierarchy.from_names(
        ("a", "b", "c"), (), [{"ab": ["a", "b"], "bc": ["b", "c"]}, {"all": ["ab", "bc"]}]
    )
    return CompositionalCodec((20, 20), (5, 5), 1.0, hierarchy)


# heatmap px (1, 2), (3, 2), (3, 4) in input px: x = 4 u + 1.5 (the project's convention, stride 4)
CHAIN = np.array([[5.5, 9.5], [13.5, 9.5], [13.5, 17.5]])


def test_composite_parts_are_drawn_along_their_bones() -> None:
    target, weight = chain_codec().encode(CHAIN, np.ones(3))
    assert target.shape == (6, 5, 5) and weight.tolist() == [1.0] * 6  # a, b, c, ab, bc, all
    ab, bc, whole = target[3], target[4], target[5]
    assert ab[2, 1] == ab[2, 3] == 1.0 and ab[0, 2] == pytest.approx(gauss(4))
    assert bc[3, 3] == 1.0 and bc[3, 1] == pytest.approx(gauss(4))  # 2 px left of the vertical bone
    # level 2 is the maximum of its children: at (4, 3) the vertical bone (1 px) beats a-b's end (2)
    assert whole[3, 4] == pytest.approx(gauss(1)) and ab[3, 4] == pytest.approx(gauss(2))
    assert whole[4, 1] == pytest.approx(gauss(4))  # 2 px from a (1, 2) and 2 px from c (3, 4)
    np.testing.assert_array_equal(whole, np.maximum(ab, bc))


def test_an_unlabelled_joint_leaves_its_bones_unsupervised_but_not_their_parents() -> None:
    target, weight = chain_codec().encode(CHAIN, np.array([1.0, 1.0, 0.0]))
    assert weight.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert not target[2].any() and not target[4].any()  # c and b-c: nothing drawn
    np.testing.assert_array_equal(target[5], target[3])  # the whole is its supervised child a-b


def test_a_bone_more_than_3_sigma_off_the_map_is_not_supervised() -> None:
    # both joints 4 heatmap px left of the map (u = -4): every pixel centre is at least 4 px away
    far = np.array([[-14.5, 1.5], [-14.5, 17.5], [13.5, 17.5]])
    _, weight = chain_codec().encode(far, np.ones(3))
    assert weight.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("joint_set", [MPII_JOINTS, COCO_JOINTS], ids=["MPII", "COCO"])
def test_flip_test_is_exact_on_a_mirrored_pose_at_every_level(joint_set) -> None:
    codec = CompositionalCodec((48, 64), (12, 16), 1.5, joint_set.hierarchy)
    rng = np.random.default_rng(3)
    joints = rng.uniform([2, 2], [45, 61], size=(joint_set.num_joints, 2))
    visible = np.ones(joint_set.num_joints)
    visible[[1, 9]] = 0  # a knee or an eye, and a head top or a wrist, unlabelled
    target, weight = codec.encode(joints, visible)
    perm = joint_set.flip_permutation()
    mirrored = np.stack([47 - joints[:, 0], joints[:, 1]], axis=1)[perm]  # relabelled as the data do
    mirrored_target, mirrored_weight = codec.encode(mirrored, visible[perm])
    levels = codec.split_levels(torch.from_numpy(mirrored_target)[None])
    assert [level.shape[1] for level in levels] == list(joint_set.hierarchy.sizes)
    for level, maps in enumerate(levels):
        part = codec.level_slices[level]
        back = codec.mirror_back_level(maps, level)[0].numpy()
        np.testing.assert_allclose(back, target[part], rtol=0, atol=1e-6)
        flip = joint_set.hierarchy.flip_permutation(level)
        np.testing.assert_array_equal(mirrored_weight[part][flip], weight[part])
        if level < 2:  # the unlabelled joints leave maps of theirs unsupervised, mirrored too
            assert 0 < weight[part].sum() < len(weight[part])
    # level 0 is the heatmap flip test the loop runs on the last stage
    assert torch.equal(codec.mirror_back(levels[0], perm), codec.mirror_back_level(levels[0], 0))


def test_running_pck_reads_the_joints_slice_of_the_target() -> None:
    codec = CompositionalCodec((64, 64), (16, 16), 1.0, MPII_JOINTS.hierarchy)
    joints = np.random.default_rng(0).uniform(8, 56, size=(16, 2))
    target, weight = (torch.from_numpy(a)[None] for a in codec.encode(joints, np.ones(16)))
    assert target.shape == (1, 34, 16, 16) and weight.shape == (1, 34)
    last_stage = target[:, :16].clone()  # a perfect joint-level prediction
    assert _batch_pck(codec, last_stage, target, weight).item() == 100.0
    last_stage[:, :4] = torch.roll(last_stage[:, :4], 8, dims=-1)  # 4 joints 8 px (32 input px) off
    assert _batch_pck(codec, last_stage, target, weight).item() == 75.0
    assert codec.target_shape(16) == (34, 16, 16) and codec.output_shape(16) == (16, 16, 16)


def test_the_last_stage_decodes_as_heatmaps_with_either_post_process() -> None:
    joints = np.random.default_rng(1).uniform(12, 52, size=(16, 2))
    errors = {}
    for post_process in ("quarter", "dark"):
        codec = make_codec(
            "compositional",
            (64, 64),
            (16, 16),
            2.0,
            post_process=post_process,
            hierarchy=MPII_JOINTS.hierarchy,
        )
        target, _ = codec.encode(joints, np.ones(16))
        decoded, _ = codec.decode(target[None, :16])  # the joints' slice, as the last stage gives it
        errors[post_process] = np.abs(decoded[0] - joints)
    assert errors["quarter"].max() <= 4 * 0.25 + 1e-9  # a quarter heatmap px at stride 4
    assert errors["dark"].max() < 0.5 and errors["dark"].mean() < errors["quarter"].mean() / 2


def test_browse_draws_the_joints_of_a_compositional_target(tmp_path: Path) -> None:
    from datasets import SyntheticPeople
    from datasets.codecs import HeatmapCodec
    from utils.drawing import browse_samples

    pictures = {}
    for name, codec in (
        ("heatmap", HeatmapCodec((64, 64), (16, 16), 1.0)),
        ("compositional", CompositionalCodec((64, 64), (16, 16), 1.0, MPII_JOINTS.hierarchy)),
    ):
        data = SyntheticPeople("train", 2, codec, (64, 64), image_size=80)
        pictures[name] = [path.read_bytes() for path in browse_samples(data, codec, 2, tmp_path / name)]
    assert pictures["compositional"] == pictures["heatmap"]  # the same joints, drawn the same


# ---------------------------------------------------------------------------------------------
# The loss and the network
# ---------------------------------------------------------------------------------------------


def test_the_loss_matches_each_stage_to_its_level() -> None:
    codec = make_codec("compositional", (32, 32), (8, 8), 1.0, hierarchy=MPII_JOINTS.hierarchy)
    loss_fn = make_loss(codec)
    assert isinstance(loss_fn, CompositionalMSELoss) and codec.stage_levels == (0, 1, 2, 1, 0)
    target = torch.rand(2, 34, 8, 8, generator=torch.Generator().manual_seed(0))
    weight = torch.ones(2, 34)
    weight[0, 20] = 0  # one of level 1's maps (16-27) unsupervised in the first sample
    outputs = [target[:, codec.level_slices[level]].clone() for level in codec.stage_levels]
    assert loss_fn(outputs, target, weight).item() == 0.0
    # stage 2 predicts level 2 (6 maps, all supervised): off by 1 everywhere, a mean of 1
    outputs[2] += 1
    assert loss_fn(outputs, target, weight).item() == pytest.approx(1.0)
    # stage 3 predicts level 1 (12 maps): 23 of the 24 maps of the batch count
    outputs[2] -= 1
    outputs[3] += 1
    assert loss_fn(outputs, target, weight).item() == pytest.approx(23 / 24)
    with pytest.raises(ValueError, match="4 stage outputs for 5 stages"):
        loss_fn(outputs[:4], target, weight)


def star_hierarchy() -> PartHierarchy:
    return parse_spec(star_spec()).hierarchy


@pytest.mark.parametrize(
    ("name", "hierarchy", "levels"),
    [
        ("MPII", MPII_JOINTS.hierarchy, (16, 12, 6, 12, 16)),
        ("COCO", COCO_JOINTS.hierarchy, (17, 12, 6, 12, 17)),
        ("star", None, (5, 4, 2, 1, 2, 4, 5)),
    ],
)
def test_network_levels_and_channels_follow_the_hierarchy(name, hierarchy, levels) -> None:
    hierarchy = hierarchy or star_hierarchy()
    torch.manual_seed(0)
    model = build_model("DLCM", hierarchy=hierarchy, nChannels=20, nReductions=1).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 32, 24))
    assert [tuple(o.shape) for o in outputs] == [(1, k, 8, 6) for k in levels]
    assert [head.out_channels for head in model.heads] == list(levels)
    # a top-down stage sets its level's bottom-up maps beside features narrowed to 20 - K
    top = hierarchy.num_levels
    assert [narrow.skip.out_channels for narrow in model.narrow] == [20 - k for k in levels[top:]]
    codec = make_codec("compositional", (24, 32), (6, 8), 1.0, hierarchy=hierarchy)
    assert codec.stage_shapes(levels[0]) == [o.shape[1:] for o in outputs]


def test_network_width_and_joint_count_are_checked() -> None:
    with pytest.raises(ValueError, match="n_channels: 16 leaves no room beside the 16 maps"):
        build_model("DLCM", nChannels=16)
    with pytest.raises(ValueError, match="n_joints: 17 joints, but the part hierarchy's level 0 has 16"):
        build_model("DLCM", nJoints=17, nChannels=32)


# ---------------------------------------------------------------------------------------------
# Hierarchies as data: the built-in ones, the custom spec's key, and its one-line errors
# ---------------------------------------------------------------------------------------------


def test_the_built_in_hierarchies() -> None:
    mpii, coco = MPII_JOINTS.hierarchy, COCO_JOINTS.hierarchy
    assert mpii.sizes == (16, 12, 6) and coco.sizes == (17, 12, 6)
    # the paper's parts: the right leg is its two bones, the waist the two hip bones to the pelvis
    names = MPII_JOINTS.names
    assert [(names[a], names[b]) for a, b in mpii.bones(2)[0]] == [("r_ankle", "r_knee"), ("r_knee", "r_hip")]
    assert [(names[a], names[b]) for a, b in mpii.bones(2)[2]] == [("r_hip", "pelvis"), ("l_hip", "pelvis")]
    # mirror twins as the authors' hierarchy file pairs them (its `partners`, 0-based here)
    assert mpii.flip_permutations[1] == (3, 2, 1, 0, 5, 4, 6, 7, 11, 10, 9, 8)
    assert mpii.flip_permutations[2] == (1, 0, 2, 3, 5, 4)
    # COCO's face: a chain ear - eye - nose on each side
    left_face = coco.names(1).index("left_face")
    assert [(COCO_JOINTS.names[a], COCO_JOINTS.names[b]) for a, b in coco.bones(1)[left_face]] == [
        ("left_ear", "left_eye"), ("left_eye", "nose")
    ]  # fmt: skip


def test_a_custom_hierarchy_is_read_and_recorded_with_the_spec() -> None:
    spec = parse_spec(star_spec())
    assert spec.hierarchy.sizes == (5, 4, 2, 1) and spec.hierarchy.stage_levels == (0, 1, 2, 3, 2, 1, 0)
    assert spec.hierarchy.flip_permutations[1] == (1, 0, 3, 2)
    assert spec.hierarchy.to_json() == STAR_LEVELS
    assert load_joint_spec(spec_to_json(spec)) == spec  # a checkpoint keeps it
    no_key = parse_spec({k: v for k, v in star_spec().items() if k != "hierarchy"})
    assert no_key.hierarchy is None and "hierarchy" not in spec_to_json(no_key)


BAD_HIERARCHIES = {
    "an unknown joint": (
        [{"l_arm": ["head", "l_hnad"], "r_arm": ["head", "r_hand"]}],
        "level 1, part 'l_arm': unknown name 'l_hnad'; did you mean 'l_hand'?",
    ),
    "a joint left out": (
        [{"l_arm": ["head", "l_hand"], "r_arm": ["head", "r_hand"], "l_leg": ["head", "l_foot"]}],
        "level 1: joint 'r_foot' is in no part; every joint of level 0 must belong to a part of level 1",
    ),
    "a cycle": (
        [STAR_LEVELS[0], {"arms": ["l_arm", "r_arm"], "legs": ["l_leg", "r_leg", "arms"]}],
        "level 2, part 'legs': 'arms' is a part of level 2, not of level 1; a part is made of the level just "
        "below, so this makes a cycle",
    ),
    "an empty part": (
        [STAR_LEVELS[0], {"arms": ["l_arm", "r_arm"], "legs": ["l_leg", "r_leg"], "tail": []}],
        "level 2, part 'tail': has no children (an empty part)",
    ),
    "a part without its mirror twin": (
        [{"l_arm": ["head", "l_hand"], "r_arm": ["r_hand"], "l_leg": ["head", "l_foot"], "r_leg": ["head", "r_foot"]}],
        "level 1, part 'l_arm': its mirror image is no part of level 1",
    ),
    "a level skipped": (
        [STAR_LEVELS[0], {"all": ["l_arm", "head"]}],
        "level 2, part 'all': 'head' is a joint, not of level 1",
    ),
    "a part named as a joint": ([{"head": ["head"]}], "level 1: part 'head' takes the name of a joint"),
    "not a list": ({"l_arm": ["head"]}, "expected a non-empty list of levels"),
}  # fmt: skip


def custom_data(spec: Path, folder: Path) -> list[str]:
    """The options of a custom dataset of joint spec ``spec``, its data and runs in ``folder``."""
    return [
        "--dataset",
        "custom",
        "--jointSpec",
        str(spec),
        "--dataDir",
        str(folder),
        "--expDir",
        str(folder),
    ]


@pytest.mark.parametrize("case", list(BAD_HIERARCHIES))
def test_a_bad_hierarchy_is_one_line_naming_the_spec_and_key(case, tmp_path, capsys) -> None:
    levels, expected = BAD_HIERARCHIES[case]
    spec = tmp_path / "star.json"
    spec.write_text(json.dumps(star_spec(hierarchy=levels)))
    err = parse_error(capsys, custom_data(spec, tmp_path))
    assert err.startswith(f"main.py: error: jointSpec: {spec}: key 'hierarchy': {expected}"), err


def test_dlcm_needs_a_hierarchy(tmp_path, capsys) -> None:
    spec = tmp_path / "flat.json"
    spec.write_text(json.dumps({k: v for k, v in star_spec().items() if k != "hierarchy"}))
    data = custom_data(spec, tmp_path)
    err = parse_error(capsys, [*data, "-ModelConfig", DLCM_CONF])
    assert err == (
        "main.py: error: jointSpec: spec 'star' has no 'hierarchy' key, which model DLCM needs (its levels "
        "of parts; see docs/datasets.md, Your own keypoints) (on the command line)"
    )
    assert parse_options(data).hierarchy is None  # every other model takes the spec as it is


# ---------------------------------------------------------------------------------------------
# One epoch, then -test from the checkpoint alone
# ---------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_one_epoch_on_synthetic_data_then_test_from_the_checkpoint_alone(tmp_path: Path) -> None:
    assert entry.main([*TINY_DLCM, "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "train"]) == 0
    records = read_metrics(tmp_path / "train")
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val")]
    val = records[-1]
    assert 0.0 <= val["PCKh"] <= 100.0 and math.isfinite(val["loss"])
    # the checkpoint alone rebuilds the network, its hierarchy and its codec: the same numbers
    checkpoint = str(tmp_path / "train" / "last.pth")
    assert entry.main(["-test", "--loadModel", checkpoint, "--expID", "test"]) == 0
    tested = read_metrics(tmp_path / "test")[-1]
    assert tested["PCKh"] == pytest.approx(val["PCKh"], abs=1e-9)
    assert tested["loss"] == pytest.approx(val["loss"], rel=1e-6)


@pytest.mark.e2e
def test_one_epoch_on_the_coco_fixture(shared_data: Path, tmp_path: Path) -> None:
    data = fixture_data(shared_data, "coco")
    assert (
        entry.main([*TINY_DLCM, *data, "--nEpochs", "1", "--expDir", str(tmp_path), "--expID", "coco"]) == 0
    )
    val = read_metrics(tmp_path / "coco")[-1]
    assert val["split"] == "val" and 0.0 <= val["AP"] <= 1.0 and 0.0 <= val["PCK"] <= 100.0
    state = torch.load(tmp_path / "coco" / "last.pth", map_location="cpu", weights_only=True)["model"]
    # COCO's hierarchy: 17 joints, 12 parts, 6 parts; bottom-up then top-down
    assert [state[f"heads.{stage}.weight"].shape[0] for stage in range(5)] == [17, 12, 6, 12, 17]
