"""Event data: the HDF5 layout (h5), batch loaders (loader), synthetic generators (synthetic),
sensor recordings (sensors) and their spectrograms as events (spectrogram)."""

from .h5 import EventFile, write_events
from .loader import DataMeta, EventLoader, make_loaders
from .sensors import SensorRecording, make_synthetic_sensor_data, read_sensor_recordings
from .spectrogram import prepare_spectrograms
from .synthetic import make_synthetic_events

__all__ = [
    "EventFile",
    "write_events",
    "EventLoader",
    "DataMeta",
    "make_loaders",
    "make_synthetic_events",
    "SensorRecording",
    "make_synthetic_sensor_data",
    "read_sensor_recordings",
    "prepare_spectrograms",
]
