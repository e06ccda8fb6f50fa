"""The "codebook" family: how a vq bottleneck uses its codes, as training goes.

Left, the EMA usage of every codebook row (``cluster_size``, the quantity dead-code revival
reads), sorted, with the dead-code threshold drawn: rows under it are re-seeded in the next
training step. Right, the codes the probe batch picks, sorted by count. The title gives the
probe batch's perplexity (exp of the usage entropy: K for uniform use, 1 for a collapse).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from thesis_lib.models.vq import VectorQuantizer, code_perplexity

from .context import FamilySkipped, FigureContext
from ..figure_io import new_figure, no_data
from .probes import probing, to_numpy, unwrap_model

__all__ = ["codebook_figure"]

_MAX_BARS = 512  # above this, filled stairs: one artist instead of thousands of rectangles


def codebook_figure(ctx: FigureContext) -> Figure:
    """EMA usage per code (sorted, dead-code threshold marked) and the probe batch's code counts.

    Raises:
        FamilySkipped: the model has no vq bottleneck (``model.bottleneck`` is not a VectorQuantizer).
        KeyError: the model's forward returns no "codes" for the probe batch.
    """
    model = unwrap_model(ctx.model)
    vq = getattr(model, "bottleneck", None)
    if not isinstance(vq, VectorQuantizer):
        kind = type(vq).__name__ if vq is not None else "no bottleneck"
        raise FamilySkipped(f"codebook: the model's bottleneck is {kind}, not vq; skipped")
    size = vq.codebook_size
    ema = to_numpy(vq.cluster_size)
    probe_counts: Optional[np.ndarray] = None
    probe_perplexity: Optional[float] = None
    if ctx.probe_batch is not None:
        with probing(model):
            outputs = model(ctx.probe_batch)
        if "codes" not in outputs:
            raise KeyError(f"{type(model).__name__}.forward returned no 'codes' (keys: {sorted(outputs)})")
        codes = outputs["codes"].detach().reshape(-1).cpu().numpy()
        probe_counts = np.bincount(codes, minlength=size).astype(float)
        probe_perplexity = float(code_perplexity(torch.from_numpy(probe_counts)))
    # All-zero usage (no training step yet) has no distribution: its "perplexity" of 1 would read as a collapse.
    ema_perplexity = "n/a"
    if ema.sum() > 0:
        ema_perplexity = f"{float(code_perplexity(torch.from_numpy(ema.astype(np.float64)))):.1f}"
    dead = int(np.sum(ema < vq.dead_code_threshold))
    fig = new_figure(12, 4)
    left, right = fig.subplots(1, 2)
    _ema_panel(left, ema, vq.dead_code_threshold, dead)
    _probe_panel(right, probe_counts, probe_perplexity, size)
    probe = f"perplexity {probe_perplexity:.1f} of {size} codes (probe)" if probe_perplexity is not None \
        else f"{size} codes (no probe batch)"
    fig.suptitle(f"codebook · {ctx.moment} · {probe} · EMA perplexity {ema_perplexity} · "
                 f"dead {dead}/{size}", fontsize=11)
    return fig


def _bars(ax: Axes, values: np.ndarray, color: str) -> None:
    """Sorted values as bars (rank on x); stairs when there are too many rows for separate bars."""
    ranks = np.arange(values.size)
    if values.size <= _MAX_BARS:
        ax.bar(ranks, values, width=0.85 if values.size <= 64 else 1.0, color=color, linewidth=0)
    else:
        ax.stairs(values, np.arange(values.size + 1) - 0.5, fill=True, color=color)
    ax.set_xlim(-0.5, values.size - 0.5)
    ax.set_xlabel("code (sorted by usage)")
    ax.grid(alpha=0.3, axis="y")


def _ema_panel(ax: Axes, ema: np.ndarray, threshold: float, dead: int) -> None:
    """cluster_size sorted descending, log y once anything is used, the revival threshold dashed."""
    ax.set_title("EMA usage (cluster_size)", loc="left", fontsize=10)
    values = np.sort(ema)[::-1]
    if not np.any(values > 0):
        no_data(ax, "no code used yet (the EMA starts at zero\nand moves only in training mode)")
        return
    _bars(ax, values, "tab:blue")
    positive = values[values > 0]
    ax.set_yscale("log")
    # The floor sits under both the smallest usage and the threshold, so both stay in view.
    floor = min(float(positive.min()), threshold if threshold > 0 else float(positive.min())) / 3
    ax.set_ylim(floor, float(values.max()) * 2)
    if threshold > 0:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1.2, zorder=3,
                   label=f"dead-code threshold {threshold:g} ({dead} below)")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("EMA assignments per step")


def _probe_panel(ax: Axes, counts: Optional[np.ndarray], perplexity: Optional[float], size: int) -> None:
    """The probe batch's code counts, sorted descending; how many distinct codes it used."""
    if counts is None:
        ax.set_title("probe batch", loc="left", fontsize=10)
        no_data(ax, "no probe batch was given")
        return
    used = int(np.count_nonzero(counts))
    ax.set_title(f"probe batch: {used} of {size} codes used, perplexity {perplexity:.1f}", loc="left", fontsize=10)
    _bars(ax, np.sort(counts)[::-1], "tab:green")
    ax.set_ylabel("assignments")
