"""Sync points: the training step's one hook, and what a run does at it.

The step reads metrics back to the host only at sync points. `SyncPoints` is the one object the
epoch (`train_epoch`) talks to: after every step it asks `due(batch)`, "is this a sync point?";
when it is, the epoch reads the running means (the sync) and calls `on_sync` once, which hands a
`SyncPoint` to each of the hook's `listeners` in turn. What a run does at sync points is a
listener, an object with `on_sync(point)`:

- `StepRows`: a steps.csv row at every fixed sync point (buffered; written at the epoch's end);
- `DashboardView`: the live dashboard's fresh numbers (it redraws when its own clock says so);
- `ProgressLines`: a progress line every `logging.print_every_n_steps` batches.

Later additions plug in the same way, or stand in for a part: the profiler needs every batch, not
every sync point, so `ProfiledSyncPoints` (profiling.py) stands in for `SyncPoints` only when
`trainer.profile` is on and steps it in `due`, adding no sync point; an experiment tracker (thesis_lib.tracking) gets each steps.csv row as it is made, through
`MirroredStepRows`, which stands in for `StepRows` only when the run has a tracker; anything that wants the run to stop (a signal handler, a
listener) calls `request_stop()`. A dashboard's Stop arrives the same way: its `control()` is
polled in `due` after every step (its Pause blocks there, between two steps).

When a step is a sync point:

- every `every` batches (`trainer.sync_every_n_steps`): the fixed points. steps.csv rows come
  from these alone, and under DDP they are the only ones: each is a collective, and ranks must
  agree on when;
- in one process, also every update interval for a dashboard that owns the console (so it moves
  even when fixed points are seconds apart), and right after the step at which a stop was asked.
  Under DDP a stop waits for the next fixed point, where it reaches every rank.

Nothing here touches the device: listeners get the running means the step already read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol

__all__ = ["SyncPoint", "SyncListener", "SyncPoints", "StepRows", "MirroredStepRows", "DashboardView", "ProgressLines"]


@dataclass(frozen=True)
class SyncPoint:
    """What a listener gets: the running means of the epoch so far, and where the run is."""

    epoch: int  # from 0
    batch: int  # batches done this epoch
    step: int  # optimizer steps done in the run: those before the epoch + batch // grad_accum_steps
    running: dict  # mean loss and metrics over the epoch's samples so far (over all ranks under DDP)
    samples: int  # the samples those means cover
    lr: float  # the epoch's learning rate (the scheduler steps at epoch ends)
    fixed: bool  # a fixed point (every `every` batches); False: a live view's refresh or a stop


class SyncListener(Protocol):
    """Something done at sync points; it must not touch the device or raise into training."""

    def on_sync(self, point: SyncPoint) -> None: ...


class SyncPoints:
    """The step's one hook: `due(batch)` after every step, `on_sync(...)` when it said yes.

    Args:
        every: batches between fixed sync points (`trainer.sync_every_n_steps`).
        grad_accum_steps: micro-batches per optimizer step (a point's `step`).
        control: polled after every step (a dashboard's `control`); "stop" requests a stop.
        distributed: under DDP every sync point is a collective, so only fixed points are sync
            points: no timed refresh, and a stop waits for the next fixed point.
        listeners: what to do at sync points, called in order.
    """

    def __init__(self, every: int, *, grad_accum_steps: int = 1, control: Optional[Callable[[], str]] = None,
                 distributed: bool = False, listeners: Iterable[SyncListener] = ()):
        self.every = every
        self.grad_accum_steps = grad_accum_steps
        self.control = control
        self.distributed = distributed
        self.listeners: list[SyncListener] = list(listeners)
        self._stop = False
        self.start_epoch(0, 0.0, 0)

    def start_epoch(self, epoch: int, lr: float, global_step: int, refresh_s: Optional[float] = None) -> None:
        """Before each epoch: its number, learning rate, optimizer steps before it, and how often a
        live view wants fresh numbers between fixed points (None: only at fixed points)."""
        self.epoch, self.lr, self.global_step = epoch, lr, global_step
        self.refresh_s = None if self.distributed else refresh_s
        self._next_refresh = time.perf_counter() + self.refresh_s if self.refresh_s is not None else None
        self._fixed = False

    def due(self, batch: int) -> bool:
        """Asked after every step (`batch` counted from 1 in the epoch): is this a sync point?"""
        if self.control is not None and self.control() == "stop":
            self._stop = True
        self._fixed = batch % self.every == 0
        if self._fixed:
            return True
        if self.distributed:
            return False
        return self._stop or (self._next_refresh is not None and time.perf_counter() >= self._next_refresh)

    def should_stop(self) -> bool:
        """Whether a stop was asked (read by the epoch at each sync point)."""
        return self._stop

    def request_stop(self) -> None:
        """End the run STOPPED at the next sync point (next fixed one under DDP), checkpoints and facts kept."""
        self._stop = True

    def on_sync(self, batch: int, running: dict, samples: int) -> None:
        """Called by the epoch at a sync point with the running means over `samples` samples."""
        if self._next_refresh is not None:
            self._next_refresh = time.perf_counter() + self.refresh_s
        point = SyncPoint(self.epoch, batch, self.global_step + batch // self.grad_accum_steps, running, samples,
                          self.lr, self._fixed)
        for listener in self.listeners:
            listener.on_sync(point)


class StepRows:
    """steps.csv rows: at every fixed sync point and at each epoch's end, the mean loss of the samples
    since the previous row (from the running means). Buffered: the run writes `take()` at each epoch's end.

    Args:
        origin: the run's start, time.time() seconds (a row's `t` counts from it).
    """

    def __init__(self, origin: float):
        self.origin = origin
        self.rows: list[dict] = []
        self._epoch: Optional[int] = None
        self._covered_loss_sum = 0.0  # what the epoch's previous row already covered
        self._covered_samples = 0

    def on_sync(self, point: SyncPoint) -> None:
        if point.fixed:  # steps.csv keeps its fixed resolution
            self.add(point.epoch, point.step, point.running["loss"], point.samples, point.lr)

    def add(self, epoch: int, step: int, mean_loss: float, samples: int, lr: float) -> None:
        """A row for optimizer step `step` from the epoch's running mean loss over `samples` samples."""
        if epoch != self._epoch:
            self._epoch, self._covered_loss_sum, self._covered_samples = epoch, 0.0, 0
        total = mean_loss * samples
        if samples > self._covered_samples:
            self.rows.append({"epoch": epoch, "step": step, "t": time.time() - self.origin,
                              "loss": (total - self._covered_loss_sum) / (samples - self._covered_samples), "lr": lr})
        self._covered_loss_sum, self._covered_samples = total, samples

    def take(self) -> list[dict]:
        """The rows since the last call."""
        rows, self.rows = self.rows, []
        return rows


class MirroredStepRows(StepRows):
    """StepRows that also hand each new row to `sink` (a tracker's `sync_point`) as it is made.

    Used instead of StepRows only when the run mirrors to a tracker, so a run without one pays
    nothing for it, not even a branch per sync point.
    """

    def __init__(self, origin: float, sink: Callable[[dict], None]):
        super().__init__(origin)
        self.sink = sink

    def add(self, epoch: int, step: int, mean_loss: float, samples: int, lr: float) -> None:
        before = len(self.rows)
        super().add(epoch, step, mean_loss, samples, lr)
        for row in self.rows[before:]:
            self.sink(row)


class DashboardView:
    """Hands the running numbers to the live dashboard, with the newest GPU reading."""

    def __init__(self, dashboard: Any, steps_per_epoch: int, latest_gpu: Callable[[], Optional[dict]]):
        self.dashboard, self.steps_per_epoch, self.latest_gpu = dashboard, steps_per_epoch, latest_gpu

    def on_sync(self, point: SyncPoint) -> None:
        self.dashboard.on_sync(point.epoch, point.batch, self.steps_per_epoch, point.running, point.samples, point.lr,
                               self.latest_gpu())


class ProgressLines:
    """A progress line at the first sync point `every` or more batches after the epoch's previous one."""

    def __init__(self, every: int, prefix: str, steps_per_epoch: int):
        self.every, self.prefix, self.steps_per_epoch = every, prefix, steps_per_epoch
        self._epoch: Optional[int] = None
        self._last = 0

    def on_sync(self, point: SyncPoint) -> None:
        if point.epoch != self._epoch:
            self._epoch, self._last = point.epoch, 0
        if point.batch - self._last >= self.every:
            self._last = point.batch
            print(f"{self.prefix} epoch {point.epoch} step {point.batch}/{self.steps_per_epoch} "
                  f"loss {point.running['loss']:.4f}")
