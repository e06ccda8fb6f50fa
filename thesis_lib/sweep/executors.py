"""Where a sweep's points run: in this process, in a local process pool, or on a Dask cluster.

Every executor takes `PointTask`s and yields `(task, PointOutcome)` pairs as points finish, in
the order they finish. The work of one point is `execute_point`, a module-level function so that
spawned processes and Dask workers can import it; it never raises: a failing point comes back
as an outcome with its status and error text, and the sweep goes on.

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

Scripts that use "process" or "dask" must guard their entry point with
`if __name__ == "__main__":`, since spawned workers import the main module.

HPC with dask-jobqueue (not a dependency of thesis-lib; `pip install dask-jobqueue`), one GPU and
one point per job, the sweep itself running on the login node or in a small job::

    from dask_jobqueue import SLURMCluster          # or HTCondorCluster
    from distributed import Client
    from thesis_lib import sweep

    cluster = SLURMCluster(cores=4, processes=1, memory="16GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"],
                           local_directory="$TMPDIR")
    # HTCondorCluster(cores=4, memory="16GB", disk="10GB",
    #                 job_extra_directives={"request_gpus": "1"})
    cluster.scale(jobs=8)                           # or cluster.adapt(minimum_jobs=0, maximum_jobs=8)
    client = Client(cluster)
    s = sweep(base="base.yaml", grid={"model.bottleneck": ["identity", "vq"]}, seeds=[1, 2],
              name="tokenizers", executor=client)
    client.close(); cluster.close()

The batch system gives each job its GPU (`CUDA_VISIBLE_DEVICES`), so Dask tasks get no device
id. Paths in the config (`data.path`, `output_root`) must be valid on the workers: use a shared
filesystem; the sweep passes its own directory to the points as an absolute path. For several GPUs
on one machine under Dask, `dask_cuda.LocalCUDACluster` (one worker per GPU) plays the same role.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import secrets
import shutil
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from ..errors import ConfigError, DataError, FactsError
from ..facts import read_config, read_events, run_status, sanitize_run_name

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
    "make_executor",
    "check_executor",
]

EXECUTORS = ("inline", "process", "dask")
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
    from ..train import train

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
    scratch = Path(task.sweep_dir) / "notebooks"
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
        shutil.move(str(executed), str(run_dir / "train.ipynb"))
    events = read_events(run_dir)
    start = next((e for e in reversed(events) if e.get("moment") == "on_start"), None)
    status, reason = run_status(events, start)
    if error is None and status not in ("COMPLETED", "STOPPED"):
        error = f"run ended {status}: {reason}"
    return status, run_dir, error, reason


def run_pinned(task_fn: Callable[[PointTask], PointOutcome], task: PointTask) -> PointOutcome:
    """In a pool worker: pin the task's GPU, then run it."""
    if task.device is not None:
        # Before the point imports torch in this fresh process: CUDA reads the variable once, at init.
        os.environ["CUDA_VISIBLE_DEVICES"] = task.device
    return task_fn(task)


def find_new_run_dir(sweep_dir: str | Path, name: str, known_run_ids: Iterable[str]) -> Optional[Path]:
    """The newest run of point `name` under `<sweep_dir>/runs/` not among `known_run_ids`, or None.

    Run ids hold the point name sanitised and cut to 64 characters, so two points can share an
    id pattern; the run's config.yaml, whose run_name is the point's full name, decides.
    """
    runs = Path(sweep_dir) / "runs"
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


def visible_gpu_ids() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (empty on CPU)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


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
            if outcome.stop_reason == "interrupted":
                # train() turns Ctrl-C into a STOPPED run; here the user meant the whole sweep.
                raise KeyboardInterrupt(f"sweep interrupted during {task.name}")

    def close(self) -> None:
        """Nothing to release."""


class ProcessExecutor:
    """A spawn-context process pool; with GPUs, one point per GPU and a fresh process per point.

    Args:
        max_workers: concurrent points; default one per visible GPU, or 1 without GPUs.
        devices: CUDA device ids to hand out (default: the visible GPUs); several workers may
            share one device when max_workers exceeds the device count.
        task_fn: the function run in the workers (module-level, importable by spawned processes).
    """

    name = "process"

    def __init__(self, max_workers: Optional[int] = None, devices: Optional[Sequence[str]] = None,
                 task_fn: Callable[[PointTask], PointOutcome] = execute_point):
        devices = list(visible_gpu_ids() if devices is None else devices)
        self.workers = _check_workers(max_workers) if max_workers is not None else max(len(devices), 1)
        # A slot is a device id (or None on CPU); a task runs only while it holds a slot.
        self.slots = [devices[i % len(devices)] for i in range(self.workers)] if devices else [None] * self.workers
        self.task_fn = task_fn
        self._pool: Optional[ProcessPoolExecutor] = None

    def _new_pool(self) -> ProcessPoolExecutor:
        per_child = {"max_tasks_per_child": 1} if any(s is not None for s in self.slots) else {}
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"), **per_child)

    def run(self, tasks: Sequence[PointTask]) -> Iterator[tuple[PointTask, PointOutcome]]:
        """Yield each task with its outcome as it finishes; a dead worker does not stop the rest."""
        pending = deque((task, 0) for task in tasks)  # (task, pool breaks it has been through)
        free = list(self.slots)
        in_flight: dict[Any, tuple[PointTask, int, Optional[str], float]] = {}
        self._pool = self._pool or self._new_pool()
        while pending or in_flight:
            while pending and free:
                task, breaks = pending.popleft()
                slot = free.pop(0)
                device = slot if task.config["trainer"]["device"] in ("auto", "cuda") else None
                future = self._pool.submit(run_pinned, self.task_fn, dataclasses.replace(task, device=device))
                in_flight[future] = (task, breaks, slot, time.time())
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken: list[tuple[PointTask, int, float]] = []
            for future in done:
                task, breaks, slot, started = in_flight.pop(future)
                free.append(slot)
                try:
                    yield task, future.result()
                except BrokenProcessPool:
                    broken.append((task, breaks, started))
                except Exception as exc:  # noqa: BLE001 - e.g. an outcome that would not unpickle
                    yield task, _lost_outcome(task, started, f"the worker could not return the result: {exc!r}")
            if broken:
                # Every future still in flight fails with the pool; collect them now.
                for future, (task, breaks, slot, started) in list(in_flight.items()):
                    free.append(slot)
                    broken.append((task, breaks, started))
                in_flight.clear()
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = self._new_pool()
                alone = len(broken) == 1
                for task, breaks, started in broken:
                    if alone or breaks >= 1:
                        reason = "its worker process died (out of memory, a segfault or os._exit)"
                        yield task, _lost_outcome(task, started, reason, status="CRASHED")
                    else:
                        print(f"[sweep] the process pool broke while {task.name} ran; running it again")
                        pending.appendleft((task, breaks + 1))

    def close(self) -> None:
        """Shut the pool down (waits for running points)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor:
    """One Dask task per point on a distributed cluster.

    Args:
        client: an existing `distributed.Client` (left open), or None.
        scheduler: a scheduler address such as "tcp://10.0.0.5:8786" (the Client is closed after).
        max_workers: workers of the LocalCluster made when neither is given (default: one per
            visible GPU, or 1).
    """

    name = "dask"

    def __init__(self, client: Any = None, scheduler: Optional[str] = None, max_workers: Optional[int] = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError(
                'executor="dask" needs the distributed package: pip install "dask[distributed]"'
            ) from None
        self._cluster = None
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif scheduler:
            self.client = Client(scheduler)
        else:
            n_workers = _check_workers(max_workers) if max_workers is not None else max(len(visible_gpu_ids()), 1)
            self._cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None)
            self.client = Client(self._cluster)
        # Points run concurrently on every worker thread; an adaptive cluster may have none yet.
        self.workers = max(sum(self.client.nthreads().values()), 1)

    def run(self, tasks: Sequence[PointTask]) -> Iterator[tuple[PointTask, PointOutcome]]:
        """Submit every point at once; yield each with its outcome as it finishes."""
        from distributed import as_completed

        submitted = {}
        started = time.time()
        for task in tasks:
            key = f"thesis-lib-point-{sanitize_run_name(task.name)}-{secrets.token_hex(4)}"
            submitted[self.client.submit(execute_point, task, key=key, pure=False)] = task
        try:
            for future in as_completed(list(submitted)):
                task = submitted[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost scheduler: record it, go on
                    outcome = _lost_outcome(task, started, f"{type(exc).__name__}: {exc}", status="CRASHED")
                yield task, outcome
        finally:
            # Interrupted (or the caller stopped early): a shared cluster must not go on with our points.
            self.client.cancel([f for f in submitted if not f.done()])

    def close(self) -> None:
        """Close the Client and LocalCluster this executor made; a Client passed in stays open."""
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def check_executor(executor: Any, max_workers: Optional[int] = None) -> None:
    """Fail early, before a sweep writes anything, on an executor or max_workers that cannot work.

    Raises:
        ConfigError: an unknown executor name or object, or max_workers below 1.
    """
    if max_workers is not None:
        _check_workers(max_workers)
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ConfigError(f"executor={executor!r} is not known; allowed: {', '.join(EXECUTORS)} "
                              "(or a distributed.Client)")
        return
    if not _is_dask_client(executor):
        raise ConfigError(f"executor={executor!r}: expected one of {', '.join(EXECUTORS)} or a distributed.Client")


def make_executor(executor: Any, *, max_workers: Optional[int] = None, scheduler: Optional[str] = None):
    """An executor from its name ("inline", "process", "dask") or a `distributed.Client`.

    Raises:
        ConfigError: an unknown name, or max_workers below 1.
    """
    check_executor(executor, max_workers)
    if not isinstance(executor, str):
        return DaskExecutor(client=executor)
    if executor == "inline":
        return InlineExecutor()
    if executor == "process":
        return ProcessExecutor(max_workers)
    return DaskExecutor(scheduler=scheduler, max_workers=max_workers)


def _is_dask_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(obj, Client)


def _check_workers(max_workers: int) -> int:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigError(f"max_workers={max_workers!r}: expected an integer >= 1")
    return max_workers


def _lost_outcome(task: PointTask, started: float, reason: str, status: str = "CRASHED") -> PointOutcome:
    """The outcome of a point whose worker never reported back; its run directory is found on disk."""
    run_dir = find_new_run_dir(task.sweep_dir, task.name, task.known_run_ids)
    return PointOutcome(task.name, status, str(run_dir) if run_dir else None, f"{status}: {reason}",
                        time.time() - started, reason)
