"""Watching a run while it trains: TensorBoard events in ``<run>/tb`` and ``curves.png``.

Everything here is written by rank 0 only. tensorboard and matplotlib are imported when a run
first writes, never at import time, so ``main.py --help`` stays free of them (and of torch).

One x-axis for every TensorBoard tag: the global step, batches of training seen so far,
``(epoch - 1) * steps_per_epoch + step``. Per-step scalars sit at their batch, per-epoch ones at
the epoch's last batch (``epoch * steps_per_epoch``). A resumed run purges whatever an
interrupted process logged after the checkpoint it resumes from, so replayed steps never appear
twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from utils.drawing import skeleton_grid

GRID_SAMPLES = 8
CURVES_EVERY_S = 30.0


class TrainingCharts:
    """TensorBoard scalars and images (``tensorboard``) plus ``curves.png`` (always), from rank 0.

    ``enabled`` is False on other ranks, where every method does nothing. A resume (at batch
    ``start_step`` of ``start_epoch``) purges events logged after that point by a process that
    was cut off.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        steps_per_epoch: int,
        main_metric: str,
        start_epoch: int = 1,
        start_step: int = 0,
    ) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.steps_per_epoch, self.main_metric = max(int(steps_per_epoch), 1), main_metric
        self.writer = None
        # curves.png after the first validation, then at most every CURVES_EVERY_S and when the
        # run ends or stops: drawing it costs about a second, more than a short epoch
        self.curves_written_at: float | None = None
        self.curves_behind = False
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # imports tensorboard
            except ImportError:
                print(
                    "note: tensorboard is not installed (pip install -r requirements.txt); "
                    "training without TensorBoard events",
                    file=sys.stderr,
                )
                return
            resumed = start_epoch > 1 or start_step > 0
            purge = self.global_step(start_epoch, start_step) + 1 if resumed else None
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)

    def global_step(self, epoch: int, step: int | None = None) -> int:
        """Batches seen after ``step`` of ``epoch`` (the epoch's end when ``step`` is None)."""
        return (epoch - 1) * self.steps_per_epoch + (self.steps_per_epoch if step is None else step)

    def step_logger(self, epoch: int) -> Callable[[int, float, float, float], None] | None:
        """The ``on_step`` hook for ``engine.train_one_epoch``, or None when nothing is logged."""
        writer = self.writer
        if writer is None:
            return None

        def on_step(step: int, loss: float, pck: float, lr: float) -> None:
            at = self.global_step(epoch, step)
            writer.add_scalar("train_step/loss", loss, at)
            writer.add_scalar("train_step/PCK", pck, at)
            writer.add_scalar("lr", lr, at)

        return on_step

    def log_epoch(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
        """Every metric as ``<split>/<key>`` (``train/loss``, ``val/PCKh``, ``val/AP``, ...)."""
        if self.writer is None:
            return
        at = self.global_step(epoch)
        for key, value in metrics.items():
            self.writer.add_scalar(f"{split}/{key}", float(value), at)
        self.writer.flush()  # visible in TensorBoard now, not at the next 2-minute flush

    def log_predictions(self, epoch: int, dataset: Any, results: dict[str, np.ndarray]) -> None:
        """``val/skeletons``: true (magenta) and predicted (green) skeletons on the first
        validation crops ``engine.predict_all`` kept (``crop_images``, ``crop_truth``, ``crop_preds``:
        no extra forward pass), drawn as ``predictions.png`` is."""
        if self.writer is None or not len(results.get("crop_images", ())):
            return
        kept = [results[key][:GRID_SAMPLES] for key in ("crop_images", "crop_truth", "crop_preds")]
        grid = skeleton_grid(*kept, dataset.joint_spec)
        self.writer.add_image("val/skeletons", grid, self.global_step(epoch), dataformats="HWC")
        self.writer.flush()

    def write_curves(self, now: bool = False) -> Path | None:
        """Rewrite ``curves.png`` from metrics.jsonl (rank 0), unless it was written less than
        CURVES_EVERY_S ago (``now``: whenever there is something new); :meth:`close` catches up."""
        if not self.enabled:
            return None
        recent = (
            self.curves_written_at is not None and time.monotonic() - self.curves_written_at < CURVES_EVERY_S
        )
        if recent and not now:
            self.curves_behind = True
            return None
        if now and not self.curves_behind:
            return None
        self.curves_written_at, self.curves_behind = time.monotonic(), False
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "note: matplotlib is not installed (pip install -r requirements.txt); no curves.png",
                file=sys.stderr,
            )
            self.enabled = False
            return None
        return plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", self.main_metric)

    def close(self) -> None:
        self.write_curves(now=True)
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_curves(metrics_file: Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{split: {metric: {epoch: value}}}`` for train and val; a later record of the same epoch
    and split (an epoch replayed after an interrupted run) replaces the earlier one."""
    curves: dict[str, dict[str, dict[int, float]]] = {"train": {}, "val": {}}
    if not Path(metrics_file).is_file():
        return curves
    for line in Path(metrics_file).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        split = record.get("split")
        if split not in curves:
            continue
        for key, value in record.items():
            if key in ("epoch", "split"):
                continue
            curves[split].setdefault(key, {})[int(record["epoch"])] = (
                math.nan if value is None else float(value)
            )
    return curves


def plot_curves(metrics_file: Path, path: Path, main_metric: str) -> Path:
    """Loss, PCK and (when it is another one) the main metric per epoch, train and val, one
    panel each, as a PNG written atomically (a viewer never sees half a file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = read_curves(metrics_file)
    names = ["loss", "PCK"] + ([main_metric] if main_metric not in ("loss", "PCK") else [])
    figure = Figure(figsize=(4.5 * len(names), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for axis, name in zip(figure.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            series = curves[split].get(name)
            if series:
                epochs = sorted(series)
                axis.plot(epochs, [series[e] for e in epochs], style, markersize=3, label=split)
        axis.set_title(name + (" (main metric)" if name == main_metric else ""))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, format="png")
    os.replace(partial, path)
    return path
