"""The `compare_tokenizers` analysis: VQ against continuous (identity / linear) bottlenecks.

Reconstruction error is the validation `loss_recon` (the masked MSE of the continuous token
features; runs without it fall back to the total loss, and the axis says so).

Compression is measured in bits, so continuous and VQ latents sit on one axis:
    input bits  = 32 * (n_tokens * cont_dim + globals_dim) + n_tokens * log2(n_token_types)
    latent bits = 32 * latent_dim                          (identity, linear: fp32 floats)
                = (latent_dim / code_dim) * log2(codebook_size)   (vq: one code index per code)
    compression = input bits / latent bits
The shapes come from each run's `data_meta.json`.

Time to threshold is the wall time `t` at the end of the first epoch whose validation error is
at or below `thresholds["val_mse"]` (a number or a list). Without one, the threshold is the
worst run's best error, a level every run reaches, so the bars compare how fast they got there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ...layout import DATA_META_FILE
from ..sweep_plots import annotate_empty, category_colors, new_figure, plot_boxplot, plot_pareto, plot_run_curves
from . import AnalysisContext, AnalysisOutput, run_label, varying_config_columns
from .generic import seed_aggregate

__all__ = ["FIGURES", "TASKS", "run", "compression_bits", "time_to_threshold"]

FIGURES = {
    "val_mse_vs_time": "Validation reconstruction error against wall time, one line per run, coloured by tokenizer.",
    "pareto_error_vs_compression": "Best reconstruction error against compression (input bits / latent bits); ringed "
                                   "runs are non-dominated (nothing compresses more with a lower error).",
    "vq_perplexity_boxplot": "Codebook perplexity at the last epoch of the VQ runs, per configuration: how many codes "
                             "are in effective use (at most the codebook size).",
    "throughput_vs_best_val": "Mean training throughput against the best validation loss, coloured by tokenizer.",
    "time_to_threshold": "Wall time until the validation error first reached the threshold; hatched grey bars mark "
                         "runs that never did.",
}
TASKS = ("autoencoder", "diffusion_autoencoder", "gan_autoencoder")  # the tasks with reconstruction losses
FLOAT_BITS = 32


def run(ctx: AnalysisContext) -> AnalysisOutput:
    """Draw the tokenizer comparison for the autoencoder runs in `ctx`.

    Args:
        ctx: the selected runs; `ctx.thresholds["val_mse"]` sets the time-to-threshold level(s).

    Returns:
        The five figures (those wanted); tables by_tokenizer, compression, time_to_threshold;
        a summary with the thresholds used and the mean best error per tokenizer.
    """
    out = AnalysisOutput()
    runs = ctx.runs_df.reset_index(drop=True)
    tokenizers = runs["tokenizer"].astype(str)
    colors = category_colors(tokenizers)
    metric = "loss_recon" if all("loss_recon" in ctx.split_rows(r, "val") for r in runs["run_dir"]) else "loss"
    recon = metric == "loss_recon" and "loss.recon_best" in runs
    error_label = "validation MSE (loss_recon)" if recon else "validation loss (no loss_recon recorded)"
    best_error = runs["loss.recon_best"] if recon else runs["loss.total_best"]
    best_error = pd.to_numeric(best_error, errors="coerce").to_numpy(dtype=float)

    grid = varying_config_columns(runs)
    others = [c for c in grid if c != "model.bottleneck"]
    aggregated = ["best_error", *(m for m in ("loss.total_best", "total_time_s", "throughput_mean") if m in runs)]
    out.tables["by_tokenizer"] = seed_aggregate(runs.assign(best_error=best_error), ["tokenizer", *others], aggregated)
    out.summary["error_metric"] = metric
    out.summary["best_error_mean_by_tokenizer"] = {
        str(k): float(v) for k, v in pd.Series(best_error).groupby(tokenizers).mean().items()
    }

    if ctx.wants("val_mse_vs_time"):
        fig, (ax,) = new_figure(ctx.style)
        curves = []
        for run_dir, tokenizer in zip(runs["run_dir"], tokenizers):
            val = ctx.split_rows(run_dir, "val")
            curves.append((tokenizer, val["t"].to_numpy(dtype=float), val[metric].to_numpy(dtype=float)))
        plot_run_curves(ax, curves, colors, xlabel="wall time since start (s)", ylabel=error_label,
                        legend_title="tokenizer", log_y=True)
        ax.set_title("Validation reconstruction error against wall time")
        ctx.save(fig, "val_mse_vs_time", out)

    compression = _compression_table(runs, best_error)
    out.tables["compression"] = compression
    missing_meta = compression.loc[compression["compression"].isna(), "run_id"].tolist()
    if missing_meta:
        out.notes.append("Compression unknown (no readable data_meta.json or vq sizes) for: "
                         f"{', '.join(map(str, missing_meta))}.")
    if ctx.wants("pareto_error_vs_compression"):
        fig, (ax,) = new_figure(ctx.style)
        known = compression["compression"].notna().to_numpy()
        if known.any():
            front = plot_pareto(ax, compression.loc[known, "compression"], compression.loc[known, "best_error"],
                                tokenizers[known].tolist(), colors, xlabel="compression (input bits / latent bits)",
                                ylabel=f"best {error_label}", maximize_x=True, legend_title="tokenizer")
            ax.set_xscale("log")
            out.summary["front_error_vs_compression"] = compression.loc[known, "run_id"][front].tolist()
        else:
            annotate_empty(ax, "no run has data_meta.json: input size unknown")
        ax.set_title("Error vs compression: non-dominated runs ringed")
        ctx.save(fig, "pareto_error_vs_compression", out)

    if ctx.wants("vq_perplexity_boxplot"):
        fig, (ax,) = new_figure(ctx.style)
        vq = runs[tokenizers == "vq"]
        if "metric_perplex_final" in vq.columns and vq["metric_perplex_final"].notna().any():
            vq_grid = [c for c in varying_config_columns(vq) if c != "model.bottleneck"]
            labels = [run_label(row, vq_grid, with_seed=False) if vq_grid else "vq" for _, row in vq.iterrows()]
            groups: dict[str, list[float]] = {}
            for label, value in zip(labels, vq["metric_perplex_final"].astype(float)):
                groups.setdefault(label, []).append(value)
            plot_boxplot(ax, groups, ylabel="codebook perplexity (final epoch, val)", xlabel=", ".join(vq_grid))
        else:
            annotate_empty(ax, "no VQ runs with a recorded perplexity among these runs")
        ax.set_title("VQ codebook perplexity by configuration")
        ctx.save(fig, "vq_perplexity_boxplot", out)

    if ctx.wants("throughput_vs_best_val"):
        fig, (ax,) = new_figure(ctx.style)
        throughput = pd.to_numeric(runs.get("throughput_mean", pd.Series(np.nan, index=runs.index)), errors="coerce")
        for tokenizer in dict.fromkeys(tokenizers):
            mask = (tokenizers == tokenizer).to_numpy()
            ax.scatter(throughput[mask], runs.loc[mask, "loss.total_best"].astype(float),
                       s=36, color=colors[tokenizer], label=tokenizer)
        ax.set_xlabel("mean training throughput (samples/s)")
        ax.set_ylabel("best validation loss")
        ax.grid(alpha=0.3)
        ax.legend(title="tokenizer", fontsize="small")
        ax.set_title("Throughput against best validation loss")
        ctx.save(fig, "throughput_vs_best_val", out)

    thresholds, automatic = _thresholds(ctx.thresholds.get("val_mse"), best_error)
    out.summary["thresholds_val_mse"] = thresholds
    out.summary["threshold_automatic"] = automatic
    crossing = pd.DataFrame({"run_id": runs["run_id"], "tokenizer": tokenizers, "best_error": best_error})
    for threshold in thresholds:
        crossing[f"time_to_{threshold:g}_s"] = [time_to_threshold(ctx.split_rows(r, "val"), metric, threshold)
                                                for r in runs["run_dir"]]
    out.tables["time_to_threshold"] = crossing
    if ctx.wants("time_to_threshold"):
        _plot_time_to_threshold(ctx, out, runs, crossing, thresholds, colors, automatic)
    return out


def compression_bits(model: dict, meta: dict) -> tuple[float, float]:
    """(input bits, latent bits) per event for a model config section and a data_meta dict."""
    tokens, cont, glob = meta["n_tokens"], meta["cont_dim"], meta["globals_dim"]
    input_bits = FLOAT_BITS * (tokens * cont + glob) + tokens * math.log2(max(int(meta.get("n_token_types", 2)), 2))
    latent_dim = int(model["latent_dim"])
    if model.get("bottleneck") == "vq":
        latent_bits = (latent_dim // int(model["code_dim"])) * math.log2(int(model["codebook_size"]))
    else:
        latent_bits = FLOAT_BITS * latent_dim
    return float(input_bits), float(latent_bits)


def time_to_threshold(val_rows: pd.DataFrame, metric: str, threshold: float) -> float:
    """Wall time at the end of the first epoch whose `metric` is <= threshold; NaN if it never is."""
    values = pd.to_numeric(val_rows.get(metric), errors="coerce").to_numpy(dtype=float)
    crossed = np.flatnonzero(values <= threshold)
    return float(val_rows["t"].to_numpy(dtype=float)[crossed[0]]) if crossed.size else float("nan")


def _compression_table(runs: pd.DataFrame, best_error: np.ndarray) -> pd.DataFrame:
    """Per run: input and latent bits, their ratio, and the best error."""
    rows = []
    for (_, row), error in zip(runs.iterrows(), best_error):
        model = {"latent_dim": row.get("model.latent_dim", row.get("latent_dim")), "bottleneck": row.get("tokenizer"),
                 "code_dim": row.get("model.vq.code_dim"), "codebook_size": row.get("model.vq.codebook_size")}
        input_bits = latent_bits = float("nan")
        try:
            meta = json.loads((Path(row["run_dir"]) / DATA_META_FILE).read_text())
            input_bits, latent_bits = compression_bits(model, meta)
        except (OSError, ValueError, KeyError, TypeError):  # no or unreadable data_meta.json, or no vq sizes
            pass
        rows.append({"run_id": row["run_id"], "tokenizer": row.get("tokenizer"), "latent_dim": model["latent_dim"],
                     "input_bits": input_bits, "latent_bits": latent_bits, "compression": input_bits / latent_bits,
                     "best_error": float(error)})
    return pd.DataFrame(rows)


def _thresholds(given, best_error: np.ndarray) -> tuple[list[float], bool]:
    """The threshold levels to use and whether they were chosen automatically."""
    if given is not None:
        return [float(v) for v in (given if isinstance(given, (list, tuple)) else [given])], False
    finite = best_error[np.isfinite(best_error)]
    return ([float(finite.max())] if finite.size else []), True


def _plot_time_to_threshold(ctx, out, runs, crossing, thresholds, colors, automatic) -> None:
    """Horizontal bars per run: time to each threshold; hatched grey 'never' bars for runs that did not get there."""
    fig, (ax,) = new_figure(ctx.style, height=max(ctx.style.height, 0.35 * len(runs) * max(len(thresholds), 1) + 1.5))
    if not thresholds:
        annotate_empty(ax, "no finite validation error in these runs")
        ctx.save(fig, "time_to_threshold", out)
        return
    grid = varying_config_columns(runs)
    labels = [run_label(row, grid) if grid else str(row["run_id"]) for _, row in runs.iterrows()]
    height = 0.8 / len(thresholds)
    total = runs["total_time_s"].astype(float).to_numpy()
    for k, threshold in enumerate(thresholds):
        times = crossing[f"time_to_{threshold:g}_s"].to_numpy(dtype=float)
        positions = np.arange(len(runs)) + k * height
        for i, (t, tokenizer) in enumerate(zip(times, crossing["tokenizer"])):
            if np.isfinite(t):
                ax.barh(positions[i], t, height=height, color=colors[tokenizer])
                ax.text(t, positions[i], f" {t:.2f} s (<= {threshold:.4g})", va="center", fontsize="x-small")
            else:
                ax.barh(positions[i], total[i] if np.isfinite(total[i]) else 0.0, height=height, color="lightgrey",
                        hatch="//", edgecolor="grey")
                ax.text(0, positions[i], f" never reached {threshold:.4g} (best {crossing['best_error'][i]:.4g})",
                        va="center", fontsize="x-small")
    ax.set_yticks(np.arange(len(runs)) + height * (len(thresholds) - 1) / 2, labels, fontsize="x-small")
    ax.set_xlabel("wall time to reach the threshold (s)")
    how = (f"{thresholds[0]:.4g}, the worst run's best (automatic)" if automatic
           else ", ".join(f"{t:g}" for t in thresholds))
    ax.set_title(f"Time to validation error threshold: {how}", fontsize="medium")
    ax.grid(alpha=0.3, axis="x")
    ctx.save(fig, "time_to_threshold", out)
