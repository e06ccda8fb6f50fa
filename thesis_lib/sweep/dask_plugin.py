"""The Dask worker plugin that lets a batch system's stop signal reach the runs a worker holds.

Its own module so that `distributed` is imported only by a sweep that uses Dask.
"""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

__all__ = ["StopRunsOnSignal"]


class StopRunsOnSignal(WorkerPlugin):
    """Stop signals reach the runs of the worker's threads (`thesis_lib.train.signals.install_stop_handlers`).

    A worker runs a point in one of its threads, where Python cannot install signal handlers.
    `setup` runs on the worker's event loop, the main thread of a `dask worker` or LocalCluster
    worker process, and routes SIGTERM/SIGINT/SIGUSR1 (a batch system's preemption) to the runs
    the worker holds, which then stop gracefully; with no run active a signal does what it did
    before (the worker shuts down).
    """

    idempotent = True

    def setup(self, worker: Any) -> None:
        from ..train.signals import install_stop_handlers

        if not install_stop_handlers():
            print(f"thesis-lib: worker {getattr(worker, 'address', '?')} runs its event loop off the main thread; "
                  "stop signals will not reach its runs")
