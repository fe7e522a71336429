"""Export a trained model to ONNX: ``python main.py -export model.onnx --loadModel CKPT``.

The ONNX model maps ``image`` (N, 3, H, W) float32, an input crop normalised as the datasets do
(RGB in 0-1, minus the ImageNet mean, over its std), to the network's last stage: ``heatmaps``
(N, K, h, w) for a heatmap model and for DLCM (its last stage, the joints; the composite parts'
maps of the earlier stages are not exported), ``coordinates`` (N, K, 2) normalised to the crop for
a regressor, ``simcc_x`` (N, K, Wx) and ``simcc_y`` (N, K, Wy) for a SimCC model (the codec's
output names).
The batch dimension is dynamic; the crop size is fixed to the checkpoint's. Beside it,
``<name>.json`` holds what a deployer needs to feed it and decode its output: input size,
normalisation, joints, flip pairs, skeleton and the codec's decoding rule.

Exporter: the TorchScript-based one (``dynamo=False``), at opset 17. On torch 2.14.1 both
exporters export all five models with a dynamic batch (after DeepPose builds roi_align's boxes
without a Python loop over the batch) and match PyTorch to about 1e-6. The TorchScript one is
chosen because it needs no extra package (the dynamo exporter needs ``onnxscript`` and
``onnx_ir``) and is 4 to 8 times faster (a tiny PyraNet: about 8 s against about 40 s on 2 cores).
It warns that it is deprecated; torch is pinned in requirements.txt. Its tracer also warns that
spatial sizes become constants, which is right: an export is for the checkpoint's input size.
Opset 17: roi_align with ``aligned=True`` (DeepPose's refinement crops) needs at least 16, and 17
is widely supported by runtimes (ONNX Runtime >= 1.11, TensorRT >= 8.5).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from build import TrainedModel, load_trained
from datasets.base import IMAGENET_MEAN, IMAGENET_STD
from datasets.codecs import Codec
from utils.options import fail

if TYPE_CHECKING:
    from utils.options import Options

OPSET = 17
INPUT_NAME = "image"


class LastStage(nn.Module):
    """The model's last stage output only (every model returns a list of stage outputs), as the
    codec's outputs (one tensor; a SimCC model's x and y vectors apart). A model that can give
    those outputs directly, cheaper than splitting its stage output, has ``exported_outputs``."""

    def __init__(self, model: nn.Module, codec: Codec) -> None:
        super().__init__()
        self.model, self.codec = model, codec

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if hasattr(self.model, "exported_outputs"):
            return self.model.exported_outputs(image)
        return self.codec.split_outputs(self.model(image)[-1])


def export_onnx(
    module: nn.Module, input_size: tuple[int, int], output_names: tuple[str, ...], path: Path
) -> None:
    """``module`` (image (N, 3, h, w) -> ``output_names``' tensors) to ONNX at ``path``: the
    TorchScript exporter at ``OPSET``, the crop size ``input_size`` (w, h) fixed, the batch dynamic.
    What -export writes, and what benchmarks/evaluation_inference.py exports the authors' networks
    with, so both graphs come from the same exporter."""
    width, height = input_size
    example = torch.zeros(2, 3, height, width)  # batch 2, so no size-1 axis gets special-cased
    names = list(output_names)
    with warnings.catch_warnings():
        # the deprecation notice of the TorchScript exporter, and the tracer's notes that spatial
        # sizes become constants (they are: the crop size is part of the export)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # the same, in PyraNet
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in names}},
            )


def decoding_of(trained: TrainedModel) -> dict[str, Any]:
    """How to turn the ONNX output into joints in input-crop pixels (pixel centres at integers):
    the codec's own description of its decoding, and how a person box becomes the crop."""
    codec = trained.codec
    crop = codec.describe_crop()
    decoding = codec.describe_decoding()
    flip_test = decoding.pop("flip_test")
    return {**decoding, "crop": crop, "flip_test": flip_test}  # the notes' order: crop before flip


def describe_export(trained: TrainedModel, opts: Options, onnx_path: Path) -> dict[str, Any]:
    width, height = trained.input_size
    codec = trained.codec
    joints = trained.joint_spec
    example = torch.zeros(1, *codec.output_shape(joints.num_joints))
    outputs = [
        {"name": name, "shape": ["batch", *tensor.shape[1:]], "dtype": "float32"}
        for name, tensor in zip(codec.output_names, codec.split_outputs(example), strict=True)
    ]
    return {
        "model": opts.model,
        "checkpoint": str(Path(opts.loadModel).resolve()),
        "onnx": onnx_path.name,
        "opset": OPSET,
        "target_type": codec.target_type,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, height, width],
            "dtype": "float32",
            "size": [width, height],  # (width, height)
            "channel_order": "RGB",
            "mean": [round(float(v), 6) for v in IMAGENET_MEAN],
            "std": [round(float(v), 6) for v in IMAGENET_STD],
            "normalisation": "(pixel / 255 - mean) / std per channel, RGB order, NCHW layout",
        },
        # one output as before; a codec with several (SimCC's x and y) lists them
        **({"output": outputs[0]} if len(outputs) == 1 else {"outputs": outputs}),
        "joints": {
            "names": list(joints.names),
            "flip_pairs": [list(pair) for pair in joints.flip_pairs],
            "skeleton": [list(limb) for limb in joints.skeleton],
        },
        "decoding": decoding_of(trained),
    }


def run(opts: Options) -> int:
    onnx_path = Path(opts.export)
    if not onnx_path.parent.is_dir():
        fail(f"-export: directory {onnx_path.parent} does not exist (create it, or name another path)")
    json_path = onnx_path.with_suffix(".json")
    if json_path == onnx_path:
        fail(f"-export: {onnx_path} would be overwritten by its own description; name it FILE.onnx")

    trained = load_trained(opts, "cpu")
    width, height = trained.input_size
    export_onnx(
        LastStage(trained.model, trained.codec), (width, height), trained.codec.output_names, onnx_path
    )
    import onnx

    onnx.checker.check_model(str(onnx_path), full_check=True)  # a well-formed graph, shapes inferred
    with open(json_path, "w", encoding="utf-8") as stream:
        json.dump(describe_export(trained, opts, onnx_path), stream, indent=2)
        stream.write("\n")
    print(
        f"exported {opts.model} to {onnx_path.resolve()} (opset {OPSET}, dynamic batch); deployment notes: "
        f"{json_path.resolve()}"
    )
    return 0
