"""A trained model ready to use: rebuilt from a checkpoint's stored options, weights loaded.

``parse_options`` already starts from the checkpoint's config when ``--loadModel`` is given, so
the options describe the network the weights belong to; ``load_trained`` builds that network,
its codec and its joint set. -test, -predict and -export all start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from checkpoints import load_weights
from datasets.codecs import Codec, make_codec
from datasets.registry import get_dataset_entry, joint_spec_for, list_datasets
from datasets.skeletons import JointSpec
from models import build_model

if TYPE_CHECKING:
    from utils.options import Options

# the registered datasets' own joint sets; custom's comes from its spec, so ask joint_spec_of(opts)
JOINT_SPECS = {
    name: spec for name in list_datasets() if (spec := get_dataset_entry(name).joint_spec) is not None
}


def frame_sizes(opts: Options) -> tuple[tuple[int, int], tuple[int, int]]:
    """(input (w, h), heatmap (w, h)); COCO's 256x192 crops use aspectRatio 0.75."""
    input_size = (round(opts.inputRes * opts.aspectRatio), opts.inputRes)
    heatmap_size = (round(opts.outputRes * opts.aspectRatio), opts.outputRes)
    return input_size, heatmap_size


def joint_spec_of(opts: Options) -> JointSpec:
    """The run's joint set: its dataset's, or for custom the spec ``jointSpec`` holds (the JSON a
    run records, so a checkpoint's options are enough)."""
    return joint_spec_for(opts.dataset, getattr(opts, "jointSpec", None))


@dataclass
class TrainedModel:
    model: nn.Module  # eval mode, on ``device``, weights loaded
    codec: Codec
    input_size: tuple[int, int]  # (width, height)
    joint_spec: JointSpec
    device: torch.device


def load_trained(opts: Options, device: torch.device | str = "cpu") -> TrainedModel:
    """The network ``--loadModel`` holds, in eval mode on ``device``, with its codec and joints."""
    input_size, heatmap_size = frame_sizes(opts)
    model = build_model(opts.model, **vars(opts))
    load_weights(model, opts)
    codec = make_codec(
        opts.target_type, input_size, heatmap_size, opts.hmGauss, opts.coordConvention, opts.postProcess
    )
    device = torch.device(device)
    return TrainedModel(model.to(device).eval(), codec, input_size, joint_spec_of(opts), device)
