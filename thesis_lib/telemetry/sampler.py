"""TelemetrySampler: a background thread that samples the GPUs and this process into facts/telemetry.csv.

The thread is the only place NVML is called: it initialises NVML itself (again if the process id
changed, i.e. after a fork), reads every `interval_s`, reads the slow energy counter about every
`energy_interval_s`, and writes one csv row per sample. The training loop only calls `mark()` at
epoch ends, which aggregates what the thread recorded, under a lock, without touching NVML.
The class's first half is what the training thread calls; its second half runs in the sampling thread.

The sampler runs only in the process that started it. Threads do not survive a fork, so a
DataLoader worker that inherits the object holds a stopped sampler: `mark()` and `stop()` there
return empty aggregates and write nothing. Nothing in a worker ever initialises NVML.

Failure is soft: no pynvml, no GPU, a failing nvmlInit, or an NVML error mid-run leaves the GPU
columns empty (from then on), the CPU columns keep coming, and one TelemetryWarning says why
(`info()["warning"]` holds the text, worded to read after "No GPU telemetry: ", e.g. "no NVIDIA GPU
visible: NVML Shared Library Not Found"). No exception leaves the thread.

Energy: with the counter, each row's cumulative energy is interpolated linearly between the
counter reads around it, so rows reach the file within `energy_interval_s` of being sampled (a
killed run loses at most that last second). `mark()` cannot wait for the next counter read; it
takes the last counter read plus the trapezoid of sampled power since then, which telescopes
exactly across marks. Without a counter, energy is the trapezoid of sampled power.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .backends import (
    PYNVML_MISSING,
    NvmlBackend,
    no_visible_gpu_text,
    nvml_error_text,
    visible_nvml_indices,
    why_no_nvidia_gpu,
)
from .process import ProcessStats
from .records import EnergyMeter, TelemetryCsv, Window, latest_reading

__all__ = ["TelemetrySampler", "TelemetryWarning", "MIN_INTERVAL_S"]

# NVML refreshes its readings about every 100 ms: polling faster repeats values and contends for the driver's lock.
MIN_INTERVAL_S = 0.1
_START_TIMEOUT_S = 30.0
_JOIN_TIMEOUT_S = 10.0


class TelemetryWarning(UserWarning):
    """GPU telemetry is off or stopped; the message says why."""


class TelemetrySampler:
    """Samples GPU utilisation, memory, power, temperature, SM clock and energy plus this process's CPU%/RSS.

    Args:
        csv_path: the run's facts/telemetry.csv. An existing file with the same header is appended
            to (a resumed run); one with a different header is left alone and rows go to
            telemetry_<n>.csv (named in `info()["csv_path"]`).
        interval_s: seconds between samples; below 0.1 it is raised to 0.1 with a warning.
        devices: NVML device indices to read; None reads every device CUDA_VISIBLE_DEVICES shows
            (GPU-UUID or integer entries), all of them when it is unset. Use
            `nvml_indices_for_torch_devices` to turn torch indices into NVML ones.
        backend: "auto" (NVML where pynvml imports and nvmlInit works), None (no GPU telemetry:
            what a CPU run's trainer passes; NVML is asked once, at start, whether a GPU is
            visible, only so that `info()["warning"]` can say why there is none), or a GpuBackend
            object such as ScriptedBackend.
        start_time: time.time() of the run's start; the csv's `t` counts from it (default: start()).
        energy_interval_s: seconds between reads of the energy counter (~4 ms each on an H100).

    Raises:
        ValueError: interval_s or energy_interval_s is not a positive finite number.
    """

    def __init__(self, csv_path: str | os.PathLike, *, interval_s: float = 0.5, devices: list[int] | None = None,
                 backend: Any = "auto", start_time: float | None = None, energy_interval_s: float = 1.0) -> None:
        for name, value in (("interval_s", interval_s), ("energy_interval_s", energy_interval_s)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"TelemetrySampler: {name} must be a positive number of seconds, got {value!r}")
        if interval_s < MIN_INTERVAL_S:
            warnings.warn(f"telemetry interval_s={interval_s} is below {MIN_INTERVAL_S} s, NVML's refresh period; "
                          f"sampling every {MIN_INTERVAL_S} s instead", TelemetryWarning, stacklevel=2)
            interval_s = MIN_INTERVAL_S
        self.csv_path = Path(csv_path)
        self.interval_s = float(interval_s)
        self.energy_interval_s = float(energy_interval_s)
        self.start_time = start_time
        self._requested_devices = None if devices is None else [int(i) for i in devices]
        self._backend = NvmlBackend() if backend == "auto" else backend
        self._auto = backend == "auto"
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._summary: dict | None = None
        self._warned = False
        self._warning: str | None = None
        # State below is written by the sampler thread; mark()/info() read it under the lock.
        self._gpu_on = False
        self._backend_pid: int | None = None
        self._backend_name: str | None = None
        self._devices: list[dict] = []
        self._power_field: str | None = None
        self._memory_info: str | None = None
        self._meter: EnergyMeter | None = None
        self._window = Window()
        self._total = Window()
        self._csv: TelemetryCsv | None = None
        self._process = ProcessStats()
        # Sampled rows not yet written: (t, cpu_pct, rss_mb, readings, energies); with the counter,
        # a row's energy is final once the next counter read brackets it.
        self._pending: list[tuple[float, float | None, float | None, list[dict] | None, list[float] | None]] = []
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._latest: dict | None = None

    # ---- public API: called from the training (main) thread -------------------------------------

    def start(self) -> "TelemetrySampler":
        """Start the sampling thread and wait until it has set up (NVML, csv header, first row).

        Returns:
            self.

        Raises:
            RuntimeError: the sampler was already stopped (create a new one to sample again).
        """
        if self._summary is not None:
            raise RuntimeError(f"TelemetrySampler for {self.csv_path} was stopped; create a new one to sample again")
        if self._thread is not None or os.getpid() != self._owner_pid:
            return self
        if self.start_time is None:
            self.start_time = time.time()
        self._thread = threading.Thread(target=self._run, name="thesis-lib-telemetry", daemon=True)
        self._thread.start()
        self._ready.wait(_START_TIMEOUT_S)
        return self

    def mark(self) -> dict:
        """Aggregate the samples since the previous mark (or the start) and open a new window.

        Returns:
            {energy_j, power_avg_w, power_max_w, gpu_util_avg, nvml_mem_peak_mb, nvml_mem_avg_mb,
            temp_max_c, samples}; GPU values are None when the window holds no GPU data. Several
            GPUs: energy and power are summed over devices, utilisation averaged, memory the max.
        """
        if os.getpid() != self._owner_pid:
            return Window().result(None)
        with self._lock:
            window, energy_now = self._window, self._energy_now()
            self._window = Window(energy_start=energy_now)
        return window.result(energy_now)

    def latest(self) -> dict | None:
        """The newest GPU reading, for a live display; cheap (a lock and a copy), no NVML call.

        Returns:
            {t, util_pct, mem_used_mb, mem_total_mb, power_w, temp_c, sm_clock_mhz} combined over
            the devices: power summed, utilisation averaged, memory of the device using the most,
            the highest temperature, the lowest SM clock (the throttled one); None when the newest
            sample holds no GPU reading (no GPU telemetry, or it stopped).
        """
        if os.getpid() != self._owner_pid:
            return None
        with self._lock:
            return None if self._latest is None else dict(self._latest)

    def stop(self) -> dict:
        """Stop the thread (it takes a last sample and a last counter read), close the csv, summarise.

        Idempotent, and safe when start() never ran.

        Returns:
            info() plus the run's totals: energy_j, power_avg_w, power_max_w, gpu_util_avg,
            nvml_mem_peak_mb, nvml_mem_avg_mb, temp_max_c, samples, and duration_s (from the
            first sample to the last, the span the energy covers).
        """
        if self._summary is not None:
            return self._summary
        if os.getpid() != self._owner_pid:
            return {**self.info(), **Window().result(None), "duration_s": 0.0}
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                self._warn(f"telemetry thread did not finish within {_JOIN_TIMEOUT_S:.0f} s (stuck in a driver call?); "
                           f"{self.csv_path} may miss its last rows")
        with self._lock:
            totals = self._total.result(self._energy_now())
            duration = 0.0 if self._first_t is None else self._last_t - self._first_t
        self._summary = {**self.info(), **totals, "duration_s": duration}
        return self._summary

    def info(self) -> dict:
        """What the sampler reads and how: backend, devices, power field, energy method, interval, warning."""
        if os.getpid() != self._owner_pid:  # a forked child: the lock may be held by a thread that is not there
            return self._info_fields()
        with self._lock:
            return self._info_fields()

    def _info_fields(self) -> dict:
        """info()'s dict, read without the lock."""
        return {
            "backend": self._backend_name,
            "devices": [dict(d) for d in self._devices],
            "power_field": self._power_field,
            "memory_info": self._memory_info,
            "energy_method": None if self._meter is None else self._meter.method,
            "interval_s": self.interval_s,
            "energy_interval_s": self.energy_interval_s,
            "csv_path": None if self._csv is None else str(self._csv.path),
            "warning": self._warning,
        }

    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ---- helpers --------------------------------------------------------------------------------

    def _energy_now(self) -> list[float] | None:
        """Cumulative joules per device at the latest sample (caller holds the lock)."""
        return None if self._meter is None else list(self._meter.estimate)

    # ---- the sampler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        """Thread body: set up, sample on a fixed schedule until stop(), finish; no exception escapes."""
        try:
            self._set_up()
        except Exception as exc:  # the thread must never raise into the program
            self._warn(f"telemetry could not start: {type(exc).__name__}: {exc}")
        finally:
            self._ready.set()
        try:
            next_tick = time.monotonic()
            while True:
                self._tick()
                next_tick += self.interval_s
                delay = next_tick - time.monotonic()
                if delay < 0:  # a slow read: skip the missed ticks rather than sampling in a burst
                    next_tick, delay = time.monotonic(), 0.0
                if self._stop_event.wait(delay):
                    break
            self._tick(final=True)
        except Exception as exc:
            self._warn(f"telemetry stopped: {type(exc).__name__}: {exc}")
        finally:
            self._close()

    def _set_up(self) -> None:
        """Start NVML (in this thread), resolve the devices, read the counters' origin, open the csv."""
        self._process.start()
        if self._backend is None:
            self._note(_why_no_backend())
        else:
            try:
                self._start_gpu()
            except ImportError:
                self._warn(PYNVML_MISSING)
            except LookupError as exc:
                self._warn(str(exc))
            except _InitError as exc:
                cause = exc.__cause__
                self._warn(f"no NVIDIA GPU visible: {nvml_error_text(cause)}" if self._backend_label() == "NVML"
                           else f"{self._backend_label()} could not start ({type(cause).__name__}: {cause})")
            except Exception as exc:
                self._warn(f"{self._backend_label()} could not start ({type(exc).__name__}: {exc})")
        try:
            csv = TelemetryCsv(self.csv_path, [d["index"] for d in self._devices])
        except OSError as exc:
            self._warn(f"telemetry csv {self.csv_path} cannot be written ({exc}); sampling for the epoch summaries only")
            csv = None
        with self._lock:
            self._csv = csv

    def _start_gpu(self) -> None:
        """Initialise the backend, check the requested devices exist, record names and the energy method."""
        backend = self._backend
        try:
            backend.init()
        except ImportError:
            raise
        except Exception as exc:  # NVML cannot start here (no driver, no library): its reason is the message
            raise _InitError() from exc
        self._backend_pid = os.getpid()
        try:
            count = backend.device_count()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            indices = (visible_nvml_indices(backend, count, visible)
                       if self._requested_devices is None else self._requested_devices)
            missing = [i for i in indices if not 0 <= i < count]
            if missing:
                raise LookupError(f"device index {missing} not found: {self._backend_label()} sees {count} device(s)")
            if not indices:
                raise LookupError(no_visible_gpu_text(self._backend_label(), count, visible))
            devices = [{"index": i, **backend.device(i)} for i in indices]
            before = time.time()
            counters = [backend.energy_mj(i) for i in indices]
            counter_t = 0.5 * (before + time.time()) - self.start_time
        except Exception:
            _shutdown_quietly(backend)
            raise
        origin = counters if all(c is not None for c in counters) else None
        with self._lock:
            self._devices = devices
            self._backend_name = backend.name
            self._meter = EnergyMeter(len(indices), origin, counter_t)
            self._gpu_on = True

    def _tick(self, final: bool = False) -> None:
        """Take one sample; read the energy counter when due (always on the final tick); write what is ready."""
        t = time.time() - self.start_time
        cpu_pct, rss_mb = self._process.read()
        readings = self._read_gpus(t)
        with self._lock:
            est = self._meter.add_power(t, [r["power_w"] for r in readings]) if readings else None
            self._window.add(readings)
            self._total.add(readings)
            self._first_t = t if self._first_t is None else self._first_t
            self._last_t = t
            self._latest = latest_reading(t, readings)
        self._pending.append((t, cpu_pct, rss_mb, readings, est))
        meter = self._meter
        if self._gpu_on and meter.method == "counter" and (final or t - meter.anchor_t >= self.energy_interval_s):
            self._read_counters()
        if final or not self._gpu_on or meter is None or meter.method != "counter":
            self._write_pending()

    def _read_gpus(self, t: float) -> list[dict] | None:
        """One reading per device, or None when GPU telemetry is off or fails now (which turns it off)."""
        if not self._gpu_on:
            return None
        try:
            if os.getpid() != self._backend_pid:  # forked: NVML state and handles are the parent's
                self._backend.init()
                self._backend_pid = os.getpid()
            readings = [self._backend.read(d["index"]) for d in self._devices]
        except Exception as exc:
            self._gpu_failed(exc, t)
            return None
        with self._lock:
            self._power_field = "instant" if all(r["power_field"] == "instant" for r in readings) else "average"
            self._memory_info = "v2" if all(r.get("memory_info") == "v2" for r in readings) else "v1"
        return readings

    def _read_counters(self) -> None:
        """Read every device's energy counter and interpolate the rows sampled since the previous read."""
        before = time.time()
        try:
            counters = [self._backend.energy_mj(d["index"]) for d in self._devices]
            if any(c is None for c in counters):
                raise RuntimeError("the energy counter stopped answering")
        except Exception as exc:
            self._gpu_failed(exc, before - self.start_time)
            return
        t = 0.5 * (before + time.time()) - self.start_time
        with self._lock:
            previous = self._meter.add_counter(t, counters)
        self._pending = [(t_row, cpu, rss, readings, None if est is None else self._meter.interpolate(previous, t_row))
                         for t_row, cpu, rss, readings, est in self._pending]
        self._write_pending()

    def _write_pending(self) -> None:
        """Write the queued rows to the csv."""
        pending, self._pending = self._pending, []
        if self._csv is None:
            return
        try:
            for row in pending:
                self._csv.write_row(*row)
        except OSError as exc:
            self._warn(f"telemetry csv {self._csv.path} stopped accepting rows ({exc}); sampling for the epoch summaries only")
            self._csv.close()
            with self._lock:
                self._csv = None

    def _gpu_failed(self, exc: Exception, t: float) -> None:
        """Stop querying GPUs after a driver error; rows already sampled keep their (extrapolated) energy."""
        self._gpu_on = False
        self._warn(f"GPU telemetry stopped at t={t:.1f} s: {self._backend_label()} raised {type(exc).__name__}: {exc}; "
                   "GPU columns are empty from then on, CPU columns continue")
        self._write_pending()
        _shutdown_quietly(self._backend)

    def _close(self) -> None:
        """Flush and close the csv, the process reader and the backend."""
        self._write_pending()
        self._process.close()
        if self._csv is not None:
            self._csv.close()
        if self._gpu_on:
            self._gpu_on = False
            _shutdown_quietly(self._backend)

    # ---- helpers --------------------------------------------------------------------------------

    def _backend_label(self) -> str:
        """How messages name the backend."""
        name = getattr(self._backend, "name", type(self._backend).__name__)
        return "NVML" if self._auto or name == "nvml" else f"the {name} backend"

    def _note(self, text: str) -> None:
        """Record why GPU telemetry is off without warning (the caller asked for it)."""
        with self._lock:
            self._warning = text if self._warning is None else f"{self._warning}; {text}"

    def _warn(self, text: str) -> None:
        """Record `text`; the first one is also the sampler's single TelemetryWarning."""
        self._note(text)
        if not self._warned:
            self._warned = True
            warnings.warn(text, TelemetryWarning, stacklevel=2)


class _InitError(Exception):
    """The backend's init() failed; the failure is the __cause__."""


def _why_no_backend() -> str:
    """The note of a sampler given no backend: why no GPU is visible, or that there is one nobody asked to sample.

    The trainer gives no backend for a CPU run; NVML's answer says whether that was for want of a GPU.
    """
    reason, visible = why_no_nvidia_gpu()
    if reason is not None:
        return reason
    return f"no GPU backend was given (backend=None), although NVML sees {visible} GPU(s)"


def _shutdown_quietly(backend: Any) -> None:
    """Release a backend whose state may already be broken (a lost GPU): errors here change nothing."""
    try:
        backend.shutdown()
    except Exception:
        pass
