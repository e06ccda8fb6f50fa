"""The half of TelemetrySampler that runs in its sampling thread, and the warning it reports trouble with.

`SamplerThreadBody` is the base class of `TelemetrySampler` (in `sampler`): set-up (NVML, the
devices, the counters' origin, the csv), the tick schedule, GPU and energy-counter reads, csv
writes, and shutdown. NVML is called only from these methods. They hold no state of their own:
`TelemetrySampler.__init__` sets every attribute they read and write, and its comments say which
ones the thread owns.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from .backends import visible_nvml_indices
from .records import EnergyMeter, TelemetryCsv, latest_reading

__all__ = ["SamplerThreadBody", "TelemetryWarning"]


class TelemetryWarning(UserWarning):
    """GPU telemetry is off or stopped; the message says why."""


class SamplerThreadBody:
    """The methods of `TelemetrySampler` that run in the sampling thread, and the warning helpers both sides use."""

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
            self._note("GPU telemetry off: no GPU backend was requested (backend=None)")
        else:
            try:
                self._start_gpu()
            except ImportError:
                self._warn("GPU telemetry off: pynvml is not installed (pip install nvidia-ml-py)")
            except LookupError as exc:
                self._warn(f"GPU telemetry off: {exc}")
            except Exception as exc:
                self._warn(f"GPU telemetry off: {self._backend_label()} could not start ({type(exc).__name__}: {exc})")
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
        backend.init()
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
                raise LookupError(f"no GPU visible to this process ({self._backend_label()} sees {count} device(s), "
                                  f"CUDA_VISIBLE_DEVICES={visible!r})")
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


def _shutdown_quietly(backend: Any) -> None:
    """Release a backend whose state may already be broken (a lost GPU): errors here change nothing."""
    try:
        backend.shutdown()
    except Exception:
        pass
