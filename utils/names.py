"""The registries' names written out, so that --help and a checkpoint's description need no torch
import (tests keep them equal to the registries, in any order)."""

from __future__ import annotations

DATASET_JOINTS = {"synthetic": 16, "MPII": 16, "COCO": 17}
# the dataset registry's names, written out for --help (a test keeps them equal); custom's joints
# come from --jointSpec
DATASETS = (*DATASET_JOINTS, "custom")
# the registry's names, written out so --help needs no torch import (a test keeps them equal)
MODEL_NAMES = (
    "ChainedPredictions, DLCM, DeepPose, HRNet, IEF, PoseAttention, PyraNet, RTMPose, SimpleBaseline, "
    "StackedHourGlass, ViTPose"
)
