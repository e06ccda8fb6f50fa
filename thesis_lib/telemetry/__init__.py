"""Telemetry: a background sampler of the GPUs (through NVML) and this process, writing facts/telemetry.csv.

`TelemetrySampler` is what train() starts; `ScriptedBackend` stands in for NVML where there is no
GPU (CI), running the same sampler code.
"""

from .backends import GpuBackend, NvmlBackend, ScriptedBackend
from .sampler import TelemetrySampler, TelemetryWarning

__all__ = ["TelemetrySampler", "TelemetryWarning", "GpuBackend", "NvmlBackend", "ScriptedBackend"]
