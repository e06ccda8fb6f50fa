"""Reading runs back: each file of a run directory, a run's status, and the table of many runs.

Training writes facts through `thesis_lib.record.RunWriter`; reports read them back from here;
nothing else couples the two.
"""

from .reader import read_config, read_events, read_scalars, read_steps, read_telemetry
from .resume import find_run_to_resume, resume_config_hash
from .runs_table import discover_runs, load_runs
from .status import run_status

__all__ = [
    "load_runs",
    "discover_runs",
    "read_events",
    "read_scalars",
    "read_steps",
    "read_telemetry",
    "read_config",
    "run_status",
    "find_run_to_resume",
    "resume_config_hash",
]
