"""Reading one run's files back: events, scalars, steps, telemetry and the resolved config.

Reports consume only what is here and in `runs_table` (finding runs, the runs table) and
`status` (RUNNING/CRASHED derivation). A reader accepts every schema version up to
`SCHEMA_VERSION`, refuses newer ones with the version it found, and tolerates the one torn
last line a killed run can leave (it warns with the count and skips it).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

from ..errors import FactsError, SchemaVersionError
from ..record.schema import BASE_SCALAR_COLUMNS, SCHEMA_VERSION, STEPS_COLUMNS
from ..layout import CONFIG_FILE, EVENTS_FILE, SCALARS_FILE, STEPS_FILE, TELEMETRY_FILE

__all__ = [
    "read_events",
    "read_scalars",
    "read_steps",
    "read_telemetry",
    "read_config",
]

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster when present


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
