"""telemetry.png (six panels on one time axis; loss, LR, process CPU % and RSS on a CPU run) and curves.png.

Figures are built with `matplotlib.figure.Figure` and its Agg canvas directly, not pyplot: no
global figure registry to leak into, no display backend needed, so this runs in a training
process, a papermill kernel or a headless CI job alike.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..figure_io import new_figure, save_figure
from ..layout import CURVES_FIGURE, TELEMETRY_FIGURE, TELEMETRY_FILE
from .report_data import RunReport
from .run_metrics import gpu_column
from .run_report import load_run_report
from .sweep_plots import plot_run_curves

__all__ = ["telemetry_figure", "curves_figure", "plot_telemetry", "plot_curves", "write_report_figures"]

TELEMETRY_PANELS = ("Training loss", "Learning rate", "VRAM (MB)", "GPU utilisation (%)", "Power (W)", "Temperature (°C)")
# Without GPU readings: the process's own readings take the GPU panels' place.
PROCESS_PANELS = ("Training loss", "Learning rate", "Process CPU (%, 100 = one core)", "Process memory, RSS (MB)")
_RAW, _SMOOTH, _VAL, _TORCH = "0.55", "tab:orange", "tab:blue", "tab:red"
_CPU, _RSS = "tab:green", "tab:purple"
_SPLIT_COLORS = {"train": _SMOOTH, "val": _VAL}
_DPI = 110


def telemetry_figure(report: RunReport) -> Figure:
    """Telemetry panels on a shared time axis, epoch ends marked by dotted lines.

    With GPU readings, six panels: loss (raw sync-point values in gray, an exponential moving
    average in orange, val loss per epoch as dots), learning rate, VRAM (NVML per GPU, torch's
    per-epoch peak as steps), GPU utilisation, power (rolling mean with the rolling min/max
    shaded) and temperature. Without them (a CPU run), loss and learning rate above the
    process's CPU % and resident memory (facts/telemetry.csv's cpu_pct and rss_mb), with why there
    is no GPU telemetry written under the panels; a run without those columns either has the two
    top panels only.

    Args:
        report: the run's RunReport.

    Returns:
        The figure (3 x 2 axes with GPUs, 2 x 2 or 1 x 2 without).
    """
    devices = report.gpu_devices()
    scale, unit = _time_scale(report)
    if devices:
        fig = new_figure(14, 10)
        axes = fig.subplots(3, 2, sharex=True).ravel()
        titles = TELEMETRY_PANELS
    else:
        process = [name for name in ("cpu_pct", "rss_mb") if _process_column(report, name) is not None]
        fig = new_figure(14, 7 if process else 4)
        axes = fig.subplots(2 if process else 1, 2, sharex=True, squeeze=False).ravel()
        titles = PROCESS_PANELS
    _loss_panel(axes[0], report, scale)
    _lr_panel(axes[1], report, scale)
    if devices:
        _gpu_lines(axes[2], report, devices, "mem_used_mb", scale)
        _torch_peaks(axes[2], report, scale)
        _gpu_lines(axes[3], report, devices, "util_pct", scale)
        axes[3].set_ylim(0, 105)
        _power_panel(axes[4], report, devices, scale)
        _gpu_lines(axes[5], report, devices, "temp_c", scale)
    else:
        if len(axes) > 2:
            _process_panel(axes[2], report, "cpu_pct", scale, _CPU, smooth=True)
            _process_panel(axes[3], report, "rss_mb", scale, _RSS, smooth=False)
        reason = (report.telemetry.warning or f"{TELEMETRY_FILE} has no GPU readings").rstrip(".")
        fig.supxlabel(textwrap.fill(f"No GPU telemetry: {reason}.", 150), fontsize=9, color="0.35")
    for ax, title in zip(axes, titles):
        ax.set_title(title, loc="left", fontsize=11)
        if ax.has_data():
            _epoch_marks(ax, report, scale)
            ax.grid(alpha=0.3)
    # Shared x: only the bottom row shows tick labels (a panel without data hid its own).
    for ax in axes[-2:]:
        ax.set_xlabel(f"time since start ({unit})")
        ax.tick_params(labelbottom=True)
    names = ", ".join(str(d.get("name")) for d in report.telemetry.devices if d.get("name")) or report.device or ""
    fig.suptitle(f"{report.run_id} · {report.status} · {names}".rstrip(" ·"), fontsize=12)
    return fig


def curves_figure(report: RunReport) -> Figure:
    """Train and val loss per epoch (best epoch starred, LR cuts dotted), plus one panel per val metric."""
    epochs = report.epochs
    metrics = [c[len("val_"):] for c in epochs.columns if c.startswith("val_metric_")][:3]
    fig = new_figure(6 + 4 * len(metrics), 4)
    axes = np.atleast_1d(fig.subplots(1, 1 + len(metrics)))
    ax = axes[0]
    ax.set_title("Loss per epoch", loc="left", fontsize=11)
    if epochs.empty:
        _no_data(ax, "no epoch has finished yet")
        return fig
    plot_run_curves(ax, _split_curves(epochs, "loss"), _SPLIT_COLORS, xlabel="epoch", legend=False)
    best = report.metrics.best_epoch
    if best is not None:
        ax.plot([best], [report.metrics.loss_best_val], marker="*", ms=14, color=_VAL, ls="none",
                label=f"best (epoch {best})")
    if "lr" in epochs:
        lr = epochs["lr"].astype(float)
        for epoch in lr.index[1:][lr.to_numpy()[1:] < lr.to_numpy()[:-1]]:
            ax.axvline(epoch, color="0.4", ls=":", lw=1)
    ax.legend(fontsize=8)
    for ax, metric in zip(axes[1:], metrics):
        plot_run_curves(ax, _split_curves(epochs, metric), _SPLIT_COLORS, xlabel="epoch", legend=False)
        ax.set_title(metric.removeprefix("metric_"), loc="left", fontsize=11)
        ax.legend(fontsize=8)
    for ax in axes:
        # Epochs are whole numbers: no "0.015" ticks on a short run, and a single epoch sits mid-axis.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xlim(epochs.index[0] - 1, epochs.index[0] + 1)
    return fig


def _split_curves(epochs: pd.DataFrame, name: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """("train" / "val", epochs, values) for the splits that recorded `name` ("loss" or "metric_<x>")."""
    curves = []
    for split in ("train", "val"):
        column = f"{split}_{name}"
        if column in epochs and epochs[column].notna().any():
            curves.append((split, epochs.index.to_numpy(), epochs[column].to_numpy(dtype=float)))
    return curves


def plot_telemetry(report_or_run_dir: Union[RunReport, str, Path], path: Union[str, Path]) -> Path:
    """Write telemetry.png (see `telemetry_figure`).

    Args:
        report_or_run_dir: a RunReport, or a run directory to load one from.
        path: the PNG to write (its folder is created).

    Returns:
        The path written.

    Raises:
        FactsError: a run directory whose facts cannot be read.
    """
    return save_figure(telemetry_figure(_as_report(report_or_run_dir)), path, dpi=_DPI)


def plot_curves(report_or_run_dir: Union[RunReport, str, Path], path: Union[str, Path]) -> Path:
    """Write curves.png (see `curves_figure`); arguments, return value and errors as `plot_telemetry`."""
    return save_figure(curves_figure(_as_report(report_or_run_dir)), path, dpi=_DPI)


def write_report_figures(report: RunReport, output_dir: Union[str, Path]) -> dict[str, Path]:
    """Write telemetry.png and curves.png into `output_dir`; returns {"telemetry": path, "curves": path}.

    A figure that cannot be drawn or written (odd facts, a full disk) is left out of the result and
    its reason kept in `report.figure_errors[key]`, so the report's section says why instead of failing.
    """
    output_dir = Path(output_dir)
    written = {}
    for key, plot, name in (("telemetry", plot_telemetry, TELEMETRY_FIGURE), ("curves", plot_curves, CURVES_FIGURE)):
        try:
            written[key] = plot(report, output_dir / name)
        except Exception as exc:  # a figure is never worth the report: any failure is recorded, not raised
            text = " ".join(str(exc).split())[:300]
            report.figure_errors[key] = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return written


def _loss_panel(ax: Axes, report: RunReport, scale: float) -> None:
    """Raw training loss in gray and its EMA in orange; per-epoch val loss as dots."""
    steps = report.steps_table
    if not steps.empty and {"t", "loss"} <= set(steps.columns):
        x, y, label = steps["t"].astype(float) / scale, steps["loss"].astype(float), "train (per sync point)"
    elif "train_loss" in report.epochs and "t" in report.epochs:
        epochs = report.epochs
        x, y, label = epochs["t"].astype(float) / scale, epochs["train_loss"].astype(float), "train (per epoch)"
    else:
        _no_data(ax, "no loss recorded yet")
        return
    ax.plot(x, y, color=_RAW, lw=1, marker="." if len(y) < 30 else None, label=label)
    span = int(np.clip(len(y) // 10, 2, 50))
    ax.plot(x, y.ewm(span=span, ignore_na=True).mean(), color=_SMOOTH, lw=2, label=f"smoothed (EMA, span {span})")
    if "val_loss" in report.epochs and "t" in report.epochs:
        ax.plot(report.epochs["t"] / scale, report.epochs["val_loss"], "o", color=_VAL, ms=4, label="val (per epoch)")
    ax.legend(fontsize=8)


def _lr_panel(ax: Axes, report: RunReport, scale: float) -> None:
    """The learning rate each sync point (or epoch) ran with, as steps."""
    steps, epochs = report.steps_table, report.epochs
    if not steps.empty and "lr" in steps and steps["lr"].notna().any():
        # One sync point draws no line: its marker shows the value.
        ax.plot(steps["t"] / scale, steps["lr"], drawstyle="steps-post", color=_VAL,
                marker="." if steps["lr"].notna().sum() == 1 else None)
    elif {"lr", "t"} <= set(epochs.columns) and epochs["lr"].notna().any():
        start = epochs["t"] - epochs.get("epoch_time_s", pd.Series(0.0, index=epochs.index)).fillna(0.0)
        x = np.column_stack([start, epochs["t"]]).ravel() / scale
        ax.plot(x, np.repeat(epochs["lr"].to_numpy(dtype=float), 2), color=_VAL)
    else:
        _no_data(ax, "no learning-rate facts")
        return
    ax.set_ylim(0, None)  # from zero, so a cut reads as the fraction it is
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def _gpu_lines(ax: Axes, report: RunReport, devices: list[int], name: str, scale: float) -> None:
    """One line per GPU of telemetry column gpu<i>_<name>; memory lines name each GPU's total in the label."""
    table = report.telemetry_table
    x = table["t"].astype(float) / scale
    for i in devices:
        values = gpu_column(table, i, name)
        if values is None:
            continue
        # The total goes in the label, not as a line: drawn, it would squash the usage near zero.
        total = gpu_column(table, i, "mem_total_mb") if name == "mem_used_mb" else None
        label = f"GPU {i}" + (f" (of {total.max():,.0f} MB)" if total is not None else "")
        ax.plot(x, values, lw=1.2, label=label)
    if len(devices) > 1 or name == "mem_used_mb":
        ax.legend(fontsize=8)


def _torch_peaks(ax: Axes, report: RunReport, scale: float) -> None:
    """torch.cuda.max_memory_allocated per epoch, drawn across each epoch's span."""
    epochs = report.epochs
    if not {"vram_peak_mb", "t"} <= set(epochs.columns) or not epochs["vram_peak_mb"].notna().any():
        return
    start = (epochs["t"] - epochs.get("epoch_time_s", pd.Series(0.0, index=epochs.index)).fillna(0.0)) / scale
    ax.hlines(epochs["vram_peak_mb"], start, epochs["t"] / scale, colors=_TORCH, lw=2, label="torch peak / epoch")
    ax.legend(fontsize=8)


def _power_panel(ax: Axes, report: RunReport, devices: list[int], scale: float) -> None:
    """Per GPU: the rolling mean of power, with the rolling min..max shaded around it."""
    table = report.telemetry_table
    x = table["t"].astype(float) / scale
    window = max(3, len(table) // 100)
    for i in devices:
        power = gpu_column(table, i, "power_w")
        if power is None:
            continue
        rolling = power.rolling(window, center=True, min_periods=1)
        line = ax.plot(x, rolling.mean(), lw=1.2, label=f"GPU {i} (mean of {window} samples)")[0]
        ax.fill_between(x, rolling.min(), rolling.max(), color=line.get_color(), alpha=0.25, lw=0)
    if ax.has_data():
        ax.legend(fontsize=8)


def _process_column(report: RunReport, name: str) -> pd.Series | None:
    """telemetry.csv's numeric column `name` (cpu_pct, rss_mb), or None when absent or empty."""
    table = report.telemetry_table
    if name not in table.columns or "t" not in table.columns:
        return None
    values = pd.to_numeric(table[name], errors="coerce")
    return values if values.notna().any() else None


def _process_panel(ax: Axes, report: RunReport, name: str, scale: float, color: str, *, smooth: bool) -> None:
    """The training process's own reading `name` over time; CPU % also as a rolling mean (it jumps sample to sample)."""
    values = _process_column(report, name)
    if values is None:
        _no_data(ax, f"no {name} samples in {TELEMETRY_FILE}")
        return
    x = report.telemetry_table["t"].astype(float) / scale
    if smooth and len(values) >= 5:
        window = max(3, len(values) // 100)
        ax.plot(x, values, color=_RAW, lw=0.8, label="per sample")
        ax.plot(x, values.rolling(window, center=True, min_periods=1).mean(), color=color, lw=1.8,
                label=f"mean of {window} samples")
        ax.legend(fontsize=8)
    else:
        ax.plot(x, values, color=color, lw=1.5, marker="." if len(values) < 30 else None)
    # From zero, so a level reads as the share it is, with room above the highest sample for the line.
    ax.set_ylim(0, max(float(values.max()) * 1.1, 1.0))


def _epoch_marks(ax: Axes, report: RunReport, scale: float) -> None:
    """A dotted vertical line at the end of every epoch."""
    if "t" in report.epochs:
        for t in report.epochs["t"].dropna():
            ax.axvline(float(t) / scale, color="0.7", ls=":", lw=0.8, zorder=0)


def _no_data(ax: Axes, message: str) -> None:
    """Replace a panel's axes by a centred message."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.35")
    # tick_params, not set_xticks([]): the panels share one x axis, and its locator with it.
    ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def _time_scale(report: RunReport) -> tuple[float, str]:
    """Seconds, or minutes for runs longer than ten minutes."""
    return (60.0, "min") if (report.duration_s or 0.0) > 600 else (1.0, "s")


def _as_report(value: Union[RunReport, str, Path]) -> RunReport:
    return value if isinstance(value, RunReport) else load_run_report(value)

