"""The `generic` analysis, for any sweep: curves per run, seed aggregation, best runs, Pareto fronts.

Grid points are the combinations of the config columns that vary between runs (seeds, paths
and run names excluded; see `varying_config_columns`). Seed aggregation gives, per grid point,
the mean and the sample standard deviation (ddof=1, so NaN for a single seed) of each metric.
Pareto fronts minimise both the best validation loss and the cost (wall time or energy).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..sweep_plots import annotate_empty, category_colors, new_figure, pareto_front, plot_pareto, plot_run_curves
from . import AnalysisContext, AnalysisOutput, run_label, varying_config_columns

__all__ = ["FIGURES", "TASKS", "BEST_RUNS", "AGGREGATED_METRICS", "run", "seed_aggregate", "grid_point_labels"]

FIGURES = {
    "val_curves": "Validation loss per epoch for every run, coloured by grid point (log scale).",
    "seed_aggregation": "Best validation loss per grid point: mean ± sample std over seeds, each seed as a dot.",
    "pareto_loss_vs_time": "Best validation loss against wall time; ringed runs are non-dominated (nothing is both "
                           "faster and better).",
    "pareto_loss_vs_energy": "Best validation loss against energy (sum of per-epoch NVML energy); ringed runs are "
                             "non-dominated. CPU runs have no energy measurement.",
}
TASKS = None  # any task, one at a time
BEST_RUNS = 10
AGGREGATED_METRICS = ("loss.total_best", "loss.recon_best", "total_time_s", "energy_j_total", "throughput_mean")
NO_ENERGY = "no energy measured (CPU runs)"


def run(ctx: AnalysisContext) -> AnalysisOutput:
    """Draw the generic figures and tables for the runs in `ctx`.

    Args:
        ctx: the selected runs and where to put figures.

    Returns:
        Figures val_curves, seed_aggregation, pareto_loss_vs_time, pareto_loss_vs_energy (those
        wanted); tables seed_aggregation, best_runs, pareto; a summary with the grid columns,
        the best run and the runs on each front.
    """
    out = AnalysisOutput()
    runs = ctx.runs_df.reset_index(drop=True)
    grid = varying_config_columns(runs)
    points = grid_point_labels(runs, grid)
    colors = category_colors(points)
    out.summary["grid_columns"] = grid
    out.summary["n_runs"] = int(len(runs))
    out.summary["n_grid_points"] = int(points.nunique())

    if ctx.wants("val_curves"):
        fig, (ax,) = new_figure(ctx.style)
        curves = []
        for run_dir, point in zip(runs["run_dir"], points):
            val = ctx.split_rows(run_dir, "val")
            curves.append((point, val["epoch"].to_numpy(dtype=float), val["loss"].to_numpy(dtype=float)))
        plot_run_curves(ax, curves, colors, xlabel="epoch", ylabel="validation loss", legend_title=_title(grid),
                        log_y=True)
        ax.set_title("Validation loss per run")
        ctx.save(fig, "val_curves", out)

    metrics = [m for m in AGGREGATED_METRICS if m in runs.columns]
    aggregated = seed_aggregate(runs, grid, metrics)
    out.tables["seed_aggregation"] = aggregated
    if ctx.wants("seed_aggregation"):
        _plot_seed_aggregation(ctx, out, runs, aggregated, grid, points, colors)

    ranked = runs.sort_values("loss.total_best", na_position="last").head(BEST_RUNS)
    columns = ["run_id", *grid, "seed", "status", "loss.total_best", "best_epoch", "total_time_s", "energy_j_total"]
    out.tables["best_runs"] = ranked[[c for c in dict.fromkeys(columns) if c in ranked.columns]].reset_index(drop=True)
    best = ranked.iloc[0] if len(ranked) and np.isfinite(ranked["loss.total_best"].iloc[0]) else None
    out.summary["best_run"] = (None if best is None
                               else {"run_id": best["run_id"], "loss.total_best": float(best["loss.total_best"])})

    pareto = runs[["run_id"]].copy()
    for cost, figure, xlabel in (("total_time_s", "pareto_loss_vs_time", "wall time (s)"),
                                 ("energy_j_total", "pareto_loss_vs_energy", "energy (J)")):
        x = pd.to_numeric(runs.get(cost, pd.Series(np.nan, index=runs.index)), errors="coerce").to_numpy(dtype=float)
        y = runs["loss.total_best"].to_numpy(dtype=float)
        pareto[cost] = x
        front = _pareto_figure(ctx, out, figure, x, y, points, colors, xlabel=xlabel, legend_title=_title(grid))
        pareto[f"on_front_{cost}"] = front
        out.summary[f"front_{cost}"] = runs.loc[front, "run_id"].tolist()
    pareto["loss.total_best"] = runs["loss.total_best"].to_numpy(dtype=float)
    out.tables["pareto"] = pareto
    out.summary["energy_measured"] = bool(np.isfinite(pareto["energy_j_total"]).any())
    if not out.summary["energy_measured"]:
        out.notes.append(f"Loss vs energy: {NO_ENERGY}; energy comes from NVML on GPU runs.")
    return out


def seed_aggregate(runs: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and sample std (ddof=1) of each metric per grid point, with the run count and seeds.

    Args:
        runs: one row per run.
        by: the grid columns; empty puts every run in one group named "all runs".
        metrics: numeric columns to aggregate.

    Returns:
        One row per grid point: the `by` columns, `n_runs`, `seeds`, then `<metric>_mean` and
        `<metric>_std` for each metric.
    """
    frame = runs.copy()
    keys = list(by) or ["grid_point"]
    if not by:
        frame["grid_point"] = "all runs"
    for metric in metrics:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    seed_column = "trainer.seed" if "trainer.seed" in frame.columns else "seed"
    rows = []
    for key, group in frame.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["n_runs"] = int(len(group))
        row["seeds"] = ",".join(str(s) for s in group[seed_column].tolist()) if seed_column in group else ""
        for metric in metrics:
            values = group[metric]
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1))
        rows.append(row)
    return pd.DataFrame(rows)


def grid_point_labels(runs: pd.DataFrame, grid: Sequence[str]) -> pd.Series:
    """Each run's grid point as text ('bottleneck=vq, latent_dim=16'); 'all runs' without a grid."""
    if not grid:
        return pd.Series(["all runs"] * len(runs), index=runs.index)
    return pd.Series([run_label(row, grid, with_seed=False) for _, row in runs.iterrows()], index=runs.index)


def _plot_seed_aggregation(ctx, out, runs, aggregated, grid, points, colors) -> None:
    """Mean ± std of the best validation loss per grid point, every seed's value drawn beside it."""
    labels = grid_point_labels(aggregated, grid) if grid else pd.Series(["all runs"])
    # One grid setting per line under its point: a long 'a=1, b=2, c=3' label tilted across its
    # neighbours was unreadable and squeezed the axes. The figure widens to give each point its label's width.
    ticks = [label.replace(", ", "\n") for label in labels]
    widest = max((len(line) for tick in ticks for line in tick.splitlines()), default=8)
    fig, (ax,) = new_figure(ctx.style, width=max(ctx.style.width, len(aggregated) * (0.075 * widest + 0.3) + 1.5))
    positions = np.arange(len(aggregated))
    ax.errorbar(positions, aggregated["loss.total_best_mean"], yerr=aggregated["loss.total_best_std"].fillna(0.0),
                fmt="o", color="black", capsize=5, markersize=7, label="mean ± std over seeds", zorder=3)
    for position, label in zip(positions, labels):
        values = runs.loc[points == label, "loss.total_best"].to_numpy(dtype=float)
        ax.scatter(np.full(values.size, position + 0.12), values, s=16, color=colors.get(label), alpha=0.8, zorder=2)
    ax.set_xticks(positions, ticks, fontsize="small")
    ax.set_xlim(-0.5, len(aggregated) - 0.5)
    ax.set_ylabel("best validation loss")
    ax.set_title("Mean ± std over seeds per grid point\n(dots: single runs)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    ctx.save(fig, "seed_aggregation", out)


def _pareto_figure(ctx, out, name, x, y, points, colors, *, xlabel, legend_title) -> np.ndarray:
    """One loss-vs-cost scatter with its front; a sentence instead when no run has the cost."""
    measured = np.isfinite(x)
    front = np.zeros(len(x), dtype=bool)
    if measured.any():
        front = pareto_front(x, y)
    if not ctx.wants(name):
        return front
    # Nothing to plot: a strip with the sentence, not a page-high empty box.
    fig, (ax,) = new_figure(ctx.style, height=None if measured.any() else 1.4)
    if not measured.any():
        annotate_empty(ax, NO_ENERGY if name == "pareto_loss_vs_energy" else f"no {xlabel} recorded")
    else:
        plot_pareto(ax, x[measured], y[measured], points[measured].tolist(), colors, xlabel=xlabel,
                    ylabel="best validation loss", legend_title=legend_title)
        if (~measured).any():
            out.notes.append(f"{name}: {int((~measured).sum())} run(s) without {xlabel} left out of the plot.")
    ax.set_title(f"Best validation loss vs {xlabel.split(' (')[0]}: non-dominated runs ringed")
    ctx.save(fig, name, out)
    return front


def _title(grid: Sequence[str]) -> str:
    """Legend title naming the grid columns."""
    return ", ".join(c.rsplit(".", 1)[-1] for c in grid) or None
