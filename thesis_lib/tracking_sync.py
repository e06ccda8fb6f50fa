"""`thesis-lib sync <run_dir|sweep_dir> --to tensorboard|mlflow|wandb`: push past runs to a tracker from their facts alone.

A run directory's facts are all it needs (runs from before thesis_lib.tracking existed too): the
config (config.yaml), each scalars.csv row, each steps.csv row, each telemetry.csv row, the
on_test_end metrics and the on_train_end status are fed, in that shape, to the same `Mirror` a live
run feeds (thesis_lib.tracking), so a synced run and a live-mirrored one carry the same tags.

Never a duplicate. The tracker's ids are kept in `<run_dir>/tracking.json`, with the sha256 of the
facts a sync wrote from; when it equals the facts' now, the run is up to date and skipped.
- TensorBoard (the ids: the event-file directory): a sync writes the run into a fresh directory
  beside it and then swaps it in (rename the old one aside, rename the new one in, delete the old),
  so the directory holds one run's events once, whether a live mirror, an earlier sync or nothing
  wrote it before.
- MLflow and W&B (the ids: the tracker's run id, store, project): their runs cannot be swapped, so
  the mirror is built with the recorded ids and continues that run, sending only what it does not
  hold yet (`Mirror.resumable`); a live-mirrored run, synced, gains what the live mirror missed.
The sync holds the run's writer lock (thesis_lib.run_lock) while it writes, so a run still training
(and mirroring live) is skipped, named, rather than written under it.
This module sits above the facts readers (layer 10); the live mirror sits below the loop (layer 7).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import FactsError, RunLockedError, ThesisLibError
from .facts import discover_runs, read_config, read_events, read_scalars, read_steps, read_telemetry
from .layout import CONFIG_FILE, EVENTS_FILE, SCALARS_FILE, STEPS_FILE, TELEMETRY_FILE
from .run_lock import hold_run_lock
from .tracking import (RunInfo, flat_config, make_mirror, mirror_class, read_tracking_ids, recorded_logdir,
                       run_artifacts, tensorboard_logdir, tracking_settings, write_tracking_ids)

__all__ = ["SYNC_TARGETS", "SyncResult", "sync_runs", "sync_run"]

# What `--to` accepts: the trackers a run can be pushed to from its facts.
SYNC_TARGETS = ("tensorboard", "mlflow", "wandb")
# Part of the fingerprint: a thesis-lib that names or writes tags differently re-syncs every run.
_FORMAT = "thesis-lib tracker sync 1"
_FINGERPRINTED = (CONFIG_FILE, EVENTS_FILE, SCALARS_FILE, STEPS_FILE, TELEMETRY_FILE)
_ALIASES = ("train_loss", "val_loss")  # read_scalars' conveniences, not columns of the file


@dataclass
class SyncResult:
    """What happened to one run: action is wrote, replaced, updated, up to date, would write, would replace,
    would update or skipped; `where` is the tracker's copy (a directory, a run id, a store)."""

    run_dir: Path
    action: str
    logdir: Optional[Path | str] = None
    counts: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.action != "skipped"

    def line(self) -> str:
        where = f" {self.logdir}" if self.logdir is not None else ""
        counts = ", ".join(f"{n} {what}" for what, n in self.counts.items())
        detail = f" ({counts})" if counts else ""
        reason = f": {self.reason}" if self.reason else ""
        return f"{self.run_dir}: {self.action}{where}{detail}{reason}"


def _fingerprint(run_dir: Path, to: str) -> str:
    digest = hashlib.sha256(f"{_FORMAT} {to}".encode())
    for name in _FINGERPRINTED:
        path = run_dir / name
        digest.update(f"\0{name}\0".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _records(run_dir: Path) -> dict:
    """Everything a mirror is fed, read from the run's facts (FactsError when the run has none)."""
    events = read_events(run_dir, bad_lines=[])
    starts = [e for e in events if e.get("moment") == "on_start"]
    if not starts:
        raise FactsError(f"{run_dir / EVENTS_FILE} has no on_start event")
    first = starts[0]
    try:
        config = read_config(run_dir)
    except FactsError:
        config = {}
    try:
        scalars = read_scalars(run_dir, columns=starts[-1].get("scalar_columns"), bad_lines=[])
    except FactsError:  # no scalars.csv: a run that ended before its first epoch
        scalars = None
    epoch_rows = [] if scalars is None else [
        {k: v for k, v in row.items() if k not in _ALIASES} for row in scalars.to_dict("records")]
    step_rows = read_steps(run_dir, bad_lines=[]).to_dict("records")
    telemetry_rows = read_telemetry(run_dir, bad_lines=[]).to_dict("records")
    tests = [e for e in events if e.get("moment") == "on_test_end" and isinstance(e.get("metrics"), dict)]
    ends = [e for e in events if e.get("moment") == "on_train_end"]
    origin = _origin(first)
    # The latest segment's identity: config.yaml is the latest segment's config (a resumed run's),
    # as a live mirror of that segment would have it; the times still count from the first start.
    run = RunInfo(run_id=str(first.get("run_id", run_dir.name)), run_dir=run_dir, origin=origin,
                  config_hash=starts[-1].get("config_hash"), resumed_from_epoch=starts[-1].get("resumed_from_epoch"))
    return {"run": run, "config": config, "epochs": epoch_rows, "steps": step_rows, "telemetry": telemetry_rows,
            "tests": tests, "end": ends[-1] if ends else None}


def _origin(start: dict) -> Optional[float]:
    """time.time() of the run's t = 0: the on_start event's ISO `time` less its `t`; None when unreadable."""
    try:
        return datetime.datetime.fromisoformat(str(start["time"])).timestamp() - float(start["t"])
    except (KeyError, TypeError, ValueError):
        return None


def _counts(records: dict) -> dict:
    return {"scalars rows": len(records["epochs"]), "steps rows": len(records["steps"]),
            "telemetry rows": len(records["telemetry"]), "test metrics": sum(len(test.get("metrics", {})) for test in records["tests"]),
            "config keys": len(flat_config(records["config"]))}


def _feed(mirror, records: dict, artifacts: Optional[dict] = None) -> None:
    """The records in the order a live run hands them over: start, steps and epochs, telemetry, test, end."""
    mirror.start(flat_config(records["config"]), records["run"])
    for row in records["steps"]:
        mirror.sync_point(row)
    for row in records["epochs"]:
        mirror.epoch(row)
    for row in records["telemetry"]:
        mirror.telemetry(row)
    for test in records["tests"]:  # each segment's test pass, as the live mirror got them
        mirror.test(test["metrics"], test.get("epoch"))
    if records["end"] is not None:
        mirror.end(str(records["end"].get("status")), str(records["end"].get("stop_reason")))
    mirror.close(artifacts or {})


def _swap_in(fresh: Path, logdir: Path, token: str) -> None:
    """Put `fresh` where `logdir` is: the old directory renamed aside, the new one renamed in, the old deleted."""
    aside = None
    if logdir.exists():
        aside = logdir.with_name(f".{logdir.name}.old-{token}")
        os.rename(logdir, aside)
    try:
        os.rename(fresh, logdir)
    except OSError:
        if aside is not None:
            os.rename(aside, logdir)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def sync_run(run_dir: os.PathLike | str, to: str = "tensorboard", *, dry_run: bool = False,
             settings: Optional[dict] = None) -> SyncResult:
    """Push one run to tracker `to` from its facts (see the module doc); never raises for a run's own state.

    `settings`: tracking-section keys (mlflow_tracking_uri, wandb_project, ...) over the run's own
    config.yaml `tracking` section (a run from before it: the defaults).
    """
    if to not in SYNC_TARGETS:
        raise ThesisLibError(f"sync --to {to!r}: not a tracker; allowed: {', '.join(SYNC_TARGETS)}")
    run_dir = Path(run_dir)
    try:
        records = _records(run_dir)
    except (FactsError, OSError) as exc:
        return SyncResult(run_dir, "skipped", reason=str(exc))
    run = records["run"]
    ids = read_tracking_ids(run_dir).get(to, {})
    tracking = records["config"].get("tracking") if isinstance(records["config"].get("tracking"), dict) else {}
    settings = tracking_settings(tracking, settings)
    fingerprint = _fingerprint(run_dir, to)
    counts = _counts(records)
    try:
        resumable = mirror_class(to).resumable
    except ImportError as exc:
        return SyncResult(run_dir, "skipped", reason=f"{type(exc).__name__}: {exc}")
    if resumable:
        return _sync_resumable(run_dir, to, records, ids, settings, fingerprint, counts, dry_run)
    logdir = recorded_logdir(run_dir, ids) or tensorboard_logdir(run_dir, run.run_id, settings["tensorboard_dir"])
    if ids.get("facts_sha256") == fingerprint and logdir.is_dir():
        return SyncResult(run_dir, "up to date", logdir, reason="tracking.json's facts_sha256 matches the facts")
    exists = logdir.exists()
    if dry_run:
        return SyncResult(run_dir, "would replace" if exists else "would write", logdir, counts)
    token = secrets.token_hex(4)
    fresh = logdir.with_name(f".{logdir.name}.sync-{token}")
    try:
        with hold_run_lock(run_dir, f"syncing to {to}"):
            logdir.parent.mkdir(parents=True, exist_ok=True)
            try:
                _feed(make_mirror(to, run_dir=run_dir, run_id=run.run_id, settings=settings, logdir=fresh), records)
                _swap_in(fresh, logdir, token)
            finally:
                shutil.rmtree(fresh, ignore_errors=True)
            write_tracking_ids(run_dir, to, {"logdir": str(logdir), "written_by": "sync", "facts_sha256": fingerprint})
    except RunLockedError as exc:
        return SyncResult(run_dir, "skipped", logdir, reason=f"the run is being written ({exc})")
    except (ThesisLibError, OSError, ImportError) as exc:
        return SyncResult(run_dir, "skipped", logdir, reason=f"{type(exc).__name__}: {exc}")
    return SyncResult(run_dir, "replaced" if exists else "wrote", logdir, counts)


def _sync_resumable(run_dir: Path, to: str, records: dict, ids: dict, settings: dict, fingerprint: str,
                    counts: dict, dry_run: bool) -> SyncResult:
    """MLflow, W&B: continue the tracker run tracking.json names (or open one), sending what it lacks."""
    where = ids.get("run_id")
    if ids.get("facts_sha256") == fingerprint and where:
        return SyncResult(run_dir, "up to date", where, reason="tracking.json's facts_sha256 matches the facts")
    if dry_run:
        return SyncResult(run_dir, "would update" if where else "would write", where, counts)
    try:
        with hold_run_lock(run_dir, f"syncing to {to}"):
            mirror = make_mirror(to, run_dir=run_dir, run_id=records["run"].run_id, settings=settings, previous=ids)
            _feed(mirror, records, run_artifacts(run_dir))
            mirror_ids = mirror.ids()
            write_tracking_ids(run_dir, to, {**mirror_ids, "written_by": "sync", "facts_sha256": fingerprint})
    except RunLockedError as exc:
        return SyncResult(run_dir, "skipped", where, reason=f"the run is being written ({exc})")
    except Exception as exc:  # noqa: BLE001 - a tracker's own errors (a server, a store) name this run, the sweep goes on
        return SyncResult(run_dir, "skipped", where, reason=f"{type(exc).__name__}: {exc}")
    return SyncResult(run_dir, "updated" if where else "wrote", mirror_ids.get("run_id"), counts)


def sync_runs(path: os.PathLike | str, to: str = "tensorboard", *, dry_run: bool = False,
              settings: Optional[dict] = None, echo: Optional[Callable[[str], None]] = print) -> list[SyncResult]:
    """Sync a run directory, or every run under a sweep directory; `echo` gets one line per run.

    Raises:
        FactsError: `path` is neither a run directory nor a directory holding runs.
    """
    path = Path(path)
    run_dirs = [path] if (path / EVENTS_FILE).is_file() else discover_runs(sweep_dir=path)
    if not run_dirs:
        raise FactsError(f"{path} holds no run directory (a run has {EVENTS_FILE})")
    results = []
    for run_dir in run_dirs:
        result = sync_run(run_dir, to, dry_run=dry_run, settings=settings)
        if echo is not None:
            echo(("[dry run] " if dry_run else "") + result.line())
        results.append(result)
    return results
