"""Sweeps: a grid x seeds of training runs in one directory, on one machine or a Dask cluster.

`sweep(base, grid, seeds, name=..., executor=...)` is the entry point; see `runner` for the
directory layout and re-running, `grid` for the expansion and hashes, `executors` for where
points run (including dask-jobqueue on HPC).
"""

from .executors import EXECUTORS
from .grid import expand_grid, point_name
from .runner import PointResult, SweepResult, sweep

__all__ = ["sweep", "SweepResult", "PointResult", "expand_grid", "point_name", "EXECUTORS"]
