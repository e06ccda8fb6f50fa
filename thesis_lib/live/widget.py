"""The notebook dashboard: one ipywidgets VBox updated in place, and the kernel polling behind its buttons.

Why the buttons work while the cell trains. A Jupyter kernel runs one cell at a time: while
`train(cfg)` runs, the Pause/Stop clicks (comm messages) wait unread in the kernel's shell queue.
Two ways around that: train in a thread, or let the training loop process those messages between
steps. We poll, because a training thread would (1) move the CUDA work off the thread that created
the user's tensors and models, (2) take KeyboardInterrupt (the notebook's Interrupt button) away
from the training, since signals only reach the main thread, and (3) leave the cell finished while
training still mutates the user's model and notebook variables, so a next cell would race it.

How we poll: the idea of the jupyter-ui-poll package, without depending on it. ipykernel 7.4
has no Kernel.do_one_iteration, which jupyter-ui-poll calls; its ipykernel 7 support (1.1) swaps
the kernel's execute handler and disables the kernel's new shell lock, and users reported hung
cells with it. We need only widget messages, so `KernelPoller` touches no kernel handler or lock: it reads
the main shell's pending messages without blocking, runs widget messages (comm_msg) at once,
and hands every other message (a queued cell, a kernel_info request) back to the kernel's event
loop unchanged and in arrival order, to run after the training cell as it would have anyway.
The poll happens at most every `update_interval_ms`, from `control()`; with nothing pending it
costs one non-blocking recv.
"""

from __future__ import annotations

import html
import time
from typing import Callable, Optional

from .base import LiveDashboard, ipython_kernel_shell
from ..durations import format_duration
from .text import header_text, loss_chart_svg, small_charts_html, stats_table_html, summary_html, summary_text

__all__ = ["WidgetDashboard", "KernelPoller"]

_STATUS_STYLE = {"running": "info", "paused": "warning", "stopping": "danger", "COMPLETED": "success",
                 "STOPPED": "warning", "FAILED": "danger"}


class KernelPoller:
    """Processes the widget messages that reached this kernel while a cell runs (see the module doc).

    Args:
        kernel: the running ipykernel Kernel (`get_ipython().kernel`).

    Raises:
        AttributeError: the kernel lacks the pieces this relies on (an unknown ipykernel version).
    """

    def __init__(self, kernel):
        import zmq

        self._zmq = zmq
        self._kernel = kernel
        thread = getattr(kernel, "shell_channel_thread", None)
        if thread is not None:
            # ipykernel 7: a shell-channel thread forwards main-shell messages over an inproc pair.
            self._socket = thread.manager.get_shell_channel_to_subshell_pair(None).to_socket
            self._reply_stream = thread.manager.get_subshell_to_shell_channel_socket(None)
        else:
            self._socket = kernel.shell_stream.socket
            self._reply_stream = kernel.shell_stream
        if hasattr(kernel, "shell_main"):  # ipykernel 7
            self._requeue: Callable = lambda frames: kernel.io_loop.add_callback(kernel.shell_main, None, frames)
        else:  # ipykernel 6
            self._requeue = lambda frames: kernel.schedule_dispatch(kernel.dispatch_shell, frames)
        self._handler = kernel.shell_handlers["comm_msg"]
        self.handled = 0

    @classmethod
    def for_current_kernel(cls) -> Optional["KernelPoller"]:
        """A poller for this process's kernel; None outside a kernel or on an unsupported ipykernel."""
        shell = ipython_kernel_shell()
        if shell is None:
            return None
        try:
            return cls(shell.kernel)
        except Exception:  # noqa: BLE001 - buttons then wait for the cell; training is unaffected
            return None

    def __call__(self, max_messages: int = 50) -> int:
        """Handle up to `max_messages` pending messages; returns how many were widget messages."""
        handled = 0
        for _ in range(max_messages):
            try:
                frames = self._socket.recv_multipart(self._zmq.NOBLOCK, copy=False)
            except self._zmq.Again:
                break
            handled += self._dispatch(frames)
        self.handled += handled
        return handled

    def _dispatch(self, frames: list) -> int:
        """Run a comm_msg's handler now; give anything else back to the kernel, unchanged and in order."""
        session = self._kernel.session
        try:
            idents, parts = session.feed_identities(frames, copy=False)
            # content=False: a peek that does not record the signature, so a requeued message
            # still passes the kernel's duplicate-signature check.
            peek = session.deserialize(parts, content=False, copy=False)
            is_comm = peek["header"]["msg_type"] == "comm_msg"
        except Exception:  # noqa: BLE001 - e.g. ipykernel's one-frame "stop aborting" marker
            is_comm = False
        if not is_comm:
            self._requeue(frames)
            return 0
        msg = session.deserialize(parts, content=True, copy=False)
        kernel = self._kernel
        kernel._publish_status("busy", "shell", msg)
        try:
            self._handler(self._reply_stream, idents, msg)
        except Exception:  # noqa: BLE001 - someone's widget callback failed; the kernel logs it too
            kernel.log.error("exception in a widget message handler during training", exc_info=True)
        finally:
            # Frontends count a widget's unacknowledged state updates until this idle arrives.
            kernel._publish_status("idle", "shell", msg)
        return 1


class WidgetDashboard(LiveDashboard):
    """One widget: header, epoch/step progress with ETA, loss chart, stats, Pause/Resume and Stop.

    Args:
        update_interval_ms: the most often it redraws and processes button clicks.
        poller: called to process pending UI messages; default: a KernelPoller for this kernel
            (none outside a kernel: the widget still works, clicks come from `button.click()`).
        display: show the widget when the run starts (only inside a Jupyter kernel).
    """

    owns_console = True

    def __init__(self, *, update_interval_ms: int = 250, poller: Optional[Callable[[], object]] = None,
                 display: bool = True, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(update_interval_ms=update_interval_ms, clock=clock, sleep=sleep)
        import ipywidgets as w

        self._widgets = w
        self._poller = poller
        self._display = display
        self._handle = None
        self._chart_version = -1
        self.header = w.HTML()
        self.epoch_bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="epochs", bar_style="info")
        self.epoch_label = w.HTML()
        self.step_bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="steps", bar_style="info")
        self.step_label = w.HTML()
        self.chart = w.HTML()
        self.small_charts = w.HTML()
        self.stats = w.HTML()
        self.pause_button = w.Button(description="Pause", icon="pause", tooltip="pause between two steps")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip="finish this step, write checkpoints and facts, end STOPPED")
        self.pause_button.add_class("thesis-lib-pause")
        self.stop_button.add_class("thesis-lib-stop")
        self.pause_button.on_click(lambda _button: self._click_pause())
        self.stop_button.on_click(lambda _button: self._click_stop())
        self.widget = w.VBox([
            self.header,
            w.HBox([self.epoch_bar, self.epoch_label]),
            w.HBox([self.step_bar, self.step_label]),
            w.HBox([w.VBox([self.chart, self.small_charts]), self.stats]),
            w.HBox([self.pause_button, self.stop_button]),
        ])
        self.widget.add_class("thesis-lib-dashboard")

    # -- buttons (run inside the poller, between two training steps) ----------------------
    def _click_pause(self) -> None:
        self.state.toggle_pause()
        self._render()

    def _click_stop(self) -> None:
        self.state.request_stop()
        self._render()

    # -- LiveDashboard hooks --------------------------------------------------------------
    def _begin(self) -> None:
        if self._display and ipython_kernel_shell() is not None:
            from IPython.display import display

            self._handle = display(self.widget, display_id=True)
            if self._poller is None:
                self._poller = KernelPoller.for_current_kernel()

    def _poll_input(self) -> None:
        if self._poller is not None:
            self._poller()

    def _render(self) -> None:
        state = self.state
        self.header.value = f"<b>{html.escape(header_text(state))}</b>"
        self.epoch_bar.value = state.epoch_fraction()
        self.epoch_label.value = (f"{state.position():.2f} / {state.epochs} epochs · elapsed "
                                  f"{format_duration(state.active_elapsed_s())} · ETA {self._eta(state.eta_s())}")
        self.step_bar.value = state.step_fraction()
        self.step_label.value = (f"step {state.step} / {state.steps_per_epoch} of epoch {state.epoch}"
                                 f" ({min(state.epoch + 1, state.epochs)}/{state.epochs})"
                                 f" · epoch ETA {self._eta(state.epoch_eta_s())}")
        style = _STATUS_STYLE.get(state.status, "info")
        self.epoch_bar.bar_style = self.step_bar.bar_style = style
        if state.version != self._chart_version:  # between syncs only the progress moves
            self._chart_version = state.version
            self.chart.value = loss_chart_svg(state)
            self.small_charts.value = small_charts_html(state)
        self.stats.value = stats_table_html(state.stats())
        running = state.status in ("running", "paused")
        self.pause_button.description = "Resume" if state.paused else "Pause"
        self.pause_button.icon = "play" if state.paused else "pause"
        self.pause_button.disabled = not running
        self.stop_button.disabled = not running

    def _eta(self, seconds: Optional[float]) -> str:
        return format_duration(seconds) if self.state.status in ("running", "paused") else "--"

    def _leave_picture(self) -> None:
        """Swap the live widget for its static picture, so saved and exported notebooks keep it."""
        if self._handle is None:
            return
        self._handle.update({"text/html": summary_html(self.state), "text/plain": summary_text(self.state)}, raw=True)
        self._handle = None
        for child in self._all_widgets():
            child.close()

    def _finish(self) -> None:
        # Closed without on_end (the run broke before its end): buttons that do nothing would lie.
        if self._handle is not None:
            self.pause_button.disabled = self.stop_button.disabled = True

    def _all_widgets(self) -> list:
        """Every widget of the dashboard, containers last."""
        found, stack = [], [self.widget]
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(getattr(node, "children", ()))
        return found[::-1]
