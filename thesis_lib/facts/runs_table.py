"""Finding run directories and loading many of them into the runs table (`load_runs`).

`load_runs` reads each file once and summarises scalars with vectorised numpy, so it stays
close to the cost of plain pandas reading the same files. A candidate that cannot be loaded
is skipped with one warning that lists it and why; a bad line inside a run's facts costs that
line only (the reader skips and counts it) and one warning names every such line. Both lists
are also on the result (`LoadedRuns.skipped_runs`, `LoadedRuns.bad_lines`).
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..errors import FactsError, NoValidRunsError
from .reader import BadLine, _column, _parse_events, _parse_scalars, _typed, _with_loss_aliases, read_config
from ..record.schema import BASE_SCALAR_COLUMNS, config_hash
from ..layout import EVENTS_FILE, FACTS_DIR, SCALARS_FILE
from .seed_dialect import NATIVE_DIALECT, is_thesis_ml_run, load_thesis_ml_run
from .status import run_status

__all__ = ["discover_runs", "load_runs", "LoadedRuns", "SkippedRun"]

_GLOB_CHARS = frozenset("*?[")


def discover_runs(sweep_dir: str | Path | None = None, run_dirs: str | Path | Iterable | None = None) -> list[Path]:
    """Candidate run directories: those under a sweep, and/or those listed (globs expanded).

    Under `sweep_dir` (itself may be a glob) every directory holding a `facts/` folder is a
    candidate, found recursively (`<sweep>/runs/<id>` or `<sweep>/<id>`): one without
    `facts/events.jsonl` too, so that `load_runs` lists it among the skipped. Listed `run_dirs`
    are kept as given, in order, each glob's matches sorted; a glob that matches nothing is
    kept as it is so that `load_runs` can report it. Duplicates are dropped.

    Args:
        sweep_dir: a sweep folder, or a glob of them.
        run_dirs: a run folder or glob, or a list of them.

    Returns:
        Paths in discovery order (sweeps sorted, then run_dirs in the given order).

    Raises:
        FactsError: neither argument given, or a sweep_dir that does not exist.
    """
    if sweep_dir is None and run_dirs is None:
        raise FactsError("discover_runs needs sweep_dir (a sweep folder) or run_dirs (run folders or globs)")
    found: list[Path] = []
    if sweep_dir is not None:
        roots = sorted(glob.glob(str(sweep_dir))) if _is_glob(sweep_dir) else [str(sweep_dir)]
        roots = [root for root in roots if os.path.isdir(root)]
        if not roots:
            raise FactsError(f"sweep_dir {str(sweep_dir)!r} does not exist or is not a directory")
        for root in roots:
            found.extend(_walk_for_runs(root))
    if run_dirs is not None:
        entries = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
        for entry in entries:
            matches = sorted(glob.glob(str(entry))) if _is_glob(entry) else []
            found.extend(Path(m) for m in matches) if matches else found.append(Path(entry))
    return list(dict.fromkeys(found))


class SkippedRun(NamedTuple):
    """A candidate run directory `load_runs` could not load, and why."""

    run_dir: str
    reason: str


class LoadedRuns(tuple):
    """What `load_runs` returns: unpacks as `(runs_df, per_epoch, order)`, and says what it left out.

    Attributes:
        runs_df, per_epoch, order: the three items, also by name.
        skipped_runs: a `SkippedRun` (run_dir, reason) for every candidate that could not be loaded.
        bad_lines: {run_dir: [BadLine, ...]} for every loaded run whose events.jsonl or scalars.csv
            had lines the reader skipped (file, line number, why); the run itself was kept.
    """

    skipped_runs: list
    bad_lines: dict

    def __new__(cls, runs_df: pd.DataFrame, per_epoch: dict, order: list, skipped_runs: Iterable = (),
                bad_lines: dict | None = None):
        loaded = super().__new__(cls, (runs_df, per_epoch, order))
        loaded.skipped_runs, loaded.bad_lines = list(skipped_runs), dict(bad_lines or {})
        return loaded

    def __getnewargs__(self) -> tuple:  # pickle and copy rebuild it whole
        return (*self, self.skipped_runs, self.bad_lines)

    @property
    def runs_df(self) -> pd.DataFrame:
        return self[0]

    @property
    def per_epoch(self) -> dict:
        return self[1]

    @property
    def order(self) -> list:
        return self[2]


def load_runs(
    sweep_dir: str | Path | None = None,
    run_dirs: str | Path | Iterable | None = None,
    *,
    strict: bool = False,
) -> LoadedRuns:
    """Load every valid run into a runs table and per-epoch tables.

    A valid run has config.yaml and facts/events.jsonl with an on_start event. Others are
    skipped with one warning listing each and why (or, with `strict`, an error). Bad lines in a
    valid run's events.jsonl or scalars.csv are skipped and counted, the run kept: one warning
    names each file and line. Run directories of thesis-ml, the seed project (.hydra/config.yaml
    or cfg.yaml instead of config.yaml), are read by `seed_dialect` into the same columns; the
    `dialect` column tells them apart ("thesis-ml", else "thesis-lib").

    Args:
        sweep_dir: a sweep folder (or glob) searched recursively for runs.
        run_dirs: run folders or globs.
        strict: raise instead of skipping a run that cannot be loaded.

    Returns:
        A `LoadedRuns`, which unpacks as (runs_df, per_epoch, order): one row per run (summary
        columns, `test.<metric>` (none for a skipped test pass, whose reason is in
        `test.skipped`), then the config flattened to dotted keys, lists as str);
        {run_dir: read_scalars frame}; run_dir strings in discovery order. Its `skipped_runs`
        and `bad_lines` list what was left out.

    Raises:
        NoValidRunsError: no candidate could be loaded; lists every candidate and its reason.
        FactsError: with `strict`, some candidate could not be loaded; bad arguments.
    """
    candidates = discover_runs(sweep_dir, run_dirs)
    rows: list[dict] = []
    per_epoch: dict[str, pd.DataFrame] = {}
    skipped: list[tuple[Path, str]] = []
    bad_lines: dict[str, list[BadLine]] = {}
    for run_dir in candidates:
        try:
            row, frame, bad = _load_one(run_dir)
        except (FactsError, OSError) as exc:  # OSError: unreadable files (permissions, a folder named like one)
            skipped.append((run_dir, str(exc)))
            continue
        rows.append(row)
        per_epoch[row["run_dir"]] = frame
        if bad:
            bad_lines[row["run_dir"]] = bad
    if not rows:
        if not candidates:
            raise NoValidRunsError(f"No valid runs found: no run directories (with {EVENTS_FILE}) under {sweep_dir}")
        raise NoValidRunsError("No valid runs found:\n" + _reasons(skipped))
    if skipped:
        message = f"skipped {len(skipped)} of {len(candidates)} run directories:\n" + _reasons(skipped)
        if strict:
            raise FactsError(message)
        warnings.warn(message, stacklevel=2)
    if bad_lines:
        warnings.warn(_bad_lines_message([b for bad in bad_lines.values() for b in bad]), stacklevel=2)
    return LoadedRuns(pd.DataFrame(rows), per_epoch, [row["run_dir"] for row in rows],
                      [SkippedRun(str(path), reason) for path, reason in skipped], bad_lines)


def _bad_lines_message(bad: list[BadLine]) -> str:
    """The one warning about the lines skipped inside loaded runs: each file with its line numbers."""
    files: dict[str, list[BadLine]] = {}
    for line in bad:
        files.setdefault(line.path, []).append(line)
    if all(len(lines) == 1 and lines[0].torn for lines in files.values()):
        torn = list(files)
        shown = ", ".join(torn[:5]) + (f" and {len(torn) - 5} more" if len(torn) > 5 else "")
        return f"skipped 1 torn last line in each of {len(torn)} files: {shown}"
    parts = []
    for path, lines in files.items():
        numbers = ", ".join(str(b.line) for b in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
        parts.append(f"  {path}: line{'s' if len(lines) > 1 else ''} {numbers} ({lines[0].reason}"
                     + (", ..." if len(lines) > 1 else "") + ")")
    return (f"skipped {len(bad)} bad line{'s' if len(bad) > 1 else ''} in {len(files)} "
            f"file{'s' if len(files) > 1 else ''}; their runs were kept:\n" + "\n".join(parts))


def _load_one(run_dir: Path) -> tuple[dict, pd.DataFrame, list[BadLine]]:
    """One run's summary row, per-epoch frame and skipped lines; FactsError says why it is invalid."""
    if not run_dir.is_dir():
        raise FactsError("no directory matches this pattern" if _is_glob(run_dir) else "no such directory")
    if is_thesis_ml_run(run_dir):  # written by thesis-ml, the seed project: facts/seed_dialect.py reads it
        run = load_thesis_ml_run(run_dir)
        return {**run.identity, **_summarise_scalars(run.per_epoch), **run.details}, run.per_epoch, run.bad_lines
    events, bad = _parse_events(run_dir / EVENTS_FILE)
    config = read_config(run_dir)
    start_index = max((i for i, e in enumerate(events) if e.get("moment") == "on_start"), default=None)
    if start_index is None:
        raise FactsError(f"no on_start event in {EVENTS_FILE} (the run never started)")
    start = events[start_index]
    columns = start.get("scalar_columns")
    columns = [str(c) for c in columns] if isinstance(columns, list) and columns else None
    scalars_path = run_dir / SCALARS_FILE
    if scalars_path.is_file():
        frame, scalars_bad = _parse_scalars(scalars_path, columns)
        bad = bad + scalars_bad
    else:
        frame = _with_loss_aliases(_typed(pd.DataFrame(columns=columns or list(BASE_SCALAR_COLUMNS)), ("split",)))
    status, stop_reason = run_status(events, start, run_dir)
    end = next((e for e in reversed(events[start_index:]) if e.get("moment") == "on_train_end"), None)
    tests = [e for e in events if e.get("moment") == "on_test_end"]
    model, trainer, params = (_mapping(value) for value in (config.get("model"), config.get("trainer"),
                                                              start.get("params")))
    row = {
        "run_dir": str(run_dir),
        "run_id": start.get("run_id"),
        "status": status,
        "stop_reason": stop_reason,
        "task": model.get("task"),
        "encoder": model.get("encoder"),
        "tokenizer": model.get("bottleneck"),
        "seed": trainer.get("seed"),
        "latent_dim": model.get("latent_dim"),
    }
    row.update(_summarise_scalars(frame))
    last_t = events[-1].get("t") if events else None
    row["total_time_s"] = end.get("total_time_s", last_t) if end is not None else last_t
    row["params_total"] = params.get("total")
    row["params_trainable"] = params.get("trainable")
    row["config_hash"] = start.get("config_hash") or config_hash(config)
    test = _mapping(tests[-1]) if tests else {}
    if test.get("skipped"):  # schema 2: the test pass did not run; it has no metrics, not zeros
        row["test.skipped"] = str(test["skipped"])
    metrics = test.get("metrics")
    for name, value in (metrics.items() if isinstance(metrics, dict) and not test.get("skipped") else ()):
        row[f"test.{name}"] = value
    row["dialect"] = NATIVE_DIALECT
    for key, value in _flatten(config).items():
        row.setdefault(key, value)
    return row, frame, bad


def _summarise_scalars(frame: pd.DataFrame) -> dict:
    """Epoch count, best/final validation loss, mean train throughput and final perplexity."""
    split = frame["split"].to_numpy(dtype=object)
    epoch = _column(frame, "epoch")
    val, train = split == "val", split == "train"
    val_loss = _column(frame, "loss")[val]
    summary: dict[str, Any] = {
        "epochs": len({e for e in epoch.tolist() if e == e}),  # e == e drops NaN
        "best_epoch": np.nan,
        "loss.total_best": np.nan,
        "loss.total_final": float(val_loss[-1]) if val_loss.size else np.nan,
    }
    finite = ~np.isnan(val_loss)
    if finite.any():
        best = int(np.where(finite, val_loss, np.inf).argmin())  # first minimum, as nanargmin
        summary["best_epoch"] = int(epoch[val][best])
        summary["loss.total_best"] = float(val_loss[best])
        if "loss_recon" in frame.columns:
            summary["loss.recon_best"] = float(_column(frame, "loss_recon")[val][best])
    if "throughput" in frame.columns:
        throughput = _column(frame, "throughput")[train]
        throughput = throughput[~np.isnan(throughput)]
        summary["throughput_mean"] = float(throughput.mean()) if throughput.size else np.nan
    if "metric_perplex" in frame.columns:
        perplex = _column(frame, "metric_perplex")[val]
        summary["metric_perplex_final"] = float(perplex[-1]) if perplex.size else np.nan
    return summary


def _mapping(value: Any) -> dict:
    """A dict as it is; anything else (a section a hand edit broke) as an empty one."""
    return value if isinstance(value, dict) else {}


def _flatten(config: dict, prefix: str = "") -> dict:
    """Nested config -> dotted keys; lists and empty dicts become their str so cells stay scalar."""
    flat: dict = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:  # yaml gives plain dicts; abc checks cost 10x more
            flat.update(_flatten(value, f"{dotted}."))
        elif isinstance(value, (list, dict)):
            flat[dotted] = str(value)
        else:
            flat[dotted] = value
    return flat


def _walk_for_runs(root: str) -> list[Path]:
    """Run directories under `root` (those holding a facts/ folder), sorted; a run's own subfolders are not searched.

    A run directory is created with its facts/ folder, so one whose events.jsonl is missing is
    still found here and `load_runs` can say why it skipped it.
    """
    runs = []
    for current, dirnames, _ in os.walk(root):
        if FACTS_DIR in dirnames:
            runs.append(Path(current))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(runs)


def _is_glob(value: Any) -> bool:
    """Whether a path string holds glob characters."""
    return any(char in _GLOB_CHARS for char in str(value))


def _reasons(skipped: Sequence[tuple[Path, str]]) -> str:
    """One indented line per skipped candidate: '  <path>: <reason>'."""
    return "\n".join(f"  {path}: {' '.join(reason.splitlines())}" for path, reason in skipped)
