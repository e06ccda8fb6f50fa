"""The one call site of a live run's trackers: a failing tracker costs one warning and is switched off.

`GuardedMirror` is what the training run holds (only when `tracking.backends` lists one; otherwise
it holds None and nothing of this package is imported). Every record goes through `_call`: an
exception from a tracker is caught there, warned once (`TrackingWarning`), kept in `failures` for
the run to record as an on_incident (part "tracking"), and that tracker gets nothing more. The run
goes on and its facts stay whole, so `thesis-lib sync <run_dir> --to <backend>` can push it later.
"""

from __future__ import annotations

import contextlib
import csv
import io
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import describe_error
from .base import Mirror, RunInfo

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
    """

    def __init__(self, mirrors: Sequence[Mirror], telemetry: Optional[TelemetryTail] = None):
        self.mirrors: list[Mirror] = list(mirrors)
        self.telemetry_tail = telemetry
        self.failures: list[dict] = []  # on_incident payloads not yet recorded by the run

    def _call(self, method: str, *args: Any) -> None:
        for mirror in list(self.mirrors):
            try:
                getattr(mirror, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never takes the run down
                self._fail(mirror, method, exc)

    def _fail(self, mirror: Mirror, method: str, exc: BaseException) -> None:
        self.mirrors.remove(mirror)
        message = (f"{mirror.name} {method} failed: {describe_error(exc)}; {mirror.name} is off for the rest of the "
                   f"run (its facts are whole: `thesis-lib sync <run_dir> --to {mirror.name}` pushes it again)")
        warnings.warn(message, TrackingWarning, stacklevel=3)
        failure = {"part": "tracking", "message": message, "error_type": type(exc).__name__}
        with contextlib.suppress(Exception):
            logdir = mirror.ids().get("logdir")
            if logdir:
                failure["path"] = str(logdir)
        self.failures.append(failure)
        with contextlib.suppress(Exception):  # release its files; a second error says nothing new
            mirror.close({})

    def take_failures(self) -> list[dict]:
        """The failures since the last call (on_incident payloads, part "tracking")."""
        failures, self.failures = self.failures, []
        return failures

    def start(self, config: Mapping[str, Any], run: RunInfo) -> None:
        self._call("start", config, run)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._call("epoch", row)

    def sync_point(self, row: Mapping[str, Any]) -> None:
        self._call("sync_point", row)

    def poll_telemetry(self) -> None:
        """Hand the telemetry rows written since the last poll to the trackers (epoch ends, the end)."""
        if self.telemetry_tail is None or not self.mirrors:
            return
        try:
            rows = self.telemetry_tail.read()
        except (OSError, UnicodeDecodeError) as exc:
            self.telemetry_tail = None
            self.failures.append({"part": "tracking", "error_type": type(exc).__name__,
                                  "message": f"the telemetry csv could not be read for the trackers: {describe_error(exc)}"})
            return
        for row in rows:
            self._call("telemetry", row)

    def test(self, metrics: Mapping[str, Any], epoch: Optional[int]) -> None:
        self._call("test", metrics, epoch)

    def end(self, status: str, stop_reason: str) -> None:
        self._call("end", status, stop_reason)

    def close(self, artifacts: Mapping[str, Path]) -> None:
        self._call("close", artifacts)
        self.mirrors = []
