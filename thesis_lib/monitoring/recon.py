"""The "recon" family: how well an autoencoder reconstructs the probe batch, feature by feature.

One scatter per continuous token feature (true against reconstructed, valid tokens only, the
diagonal drawn) and the histogram of per-event errors. Drawn on the fixed probe batch, in eval
mode, so successive epochs' snapshots show the same events getting (or not getting) better.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .context import FamilySkipped, FigureContext
from ..figure_io import new_figure, no_data
from .probes import batch_size_of, probing, to_numpy, unwrap_model

__all__ = ["recon_figure", "feature_names"]

_MAX_FEATURES = 11  # plus the histogram: at most 12 panels, 3 rows of 4
_MAX_POINTS = 3000  # per scatter: more only blurs the cloud and slows the save
_COLS = 4


def feature_names(given: Optional[Sequence[str]], model, count: int) -> list[str]:
    """The given names, else the model's ``cont_features``, else "feature i"; a length mismatch falls back too."""
    for names in (given, getattr(model, "cont_features", None)):
        if names is not None and len(names) == count:
            return [str(n) for n in names]
    return [f"feature {i}" for i in range(count)]


def recon_figure(ctx: FigureContext) -> Figure:
    """True vs reconstructed continuous features on the probe batch, and the per-event error histogram.

    Raises:
        FamilySkipped: no probe batch, or the model is not an autoencoder (no encoder/decoder, or
            its forward returns no "cont").
        KeyError: the probe batch lacks tokens_id or tokens_cont.
    """
    if ctx.probe_batch is None:
        raise FamilySkipped("recon: no probe batch was given; skipped")
    model = unwrap_model(ctx.model)
    if not (hasattr(model, "encoder") and hasattr(model, "decoder")):
        raise FamilySkipped(f"recon: the model ({type(model).__name__}) is not an autoencoder; skipped")
    batch = ctx.probe_batch
    missing = [key for key in ("tokens_id", "tokens_cont") if key not in batch]
    if missing:
        raise KeyError(f"the probe batch lacks {missing}; it has {sorted(batch)}")
    with probing(model):
        outputs = model(batch)
        if "cont" not in outputs:
            raise FamilySkipped(f"recon: {type(model).__name__}.forward returns no 'cont'; skipped")
        per_event = getattr(model, "per_event_errors", None)
        errors = per_event(batch) if callable(per_event) else None
    valid = batch["tokens_id"] != 0
    true, recon = to_numpy(batch["tokens_cont"][valid]), to_numpy(outputs["cont"][valid])
    if errors is not None and "mse" in errors:
        event_errors, error_name = to_numpy(errors["mse"]), "per-event MSE (model.per_event_errors)"
    else:
        event_errors, error_name = _per_event_mse(batch, outputs), "per-event MSE of cont"
    names = feature_names(ctx.cont_features, model, true.shape[1])
    shown = min(len(names), _MAX_FEATURES)
    cols = shown + 1 if shown + 1 <= _COLS + 1 else _COLS  # up to 4 features and the histogram: one row
    rows = math.ceil((shown + 1) / cols)
    fig = new_figure(3.3 * cols, 3.1 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i in range(shown):
        _scatter(axes[i], true[:, i], recon[:, i], names[i])
    _error_histogram(axes[shown], event_errors, error_name)
    for ax in axes[shown + 1:]:
        ax.set_visible(False)
    more = f" (first {shown} of {len(names)} features)" if shown < len(names) else ""
    fig.suptitle(f"recon · {ctx.moment} · probe batch: {batch_size_of(batch)} events, "
                 f"{true.shape[0]} valid tokens{more}", fontsize=11)
    return fig


def _per_event_mse(batch, outputs) -> np.ndarray:
    """Per-event MSE over valid tokens x features, for a model without per_event_errors; 0 for empty events."""
    valid = to_numpy(batch["tokens_id"] != 0)
    squared = (to_numpy(outputs["cont"]) - to_numpy(batch["tokens_cont"])) ** 2 * valid[..., None]
    counts = np.maximum(valid.sum(axis=1) * squared.shape[-1], 1.0)
    return squared.sum(axis=(1, 2)) / counts


def _scatter(ax: Axes, true: np.ndarray, recon: np.ndarray, name: str) -> None:
    """Reconstructed against true values, the diagonal dashed; the title gives the feature's MSE."""
    ax.set_title(name, loc="left", fontsize=10)
    if true.size == 0:
        no_data(ax, "no valid tokens in the probe batch")
        return
    mse = float(np.mean((recon - true) ** 2))
    if true.size > _MAX_POINTS:  # evenly spaced, not random: the same points every epoch
        keep = np.linspace(0, true.size - 1, _MAX_POINTS).astype(int)
        true, recon = true[keep], recon[keep]
    ax.scatter(true, recon, s=4, alpha=0.35, color="tab:blue", linewidths=0)
    finite = np.concatenate([true, recon])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="0.3")
    ax.set_xlabel("true")
    ax.set_ylabel("reconstructed")
    ax.text(0.02, 0.97, f"MSE {mse:.3g}", transform=ax.transAxes, va="top", fontsize=8, color="0.25")
    ax.grid(alpha=0.3)


def _error_histogram(ax: Axes, errors: np.ndarray, name: str) -> None:
    """Histogram of per-event errors; log-spaced bins when positive errors span over two decades."""
    ax.set_title(name, loc="left", fontsize=9)
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        no_data(ax, "no finite per-event error")
        return
    positive = errors[errors > 0]
    note = ""
    if positive.size > 1 and positive.max() > 100 * positive.min():
        ax.hist(positive, bins=np.geomspace(positive.min(), positive.max(), 40), color="tab:red", alpha=0.75)
        ax.set_xscale("log")
        if positive.size < errors.size:
            note = f"\n{errors.size - positive.size} events with error 0 (no tokens) not shown"
    else:
        ax.hist(errors, bins=40, color="tab:red", alpha=0.75)
    median = float(np.median(errors))
    ax.axvline(median, color="0.2", ls="--", lw=1)
    ax.text(0.98, 0.97, f"median {median:.3g}{note}", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    ax.set_xlabel("error")
    ax.set_ylabel("events")
    ax.grid(alpha=0.3)
