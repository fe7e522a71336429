"""The registries' names written out, so that --help and a checkpoint's description need no torch
import (tests keep them equal to the registries, in any order)."""

from __future__ import annotations

DATASET_JOINTS = {"synthetic": 16, "MPII": 16, "COCO": 17}
DATASETS = (*DATASET_JOINTS, "custom")  # custom's joints come from --jointSpec
MODEL_NAMES = (
    "ChainedPredictions, DLCM, DeepPose, HRNet, IEF, PoseAttention, PyraNet, RTMPose, SimpleBaseline, "
    "StackedHourGlass, ViTPose"
)
