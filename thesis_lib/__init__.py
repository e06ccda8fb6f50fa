"""thesis-lib: train PyTorch models, keep an honest record of every run, report on it.

The names below are the public API; each subpackage's `__all__` lists the rest of what users call
(README, "Public API"). `train` is the loop and the run's report; `fit` is the loop alone.
"""

from .config import Config, load_config
from .data import make_loaders, make_synthetic_events, make_synthetic_sensor_data, prepare_spectrograms
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    FactsError,
    ModelError,
    NonFiniteLossError,
    NoValidRunsError,
    ReportError,
    RunLockedError,
    SchemaVersionError,
    ThesisLibError,
    UnsafePathError,
)
from .export import export_model
from .facts import discover_runs, load_runs
from .models import build_model
from .record import RunWriter
from .sweep import SweepResult, sweep
from .train import RunResult, fit
from .version import __version__
from .workflow import train

__all__ = [
    "__version__",
    "train",
    "fit",
    "RunResult",
    "sweep",
    "SweepResult",
    "load_config",
    "Config",
    "load_runs",
    "discover_runs",
    "RunWriter",
    "make_synthetic_events",
    "make_synthetic_sensor_data",
    "prepare_spectrograms",
    "make_loaders",
    "build_model",
    "export_model",
    "ThesisLibError",
    "ConfigError",
    "DataError",
    "ModelError",
    "FactsError",
    "SchemaVersionError",
    "NoValidRunsError",
    "NonFiniteLossError",
    "RunLockedError",
    "UnsafePathError",
    "CheckpointError",
    "ReportError",
]
