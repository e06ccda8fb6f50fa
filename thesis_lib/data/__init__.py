"""Event data: the HDF5 layout (h5), batch loaders (loader), synthetic generators (synthetic),
sensor recordings (sensors) and their spectrograms as events (spectrogram)."""

from .h5 import (
    DEFAULT_CONT_FEATURES,
    DEFAULT_GLOBALS_FEATURES,
    LAYOUT_VERSION,
    SPLITS,
    EventFile,
    write_events,
)
from .loader import DataMeta, EventLoader, Normalization, compute_normalization, make_loaders
from .sensors import SensorRecording, make_synthetic_sensor_data, read_sensor_recordings
from .spectrogram import prepare_spectrograms
from .synthetic import TOKEN_TYPES, make_synthetic_events

__all__ = [
    "LAYOUT_VERSION",
    "SPLITS",
    "DEFAULT_CONT_FEATURES",
    "DEFAULT_GLOBALS_FEATURES",
    "EventFile",
    "write_events",
    "Normalization",
    "compute_normalization",
    "EventLoader",
    "DataMeta",
    "make_loaders",
    "TOKEN_TYPES",
    "make_synthetic_events",
    "SensorRecording",
    "make_synthetic_sensor_data",
    "read_sensor_recordings",
    "prepare_spectrograms",
]
