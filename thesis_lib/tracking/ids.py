"""`<run_dir>/tracking.json`: each tracker's ids for a run, so a later sync updates it instead of adding a second copy.

One key per backend; TensorBoard's: `{"logdir": <the event-file directory, relative to the run directory when inside it>, "written_by": "live" |
"sync", "facts_sha256": <the facts a sync wrote from> | null, "updated": <ISO time>}`. (An MLflow or
W&B mirror would keep its run id and server there.) Written atomically, read-modify-write.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from ..atomic_files import atomic_write_text
from ..layout import TENSORBOARD_DIR, TRACKING_FILE

__all__ = ["read_tracking_ids", "write_tracking_ids", "recorded_logdir", "tensorboard_logdir"]


def read_tracking_ids(run_dir: os.PathLike | str) -> dict:
    """tracking.json as a dict ({} when absent or unreadable: a sync then writes afresh)."""
    path = Path(run_dir) / TRACKING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_tracking_ids(run_dir: os.PathLike | str, backend: str, ids: Mapping[str, Any]) -> Path:
    """Set `backend`'s entry of tracking.json (the other backends' entries are kept)."""
    run_dir = Path(run_dir)
    data = read_tracking_ids(run_dir)
    entry = dict(ids)
    if entry.get("logdir"):  # inside the run directory: relative, so the record moves with the directory
        logdir = Path(entry["logdir"])
        try:
            entry["logdir"] = logdir.resolve().relative_to(run_dir.resolve()).as_posix()
        except ValueError:
            entry["logdir"] = str(logdir.resolve())
    entry["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    data[backend] = entry
    return atomic_write_text(run_dir / TRACKING_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n",
                             inside=run_dir)


def recorded_logdir(run_dir: os.PathLike | str, entry: Mapping[str, Any]) -> Optional[Path]:
    """The `logdir` of a tracking.json entry as a path (a relative one is inside the run directory), or None."""
    value = entry.get("logdir")
    return None if not value else Path(run_dir) / value


def tensorboard_logdir(run_dir: os.PathLike | str, run_id: str, tensorboard_dir: Optional[str]) -> Path:
    """Where a run's TensorBoard event files go: `<run_dir>/tensorboard/` for "" (or a run from before
    tracking existed), else `<tensorboard_dir>/<run_id>/` (a log directory shared by many runs)."""
    if not tensorboard_dir:
        return Path(run_dir) / TENSORBOARD_DIR
    return Path(tensorboard_dir).expanduser().resolve() / run_id
