"""Reading run directories back: discovery, events, scalars, status, and the runs table.

Reports consume only what is here. A reader accepts every schema version up to
`SCHEMA_VERSION`, refuses newer ones with the version it found, and tolerates the one torn
last line a killed run can leave (it warns with the count and skips it). `load_runs` reads
each file once and summarises scalars with vectorised numpy, so it stays close to the cost
of plain pandas reading the same files.
"""

from __future__ import annotations

import glob
import io
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from ..errors import FactsError, NoValidRunsError, SchemaVersionError
from .schema import (
    BASE_SCALAR_COLUMNS,
    CONFIG_FILE,
    EVENTS_FILE,
    SCALARS_FILE,
    SCHEMA_VERSION,
    STEPS_COLUMNS,
    STEPS_FILE,
    TELEMETRY_FILE,
    config_hash,
)

__all__ = [
    "discover_runs",
    "read_events",
    "read_scalars",
    "read_steps",
    "read_telemetry",
    "read_config",
    "run_status",
    "load_runs",
]

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster when present
_GLOB_CHARS = frozenset("*?[")


def discover_runs(sweep_dir: str | Path | None = None, run_dirs: str | Path | Iterable | None = None) -> list[Path]:
    """Candidate run directories: those under a sweep, and/or those listed (globs expanded).

    Under `sweep_dir` (itself may be a glob) every directory holding `facts/events.jsonl` is a
    candidate, found recursively (`<sweep>/runs/<id>` or `<sweep>/<id>`). Listed `run_dirs`
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


def read_events(run_dir: str | Path) -> list[dict]:
    """The events of a run, in file order; a torn last line is skipped with a warning.

    Args:
        run_dir: the run directory.

    Returns:
        One dict per event line of facts/events.jsonl.

    Raises:
        FactsError: the file is missing, or a line other than the last is not a JSON object.
        SchemaVersionError: an event was written by a newer schema than this version reads.
    """
    path = Path(run_dir) / EVENTS_FILE
    events, skipped = _parse_events(path)
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} torn last line (a run interrupted mid-write)", stacklevel=2)
    return events


def read_scalars(run_dir: str | Path) -> pd.DataFrame:
    """The per-epoch table: one row per (epoch, split), plus `train_loss` and `val_loss` aliases.

    A torn last line is skipped with a warning. A resumed run may have written an epoch twice;
    the last row for each (epoch, split) is kept.

    Args:
        run_dir: the run directory.

    Returns:
        The facts/scalars.csv columns plus `train_loss` and `val_loss`.

    Raises:
        FactsError: the file is missing or not a CSV with `epoch` and `split` columns.
    """
    path = Path(run_dir) / SCALARS_FILE
    frame, skipped = _parse_scalars(path)
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} torn last line (a run interrupted mid-write)", stacklevel=2)
    return frame


def read_steps(run_dir: str | Path) -> pd.DataFrame:
    """facts/steps.csv (epoch, step, t, loss, lr at sync-point resolution); empty if the run has none."""
    return _read_optional_csv(Path(run_dir) / STEPS_FILE, STEPS_COLUMNS)


def read_telemetry(run_dir: str | Path) -> pd.DataFrame:
    """facts/telemetry.csv (t, cpu_pct, rss_mb, gpu<i>_* columns); empty if the run has none."""
    return _read_optional_csv(Path(run_dir) / TELEMETRY_FILE, ("t", "cpu_pct", "rss_mb"))


def _read_optional_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A facts CSV that may be absent (an empty frame with `columns`) or torn at its end (skipped, warned)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return pd.DataFrame(columns=list(columns))
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        warnings.warn(f"{path}: skipped 1 torn last line (a run interrupted mid-write)", stacklevel=3)
    if not data.strip():
        return pd.DataFrame(columns=list(columns))
    try:
        return pd.read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError) as exc:
        raise FactsError(f"{path} is not a readable CSV: {exc}") from None


def read_config(run_dir: str | Path) -> dict:
    """The resolved config of a run, from its config.yaml.

    Args:
        run_dir: the run directory.

    Returns:
        The config as a nested dict.

    Raises:
        FactsError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = yaml.load(path.read_bytes(), Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise FactsError(f"{path} is missing (every run writes its resolved config there)") from None
    except yaml.YAMLError as exc:
        raise FactsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise FactsError(f"{path} holds a {type(config).__name__}; expected a mapping of config sections")
    return config


def run_status(
    events: Sequence[Mapping], env_or_start_event: Mapping | None, run_dir: str | Path | None = None
) -> tuple[str, str | None]:
    """Derive (status, stop_reason) from a run's events.

    The last `on_train_end` after the last `on_start` gives the status it recorded. Otherwise an
    `on_exception` after it means FAILED. Otherwise the run has no end: RUNNING if the recorded
    pid is alive on this same host, else CRASHED. (A reused pid can make a dead run look alive.)
    On another host, given `run_dir`, a write to its facts in the last 5 minutes reads as
    RUNNING (the telemetry sampler appends every interval), else CRASHED.

    Args:
        events: the run's events in order.
        env_or_start_event: env.json or the on_start event: anything with `pid` and `host`.

    Returns:
        (status, stop_reason): a status of `schema.STATUSES`; the reason is None while RUNNING.
    """
    start = max((i for i, e in enumerate(events) if e.get("moment") == "on_start"), default=-1)
    since_start = events[start + 1 :]
    for event in reversed(since_start):
        if event.get("moment") == "on_train_end":
            return str(event.get("status") or "COMPLETED"), event.get("stop_reason")
    for event in reversed(since_start):
        if event.get("moment") == "on_exception":
            return "FAILED", f"{event.get('error_type', 'error')}: {event.get('message', '')}"
    origin = env_or_start_event or {}
    pid, host = origin.get("pid"), origin.get("host")
    if pid is None:
        return "CRASHED", "no end event, and no pid recorded to check whether the process lives"
    here = socket.gethostname()
    if host is not None and host != here:
        # A pid cannot be checked across hosts (a cluster node read from a login node): the run's
        # own writes are the heartbeat; the telemetry sampler appends a row every interval_s.
        quiet = _seconds_since_last_write(run_dir) if run_dir is not None else None
        if quiet is not None and quiet < _HEARTBEAT_S:
            return "RUNNING", None
        since = f"; its facts were last written {quiet:.0f} s ago" if quiet is not None else ""
        return "CRASHED", f"no end event; process {pid} ran on host {host!r}, which cannot be checked from {here!r}{since}"
    if _pid_alive(int(pid)):
        return "RUNNING", None
    return "CRASHED", f"no end event and process {pid} on {here!r} is gone"


# A run on another host that wrote nothing for this long is taken as gone.
_HEARTBEAT_S = 300.0


def _seconds_since_last_write(run_dir: str | Path) -> float | None:
    """Seconds since the newest write to the run's facts files, or None when none exists."""
    import time

    mtimes = []
    for name in (EVENTS_FILE, SCALARS_FILE, STEPS_FILE, TELEMETRY_FILE):
        try:
            mtimes.append(os.stat(Path(run_dir) / name).st_mtime)
        except OSError:
            continue
    return time.time() - max(mtimes) if mtimes else None


def load_runs(
    sweep_dir: str | Path | None = None,
    run_dirs: str | Path | Iterable | None = None,
    *,
    strict: bool = False,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str]]:
    """Load every valid run into a runs table and per-epoch tables.

    A valid run has config.yaml and facts/events.jsonl with an on_start event. Others are
    skipped with one warning listing each and why (or, with `strict`, an error).

    Args:
        sweep_dir: a sweep folder (or glob) searched recursively for runs.
        run_dirs: run folders or globs.
        strict: raise instead of skipping a run that cannot be loaded.

    Returns:
        (runs_df, per_epoch, order): one row per run (summary columns, `test.<metric>`, then
        the config flattened to dotted keys, lists as str); {run_dir: read_scalars frame};
        run_dir strings in discovery order.

    Raises:
        NoValidRunsError: no candidate could be loaded; lists every candidate and its reason.
        FactsError: with `strict`, some candidate could not be loaded; bad arguments.
    """
    candidates = discover_runs(sweep_dir, run_dirs)
    rows: list[dict] = []
    per_epoch: dict[str, pd.DataFrame] = {}
    skipped: list[tuple[Path, str]] = []
    torn: list[str] = []
    for run_dir in candidates:
        try:
            row, frame, torn_files = _load_one(run_dir)
        except (FactsError, OSError) as exc:  # OSError: unreadable files (permissions, a folder named like one)
            skipped.append((run_dir, str(exc)))
            continue
        rows.append(row)
        per_epoch[row["run_dir"]] = frame
        torn.extend(torn_files)
    if not rows:
        if not candidates:
            raise NoValidRunsError(f"No valid runs found: no run directories (with {EVENTS_FILE}) under {sweep_dir}")
        raise NoValidRunsError("No valid runs found:\n" + _reasons(skipped))
    if skipped:
        message = f"skipped {len(skipped)} of {len(candidates)} run directories:\n" + _reasons(skipped)
        if strict:
            raise FactsError(message)
        warnings.warn(message, stacklevel=2)
    if torn:
        shown = ", ".join(torn[:5]) + (f" and {len(torn) - 5} more" if len(torn) > 5 else "")
        warnings.warn(f"skipped 1 torn last line in each of {len(torn)} files: {shown}", stacklevel=2)
    return pd.DataFrame(rows), per_epoch, [row["run_dir"] for row in rows]


def _load_one(run_dir: Path) -> tuple[dict, pd.DataFrame, list[str]]:
    """One run's summary row, per-epoch frame and torn files; FactsError says why it is invalid."""
    if not run_dir.is_dir():
        raise FactsError("no directory matches this pattern" if _is_glob(run_dir) else "no such directory")
    config = read_config(run_dir)
    events, events_torn = _parse_events(run_dir / EVENTS_FILE)
    start_index = max((i for i, e in enumerate(events) if e.get("moment") == "on_start"), default=None)
    if start_index is None:
        raise FactsError(f"no on_start event in {EVENTS_FILE} (the run never started)")
    start = events[start_index]
    torn = [str(run_dir / EVENTS_FILE)] if events_torn else []
    scalars_path = run_dir / SCALARS_FILE
    if scalars_path.is_file():
        frame, scalars_torn = _parse_scalars(scalars_path)
        torn += [str(scalars_path)] if scalars_torn else []
    else:
        frame = _with_loss_aliases(pd.DataFrame(columns=list(start.get("scalar_columns") or BASE_SCALAR_COLUMNS)))
    status, stop_reason = run_status(events, start, run_dir)
    end = next((e for e in reversed(events[start_index:]) if e.get("moment") == "on_train_end"), None)
    tests = [e for e in events if e.get("moment") == "on_test_end"]
    model, trainer = config.get("model") or {}, config.get("trainer") or {}
    params = start.get("params") or {}
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
    for name, value in ((tests[-1].get("metrics") or {}) if tests else {}).items():
        row[f"test.{name}"] = value
    for key, value in _flatten(config).items():
        row.setdefault(key, value)
    return row, frame, torn


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


def _parse_events(path: Path) -> tuple[list[dict], int]:
    """Events of one file and the number of torn last lines skipped (0 or 1)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FactsError(f"{path} is missing (a run writes its lifecycle events there)") from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    # Only the last line may be torn (cut mid-write, or garbage after a crash); without its
    # newline it still counts when it parses whole, since a cut JSON object cannot parse.
    last = len(lines)
    events: list[dict] = []
    skipped = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError(f"a JSON {type(event).__name__}, not an object")
        except ValueError as exc:
            if number == last:
                skipped = 1
                break
            raise FactsError(f"{path}, line {number}: not a JSON object ({exc}); each line must be one event") from None
        version = event.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path}: schema_version {version} is newer than this thesis-lib reads ({SCHEMA_VERSION}); "
                "upgrade thesis-lib to read it"
            )
        events.append(event)
    return events, skipped


def _parse_scalars(path: Path) -> tuple[pd.DataFrame, int]:
    """The deduplicated per-epoch frame with loss aliases, and the torn lines skipped (0 or 1)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FactsError(f"{path} is missing (a run writes one row per epoch and split there)") from None
    skipped = 0
    if data and not data.endswith(b"\n"):
        data, skipped = data[: data.rfind(b"\n") + 1], 1
    if not data:
        return _with_loss_aliases(pd.DataFrame(columns=list(BASE_SCALAR_COLUMNS))), skipped
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except (ValueError, pd.errors.ParserError) as exc:
        raise FactsError(f"{path} is not a readable CSV: {exc}") from None
    missing = [c for c in ("epoch", "split", "loss") if c not in frame.columns]
    if missing:
        raise FactsError(f"{path} lacks columns {missing}; its header is {list(frame.columns)}")
    keys = list(zip(frame["epoch"].tolist(), frame["split"].tolist()))
    # A resumed run repeats the epochs after its checkpoint; the later rows are the ones that count.
    if len(set(keys)) != len(keys):
        frame = frame.drop_duplicates(subset=["epoch", "split"], keep="last").reset_index(drop=True)
    return _with_loss_aliases(frame), skipped


def _with_loss_aliases(frame: pd.DataFrame) -> pd.DataFrame:
    """Add train_loss / val_loss: the loss on rows of that split, NaN elsewhere."""
    split = frame["split"].to_numpy(dtype=object)
    loss = _column(frame, "loss")
    frame["train_loss"] = np.where(split == "train", loss, np.nan)
    frame["val_loss"] = np.where(split == "val", loss, np.nan)
    return frame


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64, empty cells as NaN."""
    values = frame[name].to_numpy()
    if values.dtype.kind in "fiub":  # the usual case: read_csv already parsed numbers
        return values.astype(float, copy=False)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


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
    """Directories under `root` holding facts/events.jsonl, sorted; a run's own subfolders are not searched."""
    runs = []
    for current, dirnames, _ in os.walk(root):
        if "facts" in dirnames and os.path.isfile(os.path.join(current, EVENTS_FILE)):
            runs.append(Path(current))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(runs)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks without sending)."""
    if os.name != "posix":
        return False  # os.kill on Windows would terminate the process
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # it exists, under another user
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _is_glob(value: Any) -> bool:
    """Whether a path string holds glob characters."""
    return any(char in _GLOB_CHARS for char in str(value))


def _reasons(skipped: Sequence[tuple[Path, str]]) -> str:
    """One indented line per skipped candidate: '  <path>: <reason>'."""
    return "\n".join(f"  {path}: {' '.join(reason.splitlines())}" for path, reason in skipped)
