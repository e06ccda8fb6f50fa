"""The executors that hand points to worker processes: a local spawn process pool, and a Dask cluster.

What they share lives here too: the visible GPUs, pinning a point to its GPU in the worker, the
worker-count check, and the outcome of a point whose worker never reported back. The executors
module docstring says how each behaves and how to use them (including dask-jobqueue on HPC).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.context
import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Optional, Sequence

from ..errors import ConfigError
from ..layout import sanitize_run_name
from .point import PointOutcome, PointTask, execute_point, find_new_run_dir

__all__ = ["visible_gpu_ids", "ProcessExecutor", "DaskExecutor"]


def run_pinned(task_fn: Callable[[PointTask], PointOutcome], task: PointTask) -> PointOutcome:
    """In a pool worker: pin the task's GPU, then run it."""
    if task.device is not None:
        # Before the point imports torch in this fresh process: CUDA reads the variable once, at init.
        os.environ["CUDA_VISIBLE_DEVICES"] = task.device
    return task_fn(task)


# One at a time: a worker being launched may hide `__main__.__file__` for a moment (_launchable_main).
_LAUNCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _launchable_main() -> Iterator[None]:
    """While a spawn worker is launched: hide a `__main__.__file__` that names no file.

    A spawned process re-runs the parent's main script from `__main__.__file__` before it takes any
    work (multiprocessing's "safe importing of the main module"). A script read on standard input
    (`python - <<EOF`) has `__file__ == "<stdin>"`, no file, so every worker died at start-up and
    broke the pool. With the attribute hidden the worker starts with an empty `__main__`, as it does
    for `python -c` and an interactive session: what a point needs is plain data plus functions of
    importable modules (`execute_point`), and the sweep refuses up front anything that would need
    the parent's `__main__` (executors.worker_imports). A main script that is a real file is left
    alone: it is re-imported as usual (so it must guard its entry point).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None or _is_file(path):
        yield
        return
    with _LAUNCH_LOCK:
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


def _is_file(path: str) -> bool:
    origin = getattr(multiprocessing.process, "ORIGINAL_DIR", None) or os.getcwd()
    return os.path.isfile(path if os.path.isabs(path) else os.path.join(origin, path))


class _PoolWorker(multiprocessing.context.SpawnProcess):
    """A pool worker process: launched with a main module it can start from (_launchable_main)."""

    def start(self) -> None:
        with _launchable_main():
            super().start()


class _PoolContext(multiprocessing.context.SpawnContext):
    """The spawn context of one pool: its workers are _PoolWorkers, and it keeps them, so that when
    the pool breaks the point's error can say how its worker ended (exit code or signal)."""

    def __init__(self) -> None:
        self.workers: list[_PoolWorker] = []

    def Process(self, *args: Any, **kwargs: Any) -> _PoolWorker:  # noqa: N802 - multiprocessing's name
        worker = _PoolWorker(*args, **kwargs)
        self.workers.append(worker)
        return worker


def _how_workers_died(context: Optional[_PoolContext], error: BaseException) -> str:
    """Why the pool broke: the exit code or signal of each worker that died, and the error's cause."""
    died = []
    for worker in context.workers if context is not None else []:
        code = worker.exitcode
        if code is None or code == 0:
            continue  # still running, or done after its one task (max_tasks_per_child)
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            died.append((-code == signal.SIGTERM, f"worker pid {worker.pid} was killed by {name}{hint}"))
        else:
            hint = (": it raised before or while running the point, its traceback is above on stderr"
                    if code == 1 else "")
            died.append((False, f"worker pid {worker.pid} exited with code {code}{hint}"))
    # The pool terminates (SIGTERM) the workers left once one dies: name those only when nothing else explains it.
    first = [text for terminated, text in died if not terminated] or [text for _, text in died]
    parts = first or [f"{type(error).__name__}: {error}"]
    cause = error.__cause__ or error.__context__
    if cause is not None:
        parts.append(f"cause: {str(cause).strip()[-600:]}")
    return "; ".join(parts)


def visible_gpu_ids() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (empty on CPU)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


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
        self._context: Optional[_PoolContext] = None

    def _new_pool(self) -> ProcessPoolExecutor:
        per_child = {"max_tasks_per_child": 1} if any(s is not None for s in self.slots) else {}
        self._context = _PoolContext()
        return ProcessPoolExecutor(self.workers, mp_context=self._context, **per_child)

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
            pool_error: Optional[BaseException] = None
            for future in done:
                task, breaks, slot, started = in_flight.pop(future)
                free.append(slot)
                try:
                    yield task, future.result()
                except BrokenProcessPool as exc:
                    broken.append((task, breaks, started))
                    pool_error = exc
                except Exception as exc:  # noqa: BLE001 - e.g. an outcome that would not unpickle
                    yield task, _lost_outcome(task, started, f"the worker could not return the result: {exc!r}")
            if broken:
                # Every future still in flight fails with the pool; collect them now.
                for future, (task, breaks, slot, started) in list(in_flight.items()):
                    free.append(slot)
                    broken.append((task, breaks, started))
                in_flight.clear()
                self._pool.shutdown(wait=True, cancel_futures=True)
                how = _how_workers_died(self._context, pool_error)
                self._pool = self._new_pool()
                alone = len(broken) == 1
                for task, breaks, started in broken:
                    if alone or breaks >= 1:
                        reason = f"its worker process died ({how})"
                        yield task, _lost_outcome(task, started, reason, status="CRASHED")
                    else:
                        print(f"[sweep] the process pool broke while {task.name} ran ({how}); running it again")
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
        # A worker runs a point in one of its threads, where Python cannot install signal handlers:
        # this plugin routes each worker's SIGTERM/SIGINT/SIGUSR1 (a batch system's preemption) to
        # the runs it holds, which then stop gracefully (workers that join later get it too).
        from .dask_plugin import StopRunsOnSignal

        self.client.register_plugin(StopRunsOnSignal(), name="thesis-lib-stop-runs-on-signal")
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


def _check_workers(max_workers: int) -> int:
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigError(f"max_workers={max_workers!r}: expected an integer >= 1")
    return max_workers


def _lost_outcome(task: PointTask, started: float, reason: str, status: str = "CRASHED") -> PointOutcome:
    """The outcome of a point whose worker never reported back; its run directory is found on disk."""
    run_dir = find_new_run_dir(task.sweep_dir, task.name, task.known_run_ids, since=started)
    return PointOutcome(task.name, status, str(run_dir) if run_dir else None, f"{status}: {reason}",
                        time.time() - started, reason)
