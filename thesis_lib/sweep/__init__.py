"""Sweeps: a grid x seeds of training runs in one directory, on one machine or a Dask cluster.

`sweep(base, grid, seeds, name=..., executor=...)` is the entry point; see `runner` for the
directory layout and re-running, `grid` for the expansion and hashes, `executors` for where
points run (including dask-jobqueue on HPC).
"""

from .executors import EXECUTORS, DaskExecutor, InlineExecutor, PointOutcome, PointTask, ProcessExecutor, execute_point
from .grid import SweepPoint, expand_grid, point_config_hash, point_name, spec_hash
from .runner import SWEEP_FILE, PointResult, SweepResult, add_sweep_command, sweep

__all__ = [
    "sweep",
    "SweepResult",
    "PointResult",
    "SWEEP_FILE",
    "add_sweep_command",
    "expand_grid",
    "point_name",
    "point_config_hash",
    "spec_hash",
    "SweepPoint",
    "EXECUTORS",
    "PointTask",
    "PointOutcome",
    "execute_point",
    "InlineExecutor",
    "ProcessExecutor",
    "DaskExecutor",
]
