"""Training: a new run, a resume or a fine-tune.

    python main.py -DataConfig conf/datasets/mpii.defconf -ModelConfig conf/models/StackedHourGlass.defconf
    python main.py --loadModel exp/<run>/last.pth                      # resume
    torchrun --nproc_per_node 8 main.py ...                            # DistributedDataParallel

``run(opts)`` reads top to bottom: the run's objects (build.build_run), optimizer, checkpoint,
run directory, then the epochs (``engine.train_one_epoch``, then evaluate.validate), and the
summary. :class:`EpochLoop` holds what changes from epoch to epoch.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from build import RunParts, build_ema, build_optimizer, build_run, data_notes
from checkpoints import Resumed, TrainingCheckpoint, make_run_dir
from engine import EpochState, NonFiniteLossError, StepRequests, train_one_epoch
from evaluate import format_metrics, score, validate
from recipe import ExpMomentumEMA, StepwiseLR
from utils.distributed import DistributedContext, PeerLostError, is_peer_failure, lost_ranks
from utils.drawing import save_skeletons
from utils.logging import RunRecorder, notice_start
from utils.training_charts import TrainingCharts

if TYPE_CHECKING:
    from utils.options import Options

# validation crops in predictions.png, kept from the last validation
PICTURE_CROPS = 8


def run(opts: Options) -> int:
    """Train (a new run, a resume or a fine-tune) and report; the exit status."""
    parts = build_run(opts, with_train=True)
    optimizer, scheduler, scaler = build_optimizer(opts, parts.model, parts.context.device)
    ema = build_ema(opts, parts.model)
    checkpoint = TrainingCheckpoint(parts.model, optimizer, scheduler, scaler, opts, parts.context, ema)
    resumed = checkpoint.restore() if opts.loadModel else Resumed()
    for note in resumed.notes:
        parts.say(note)

    run_dir = make_run_dir(opts, parts.context.is_main)
    recorder = RunRecorder(run_dir, enabled=parts.context.is_main)
    recorder.rewind(resumed.records)  # what an earlier attempt logged after this checkpoint is done again
    if getattr(opts, "restart_note", None):
        recorder.log_line(opts.restart_note)
        parts.say(f"note: {opts.restart_note}")
    if opts.resume_changes:
        changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in opts.resume_changes.items())
        recorder.log_line(f"resumed from {opts.loadModel} with {changed}")
    for note in data_notes(parts, opts):
        recorder.log_line(note)
        parts.say(f"note: {note}")
    for note in resumed.logged:
        recorder.log_line(note)
    if resumed.start_epoch > opts.nEpochs and resumed.pending is None and resumed.partial is None:
        done = (
            f"nothing to train: the run already trained its {opts.nEpochs} epochs (--nEpochs {opts.nEpochs}); "
            f"--nEpochs {opts.nEpochs + 1} or more continues it"
        )
        recorder.log_line(done)
        parts.say(f"note: {done}")
    parts.say(f"run directory: {run_dir}")

    loop = EpochLoop(parts, opts, optimizer, scheduler, scaler, checkpoint, run_dir, recorder, resumed, ema)
    try:
        status = loop.run(resumed)
    except Exception as error:
        if not is_peer_failure(error):
            raise
        raise PeerLostError(peer_lost_message(parts.context, loop.last)) from None
    if status == 0 and parts.context.is_main:
        loop.report()
    return status


class EpochLoop:
    """The epochs of one training run: train, checkpoint, validate, record; a stop request ends
    it cleanly at the next optimizer step or validation batch."""

    def __init__(
        self,
        parts: RunParts,
        opts: Options,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | StepwiseLR,
        scaler: torch.amp.GradScaler | None,
        checkpoint: TrainingCheckpoint,
        run_dir: Path,
        recorder: RunRecorder,
        resumed: Resumed,
        ema: ExpMomentumEMA | None = None,
    ) -> None:
        self.parts, self.opts, self.run_dir, self.recorder = parts, opts, run_dir, recorder
        # validation, best.pth and the last metrics are the average's when there is one (as MMPose)
        self.ema = ema
        self.optimizer, self.scheduler, self.scaler, self.checkpoint = (
            optimizer,
            scheduler,
            scaler,
            checkpoint,
        )
        self.best = resumed.best
        self.metrics: dict[str, float] = {}  # the last validation's
        self.pictured: dict[str, np.ndarray] = {}  # the last validation's first crops and predictions
        self.main_metric = parts.val_set.main_metric
        context = parts.context
        # validation runs `model` itself, never the wrapper (engine.predict_all says why); checkpoints
        # always hold `model`'s own names
        net = DistributedDataParallel(parts.model) if context.is_distributed else parts.model
        # compiled for training only: validation runs the eager module (eval-mode BatchNorm would
        # otherwise cost a second compilation)
        self.train_net = torch.compile(net) if opts.compile else net
        self.compiled = False  # the first compiled step has run (and its time been said)
        self.charts = TrainingCharts(
            run_dir, enabled=context.is_main, tensorboard=opts.tensorboard,
            steps_per_epoch=len(parts.train_loader), main_metric=self.main_metric,
            start_epoch=resumed.start_epoch, start_step=resumed.partial.step if resumed.partial else 0,
        )  # fmt: skip
        self.stop = StopRequest(context.is_main)
        self.saved_at = time.monotonic()
        self.requests = StepRequests(
            stop=self.stop.requested,
            # every rank takes part in the save, or none: the flag is agreed in the step's collective
            save_due=lambda: (
                opts.saveEveryMinutes > 0 and time.monotonic() - self.saved_at >= 60 * opts.saveEveryMinutes
            ),
            save=self.save_mid_epoch,
        )

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pth"

    def run(self, resumed: Resumed) -> int:
        """Every epoch still to do; 0, or the shell's status for the signal that stopped it."""
        if resumed.pending is not None:  # the run stopped while validating this epoch: validate it first
            pending = resumed.pending
            epoch = int(pending["epoch"])
            if not self.validate_epoch(epoch, pending["train"], float(pending["seconds"])):
                return self.exit(f"the validation of epoch {epoch}")
            self.save_interval_model(epoch)
        partial = resumed.partial
        for epoch in range(resumed.start_epoch, self.opts.nEpochs + 1):
            started = time.monotonic()
            state = self.train_epoch(epoch, partial)
            partial = None
            if not state.complete:
                self.checkpoint.save(self.last, epoch - 1, self.best, partial=state)
                return self.exit(f"epoch {epoch}, batch {state.step}")
            train_metrics = state.metrics(self.parts.context)
            self.scheduler.step()
            self.recorder.log_metrics(epoch, "train", train_metrics)
            self.charts.log_epoch(epoch, "train", train_metrics)
            seconds = time.monotonic() - started
            validating = epoch % self.opts.valInterval == 0 or epoch == self.opts.nEpochs
            self.stop.doing = f"finishing epoch {epoch}'s checkpoint, then stopping"
            # written before validation, so a stop (or torchrun's kill 30 s after it) while
            # validating keeps the epoch; the resumed run validates it first
            waiting = {"epoch": epoch, "train": train_metrics, "seconds": seconds} if validating else None
            if not validating:  # logged before the checkpoint, which notes the records' length
                self.log_epoch_line(epoch, train_metrics, seconds, None)
            self.checkpoint.save(self.last, epoch, self.best, pending_validation=waiting)
            if validating and not self.validate_epoch(epoch, train_metrics, seconds):
                return self.exit(f"the validation of epoch {epoch}")
            self.saved_at = time.monotonic()
            self.save_interval_model(epoch)
            if self.stop.signal is not None and epoch < self.opts.nEpochs:
                return self.exit(f"the end of epoch {epoch}")
        self.charts.close()
        self.stop.uninstall()
        return 0

    def save_interval_model(self, epoch: int) -> None:
        """model_<epoch>.pth every --saveInterval epochs, once the epoch is validated."""
        if epoch % self.opts.saveInterval == 0:
            self.checkpoint.save(self.run_dir / f"model_{epoch}.pth", epoch, self.best)

    def train_epoch(self, epoch: int, partial: EpochState | None) -> EpochState:
        parts, opts = self.parts, self.opts
        loader = parts.train_loader
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip = partial.step * opts.data_loader_size if partial else 0
        parts.train_set.set_epoch(epoch)
        if hasattr(parts.model, "set_epoch"):  # a schedule over epochs (IEF's; models/registry.py)
            parts.model.set_epoch(epoch)
        self.stop.doing = "stopping after this training step"
        on_step = self.charts.step_logger(epoch)
        if opts.compile and not self.compiled:
            on_step = self._timing_compilation(on_step)
        try:
            return train_one_epoch(
                self.train_net, parts.loss_fn, loader, self.optimizer, parts.codec, parts.context, epoch,
                accumulation=opts.mini_batch_count, precision=parts.precision, scaler=self.scaler,
                progress_mode=opts.progress, on_step=on_step, resume_from=partial,
                requests=self.requests, channels_last=parts.channels_last, with_target=parts.with_target,
                set_lr=self.scheduler.before_step if isinstance(self.scheduler, StepwiseLR) else None,
                after_step=self.ema.update if self.ema is not None else None, grad_clip=opts.gradClip,
            )  # fmt: skip
        except NonFiniteLossError as error:
            self.charts.close()
            kept = (
                f"the last good checkpoint is kept: {self.last}"
                if self.last.is_file()
                else "no checkpoint was written"
            )
            raise NonFiniteLossError(f"{error}; {kept}") from None

    def _timing_compilation(self, on_step: Callable[[int, float, float, float], None]) -> Callable[..., None]:
        """``on_step`` that first says how long the compiling first step took: torch.compile works
        during the first forward and backward, minutes on a CPU, with nothing else to show for it."""
        self.parts.say(
            "compiling the model for training (--compile 1): the first step compiles it, minutes on a CPU"
        )
        started = time.monotonic()

        def timed(*args: float) -> None:
            if not self.compiled:
                self.compiled = True
                self.parts.say(f"compiled: the first training step took {time.monotonic() - started:.1f} s")
            on_step(*args)

        return timed

    def save_mid_epoch(self, state: EpochState) -> None:
        self.checkpoint.save(self.last, state.epoch - 1, self.best, partial=state)
        self.saved_at = time.monotonic()

    def validate_epoch(self, epoch: int, train_metrics: dict[str, float], seconds: float) -> bool:
        """Validate after ``epoch`` (whose checkpoint is already written), record the metrics,
        update best.pth and the epoch's line; False when a stop request ended validation."""
        parts = self.parts
        self.stop.doing = f"stopping this validation (epoch {epoch}'s checkpoint is already saved)"
        started = time.monotonic()
        keep = PICTURE_CROPS if parts.context.is_main else 0
        results = validate(
            parts, self.opts.flipTest, self.opts.progress, keep, should_stop=self.stop.requested,
            model=self.ema.module if self.ema is not None else None,
        )  # fmt: skip
        if results is None:
            return False
        kept = ("crop_images", "crop_truth", "crop_preds")
        self.pictured = {key: results[key] for key in kept if key in results}
        self.metrics = score(parts, results, None)
        self.charts.log_predictions(epoch, parts.val_set, results)
        self.recorder.log_metrics(epoch, "val", self.metrics)
        self.charts.log_epoch(epoch, "val", self.metrics)
        self.charts.write_curves()
        if self.metrics[self.main_metric] > self.best:
            self.best = self.metrics[self.main_metric]
            self.checkpoint.save(self.run_dir / "best.pth", epoch, self.best)
        # the epoch's line first: the checkpoint notes the records' length, which a resume rewinds to
        self.log_epoch_line(epoch, train_metrics, seconds + time.monotonic() - started, self.metrics)
        self.checkpoint.save(self.last, epoch, self.best)  # validated: the new best travels with it
        return True

    def log_epoch_line(
        self,
        epoch: int,
        train_metrics: dict[str, float],
        seconds: float,
        val_metrics: dict[str, float] | None,
    ) -> None:
        line = f"epoch {epoch}/{self.opts.nEpochs} train loss {train_metrics['loss']:.6f} PCK {train_metrics['PCK']:.2f}"
        if val_metrics is not None:
            loss = f" loss {val_metrics['loss']:.6f}" if "loss" in val_metrics else ""
            line += f" | val{loss} {self.main_metric} {val_metrics[self.main_metric]:.2f}"
        line += f" | lr {self.optimizer.param_groups[0]['lr']:.3g} | {seconds:.0f}s"
        self.recorder.log_line(line)
        self.parts.say(line)

    def exit(self, where: str) -> int:
        self.charts.close()
        return self.stop.exit(self.last, where, self.parts.say, self.parts.context)

    def report(self) -> None:
        """The run directory, the checkpoints, the last validation's metrics and a picture of its
        predictions (no second forward pass)."""
        say, run_dir = self.parts.say, self.run_dir
        picture = None
        if self.pictured:
            picture = save_skeletons(
                self.pictured["crop_images"], self.pictured["crop_truth"], self.pictured["crop_preds"],
                self.parts.val_set.joint_spec, run_dir / "predictions.png",
            )  # fmt: skip
        say(f"run directory: {run_dir}")
        say(f"checkpoint: {self.last} (best {self.main_metric} {self.best:.2f}: {run_dir / 'best.pth'})")
        if self.metrics:
            say(format_metrics(self.metrics, self.parts.stage_label))
        if picture is not None:
            say(f"predicted skeletons: {picture}")
        box_file = self.parts.val_set.write_examples(run_dir / "examples")
        if box_file is not None:
            say(
                f"pictures to try it on: {box_file.parent}; python main.py -predict {box_file.parent} "
                f"--bboxFile {box_file} --loadModel {run_dir / 'best.pth'}"
            )


def peer_lost_message(context: DistributedContext, last: Path) -> str:
    """Rank 0's one line when another rank died mid-run: which one, the checkpoint that is intact,
    the command that resumes; empty on the other ranks (rank 0 speaks for the run)."""
    if not context.is_main:
        return ""
    lost = lost_ranks(context)
    who = (
        f"rank {', '.join(map(str, lost))} of {context.world_size}"
        if lost
        else f"another of the {context.world_size} processes"
    )
    if last.is_file():
        from utils.checkpoint import load_checkpoint

        state = load_checkpoint(last, mmap=True)
        middle = state.get("mid_epoch")
        when = (
            f"in epoch {middle['epoch']} after batch {middle['step']}"
            if middle
            else f"after epoch {state['epoch']}"
        )
        kept = f"the newest checkpoint is intact: {last} ({when}); resume with: {context.launch_command} --loadModel {last}"
    else:
        kept = "no checkpoint was written yet; run the same command again (with --resume auto it starts over there)"
    return f"{who} stopped (died or was killed) while this one waited for it; {kept}"


class StopRequest:
    """SIGINT / SIGTERM ask the run to stop cleanly: training after the current optimizer step,
    validation at its next batch (the epoch's checkpoint is written before it), each with a
    resumable checkpoint; a second SIGINT stops at once (checkpoints are written atomically, so
    the newest complete one stays usable). ``doing`` is what the loop is finishing, for the one
    line rank 0 prints."""

    def __init__(self, announce: bool = True) -> None:
        self.signal: int | None = None
        self.announce = announce
        self.doing = "stopping after this training step"
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self.previous:
            signal.signal(sig, self._handle)

    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _frame) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:
                if self.announce:
                    print(
                        f"{notice_start()}second interrupt: stopping now; the newest complete checkpoint is kept",
                        file=sys.stderr,
                    )
                os._exit(130)
            return  # torchrun follows a Ctrl-C with SIGTERM: the same request
        self.signal = signum
        if self.announce:
            print(f"{notice_start()}{signal.Signals(signum).name}: {self.doing}", file=sys.stderr)

    def uninstall(self) -> None:
        """The signal handlers as they were before."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def exit(self, checkpoint: Path, where: str, say, context: DistributedContext) -> int:
        """Say where the run stopped and how to resume it (with the launcher it was started by);
        the shell's status for the signal."""
        self.uninstall()
        say(f"interrupted at {where}; resume with: {context.launch_command} --loadModel {checkpoint}")
        return 128 + int(self.signal)
