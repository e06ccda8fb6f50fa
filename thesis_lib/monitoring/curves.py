"""The curve families: losses, metrics, latency and lr per epoch, drawn from the TrainingHistory.

They read only the history (no model, no device), so they cost a few tens of milliseconds at an
epoch end, and each draw replaces figures/<family>.png: a run that crashes keeps its latest
curves. Each returns None while no epoch has finished.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .context import FamilySkipped, FigureContext, history_view
from ..figure_io import epoch_axis, log_scale_if_positive, new_figure, no_data

__all__ = ["losses_figure", "metrics_figure", "latency_figure", "lr_figure", "lr_cuts"]

_TRAIN, _VAL = "tab:orange", "tab:blue"
_PANELS_PER_ROW = 3


def lr_cuts(epochs: Sequence[int], lr: Sequence[float]) -> list[tuple[int, float]]:
    """(epoch, new / old) for every epoch whose learning rate is below the previous epoch's."""
    return [
        (epochs[i], lr[i] / lr[i - 1])
        for i in range(1, min(len(epochs), len(lr)))
        if lr[i - 1] > 0 and lr[i] < lr[i - 1]
    ]


def _mark_cuts(ax: Axes, cuts: list[tuple[int, float]], label: bool = False) -> None:
    """Dotted verticals at LR cuts; with label, each says by how much the LR was multiplied."""
    for epoch, ratio in cuts:
        ax.axvline(epoch, color="0.4", ls=":", lw=1)
        if label:
            ax.annotate(f"×{ratio:.3g}", (epoch, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="0.3")


def _epochs_or_none(ctx: FigureContext):
    """The history view, or None while no epoch has finished (nothing to draw yet)."""
    history = history_view(ctx.history)
    return history if history.epochs else None


def _series(history, split: str, name: str) -> Optional[list[float]]:
    """history.<split>[name] when its length matches the epochs (a partial series would misalign)."""
    values = getattr(history, split).get(name)
    return values if values is not None and len(values) == len(history.epochs) else None


def losses_figure(ctx: FigureContext) -> Optional[Figure]:
    """Train/val loss per epoch (log y when positive; best val starred, LR cuts dotted), and the
    loss parts (loss_recon, loss_tokens, ...) in a second panel, train solid and val dashed."""
    history = _epochs_or_none(ctx)
    if history is None:
        return None
    parts = sorted({k for split in ("train", "val") for k in getattr(history, split) if k.startswith("loss_")})
    # A part that is zero throughout (no globals, an identity bottleneck's commitment) says nothing.
    flat = [p for p in parts if not any(v for s in ("train", "val") for v in (_series(history, s, p) or []))]
    drawn = [p for p in parts if p not in flat]
    fig = new_figure(11 if parts else 6, 4)
    axes = fig.subplots(1, 2 if parts else 1, squeeze=False).ravel()
    ax, epochs, cuts = axes[0], history.epochs, lr_cuts(history.epochs, history.lr)
    plotted = []
    for split, color in (("train", _TRAIN), ("val", _VAL)):
        values = _series(history, split, "loss")
        if values is not None:
            ax.plot(epochs, values, marker="o", ms=3, color=color, label=split)
            plotted.append(values)
    val = _series(history, "val", "loss")
    finite = [(v, e) for e, v in zip(epochs, val or []) if math.isfinite(v)]
    if finite:
        best, best_epoch = min(finite)
        ax.plot([best_epoch], [best], marker="*", ms=13, ls="none", color=_VAL, label=f"best val (epoch {best_epoch})")
    if not plotted:
        no_data(ax, "no loss recorded")
    else:
        log_scale_if_positive(ax, plotted)
        _mark_cuts(ax, cuts)
        ax.legend(fontsize=8)
        epoch_axis(ax)
    ax.set_title("loss", loc="left", fontsize=11)
    if parts:
        _parts_panel(axes[1], history, drawn, flat, cuts)
    fig.suptitle(f"losses · {ctx.moment}", fontsize=11)
    return fig


def _parts_panel(ax: Axes, history, drawn: list[str], flat: list[str], cuts) -> None:
    """One colour per loss part; train solid, val dashed; the all-zero parts named in the title."""
    plotted = []
    for i, part in enumerate(drawn):
        color = f"C{i % 10}"
        for split, style in (("train", "-"), ("val", "--")):
            values = _series(history, split, part)
            if values is not None:
                ax.plot(history.epochs, values, style, marker=".", color=color,
                        label=f"{part.removeprefix('loss_')} ({split})")
                plotted.append(values)
    title = "loss parts (train solid, val dashed)"
    if flat:
        title += "\nzero throughout: " + ", ".join(p.removeprefix("loss_") for p in flat)
    ax.set_title(title, loc="left", fontsize=10)
    if not plotted:
        no_data(ax, "every loss part is zero")
        return
    log_scale_if_positive(ax, plotted)
    _mark_cuts(ax, cuts)
    ax.legend(fontsize=7, ncol=2)
    epoch_axis(ax)


def metrics_figure(ctx: FigureContext) -> Optional[Figure]:
    """One small panel per metric_* series (accuracy for classifiers, perplexity for vq), train and val.

    Raises:
        FamilySkipped: the history has epochs but no metric_* series (the model reports none).
    """
    history = _epochs_or_none(ctx)
    if history is None:
        return None
    names = sorted({k for split in ("train", "val") for k in getattr(history, split) if k.startswith("metric_")})
    if not names:
        raise FamilySkipped("metrics: the model reports no metric_* series; skipped")
    cols = min(len(names), _PANELS_PER_ROW)
    rows = math.ceil(len(names) / cols)
    fig = new_figure(3.8 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for split, color in (("train", _TRAIN), ("val", _VAL)):
            values = _series(history, split, name)
            if values is not None:
                last = values[-1]
                ax.plot(history.epochs, values, marker="o", ms=3, color=color, label=f"{split} (last {last:.4g})")
        ax.set_title(name.removeprefix("metric_"), loc="left", fontsize=10)
        ax.legend(fontsize=7)
        epoch_axis(ax)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"metrics · {ctx.moment}", fontsize=11)
    return fig


def latency_figure(ctx: FigureContext) -> Optional[Figure]:
    """Epoch wall time (s) and training throughput (samples/s) per epoch, each with its median."""
    history = _epochs_or_none(ctx)
    if history is None:
        return None
    fig = new_figure(11, 3.8)
    axes = fig.subplots(1, 2).ravel()
    panels = (("epoch time (s)", history.epoch_time_s, "tab:purple"),
              ("throughput (train samples/s)", history.throughput, "tab:green"))
    for ax, (title, values, color) in zip(axes, panels):
        ax.set_title(title, loc="left", fontsize=10)
        if len(values) != len(history.epochs) or not values:
            no_data(ax, "not recorded")
            continue
        ax.plot(history.epochs, values, marker="o", ms=3, color=color)
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            # The median, not the mean: a first epoch slowed by warm-up would drag the mean.
            median = float(np.median(finite))
            ax.axhline(median, color="0.4", ls="--", lw=1, label=f"median {median:.4g}")
            ax.legend(fontsize=8)
        ax.set_ylim(0, None)
        epoch_axis(ax)
    fig.suptitle(f"latency · {ctx.moment}", fontsize=11)
    return fig


def lr_figure(ctx: FigureContext) -> Optional[Figure]:
    """The learning rate each epoch ran with (steps, log y when positive), LR cuts marked with their factor."""
    history = _epochs_or_none(ctx)
    if history is None:
        return None
    fig = new_figure(6.5, 3.8)
    ax = fig.subplots()
    if len(history.lr) != len(history.epochs):
        ax.set_title("learning rate", loc="left", fontsize=10)
        no_data(ax, "not recorded")
    else:
        cuts = lr_cuts(history.epochs, history.lr)
        ax.set_title(f"learning rate · {len(cuts)} cut{'s' if len(cuts) != 1 else ''} · last {history.lr[-1]:.3g}",
                     loc="left", fontsize=10)
        ax.plot(history.epochs, history.lr, drawstyle="steps-post", marker="o", ms=3, color=_VAL)
        log_scale_if_positive(ax, [history.lr])
        _mark_cuts(ax, cuts, label=True)
        epoch_axis(ax)
    fig.suptitle(f"lr · {ctx.moment}", fontsize=11)
    return fig
