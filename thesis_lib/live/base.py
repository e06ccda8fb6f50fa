"""The Dashboard protocol the training loop calls, a throttled base class, and the wrapper that keeps errors out of training.

Dashboards follow fastprogress's rules: they throttle themselves by time, degrade to plain text
when the richer display cannot work here, and never raise into training: `make_dashboard` wraps
every dashboard in a SafeDashboard, so that an exception in it costs one warning and switches it off.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Callable, Optional, Protocol, runtime_checkable

from .state import DashboardState

__all__ = [
    "Dashboard",
    "DashboardWarning",
    "LiveDashboard",
    "SafeDashboard",
    "ipython_kernel_shell",
    "DASHBOARD_METHODS",
]

PAUSE_POLL_S = 0.1  # while paused: how often UI input is processed
DASHBOARD_METHODS = ("on_start", "on_sync", "on_epoch_end", "control", "on_end", "close")


class DashboardWarning(UserWarning):
    """A dashboard failed or could not start; training goes on without it (or with plain text)."""


@runtime_checkable
class Dashboard(Protocol):
    """What the training loop calls. Implementations must be cheap: see `LiveDashboard`."""

    owns_console: bool  # True: the loop stops echoing its per-epoch lines (they still reach the log)

    def on_start(self, info: dict) -> None: ...

    def on_sync(self, epoch: int, batch: int, steps_per_epoch: int, metrics: dict, samples: int, lr: float,
                gpu: Optional[dict]) -> None: ...

    def on_epoch_end(self, epoch: int, train: dict, val: dict, lr: float, grad_norm: Optional[float],
                     throughput: float, resources: dict, best_val_loss: float, improved: bool) -> None: ...

    def control(self) -> str: ...

    def on_end(self, status: str, stop_reason: str, summary: dict) -> None: ...

    def close(self) -> None: ...


class LiveDashboard:
    """Base for the widget and terminal dashboards: state updates, time-throttled renders, pause/stop.

    Subclasses implement `_render` (draw the state), `_poll_input` (process pending key presses or
    button clicks) and optionally `_begin` / `_finish` / `_leave_picture`. The loop calls `control()`
    after every step: it costs one clock read until the next poll is due.
    """

    owns_console = True

    def __init__(self, *, update_interval_ms: int = 250, max_history: int = 500,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        self.interval_s = max(update_interval_ms, 1) / 1000.0
        self.state = DashboardState(max_history=max_history, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._next_render = 0.0
        self._next_poll = 0.0
        self._steps = 0  # control() calls this epoch = batches done: moves the step bar between syncs
        self.renders = 0

    # -- the loop's hooks ------------------------------------------------------------------
    def on_start(self, info: dict) -> None:
        self.state.start(info)
        self._begin()
        self._render_now()

    def on_sync(self, epoch: int, batch: int, steps_per_epoch: int, metrics: dict, samples: int, lr: float,
                gpu: Optional[dict]) -> None:
        self.state.sync(epoch, batch, steps_per_epoch, metrics, samples, lr, gpu)
        now = self._clock()
        if now >= self._next_render:
            self._render_now(now)

    def on_epoch_end(self, epoch: int, train: dict, val: dict, lr: float, grad_norm: Optional[float],
                     throughput: float, resources: dict, best_val_loss: float, improved: bool) -> None:
        self.state.epoch_end(epoch, train, val, lr, grad_norm, throughput, best_val_loss, improved)
        self._steps = 0
        self._poll_input()  # clicks made during validation show now; they act at the next step
        self._render_now()

    def control(self) -> str:
        self._steps += 1
        now = self._clock()
        # A Pause clicked during validation (seen by on_epoch_end) must hold the very next step,
        # not the first one after the poll interval: the widget already shows "Resume".
        if now < self._next_poll and not self.state.paused:
            return "stop" if self.state.stop_requested else "run"
        return self._poll(now)

    def on_end(self, status: str, stop_reason: str, summary: dict) -> None:
        self.state.end(status, stop_reason, summary)
        self._render_now()
        self._leave_picture()

    def close(self) -> None:
        self._finish()

    # -- machinery -------------------------------------------------------------------------
    def _poll(self, now: float) -> str:
        """Process UI input; block while paused; render when due. Returns "run" or "stop"."""
        self._next_poll = now + self.interval_s
        self.state.note_steps(self._steps)
        self._poll_input()
        if self.state.paused:
            self._wait_while_paused()
        if self.state.stop_requested:
            self._render_now()
            return "stop"
        if self._clock() >= self._next_render:
            self._render_now()
        return "run"

    def _wait_while_paused(self) -> None:
        """Block the training loop between two steps until Resume or Stop."""
        self._render_now()
        while self.state.paused and not self.state.stop_requested:
            self._sleep(PAUSE_POLL_S)
            self._poll_input()
        self._render_now()

    def _render_now(self, now: Optional[float] = None) -> None:
        self._next_render = (self._clock() if now is None else now) + self.interval_s
        self.renders += 1
        self._render()

    def _render(self) -> None:
        """Draw the current state."""

    def _poll_input(self) -> None:
        """Process pending user input (it sets `state.paused` / `state.stop_requested`)."""

    def _begin(self) -> None:
        """Take over the display (called from on_start)."""

    def _finish(self) -> None:
        """Give the display back; must be safe to call twice and before `_begin`."""

    def _leave_picture(self) -> None:
        """Leave a static picture of the final dashboard where the user will look for it."""


class SafeDashboard:
    """Wraps a dashboard so that it can never stop training.

    The first exception from any hook is reported as one DashboardWarning; the dashboard is then
    closed (a terminal is restored) and every later call does nothing (`control` answers "run").
    `on_disable`, when given, is called before the warning (the loop uses it to echo its lines
    again once nothing owns the console).
    """

    def __init__(self, inner: Dashboard, on_disable: Optional[Callable[[], None]] = None):
        self.inner = inner
        self.owns_console = bool(getattr(inner, "owns_console", False))
        self.disabled = False
        self._closed = False
        self._on_disable = on_disable

    def on_start(self, info: dict) -> None:
        self._call("on_start", info)

    def on_sync(self, epoch, batch, steps_per_epoch, metrics, samples, lr, gpu) -> None:
        self._call("on_sync", epoch, batch, steps_per_epoch, metrics, samples, lr, gpu)

    def on_epoch_end(self, epoch, train, val, lr, grad_norm, throughput, resources, best_val_loss, improved) -> None:
        self._call("on_epoch_end", epoch, train, val, lr, grad_norm, throughput, resources, best_val_loss, improved)

    def control(self) -> str:
        if self.disabled:
            return "run"
        try:
            return "stop" if self.inner.control() == "stop" else "run"
        except Exception as exc:  # noqa: BLE001 - a dashboard error never stops training
            self._disable("control", exc)
            return "run"

    def on_end(self, status: str, stop_reason: str, summary: dict) -> None:
        self._call("on_end", status, stop_reason, summary)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disabled:
            try:
                self.inner.close()
            except Exception as exc:  # noqa: BLE001
                self._disable("close", exc)

    def _call(self, name: str, *args) -> None:
        if self.disabled:
            return
        try:
            getattr(self.inner, name)(*args)
        except Exception as exc:  # noqa: BLE001 - a dashboard error never stops training
            self._disable(name, exc)

    def _disable(self, hook: str, exc: Exception) -> None:
        self.disabled = True
        if not self._closed:
            self._closed = True
            try:
                self.inner.close()
            except Exception:  # noqa: BLE001 - already failing; the warning below says so
                pass
        self.owns_console = False
        if self._on_disable is not None:
            try:
                self._on_disable()
            except Exception:  # noqa: BLE001
                pass
        warnings.warn(
            f"the {type(self.inner).__name__} dashboard failed in {hook} ({type(exc).__name__}: {exc}); "
            "it is switched off and training goes on",
            DashboardWarning,
            stacklevel=3,
        )


def ipython_kernel_shell():
    """The IPython shell when this process is a Jupyter kernel (ZMQInteractiveShell), else None.

    Looks at sys.modules first: a plain script never imports IPython just to find out.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001
        return None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell" or getattr(shell, "kernel", None) is None:
        return None
    return shell
