"""The full-screen terminal dashboard (curses): progress, loss graph, stats; q stops, space pauses.

The terminal is always given back: `close()` (which the loop calls in a `finally`) undoes every
mode it set, also after an error in training or in the dashboard itself, and then prints a few
plain lines summing up the run, since the full-screen picture vanishes with the alternate screen.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Sequence

from .base import LiveDashboard
from ..durations import format_duration
from .state import DashboardState, Point
from .text import header_text, summary_text

__all__ = ["TerminalDashboard", "bar", "column_graph", "sparkline"]

BLOCKS = " ▁▂▃▄▅▆▇█"  # eighths of a cell, bottom up (graph columns)
HBLOCKS = " ▏▎▍▌▋▊▉█"  # eighths of a cell, left to right (progress bars)
STATS_WIDTH = 34
FOOTER = " q: stop   space: pause/resume "


def bar(fraction: float, width: int, unicode: bool = True) -> str:
    """A progress bar of `width` cells, eighth-cell resolution when unicode."""
    width = max(width, 1)
    fraction = min(max(fraction, 0.0), 1.0)
    if not unicode:
        filled = int(round(fraction * width))
        return "#" * filled + "." * (width - filled)
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    return ("█" * full + (HBLOCKS[part] if part and full < width else "")).ljust(width, "·")[:width]


def _resample(values: Sequence[float], width: int) -> list[float]:
    """At most `width` values: the means of equal consecutive buckets."""
    if len(values) <= width:
        return list(values)
    buckets = []
    for i in range(width):
        chunk = values[i * len(values) // width:(i + 1) * len(values) // width]
        buckets.append(sum(chunk) / len(chunk))
    return buckets


def sparkline(values: Sequence[float], width: int, unicode: bool = True) -> str:
    """One line of block characters, auto-scaled to the values shown."""
    values = _resample(list(values), width)
    if not values:
        return ""
    low, high = min(values), max(values)
    chars = BLOCKS[1:] if unicode else "_.-=#"
    span = high - low
    return "".join(chars[int((v - low) / span * (len(chars) - 1)) if span else len(chars) // 2] for v in values)


def column_graph(train: Sequence[Point], val: Sequence[Point], width: int, height: int,
                 unicode: bool = True) -> list[str]:
    """The loss graph as `height` lines: smoothed train loss as columns, val loss per epoch as 'o'.

    Each line starts with an 8-character y label (top: max, bottom: min).
    """
    plot_w = max(width - 9, 4)
    values = _resample([y for _, y in train], plot_w)
    if values:  # few points: widen each to fill the plot, so train and val share one x axis
        values = [values[i * len(values) // plot_w] for i in range(plot_w)]
    x_low = train[0][0] if train else (val[0][0] if val else 0.0)
    x_high = train[-1][0] if train else (val[-1][0] if val else 1.0)
    shown_val = [(x, y) for x, y in val if x >= x_low]
    everything = values + [y for _, y in shown_val]
    if not everything:
        return ["".ljust(width) for _ in range(height)]
    low, high = min(everything), max(everything)
    if high == low:
        low, high = low - (abs(low) * 0.1 or 1.0), high + (abs(high) * 0.1 or 1.0)
    grid = [[" "] * plot_w for _ in range(height)]
    levels = height * 8
    for col, value in enumerate(values):
        eighths = max(int(round((value - low) / (high - low) * levels)), 1)
        for row in range(height):
            fill = min(max(eighths - row * 8, 0), 8)
            if fill:
                grid[height - 1 - row][col] = BLOCKS[fill] if unicode else ("#" if fill >= 4 else ".")
    for x, y in shown_val:
        col = int((x - x_low) / (x_high - x_low) * (plot_w - 1)) if x_high > x_low else plot_w - 1
        row = int(round((y - low) / (high - low) * (height - 1)))
        grid[height - 1 - min(max(row, 0), height - 1)][min(max(col, 0), plot_w - 1)] = "o"
    lines = []
    for index, cells in enumerate(grid):
        label = f"{high:8.4g}" if index == 0 else f"{low:8.4g}" if index == height - 1 else " " * 8
        lines.append(f"{label}│{''.join(cells)}" if unicode else f"{label}|{''.join(cells)}")
    return lines


class TerminalDashboard(LiveDashboard):
    """Full-screen curses dashboard for `thesis-lib train` on a TTY."""

    owns_console = True

    def __init__(self, *, update_interval_ms: int = 250, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(update_interval_ms=update_interval_ms, clock=clock, sleep=sleep)
        self._curses = None
        self._screen = None
        self._stream = sys.__stdout__  # the real terminal, also while the loop tees sys.stdout into its log
        encoding = (getattr(self._stream, "encoding", "") or "").lower().replace("-", "")
        self._unicode = encoding == "utf8"
        self._colors: dict[str, int] = {}

    def _begin(self) -> None:
        import curses

        self._curses = curses
        screen = curses.initscr()
        self._screen = screen
        try:
            curses.noecho()
            curses.cbreak()  # keys arrive one by one; Ctrl-C still interrupts (unlike raw mode)
            screen.keypad(True)
            screen.nodelay(True)
            try:
                curses.curs_set(0)
            except curses.error:  # terminals without cursor visibility control
                pass
            self._init_colors()
        except Exception:
            self._finish()
            raise

    def _init_colors(self) -> None:
        curses = self._curses
        if not curses.has_colors():
            return
        curses.start_color()
        try:
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        for index, (name, color) in enumerate(
                [("train", curses.COLOR_CYAN), ("val", curses.COLOR_YELLOW), ("ok", curses.COLOR_GREEN),
                 ("warn", curses.COLOR_RED)], start=1):
            curses.init_pair(index, color, background)
            self._colors[name] = curses.color_pair(index)

    def _finish(self) -> None:
        curses, screen = self._curses, self._screen
        if curses is None or screen is None:
            return
        self._screen = None
        for undo in (lambda: screen.keypad(False), curses.nocbreak, curses.echo, lambda: curses.curs_set(1)):
            try:
                undo()
            except Exception:  # noqa: BLE001 - restore as much as possible, endwin above all
                pass
        curses.endwin()
        if self.state.summary:
            self._stream.write(summary_text(self.state) + "\n")
            self._stream.flush()

    def _poll_input(self) -> None:
        screen = self._screen
        if screen is None:
            return
        while True:
            key = screen.getch()
            if key == -1:
                return
            if key in (ord("q"), ord("Q")):
                self.state.request_stop()
            elif key == ord(" "):
                self.state.toggle_pause()
            elif key == self._curses.KEY_RESIZE:
                self._curses.update_lines_cols()
                screen.clear()

    def _render(self) -> None:
        screen = self._screen
        if screen is None:
            return
        height, width = screen.getmaxyx()
        screen.erase()
        for row, col, text, attr in self._layout(self.state, width, height):
            self._put(row, col, text, width, attr)
        screen.refresh()

    def _put(self, row: int, col: int, text: str, width: int, attr: int = 0) -> None:
        try:
            self._screen.addstr(row, col, text[:max(width - col - 1, 0)], attr)
        except self._curses.error:  # off-screen after a resize: skip the line
            pass

    def _layout(self, state: DashboardState, width: int, height: int) -> list[tuple[int, int, str, int]]:
        """(row, column, text, attribute) for every piece of the screen."""
        curses, uni = self._curses, self._unicode
        status_attr = self._colors.get("warn" if state.status in ("paused", "stopping", "FAILED") else "ok", 0)
        running = state.status in ("running", "paused")
        eta = format_duration(state.eta_s()) if running else "--"
        epoch_eta = format_duration(state.epoch_eta_s()) if running else "--"
        bar_w = max(width - 44, 10)
        pieces = [
            (0, 0, f" {header_text(state)} ".ljust(width), curses.A_REVERSE | curses.A_BOLD),
            (2, 1, f"epochs {bar(state.epoch_fraction(), bar_w, uni)} {state.position():6.2f}/{state.epochs}"
                   f"  ETA {eta}", status_attr),
            (3, 1, f"steps  {bar(state.step_fraction(), bar_w, uni)} {state.step:>6}/{state.steps_per_epoch}"
                   f"  epoch ETA {epoch_eta}", status_attr),
            (5, 1, "loss (train smoothed: columns, val: o)", curses.A_BOLD),
        ]
        graph_w = max(width - STATS_WIDTH - 3, 20)
        extra = [("grad norm", state.grad_norms)]
        extra += [(f"val {name[len('metric_'):]}", points) for name, points in sorted(state.val_metrics.items())]
        graph_h = max(min(height - 9 - len(extra), 24), 3)
        graph = column_graph(list(state.train_smooth), list(state.val_loss), graph_w, graph_h, uni)
        pieces += [(6 + i, 1, text, self._colors.get("train", 0)) for i, text in enumerate(graph)]
        row = 6 + graph_h
        for label, points in extra:
            if points and row < height - 2:
                line = sparkline([y for _, y in points], max(graph_w - 24, 4), uni)
                pieces.append((row, 1, f"{label:>10} {line} {points[-1][1]:.4g}", self._colors.get("val", 0)))
                row += 1
        stats_col = graph_w + 3
        for index, (label, value) in enumerate(state.stats()):
            if 5 + index < height - 1:
                pieces.append((5 + index, stats_col, f"{label:>11}  {value}", 0))
        note = {"paused": "PAUSED: space resumes", "stopping": "stopping after this step"}.get(state.status, "")
        pieces.append((height - 1, 0, (FOOTER + (f"  {note}" if note else "")).ljust(width - 1), curses.A_REVERSE))
        return pieces
