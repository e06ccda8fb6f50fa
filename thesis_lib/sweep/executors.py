"""Where a sweep's points run: in this process, in a local process pool, or on a Dask cluster.

Every executor takes `PointTask`s and yields `(task, PointOutcome)` pairs as points finish, in
the order they finish. The work of one point is `execute_point`, a module-level function so that
spawned processes and Dask workers can import it; it never raises: a failing point comes back
as an outcome with its status and error text, and the sweep goes on.

This module names the executors, holds the in-process one, and checks and makes one from its
name (`make_executor`); the process pool and Dask executors live in `worker_pools`, the batch-job
one in `batch_jobs`, and the task, outcome and `execute_point` in `point` (all re-exported here).

- `"inline"`: one point after another in this process (a notebook sees every printed line).
- `"process"`: `concurrent.futures.ProcessPoolExecutor` with the "spawn" start method (forking a
  process that has touched torch is unsafe). With GPUs visible, one run per GPU: each task carries
  a device id and sets `CUDA_VISIBLE_DEVICES` before torch initialises CUDA, and each worker
  process serves one task only, so it never keeps a CUDA context for a device it no longer owns.
  A worker that dies (out of memory, a segfault) breaks the pool; the points it took down are
  run once more in a fresh pool, and a point that was in flight at two breaks, or alone at one,
  is recorded as CRASHED.
- `"dask"`: one task per point on a `distributed` cluster: `Client(address)` for a running
  scheduler, else a `LocalCluster(n_workers=max_workers, threads_per_worker=1, processes=True)`
  started and closed by the sweep; or pass your own `distributed.Client` as `executor=`.

Script files that use "process" or "dask" must guard their entry point with
`if __name__ == "__main__":`, since spawned workers import the main module. A script read on
standard input (`python - <<EOF`), `python -c` and an interactive session have no main file: their
workers start without it (worker_pools._launchable_main), so the sweep refuses up front a model
part defined there (`worker_imports`); parts registered by importable modules are imported by each
worker before its point runs.
A pool that breaks (a worker that died) names, in every point it took down, how the worker ended:
its exit code or signal.

Batch systems (`batch_jobs`): `"slurm"` and `"htcondor"` submit the points as Dask tasks to workers
that dask-jobqueue's `SLURMCluster` / `HTCondorCluster` starts as batch jobs, one point per job at a
time (a worker with one thread in each job), with the job's resources from `executor_options`
(cores, memory, gpus, walltime, partition, account, job_extra_directives, ...; `batch_jobs.BATCH_OPTIONS`
lists them). dask-jobqueue is an extra: `pip install 'thesis-lib[hpc]'`. The sweep itself runs
on the login node or in a small job; `thesis-lib sweep --executor slurm --dry-run` prints the job
script::

    from thesis_lib import sweep

    s = sweep(base="base.yaml", grid={"model.bottleneck": ["identity", "vq"]}, seeds=[1, 2],
              name="tokenizers", executor="slurm",
              executor_options={"cores": 4, "memory": "16GB", "gpus": 1, "walltime": "04:00:00",
                                "partition": "gpu", "max_jobs": 4, "local_directory": "$TMPDIR"})
    # executor="htcondor", executor_options={"cores": 4, "memory": "16GB", "disk": "10GB", "gpus": 1}

A cluster of your own making (another dask-jobqueue class, adaptive scaling, `dask_cuda`) is used
by passing its `distributed.Client` as `executor=`: the sweep submits its points there and leaves
the client open.

The batch system gives each job its GPU (`CUDA_VISIBLE_DEVICES`), so Dask tasks get no device
id. Paths in the config (`data.path`, `output_root`) must be valid on the workers: use a shared
filesystem; the sweep passes its own directory to the points as an absolute path. For several GPUs
on one machine under Dask, `dask_cuda.LocalCUDACluster` (one worker per GPU) plays the same role.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..errors import ConfigError
from .batch_jobs import (
    BATCH_EXECUTORS,
    BatchJobExecutor,
    check_options,
    require_jobqueue,
    require_submit_command,
)
from .point import PointOutcome, PointTask, execute_point, find_new_run_dir
from .worker_pools import DaskExecutor, ProcessExecutor, _check_workers, visible_gpu_ids

__all__ = [
    "EXECUTORS",
    "PointTask",
    "PointOutcome",
    "execute_point",
    "find_new_run_dir",
    "visible_gpu_ids",
    "InlineExecutor",
    "ProcessExecutor",
    "DaskExecutor",
    "BatchJobExecutor",
    "BATCH_EXECUTORS",
    "make_executor",
    "check_executor",
    "worker_imports",
]

EXECUTORS = ("inline", "process", "dask", *BATCH_EXECUTORS)


class InlineExecutor:
    """Runs the points one after another in this process."""

    name = "inline"
    workers = 1

    def __init__(self, task_fn: Callable[[PointTask], PointOutcome] = execute_point):
        self.task_fn = task_fn

    def run(self, tasks: Sequence[PointTask]) -> Iterator[tuple[PointTask, PointOutcome]]:
        """Yield each task with its outcome as it finishes; Ctrl-C stops the sweep, not only the run."""
        for task in tasks:
            outcome = self.task_fn(task)
            yield task, outcome
            if outcome.stop_reason == "interrupted" or (outcome.stop_reason or "").startswith("signal: "):
                # train() turns Ctrl-C, or a batch system's SIGTERM, into a STOPPED run; the user
                # (or the scheduler) meant the whole sweep.
                raise KeyboardInterrupt(f"sweep interrupted during {task.name} ({outcome.stop_reason})")

    def close(self) -> None:
        """Nothing to release."""


def check_executor(executor: Any, max_workers: int | None = None,
                   executor_options: Mapping[str, Any] | None = None, *, scheduler: str | None = None) -> dict:
    """Fail early, before a sweep writes anything, on an executor or its settings that cannot work.

    Returns:
        The executor options checked, in one spelling ({} for executors that take none).

    Raises:
        ConfigError: an unknown executor name or object, max_workers below 1, executor_options for an
            executor that takes none, or for "slurm"/"htcondor": an unknown or wrong option, max_workers
            or scheduler (they belong to "process"/"dask"), dask-jobqueue missing, or no sbatch /
            condor_submit on this machine.
    """
    if isinstance(executor, str) and executor not in EXECUTORS:
        raise ConfigError(f"executor={executor!r} is not known; allowed: {', '.join(EXECUTORS)} "
                          "(or a distributed.Client)")
    if isinstance(executor, str) and executor in BATCH_EXECUTORS:
        options = check_options(executor, executor_options)
        for name, value in (("max_workers", max_workers), ("scheduler", scheduler)):
            if value is not None:
                raise ConfigError(f"{name}={value!r} has no meaning for executor={executor!r} (it is for 'process' "
                                  "and 'dask'); the number of jobs is executor_options={'max_jobs': N}")
        require_jobqueue(executor)
        require_submit_command(executor)
        return options
    if executor_options is not None:
        shown = executor if isinstance(executor, str) else type(executor).__name__
        raise ConfigError(f"executor_options={dict(executor_options) if isinstance(executor_options, Mapping) else executor_options!r} "
                          f"given with executor={shown!r}, which takes none: they are for "
                          f"{' and '.join(map(repr, BATCH_EXECUTORS))}")
    if max_workers is not None:
        _check_workers(max_workers)
    if isinstance(executor, str):
        return {}
    if not _is_dask_client(executor):
        raise ConfigError(f"executor={executor!r}: expected one of {', '.join(EXECUTORS)} or a distributed.Client")
    return {}


def make_executor(executor: Any, *, max_workers: int | None = None, scheduler: str | None = None,
                  executor_options: Mapping[str, Any] | None = None, points: int | None = None,
                  sweep_dir: Path | None = None):
    """An executor from its name ("inline", "process", "dask", "slurm", "htcondor") or a `distributed.Client`.

    `points` (how many the sweep runs) and `sweep_dir` (where the jobs' logs go) matter to the batch
    executors only.

    Raises:
        ConfigError: as `check_executor`.
    """
    options = check_executor(executor, max_workers, executor_options, scheduler=scheduler)
    if not isinstance(executor, str):
        return DaskExecutor(client=executor)
    if executor == "inline":
        return InlineExecutor()
    if executor == "process":
        return ProcessExecutor(max_workers)
    if executor in BATCH_EXECUTORS:
        return BatchJobExecutor(executor, options, points=points, sweep_dir=sweep_dir)
    return DaskExecutor(scheduler=scheduler, max_workers=max_workers)


def worker_imports(configs: Iterable[Mapping], executor: Any) -> tuple[str, ...]:
    """The modules a worker must import before a point runs: those that register the model parts the
    points choose from outside thesis-lib (`@register(kind, name)`), for every executor but "inline".

    A spawned or Dask worker starts with thesis-lib's own parts only; importing these modules first
    registers the custom ones there too (`PointTask.imports`). A part defined in the main module
    cannot be imported by name: the sweep refuses it before anything runs, unless the executor is
    "process" and the main script is a file (a spawned worker re-runs it, registering the part).

    Raises:
        ConfigError: a chosen part is defined in `__main__` that the workers cannot import; the
            message names it and says to move it into an importable module.
    """
    if isinstance(executor, str) and executor == "inline":
        return ()
    from ..config import MODEL_PART_NAMES
    from ..models import registry

    modules: dict[str, None] = {}
    for config in configs:
        for kind in MODEL_PART_NAMES:
            name = config.get("model", {}).get(kind)
            if name is None or name not in registry.names(kind):
                continue
            builder = registry.get(kind, name)
            module = getattr(builder, "__module__", None) or "__main__"
            if module.split(".")[0] == "thesis_lib" or module in modules:
                continue
            if module in ("__main__", "__mp_main__"):
                if executor == "process" and _main_is_a_file():
                    continue
                where = "another machine's worker" if executor != "process" else "a spawned worker process"
                raise ConfigError(
                    f"model.{kind}={name!r} is built by {getattr(builder, '__qualname__', builder)!r}, defined in "
                    f"__main__ (this script{_main_origin()}), which {where} cannot import: move it into an "
                    f"importable module (a .py file on the path, imported by this script), or use executor='inline'"
                )
            modules[module] = None
    return tuple(modules)


def _main_is_a_file() -> bool:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is not None and os.path.isfile(path)


def _main_origin() -> str:
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        return ": python -c, an interactive session or a notebook"
    return ": standard input" if path == "<stdin>" else f": {path}, no such file"


def _is_dask_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(obj, Client)

