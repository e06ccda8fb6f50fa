"""Figure helpers the report figures share: per-epoch curves, heatmap grids, scatter with Pareto fronts, boxplots.

The sweep analyses draw with all of them; the run report's curves.png draws its per-epoch
train/val lines with `plot_run_curves` too. Figures are `figure_io` figures (no pyplot) and are
saved through its atomic `save_figure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
    """Write `figure-<name>.png` into `figures_dir` (created if missing, the file replaced atomically); returns its path."""
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
        ax.set_yscale("log")
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
) -> np.ndarray:
    """Scatter every point by category and highlight the Pareto front (ringed, joined by a step line).

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
