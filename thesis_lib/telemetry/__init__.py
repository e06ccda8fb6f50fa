"""Telemetry: a background sampler of the GPUs (through NVML) and this process, writing facts/telemetry.csv.

`TelemetrySampler` is what train() starts; `ScriptedBackend` stands in for NVML where there is no
GPU (CI), running the same sampler code.
"""

from .backends import (
    GpuBackend,
    NvmlBackend,
    ScriptedBackend,
    ScriptedNVMLError,
    nvml_indices_for_torch_devices,
    visible_nvml_indices,
)
from .process import ProcessStats
from .records import telemetry_columns
from .sampler import MIN_INTERVAL_S, TelemetrySampler, TelemetryWarning

__all__ = [
    "TelemetrySampler",
    "TelemetryWarning",
    "MIN_INTERVAL_S",
    "telemetry_columns",
    "GpuBackend",
    "NvmlBackend",
    "ScriptedBackend",
    "ScriptedNVMLError",
    "nvml_indices_for_torch_devices",
    "visible_nvml_indices",
    "ProcessStats",
]
