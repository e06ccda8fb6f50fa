"""One sweep point: what a worker is handed (`PointTask`), how it ended (`PointOutcome`), and running it.

`execute_point` runs one point through train() or the driver notebook. It is a module-level
function so that spawned processes and Dask workers can import it, and it never raises: a failing
point comes back as an outcome with its status and error text, and the sweep goes on.

No point runs twice at once, even when two sweeps of one spec share a directory (started
together, or the same sweep submitted as several batch jobs): the process that runs a point holds
its claim, `<sweep_dir>/locks/<point config hash>.lock` (thesis_lib.run_lock: pid, host, job,
heartbeat; a dead holder's claim is taken over), from before it starts until its run has ended.
Holding the claim, it first looks whether another process ran the point since the sweep planned
(a run of the point that ended after the plan: COMPLETED, FAILED, or STOPPED by early stopping);
if so that run is the point's outcome (`elsewhere` names who ran it) and nothing runs again. A
point whose claim another live process holds comes back at once as status RUNNING with
`elsewhere` set (the sweep waits for it after its other points: `wait_for_claim`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import DataError, FactsError, RunLockedError
from ..facts import read_config, read_events, run_status
from ..layout import DRIVER_NOTEBOOK, EVENTS_FILE, RUNS_DIR, SWEEP_LOCKS_DIR, SWEEP_NOTEBOOKS_DIR, sanitize_run_name
from ..run_lock import hold_lock
from .grid import point_config_hash

__all__ = ["PointTask", "PointOutcome", "execute_point", "find_new_run_dir", "RUNNING_ELSEWHERE"]

NOTEBOOK_KERNEL = "python3"
# The status of a point whose claim another live process holds (PointOutcome.elsewhere says which).
RUNNING_ELSEWHERE = "RUNNING"


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run one point; plain data, so it pickles to any process or machine."""

    name: str
    config: dict  # the point's full resolved config, output_root = the sweep directory
    via: str  # "function" or "notebook"
    sweep_dir: str
    notebook: Optional[str] = None  # the driver notebook, for via="notebook"
    device: Optional[str] = None  # a CUDA device id for CUDA_VISIBLE_DEVICES; None leaves it alone
    known_run_ids: tuple = ()  # run directories of this point's name that existed before it started
    ended_run_ids: tuple = ()  # those of them that had ended when the sweep planned (never adopted as its outcome)
    wait_for_claim: bool = False  # another process runs the point: wait for it, then adopt or run (else: come back)
    executor: str = "inline"  # what runs the point (inline, process, dask): recorded in the run's env.json `launch`
    imports: tuple = ()  # modules the worker imports first: they register the custom model parts the point uses


@dataclass(frozen=True)
class PointOutcome:
    """How one point ended: a facts status (COMPLETED, STOPPED, FAILED, CRASHED), its run and error text."""

    name: str
    status: str
    run_dir: Optional[str]
    error: Optional[str]
    duration_s: float
    stop_reason: Optional[str] = None
    traceback: Optional[str] = None  # the last frames of an exception raised by the point, if any
    elsewhere: Optional[str] = None  # another process runs (status RUNNING) or ran this point: which


def execute_point(task: PointTask) -> PointOutcome:
    """Claim the point, then run it (train() or the driver notebook) and describe how it ended; never raises.

    Another live process holding the point's claim: status RUNNING with `elsewhere` naming it,
    at once (or, with `task.wait_for_claim`, after waiting for it). A run of the point that another
    process ended since the sweep planned is the outcome, `elsewhere` naming who ran it.
    """
    started = time.time()
    with contextlib.ExitStack() as claimed:
        try:
            holder = _take_claim(claimed, task)
        except Exception as exc:  # noqa: BLE001 - the claim cannot be made (a read-only sweep directory)
            return PointOutcome(task.name, "FAILED", None, f"{type(exc).__name__}: {exc}", time.time() - started,
                                f"exception: {type(exc).__name__}")
        if holder is not None:
            return PointOutcome(task.name, RUNNING_ELSEWHERE, None, f"running in another process: {holder}",
                                time.time() - started, None, elsewhere=holder)
        return _execute_claimed(task, started)


def _take_claim(claimed: contextlib.ExitStack, task: PointTask) -> Optional[str]:
    """Enter the point's claim into `claimed`; or, when another live process holds it and the task does not
    wait, that process described (nothing entered)."""
    try:
        claimed.enter_context(_claim(task, wait=False))
        return None
    except RunLockedError as exc:
        holder = getattr(exc, "holder", None)
        who = holder.describe() if holder is not None else str(exc)
        if not task.wait_for_claim:
            return who
    print(f"[sweep] point {task.name} is running in another process ({who}); waiting for it", flush=True)
    claimed.enter_context(_claim(task, wait=True))
    return None


def _claim(task: PointTask, *, wait: bool):
    """The point's claim (its lock under <sweep_dir>/locks/), not yet entered."""
    locks = Path(task.sweep_dir) / SWEEP_LOCKS_DIR
    locks.mkdir(parents=True, exist_ok=True)
    return hold_lock(locks / f"{point_config_hash(task.config)}.lock", f"running sweep point {task.name}",
                     subject=f"sweep point {task.name!r} of {task.sweep_dir}", wait_s=None if wait else 0.0)


def _execute_claimed(task: PointTask, started: float) -> PointOutcome:
    """Under the point's claim: adopt a run another process ended since the plan, else run the point."""
    adopted = _ended_elsewhere(task)
    if adopted is not None:
        run_dir, status, reason, who = adopted
        print(f"[sweep] point {task.name} was run by another process ({who}): {status}, not run again", flush=True)
        error = None if status in ("COMPLETED", "STOPPED") else f"run ended {status}: {reason}"
        return PointOutcome(task.name, status, str(run_dir), error, time.time() - started, reason, elsewhere=who)
    tail = None
    try:
        for module in task.imports:  # a spawned or Dask worker has thesis-lib's own model parts only
            importlib.import_module(module)
        if task.via == "notebook":
            status, run_dir, error, reason = _run_notebook(task, started)
        else:
            status, run_dir, error, reason = _run_function(task)
    except Exception as exc:  # noqa: BLE001 - a point's failure is data for the sweep, not a crash of it
        status, reason, error = "FAILED", f"exception: {type(exc).__name__}", f"{type(exc).__name__}: {exc}"
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:]).rstrip()
        print(f"[sweep] point {task.name} failed: {error}")
        run_dir = find_new_run_dir(task.sweep_dir, task.name, task.known_run_ids, since=started)
    return PointOutcome(task.name, status, str(run_dir) if run_dir else None, error, time.time() - started, reason,
                        tail)


def _run_function(task: PointTask) -> tuple[str, Optional[Path], Optional[str], Optional[str]]:
    from ..config import load_config, note_launch
    from ..workflow import train

    config = note_launch(load_config(task.config), executor=task.executor, sweep_dir=task.sweep_dir,
                         sweep_point=task.name)
    result = train(config)
    error = None if result.status in ("COMPLETED", "STOPPED") else f"run ended {result.status}: {result.stop_reason}"
    return result.status, Path(result.run_dir), error, result.stop_reason


def _run_notebook(task: PointTask, started: float) -> tuple[str, Optional[Path], Optional[str], Optional[str]]:
    """Execute the driver notebook for the point; keep the executed copy in its run directory."""
    import papermill

    data_path = Path(task.config["data"]["path"])
    if not data_path.exists():
        # The driver would generate synthetic events there; concurrent points would race writing
        # one file, and a sweep should train on the data it names. Fail as train() would.
        raise DataError(f"event file not found: {data_path} (a sweep never generates data)")
    scratch = Path(task.sweep_dir) / SWEEP_NOTEBOOKS_DIR
    scratch.mkdir(parents=True, exist_ok=True)
    executed = scratch / f"{sanitize_run_name(task.name)}_{secrets.token_hex(2)}.ipynb"
    error = None
    try:
        papermill.execute_notebook(
            task.notebook,
            str(executed),
            parameters={
                "config": task.config,
                "output_root": task.config["output_root"],
                "run_name": task.name,
            },
            kernel_name=NOTEBOOK_KERNEL,
            progress_bar=False,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # ipykernel 7's start-up TCP warning: noise
            cwd=os.getcwd(),
        )
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    run_dir = find_new_run_dir(task.sweep_dir, task.name, task.known_run_ids, since=started)
    if run_dir is None:
        kept = f" (executed notebook: {executed})" if executed.is_file() else ""
        return "FAILED", None, (error or "the notebook finished without creating a run directory") + kept, None
    if executed.is_file():
        shutil.move(str(executed), str(run_dir / DRIVER_NOTEBOOK))
    events = read_events(run_dir)
    start = next((e for e in reversed(events) if e.get("moment") == "on_start"), None)
    status, reason = run_status(events, start)
    if error is None and status not in ("COMPLETED", "STOPPED"):
        error = f"run ended {status}: {reason}"
    return status, run_dir, error, reason

def _ended_elsewhere(task: PointTask) -> Optional[tuple[Path, str, Optional[str], str]]:
    """(run_dir, status, reason, who) of the newest run of the point that ended after the sweep planned, or None.

    Only an outcome the point would keep counts: COMPLETED, FAILED, or STOPPED by early stopping.
    A crashed or interrupted attempt is not the point's outcome: the point runs.
    """
    for run_dir in sorted(_runs_of(task.sweep_dir, task.name), key=_newest_first, reverse=True):
        if run_dir.name in task.ended_run_ids:
            continue
        try:
            events = read_events(run_dir)
        except (FactsError, OSError):
            continue
        start = next((e for e in reversed(events) if e.get("moment") == "on_start"), None)
        status, reason = run_status(events, start, run_dir)
        if status in ("COMPLETED", "FAILED") or (status == "STOPPED" and reason == "early_stopping"):
            who = f"run {run_dir.name}"
            if start is not None:
                who += f", pid {start.get('pid')} on host {start.get('host')!r}"
            return run_dir, status, reason, who
    return None


def _runs_of(sweep_dir: str | Path, name: str) -> list[Path]:
    """The run directories of point `name` under `<sweep_dir>/runs/` (config.yaml's run_name decides)."""
    runs = Path(sweep_dir) / RUNS_DIR
    pattern = re.compile(rf"^run_\d{{8}}-\d{{6}}_{re.escape(sanitize_run_name(name))}_[0-9a-f]{{4}}$")
    try:
        return [p for p in runs.iterdir() if pattern.match(p.name) and _run_name(p) == name]
    except FileNotFoundError:
        return []


def _newest_first(run_dir: Path) -> tuple:
    try:
        return run_dir.name[:19], run_dir.stat().st_mtime
    except OSError:
        return run_dir.name[:19], 0.0


def find_new_run_dir(sweep_dir: str | Path, name: str, known_run_ids: Iterable[str],
                     since: Optional[float] = None) -> Optional[Path]:
    """The run the point just wrote: the newest run of point `name` under `<sweep_dir>/runs/` not among
    `known_run_ids`; else, with `since` (when the point started), a known run whose events were written
    since then (the point resumed it: `trainer.resume_from="auto"`); else None.

    Run ids hold the point name sanitised and cut to 64 characters, so two points can share an
    id pattern; the run's config.yaml, whose run_name is the point's full name, decides.
    """
    runs = Path(sweep_dir) / RUNS_DIR
    pattern = re.compile(rf"^run_\d{{8}}-\d{{6}}_{re.escape(sanitize_run_name(name))}_[0-9a-f]{{4}}$")
    known = set(known_run_ids)
    try:
        mine = [p for p in runs.iterdir() if pattern.match(p.name) and _run_name(p) == name]
    except FileNotFoundError:
        return None
    fresh = [p for p in mine if p.name not in known]
    if fresh:
        return max(fresh, key=lambda p: (p.name[:19], p.stat().st_mtime))
    if since is None:
        return None
    resumed = [(mtime, p) for p in mine if (mtime := _events_mtime(p)) is not None and mtime >= since]
    return max(resumed)[1] if resumed else None


def _events_mtime(run_dir: Path) -> Optional[float]:
    try:
        return (run_dir / EVENTS_FILE).stat().st_mtime
    except OSError:
        return None


def _run_name(run_dir: Path) -> Optional[str]:
    try:
        return read_config(run_dir).get("run_name")
    except (FactsError, OSError):
        return None

