"""The `compare_globals_heads` analysis: how the globals head's weight trades tokens against globals.

Every value is read at each run's best epoch (lowest total validation loss), so the three grids
describe one model per run: `grid_best_val_loss` the total validation loss, `grid_best_rec_tokens`
the token features' reconstruction (`loss_recon`, masked MSE) and `grid_best_rec_globals` the
globals' reconstruction (`loss_globals`). A cell is the mean over the runs at that grid point
(seeds, and any third varying column, which the summary names).

Grid axes: `model.globals_beta` across when it varies, and the next varying config column down;
with only one varying column the grid is one row, with none it is a single cell. Note that the
total loss weighs loss_globals by globals_beta itself, so it is not comparable across betas on
its own; the two reconstruction grids are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..sweep_plots import category_colors, new_figure, plot_heatmap, plot_run_curves
from . import AnalysisContext, AnalysisOutput, varying_config_columns

__all__ = ["FIGURES", "TASKS", "BETA_COLUMN", "run", "best_epoch_values", "grid_axes"]

FIGURES = {
    "grid_best_val_loss": "Total validation loss at each run's best epoch, mean per grid cell (n = runs in the cell).",
    "grid_best_rec_globals": "Globals reconstruction (val loss_globals) at the best epoch, mean per grid cell.",
    "grid_best_rec_tokens": "Token-feature reconstruction (val loss_recon) at the best epoch, mean per grid cell.",
    "tradeoff": "Token against globals reconstruction per run, coloured by globals_beta; the line joins the means "
                "in beta order.",
    "all_val_curves": "Validation loss per epoch for every run, coloured by globals_beta.",
    "all_train_curves": "Training loss per epoch for every run, coloured by globals_beta.",
}
TASKS = ("autoencoder", "diffusion_autoencoder", "gan_autoencoder")  # the tasks with reconstruction losses
BETA_COLUMN = "model.globals_beta"
_GRIDS = (("grid_best_val_loss", "best_val_loss", "total validation loss"),
          ("grid_best_rec_globals", "best_rec_globals", "globals reconstruction (val loss_globals)"),
          ("grid_best_rec_tokens", "best_rec_tokens", "token reconstruction (val loss_recon)"))


def run(ctx: AnalysisContext) -> AnalysisOutput:
    """Draw the globals-head comparison for the autoencoder runs in `ctx`.

    Args:
        ctx: the selected runs.

    Returns:
        The six figures (those wanted); tables best_epoch_values and one per grid; a summary
        with the grid axes, any column averaged over, and the best beta for each metric.
    """
    out = AnalysisOutput()
    runs = ctx.runs_df.reset_index(drop=True)
    values = best_epoch_values(ctx, runs)
    out.tables["best_epoch_values"] = values
    x_axis, y_axis, averaged = grid_axes(runs)
    out.summary.update({"grid_x": x_axis, "grid_y": y_axis, "averaged_over": averaged})
    if averaged:
        out.notes.append(f"Grid cells average over seeds and over {', '.join(averaged)} (more than two columns vary).")
    out.notes.append("The total loss weighs loss_globals by globals_beta: compare betas on the two "
                     "reconstruction grids.")

    frame = values.assign(_x=_axis_values(runs, x_axis), _y=_axis_values(runs, y_axis))
    for figure, column, label in _GRIDS:
        table = frame.pivot_table(index="_y", columns="_x", values=column, aggfunc="mean", dropna=False)
        counts = frame.pivot_table(index="_y", columns="_x", values="run_id", aggfunc="count", dropna=False)
        counts = counts.reindex_like(table)
        table.index.name, table.columns.name = y_axis or "", x_axis or ""
        out.tables[figure] = table
        if ctx.wants(figure):
            fig, (ax,) = new_figure(ctx.style, height=max(2.6, 0.8 * len(table) + 1.8))
            plot_heatmap(fig, ax, table, label=label, counts=counts.fillna(0))
            ax.set_title(f"Best-epoch {label}")
            ctx.save(fig, figure, out)

    if BETA_COLUMN in runs.columns:
        by_beta = values.groupby(runs[BETA_COLUMN].astype(float))[["best_rec_tokens", "best_rec_globals"]].mean()
        out.summary["best_beta"] = {column: _argmin(by_beta[column]) for column in by_beta.columns}
    betas = _axis_values(runs, BETA_COLUMN) if BETA_COLUMN in runs.columns else pd.Series(["n/a"] * len(runs))
    colors = category_colors(betas)

    if ctx.wants("tradeoff"):
        fig, (ax,) = new_figure(ctx.style)
        for beta in sorted(dict.fromkeys(betas), key=_sort_key):
            mask = (betas == beta).to_numpy()
            ax.scatter(values.loc[mask, "best_rec_tokens"], values.loc[mask, "best_rec_globals"], s=36,
                       color=colors[beta], label=f"globals_beta={beta}", alpha=0.8)
        means = values.groupby(betas.to_numpy())[["best_rec_tokens", "best_rec_globals"]].mean()
        means = means.loc[sorted(means.index, key=_sort_key)]
        ax.plot(means["best_rec_tokens"], means["best_rec_globals"], color="black", linewidth=1, alpha=0.6,
                marker="x", label="mean per beta (in beta order)")
        ax.set_xlabel("token reconstruction (val loss_recon, best epoch)")
        ax.set_ylabel("globals reconstruction (val loss_globals, best epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title("Tokens against globals reconstruction across globals_beta")
        ctx.save(fig, "tradeoff", out)

    for figure, split in (("all_val_curves", "val"), ("all_train_curves", "train")):
        if not ctx.wants(figure):
            continue
        fig, (ax,) = new_figure(ctx.style)
        curves = []
        for run_dir, beta in zip(runs["run_dir"], betas):
            rows = ctx.split_rows(run_dir, split)
            curves.append((beta, rows["epoch"].to_numpy(dtype=float), rows["loss"].to_numpy(dtype=float)))
        kind = "validation" if split == "val" else "training"
        plot_run_curves(ax, curves, colors, xlabel="epoch", ylabel=f"{kind} loss", legend_title="globals_beta",
                        log_y=True)
        ax.set_title(f"All {kind} curves")
        ctx.save(fig, figure, out)
    return out


def best_epoch_values(ctx: AnalysisContext, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: the best epoch (lowest val loss, first on ties) and val loss, loss_recon, loss_globals there."""
    rows = []
    for run_id, run_dir in zip(runs["run_id"], runs["run_dir"]):
        val = ctx.split_rows(run_dir, "val")
        loss = pd.to_numeric(val["loss"], errors="coerce").to_numpy(dtype=float) if len(val) else np.array([])
        row = {"run_id": run_id, "best_epoch": np.nan, "best_val_loss": np.nan, "best_rec_tokens": np.nan,
               "best_rec_globals": np.nan}
        if np.isfinite(loss).any():
            best = int(np.where(np.isfinite(loss), loss, np.inf).argmin())
            at_best = val.iloc[best]
            row.update(best_epoch=int(at_best["epoch"]), best_val_loss=float(loss[best]),
                       best_rec_tokens=float(at_best.get("loss_recon", np.nan)),
                       best_rec_globals=float(at_best.get("loss_globals", np.nan)))
        rows.append(row)
    return pd.DataFrame(rows)


def grid_axes(runs: pd.DataFrame) -> tuple[str | None, str | None, list[str]]:
    """(column across, column down, columns averaged over): globals_beta first when it varies."""
    varying = varying_config_columns(runs)
    if BETA_COLUMN in varying:
        varying.remove(BETA_COLUMN)
        varying.insert(0, BETA_COLUMN)
    x_axis = varying[0] if varying else None
    y_axis = varying[1] if len(varying) > 1 else None
    return x_axis, y_axis, varying[2:]


def _axis_values(runs: pd.DataFrame, column: str | None) -> pd.Series:
    """A grid axis' value per run, as sortable text-or-number; a single '(all runs)' without a column."""
    if column is None:
        return pd.Series(["(all runs)"] * len(runs), index=runs.index)
    numeric = pd.to_numeric(runs[column], errors="coerce")
    return numeric if numeric.notna().all() else runs[column].astype(str)


def _sort_key(value):
    """Numbers in numeric order before text."""
    return (0, float(value), "") if isinstance(value, (int, float, np.number)) else (1, 0.0, str(value))


def _argmin(series: pd.Series):
    """Index of the smallest finite value (as a plain Python value), None when there is none."""
    finite = series.dropna()
    return None if finite.empty else float(finite.idxmin())
