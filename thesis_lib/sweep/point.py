"""One sweep point: what a worker is handed (`PointTask`), how it ended (`PointOutcome`), and running it.

`execute_point` runs one point through train() or the driver notebook. It is a module-level
function so that spawned processes and Dask workers can import it, and it never raises: a failing
point comes back as an outcome with its status and error text, and the sweep goes on.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import DataError, FactsError
from ..facts import read_config, read_events, run_status
from ..layout import DRIVER_NOTEBOOK, RUNS_DIR, SWEEP_NOTEBOOKS_DIR, sanitize_run_name

__all__ = ["PointTask", "PointOutcome", "execute_point", "find_new_run_dir"]

NOTEBOOK_KERNEL = "python3"


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


def execute_point(task: PointTask) -> PointOutcome:
    """Run one point (train() or the driver notebook) and describe how it ended; never raises."""
    started = time.time()
    tail = None
    try:
        if task.via == "notebook":
            status, run_dir, error, reason = _run_notebook(task)
        else:
            status, run_dir, error, reason = _run_function(task)
    except Exception as exc:  # noqa: BLE001 - a point's failure is data for the sweep, not a crash of it
        status, reason, error = "FAILED", f"exception: {type(exc).__name__}", f"{type(exc).__name__}: {exc}"
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:]).rstrip()
        print(f"[sweep] point {task.name} failed: {error}")
        run_dir = find_new_run_dir(task.sweep_dir, task.name, task.known_run_ids)
    return PointOutcome(task.name, status, str(run_dir) if run_dir else None, error, time.time() - started, reason,
                        tail)


def _run_function(task: PointTask) -> tuple[str, Optional[Path], Optional[str], Optional[str]]:
    from ..workflow import train

    result = train(task.config)
    error = None if result.status in ("COMPLETED", "STOPPED") else f"run ended {result.status}: {result.stop_reason}"
    return result.status, Path(result.run_dir), error, result.stop_reason


def _run_notebook(task: PointTask) -> tuple[str, Optional[Path], Optional[str], Optional[str]]:
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
    run_dir = find_new_run_dir(task.sweep_dir, task.name, task.known_run_ids)
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

def find_new_run_dir(sweep_dir: str | Path, name: str, known_run_ids: Iterable[str]) -> Optional[Path]:
    """The newest run of point `name` under `<sweep_dir>/runs/` not among `known_run_ids`, or None.

    Run ids hold the point name sanitised and cut to 64 characters, so two points can share an
    id pattern; the run's config.yaml, whose run_name is the point's full name, decides.
    """
    runs = Path(sweep_dir) / RUNS_DIR
    pattern = re.compile(rf"^run_\d{{8}}-\d{{6}}_{re.escape(sanitize_run_name(name))}_[0-9a-f]{{4}}$")
    known = set(known_run_ids)
    try:
        fresh = [p for p in runs.iterdir() if pattern.match(p.name) and p.name not in known and _run_name(p) == name]
    except FileNotFoundError:
        return None
    return max(fresh, key=lambda p: (p.name[:19], p.stat().st_mtime)) if fresh else None


def _run_name(run_dir: Path) -> Optional[str]:
    try:
        return read_config(run_dir).get("run_name")
    except (FactsError, OSError):
        return None

