"""`sweep()`: run a grid x seeds of training runs into one sweep directory, and re-run it safely.

Layout: `<output_root>/multiruns/exp_<YYYYmmdd-HHMMSS>_<name>/` holds `sweep.yaml` and the runs
under `runs/<run_id>/`, so `load_runs(sweep_dir=...)` reads them. `sweep.yaml` is rewritten
atomically after every point, so a killed sweep still says which points finished.

Re-running the same sweep (same name, same spec hash) reuses the latest such directory and
skips every point whose run there ended COMPLETED, or STOPPED by early stopping; the others run
again with `trainer.resume_from="auto"` (thesis_lib.facts.resume): a point whose run CRASHED or was
STOPPED by a signal (a killed or requeued batch job, Ctrl-C) continues that run from its last.pt in
the same run directory, and a FAILED point (or one that never saved a checkpoint) starts a new run. sweep.yaml's `executor` and `via` at the top stay those
of the sweep's first run; each point records what ran its run (`executor`, `via`: a skipped point
keeps the earlier run's, None where another process ran it), so a re-run with another executor
never rewrites how the completed points were run.

Two identical sweeps started together (or one sweep submitted as several batch jobs) share one
directory (it is found or created under `<output_root>/.multiruns.lock`) and never run a point
twice: each point is claimed before it starts (point.py). A point another live process is running
is put aside ("running in another process", printed, status RUNNING in sweep.yaml meanwhile); once
the sweep's other points are done it waits for that claim, and then reports the other process's
run as the point's outcome (`PointResult.skipped`, `elsewhere` naming who ran it), or runs the
point itself if that process died without ending it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from ..shipped import shipped_notebook
from ..config import AUTO_RESUME, Config
from ..durations import format_duration
from ..errors import ConfigError, FactsError
from ..facts import read_config, read_events, run_status
from ..layout import DRIVER_NOTEBOOK, RUNS_DIR, SWEEP_FILE, SWEEPS_DIR, SWEEPS_LOCK, sanitize_run_name
from ..atomic_files import atomic_write_text
from ..run_lock import hold_lock
from .executors import PointOutcome, PointTask, check_executor, make_executor, worker_imports
from .point import RUNNING_ELSEWHERE
from .grid import SweepPoint, expand_grid, point_config_hash, resolve_base, spec_hash

__all__ = ["sweep", "SweepResult", "PointResult", "VIAS"]

VIAS = ("function", "notebook")
DEFAULT_NOTEBOOK = shipped_notebook("notebooks", DRIVER_NOTEBOOK, must_exist=False)
_OK = ("COMPLETED", "STOPPED")
_EXP_PATTERN = re.compile(r"^exp_\d{8}-\d{6}_(?P<name>.+)$")


@dataclass
class PointResult:
    """How one point of the sweep ended (or that an earlier run of it was reused: `skipped`)."""

    name: str
    overrides: dict
    seed: int
    status: str  # PENDING until it finishes, then a facts status
    run_dir: Optional[Path]
    error: Optional[str]
    skipped: bool = False
    config_hash: str = ""
    duration_s: Optional[float] = None
    traceback: Optional[str] = None  # the last frames, when the point raised
    elsewhere: Optional[str] = None  # another process ran the point (skipped), or runs it (status RUNNING): which
    executor: Optional[str] = None  # what ran the point's run (a skipped point: the earlier sweep's); None: unknown
    via: Optional[str] = None  # how it ran: "function" or "notebook" (same rule)


@dataclass
class SweepResult:
    """The sweep directory, one PointResult per point (grid order), and counts per status plus `skipped`."""

    sweep_dir: Path
    points: list[PointResult]
    counts: dict = field(default_factory=dict)
    spec_hash: str = ""

    @property
    def ok(self) -> bool:
        """True when every point ended COMPLETED or STOPPED."""
        return all(p.status in _OK for p in self.points)


def sweep(
    base: Union[Config, Mapping, str, Path, None] = None,
    grid: Optional[Mapping[str, Sequence]] = None,
    seeds: Optional[Sequence[int]] = None,
    *,
    name: str = "sweep",
    executor: Any = "inline",
    max_workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    executor_options: Mapping | None = None,
    via: str = "function",
    sweep_dir: Union[str, Path, None] = None,
    overrides: Union[Sequence[str], Mapping, None] = None,
    notebook: Union[str, Path, None] = None,
) -> SweepResult:
    """Train every point of `grid` x `seeds` and record the sweep in its directory.

    Every point's config is validated before anything runs. A point that fails (an exception
    in training, a FAILED run, a dead worker) is recorded with its error and the others go on.

    Args:
        base: the base config: a dict (nested or dotted keys), a Config, a YAML path, or None.
        grid: dotted key -> list of values, e.g. {"model.bottleneck": ["identity", "vq"]}.
        seeds: values of trainer.seed, each run for every grid point; None keeps the base's seed.
        name: the sweep's name, in its directory name and its progress lines.
        executor: "inline" (this process, one at a time), "process" (a spawn process pool, one
            run per GPU), "dask" (a scheduler address or a LocalCluster), "slurm" or "htcondor"
            (each point a Dask task on a worker that a batch job runs, through dask-jobqueue),
            or a distributed.Client.
        max_workers: concurrent points for "process" and a local "dask" cluster; default one
            per visible GPU, or 1.
        scheduler: a Dask scheduler address for executor="dask" (default: a LocalCluster).
        executor_options: the batch jobs of executor="slurm"/"htcondor": cores, memory, gpus,
            walltime, partition (SLURM), account, job_extra_directives, disk (HTCondor), python,
            local_directory, log_directory, scheduler_host, max_jobs (thesis_lib.sweep.batch_jobs
            says what each means); recorded in sweep.yaml. None for the other executors.
        via: "function" calls thesis_lib.train; "notebook" runs the driver notebook through
            papermill and keeps the executed copy in the run directory as train.ipynb.
        sweep_dir: use this directory instead of finding or creating one under output_root.
        overrides: dotted overrides applied to `base` (what the CLI's trailing arguments are).
        notebook: the driver notebook for via="notebook" (default: notebooks/train.ipynb).

    Returns:
        SweepResult(sweep_dir, points, counts, spec_hash).

    Raises:
        ConfigError: an empty grid value list or seed list, an unknown config key or value (the
            message names the point), an unknown executor, executor option or via, a missing notebook, or a
            sweep_dir that holds a different sweep (the message names both spec hashes).
    """
    if via not in VIAS:
        raise ConfigError(f"via={via!r} is not known; allowed: {', '.join(VIAS)}")
    options = check_executor(executor, max_workers, executor_options, scheduler=scheduler)
    notebook_path = Path(notebook) if notebook is not None else DEFAULT_NOTEBOOK
    if via == "notebook" and not notebook_path.is_file():
        raise ConfigError(f"via='notebook' needs the driver notebook; {notebook_path} does not exist")
    base_dict = resolve_base(base, overrides)
    if base_dict["trainer"]["resume_from"]:
        raise ConfigError(f"trainer.resume_from={base_dict['trainer']['resume_from']!r} in a sweep's base config: "
                          "every point would continue the same run; a re-run of the sweep skips its completed "
                          "points and resumes its unfinished ones by itself")
    points = expand_grid(base_dict, grid, seeds)
    imports = worker_imports((p.config for p in points), executor)  # refuses a model part workers cannot import
    seeds_used = list(dict.fromkeys(p.seed for p in points))
    spec = spec_hash(base_dict, grid or {}, seeds_used)
    label = sanitize_run_name(name)
    with _locating(sweep_dir, base_dict["output_root"], label):
        directory = _locate_sweep_dir(sweep_dir, base_dict["output_root"], label, spec)
        record = _SweepRecord(directory, name=label, spec=spec, base=base_dict, grid=grid or {}, seeds=seeds_used,
                              executor=_executor_label(executor, scheduler), via=via,
                              executor_options=options if executor_options is not None else None)
        if not record.path.is_file():  # an identical sweep started a moment later finds this directory
            record.write([], state="planning")
    results, tasks = _plan(points, directory, via, str(notebook_path.resolve()), imports)
    for result in results:  # a skipped point keeps what ran it, as the earlier sweep recorded it
        if result.skipped:
            result.executor, result.via = record.ran_by(result.run_dir)
    record.write(results, state="running")
    skipped = sum(r.skipped for r in results)
    progress = _Progress(label, total=len(results), already_done=skipped)
    print(f"[sweep {label}] {len(results)} points, {skipped} already completed (skipped), {len(tasks)} to run "
          f"({executor if isinstance(executor, str) else 'dask client'}, via {via}) -> {directory}")
    if tasks:
        kind = executor if isinstance(executor, str) else "dask"  # each run records what ran it (env.json launch)
        tasks = [dataclasses.replace(task, executor=kind) for task in tasks]
        _execute(tasks, results, record, progress, executor, max_workers, scheduler, executor_options)
    else:
        record.write(results, state="finished")
    counts = _counts(results)
    elsewhere = sum(r.elsewhere is not None and r.skipped for r in results)
    ran_elsewhere = f" ({elsewhere} of them run by another process meanwhile)" if elsewhere else ""
    print(f"[sweep {label}] finished: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ran_elsewhere
          + f" -> {directory}")
    return SweepResult(directory, results, counts, spec)


def _execute(tasks, results, record, progress, executor, max_workers, scheduler, executor_options=None) -> None:
    """Run the tasks on the executor, updating results, sweep.yaml and the progress line per point.

    Points another process is running come back RUNNING; they run again in a second round whose
    tasks wait for the other process's claim (and then adopt its run, or run the point).
    """
    by_name = {r.name: r for r in results}
    runner = make_executor(executor, max_workers=max_workers, scheduler=scheduler, executor_options=executor_options,
                           points=len(tasks), sweep_dir=record.directory)
    ran_by = record.head_now["executor"], record.head_now["via"]
    progress.workers = runner.workers
    state = "interrupted"
    try:
        pending = list(tasks)
        while pending:
            put_aside = []
            for task, outcome in runner.run(pending):
                result = by_name[task.name]
                _apply(result, outcome)
                result.executor, result.via = (None, None) if result.elsewhere is not None else ran_by
                record.write(results, state="running")
                if outcome.status == RUNNING_ELSEWHERE and outcome.elsewhere is not None and not task.wait_for_claim:
                    put_aside.append(dataclasses.replace(task, wait_for_claim=True))
                    progress.point_elsewhere(result)
                else:
                    progress.point_done(result)
            pending = put_aside
        state = "finished"
    finally:
        record.write(results, state=state)
        runner.close()


def _apply(result: PointResult, outcome: PointOutcome) -> None:
    result.status = outcome.status
    result.run_dir = Path(outcome.run_dir) if outcome.run_dir else None
    result.error = outcome.error
    result.duration_s = outcome.duration_s
    result.traceback = outcome.traceback
    result.elsewhere = outcome.elsewhere
    result.skipped = outcome.elsewhere is not None and outcome.status != RUNNING_ELSEWHERE  # another process ran it


def _plan(points: list[SweepPoint], directory: Path, via: str, notebook: str,
          imports: tuple = ()) -> tuple[list[PointResult], list[PointTask]]:
    """A PointResult per point (skipped where an earlier run completed it) and the tasks still to run."""
    finished, run_ids, ended = _completed_runs(directory)
    results, tasks = [], []
    for point in points:
        done = finished.get(point.config_hash)
        if done is not None:
            results.append(PointResult(point.name, point.overrides, point.seed, done[1], done[0], None,
                                       skipped=True, config_hash=point.config_hash))
            continue
        results.append(PointResult(point.name, point.overrides, point.seed, "PENDING", None, None,
                                   config_hash=point.config_hash))
        config = copy.deepcopy(point.config)
        config["output_root"], config["run_name"] = str(directory), point.name
        config["trainer"]["resume_from"] = AUTO_RESUME  # an unfinished earlier run of the point continues
        marker = f"_{sanitize_run_name(point.name)}_"
        tasks.append(PointTask(point.name, config, via, str(directory), notebook if via == "notebook" else None,
                               known_run_ids=tuple(r for r in run_ids if marker in r),
                               ended_run_ids=tuple(r for r in ended if marker in r), imports=imports))
    return results, tasks


def _completed_runs(directory: Path) -> tuple[dict[str, tuple[Path, str]], list[str], list[str]]:
    """{point config hash: (run_dir, status)} of runs under the sweep that completed, all run ids there,
    and the ids of those that had ended (COMPLETED, STOPPED, FAILED): a point never adopts one of these
    as a concurrent sweep's outcome."""
    runs_root = directory / RUNS_DIR
    if not runs_root.is_dir():
        return {}, [], []
    finished: dict[str, tuple[Path, str]] = {}
    run_ids, ended = [], []
    for run_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        run_ids.append(run_dir.name)
        try:
            events = read_events(run_dir)
            config = read_config(run_dir)
        except (FactsError, OSError):
            continue  # an unreadable run never counts as done: its point runs again
        start = next((e for e in reversed(events) if e.get("moment") == "on_start"), None)
        status, reason = run_status(events, start)
        if status in ("COMPLETED", "STOPPED", "FAILED"):
            ended.append(run_dir.name)
        if status == "COMPLETED" or (status == "STOPPED" and reason == "early_stopping"):
            finished[point_config_hash(config)] = (run_dir, status)  # sorted by id: the latest wins
    return finished, run_ids, ended


def _locating(sweep_dir, output_root: str, label: str):
    """Held while a sweep finds or creates its directory and writes its sweep.yaml (none for a given sweep_dir)."""
    if sweep_dir is not None:
        return contextlib.nullcontext()
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    return hold_lock(root / SWEEPS_LOCK, f"finding the directory of sweep {label}",
                     subject=f"the sweep directories under {root / SWEEPS_DIR}", wait_s=60.0, heartbeat_every_s=None)


def _locate_sweep_dir(sweep_dir, output_root: str, label: str, spec: str) -> Path:
    """The forced directory (checked), the latest exp_*_<label> with this spec, or a new one."""
    if sweep_dir is not None:
        directory = Path(sweep_dir)
        found = _read_spec(directory / SWEEP_FILE, strict=True)
        if found is not None and found != spec:
            raise ConfigError(
                f"sweep_dir {directory} holds a different sweep (spec hash {found} in its {SWEEP_FILE}); this "
                f"sweep's spec hash is {spec}. Use another sweep_dir, or leave it out to get a new directory"
            )
        directory.mkdir(parents=True, exist_ok=True)
        return directory.resolve()
    multiruns = Path(output_root) / SWEEPS_DIR
    if multiruns.is_dir():
        candidates = sorted((p for p in multiruns.iterdir() if _exp_name(p) == label), reverse=True)
        for candidate in candidates:
            if _read_spec(candidate / SWEEP_FILE, strict=False) == spec:
                return candidate.resolve()
    multiruns.mkdir(parents=True, exist_ok=True)
    while True:
        directory = multiruns / f"exp_{time.strftime('%Y%m%d-%H%M%S')}_{label}"
        try:
            directory.mkdir()
            return directory.resolve()
        except FileExistsError:
            time.sleep(0.2)  # a sweep of the same name started this second: take the next second


def _exp_name(path: Path) -> Optional[str]:
    match = _EXP_PATTERN.match(path.name)
    return match.group("name") if match and path.is_dir() else None


def _read_spec(path: Path, *, strict: bool) -> Optional[str]:
    """The spec hash in a sweep.yaml; None if absent (or unreadable, unless strict)."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
        return str(data["spec_hash"])
    except (yaml.YAMLError, KeyError, TypeError, OSError) as exc:
        if strict:
            raise ConfigError(f"{path} is not a readable sweep file (expected a mapping with spec_hash): {exc}") from None
        return None


def _executor_label(executor: Any, scheduler: Optional[str]) -> str:
    if isinstance(executor, str):
        return f"dask ({scheduler})" if executor == "dask" and scheduler else executor
    address = getattr(getattr(executor, "scheduler", None), "address", None)
    return f"dask ({address or 'client'})"


def _counts(results: Sequence[PointResult]) -> dict:
    counts = dict(Counter(r.status for r in results))
    counts["skipped"] = sum(r.skipped for r in results)
    counts["total"] = len(results)
    return counts


class _SweepRecord:
    """sweep.yaml: what the sweep is (spec) and how far it got (point statuses), rewritten atomically.

    A re-run keeps what the first run recorded of how the sweep ran: `created`, `executor` and `via`
    at the top are the first run's, and each point says what ran its own run (`executor`, `via`),
    so a re-run with another executor that only skips completed points changes neither.
    """

    def __init__(self, directory: Path, *, name, spec, base, grid, seeds, executor, via, executor_options=None):
        from ..version import __version__

        self.path = directory / SWEEP_FILE
        self.directory = directory
        self.before = self._read_before()
        self.head_now = {"executor": executor, "via": via}  # this run's, recorded on the points it runs
        options = self.before.get("executor_options") if self.before.get("executor") else executor_options
        self.head = {
            "name": name,
            "spec_hash": spec,
            "created": self.before.get("created") or dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "thesis_lib_version": __version__,
            "executor": self.before.get("executor") or executor,
            "via": self.before.get("via") or via,
            # only where given; they go with the executor they were given for: the first run's
            **({"executor_options": options} if options is not None else {}),
            "seeds": list(seeds),
            "grid": {k: list(v) for k, v in grid.items()},
            "base": base,
        }

    def _read_before(self) -> dict:
        """The sweep.yaml an earlier run of this sweep left ({} if none, or unreadable)."""
        try:
            data = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    def ran_by(self, run_dir: Optional[Path]) -> tuple[Optional[str], Optional[str]]:
        """(executor, via) the earlier sweep.yaml records for the point whose run is `run_dir`; a file from
        before points recorded them: its top-level ones; (None, None) where no earlier run recorded it."""
        if run_dir is None:
            return None, None
        relative = os.path.relpath(run_dir, self.directory)
        for point in self.before.get("points") or []:
            if isinstance(point, dict) and point.get("run_dir") == relative and not point.get("elsewhere"):
                if "executor" in point:
                    return point.get("executor"), point.get("via")
                return self.before.get("executor"), self.before.get("via")
        return None, None

    def write(self, results: Sequence[PointResult], *, state: str) -> None:
        """Rewrite the whole file (temporary file + rename: readers never see half of it)."""
        body = dict(self.head)
        body["state"] = state
        body["updated"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        body["counts"] = _counts(results)
        body["points"] = [self._point(r) for r in results]
        atomic_write_text(self.path, yaml.dump(body, Dumper=_BlockTextDumper, sort_keys=False, default_flow_style=False))

    def _point(self, result: PointResult) -> dict:
        run_dir = None
        if result.run_dir is not None:
            run_dir = os.path.relpath(result.run_dir, self.directory)  # the sweep folder can move
        return {
            "name": result.name,
            "overrides": result.overrides,
            "seed": result.seed,
            "config_hash": result.config_hash,
            "status": result.status,
            "skipped": result.skipped,
            "run_dir": run_dir,
            "executor": result.executor,
            "via": result.via,
            "duration_s": round(result.duration_s, 3) if result.duration_s is not None else None,
            "error": result.error,
            "traceback": result.traceback,
            "elsewhere": result.elsewhere,
        }


class _BlockTextDumper(yaml.SafeDumper):
    """Safe YAML that writes multi-line text (tracebacks) as readable `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_BlockTextDumper.add_representer(str, _represent_str)


class _Progress:
    """One plain line per finished point: done / failed / running, ETA from the mean point time."""

    def __init__(self, label: str, *, total: int, already_done: int):
        self.label, self.total, self.done = label, total, already_done
        self.to_run = total - already_done
        self.finished_now, self.failed, self.seconds = 0, 0, 0.0
        self.workers = 1

    def point_done(self, result: PointResult) -> None:
        self.done += 1
        self.finished_now += 1
        self.failed += result.status not in _OK
        self.seconds += result.duration_s or 0.0
        remaining = self.to_run - self.finished_now
        running = min(self.workers, remaining)
        eta = self.seconds / self.finished_now * remaining / max(self.workers, 1)
        how = "run by another process" if result.skipped else f"in {result.duration_s or 0.0:.1f}s"
        print(f"[sweep {self.label}] {self.done}/{self.total} done, {self.failed} failed, {running} running, "
              f"ETA {format_duration(eta)} (last: {result.name} {result.status} {how})", flush=True)

    def point_elsewhere(self, result: PointResult) -> None:
        print(f"[sweep {self.label}] {result.name} is running in another process ({result.elsewhere}); "
              "waiting for it after the other points", flush=True)
