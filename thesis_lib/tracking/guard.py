"""The one call site of a live run's trackers: a failing tracker costs one warning and is switched off.

`GuardedMirror` is what the training run holds (only when `tracking.backends` lists one; otherwise
it holds None and nothing of this package is imported). Every record goes through `_call`: an
exception from a tracker is caught there, warned once (`TrackingWarning`), kept in `failures` for
the run to record as an on_incident (part "tracking"), and that tracker gets nothing more. The run
goes on and its facts stay whole, so `thesis-lib sync <run_dir> --to <backend>` can push it later.

Off the hot path: after `start` (in the caller's thread, so a tracker that cannot start fails at
once), the records are queued to one worker thread that feeds the trackers in the order they came,
and reads the telemetry csv's new rows there too. The training step only pays for a queue put: at
a sync point every step, TensorBoard's own writing was 2.45 % of the training time when it ran in
the step (bench/tracking_overhead.py). `close` drains the queue, then closes the trackers; it
waits at most `drain_timeout_s` for a tracker that hangs (recorded as a failure), never forever.
"""

from __future__ import annotations

import contextlib
import csv
import io
import queue
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import describe_error
from .base import Mirror, RunInfo
from .ids import write_tracking_ids

__all__ = ["GuardedMirror", "TrackingWarning", "TelemetryTail"]


class TrackingWarning(UserWarning):
    """An experiment tracker failed during a run and was switched off (the run went on)."""


class TelemetryTail:
    """The rows appended to a telemetry csv since the last `read()`; only whole lines, from `offset` on.

    Args:
        path: the csv the run's sampler writes.
        offset: bytes already there before this run segment began (a resumed run's rows are not resent).
    """

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = Path(path), offset
        self.columns: Optional[list[str]] = None

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                if self.columns is None:
                    header = handle.readline()
                    if not header.endswith(b"\n"):
                        return []
                    self.columns = header.decode("utf-8").strip().split(",")
                    self.offset = max(self.offset, len(header))
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        rows = []
        for cells in csv.reader(io.StringIO(whole.decode("utf-8"))):
            if len(cells) != len(self.columns):
                continue  # a line torn by an earlier crash: the facts reader skips it too
            try:
                rows.append({c: (float(v) if v != "" else None) for c, v in zip(self.columns, cells)})
            except ValueError:
                continue
        return rows


class GuardedMirror:
    """A run's trackers behind one guard (see the module doc).

    Args:
        mirrors: the trackers, started by `start`.
        telemetry: the run's telemetry csv tail (None: no telemetry), read by `poll_telemetry`.
        run_dir: where tracking.json records each tracker's ids after its start and its close (None: not recorded).
        background: feed the trackers from a worker thread (False: in the caller's thread, as sync does).
        drain_timeout_s: how long `close` waits for the queued records to be handed over.
    """

    def __init__(self, mirrors: Sequence[Mirror], telemetry: Optional[TelemetryTail] = None, *,
                 run_dir: Optional[Path] = None, background: bool = True, drain_timeout_s: float = 300.0):
        self.mirrors: list[Mirror] = list(mirrors)
        self.telemetry_tail = telemetry
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.background = background
        self.drain_timeout_s = drain_timeout_s
        self.failures: list[dict] = []  # on_incident payloads not yet recorded by the run
        self._failures_lock = threading.Lock()
        self._queue: Optional[queue.SimpleQueue] = None
        self._worker: Optional[threading.Thread] = None

    def _call(self, method: str, *args: Any) -> None:
        for mirror in list(self.mirrors):
            try:
                getattr(mirror, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never takes the run down
                self._fail(mirror, method, exc)

    def _fail(self, mirror: Mirror, method: str, exc: BaseException) -> None:
        with contextlib.suppress(ValueError):
            self.mirrors.remove(mirror)
        message = (f"{mirror.name} {method} failed: {describe_error(exc)}; {mirror.name} is off for the rest of the "
                   f"run (its facts are whole: `thesis-lib sync <run_dir> --to {mirror.name}` pushes it again)")
        warnings.warn(message, TrackingWarning, stacklevel=3)
        failure = {"part": "tracking", "message": message, "error_type": type(exc).__name__}
        with contextlib.suppress(Exception):
            logdir = mirror.ids().get("logdir")
            if logdir:
                failure["path"] = str(logdir)
        self._add_failure(failure)
        with contextlib.suppress(Exception):  # release its files; a second error says nothing new
            mirror.close({})

    def _add_failure(self, failure: dict) -> None:
        with self._failures_lock:
            self.failures.append(failure)

    def take_failures(self) -> list[dict]:
        """The failures since the last call (on_incident payloads, part "tracking")."""
        with self._failures_lock:
            failures, self.failures = self.failures, []
        return failures

    def _record_ids(self) -> None:
        """Each live tracker's ids into tracking.json, so a later sync updates its run instead of adding one."""
        if self.run_dir is None:
            return
        for mirror in list(self.mirrors):
            try:
                write_tracking_ids(self.run_dir, mirror.name, {**mirror.ids(), "written_by": "live",
                                                               "facts_sha256": None})
            except Exception as exc:  # noqa: BLE001 - the ids are a convenience; sync finds none and writes afresh
                self._add_failure({"part": "tracking", "error_type": type(exc).__name__,
                                   "message": f"{mirror.name}'s ids not recorded in tracking.json: {describe_error(exc)}"})

    def _submit(self, method: str, *args: Any) -> None:
        """Hand a record over: queued to the worker thread (started on first use), or fed here."""
        if not self.mirrors:
            return
        if not self.background:
            self._dispatch(method, args)
            return
        if self._worker is None:
            self._queue = queue.SimpleQueue()
            self._worker = threading.Thread(target=self._work, name="thesis-lib trackers", daemon=True)
            self._worker.start()
        self._queue.put((method, args))

    def _dispatch(self, method: str, args: tuple) -> None:
        if method == "poll_telemetry":
            self._read_telemetry()
        else:
            self._call(method, *args)
        if method == "epoch":  # a tracker's ids may carry what it has sent: kept current should the run crash
            self._record_ids()

    def _work(self) -> None:
        while True:
            method, args = self._queue.get()
            if method is None:
                return
            try:
                self._dispatch(method, args)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any record
                self._add_failure({"part": "tracking", "error_type": type(exc).__name__,
                                   "message": f"the trackers' worker failed on {method}: {describe_error(exc)}"})

    def _drain(self) -> None:
        """Wait until the queued records are handed over (at most drain_timeout_s)."""
        if self._worker is None:
            return
        self._queue.put((None, ()))
        self._worker.join(self.drain_timeout_s)
        if self._worker.is_alive():
            names = ", ".join(m.name for m in self.mirrors)
            self._add_failure({"part": "tracking", "error_type": "TimeoutError",
                               "message": f"the trackers ({names}) had not taken the run's records after "
                                          f"{self.drain_timeout_s:.0f} s; closed without waiting further"})
            self.mirrors = []
        self._worker = None

    def start(self, config: Mapping[str, Any], run: RunInfo) -> None:
        self._call("start", config, run)
        self._record_ids()

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._submit("epoch", dict(row))

    def sync_point(self, row: Mapping[str, Any]) -> None:
        self._submit("sync_point", dict(row))

    def poll_telemetry(self) -> None:
        """Hand the telemetry rows written since the last poll to the trackers (epoch ends, the end)."""
        if self.telemetry_tail is not None:
            self._submit("poll_telemetry")

    def _read_telemetry(self) -> None:
        if self.telemetry_tail is None or not self.mirrors:
            return
        try:
            rows = self.telemetry_tail.read()
        except (OSError, UnicodeDecodeError) as exc:
            self.telemetry_tail = None
            self._add_failure({"part": "tracking", "error_type": type(exc).__name__,
                               "message": f"the telemetry csv could not be read for the trackers: {describe_error(exc)}"})
            return
        for row in rows:
            self._call("telemetry", row)

    def test(self, metrics: Mapping[str, Any], epoch: Optional[int]) -> None:
        self._submit("test", dict(metrics), epoch)

    def end(self, status: str, stop_reason: str) -> None:
        self._submit("end", status, stop_reason)

    def close(self, artifacts: Mapping[str, Path]) -> None:
        """Drain the queued records, close every tracker (offering `artifacts`), record their ids; idempotent."""
        self._drain()
        if not self.mirrors:
            return
        self._call("close", dict(artifacts))
        self._record_ids()
        self.mirrors = []
