"""Reading one run's files back: events, scalars, steps, telemetry and the resolved config.

Reports consume only what is here and in `runs_table` (finding runs, the runs table) and
`status` (RUNNING/CRASHED derivation). A reader accepts every schema version up to
`SCHEMA_VERSION` and refuses newer ones with the version it found.

The readers keep what is good: a line that cannot be read, anywhere in events.jsonl,
scalars.csv, steps.csv or telemetry.csv (a torn last line a killed run leaves, garbage from a
crash, a row of the wrong shape or type), is skipped and counted, never the whole file. Each
read warns once per file naming the lines it skipped, or, given a `bad_lines` list, appends
them to it as `BadLine` records (file, line number, why) for the caller to report instead. scalars.csv rows
are checked against the run's own schema (its header, or the `on_start` event's
`scalar_columns` where the header itself is unreadable): `epoch` a whole number, `split` one of
the known splits, every other column a number or empty, so the columns keep their types.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from ..errors import FactsError, SchemaVersionError
from ..record.schema import BASE_SCALAR_COLUMNS, SCHEMA_VERSION, STEPS_COLUMNS
from ..layout import CONFIG_FILE, EVENTS_FILE, SCALARS_FILE, STEPS_FILE, TELEMETRY_FILE

__all__ = [
    "BadLine",
    "SCALAR_SPLITS",
    "read_events",
    "read_scalars",
    "read_steps",
    "read_telemetry",
    "read_config",
    "describe_bad_lines",
]

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster when present

# The splits a scalars.csv row may name: the loop writes train and val rows; test is the data's third split.
SCALAR_SPLITS = ("train", "val", "test")
TORN_LAST_LINE = "torn last line (a run interrupted mid-write)"
_SHOWN_LINES = 5  # bad lines a warning spells out per file; the rest are counted


@dataclass(frozen=True)
class BadLine:
    """One line a reader skipped.

    Attributes:
        path: the file, as the reader was given it.
        line: its 1-based line number in the file (the header is line 1 of a CSV).
        reason: why it was skipped.
        torn: whether it is the unterminated last line of a run interrupted mid-write.
    """

    path: str
    line: int
    reason: str
    torn: bool = False

    def __str__(self) -> str:
        return f"{self.path}, line {self.line}: {self.reason}"


def read_events(run_dir: str | Path, *, bad_lines: Optional[list] = None) -> list[dict]:
    """The events of a run, in file order; lines that are not events are skipped and named (see `bad_lines`).

    A line is skipped when it is not a JSON object, has no `moment`, or has a `t` that is not a
    number; an unterminated last line that parses whole still counts.

    Args:
        run_dir: the run directory.
        bad_lines: a list to append a `BadLine` to for every skipped line instead of warning.

    Returns:
        One dict per event line of facts/events.jsonl.

    Raises:
        FactsError: the file is missing.
        OSError: the file exists but cannot be read (permissions, a folder by that name).
        SchemaVersionError: an event was written by a newer schema than this version reads.
    """
    path = Path(run_dir) / EVENTS_FILE
    events, bad = _parse_events(path)
    _hand_over(path, bad, bad_lines)
    return events


def read_scalars(
    run_dir: str | Path, *, columns: Optional[Sequence[str]] = None, bad_lines: Optional[list] = None
) -> pd.DataFrame:
    """The per-epoch table: one row per (epoch, split), plus `train_loss` and `val_loss` aliases.

    Rows that do not fit the run's schema are skipped and named (see the module doc and
    `bad_lines`); `epoch` is int64 and every column but `split` numeric. A resumed run may have written
    an epoch twice; the last row for each (epoch, split) is kept.

    Args:
        run_dir: the run directory.
        columns: the run's scalar columns from its on_start event (`scalar_columns`): the header
            to read the rows with when the file's own first line is not a header.
        bad_lines: a list to append a `BadLine` to for every skipped line instead of warning.

    Returns:
        The facts/scalars.csv columns plus `train_loss` and `val_loss`.

    Raises:
        FactsError: the file is missing, or its first line is not a header with `epoch`, `split`
            and `loss` and no `columns` were given.
        OSError: the file exists but cannot be read.
    """
    path = Path(run_dir) / SCALARS_FILE
    frame, bad = _parse_scalars(path, columns)
    _hand_over(path, bad, bad_lines)
    return frame


def read_steps(run_dir: str | Path, *, bad_lines: Optional[list] = None) -> pd.DataFrame:
    """facts/steps.csv (epoch, step, t, loss, lr at sync-point resolution); empty if the run has none.

    Rows that are not numbers under the header are skipped and warned about, or appended to
    `bad_lines` (a list of `BadLine`) when one is given.

    Raises:
        FactsError: the file exists but its first line is not a steps header.
        OSError: the file exists but cannot be read.
    """
    return _read_optional_csv(Path(run_dir) / STEPS_FILE, STEPS_COLUMNS, ("t", "loss"), bad_lines)


def read_telemetry(run_dir: str | Path, *, bad_lines: Optional[list] = None) -> pd.DataFrame:
    """facts/telemetry.csv (t, cpu_pct, rss_mb, gpu<i>_* columns); empty if the run has none.

    Rows that are not numbers under the header are skipped and warned about, or appended to
    `bad_lines` (a list of `BadLine`) when one is given.

    Raises:
        FactsError: the file exists but its first line is not a telemetry header.
        OSError: the file exists but cannot be read.
    """
    return _read_optional_csv(Path(run_dir) / TELEMETRY_FILE, ("t", "cpu_pct", "rss_mb"), ("t",), bad_lines)


def read_config(run_dir: str | Path) -> dict:
    """The resolved config of a run, from its config.yaml.

    Args:
        run_dir: the run directory.

    Returns:
        The config as a nested dict.

    Raises:
        FactsError: the file is missing, not YAML, or not a mapping.
        OSError: the file exists but cannot be read.
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


def describe_bad_lines(path: str | Path, bad: Sequence[BadLine]) -> str:
    """One sentence naming the lines skipped in one file (the first few with their reasons, then a count)."""
    if len(bad) == 1 and bad[0].torn:
        return f"{path}: skipped 1 {TORN_LAST_LINE}"
    shown = "; ".join(f"line {b.line} ({b.reason})" for b in bad[:_SHOWN_LINES])
    more = f"; and {len(bad) - _SHOWN_LINES} more" if len(bad) > _SHOWN_LINES else ""
    return f"{path}: skipped {len(bad)} bad line{'' if len(bad) == 1 else 's'} and kept the rest: {shown}{more}"


def _hand_over(path: Path, bad: list[BadLine], sink: Optional[list]) -> None:
    """The skipped lines of one file: appended to the caller's list when given, else warned about."""
    if not bad:
        return
    if sink is not None:
        sink.extend(bad)
    else:
        warnings.warn(describe_bad_lines(path, bad), stacklevel=3)


def _read_optional_csv(
    path: Path, columns: Sequence[str], required: Sequence[str], sink: Optional[list]
) -> pd.DataFrame:
    """A numeric facts CSV that may be absent (an empty frame with `columns`); bad rows skipped and handed over."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _typed(pd.DataFrame(columns=list(columns)), ())
    frame, bad = _parse_csv(path, data, required=required, fallback=None, text_columns=(), default=list(columns))
    _hand_over(path, bad, sink)
    return frame


def _parse_events(path: Path) -> tuple[list[dict], list[BadLine]]:
    """Events of one file and the lines skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FactsError(f"{path} is missing (a run writes its lifecycle events there)") from None
    lines = data.split(b"\n")
    torn_tail = lines[-1] != b""
    if not torn_tail:
        lines.pop()
    last = len(lines)
    events: list[dict] = []
    bad: list[BadLine] = []
    where = str(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            # An unterminated last line that does not parse is a write a kill cut short.
            if number == last and torn_tail:
                bad.append(BadLine(where, number, TORN_LAST_LINE, torn=True))
            else:
                bad.append(BadLine(where, number, f"not a JSON object ({_json_error(exc)})"))
            continue
        reason = _not_an_event(event)
        if reason:
            bad.append(BadLine(where, number, reason))
            continue
        version = event.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path}: schema_version {version} is newer than this thesis-lib reads ({SCHEMA_VERSION}); "
                "upgrade thesis-lib to read it"
            )
        events.append(event)
    return events, bad


def _not_an_event(event: object) -> str:
    """Why a parsed JSON line is not an event, or '' when it is one."""
    if not isinstance(event, dict):
        return f"a JSON {type(event).__name__}, not an event object"
    if not isinstance(event.get("moment"), str):
        return "a JSON object without a 'moment', not an event"
    t = event.get("t")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
        return f"its 't' is {t!r}, not a number of seconds"
    return ""


def _json_error(exc: BaseException) -> str:
    """A JSON error without json's own 'line 1 column n', which would read as a line of the file."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _parse_scalars(path: Path, columns: Optional[Sequence[str]] = None) -> tuple[pd.DataFrame, list[BadLine]]:
    """The deduplicated, typed per-epoch frame with loss aliases, and the lines skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FactsError(f"{path} is missing (a run writes one row per epoch and split there)") from None
    fallback = list(columns) if columns else None
    frame, bad = _parse_csv(path, data, required=("epoch", "split", "loss"), fallback=fallback,
                            text_columns=("split",), default=fallback or list(BASE_SCALAR_COLUMNS))
    if len(frame.index):
        keys = list(zip(frame["epoch"].tolist(), frame["split"].tolist()))
        # A resumed run repeats the epochs after its checkpoint; the later rows are the ones that count.
        if len(set(keys)) != len(keys):
            frame = frame.drop_duplicates(subset=["epoch", "split"], keep="last").reset_index(drop=True)
    return _with_loss_aliases(frame), bad


def _parse_csv(
    path: Path,
    data: bytes,
    *,
    required: Sequence[str],
    fallback: Optional[list[str]],
    text_columns: Sequence[str],
    default: Optional[list[str]] = None,
) -> tuple[pd.DataFrame, list[BadLine]]:
    """A facts CSV as a typed frame, and the lines skipped.

    A line is kept when it has as many fields as the header and every field is a number or
    empty (text columns: one of SCALAR_SPLITS; `epoch`, where present, a whole number).
    Writers never quote a field, so a quote character is taken as it stands.
    """
    where = str(path)
    lines = data.decode("utf-8", errors="replace").split("\n")
    bad: list[BadLine] = []
    if lines[-1] == "":
        lines.pop()
    elif lines:  # the last line has no newline: a write cut short
        bad.append(BadLine(where, len(lines), TORN_LAST_LINE, torn=True))
        lines.pop()
    header = [name.strip() for name in lines[0].rstrip("\r").split(",")] if lines else None
    first_row = 2
    problem = _header_problem(header, required) if header is not None else None
    if problem:
        if fallback is None:
            raise FactsError(f"{path}: its first line is not a usable header ({problem}), so no row can be read")
        bad.append(BadLine(where, 1, f"not a header ({problem}); rows read with the on_start scalar_columns"))
        header = fallback
    if header is None:
        header = list(default or fallback or [])
    width = len(header)
    kept, numbers = [], []
    for number, line in enumerate(lines[first_row - 1:], start=first_row):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.count(",") + 1
        if fields != width:
            bad.append(BadLine(where, number, f"{fields} fields where the header has {width}"))
        elif "\ufffd" in line or "\x00" in line:
            bad.append(BadLine(where, number, "not UTF-8 text"))
        else:
            kept.append(line)
            numbers.append(number)
    if kept:
        text = ",".join(header) + "\n" + "\n".join(kept) + "\n"
        frame = pd.read_csv(io.StringIO(text), quoting=csv.QUOTE_NONE, header=0, names=header,
                            dtype={name: str for name in text_columns if name in header})
    else:
        frame = pd.DataFrame(columns=header)
    frame, wrong = _check_types(frame, text_columns)
    for row, reason in wrong:
        bad.append(BadLine(where, numbers[row], reason))
    bad.sort(key=lambda b: b.line)
    return frame, bad


def _header_problem(header: list[str], required: Sequence[str]) -> str:
    """What makes a first line unusable as a header ('' when it is fine)."""
    if any(not name or "\ufffd" in name or "\x00" in name for name in header):
        return "an empty or unreadable column name"
    if len(set(header)) != len(header):
        return "a column name repeats"
    missing = [name for name in required if name not in header]
    if missing:
        shown = header[:8] + (["..."] if len(header) > 8 else [])
        return f"lacks {missing}; it reads {shown}"
    return ""


def _check_types(frame: pd.DataFrame, text_columns: Sequence[str]) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Drop the rows whose cells do not fit their column's type; (typed frame, [(row position, why)])."""
    n = len(frame.index)
    reasons: list[Optional[str]] = [None] * n

    def mark(mask: np.ndarray, values: pd.Series, why: str) -> None:
        for position in np.flatnonzero(mask):
            if reasons[position] is None:
                value = values.iloc[position]
                # numpy 2 spells a numpy scalar's repr np.int64(-1); the line held -1
                reasons[position] = why.format(value=value.item() if isinstance(value, np.generic) else value)

    for name in frame.columns:
        if name in text_columns:
            continue
        values = frame[name]
        if values.dtype.kind not in "fiu":
            numeric = pd.to_numeric(values, errors="coerce")
            mark(values.notna().to_numpy() & numeric.isna().to_numpy(), values, f"{name} {{value!r}} is not a number")
            frame[name] = numeric.astype(float) if numeric.dtype.kind not in "fiu" else numeric
    if "epoch" in frame.columns:
        epoch = frame["epoch"].to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(epoch) & (epoch >= 0) & (np.floor(epoch) == epoch)
        mark(~whole, frame["epoch"], "epoch {value!r} is not a whole number")
    if "split" in frame.columns:
        split = frame["split"]
        mark(~split.isin(SCALAR_SPLITS).to_numpy(), split, f"split {{value!r}} is not one of {', '.join(SCALAR_SPLITS)}")
    wrong = [(position, why) for position, why in enumerate(reasons) if why is not None]
    if wrong:
        keep = np.array([why is None for why in reasons], dtype=bool)
        frame = frame.loc[keep].reset_index(drop=True)
    return _typed(frame, text_columns), wrong


def _typed(frame: pd.DataFrame, text_columns: Iterable[str]) -> pd.DataFrame:
    """`epoch` as int64, text columns as object, every other column numeric (an empty frame included)."""
    text = set(text_columns)
    for name in frame.columns:
        if name == "epoch":
            frame[name] = frame[name].astype("int64")
        elif name in text:
            frame[name] = frame[name].astype(object)
        elif frame[name].dtype.kind not in "fiu":
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return frame


def _with_loss_aliases(frame: pd.DataFrame) -> pd.DataFrame:
    """Add train_loss / val_loss: the loss on rows of that split, NaN elsewhere."""
    split = frame["split"].to_numpy(dtype=object) if "split" in frame.columns else np.full(len(frame), None)
    loss = _column(frame, "loss") if "loss" in frame.columns else np.full(len(frame), np.nan)
    frame["train_loss"] = np.where(split == "train", loss, np.nan)
    frame["val_loss"] = np.where(split == "val", loss, np.nan)
    return frame


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64, empty cells as NaN."""
    values = frame[name].to_numpy()
    if values.dtype.kind in "fiub":  # the usual case: read_csv already parsed numbers
        return values.astype(float, copy=False)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
