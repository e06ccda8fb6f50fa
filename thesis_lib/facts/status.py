"""Run status: COMPLETED/STOPPED/FAILED from a run's events, RUNNING/CRASHED when it has no end.

A run with no end event is alive if its recorded pid is on this host, or, on another host,
if its facts were written within the last few minutes (the telemetry sampler's heartbeat).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Mapping, Sequence

from ..layout import EVENTS_FILE, SCALARS_FILE, STEPS_FILE, TELEMETRY_FILE

__all__ = ["run_status"]


def run_status(
    events: Sequence[Mapping], env_or_start_event: Mapping | None, run_dir: str | Path | None = None
) -> tuple[str, str | None]:
    """Derive (status, stop_reason) from a run's events.

    The last `on_train_end` after the last `on_start` gives the status it recorded. Otherwise an
    `on_exception` after it means FAILED. An `on_incident` (schema 2: a part other than the numbers
    failed and the run went on, possibly after its end) never changes the status. Otherwise the run has no end: RUNNING if the recorded
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
