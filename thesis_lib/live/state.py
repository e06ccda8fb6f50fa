"""What a live dashboard knows about a run: bounded histories, smoothed loss, ETA, pause/stop flags.

Pure Python and cheap to update: the loop hands over numbers it has already read from the device,
and every renderer (widget, terminal, static HTML) draws from this one object. Histories are
deques with a maximum length, so a week-long run holds as much memory as a ten-minute one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable, Deque, Mapping, Optional

from ..durations import format_duration

__all__ = ["DashboardState", "Point"]

Point = tuple[float, float]  # (position in epochs, value)


def _finite(value: object) -> Optional[float]:
    """`value` as a float, or None when it is missing or not finite."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class DashboardState:
    """The numbers behind a dashboard, updated by the training loop's dashboard hooks.

    Args:
        max_history: how many points each history keeps (the oldest are dropped).
        smoothing: EMA factor in [0, 1) for the smoothed training loss (0: no smoothing). Each
            point is already the mean of a sync window (50 steps by default), so the default is
            light, like TensorBoard's 0.6.
        clock: seconds as a float; tests pass a fake one.
    """

    def __init__(self, *, max_history: int = 500, smoothing: float = 0.6,
                 clock: Callable[[], float] = time.perf_counter):
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.clock = clock
        self.info: dict = {}
        self.status = "starting"
        self.stop_reason = ""
        self.epochs = 0
        self.start_epoch = 0
        self.steps_per_epoch = 0
        self.epoch = 0  # the epoch being trained (0-based)
        self.step = 0  # batches done in that epoch
        self.samples = 0  # samples seen in that epoch
        self.lr: Optional[float] = None
        self.running: dict[str, float] = {}  # running train means of the current epoch
        self.train_epoch: dict[str, float] = {}  # the last finished epoch's train means
        self.val: dict[str, float] = {}  # the last finished epoch's validation means
        self.grad_norm: Optional[float] = None
        self.epoch_throughput: Optional[float] = None
        self.gpu: Optional[dict] = None
        self.best_val_loss: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.summary: dict = {}
        self.train_raw: Deque[Point] = deque(maxlen=max_history)  # loss of each sync window
        self.train_smooth: Deque[Point] = deque(maxlen=max_history)
        self.val_loss: Deque[Point] = deque(maxlen=max_history)  # one point per epoch, at its end
        self.grad_norms: Deque[Point] = deque(maxlen=max_history)
        self.val_metrics: dict[str, Deque[Point]] = {}  # metric_* per epoch
        self.paused = False
        self.stop_requested = False
        self.version = 0  # bumped whenever a history changes: renderers redraw charts only then
        self._ema: Optional[float] = None
        self._window = (0.0, 0)  # (loss sum, samples) covered by the previous sync this epoch
        self._started_at: Optional[float] = None
        self._epoch_started_at: Optional[float] = None
        self._paused_total = 0.0
        self._paused_at: Optional[float] = None
        self._ended_at: Optional[float] = None

    # -- updates from the loop -------------------------------------------------------------
    def start(self, info: Mapping) -> None:
        """Record the run's description (`Dashboard.on_start`'s info) and start the clocks."""
        self.info = dict(info)
        self.epochs = int(info.get("epochs") or 0)
        self.start_epoch = self.epoch = int(info.get("start_epoch") or 0)
        self.steps_per_epoch = int(info.get("steps_per_epoch") or 0)
        self.status = "running"
        self._started_at = self._epoch_started_at = self.clock()

    def sync(self, epoch: int, batch: int, steps_per_epoch: int, metrics: Mapping[str, float], samples: int,
             lr: float, gpu: Optional[dict]) -> None:
        """Take the running means read at a sync point; derive the loss of the window since the last one."""
        if epoch != self.epoch or samples < self._window[1]:
            self._window = (0.0, 0)
        self.epoch, self.step, self.samples = epoch, batch, samples
        if steps_per_epoch:
            self.steps_per_epoch = steps_per_epoch
        self.running = dict(metrics)
        self.lr = lr
        self.gpu = gpu
        loss = _finite(metrics.get("loss"))
        if loss is None:
            return
        total = loss * samples
        seen_sum, seen = self._window
        if samples > seen:
            self._add_train_point(self.position(), (total - seen_sum) / (samples - seen))
        self._window = (total, samples)

    def _add_train_point(self, x: float, loss: float) -> None:
        self.version += 1
        self.train_raw.append((x, loss))
        beta = self.smoothing
        # Seeded with the first value (not zero), so the curve needs no bias correction.
        self._ema = loss if self._ema is None else beta * self._ema + (1.0 - beta) * loss
        self.train_smooth.append((x, self._ema))

    def note_steps(self, steps_done: int) -> None:
        """Batches done this epoch as counted between sync points (never moves backwards)."""
        if steps_done > self.step:
            self.step = steps_done

    def epoch_end(self, epoch: int, train: Mapping[str, float], val: Mapping[str, float], lr: float,
                  grad_norm: Optional[float], throughput: float, best_val_loss: float, improved: bool) -> None:
        """Record a finished epoch and move on to the next one."""
        x = float(epoch + 1)
        self.version += 1
        self.train_epoch, self.val = dict(train), dict(val)
        self.lr, self.grad_norm = lr, _finite(grad_norm)
        self.epoch_throughput = _finite(throughput)
        val_loss = _finite(val.get("loss"))
        if val_loss is not None:
            self.val_loss.append((x, val_loss))
        if self.grad_norm is not None:
            self.grad_norms.append((x, self.grad_norm))
        for name, value in val.items():
            number = _finite(value)
            if name.startswith("metric_") and number is not None:
                self.val_metrics.setdefault(name, deque(maxlen=self.val_loss.maxlen)).append((x, number))
        if improved:
            self.best_epoch = epoch
        self.best_val_loss = _finite(best_val_loss)
        self.epoch, self.step, self.samples = epoch + 1, 0, 0
        self._window = (0.0, 0)
        self._epoch_started_at = self.clock()

    def end(self, status: str, stop_reason: str, summary: Mapping) -> None:
        """The run is over: freeze the clocks and keep the loop's summary."""
        self.set_paused(False)
        self._ended_at = self.clock()
        self.status, self.stop_reason, self.summary = status, stop_reason, dict(summary)
        if summary.get("best_epoch") is not None:
            self.best_epoch = int(summary["best_epoch"])
        if summary.get("best_val_loss") is not None:
            self.best_val_loss = _finite(summary["best_val_loss"])

    # -- user controls ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step (the loop writes checkpoints and facts, then ends STOPPED)."""
        self.stop_requested = True
        self.set_paused(False)
        self.status = "stopping"

    def set_paused(self, paused: bool) -> None:
        """Pause or resume; paused time does not count towards the ETA's rate."""
        now = self.clock()
        if paused and not self.paused:
            self._paused_at = now
            self.status = "paused"
        elif not paused and self.paused:
            self._paused_total += now - (self._paused_at if self._paused_at is not None else now)
            self._paused_at = None
            if self.status == "paused":
                self.status = "running"
        self.paused = paused

    def toggle_pause(self) -> None:
        """Space bar / Pause button: pause when running, resume when paused."""
        if not self.stop_requested:
            self.set_paused(not self.paused)

    # -- derived numbers -------------------------------------------------------------------
    def position(self) -> float:
        """How far training is, in epochs (3.5: halfway through the fourth epoch)."""
        fraction = self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        return self.epoch + min(fraction, 1.0)

    def active_elapsed_s(self) -> float:
        """Seconds since the start, pauses excluded."""
        if self._started_at is None:
            return 0.0
        now = self.clock() if self._ended_at is None else self._ended_at
        paused = self._paused_total + (now - self._paused_at if self._paused_at is not None else 0.0)
        return max(now - self._started_at - paused, 0.0)

    def epoch_fraction(self) -> float:
        """Epochs done as a fraction of all (a resumed run counts its earlier epochs as done)."""
        return min(self.position() / self.epochs, 1.0) if self.epochs else 0.0

    def step_fraction(self) -> float:
        """Batches done in the current epoch as a fraction of the epoch."""
        return min(self.step / self.steps_per_epoch, 1.0) if self.steps_per_epoch else 0.0

    def eta_s(self) -> Optional[float]:
        """Seconds left for the whole run, from the steps done in this session and the time they took."""
        total = (self.epochs - self.start_epoch) * self.steps_per_epoch
        done = (self.epoch - self.start_epoch) * self.steps_per_epoch + self.step
        elapsed = self.active_elapsed_s()
        if done <= 0 or elapsed <= 0 or total <= 0:
            return None
        return max(total - done, 0) * elapsed / done

    def epoch_eta_s(self) -> Optional[float]:
        """Seconds left in the current epoch's training pass, at the whole run's rate."""
        done = (self.epoch - self.start_epoch) * self.steps_per_epoch + self.step
        elapsed = self.active_elapsed_s()
        if done <= 0 or elapsed <= 0 or not self.steps_per_epoch:
            return None
        return max(self.steps_per_epoch - self.step, 0) * elapsed / done

    def samples_per_s(self) -> Optional[float]:
        """Live training throughput of the current epoch; the last epoch's figure before its first sync."""
        if self.samples and self._epoch_started_at is not None:
            seconds = self.clock() - self._epoch_started_at
            if self._paused_at is not None and self._paused_at >= self._epoch_started_at:
                seconds -= self.clock() - self._paused_at
            if seconds > 0:
                return self.samples / seconds
        return self.epoch_throughput

    def current_loss(self) -> Optional[float]:
        """The newest training-loss window (None before the first sync)."""
        return self.train_raw[-1][1] if self.train_raw else None

    def smoothed_loss(self) -> Optional[float]:
        """The newest EMA-smoothed training loss."""
        return self.train_smooth[-1][1] if self.train_smooth else None

    def stats(self) -> list[tuple[str, str]]:
        """The stats panel as (label, value) rows, shared by every renderer."""
        rows = [("train loss", _fmt(self.current_loss())), ("smoothed", _fmt(self.smoothed_loss())),
                ("val loss", _fmt(self.val.get("loss")))]
        best = _fmt(self.best_val_loss)
        # Epochs count from 0, as in the facts, best_epoch and the reports.
        rows.append(("best val", best if self.best_epoch is None else f"{best} (epoch {self.best_epoch})"))
        metrics = sorted({*self.running, *self.val} - {"loss"})
        for name in (m for m in metrics if m.startswith("metric_")):
            label = name[len("metric_"):]
            train, val = self.running.get(name, self.train_epoch.get(name)), self.val.get(name)
            rows.append((label, f"{_fmt(train)} / {_fmt(val)} val" if val is not None else _fmt(train)))
        rows.append(("grad norm", _fmt(self.grad_norm)))
        rate = self.samples_per_s()
        rows.append(("samples/s", "--" if rate is None else f"{rate:,.0f}"))
        rows.append(("lr", "--" if self.lr is None else f"{self.lr:.2e}"))
        rows.extend(_gpu_rows(self.gpu))
        rows.append(("elapsed", format_duration(self.active_elapsed_s())))
        rows.append(("ETA", format_duration(self.eta_s()) if self.status in ("running", "paused") else "--"))
        return rows


def _fmt(value: object) -> str:
    """A metric for the stats panel: 4 significant decimals, "--" when missing."""
    number = _finite(value)
    if number is None:
        return "--"
    return f"{number:.4f}" if abs(number) < 1e4 else f"{number:.4g}"


def _gpu_rows(gpu: Optional[dict]) -> list[tuple[str, str]]:
    """GPU util / power / VRAM / temperature rows from the telemetry sampler's latest reading."""
    if not gpu:
        return []
    rows = []
    util, power, temp = _finite(gpu.get("util_pct")), _finite(gpu.get("power_w")), _finite(gpu.get("temp_c"))
    used, total = _finite(gpu.get("mem_used_mb")), _finite(gpu.get("mem_total_mb"))
    rows.append(("GPU util", "--" if util is None else f"{util:.0f} %"))
    rows.append(("GPU power", "--" if power is None else f"{power:.0f} W"))
    if used is not None:
        rows.append(("VRAM", f"{used / 1024:.1f} / {total / 1024:.1f} GiB" if total else f"{used / 1024:.1f} GiB"))
    rows.append(("GPU temp", "--" if temp is None else f"{temp:.0f} °C"))
    return rows
