"""The run-directory contract: the facts schema, RunWriter, and the readers reports use.

Training emits facts through `RunWriter`; reports read them back with `load_runs`; nothing
else couples the two.
"""

from .env import collect_env
from .reader import read_config, read_events, read_scalars, read_steps, read_telemetry
from .run_dir import atomic_open, atomic_write_bytes, atomic_write_text, create_run_dir, sanitize_run_name
from .runs_table import discover_runs, load_runs
from .schema import (
    BASE_SCALAR_COLUMNS,
    MOMENTS,
    SCHEMA_VERSION,
    STATUSES,
    STEPS_COLUMNS,
    STEPS_FILE,
    TELEMETRY_FILE,
    TAIL_SCALAR_COLUMNS,
    config_hash,
    scalar_columns,
)
from .status import run_status
from .writer import RunWriter

__all__ = [
    "SCHEMA_VERSION",
    "MOMENTS",
    "STATUSES",
    "STEPS_FILE",
    "STEPS_COLUMNS",
    "TELEMETRY_FILE",
    "BASE_SCALAR_COLUMNS",
    "TAIL_SCALAR_COLUMNS",
    "scalar_columns",
    "config_hash",
    "create_run_dir",
    "sanitize_run_name",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_bytes",
    "collect_env",
    "RunWriter",
    "discover_runs",
    "read_events",
    "read_scalars",
    "read_steps",
    "read_telemetry",
    "read_config",
    "run_status",
    "load_runs",
]
