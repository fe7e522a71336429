"""Progress display and run records (log.txt, metrics.jsonl)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from progress.bar import Bar


class EpochProgress:
    """A live ``progress`` bar with ETA, running loss and metric on a terminal; on anything else
    (CI, log files) a plain line at every tenth of the epoch, so logs stay readable."""

    def __init__(
        self, title: str, total: int, mode: str = "auto", stream: TextIO | None = None, done: int = 0
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode, self.title, self.total = mode, title, max(total, 1)
        self.start, self.count, self._next_line = time.monotonic(), done, 0.1
        self.bar = (
            Bar(title, max=self.total, file=self.stream, suffix="%(index)d/%(max)d")
            if mode == "bar"
            else None
        )

    def update(self, **values: float) -> None:
        self.count += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.count * (self.total - self.count)
        shown = " ".join(f"{key} {value:.4g}" for key, value in values.items())
        if self.bar is not None:
            self.bar.suffix = f"%(index)d/%(max)d | {elapsed:.0f}s ETA {eta:.0f}s | {shown}"
            self.bar.next()
        elif self.mode == "lines" and (
            self.count / self.total >= self._next_line or self.count == self.total
        ):
            print(
                f"{self.title} {self.count}/{self.total} {elapsed:.0f}s ETA {eta:.0f}s {shown}",
                file=self.stream,
            )
            self.stream.flush()
            while self._next_line <= self.count / self.total:
                self._next_line += 0.1

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()


def notice_start(stream: TextIO | None = None) -> str:
    """What a notice printed from a signal handler starts with: a newline on a terminal, where
    the echoed ^C or a progress bar holds the line; nothing in a log or pipe (no blank line)."""
    return "\n" if (stream or sys.stderr).isatty() else ""


def evaluation_line(checkpoint: str | Path, metrics: dict[str, float], main_metric: str) -> str:
    """``log.txt``'s line for a ``-test`` run: the checkpoint (absolute) and the metrics summary,
    written as an epoch line writes them, e.g. ``test /runs/a/best.pth: PCKh 87.51 | loss 0.000412 |
    PCK 0.91``."""
    shown = [main_metric, *(key for key in ("loss", "PCK") if key != main_metric)]
    parts = [f"{key} {metrics[key]:.6f}" if key == "loss" else f"{key} {metrics[key]:.2f}"
             for key in shown if key in metrics]  # fmt: skip
    return f"test {Path(checkpoint).resolve()}: {' | '.join(parts)}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunRecorder:
    """Appends one human-readable line per epoch to log.txt and one JSON object per evaluation to
    metrics.jsonl. Does nothing on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled

    def rewind(self, lengths: dict[str, int] | None) -> None:
        """Cut each record file back to its length in ``lengths`` (what a checkpoint noted when it
        was written): the records of work done after it, which the resumed run does again, are
        then written once, whatever attempts failed or were stopped in between."""
        if not self.enabled or not lengths:
            return
        for name, length in lengths.items():
            path = self.run_dir / name
            if path.is_file() and path.stat().st_size > length:
                with open(path, "r+b") as stream:
                    stream.truncate(length)

    def log_line(self, line: str) -> None:
        if self.enabled:
            with open(self.run_dir / "log.txt", "a") as stream:
                stream.write(line.rstrip("\n") + "\n")

    def log_metrics(self, epoch: int, split: str, metrics: dict[str, float]) -> None:
        if self.enabled:
            record = {"epoch": epoch, "split": split, **{k: _json_safe(v) for k, v in metrics.items()}}
            with open(self.run_dir / "metrics.jsonl", "a") as stream:
                stream.write(json.dumps(record) + "\n")
