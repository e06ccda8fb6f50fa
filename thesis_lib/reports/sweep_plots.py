"""Figure helpers the report figures share: per-epoch curves, heatmap grids, scatter with Pareto fronts, boxplots.

The sweep analyses draw with all of them; the run report's curves.png draws its per-epoch
train/val lines with `plot_run_curves` too. Figures are `figure_io` figures (no pyplot) and are
saved through its atomic `save_figure`.

Log axes get `ReadableLogLocator` ticks with plain labels ("0.9", "1", "1.2"; "10", "100", "1,000"),
as many as fit without touching: matplotlib's default labels minor ticks as "2×10^0" on a narrow
range and crowds them into each other. `save_figure` applies this to every log axis it finds (an
analysis may switch a scale to log after drawing) and thins any labels that still collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .. import figure_io

__all__ = [
    "FigureStyle",
    "new_figure",
    "save_figure",
    "category_colors",
    "plot_run_curves",
    "plot_heatmap",
    "pareto_front",
    "plot_pareto",
    "plot_boxplot",
    "annotate_empty",
    "ReadableLogLocator",
    "set_log_scale",
    "tidy_log_axes",
    "overlapping_tick_labels",
]


@dataclass
class FigureStyle:
    """Size and resolution of the report figures."""

    width: float = 7.0
    height: float = 4.5
    dpi: int = 110


def new_figure(style: FigureStyle, *, ncols: int = 1, width: float | None = None, height: float | None = None):
    """A Figure with `ncols` axes side by side; returns (fig, axes) with axes a list."""
    fig = figure_io.new_figure(width or style.width * (1 if ncols == 1 else 0.75 * ncols), height or style.height)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig: Figure, figures_dir: str | Path, name: str, style: FigureStyle) -> Path:
    """Write `figure-<name>.png` into `figures_dir` (created if missing, the file replaced atomically); returns its path.

    Every log axis gets readable ticks first (`tidy_log_axes`).
    """
    tidy_log_axes(fig, dpi=style.dpi)
    return figure_io.save_figure(fig, Path(figures_dir) / f"figure-{name}.png", dpi=style.dpi)


def category_colors(values: Iterable[Any]) -> dict[Any, Any]:
    """A stable colour per distinct value (sorted by their text), from tab10 then tab20."""
    distinct = sorted({v for v in values}, key=lambda v: (str(type(v)), str(v)))
    palette = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    return {value: palette(i % palette.N) for i, value in enumerate(distinct)}


def plot_run_curves(
    ax: Any,
    curves: Sequence[tuple[Any, np.ndarray, np.ndarray]],
    colors: Mapping[Any, Any],
    *,
    xlabel: str,
    ylabel: str | None = None,
    legend_title: str | None = None,
    log_y: bool = False,
    legend: bool = True,
) -> None:
    """One line per run (or per split of one run), coloured by its category; one legend entry per category.

    Args:
        ax: the axes to draw on.
        curves: (category, x, y) per line, e.g. (tokenizer, epochs, val loss) or ("train", epochs, loss).
        colors: category -> colour (see `category_colors`).
        xlabel, ylabel: axis labels (no y label when None); "epoch" gets integer ticks.
        legend_title: title of the category legend.
        log_y: log-scale the y axis when every value is positive and they span a decade or more.
        legend: draw the legend now (False: the caller adds lines and draws it).
    """
    seen = set()
    for category, x, y in curves:
        label = None if category in seen else str(category)
        seen.add(category)
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.3, alpha=0.85, color=colors.get(category), label=label)
    if not curves:
        annotate_empty(ax, "no per-epoch rows in these runs")
        return
    finite = np.concatenate([np.asarray(y, dtype=float) for _, _, y in curves])
    finite = finite[np.isfinite(finite)]
    # A log axis only helps when the values span a decade; below that it just garbles the tick labels.
    if log_y and finite.size and finite.min() > 0 and finite.max() / finite.min() >= 10:
        set_log_scale(ax.yaxis)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(title=legend_title, fontsize="small")


def plot_heatmap(fig: Figure, ax: Any, table: pd.DataFrame, *, label: str, counts: pd.DataFrame | None = None) -> None:
    """A grid of values (rows: index, columns: columns) with each cell's value written in it.

    Args:
        fig: the figure (for the colour bar).
        ax: the axes.
        table: the values; NaN cells (no run at that grid point) are left blank and marked.
        label: the colour bar's label.
        counts: runs per cell, written under each value when given.
    """
    values = table.to_numpy(dtype=float)
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(table.shape[1]), [_tick(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [_tick(i) for i in table.index])
    ax.set_xlabel(str(table.columns.name or ""))
    ax.set_ylabel(str(table.index.name or ""))
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            value = values[i, j]
            if not np.isfinite(value):
                ax.text(j, i, "no run", ha="center", va="center", fontsize="small", color="grey")
                continue
            text = f"{value:.4g}"
            if counts is not None:
                text += f"\n(n={int(counts.iloc[i, j])})"
            # viridis_r is dark at the high end: pick the text colour that stays readable
            color = "white" if value > middle else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color=color)


def pareto_front(x: Sequence[float], y: Sequence[float], *, maximize_x: bool = False) -> np.ndarray:
    """Which points are non-dominated when y is minimised and x minimised (or maximised).

    A point is dominated when another is at least as good on both axes and better on one.
    Points with a NaN coordinate are never on the front; duplicates of a front point all are.

    Args:
        x: first objective per point.
        y: second objective per point (lower is better).
        maximize_x: treat larger x as better (e.g. compression ratio).

    Returns:
        Boolean mask, True for points on the front.
    """
    xs = np.asarray(x, dtype=float) * (-1.0 if maximize_x else 1.0)
    ys = np.asarray(y, dtype=float)
    valid = np.isfinite(xs) & np.isfinite(ys)
    front = np.zeros(xs.shape, dtype=bool)
    for i in np.flatnonzero(valid):
        no_worse = valid & (xs <= xs[i]) & (ys <= ys[i])
        better = (xs < xs[i]) | (ys < ys[i])
        front[i] = not np.any(no_worse & better)
    return front


def plot_pareto(
    ax: Any,
    x: Sequence[float],
    y: Sequence[float],
    categories: Sequence[Any],
    colors: Mapping[Any, Any],
    *,
    xlabel: str,
    ylabel: str,
    maximize_x: bool = False,
    legend_title: str | None = None,
    log_x: bool = False,
    log_y: bool = False,
) -> np.ndarray:
    """Scatter every point by category and highlight the Pareto front (ringed, joined by a step line).

    `log_x` / `log_y` put that axis on a log scale with readable ticks (`set_log_scale`).

    Returns:
        The front mask (see `pareto_front`).
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    front = pareto_front(xs, ys, maximize_x=maximize_x)
    for category in dict.fromkeys(categories):
        mask = np.array([c == category for c in categories], dtype=bool)
        ax.scatter(xs[mask], ys[mask], s=36, color=colors.get(category), label=str(category), zorder=3)
    if front.any():
        order = np.argsort(xs[front])
        # the staircase bounding what the front dominates
        ax.step(xs[front][order], ys[front][order], where="pre" if maximize_x else "post", color="black",
                linewidth=1, alpha=0.6, zorder=2)
        ax.scatter(xs[front], ys[front], s=130, facecolors="none", edgecolors="black", linewidths=1.3,
                   label="Pareto front", zorder=4)
    if log_x:
        set_log_scale(ax.xaxis)
    if log_y:
        set_log_scale(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(title=legend_title, fontsize="small")
    return front


def plot_boxplot(ax: Any, groups: Mapping[str, Sequence[float]], *, ylabel: str, xlabel: str = "") -> None:
    """A box per group with its individual values drawn over it (sweeps have few seeds per group)."""
    labels = list(groups)
    data = [np.asarray(groups[label], dtype=float) for label in labels]
    data = [values[np.isfinite(values)] for values in data]
    ax.boxplot(data, tick_labels=labels)
    for position, values in enumerate(data, start=1):
        jitter = np.linspace(-0.08, 0.08, values.size) if values.size > 1 else np.zeros(values.size)
        ax.scatter(position + jitter, values, s=18, color="black", alpha=0.7, zorder=3)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="y")
    ax.tick_params(axis="x", labelrotation=20)


def annotate_empty(ax: Any, message: str) -> None:
    """Replace an axes' content by a sentence saying why there is nothing to plot."""
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])


def _tick(value: Any) -> str:
    """Axis tick text: floats compact."""
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- log axes with readable ticks ---------------------------------------------------------------------

_CHAR_EM = 0.65  # width of a tick-label character in ems (DejaVu Sans digits are 0.64)
_GAP_EM = 1.0  # free space kept between two labels, in ems
_MIN_LOG = 1e-300


class ReadableLogLocator(LogLocator):
    """Major ticks of a log axis whose plain labels fit the axis without touching.

    Over less than a decade: round linear steps (0.9, 1, 1.1, 1.2). Over more: the densest of
    1..9 x 10^k, 1-2-5 x 10^k, every decade, every 2nd, 3rd... decade whose labels fit, judged
    from the axis's length in pixels, the label font and each label's text. At least two ticks
    where the view holds two candidates. `max_ticks` caps the count (`tidy_log_axes` lowers it
    when measured labels still collide).
    """

    def __init__(self, max_ticks: int = 12) -> None:
        super().__init__(base=10.0, subs=(1.0,), numticks=max_ticks)
        self.max_ticks = max_ticks

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        lo, hi = sorted((float(vmin), float(vmax)))
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= 0:
            return np.array([])
        if lo <= 0:  # a view reaching zero or below (set by hand): show the top dozen decades
            lo = max(hi * 1e-12, _MIN_LOG)
        if hi <= lo:
            return np.array([lo])
        fits = self._fits(lo, hi)
        candidates = self._candidates(lo, hi)
        usable = [ticks for ticks in candidates if 2 <= len(ticks) <= self.max_ticks]
        for ticks in usable:
            if fits(ticks):
                return ticks
        if usable:  # nothing fits (a tiny axis): the sparsest with two ticks
            return min(usable, key=len)
        return min(candidates, key=len) if candidates else np.array([lo, hi])

    def _candidates(self, lo: float, hi: float) -> list[np.ndarray]:
        """Tick sets inside [lo, hi], densest first."""
        def inside(ticks: np.ndarray) -> np.ndarray:
            return ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]

        if hi / lo < 10:  # under a decade the axis is nearly linear: round linear steps read best
            sets = []
            for nbins in range(9, 0, -1):
                ticks = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                ticks = inside(ticks[ticks > 0])
                if not sets or len(ticks) != len(sets[-1]):
                    sets.append(ticks)
            return sets
        first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
        decades = 10.0 ** np.arange(first, last + 1)
        sets = [inside(np.outer(decades, np.arange(1, 10)).ravel()), inside(np.outer(decades, [1, 2, 5]).ravel())]
        for every in range(1, max(2, last - first + 1)):
            exponents = np.arange(first, last + 1)
            exponents = exponents[exponents % every == 0]
            sets.append(inside(10.0 ** exponents))
        return [ticks for ticks in sets if len(ticks)]

    def _fits(self, lo: float, hi: float):
        """A test whether a tick set's labels keep apart on this axis (always True without one to measure)."""
        axis = self.axis
        axes = getattr(axis, "axes", None)
        if axes is None or axes.figure is None:
            return lambda ticks: True
        horizontal = axis.axis_name == "x"
        length = axes.bbox.width if horizontal else axes.bbox.height
        if not np.isfinite(length) or length <= 0:
            return lambda ticks: True
        font_px = _tick_font_points(axis) * axes.figure.dpi / 72.0
        formatter = axis.get_major_formatter()
        span = np.log10(hi) - np.log10(lo)

        def fits(ticks: np.ndarray) -> bool:
            positions = (np.log10(ticks) - np.log10(lo)) / span * length
            if horizontal:
                sizes = np.array([max(1, len(_label_text(formatter, t))) * _CHAR_EM * font_px for t in ticks])
            else:
                sizes = np.full(len(ticks), 1.2 * font_px)
            needed = (sizes[1:] + sizes[:-1]) / 2 + _GAP_EM * font_px
            return bool(np.all(np.diff(positions) >= needed))

        return fits


def _label_text(formatter: Any, value: float) -> str:
    """A tick label's text as the axis would write it (plain text for anything else)."""
    return plain_number(value) if not isinstance(formatter, FuncFormatter) else str(formatter(value, None))


def _tick_font_points(axis: Axis) -> float:
    """The size of an axis's major tick labels in points."""
    return float(axis.get_major_ticks(1)[0].label1.get_fontsize())


def plain_number(value: float, pos: Any = None) -> str:
    """A tick label without scientific notation from 0.001 to 999,999 (0.05, 1, 1.2, 1,000); else 1e-5, 2.5e7."""
    if value == 0 or not np.isfinite(value):
        return "0" if value == 0 else str(value)
    if 1e-3 <= abs(value) < 1e6:
        return format(value, ",.6g")
    mantissa, exponent = format(value, ".2e").split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def set_log_scale(axis: Axis) -> None:
    """Put one axis (ax.xaxis / ax.yaxis) on a log scale with readable, non-overlapping tick labels.

    Major ticks from `ReadableLogLocator` with plain labels; unlabelled minor ticks at 2..9 x 10^k
    when the view spans a decade or more, none on a narrower one (they would sit between the
    linear steps at odd places).
    """
    getattr(axis.axes, f"set_{axis.axis_name}scale")("log")
    _readable_log_ticks(axis)


def _readable_log_ticks(axis: Axis) -> None:
    """Install the readable locator and formatters on an axis already on a log scale."""
    axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_locator(_MinorLogLocator())
    axis.set_minor_formatter(NullFormatter())


class _MinorLogLocator(LogLocator):
    """Unlabelled 2..9 x 10^k ticks over a decade or more; none over less."""

    def __init__(self) -> None:
        super().__init__(base=10.0, subs=np.arange(2, 10), numticks=100)

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        lo, hi = sorted((float(vmin), float(vmax)))
        if lo <= 0 or hi / lo < 10 or np.log10(hi / lo) > 12:
            return np.array([])
        return super().tick_values(lo, hi)


def overlapping_tick_labels(axis: Axis) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty major tick labels of `axis` whose drawn boxes overlap.

    The figure must have been drawn (`fig.canvas.draw()`, `fig.draw_without_rendering()`) at the
    resolution that matters.
    """
    lo, hi = sorted(axis.get_view_interval())
    span = hi - lo
    boxes = []
    for loc, label in zip(axis.get_majorticklocs(), axis.get_ticklabels()):
        if not label.get_visible() or not label.get_text().strip():
            continue
        if not lo - 1e-9 * abs(span) <= loc <= hi + 1e-9 * abs(span):
            continue
        boxes.append((label.get_text(), label.get_window_extent()))
    pairs = []
    for i, (text_a, box_a) in enumerate(boxes):
        for text_b, box_b in boxes[i + 1:]:
            if box_a.overlaps(box_b):
                pairs.append((text_a, text_b))
    return pairs


def tidy_log_axes(fig: Figure, dpi: float | None = None) -> None:
    """Give every log axis of `fig` readable ticks, then thin or tilt the labels of any that still overlap.

    A log axis that does not have them yet (e.g. `ax.set_xscale("log")` after `plot_pareto`) gets
    `ReadableLogLocator` ticks with plain labels. Then the figure is laid out at `dpi` (the
    resolution it will be saved at; nothing is written) and each axis's measured label boxes are
    checked: overlapping ones lose ticks (x labels are tilted once two are all that is left).
    Linear axes are left alone.
    """
    axes = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) if axis.get_scale() == "log"]
    if not axes:
        return
    for axis in axes:
        if not isinstance(axis.get_major_locator(), ReadableLogLocator):
            _readable_log_ticks(axis)
    original_dpi = fig.dpi
    if dpi is not None:
        fig.set_dpi(dpi)
    try:
        for _ in range(12):
            fig.draw_without_rendering()  # lays out and measures at fig.dpi, on any canvas, writing nothing
            crowded = [axis for axis in axes if overlapping_tick_labels(axis)]
            if not crowded:
                return
            for axis in crowded:
                locator = axis.get_major_locator()
                shown = len(axis.get_majorticklocs())
                if locator.max_ticks > 2 and shown > 2:
                    locator.max_ticks = min(locator.max_ticks, shown) - 1
                elif axis.axis_name == "x":
                    axis.set_tick_params(labelrotation=30)
                    for label in axis.get_ticklabels():
                        label.set_horizontalalignment("right")
    finally:
        fig.set_dpi(original_dpi)
