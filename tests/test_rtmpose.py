"""RTMPose and ``models.import_weights rtmpose``: checkpoints laid out as MMPose publishes them
become checkpoints of this project whose network gives the authors' outputs.

``AuthorsRTMPose`` below rebuilds the authors' module tree from reading their code: mmdet's
``CSPNeXt`` (mmdet/models/backbones/cspnext.py, layers/csp_layer.py, backbones/csp_darknet.py's
``SPPBottleneck``, with mmcv's ``ConvModule`` and ``DepthwiseSeparableConvModule``) and MMPose's
``RTMCCHead`` (mmpose/models/heads/coord_cls_heads/rtmcc_head.py, models/utils/rtmcc_block.py,
models/utils/transformer.py's ``ScaleNorm``), with the arguments of the RTMPose configs
(configs/body_2d_keypoint/rtmpose/coco/rtmpose-{t,s,m,l}_8xb256-420e_coco-256x192.py). It keeps
their attribute names, so their state-dict keys, and their forward passes (adaptive average pooling,
torch.norm, bmm), so a converted network is compared output for output with the source network.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import build
from conftest import REPO_ROOT
from datasets.base import IMAGENET_MEAN, IMAGENET_STD
from models import build_model
from models.complexity import count_parameters
from models.import_weights import (
    ConversionError,
    InputSize,
    convert,
    import_rtmpose,
    rtmpose_input_of,
    rtmpose_names,
    rtmpose_size_of,
    simcc_sigma,
)
from models.import_weights import main as import_main
from utils.checkpoint import load_checkpoint
from utils.options import parse_options

# ------------------------------------------------------------------------ the authors' network

# the configs' backbone arguments: (deepen_factor, widen_factor), and the head's in_channels
CONFIGS = {"t": (0.167, 0.375, 384), "s": (0.33, 0.5, 512), "m": (0.67, 0.75, 768), "l": (1.0, 1.0, 1024)}
# MMPose's model zoo (projects/rtmpose/README.md, configs/.../rtmpose_coco.md): M parameters, COCO 256x192
PUBLISHED_PARAMETERS = {"t": 3.34, "s": 5.47, "m": 13.59, "l": 27.66}
# the configs' data_preprocessor: RGB (bgr_to_rgb on OpenCV's BGR), these mean and std
PREPROCESSOR_MEAN, PREPROCESSOR_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


class ConvModule(nn.Module):
    """mmcv ConvModule with a norm: bias 'auto' drops the conv's bias; norm_cfg=dict(type='SyncBN')
    (the configs' backbone) builds torch's SyncBatchNorm with its defaults; SiLU."""

    def __init__(
        self, n_in: int, n_out: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1
    ):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.SyncBatchNorm(n_out)
        self.activate = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.depthwise_conv = ConvModule(n_in, n_in, kernel, stride, padding, groups=n_in)
        self.pointwise_conv = ConvModule(n_in, n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class AuthorsCSPNeXtBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, expansion: float, add_identity: bool, kernel_size: int = 5):
        super().__init__()
        hidden = int(n_out * expansion)
        self.conv1 = ConvModule(n_in, hidden, 3, padding=1)
        self.conv2 = DepthwiseSeparableConvModule(hidden, n_out, kernel_size, padding=kernel_size // 2)
        self.add_identity = add_identity and n_in == n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class AuthorsChannelAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.global_avgpool(x)))


class AuthorsCSPLayer(nn.Module):
    def __init__(self, n_in: int, n_out: int, expand_ratio: float, num_blocks: int, add_identity: bool):
        super().__init__()
        mid = int(n_out * expand_ratio)
        self.main_conv = ConvModule(n_in, mid, 1)
        self.short_conv = ConvModule(n_in, mid, 1)
        self.final_conv = ConvModule(2 * mid, n_out, 1)
        self.blocks = nn.Sequential(
            *[AuthorsCSPNeXtBlock(mid, mid, 1.0, add_identity) for _ in range(num_blocks)]
        )
        self.attention = AuthorsChannelAttention(2 * mid)  # channel_attention=True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_short = self.short_conv(x)
        x_main = self.blocks(self.main_conv(x))
        return self.final_conv(self.attention(torch.cat((x_main, x_short), dim=1)))


class AuthorsSPPBottleneck(nn.Module):
    def __init__(self, n_in: int, n_out: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        mid = n_in // 2
        self.conv1 = ConvModule(n_in, mid, 1)
        self.poolings = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernel_sizes])
        self.conv2 = ConvModule(mid * (len(kernel_sizes) + 1), n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pooling(x) for pooling in self.poolings], dim=1))


class AuthorsCSPNeXt(nn.Module):
    """arch 'P5', expand_ratio 0.5, out_indices (4,), channel_attention True."""

    P5 = [[64, 128, 3, True, False], [128, 256, 6, True, False], [256, 512, 6, True, False],
          [512, 1024, 3, False, True]]  # fmt: skip

    def __init__(self, deepen_factor: float, widen_factor: float):
        super().__init__()
        stem = int(self.P5[0][0] * widen_factor // 2)
        self.stem = nn.Sequential(
            ConvModule(3, stem, 3, 2, 1),
            ConvModule(stem, stem, 3, 1, 1),
            ConvModule(stem, int(self.P5[0][0] * widen_factor), 3, 1, 1),
        )
        self.layers = ["stem"]
        for i, (n_in, n_out, num_blocks, add_identity, use_spp) in enumerate(self.P5):
            n_in, n_out = int(n_in * widen_factor), int(n_out * widen_factor)
            num_blocks = max(round(num_blocks * deepen_factor), 1)
            stage: list[nn.Module] = [ConvModule(n_in, n_out, 3, 2, 1)]
            if use_spp:
                stage.append(AuthorsSPPBottleneck(n_out, n_out))
            stage.append(AuthorsCSPLayer(n_out, n_out, 0.5, num_blocks, add_identity))
            self.add_module(f"stage{i + 1}", nn.Sequential(*stage))
            self.layers.append(f"stage{i + 1}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i == 4:
                outs.append(x)
        return tuple(outs)


class AuthorsScaleNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class AuthorsScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class AuthorsRTMCCBlock(nn.Module):
    """Self-attention, SiLU, use_rel_bias False, pos_enc False, dropout 0, drop_path 0, bias False."""

    def __init__(self, num_token: int, in_dims: int, out_dims: int, expansion_factor: int = 2, s: int = 128):
        super().__init__()
        self.s, self.e = s, int(in_dims * expansion_factor)
        self.o = nn.Linear(self.e, out_dims, bias=False)
        self.uv = nn.Linear(in_dims, 2 * self.e + self.s, bias=False)
        self.gamma = nn.Parameter(torch.rand((2, self.s)))
        self.beta = nn.Parameter(torch.rand((2, self.s)))
        self.ln = AuthorsScaleNorm(in_dims, eps=1e-5)
        self.act_fn = nn.SiLU()
        self.shortcut = in_dims == out_dims
        self.res_scale = AuthorsScale(in_dims)
        self.sqrt_s = math.sqrt(s)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        uv = self.act_fn(self.uv(self.ln(x)))
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma[None, None, :] + self.beta
        q, k = torch.unbind(base, dim=2)
        kernel = torch.square(F.relu(torch.bmm(q, k.permute(0, 2, 1)) / self.sqrt_s))
        return self.o(u * torch.bmm(kernel, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale(x) + self._forward(x) if self.shortcut else self._forward(x)


class AuthorsRTMCCHead(nn.Module):
    """input_size (w, h), in_featuremap_size (w / 32, h / 32), final_layer_kernel_size 7,
    gau_cfg hidden_dims 256, s 128, expansion_factor 2."""

    def __init__(
        self, in_channels: int, out_channels: int, input_size: tuple[int, int], split_ratio: float = 2.0
    ):
        super().__init__()
        flatten_dims = (input_size[0] // 32) * (input_size[1] // 32)
        self.final_layer = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=1, padding=3)
        self.mlp = nn.Sequential(AuthorsScaleNorm(flatten_dims), nn.Linear(flatten_dims, 256, bias=False))
        W, H = int(input_size[0] * split_ratio), int(input_size[1] * split_ratio)  # noqa: N806 (theirs)
        self.gau = AuthorsRTMCCBlock(out_channels, 256, 256, expansion_factor=2, s=128)
        self.cls_x = nn.Linear(256, W, bias=False)
        self.cls_y = nn.Linear(256, H, bias=False)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.flatten(self.final_layer(feats[-1]), 2)
        x = self.gau(self.mlp(x))
        return self.cls_x(x), self.cls_y(x)


class AuthorsRTMPose(nn.Module):
    """TopdownPoseEstimator's backbone and head (its data preprocessor holds no tensors)."""

    def __init__(self, size: str, joints: int, input_size: tuple[int, int], split_ratio: float = 2.0):
        super().__init__()
        deepen, widen, channels = CONFIGS[size]
        self.backbone = AuthorsCSPNeXt(deepen, widen)
        self.head = AuthorsRTMCCHead(channels, joints, input_size, split_ratio)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Known, non-trivial tensors: He-scaled weights (activations keep their size through the
    depth; the attention's projection smaller), biases and BatchNorm statistics away from 0 and 1 so eval mode is tested too, gains
    (BatchNorm, ScaleNorm, the residual scale) and the query/key scales and offsets varied."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(uniform(tensor.shape, 0.5, 1.5))
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith(("gamma", "beta")):
                tensor.copy_(uniform(tensor.shape, 0.5, 1.5))
            elif tensor.dim() == 1:  # BatchNorm and ScaleNorm gains, the residual scale
                tensor.copy_(uniform(tensor.shape, 0.5, 1.0))
            else:
                std = (2 / tensor[0].numel()) ** 0.5
                if name.endswith("gau.uv.weight"):
                    # the unit squares its scores: He-scaled, its attention outweighs the skip path
                    # 10^4 times (logits near 4e4); a tenth keeps both in play (logits near 10)
                    std *= 0.1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
    return net.eval()


def save_published(net: nn.Module, path: Path) -> Path:
    """As MMPose's tools/misc/publish_model.py leaves a checkpoint: {'meta', 'state_dict'}, the
    legacy (non-zip) format, MMEngine's meta with the dataset's metainfo (numpy arrays among it)."""
    meta = {
        "mmengine_version": "0.4.0",
        "epoch": 420,
        "iter": 245700,
        "dataset_meta": {
            "dataset_name": "coco",
            "flip_indices": [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15],
            "sigmas": np.array([0.026, 0.025, 0.025], dtype=np.float32),
            "keypoint_colors": np.array([[51, 153, 255]], dtype=np.int64),
            "num_keypoints": np.int64(17),
        },
    }
    torch.save({"meta": meta, "state_dict": net.state_dict()}, path, _use_new_zipfile_serialization=False)
    # the releases (2023) were pickled under numpy 1, whose arrays name numpy.core, not numpy._core
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    return path


def image_batch(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """ImageNet-normalised RGB, what the project feeds and what MMPose's preprocessor gives."""
    rgb = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    mean, std = (
        torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1),
    )
    return ((rgb - mean.float()) / std.float()).float()


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def trainable(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)


# ------------------------------------------------------------------------ sizes, full scale


def test_the_preprocessor_is_the_pipelines_imagenet_normalisation() -> None:
    # MMPose: (pixel - mean) / std on RGB 0-255; the project: (pixel / 255 - mean) / std, the same
    np.testing.assert_allclose(np.array(PREPROCESSOR_MEAN) / 255, IMAGENET_MEAN, atol=1e-9)
    np.testing.assert_allclose(np.array(PREPROCESSOR_STD) / 255, IMAGENET_STD, atol=1e-9)
    assert (
        build_model("RTMPose", rtmpose_size="t", input_res=64, aspect_ratio=1).input_norm.mode == "imagenet"
    )


@pytest.mark.parametrize("size", ["t", "s", "m", "l"])
def test_parameter_counts_are_the_authors(size: str) -> None:
    """At 256x192 with 17 joints: ours, the authors' network rebuilt, and their published figure."""
    with torch.device("meta"):
        theirs = AuthorsRTMPose(size, 17, (192, 256)).state_dict()
        ours = build_model("RTMPose", rtmpose_size=size, n_joints=17, input_res=256, aspect_ratio=0.75)
    counted = trainable(theirs)
    assert count_parameters(ours) == counted
    assert round(counted / 1e6, 2) == PUBLISHED_PARAMETERS[size]
    expected = {"t": 3_337_007, "s": 5_473_251, "m": 13_587_611, "l": 27_660_339}[size]
    assert counted == expected  # pinned: a change in either network shows here
    # every tensor has its counterpart by name and shape, and the size is read back from the shapes
    letter, blocks = rtmpose_size_of(theirs)
    assert letter == size
    converted = convert(theirs, rtmpose_names(blocks), ours.state_dict(), "RTMPose")
    assert set(converted) == set(ours.state_dict()) and len(theirs) == len(converted)
    assert rtmpose_input_of(theirs) == (256, 192, 2.0)


def test_the_backbone_is_cspnext_as_the_configs_set_it() -> None:
    model = build_model("RTMPose", rtmpose_size="m", input_res=64, aspect_ratio=1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # the configs' SyncBN replaces CSPNeXt's default (momentum 0.03, eps 1e-3): PyTorch's own
    assert norms and all((m.eps, m.momentum) == (1e-5, 0.1) for m in norms)
    stages = model.backbone.stages
    assert [len(stage.csp.blocks) for stage in stages] == [2, 4, 4, 2]  # round(3, 6, 6, 3 x 0.67)
    assert [stage.spp is not None for stage in stages] == [False, False, False, True]
    assert [stage.csp.blocks[0].identity for stage in stages] == [True, True, True, False]
    assert isinstance(model.backbone.stem[0].act, nn.SiLU)
    gau = model.head.gau
    assert (gau.e, gau.s, gau.uv.out_features, model.head.conv.kernel_size) == (512, 128, 1152, (7, 7))


def test_refused_sizes_name_the_parameter_and_the_config_key(capsys) -> None:
    with pytest.raises(ValueError, match="rtmpose_size must be one of t, s, m, l, got 'x'"):
        build_model("RTMPose", rtmpose_size="x")
    with pytest.raises(ValueError, match="input_res 224 with aspect_ratio 0.75 gives a 224x168 input"):
        build_model("RTMPose", input_res=224, aspect_ratio=0.75)
    # build.py turns the builder's refusal into one line naming the config key
    conf = str(REPO_ROOT / "conf" / "models" / "RTMPose-t.defconf")
    for argv, expected in (
        (["--inputRes", "224", "--aspectRatio", "0.75"],
         "main.py: error: model RTMPose: inputRes 224 with aspectRatio 0.75 gives a 224x168 input; RTMPose "
         "needs both sides multiples of 32, e.g. 256x192 (on the command line)"),
        (["--rtmposeSize", "xl"],
         "main.py: error: model RTMPose: rtmposeSize must be one of t, s, m, l, got 'xl' (on the command line)"),
    ):  # fmt: skip
        opts = parse_options(["-ModelConfig", conf, *argv])
        with pytest.raises(SystemExit) as stop:
            build.build_profiled(opts, (32, 32))
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [expected]


def test_output_is_x_then_y_logits_and_the_conf_files_build() -> None:
    model = build_model("RTMPose", rtmpose_size="t", n_joints=5, input_res=96, aspect_ratio=2 / 3).eval()
    with torch.no_grad():
        (output,) = model(image_batch(2, 96, 64, seed=0))
        tokens = model.head.gau(model.head.embed(model.head.norm(model.head.conv(model.backbone(
            image_batch(2, 96, 64, seed=0))).flatten(2))))  # fmt: skip
    assert output.shape == (2, 5, 128 + 192) and model.bins == (128, 192)
    torch.testing.assert_close(output[..., :128], model.head.cls_x(tokens))
    torch.testing.assert_close(output[..., 128:], model.head.cls_y(tokens))
    for size, width in (("t", 384), ("s", 512), ("m", 768), ("l", 1024)):
        opts = parse_options(["-ModelConfig", str(REPO_ROOT / "conf" / "models" / f"RTMPose-{size}.defconf")])
        assert (opts.model, opts.rtmposeSize, opts.target_type, opts.simccSigma) == (
            "RTMPose", size, "simcc", "4.9,5.66",
        )  # fmt: skip
        assert (opts.optimizer_type, opts.LR, opts.nEpochs) == ("AdamW", 4e-3, 420)
        assert opts.optimizer_kwargs == {"weight_decay": 0.05 if size in "ml" else 0}
        # the authors' recipe: warm-up, flat then cosine from half the epochs, EMA (not for t), the last
        # 30 epochs milder
        assert (opts.warmupSteps, opts.lrSchedule, opts.flatEpochs, opts.ema, opts.stage2Epoch) == (
            1000, "flatcosine", 210, size != "t", 391,
        )  # fmt: skip
        with torch.device("meta"):
            model = build_model(opts.model, **vars(opts))
        assert model.backbone.out_channels == width
    mpii = [str(REPO_ROOT / "conf" / "models" / "RTMPose-m-mpii.defconf"), "-DataConfig",
            str(REPO_ROOT / "conf" / "datasets" / "mpii.defconf"), "--dataDir", str(REPO_ROOT)]  # fmt: skip
    opts = parse_options(["-ModelConfig", *mpii])
    assert (opts.rtmposeSize, opts.nJoints, opts.inputRes, opts.aspectRatio, opts.simcc_sigma) == (
        "m", 16, 256, 1.0, (5.66, 5.66),
    )  # fmt: skip
    assert (opts.data_loader_size, opts.nEpochs, opts.flatEpochs, opts.stage2Epoch) == (64, 210, 105, 181)
    with torch.device("meta"):
        assert build_model(opts.model, **vars(opts)).bins == (512, 512)


def test_the_export_takes_each_vector_from_its_classifier(tmp_path: Path) -> None:
    # the exported graph gives simcc_x and simcc_y as the classifiers' products, not as slices of
    # forward's concatenation: the same numbers, without the Concat and the Split ONNX Runtime would run
    import onnx

    from datasets.codecs import SimCCCodec
    from export import LastStage, export_onnx

    model = build_model("RTMPose", rtmpose_size="t", n_joints=5, input_res=96, aspect_ratio=2 / 3).eval()
    codec = SimCCCodec((64, 96), split_ratio=2.0, sigma=(4.0, 4.0))
    image = image_batch(2, 96, 64, seed=3)
    with torch.no_grad():
        exported, split = LastStage(model, codec)(image), codec.split_outputs(model(image)[-1])
    assert [tuple(t.shape) for t in exported] == [(2, 5, 128), (2, 5, 192)]
    for direct, sliced in zip(exported, split, strict=True):
        torch.testing.assert_close(direct, sliced, rtol=0, atol=0)
    export_onnx(LastStage(model, codec), (64, 96), codec.output_names, tmp_path / "rtmpose.onnx")
    graph = onnx.load(str(tmp_path / "rtmpose.onnx")).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    assert [producers[output.name] for output in graph.output] == ["MatMul", "MatMul"]


# ------------------------------------------------------------------------ conversion, outputs


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> tuple[Path, AuthorsRTMPose]:
    torch.manual_seed(0)
    net = randomise(AuthorsRTMPose("t", 17, (64, 96)), seed=1)  # input_size (w, h): 96x64 (h x w)
    path = tmp_path_factory.mktemp("rtmpose") / "rtmpose-tiny_simcc-coco_pt-aic-coco_420e-96x64.pth"
    return save_published(net, path), net


@pytest.mark.parametrize("size", ["t", "m"])
def test_converted_rtmpose_gives_the_authors_logits(size: str, tiny_source, tmp_path: Path, capsys) -> None:
    if size == "t":
        source, theirs = tiny_source
    else:
        theirs = randomise(AuthorsRTMPose(size, 17, (64, 96)), seed=2)
        source = save_published(theirs, tmp_path / f"rtmpose-{size}.pth")
    destination = tmp_path / "rtmpose.pth"
    assert import_main(["rtmpose", str(source), str(destination)]) == 0
    assert f"RTMPose-{size}, 17 joints, 96x64 input, 2 bins per pixel" in capsys.readouterr().out
    state = load_checkpoint(destination)
    config = state["config"]
    assert (config["model"], config["rtmposeSize"], config["nJoints"], config["dataset"]) == (
        "RTMPose", size, 17, "COCO",
    )  # fmt: skip
    assert (config["inputRes"], round(96 * config["aspectRatio"]), config["simccSplitRatio"]) == (96, 64, 2.0)
    assert (config["coordConvention"], config["inputNorm"], config["flipTest"]) == (
        "mmpose",
        "imagenet",
        True,
    )
    assert config["simccSigma"] == "2.83,3.46"  # sqrt(64 / 8), sqrt(96 / 8)
    # key by key: every source tensor, found under its new name, unchanged
    published = theirs.state_dict()
    names = rtmpose_names(rtmpose_size_of(published)[1])
    for key, value in published.items():
        module, _, leaf = key.rpartition(".")
        assert torch.equal(state["model"][f"{names[module]}.{leaf}"], value), key
    assert len(state["model"]) == len(published)
    # and the network rebuilt from the checkpoint's config: the authors' logits, in float32
    ours = build_model(config["model"], **config)
    ours.load_state_dict(state["model"])
    image = image_batch(2, 96, 64, seed=3)
    with torch.no_grad():
        expected_x, expected_y = theirs.float()(image)
        (output,) = ours.eval()(image)
    assert expected_x.shape == (2, 17, 128) and expected_y.shape == (2, 17, 192)
    error = relative_error(output, torch.cat([expected_x, expected_y], dim=-1))
    print(f"RTMPose-{size}: max |ours - theirs| / max |theirs| = {error:.2e}")
    assert error < 1e-5
    assert expected_x.std() > 1e-2 and expected_y.std() > 1e-2  # a real signal, not constant logits


@pytest.mark.parametrize(
    ("size", "joints", "input_size", "dataset", "aspect", "sigma"),
    [
        ("t", 17, (192, 256), "COCO", 0.75, "4.9,5.66"),
        ("l", 17, (288, 384), "COCO", 0.75, "6,6.93"),
        ("m", 16, (256, 256), "MPII", 1.0, "5.66,5.66"),
    ],
)
def test_published_sizes_give_the_authors_config(size, joints, input_size, dataset, aspect, sigma) -> None:
    """The input size, split ratio and label sigma come from the head's shapes, as the authors'
    configs set them for 256x192, 384x288 (COCO) and 256x256 (MPII)."""
    with torch.device("meta"):
        theirs = AuthorsRTMPose(size, joints, input_size).state_dict()
    state, summary = import_rtmpose(theirs, InputSize())
    config = state["config"]
    width, height = input_size
    assert (config["dataset"], config["nJoints"], config["rtmposeSize"]) == (dataset, joints, size)
    assert (config["inputRes"], config["aspectRatio"], config["simccSplitRatio"]) == (height, aspect, 2.0)
    assert config["simccSigma"] == sigma and summary.endswith(f"{height}x{width} input, 2 bins per pixel")
    # typed sizes that agree are accepted; others are refused in one line
    assert import_rtmpose(theirs, InputSize(height, aspect))[0]["config"]["inputRes"] == height
    with pytest.raises(ConversionError, match=f"but the source's head was built for {height}x{width}"):
        import_rtmpose(theirs, InputSize(height + 32))


def test_the_sigma_rule_gives_every_value_of_the_authors_configs() -> None:
    # configs/body_2d_keypoint/rtmpose: (192, 256): (4.9, 5.66); (256, 256): (5.66, 5.66); (288, 384): (6., 6.93)
    assert simcc_sigma(256, 192) == "4.9,5.66"
    assert simcc_sigma(256, 256) == "5.66,5.66"
    assert simcc_sigma(384, 288) == "6,6.93"


def test_bad_sources_are_one_line(tiny_source, tmp_path: Path, capsys) -> None:
    def error_of(state: object, *options: str) -> str:
        path = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}.pth"
        torch.save(state, path)
        assert import_main(["rtmpose", str(path), str(tmp_path / f"{path.stem}-out.pth"), *options]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("import_weights: error: ")
        return err

    published = tiny_source[1].state_dict()

    # not a checkpoint at all, and one that needs code to unpickle
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert import_main(["rtmpose", str(text), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"import_weights: error: {text} cannot be read with weights_only=True")
    assert len(err.splitlines()) == 1
    assert "pass --trustSource" in error_of({"state_dict": published, "model": nn.Linear(2, 2)})
    # another network's keys
    assert "not an RTMPose network" in error_of({"conv1.weight": torch.zeros(64, 3, 7, 7)})
    # a tensor of the wrong shape is named with its counterpart
    key = "backbone.stage2.1.blocks.0.conv2.depthwise_conv.conv.weight"
    wrong = dict(published) | {key: torch.zeros(48, 1, 3, 3)}
    err = error_of({"state_dict": wrong})
    assert f"'{key}' has shape (48, 1, 3, 3)" in err
    assert "'backbone.stages.1.csp.blocks.0.depthwise.conv.weight' needs (48, 1, 5, 5)" in err
    # a key the network does not have, and one missing
    extra = dict(published) | {"head.gau.w": torch.zeros(33)}  # a relative position bias
    assert "'head.gau.w' maps to 'head.gau.w', which the model does not have" in error_of(
        {"state_dict": extra}
    )
    p6 = dict(published) | {"backbone.stage5.0.conv.weight": torch.zeros(384, 288, 3, 3)}  # CSPNeXt's P6
    assert "'backbone.stage5.0.conv.weight' has no counterpart in RTMPose" in error_of({"state_dict": p6})
    missing = {k: v for k, v in published.items() if k != "head.gau.gamma"}
    assert "the source has nothing for 'head.gau.gamma' (1 tensors missing)" in error_of(
        {"state_dict": missing}
    )
    # a backbone of no published size, a head that fits no input, joints of no published set
    wide = dict(published) | {"backbone.stem.2.conv.weight": torch.zeros(40, 12, 3, 3)}
    assert (
        "40 channels after the stem and (1, 1, 1, 1) blocks per stage: none of RTMPose's sizes"
        in error_of({"state_dict": wide})
    )
    odd = dict(published) | {"head.cls_y.weight": torch.zeros(100, 256)}
    assert "the source's head fits no input" in error_of({"state_dict": odd})
    seven = dict(published) | {"head.final_layer.weight": torch.zeros(7, 384, 7, 7)}
    assert "7 joints: neither COCO's 17 nor MPII's 16" in error_of({"state_dict": seven})
    # a typed size the head contradicts
    assert "but the source's head was built for 96x64" in error_of(
        {"state_dict": published}, "--inputRes", "128"
    )
    # an existing destination is never overwritten
    destination = tmp_path / "exists.pth"
    destination.write_bytes(b"keep")
    assert import_main(["rtmpose", str(tiny_source[0]), str(destination)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"import_weights: error: {destination} exists; choose a new file name (nothing is overwritten)"
    )
    assert destination.read_bytes() == b"keep"
