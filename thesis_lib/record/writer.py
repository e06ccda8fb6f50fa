"""RunWriter: appends a run's facts (events.jsonl, scalars.csv) and writes config.yaml and env.json.

Writes never lose what was written before: both facts files are opened in append mode and each
line goes out in one write call, so a run killed mid-write leaves at most one torn last line,
which readers skip. A resumed run opens a second RunWriter on the same directory and appends.

Nothing is written outside the run directory: a RunWriter refuses a run whose files or folders
(any path of `layout.RUN_LAYOUT`: facts/, logs/, report/, model.pt, ...) are symbolic links, and
opens its appended files with O_NOFOLLOW (`atomic_files.append_open`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import enum
import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from ..errors import FactsError
from ..atomic_files import append_open, atomic_write_text, check_inside
from ..layout import CONFIG_FILE, ENV_FILE, EVENTS_FILE, FACTS_DIR, RUN_LAYOUT, SCALARS_FILE, STEPS_FILE
from .schema import EVENT_FIELDS, MOMENTS, SCHEMA_VERSION, STEPS_COLUMNS

__all__ = ["RunWriter", "check_run_dir", "to_plain"]


class RunWriter:
    """Append-only writer of one run's facts.

    Events (`facts/events.jsonl`) are written with one unbuffered write per line, so each is on
    disk the moment `event` returns. Scalar rows (`facts/scalars.csv`) are buffered and reach
    the disk on `flush()` (the loop calls it at each epoch end) and on `close()`.

    Non-finite floats (NaN, inf) are written as `null` in events, since JSON has no NaN, and as
    `nan`/`inf` in scalars.csv, which pandas reads back as floats.

    Not thread-safe: use one RunWriter from one thread (only rank 0 of a distributed run writes).

    Args:
        run_dir: the run directory (its `facts/` folder is created if missing).
        run_id: the id stamped on every event.
        scalar_columns: the fixed scalars.csv header (see `schema.scalar_columns`); must hold
            `epoch` and `split`, the key a reader deduplicates rows on.
        start_time: `time.time()` when the run started; `t` counts seconds from it. Defaults
            to now.

    Raises:
        FactsError: bad columns, or an existing scalars.csv whose header differs from them.
        UnsafePathError: a file or folder of the run (see `check_run_dir`) is a symbolic link.
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str,
        scalar_columns: Sequence[str],
        *,
        start_time: float | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = str(run_id)
        self.scalar_columns = tuple(scalar_columns)
        self.events_path = self.run_dir / EVENTS_FILE
        self.scalars_path = self.run_dir / SCALARS_FILE
        _check_columns(self.scalar_columns, self.scalars_path)
        # t is measured on the monotonic clock so a wall-clock jump (NTP) cannot make it go back.
        offset = 0.0 if start_time is None else max(0.0, time.time() - float(start_time))
        self._monotonic_zero = time.monotonic() - offset
        self._column_set = frozenset(self.scalar_columns)
        self._row_buffer = io.StringIO()
        self._row_writer = csv.writer(self._row_buffer, lineterminator="\n")
        self._closed = False
        self._steps = None  # facts/steps.csv, opened on the first rows

        check_run_dir(self.run_dir)  # before anything is created, truncated or appended
        (self.run_dir / FACTS_DIR).mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.events_path, complete=_is_json_object)
        _drop_torn_tail(self.scalars_path, complete=None)
        existing_header = _read_header(self.scalars_path)
        if existing_header is not None and existing_header != list(self.scalar_columns):
            raise FactsError(
                f"{self.scalars_path} already has header {existing_header}, but this run writes "
                f"{list(self.scalar_columns)}; a resumed run must use the same model scalars"
            )
        self._events = append_open(self.events_path, "ab", inside=self.run_dir, buffering=0)
        try:
            self._scalars = append_open(self.scalars_path, "a", inside=self.run_dir, encoding="utf-8", newline="")
        except BaseException:
            self._events.close()
            raise
        if existing_header is None:
            self._scalars.write(self._format_row(self.scalar_columns))
            self._scalars.flush()

    # -- whole files ---------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write the resolved config to `config.yaml` atomically, keys in their given order.

        Raises:
            FactsError: a value cannot be represented in YAML (the message names its key).
        """
        plain = to_plain(config, where="config", nonfinite_to_none=False)
        text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, allow_unicode=True)
        return atomic_write_text(self.run_dir / CONFIG_FILE, text, inside=self.run_dir)

    def write_env(self, env: Mapping[str, Any]) -> Path:
        """Write the environment description (see `collect_env`) to `env.json` atomically."""
        plain = to_plain(env, where="env", nonfinite_to_none=True, unknown_as_str=True)
        return atomic_write_text(self.run_dir / ENV_FILE, json.dumps(plain, indent=2) + "\n", inside=self.run_dir)

    # -- appended facts ------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the run's start time."""
        return time.monotonic() - self._monotonic_zero

    def event(self, moment: str, /, **payload: Any) -> dict:
        """Append one lifecycle event to `facts/events.jsonl` and return it as written.

        Args:
            moment: one of `schema.MOMENTS`.
            **payload: the moment's fields (see docs/architecture.md); numpy and torch scalars
                and arrays become plain numbers and lists, NaN and inf become null.

        Returns:
            The event dict: schema_version, moment, run_id, time (UTC ISO), t, then the payload.

        Raises:
            FactsError: unknown moment, a payload key that shadows an event field, a value JSON
                cannot hold, or the writer is closed.
        """
        self._check_open()
        if moment not in MOMENTS:
            raise FactsError(f"unknown event moment {moment!r} for {self.events_path}; expected one of {list(MOMENTS)}")
        shadowing = sorted(set(payload) & set(EVENT_FIELDS))
        if shadowing:
            raise FactsError(
                f"event {moment!r} payload uses reserved keys {shadowing}; every event sets {list(EVENT_FIELDS)} itself"
            )
        record = {
            "schema_version": SCHEMA_VERSION,
            "moment": moment,
            "run_id": self.run_id,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "t": round(self.elapsed(), 3),
        }
        record.update(to_plain(payload, where=f"event {moment!r}", nonfinite_to_none=True))
        line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        _write_all(self._events, line)
        return record

    def scalars(self, row: Mapping[str, Any]) -> None:
        """Append one (epoch, split) row to `facts/scalars.csv`; missing columns stay empty.

        `t` is filled with `elapsed()` when the row does not give it. The row is buffered
        until `flush()` or `close()`.

        Raises:
            FactsError: a key is not in the header (the message names the keys and the header),
                or the writer is closed.
        """
        self._check_open()
        unknown = [key for key in row if key not in self._column_set]
        if unknown:
            raise FactsError(
                f"scalars row for {self.scalars_path} has keys not in its header: {unknown}; "
                f"header: {list(self.scalar_columns)}"
            )
        values = []
        for column in self.scalar_columns:
            if column in row:
                values.append(_csv_value(row[column], column))
            elif column == "t":
                values.append(round(self.elapsed(), 3))
            else:
                values.append("")
        self._scalars.write(self._format_row(values))

    def steps(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append sync-point rows (epoch, step, t, loss, lr) to `facts/steps.csv`, one write per row.

        The loop buffers these in memory during an epoch and hands them over at its end, so the
        training step itself never touches a file.
        """
        self._check_open()
        path = self.run_dir / STEPS_FILE
        if self._steps is None:
            check_inside(self.run_dir, path)  # before _drop_torn_tail opens it (a link planted since start)
            _drop_torn_tail(path, complete=None)
            fresh = not path.exists() or path.stat().st_size == 0
            self._steps = append_open(path, "a", inside=self.run_dir, encoding="utf-8", newline="")
            if fresh:
                self._steps.write(self._format_row(STEPS_COLUMNS))
        for row in rows:
            self._steps.write(self._format_row([_csv_value(row.get(c, ""), c) for c in STEPS_COLUMNS]))
        self._steps.flush()

    def flush(self) -> None:
        """Push buffered scalar rows to the operating system (events are never buffered)."""
        if not self._closed:
            self._scalars.flush()

    def close(self) -> None:
        """Flush and close both files; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._scalars.close()
            if self._steps is not None:
                self._steps.close()
        finally:
            self._events.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _format_row(self, values: Sequence[Any]) -> str:
        """One CSV line, so that the file sees a single write per row."""
        self._row_buffer.seek(0)
        self._row_buffer.truncate()
        self._row_writer.writerow(values)
        return self._row_buffer.getvalue()

    def _check_open(self) -> None:
        """Refuse writes after close()."""
        if self._closed:
            raise FactsError(f"RunWriter for {self.run_dir} is closed; open a new one to append")


def check_run_dir(run_dir: str | Path) -> Path:
    """Refuse a run directory in which a file or folder of the run layout is a symbolic link.

    Every path of `layout.RUN_LAYOUT` that exists (facts/ and its files, logs/stdout.log,
    model.pt, best_val.pt, last.pt, report/, figures/, exports/, ...) must be a real file or
    folder, so that no write of the run, now or later (a resumed run, a report, an export),
    follows a link out of the directory. `run_dir` itself may be a link.

    Returns:
        `run_dir` as a Path.

    Raises:
        UnsafePathError: the first link found, named with where it points.
    """
    run_dir = Path(run_dir)
    for relative in RUN_LAYOUT:
        check_inside(run_dir, run_dir / relative)
    return run_dir


def to_plain(
    value: Any, *, where: str, nonfinite_to_none: bool, unknown_as_str: bool = False, _path: str = ""
) -> Any:
    """Convert numpy/torch scalars and arrays, paths, tuples and enums into JSON/YAML-ready values.

    Args:
        value: the value to convert (nested dicts and lists are walked).
        where: what is being converted, for error messages ("config", "event 'on_start'").
        nonfinite_to_none: write NaN and inf as None (JSON) instead of keeping them (YAML).
        unknown_as_str: turn values of unknown types into `str(value)` instead of raising.

    Returns:
        A tree of dict / list / str / int / float / bool / None.

    Raises:
        FactsError: a value of an unknown type (unless unknown_as_str), naming its key path.
    """
    if value is None or type(value) in (str, bool, int):
        return value
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float):  # float subclasses too (numpy.float64): YAML wants a plain float
        value = float(value)
        return None if nonfinite_to_none and not math.isfinite(value) else value
    for plain_type in (bool, int, str):  # subclasses (IntEnum members, numpy.str_) made plain
        if isinstance(value, plain_type):
            return plain_type(value)
    recurse = dict(where=where, nonfinite_to_none=nonfinite_to_none, unknown_as_str=unknown_as_str)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, **recurse, _path=f"{_path}.{k}" if _path else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, **recurse, _path=f"{_path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [to_plain(v, **recurse, _path=f"{_path}[]") for v in sorted(value, key=repr)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    # numpy scalars/arrays and torch tensors, without importing either: both have tolist().
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return to_plain(value.tolist(), **recurse, _path=_path)
    if unknown_as_str:
        return str(value)
    raise FactsError(
        f"{where}: value at {_path or '<top>'!r} has type {type(value).__name__}, which facts cannot store; "
        "expected numbers, strings, bools, None, lists or dicts"
    )


def _csv_value(value: Any, column: str) -> Any:
    """A scalar cell: numpy/torch scalars become Python numbers, None stays empty."""
    if value is None:
        return ""
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        value = value.tolist()
    if isinstance(value, (list, dict)):
        raise FactsError(f"scalars column {column!r} got a {type(value).__name__}; expected a single number or string")
    return value


def _check_columns(columns: tuple[str, ...], where: Path) -> None:
    """The header must be unique strings and hold the (epoch, split) key."""
    if len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise FactsError(f"scalar columns for {where} repeat {duplicated}; each column must appear once")
    missing = [key for key in ("epoch", "split") if key not in columns]
    if missing:
        raise FactsError(f"scalar columns for {where} lack {missing}; rows are keyed on (epoch, split)")


def _read_header(path: Path) -> list[str] | None:
    """The header of an existing scalars.csv, or None when the file is absent or empty."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        return next(csv.reader([handle.readline()]))


def _drop_torn_tail(path: Path, complete: Callable[[bytes], bool] | None) -> None:
    """Deal with a last line that has no newline (a killed run) before appending after it.

    Left in place it would become a corrupt line in the middle of the file once the resumed run
    appends. If `complete` says the fragment is a whole record (an events line cut just before
    its newline) it is kept and terminated; otherwise it is cut off, as readers skip it anyway.
    """
    if not path.is_file():
        return
    with open(path, "r+b") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fragment = data[cut:]
        if complete is not None and complete(fragment):
            handle.write(b"\n")
            return
        handle.truncate(cut)
    warnings.warn(f"{path}: dropped a torn last line ({len(fragment)} bytes) left by an interrupted run", stacklevel=3)


def _is_json_object(fragment: bytes) -> bool:
    """True when `fragment` parses as one JSON object."""
    try:
        return isinstance(json.loads(fragment), dict)
    except ValueError:
        return False


def _write_all(handle: Any, data: bytes) -> None:
    """Write all of `data` to an unbuffered file; a signal can make one write() partial."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        view = view[written:]
