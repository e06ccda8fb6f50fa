"""Sweep analyses, each one module registered by name: the registry, the runs they read, what they share.

An analysis is a module with `FIGURES` ({figure name: caption} it can draw), `TASKS` (the model
tasks it reads, or None for any single task) and `run(ctx) -> AnalysisOutput`. Adding one is
one file in this folder and one line in `ANALYSES`. Modules are imported on first use, so a
broken or heavy analysis never slows the others down. `select_runs` (the user's filters) and
`filter_tasks` (the tasks an analysis reads) decide which runs it sees.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from ...errors import ConfigError, ReportError, did_you_mean
from ..sweep_plots import FigureStyle, save_figure

__all__ = [
    "ANALYSES",
    "AnalysisContext",
    "AnalysisOutput",
    "get_analysis",
    "check_which_figures",
    "select_runs",
    "filter_tasks",
    "varying_config_columns",
    "run_label",
    "energy_per_run",
    "NON_GRID_COLUMNS",
]

# name -> module under thesis_lib.reports.analyses; one line per analysis.
ANALYSES: dict[str, str] = {
    "generic": "generic",
    "compare_tokenizers": "compare_tokenizers",
    "compare_globals_heads": "compare_globals_heads",
}

# Config keys that differ between runs without defining a grid point: where a run wrote its
# files, what it was called, how it reported, and the seed (which is what we aggregate over).
NON_GRID_COLUMNS = ("trainer.seed", "output_root", "run_name", "data.path", "trainer.resume_from", "trainer.device")
_NON_GRID_PREFIXES = ("telemetry.", "report.", "logging.")
# runs_df columns that load_runs derives from the facts rather than copies from the config.
_SUMMARY_COLUMNS = frozenset({
    "run_dir", "run_id", "status", "stop_reason", "task", "encoder", "tokenizer", "seed", "latent_dim",
    "epochs", "best_epoch", "total_time_s", "throughput_mean", "metric_perplex_final", "params_total",
    "params_trainable", "config_hash", "energy_j_total",
})


@dataclass
class AnalysisOutput:
    """What an analysis produced: figure files by name, tables by name, and a JSON-ready summary."""

    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one sentence each, shown under the figures


@dataclass
class AnalysisContext:
    """Everything an analysis reads: the selected runs, their per-epoch tables and where figures go.

    Attributes:
        runs_df: one row per run (load_runs columns plus `energy_j_total`), already filtered.
        per_epoch: {run_dir: scalars frame} for those runs.
        order: run_dir strings in discovery order.
        figures_dir: where `figure-<name>.png` files are written.
        thresholds: analysis thresholds, e.g. {"val_mse": 0.1}.
        which_figures: the figure names to draw; None draws all.
        style: figure size and resolution.
    """

    runs_df: pd.DataFrame
    per_epoch: dict[str, pd.DataFrame]
    order: list[str]
    figures_dir: Path
    thresholds: dict[str, Any] = field(default_factory=dict)
    which_figures: Optional[list[str]] = None
    style: FigureStyle = field(default_factory=FigureStyle)

    def wants(self, name: str) -> bool:
        """Whether figure `name` is to be drawn."""
        return self.which_figures is None or name in self.which_figures

    def save(self, fig: Any, name: str, output: AnalysisOutput) -> Path:
        """Write `figure-<name>.png` and record it in `output.figures`."""
        path = save_figure(fig, self.figures_dir, name, self.style)
        output.figures[name] = path
        return path

    def split_rows(self, run_dir: str, split: str) -> pd.DataFrame:
        """The per-epoch rows of one split of one run, sorted by epoch."""
        frame = self.per_epoch.get(run_dir)
        if frame is None or frame.empty:
            return pd.DataFrame(columns=["epoch", "split", "t", "loss"])
        return frame[frame["split"] == split].sort_values("epoch")


def get_analysis(name: str) -> ModuleType:
    """The analysis module registered as `name`.

    Args:
        name: a key of `ANALYSES`.

    Returns:
        The imported module (with `FIGURES`, `TASKS` and `run`).

    Raises:
        ConfigError: unknown name; the message lists the registered ones and the nearest match.
    """
    if name not in ANALYSES:
        raise ConfigError(
            f"unknown analysis {name!r}; expected one of {sorted(ANALYSES)}{_hint(name, ANALYSES)}"
        )
    return importlib.import_module(f"{__name__}.{ANALYSES[name]}")


def check_which_figures(analysis: str, which_figures: Optional[Iterable[str]]) -> Optional[list[str]]:
    """Validate figure names against what `analysis` draws; None (all) passes through.

    Raises:
        ConfigError: a name the analysis does not draw, listing the ones it does.
    """
    if which_figures is None:
        return None
    names = [which_figures] if isinstance(which_figures, str) else list(which_figures)
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    allowed = list(get_analysis(analysis).FIGURES)
    for name in names:
        if name not in allowed:
            raise ConfigError(
                f"which_figures: analysis {analysis!r} has no figure {name!r}; "
                f"expected some of {list(allowed)}{_hint(name, allowed)}"
            )
    return names


def select_runs(runs_df: pd.DataFrame, select: Optional[Mapping[str, Any]]) -> pd.DataFrame:
    """Keep the runs whose every selected column holds one of the wanted values.

    Values compare as text (case-insensitive) and, when both parse as numbers, numerically, so
    `{"model.latent_dim": ["16"]}` from a command line matches the integer 16 and 1e-3 matches 0.001.

    Args:
        runs_df: the runs table.
        select: {column: value or list of values}; None or {} keeps every run.

    Returns:
        The matching rows.

    Raises:
        ConfigError: a column that runs_df lacks (nearest match named), or no run matches
            (the message lists the values that exist for each selected column).
    """
    if not select:
        return runs_df
    mask = pd.Series(True, index=runs_df.index)
    for column, wanted in select.items():
        if column not in runs_df.columns:
            raise ConfigError(f"select: no column {column!r} in the runs table{_hint(column, runs_df.columns)}; "
                              "any runs_df column works (tokenizer, seed, model.latent_dim, ...)")
        wanted = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        mask &= _matches(runs_df[column], wanted)
    if not mask.any():
        existing = "; ".join(f"{c}: {sorted(set(runs_df[c].astype(str)))}" for c in select)
        raise ConfigError(
            f"select {dict(select)} matches none of the {len(runs_df)} runs; values that exist: {existing}"
        )
    return runs_df[mask]


def filter_tasks(runs_df: pd.DataFrame, tasks: Optional[tuple], analysis: str) -> tuple[pd.DataFrame, list[dict]]:
    """Keep the runs of the task(s) the analysis reads; a task-agnostic one keeps the most common task.

    Returns:
        (kept runs, [{"run_id", "run_dir", "task", "reason"}] for each run left out).

    Raises:
        ReportError: no run is left; the message names the tasks found.
    """
    task = runs_df["task"].astype(str)
    if tasks is None:
        counts = task.value_counts()
        keep = [sorted(counts.index[counts == counts.max()])[0]] if len(counts) else []
        why = f"losses of different tasks are not comparable; this {analysis!r} report covers the {keep[0]} runs"
    else:
        keep = list(tasks)
        why = f"analysis {analysis!r} reads {' / '.join(keep)} runs only"
    kept = task.isin(keep)
    if not kept.any():
        raise ReportError(f"analysis {analysis!r} reads {' / '.join(keep)} runs, but the {len(runs_df)} selected runs "
                          f"are of tasks {sorted(set(task))}; use analysis='generic' or select other runs")
    excluded = [{"run_id": r["run_id"], "run_dir": r["run_dir"], "task": r["task"],
                 "reason": f"task {r['task']!r}: {why}"} for _, r in runs_df[~kept].iterrows()]
    if excluded:
        warnings.warn(f"{len(excluded)} run(s) left out of the {analysis!r} report: {excluded[0]['reason']}",
                      stacklevel=3)
    return runs_df[kept], excluded


def _matches(column: pd.Series, wanted: list) -> pd.Series:
    """Cells equal to any wanted value, as case-insensitive text or as numbers."""
    text = column.astype(str).str.lower()
    mask = text.isin({str(w).lower() for w in wanted})
    numbers = pd.to_numeric(pd.Series(wanted, dtype=object).astype(str), errors="coerce").dropna()
    if len(numbers):
        mask |= pd.to_numeric(column, errors="coerce").isin(numbers.tolist())
    return mask


def varying_config_columns(runs_df: pd.DataFrame, *, exclude: Iterable[str] = NON_GRID_COLUMNS) -> list[str]:
    """Config columns whose value differs between runs: the sweep's grid axes, seeds excluded.

    Values are compared as strings, so a column that is 16 in one run and missing (NaN) in
    another counts as varying.
    """
    skip = set(exclude)
    varying = []
    for column in runs_df.columns:
        if column in _SUMMARY_COLUMNS or column in skip or column.startswith(("test.", "loss.")):
            continue
        if column.startswith(_NON_GRID_PREFIXES):
            continue
        if runs_df[column].astype(str).nunique() > 1:
            varying.append(column)
    return varying


def run_label(row: Mapping[str, Any], columns: Iterable[str], *, with_seed: bool = True) -> str:
    """A short legend label for a run: its values of the varying columns, then (optionally) its seed."""
    parts = [f"{column.rsplit('.', 1)[-1]}={_short(row.get(column))}" for column in columns]
    seed = row.get("trainer.seed", row.get("seed")) if with_seed else None
    if seed is not None and not (isinstance(seed, float) and np.isnan(seed)):
        parts.append(f"seed {seed}")
    return ", ".join(parts) or str(row.get("run_id", "run"))


def energy_per_run(per_epoch: Mapping[str, pd.DataFrame], order: Iterable[str]) -> dict[str, float]:
    """Joules per run: the sum of its epochs' `energy_j` (NaN when none was measured, as on CPU)."""
    totals = {}
    for run_dir in order:
        frame = per_epoch.get(run_dir)
        if frame is None or "energy_j" not in frame.columns:
            totals[run_dir] = float("nan")
            continue
        totals[run_dir] = float(pd.to_numeric(frame["energy_j"], errors="coerce").sum(min_count=1))
    return totals


def _short(value: Any) -> str:
    """A compact text for a legend value (floats without trailing noise)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _hint(name: str, allowed: Iterable[Any]) -> str:
    """'; did you mean X?' for the closest allowed name (errors.did_you_mean), or ''."""
    close = did_you_mean(name, allowed)
    return f"; did you mean {close!r}?" if close else ""
