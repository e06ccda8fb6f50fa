"""GPU telemetry backends: the NVML reader and its scripted stand-in, behind one small protocol.

The sampler talks to a backend only through `GpuBackend`'s methods, so the scripted backend CI
uses runs exactly the sampler code a GPU machine runs. Units everywhere: MB = 2**20 bytes, W, °C,
MHz; `energy_mj` returns the device's cumulative energy counter in millijoules (an arbitrary
origin, as NVML's counter counts since the driver loaded).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Protocol

__all__ = [
    "GpuBackend",
    "NvmlBackend",
    "ScriptedBackend",
    "ScriptedNVMLError",
    "READING_KEYS",
    "nvml_indices_for_torch_devices",
    "visible_nvml_indices",
    "nvml_error_text",
    "no_visible_gpu_text",
    "why_no_nvidia_gpu",
    "PYNVML_MISSING",
]

# Why there is no GPU telemetry, worded to read after the run report's "No GPU telemetry: ".
PYNVML_MISSING = "pynvml is not installed, so NVIDIA GPUs cannot be read (pip install nvidia-ml-py)"
NO_NVIDIA_GPU = "no NVIDIA GPU visible"

# The keys of `read(i)`, besides "power_field" and "memory_info" (which reading the backend used).
READING_KEYS = ("util", "mem_used_mb", "mem_total_mb", "power_w", "temp_c", "sm_clock_mhz")
_MB = 2**20


class GpuBackend(Protocol):
    """What the sampler needs from a GPU reader; every method may raise on a driver error."""

    name: str

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def device(self, index: int) -> dict: ...
    def read(self, index: int) -> dict: ...
    def energy_mj(self, index: int) -> int | None: ...


class NvmlBackend:
    """Reads NVIDIA GPUs through pynvml (the `nvidia-ml-py` package).

    Per-metric "not supported" answers (e.g. utilisation on a MIG slice) become None for that
    metric; any other NVML error propagates, and the sampler then stops querying GPUs.
    """

    name = "nvml"

    def __init__(self) -> None:
        self._nvml: Any = None
        self._pid: int | None = None
        self._handles: dict[int, Any] = {}
        self._instant_power: dict[int, bool] = {}
        self._memory_v2: dict[int, bool] = {}

    def init(self) -> None:
        """Import pynvml and initialise NVML for this process (again after a fork: handles do not survive one)."""
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._pid = os.getpid()
        self._handles.clear()

    def shutdown(self) -> None:
        """Release NVML, only in the process that initialised it (a forked child must not touch the parent's state)."""
        if self._nvml is not None and self._pid == os.getpid():
            self._nvml.nvmlShutdown()
        self._nvml, self._pid = None, None
        self._handles.clear()

    def device_count(self) -> int:
        """Number of GPUs NVML sees (all of them: NVML ignores CUDA_VISIBLE_DEVICES)."""
        return int(self._nvml.nvmlDeviceGetCount())

    def device(self, index: int) -> dict:
        """Name and UUID of NVML device `index`."""
        handle = self._handle(index)
        return {"name": _text(self._nvml.nvmlDeviceGetName(handle)), "uuid": _text(self._nvml.nvmlDeviceGetUUID(handle))}

    def read(self, index: int) -> dict:
        """One reading of device `index`: the READING_KEYS plus which power field and memory API answered."""
        nvml, handle = self._nvml, self._handle(index)
        util = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        used, total, memory_info = self._memory(index, handle)
        power_w, power_field = self._power(index, handle)
        return {
            "util": util,
            "mem_used_mb": used,
            "mem_total_mb": total,
            "power_w": power_w,
            "temp_c": self._optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            "sm_clock_mhz": self._optional(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
            "power_field": power_field,
            "memory_info": memory_info,
        }

    def energy_mj(self, index: int) -> int | None:
        """The total-energy counter in mJ (Volta and later); None where the GPU has none. Slow: ~4 ms."""
        handle = self._handle(index)
        return self._optional(lambda: int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))

    def _handle(self, index: int) -> Any:
        """Cached NVML handle of device `index`."""
        if index not in self._handles:
            self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _optional(self, read: Callable[[], Any]) -> Any:
        """Run one NVML query; None when the device does not support it."""
        try:
            return read()
        except _nvml_errors(self._nvml, "NotSupported", "FunctionNotFound"):
            return None

    def _memory(self, index: int, handle: Any) -> tuple[float | None, float | None, str]:
        """Used/total MB, from memory info v2 (v1 counts driver-reserved memory as used) or v1 where v2 is missing."""
        nvml = self._nvml
        if self._memory_v2.get(index, True):
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
                self._memory_v2[index] = True
                return info.used / _MB, info.total / _MB, "v2"
            except (AttributeError, *_nvml_errors(nvml, "FunctionNotFound", "NotSupported", "ArgumentVersionMismatch")):
                self._memory_v2[index] = False
        info = self._optional(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        return (None, None, "v1") if info is None else (info.used / _MB, info.total / _MB, "v1")

    def _power(self, index: int, handle: Any) -> tuple[float | None, str]:
        """Watts from the instant field where the driver has it; else the ~1 s averaged reading, which lags load steps."""
        nvml = self._nvml
        field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is not None and self._instant_power.get(index, True):
            try:
                value = nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
                if value.nvmlReturn == nvml.NVML_SUCCESS:
                    self._instant_power[index] = True
                    return _field_number(nvml, value) / 1000.0, "instant"
            except _nvml_errors(nvml, "NotSupported", "FunctionNotFound", "InvalidArgument"):
                pass
            self._instant_power[index] = False
        milliwatts = self._optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return (None if milliwatts is None else milliwatts / 1000.0), "average"


def _nvml_errors(nvml: Any, *names: str) -> tuple[type[BaseException], ...]:
    """The pynvml error classes with these names that this pynvml release defines (older ones lack some)."""
    return tuple(getattr(nvml, f"NVMLError_{name}") for name in names if hasattr(nvml, f"NVMLError_{name}"))


def _field_number(nvml: Any, value: Any) -> float:
    """The number in an nvmlFieldValue_t, read through the union member its valueType names."""
    member = {
        nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    }.get(value.valueType, "uiVal")
    return float(getattr(value.value, member))


def _text(value: str | bytes) -> str:
    """NVML strings arrive as bytes in older pynvml releases."""
    return value.decode() if isinstance(value, bytes) else str(value)


class ScriptedNVMLError(RuntimeError):
    """The scripted backend's stand-in for an NVML driver error such as NVMLError_GpuIsLost."""


class ScriptedBackend:
    """A scripted NVML stand-in for machines without a GPU (CI): same methods, same answers' shape.

    Args:
        devices: one dict per device with "name" and "uuid".
        readings: callable(t, device_index) -> dict with some of READING_KEYS (missing keys read
            as None, as an unsupported NVML metric does); t is seconds since init().
        energy_counter: False (no counter, like pre-Volta GPUs), True (the counter integrates the
            scripted power_w), or callable(t, device_index) -> joules since init().
        has_instant_power: whether the instant power field answers ("instant") or only the
            averaged reading does ("average").
        fail_after: after this many read() calls every read() and energy_mj() raises
            ScriptedNVMLError("GPU is lost ..."); None never fails.
        fail_init: when set, init() raises ScriptedNVMLError with this text (NVML cannot start).
        counter_start_mj: the counter's value at init (real counters count since driver load).
    """

    name = "scripted"

    def __init__(self, devices: list[dict], readings: Callable[[float, int], dict], *,
                 energy_counter: bool | Callable[[float, int], float] = True, has_instant_power: bool = True,
                 fail_after: int | None = None, fail_init: str | None = None,
                 counter_start_mj: int = 1_000_000_000) -> None:
        self.devices = [dict(d) for d in devices]
        self.readings = readings
        self.energy_counter = energy_counter
        self.has_instant_power = has_instant_power
        self.fail_after = fail_after
        self.fail_init = fail_init
        self.counter_start_mj = counter_start_mj
        self.init_calls: list[tuple[int, str]] = []  # (pid, thread name): where NVML would have been initialised
        self.shutdown_calls = 0
        self.read_calls = 0
        self.query_threads: set[str] = set()  # threads that read devices: the sampler's only, never the loop's
        self._t0: float | None = None
        self._integrated: dict[int, tuple[float, float]] = {}  # device -> (t, joules) of the power integral

    def init(self) -> None:
        """Start the script's clock (t = 0); raise like nvmlInit when `fail_init` is set."""
        self.init_calls.append((os.getpid(), threading.current_thread().name))
        if self.fail_init:
            raise ScriptedNVMLError(self.fail_init)
        if self._t0 is None:  # a re-init (after a fork) keeps the clock and counters, as the hardware does
            self._t0 = time.monotonic()
            self._integrated = {i: (0.0, 0.0) for i in range(len(self.devices))}

    def shutdown(self) -> None:
        """Count the call (tests check the sampler releases the backend)."""
        self.shutdown_calls += 1

    def device_count(self) -> int:
        """Number of scripted devices."""
        return len(self.devices)

    def device(self, index: int) -> dict:
        """Name and UUID of scripted device `index`."""
        return {"name": self.devices[index]["name"], "uuid": self.devices[index]["uuid"]}

    def read(self, index: int) -> dict:
        """The script's reading at the current time, shaped like NvmlBackend.read."""
        self._check_alive()
        self.read_calls += 1
        values = self.readings(self._now(), index)
        reading = {key: values.get(key) for key in READING_KEYS}
        reading["power_field"] = "instant" if self.has_instant_power else "average"
        reading["memory_info"] = "v2"
        return reading

    def energy_mj(self, index: int) -> int | None:
        """The scripted energy counter in mJ, or None when the script has no counter."""
        self._check_alive()
        if self.energy_counter is False:
            return None
        now = self._now()
        if callable(self.energy_counter):
            joules = self.energy_counter(now, index)
        else:
            joules = self._integrate_power(index, now)
        return self.counter_start_mj + int(round(joules * 1000.0))

    def _now(self) -> float:
        """Seconds since init()."""
        return time.monotonic() - self._t0

    def _check_alive(self) -> None:
        """Note the calling thread; raise the scripted driver error once `fail_after` readings have been served."""
        self.query_threads.add(threading.current_thread().name)
        if self.fail_after is not None and self.read_calls >= self.fail_after:
            raise ScriptedNVMLError(f"GPU is lost (scripted failure after {self.fail_after} readings)")

    def _integrate_power(self, index: int, now: float) -> float:
        """Joules of the scripted power from init to `now` (trapezoid, 5 ms steps), as a real counter accumulates."""
        t, joules = self._integrated[index]
        steps = max(1, int((now - t) / 0.005))
        dt = (now - t) / steps
        for k in range(steps):
            p0 = self.readings(t + k * dt, index).get("power_w") or 0.0
            p1 = self.readings(t + (k + 1) * dt, index).get("power_w") or 0.0
            joules += 0.5 * (p0 + p1) * dt
        self._integrated[index] = (now, joules)
        return joules


def _torch_device_uuid(torch_index: int) -> str:
    """UUID torch reports for CUDA device `torch_index` (no "GPU-" prefix)."""
    import torch

    return str(torch.cuda.get_device_properties(torch_index).uuid)


def nvml_indices_for_torch_devices(torch_device_indices: list[int], *, backend: Any = "auto") -> list[int]:
    """Map torch CUDA device indices to NVML indices through the devices' UUIDs.

    torch counts only the devices CUDA_VISIBLE_DEVICES shows, in CUDA's order; NVML counts every
    device in PCI order, so torch's cuda:0 can be NVML's device 2. This opens a short NVML session
    of its own (init, read UUIDs, shutdown) before the sampler starts.

    Args:
        torch_device_indices: torch CUDA indices (e.g. [0] for "cuda:0").
        backend: "auto" (NvmlBackend) or a GpuBackend object.

    Returns:
        NVML indices in the same order; the torch indices unchanged for any device that cannot be
        matched (no NVML, no UUID from torch).
    """
    indices = [int(i) for i in torch_device_indices]
    gpu = NvmlBackend() if backend == "auto" else backend
    try:
        gpu.init()
    except Exception:
        return indices
    try:
        nvml_uuids = {gpu.device(i)["uuid"].lower().removeprefix("gpu-"): i for i in range(gpu.device_count())}
        mapped = []
        for index in indices:
            try:
                uuid = _torch_device_uuid(index).lower().removeprefix("gpu-")
            except Exception:
                uuid = None
            mapped.append(nvml_uuids.get(uuid, index))
        return mapped
    except Exception:
        return indices
    finally:
        try:
            gpu.shutdown()
        except Exception:
            pass


def visible_nvml_indices(backend: Any, count: int, cuda_visible_devices: str | None) -> list[int]:
    """NVML indices of the GPUs CUDA_VISIBLE_DEVICES shows (all `count` when it is unset).

    Entries are GPU UUIDs (a unique prefix is enough, as CUDA accepts) or integers; CUDA stops at
    the first entry it cannot parse, and so does this. Integers are taken as NVML indices, which
    match CUDA's numbering when CUDA_DEVICE_ORDER=PCI_BUS_ID (and on machines of identical GPUs).
    MIG entries cannot be told apart through NVML's device list: they stop the parse too.
    """
    if cuda_visible_devices is None:
        return list(range(count))
    uuids = [backend.device(i)["uuid"].lower() for i in range(count)]
    indices: list[int] = []
    for entry in (e.strip().lower() for e in cuda_visible_devices.split(",")):
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < count:
                break
        else:
            matches = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index not in indices:
            indices.append(index)
    return indices


def nvml_error_text(exc: BaseException) -> str:
    """A failed NVML call in words: pynvml's own text ("NVML Shared Library Not Found"), else "Type: text"."""
    text = " ".join(str(exc).split())
    if type(exc).__name__.startswith("NVMLError") and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def no_visible_gpu_text(label: str, count: int, cuda_visible_devices: str | None) -> str:
    """Why a backend that started shows this process no GPU: it sees none, or CUDA_VISIBLE_DEVICES names none of them.

    Args:
        label: how messages name the backend ("NVML", "the scripted backend").
        count: devices the backend sees.
        cuda_visible_devices: the variable's value (None: unset).
    """
    head = NO_NVIDIA_GPU if label == "NVML" else "no GPU visible to this process"
    if count == 0:
        return f"{head}: {label} sees no device"
    return f"{head}: CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} names none of the {count} device(s) {label} sees"


def why_no_nvidia_gpu(backend: Any = "auto") -> tuple[str | None, int]:
    """Ask NVML once (init, count, shutdown) whether this process can see an NVIDIA GPU, and if not, why.

    For a sampler given no backend, so that its note says why there is no GPU telemetry instead of
    only that none was asked for. Cheap: a failing nvmlInit returns at once.

    Args:
        backend: "auto" (NvmlBackend) or a GpuBackend object.

    Returns:
        (reason, visible): reason is None when at least one GPU is visible, else e.g.
        "no NVIDIA GPU visible: NVML Shared Library Not Found"; visible counts the GPUs
        CUDA_VISIBLE_DEVICES shows of those NVML sees. Never raises.
    """
    gpu = NvmlBackend() if backend == "auto" else backend
    label = "NVML" if getattr(gpu, "name", None) == "nvml" else f"the {getattr(gpu, 'name', type(gpu).__name__)} backend"
    try:
        gpu.init()
    except ImportError:
        return PYNVML_MISSING, 0
    except Exception as exc:
        head = NO_NVIDIA_GPU if label == "NVML" else f"{label} could not start"
        return f"{head}: {nvml_error_text(exc)}", 0
    try:
        count = int(gpu.device_count())
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = visible_nvml_indices(gpu, count, visible) if count else []
        return (None if indices else no_visible_gpu_text(label, count, visible)), len(indices)
    except Exception as exc:
        return f"{label} could not count the GPUs: {nvml_error_text(exc)}", 0
    finally:
        try:
            gpu.shutdown()
        except Exception:
            pass
