"""thesis-lib: train PyTorch models, keep an honest record of every run, report on it."""

__version__ = "0.1.0"

from .config import Config, load_config
from .data import make_loaders, make_synthetic_events, make_synthetic_sensor_data, prepare_spectrograms
from .errors import (
    CheckpointError,
    ConfigError,
    ReportError,
    DataError,
    FactsError,
    ModelError,
    NonFiniteLossError,
    NoValidRunsError,
    SchemaVersionError,
    ThesisLibError,
)
from .export import export_model
from .record.writer import RunWriter
from .facts import discover_runs, load_runs
from .models import build_model
from .sweep import SweepResult, sweep
from .train import RunResult, train

__all__ = [
    "__version__",
    "train",
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
    "CheckpointError",
    "ReportError",
]
