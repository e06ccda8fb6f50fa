"""One training run's lifecycle: built from a config, run epoch by epoch, finished into a complete run directory.

`TrainingRun.setup` builds data, model and optimiser (no file written, so bad input leaves
nothing behind); `execute` writes config, env, the start event and data_meta.json, runs the
epochs (the step is `train_epoch` in epoch.py; what the run does at its sync points, the
listeners of its one `SyncPoints` hook, in sync_points.py), and `_finish` leaves model.pt, the
end and test events, model_info.json and training_history.json. Then the caller's `finish(run_dir)`, if any (the run
report), and the one summary line. `fit()` (loop.py) decides the run directory, the process's
place under torchrun and where printed output goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..config import Config, config_origin
from ..data import make_loaders
from ..data.describe import describe_dataset
from ..errors import CheckpointError, NonFiniteLossError, ReportError, describe_error
from ..devices import resolve_device
from ..layout import (BEST_CHECKPOINT, DATA_META_FILE, EVENTS_FILE, HISTORY_FILE, LAST_CHECKPOINT, MODEL_FILE,
                      MODEL_INFO_FILE, TELEMETRY_FILE)
from ..record.writer import RunWriter
from ..record.env import collect_env, describe_data_file
from ..record.launch import describe_launch
from ..record.schema import config_hash, scalar_columns
from ..atomic_files import atomic_write_text
from ..models import build_model, count_parameters
from ..monitoring import FigureMonitor
from .artifacts import TrainingHistory, write_model_info
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .distributed import DistributedContext, NonWritingRunWriter
from .early_stopping import EarlyStopping
from .epoch import EpochStats, StopRequested, confusion_matrix, evaluate, train_epoch
from .optim import Precision, build_optimizer, build_scheduler
from .output_capture import CapturedOutput
from .resources import RunResources
from .signals import RunStopSignals, SignalStop, stop_signals_reach
from .sync_points import DashboardView, MirroredStepRows, ProgressLines, StepRows, SyncPoints

__all__ = ["TrainingRun", "RunResult", "seed_everything"]

# Rows of the fixed validation batch the recon and codebook figures probe the model with.
_PROBE_ROWS = 256


@dataclass
class RunResult:
    """What `fit` returns; everything in it is also in the run directory."""

    run_dir: Path
    run_id: str
    status: str
    stop_reason: str
    best_epoch: Optional[int]
    best_val_loss: Optional[float]
    test_metrics: dict = field(default_factory=dict)
    epochs_completed: int = 0
    stop_signal: Optional[int] = None  # the signal that stopped the run (the CLI exits 128 + it)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingRun:
    """One run's state: built in `setup` (no files written), run in `execute`."""

    def __init__(self, cfg: Config, resume_state: Optional[dict], ddp: DistributedContext):
        self.cfg = cfg
        self.resume_state = resume_state
        self.ddp = ddp

    def setup(self) -> None:
        cfg, ddp = self.cfg, self.ddp
        self.device = ddp.device_for(resolve_device(cfg.trainer.device))
        seed_everything(cfg.trainer.seed)
        self.loaders, self.meta = make_loaders(cfg.data, device=self.device, seed=cfg.trainer.seed,
                                               shard=ddp.rank, num_shards=ddp.world_size)
        self.model = build_model(cfg.model, self.meta).to(self.device)
        self.names = tuple(self.model.scalar_names)
        self.params = count_parameters(self.model)
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters(), self.device)
        self.scheduler = build_scheduler(cfg.optim, self.optimizer)
        self.precision = Precision(cfg.trainer.precision, self.device)
        self.early = EarlyStopping(cfg.trainer.early_stopping_patience, cfg.trainer.early_stopping_min_delta)
        self.history = TrainingHistory()
        self.start_epoch, self.global_step, self.samples_total, self.elapsed_before = 0, 0, 0, 0.0
        self.best_epoch: Optional[int] = None
        self.best_val_loss = math.inf
        self.energy_before_j = 0.0
        self.resources: Optional[RunResources] = None
        self.monitor: Optional[FigureMonitor] = None
        self.tracker = None  # the GuardedMirror of tracking.backends (rank 0), or None: no tracking imported
        self.profile = None  # trainer.profile's ProfileWindow (rank 0), or None: no profiler built, none imported
        if cfg.tracking.backends and ddp.is_main:  # a missing package fails here, before any file is written
            from ..tracking import check_available

            check_available(cfg.tracking.backends)
        if self.resume_state is not None:
            self._restore(self.resume_state)
        # What the training step calls: DDP around the model under torchrun, else the model itself.
        # Evaluation, checkpoints and model.pt use self.model (no DDP forward, no "module." prefix).
        self.step_model = ddp.wrap(self.model, self.device)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.early.load_state_dict(state["early_stopping"])
        self.history = TrainingHistory.from_dict(state["history"])
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["step"])
        self.samples_total = int(state["samples"])
        self.elapsed_before = float(state["elapsed_s"])
        self.best_epoch = state["best_epoch"]
        self.best_val_loss = float(state["best_val_loss"])
        self.energy_before_j = float(state.get("energy_j", 0.0))
        # Last: everything above may have drawn random numbers while being built.
        restore_rng_state(state["rng"])

    def execute(self, run_dir: Path, run_id: str, capture: CapturedOutput, dashboard: Union[str, object, None],
                finish: Optional[Callable[[Path], None]] = None) -> RunResult:
        """Run the epochs and leave the run directory; `finish(run_dir)` once it is complete (see `fit`)."""
        cfg = self.cfg
        self.run_dir, self.run_id, self.finish = run_dir, run_id, finish
        from ..live import make_dashboard

        self.capture = capture
        self.sync: Optional[SyncPoints] = None
        self.signals = RunStopSignals(on_stop=self._request_stop, allow_immediate=not self.ddp.enabled)
        self._monitor_warnings_recorded = 0
        # A dashboard that switches itself off after an error hands the console back.
        self.dashboard = make_dashboard(dashboard, update_interval_ms=cfg.logging.update_interval_ms,
                                        on_disable=lambda: setattr(capture, "echo", True))
        try:
            if self.dashboard is not None and self.dashboard.owns_console:
                capture.echo = False  # the lines still reach logs/stdout.log
            with stop_signals_reach(self.signals):
                return self._execute(run_dir, run_id)
        finally:
            self._close_dashboard()

    def _request_stop(self) -> None:
        """A stop signal's first effect: the step stops at the next sync point (set before the loop starts too)."""
        if self.sync is not None:
            self.sync.request_stop()

    def _close_dashboard(self) -> None:
        """Restore the console (terminal screen, echo of printed lines); safe to call twice."""
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
        self.capture.echo = True

    def _execute(self, run_dir: Path, run_id: str) -> RunResult:
        cfg, ddp = self.cfg, self.ddp
        started = self._origin = time.time() - self.elapsed_before
        writer = (RunWriter(run_dir, run_id, scalar_columns(self.names), start_time=started) if ddp.is_main
                  else NonWritingRunWriter())
        with writer:
            config_dict = cfg.to_dict()
            writer.write_config(config_dict)
            launch = describe_launch(config_origin(cfg))  # argv, config source, overrides, executor, job ids
            writer.write_env({**collect_env(), "world_size": ddp.world_size, "launch": launch})
            data_file = describe_data_file(cfg.data.path)
            writer.event(
                "on_start",
                config_hash=config_hash(config_dict),
                params=self.params,
                pid=os.getpid(),
                host=socket.gethostname(),
                resumed_from_epoch=self.start_epoch if self.resume_state is not None else None,
                scalar_columns=list(scalar_columns(self.names)),
                device=str(self.device),
                data_mode=self.loaders["train"].mode,
                split_sizes=self.meta.split_sizes,
                world_size=ddp.world_size,
                data_file=data_file,
                launch=launch,
            )
            if ddp.is_main:  # before the first epoch: a run that crashes has it too
                self._write_data_meta(writer, data_file)
            self._print_header()
            if self.dashboard is not None:
                self.dashboard.on_start(self._dashboard_info())
            # Rank 0 samples every GPU of its node (one column set each); other ranks sample nothing.
            telemetry_cfg = cfg.telemetry if ddp.is_main else dataclasses.replace(cfg.telemetry, enabled=False)
            telemetry_before = _file_size(run_dir / TELEMETRY_FILE)  # a resumed run's rows already mirrored
            self.resources = RunResources(telemetry_cfg, self.device, run_dir / TELEMETRY_FILE, started,
                                          energy_before_j=self.energy_before_j,
                                          local_devices=ddp.local_world_size if ddp.enabled else 1)
            if cfg.tracking.backends and ddp.is_main:
                self.tracker = self._open_tracker(config_dict, started, telemetry_before)
            self.monitor = self._figure_monitor() if ddp.is_main else None
            self.sync = self._sync_points()
            try:
                status, reason, error = self._fit(writer)
            finally:
                self.signals.phase = "finishing"
                if self.profile is not None:  # a window the run ended inside of: what was traced is written
                    self.profile.close()
                telemetry = self.resources.stop()
            total_time = time.time() - started
            try:  # the trackers close after the report (it goes up as an artifact), or on the way out
                test_metrics = self._finish(writer, status, reason, error, total_time, telemetry)
                result = RunResult(
                    run_dir=run_dir,
                    run_id=run_id,
                    status=status,
                    stop_reason=reason,
                    best_epoch=self.best_epoch,
                    best_val_loss=self.best_val_loss if self.best_epoch is not None else None,
                    test_metrics=test_metrics,
                    epochs_completed=len(self.history.epochs),
                    stop_signal=self.signals.signum if reason == self.signals.stop_reason else None,
                )
                if self.dashboard is not None:
                    self.dashboard.on_end(status, reason, {"best_epoch": self.best_epoch, "best_val_loss": result.best_val_loss,
                                                           "epochs_completed": result.epochs_completed,
                                                           "total_time_s": total_time, "run_dir": str(run_dir)})
                self._close_dashboard()  # before `finish`: its lines and the summary reach the console again
                if self.finish is not None:
                    self._run_finish(writer)
            finally:
                self._close_tracker()
            self._record_incidents(writer)
        print(f"[{run_id}] {status} ({reason}) best epoch {self.best_epoch} val {_fmt(result.best_val_loss)} -> {run_dir}")
        if error is not None:
            raise error
        return result

    def _run_finish(self, writer: RunWriter) -> None:
        """The caller's `finish(run_dir)` (the run report); its failure is recorded, never raised: the run has ended."""
        try:
            writer.flush()
            self.finish(self.run_dir)  # the run directory is complete; what it prints lands in logs/stdout.log
        except Exception as exc:  # noqa: BLE001 - what comes after the run's ending cannot change its outcome
            if isinstance(exc, ReportError):
                self._incident(writer, "report", str(exc), error_type=type(exc.__cause__ or exc).__name__)
            else:
                self._incident(writer, "finish", f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)

    def _incident(self, writer: RunWriter, part: str, message: str, *, path: Optional[Path] = None,
                  error_type: Optional[str] = None) -> None:
        """Print and record (on_incident) a part of the run that failed while the run went on."""
        print(f"[{self.run_id}] warning: {part}: {message}")
        payload = {"part": part, "message": message}
        if path is not None:
            payload["path"] = str(path)
        if error_type is not None:
            payload["error_type"] = error_type
        self._write_event(writer, "on_incident", **payload)

    def _write_event(self, writer: RunWriter, moment: str, **payload) -> bool:
        """writer.event, but a fact that cannot be written (a full disk) is said on the console, not raised."""
        try:
            writer.event(moment, **payload)
            return True
        except OSError as exc:
            path = getattr(exc, "filename", None) or self.run_dir / EVENTS_FILE
            print(f"[{self.run_id}] warning: could not write {moment} to {path}: {describe_error(exc)}")
            return False

    def _record_incidents(self, writer: RunWriter) -> None:
        """What went wrong on the way since the last call: the console or log lost, figures switched
        off, signals noted while finishing; printed (signal notes) and recorded as on_incident."""
        for note in self.signals.take_notes():
            print(f"[{self.run_id}] {note}")
            if self.signals.phase == "finishing":
                self._write_event(writer, "on_incident", part="signal", message=note)
        for incident in self.capture.take_incidents():
            self._write_event(writer, "on_incident", **incident)
        if self.tracker is not None:  # a tracker that failed and was switched off (part "tracking")
            for failure in self.tracker.take_failures():
                self._write_event(writer, "on_incident", **failure)
        if self.profile is not None:  # a profiler that failed and was switched off (part "profile"), warned once
            for failure in self.profile.take_failures():
                self._incident(writer, failure["part"], failure["message"], path=failure.get("path"),
                               error_type=failure.get("error_type"))
        if self.monitor is not None:
            fresh = self.monitor.warnings[self._monitor_warnings_recorded:]
            self._monitor_warnings_recorded += len(fresh)
            for message in fresh:
                self._write_event(writer, "on_incident", part="figures", message=message,
                                  path=str(self.monitor.figures_dir))

    def _dashboard_info(self) -> dict:
        cfg = self.cfg
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "task": cfg.model.task,
            "model": f"{cfg.model.encoder}/{cfg.model.bottleneck}" if cfg.model.task == "autoencoder" else cfg.model.encoder,
            "device": str(self.device),
            "epochs": cfg.trainer.epochs,
            "start_epoch": self.start_epoch,
            "steps_per_epoch": self._steps_per_epoch(),
            "params": self.params,
        }

    def _steps_per_epoch(self) -> int:
        batches = len(self.loaders["train"])
        cap = self.cfg.trainer.max_steps_per_epoch
        return min(batches, cap) if cap else batches

    def _print_header(self) -> None:
        p = self.params
        pct = 100.0 * p["trainable"] / max(p["total"], 1)
        resumed = f", resumed after epoch {self.start_epoch}" if self.resume_state is not None else ""
        print(
            f"[{self.run_id}] {self.cfg.model.task} {self.cfg.model.encoder}/{self.cfg.model.bottleneck} on {self.device}"
            f" ({self.cfg.trainer.precision}), {p['trainable']:,}/{p['total']:,} trainable params ({pct:.1f} %),"
            f" data {self.loaders['train'].mode} {self.meta.split_sizes}{resumed}\n  run directory: {self.run_dir}"
        )

    def _sync_points(self) -> SyncPoints:
        """The step's one hook, and what this run does at sync points: steps.csv rows, the dashboard, progress lines;
        with trainer.profile, the hook that also steps the profiler after every batch (profiling.py)."""
        cfg, dashboard = self.cfg, self.dashboard
        # With a tracker, each steps.csv row also goes to it as it is made (at the sync point itself).
        self.step_rows = (StepRows(self._origin) if self.tracker is None
                          else MirroredStepRows(self._origin, self.tracker.sync_point))
        listeners: list = [self.step_rows]
        if dashboard is not None:
            listeners.append(DashboardView(dashboard, self._steps_per_epoch(), self.resources.latest_gpu))
        if cfg.logging.print_every_n_steps:
            listeners.append(ProgressLines(cfg.logging.print_every_n_steps, f"[{self.run_id}]", self._steps_per_epoch()))
        hook = {"grad_accum_steps": cfg.trainer.grad_accum_steps, "listeners": listeners,
                "control": dashboard.control if dashboard is not None else None, "distributed": self.ddp.enabled}
        profile = cfg.trainer.profile
        if profile.enabled and self.ddp.is_main and self.start_epoch > profile.epoch:
            print(f"[{self.run_id}] profile: epoch {profile.epoch} ran before the resume; nothing is profiled")
        elif profile.enabled and self.ddp.is_main:
            # Only then: the hook that also steps the profiler after every batch (sync points unchanged).
            from .profiling import ProfiledSyncPoints, ProfileWindow

            self.profile = ProfileWindow(profile, self.run_dir, self.device, label=f"[{self.run_id}]",
                                         batches_per_epoch=self._steps_per_epoch())
            return ProfiledSyncPoints(cfg.trainer.sync_every_n_steps, window=self.profile, **hook)
        return SyncPoints(cfg.trainer.sync_every_n_steps, **hook)

    def _fit(self, writer: RunWriter) -> tuple[str, str, Optional[BaseException]]:
        """The epoch loop; returns (status, stop_reason, unexpected error to re-raise or None)."""
        cfg, signals = self.cfg, self.signals
        if signals.signum is not None:  # a signal arrived before the first step
            self.sync.request_stop()
        try:
            for epoch in range(self.start_epoch, cfg.trainer.epochs):
                # One process: a signal that came during validation or the epoch's writes stops here.
                # Under DDP it waits for the next epoch's first fixed sync point, where every rank learns it.
                if signals.signum is not None and not self.ddp.enabled:
                    self._record_incidents(writer)
                    return "STOPPED", signals.stop_reason, None
                signals.phase = "training"
                stop = self._run_epoch(writer, epoch)
                if stop:
                    return "STOPPED", "early_stopping", None
            return "COMPLETED", "max_epochs", None
        except SignalStop:
            self._record_incidents(writer)
            print(f"[{self.run_id}] {signals.stop_reason} (twice): stopped at once, writing facts and model.pt")
            return "STOPPED", signals.stop_reason, None
        except KeyboardInterrupt:
            print(f"[{self.run_id}] interrupted: writing facts and checkpoints")
            return "STOPPED", "interrupted", None
        except StopRequested as exc:
            self._record_incidents(writer)
            if signals.signum is not None:
                print(f"[{self.run_id}] stopped by {signals.stop_reason}: writing facts and checkpoints")
                return "STOPPED", signals.stop_reason, None
            print(f"[{self.run_id}] {exc}: writing facts and checkpoints")
            return "STOPPED", "stopped_by_user", None
        except NonFiniteLossError as exc:
            self._record_exception(writer, exc)
            return "FAILED", "non_finite_loss", None
        except CheckpointError as exc:  # a checkpoint could not be written (a full disk): not a bug to re-raise
            self._record_exception(writer, exc)
            return "FAILED", f"exception: {type(exc).__name__}", None
        except Exception as exc:
            self._record_exception(writer, exc)
            return "FAILED", f"exception: {type(exc).__name__}", exc

    def _run_epoch(self, writer: RunWriter, epoch: int) -> bool:
        cfg, run_id = self.cfg, self.run_id
        train_loader = self.loaders["train"]
        train_loader.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        dashboard = self.dashboard
        # A console-owning dashboard gets fresh numbers every update interval, not only every
        # sync_every_n_steps (on a slow model that could be many seconds); each costs one sync.
        # Not under DDP (SyncPoints ignores it there): those reads would be this rank's alone.
        refreshing = dashboard is not None and dashboard.owns_console
        self.sync.start_epoch(epoch, lr, self.global_step,
                              refresh_s=cfg.logging.update_interval_ms / 1000.0 if refreshing else None)
        self.resources.begin_epoch()
        train_stats = train_epoch(self.step_model, train_loader, self.optimizer, self.precision, self.sync,
                                  device=self.device, names=self.names, ranks=self.ddp,
                                  grad_accum_steps=cfg.trainer.grad_accum_steps, grad_clip=cfg.optim.grad_clip,
                                  max_steps=cfg.trainer.max_steps_per_epoch, epoch=epoch)
        if self.profile is not None:  # the profiled epoch's files: after its training pass, outside its timing
            self.profile.end_epoch()
        val_stats = evaluate(self.model, self.loaders["val"], self.precision, device=self.device, names=self.names,
                             ranks=self.ddp)
        self.signals.phase = "writing"  # from here a second signal waits for the epoch's facts to be whole
        val_loss = val_stats.metrics["loss"]
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(f"validation loss became {val_loss} in epoch {epoch}")
        self.global_step += train_stats.steps
        self.samples_total += train_stats.samples
        self.step_rows.add(epoch, self.global_step, train_stats.metrics["loss"], train_stats.samples, lr)
        resources = self.resources.end_epoch(train_stats.data_wait_frac)
        improved = val_loss < self.best_val_loss
        if improved and self.ddp.is_main:
            # Written before best_epoch moves: if it cannot be (a full disk), the recorded best stays
            # the one whose weights are on disk.
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, {"model": self.model.state_dict(), "epoch": epoch, "val_loss": val_loss})
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, epoch
        if self.scheduler is not None:
            self.scheduler.step(val_loss)
        stop = self.early.step(val_loss)
        self._write_epoch_facts(writer, epoch, lr, train_stats, val_stats, resources)
        self._save_last(epoch + 1)
        if self.monitor is not None:  # after facts and checkpoints: a figure never costs what they hold
            self.monitor.on_epoch_end(epoch, self.model, self.history)
        if dashboard is not None:
            dashboard.on_epoch_end(epoch, train_stats.metrics, val_stats.metrics, lr, train_stats.grad_norm,
                                   train_stats.throughput, resources, self.best_val_loss, improved)
        print(
            # Epochs count from 0 everywhere (facts, best_epoch, reports); "(n/N)" is the progress.
            f"[{run_id}] epoch {epoch:>3} ({epoch + 1}/{cfg.trainer.epochs})  train {train_stats.metrics['loss']:.4f}"
            f"  val {val_loss:.4f}{'*' if improved else ' '}  lr {lr:.2e}"
            f"  {train_stats.throughput:,.0f} samples/s  {train_stats.seconds + val_stats.seconds:.1f}s"
        )
        return stop

    def _write_epoch_facts(self, writer: RunWriter, epoch: int, lr: float, train_stats: EpochStats,
                           val_stats: EpochStats, resources: dict) -> None:
        epoch_time = train_stats.seconds + val_stats.seconds
        t = time.time() - self._origin
        common = {"epoch": epoch, "step": self.global_step, "t": t, "lr": lr, "epoch_time_s": epoch_time}
        rows = ({**common, **train_stats.metrics, **resources, "split": "train", "grad_norm": train_stats.grad_norm,
                 "samples": train_stats.samples, "throughput": train_stats.throughput},
                {**common, **val_stats.metrics, "split": "val", "samples": val_stats.samples,
                 "throughput": val_stats.throughput})
        for row in rows:
            writer.scalars(row)
        writer.event(
            "on_epoch_end",
            epoch=epoch,
            step=self.global_step,
            train=train_stats.metrics,
            val=val_stats.metrics,
            lr=lr,
            grad_norm=train_stats.grad_norm,
            epoch_time_s=epoch_time,
            samples=train_stats.samples,
            throughput=train_stats.throughput,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss,
            resources=resources,
            energy_so_far_j=self.resources.energy_total_j if resources["energy_j"] is not None else None,
        )
        writer.steps(self.step_rows.take())
        if self.tracker is not None:  # the same rows the facts got (the steps went at their sync points)
            for row in rows:
                self.tracker.epoch(row)
            self.tracker.poll_telemetry()
        self._record_incidents(writer)
        writer.flush()
        self.history.append(epoch, lr, epoch_time, train_stats, val_stats)

    def _save_last(self, epochs_done: int) -> None:
        if not self.ddp.is_main:
            return
        save_checkpoint(
            self.run_dir / LAST_CHECKPOINT,
            {
                "run_id": self.run_id,
                "config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.precision.scaler.state_dict(),
                "early_stopping": self.early.state_dict(),
                "history": self.history.to_dict(),
                "epoch": epochs_done,
                "step": self.global_step,
                "samples": self.samples_total,
                "elapsed_s": time.time() - self._origin,
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss,
                "energy_j": self.resources.energy_total_j,
                "rng": capture_rng_state(),
            },
        )

    def _record_exception(self, writer: RunWriter, exc: BaseException) -> None:
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-8:])
        print(f"[{self.run_id}] {type(exc).__name__}: {exc}")
        self._write_event(writer, "on_exception", error_type=type(exc).__name__, message=str(exc), traceback=tail)

    def _finish(self, writer: RunWriter, status: str, reason: str, error: Optional[BaseException], total_time: float,
                telemetry: Optional[dict]) -> dict:
        """model.pt (the best weights) and on_train_end first; then the test pass, model_info.json,
        training_history.json and the final figures, each of which may fail without taking the
        others (or the run's outcome) with it: a failure is recorded as on_incident."""
        best_path, is_main = self.run_dir / BEST_CHECKPOINT, self.ddp.is_main
        best = None
        if is_main and best_path.is_file():
            try:
                best = load_checkpoint(best_path)
                save_checkpoint(self.run_dir / MODEL_FILE, best["model"])
            except CheckpointError as exc:
                self._incident(writer, "checkpoint", f"{exc}; best_val.pt holds the best weights",
                               path=self.run_dir / MODEL_FILE, error_type=type(exc.__cause__ or exc).__name__)
        self._write_event(
            writer,
            "on_train_end",
            status=status,
            stop_reason=reason,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss if self.best_epoch is not None else None,
            epochs_completed=len(self.history.epochs),
            steps=self.global_step,
            samples=self.samples_total,
            total_time_s=total_time,
            telemetry=telemetry,
        )
        with contextlib.suppress(OSError):
            writer.flush()
        test_metrics: dict = {}
        # best_epoch, not the file, decides: every rank knows it (validation losses are summed over ranks).
        if self.cfg.trainer.test and error is None and self.best_epoch is not None and "test" in self.loaders:
            if self.signals.signum is not None:
                # A batch system's signal leaves seconds before the kill: model.pt and the facts are
                # safe; the test pass is recorded as skipped rather than raced against SIGKILL.
                skipped = (f"stopped by {self.signals.stop_reason}; thesis_lib.reports.run_inference(run_dir) "
                           "scores model.pt on the test split")
                self._write_event(writer, "on_test_end", skipped=skipped, epoch=self.best_epoch, samples=0)
            else:
                test_metrics = self._test_pass(writer, best_path)
        if self.tracker is not None:  # the records since the last epoch, in the facts' order; end comes last
            self.tracker.poll_telemetry()
            if test_metrics:
                self.tracker.test(test_metrics, self.best_epoch)
            self.tracker.end(status, reason)
        if not is_main:
            return test_metrics
        self._optional(writer, "history", self.run_dir / HISTORY_FILE,
                       lambda: self.history.write(self.run_dir / HISTORY_FILE))
        self._optional(writer, "model_info", self.run_dir / MODEL_INFO_FILE, lambda: write_model_info(
            self.run_dir / MODEL_INFO_FILE,
            model=self.model,
            cfg=self.cfg,
            meta=self.meta,
            run_id=self.run_id,
            status=status,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss if self.best_epoch is not None else None,
            test_metrics=test_metrics,
        ))
        if self.monitor is not None:
            def final_figures() -> None:
                if best is not None:  # the final recon/codebook figures show model.pt's weights
                    self.model.load_state_dict(best["model"])
                self.monitor.on_train_end(self.model, self.history, status)
            self._optional(writer, "figures", self.monitor.figures_dir, final_figures)
            for note in self.monitor.notes:
                print(f"[{self.run_id}] figures: {note}")
        self._record_incidents(writer)
        return test_metrics

    def _test_pass(self, writer: RunWriter, best_path: Path) -> dict:
        """The best weights on the test split: on_test_end with its metrics, or a skipped pass when it holds no sample."""
        self.ddp.barrier()  # under DDP: rank 0 has written best_val.pt
        best = load_checkpoint(best_path)
        self.model.load_state_dict(best["model"])
        stats = evaluate(self.model, self.loaders["test"], self.precision, device=self.device, names=self.names,
                         ranks=self.ddp)
        if stats.samples == 0:
            # A loss over no sample is not a number that was measured: the pass is recorded as skipped.
            skipped = f"the test split holds no samples ({self.meta.split_sizes.get('test', 0)} in the data's split sizes)"
            self._write_event(writer, "on_test_end", skipped=skipped, epoch=self.best_epoch, samples=0)
            print(f"[{self.run_id}] test pass skipped: {skipped}")
            return {}
        test_metrics = stats.metrics
        extra = {}
        if hasattr(self.model, "predict_logits"):  # a classifier: the report shows its confusion matrix
            extra = {"confusion_matrix": confusion_matrix(self.model, self.loaders["test"], self.precision,
                                                          device=self.device, n_classes=self.meta.n_classes,
                                                          ranks=self.ddp),
                     "class_names": list(self.meta.label_names)}
        self._write_event(writer, "on_test_end", metrics=test_metrics, epoch=self.best_epoch, samples=stats.samples,
                          **extra)
        print(f"[{self.run_id}] test (best epoch {self.best_epoch}): loss {test_metrics['loss']:.4f}")
        return test_metrics

    def _optional(self, writer: RunWriter, part: str, path: Path, write: Callable[[], None]) -> None:
        """Write one optional part of the run's ending; its failure is an on_incident, never an exception."""
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - model.pt and on_train_end are written; nothing here may undo them
            text = describe_error(exc)
            self._incident(writer, part, text, path=getattr(exc, "filename", None) or path, error_type=type(exc).__name__)

    def _write_data_meta(self, writer: RunWriter, data_file: Optional[dict]) -> None:
        """data_meta.json: the DataMeta that rebuilds the model, and `dataset`, what the data was (the
        report's dataset section). Measuring the data or writing the file may fail as an on_incident,
        never ending the run (without the file, inference and export say it is missing)."""
        path = self.run_dir / DATA_META_FILE
        content = self.meta.to_dict()
        try:
            content["dataset"] = describe_dataset(self.cfg.data, self.loaders, self.meta, file_identity=data_file,
                                                  world_size=self.ddp.world_size)
        except Exception as exc:  # noqa: BLE001 - the description is a report's, the run's numbers do not need it
            self._incident(writer, "data_meta", f"the dataset was not described: {describe_error(exc)}",
                           path=path, error_type=type(exc).__name__)
        try:
            atomic_write_text(path, json.dumps(content, indent=2) + "\n", inside=self.run_dir)
        except Exception as exc:  # noqa: BLE001 - as _optional, but naming the file rather than its temporary
            self._incident(writer, "data_meta", describe_error(exc), path=path, error_type=type(exc).__name__)

    def _open_tracker(self, config_dict: dict, origin: float, telemetry_before: int):
        """The experiment trackers of tracking.backends behind one guard (thesis_lib.tracking), started:
        fed the records the facts get, and a failing one costs a warning and an on_incident, never the run."""
        from ..tracking import RunInfo, TelemetryTail, flat_config, open_live_mirror

        csv_path = None
        if self.resources.sampler is not None:
            csv_path = self.resources.sampler.info().get("csv_path")
        telemetry = None
        if csv_path:
            same_file = Path(csv_path) == self.run_dir / TELEMETRY_FILE
            telemetry = TelemetryTail(Path(csv_path), telemetry_before if same_file else 0)
        tracker = open_live_mirror(self.cfg.tracking.backends, run_dir=self.run_dir, run_id=self.run_id,
                                   settings=dataclasses.asdict(self.cfg.tracking), telemetry=telemetry)
        tracker.start(flat_config(config_dict), RunInfo(
            run_id=self.run_id, run_dir=self.run_dir, origin=origin, config_hash=config_hash(config_dict),
            resumed_from_epoch=self.start_epoch if self.resume_state is not None else None))
        return tracker

    def _close_tracker(self) -> None:
        """Close the trackers once the run has ended and its report is rendered, so model.pt and the report
        go up as artifacts (`run_artifacts`); idempotent, and the object stays for `_record_incidents`."""
        if self.tracker is None:
            return
        from ..tracking import run_artifacts

        self.tracker.close(run_artifacts(self.run_dir))

    def _figure_monitor(self) -> Optional[FigureMonitor]:
        """Training-time figures (logging.figures) probing the first validation rows; None when off."""
        families = self.cfg.logging.figures
        if not families:
            return None
        first = next(iter(self.loaders["val"]), None)
        probe = None if first is None else {k: v[:_PROBE_ROWS].to(self.device) for k, v in first.items()}
        return FigureMonitor(self.run_dir, families, self.cfg.logging.figures_every_n_epochs, probe,
                             cont_features=self.meta.cont_features)



def _file_size(path: Path) -> int:
    """Bytes in `path`, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
