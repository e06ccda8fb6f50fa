"""The inference figures of a sweep report: error distributions, per-model bars, AUROC comparison.

Every function takes an InferenceResult (or its ``to_dict()``, e.g. a loaded summary.json) and a
file path, writes one PNG and returns the path. Figures are built with matplotlib's object API
(``matplotlib.figure.Figure``), never pyplot: no global backend or figure state is touched, so
they work in notebooks, worker processes and headless machines alike. A figure with nothing to
show (e.g. no autoencoder run was evaluated) still gets written, saying so, so the report's
layout is the same whatever the runs were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..data.synthetic import ANOMALY_PROCESS
from ..errors import ConfigError
from ..figure_io import save_figure

__all__ = [
    "FIGURE_FILES",
    "plot_reconstruction_error_distributions",
    "plot_model_comparison_bars",
    "plot_auroc_comparison",
    "plot_inference_figures",
]

FIGURE_FILES: dict[str, str] = {
    "reconstruction_error_distributions": "figure-reconstruction_error_distributions.png",
    "model_comparison_bars": "figure-model_comparison_bars.png",
    "auroc_comparison": "figure-auroc_comparison.png",
}
_MAX_LEGEND = 12  # more models than this: lines stay, the legend would hide the plot
_DPI = 120
_ANOMALY_GROUP = f"{ANOMALY_PROCESS} vs rest"


def _summary(result: Any) -> dict:
    """The summary dict of an InferenceResult, or the dict itself."""
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def _models_of(summary: Mapping, task: str) -> dict[str, dict]:
    """{run_id: metrics} of the runs of one task."""
    return {run_id: m for run_id, m in summary.get("models", {}).items() if m.get("task") == task}


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG (atomically, creating the folder), cropped to what was drawn."""
    return save_figure(fig, path, dpi=_DPI, bbox_inches="tight")


def _empty(path: str | Path, title: str, message: str) -> Path:
    """A figure that says why there is nothing to plot."""
    fig = Figure(figsize=(6, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return _save(fig, path)


def plot_reconstruction_error_distributions(result: Any, per_event_scores: Mapping[str, pd.DataFrame] | None,
                                            path: str | Path) -> Path:
    """Per-event anomaly-score histograms: one panel for clean events, one per corruption, all models overlaid.

    Args:
        result: an InferenceResult or its to_dict().
        per_event_scores: {run_id: per-event DataFrame}; None takes result.per_event_scores.
        path: the PNG to write.

    Returns:
        `path`.
    """
    summary = _summary(result)
    if per_event_scores is None:
        per_event_scores = getattr(result, "per_event_scores", {})
    models = {r: m for r, m in _models_of(summary, "autoencoder").items() if r in per_event_scores}
    title = "Reconstruction error distributions"
    if not models:
        return _empty(path, title, "no autoencoder run with per-event scores was evaluated")
    score = summary.get("options", {}).get("anomaly_score", "mse")
    corruptions = list(summary.get("options", {}).get("corruptions", []))
    panels = [("clean", score)] + [(c, f"{score}_{c}") for c in corruptions]
    values = {r: {label: _positive(per_event_scores[r], column) for label, column in panels} for r in models}
    pooled = np.concatenate([v for per_run in values.values() for v in per_run.values()])
    # Log-spaced bins shared by every panel, so panels compare at a glance.
    low, high = np.percentile(pooled, [0.5, 99.9]) if len(pooled) else (1e-3, 1.0)
    bins = np.geomspace(max(low, 1e-8), max(high, low * 10, 1e-7), 40)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for ax, (label, _) in zip(axes.flat, panels):
        for run_id in models:
            v = values[run_id][label]
            if len(v):
                ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, histtype="step", density=True, label=run_id)
        ax.set_xscale("log")
        ax.set_title(label)
        ax.set_xlabel(f"per-event {score}")
        ax.set_ylabel("density")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    if len(models) <= _MAX_LEGEND:
        axes.flat[0].legend(fontsize="x-small")
    fig.suptitle(f"{title} ({summary.get('options', {}).get('dataset_split', '')} split)")
    return _save(fig, path)


def _positive(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Finite, positive values of a column (a log axis has no room for 0); empty when absent."""
    if column not in frame:
        return np.empty(0)
    v = frame[column].to_numpy(dtype=np.float64)
    return v[np.isfinite(v) & (v > 0)]


def plot_model_comparison_bars(result: Any, path: str | Path) -> Path:
    """Mean clean MSE per autoencoder (whisker up to its p95, dot at p50); accuracy per classifier.

    Args:
        result: an InferenceResult or its to_dict().
        path: the PNG to write.

    Returns:
        `path`.
    """
    summary = _summary(result)
    autoencoders, classifiers = _models_of(summary, "autoencoder"), _models_of(summary, "classifier")
    panels = [p for p in (("autoencoder", autoencoders), ("classifier", classifiers)) if p[1]]
    if not panels:
        return _empty(path, "Model comparison", "no run was evaluated")
    width = max(5.0, 0.45 * max(len(m) for _, m in panels) + 2)
    fig = Figure(figsize=(width, 3.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (task, models) in zip(axes, panels):
        names = list(models)
        x = np.arange(len(names))
        if task == "autoencoder":
            mean = np.array([_num(models[n]["mse"].get("mean")) for n in names])
            p95 = np.array([_num(models[n]["mse"].get("p95")) for n in names])
            p50 = np.array([_num(models[n]["mse"].get("p50")) for n in names])
            ax.bar(x, mean, color="tab:blue", alpha=0.8, label="mean")
            ax.errorbar(x, mean, yerr=[np.zeros_like(mean), np.clip(p95 - mean, 0, None)], fmt="none",
                        ecolor="black", capsize=4, label="up to p95")
            ax.plot(x, p50, "o", color="tab:orange", label="p50")
            ax.set_ylabel("per-event MSE (clean)")
            ax.legend(fontsize="small")
        else:
            ax.bar(x, [_num(models[n].get("accuracy")) for n in names], color="tab:green", alpha=0.8)
            ax.set_ylim(0, 1)
            ax.set_ylabel("accuracy")
        ax.set_title(f"{task} runs")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize="small")
    return _save(fig, path)


def _num(value: Any) -> float:
    """A float for plotting: None (a metric that could not be computed) becomes NaN, drawn as a gap."""
    return float("nan") if value is None else float(value)


def plot_auroc_comparison(result: Any, path: str | Path) -> Path:
    """Grouped bars: autoencoder x corruption (and bsm_resonance vs rest), classifier x class; 0.5 marked.

    Args:
        result: an InferenceResult or its to_dict().
        path: the PNG to write.

    Returns:
        `path`.
    """
    summary = _summary(result)
    panels = []
    autoencoders = _models_of(summary, "autoencoder")
    if autoencoders:
        groups = list(summary.get("options", {}).get("corruptions", []))
        table = {r: dict(m.get("auroc_by_corruption", {})) for r, m in autoencoders.items()}
        if any(m.get("auroc_anomaly_class") is not None for m in autoencoders.values()):
            groups.append(_ANOMALY_GROUP)
            for r, m in autoencoders.items():
                table[r][_ANOMALY_GROUP] = m.get("auroc_anomaly_class")
        panels.append(("autoencoder: clean vs corrupted", groups, table))
    classifiers = _models_of(summary, "classifier")
    if classifiers:
        groups = list(dict.fromkeys(c for m in classifiers.values() for c in m.get("auroc_class", {})))
        panels.append(("classifier: class vs rest", groups, {r: m.get("auroc_class", {}) for r, m in classifiers.items()}))
    panels = [p for p in panels if p[1]]
    if not panels:
        return _empty(path, "AUROC comparison", "no AUROC was computed")
    fig = Figure(figsize=(max(6.0, 1.3 * max(len(g) for _, g, _ in panels) + 3), 3.8 * len(panels)),
                 layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (title, groups, table) in zip(axes, panels):
        _grouped_bars(ax, groups, table)
        ax.set_title(title)
    return _save(fig, path)


def _grouped_bars(ax: Any, groups: Sequence[str], table: Mapping[str, Mapping[str, Any]]) -> None:
    """One cluster per group, one bar per model; a dashed line at chance (0.5)."""
    runs = list(table)
    x = np.arange(len(groups))
    width = 0.8 / max(len(runs), 1)
    for i, run_id in enumerate(runs):
        heights = [_num(table[run_id].get(g)) for g in groups]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=run_id)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AUROC")
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize="small")
    if len(runs) <= _MAX_LEGEND:
        ax.legend(fontsize="x-small", ncols=max(1, len(runs) // 6 + 1))


def plot_inference_figures(result: Any, figures_dir: str | Path,
                           which: Sequence[str] | None = None) -> dict[str, Path]:
    """Write the inference figures (all of FIGURE_FILES, or those named in `which`) into figures_dir.

    Returns:
        {figure name: path written}.

    Raises:
        ConfigError: a name in `which` is not a key of FIGURE_FILES.
    """
    names = list(FIGURE_FILES) if which is None else list(which)
    unknown = [n for n in names if n not in FIGURE_FILES]
    if unknown:
        raise ConfigError(f"unknown inference figures {unknown}; allowed: {', '.join(FIGURE_FILES)}")
    folder = Path(figures_dir)
    written = {}
    for name in names:
        path = folder / FIGURE_FILES[name]
        if name == "reconstruction_error_distributions":
            written[name] = plot_reconstruction_error_distributions(result, None, path)
        elif name == "model_comparison_bars":
            written[name] = plot_model_comparison_bars(result, path)
        else:
            written[name] = plot_auroc_comparison(result, path)
    return written
