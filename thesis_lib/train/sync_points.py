"""What happens at the sync points of one training epoch: steps.csv rows, the live dashboard, progress lines.

The step reads metrics back only at sync points (every `sync_every_n_steps`, plus, for a
dashboard that owns the console, every `logging.update_interval_ms`); `EpochSyncPoints` is what
`run_train_epoch` calls there. Nothing here touches the device: it gets the running means the
step already read.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

__all__ = ["EpochSyncPoints"]


class EpochSyncPoints:
    """One epoch's sync-point handler; `step_rows` collects steps.csv rows (written at the epoch end).

    Args:
        epoch: the epoch (from 0).
        lr: its learning rate (fixed within an epoch: the scheduler steps at epoch ends).
        global_step: optimiser steps before this epoch.
        grad_accum_steps: micro-batches per optimiser step.
        origin: the run's start, time.time() seconds (steps.csv's `t` counts from it).
        step_rows: the list the rows are appended to.
        dashboard: the live dashboard or None; `latest_gpu` gives its GPU reading.
        steps_per_epoch: the batches this epoch will take (the dashboard's progress).
        print_every: print a progress line every this many batches (0: never).
        line_prefix: what progress lines start with (the run id in brackets).
        refresh_s: a console-owning dashboard's update interval.
    """

    def __init__(self, *, epoch: int, lr: float, global_step: int, grad_accum_steps: int, origin: float,
                 step_rows: list[dict], dashboard: Any, latest_gpu: Callable[[], Optional[dict]],
                 steps_per_epoch: int, print_every: int, line_prefix: str, refresh_s: float):
        self.epoch, self.lr, self.global_step, self.accum = epoch, lr, global_step, grad_accum_steps
        self.origin, self.step_rows = origin, step_rows
        self.dashboard, self.latest_gpu, self.steps_per_epoch = dashboard, latest_gpu, steps_per_epoch
        self.print_every, self.line_prefix, self.refresh_s = print_every, line_prefix, refresh_s
        self._covered_loss_sum = 0.0  # what the previous steps.csv row already covered
        self._covered_samples = 0
        self._last_print = 0
        self._next_refresh = time.perf_counter() + refresh_s

    def refresh_due(self) -> bool:
        """True when a console-owning dashboard should get fresh numbers (one extra sync)."""
        return time.perf_counter() >= self._next_refresh

    def on_sync(self, batch_index: int, running: dict[str, float], samples: int, scheduled: bool) -> None:
        """`run_train_epoch`'s callback: running means since the epoch began, over `samples` samples."""
        self._next_refresh = time.perf_counter() + self.refresh_s
        if scheduled:  # steps.csv keeps its fixed resolution
            self.add_step_row(self.global_step + batch_index // self.accum, running["loss"], samples)
        if self.dashboard is not None:
            self.dashboard.on_sync(self.epoch, batch_index, self.steps_per_epoch, running, samples, self.lr,
                                   self.latest_gpu())
        if self.print_every and batch_index - self._last_print >= self.print_every:
            self._last_print = batch_index
            print(f"{self.line_prefix} epoch {self.epoch} step {batch_index}/{self.steps_per_epoch} "
                  f"loss {running['loss']:.4f}")

    def add_step_row(self, optimizer_step: int, mean_loss: float, samples: int) -> None:
        """A steps.csv row: the mean loss of the samples since the previous row (from running means)."""
        total = mean_loss * samples
        if samples > self._covered_samples:
            self.step_rows.append({"epoch": self.epoch, "step": optimizer_step, "t": time.time() - self.origin,
                                   "loss": (total - self._covered_loss_sum) / (samples - self._covered_samples),
                                   "lr": self.lr})
        self._covered_loss_sum, self._covered_samples = total, samples
