"""-test: score a checkpoint on its validation set with the dataset's official metrics.

    python main.py -test --loadModel exp/<run>/best.pth

Reads top to bottom: the run's objects (build.build_run), the weights, a new run directory, one
validation pass, the metrics. Training validates with the same :func:`validate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from build import RunParts, build_run, data_notes
from checkpoints import make_run_dir, read_weights
from engine import predict_all
from metrics import coco, mpii
from utils.distributed import broadcast_buffers
from utils.logging import RunRecorder, evaluation_line

if TYPE_CHECKING:
    from utils.options import Options


def run(opts: Options) -> int:
    parts = build_run(opts, with_train=False)
    read = read_weights(parts.model, opts)
    for note in (*read.notes, f"evaluating {opts.loadModel} after epoch {read.epoch}"):
        parts.say(note)
    run_dir = make_run_dir(opts, parts.context.is_main)
    recorder = RunRecorder(run_dir, enabled=parts.context.is_main)
    for note in data_notes(parts, opts):
        recorder.log_line(note)
        parts.say(f"note: {note}")
    results = validate(parts, opts.flipTest, opts.progress)
    metrics = score(parts, results, run_dir if parts.context.is_main else None)
    recorder.log_metrics(read.epoch, "test", metrics)
    recorder.log_line(evaluation_line(opts.loadModel, metrics, parts.val_set.main_metric))
    parts.say(format_metrics(metrics, parts.stage_label))
    parts.say(f"run directory: {run_dir}")
    return 0


def validate(
    parts: RunParts,
    flip_test: bool,
    progress_mode: str,
    keep: int = 0,
    should_stop: Callable[[], bool] | None = None,
    model: nn.Module | None = None,
) -> dict[str, np.ndarray] | None:
    """Every rank's predictions for its share of the validation set, with rank 0's weights and
    BatchNorm statistics (see engine.predict_all); None when ``should_stop`` ended it early.
    ``model``: another network than the run's (its moving average), on the same device."""
    model = parts.model if model is None else model
    broadcast_buffers(model, parts.context)
    flip = parts.val_set.joint_spec.flip_permutation() if flip_test else None
    return predict_all(
        model, parts.val_loader, parts.codec, parts.context,
        loss_fn=parts.loss_fn, precision=parts.precision, progress_mode=progress_mode, flip_permutation=flip,
        keep=keep, channels_last=parts.channels_last, should_stop=should_stop,
        all_stages=parts.stage_label is not None,
    )  # fmt: skip


def score(parts: RunParts, results: dict[str, np.ndarray], output_dir: Path | None) -> dict[str, float]:
    """The validation set's metrics of ``results`` (its files into ``output_dir``); for a model
    that declares ``stage_metrics`` (models/registry.py), also the dataset's main metric after
    every stage, ``<metric>_<label><stage>`` (IEF: ``PCKh_iter1`` ... ``PCKh_iter4``), the last
    being the usual one."""
    metrics = parts.val_set.evaluate(results, output_dir)
    main = parts.val_set.main_metric
    if parts.stage_label is None or "stage_preds" not in results or main not in metrics:
        return metrics
    stages = results["stage_preds"].shape[1]
    for stage in range(stages - 1):  # the last stage's metrics are the ones just computed
        alone = {
            **results,
            "preds": results["stage_preds"][:, stage],
            "scores": results["stage_scores"][:, stage],
        }
        metrics[stage_key(main, parts.stage_label, stage + 1)] = parts.val_set.evaluate(alone, None)[main]
    metrics[stage_key(main, parts.stage_label, stages)] = metrics[main]
    return metrics


def stage_key(metric: str, label: str, stage: int) -> str:
    """``PCKh_iter1``: the key of ``metric`` after stage ``stage`` (1-based)."""
    return f"{metric}_{label}{stage}"


def format_metrics(metrics: dict[str, float], stage_label: str | None = None) -> str:
    """The official MPII PCKh table when present, then the other numbers; with ``stage_label``
    the per-stage metrics (see :func:`score`) on one line."""
    lines = []
    if "PCKh" in metrics:
        columns = {name: metrics[f"PCKh_{name}"] for name in mpii.PART_JOINTS}
        columns |= {"Mean": metrics["PCKh"], "Mean@0.1": metrics["PCKh_Mean@0.1"]}
        lines += ["PCKh (official MPII table):", mpii.format_table(columns)]
    if "AP" in metrics:
        lines += [
            "COCO keypoints (official COCOeval):",
            coco.format_table({k: metrics[k] for k in coco.STAT_NAMES}),
        ]
    shown = {*coco.STAT_NAMES} if "AP" in metrics else set()
    staged = [key for key in metrics if stage_label and re.fullmatch(rf"\w+_{stage_label}\d+", key)]
    if staged:
        per_stage = ", ".join(f"{key.rsplit('_', 1)[1]} {metrics[key]:.4g}" for key in staged)
        lines.append(f"{staged[0].rsplit('_', 1)[0]} per {stage_label}: {per_stage}")
        shown |= set(staged)
    lines += [
        f"{key}: {value:.4g}"
        for key, value in metrics.items()
        if not key.startswith("PCKh") and key not in shown
    ]
    return "\n".join(lines)
