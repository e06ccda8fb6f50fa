"""What the sampler records: csv rows, windows of aggregates, and cumulative energy per device.

Pure bookkeeping, no threads and no NVML: the sampler thread feeds it and mark()/stop() read it.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ..atomic_files import append_open

__all__ = ["TelemetryCsv", "Window", "EnergyMeter", "telemetry_columns", "latest_reading"]

_GPU_FIELDS = ("util_pct", "mem_used_mb", "mem_total_mb", "power_w", "temp_c", "sm_clock_mhz", "energy_j")
# The backend reading behind each gpu{i}_* column but energy (which the EnergyMeter gives).
_READING_KEYS = ("util", "mem_used_mb", "mem_total_mb", "power_w", "temp_c", "sm_clock_mhz")
# Decimals per written value: W to 10 mW, MB to 0.1, energy to the mJ the counter counts in.
_GPU_DIGITS = (0, 1, 1, 2, 0, 0, 3)


def telemetry_columns(device_indices: list[int]) -> list[str]:
    """The csv header for these NVML device indices: t, cpu_pct, rss_mb, then gpu{i}_* per device."""
    return ["t", "cpu_pct", "rss_mb"] + [f"gpu{i}_{field}" for i in device_indices for field in _GPU_FIELDS]


def _number(value: float | None, digits: int) -> str:
    """A csv cell: empty for a missing value."""
    return "" if value is None else f"{value:.{digits}f}"


class TelemetryCsv:
    """facts/telemetry.csv, append-only: one flushed line per row, so a killed run keeps what was written."""

    def __init__(self, path: Path, device_indices: list[int]) -> None:
        self.path = path
        self.n_devices = len(device_indices)
        header = ",".join(telemetry_columns(device_indices))
        for n in itertools.count(1):
            if not self.path.exists() or self.path.stat().st_size == 0:
                break
            with open(self.path, "rb") as existing:
                first = existing.readline().decode("utf-8", "replace").rstrip("\r\n")
                existing.seek(-1, os.SEEK_END)
                torn = existing.read(1) != b"\n"
            if first == header:  # a resumed run: same devices, keep appending
                self._file = append_open(self.path, "a", encoding="utf-8", buffering=1)
                if torn:  # a run killed mid-line: start ours on a fresh line
                    self._file.write("\n")
                return
            self.path = path.with_name(f"{path.stem}_{n}{path.suffix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = append_open(self.path, "a", encoding="utf-8", buffering=1)
        self._file.write(header + "\n")

    def write_row(self, t: float, cpu_pct: float | None, rss_mb: float | None, readings: list[dict] | None,
                  energies: list[float] | None) -> None:
        """Write and flush one row; GPU cells stay empty without readings, energy cells without energies."""
        cells = [_number(t, 3), _number(cpu_pct, 1), _number(rss_mb, 1)]
        for k in range(self.n_devices):
            values = [None] * 6 if readings is None else [readings[k].get(key) for key in _READING_KEYS]
            values.append(None if energies is None else energies[k])
            cells += [_number(v, d) for v, d in zip(values, _GPU_DIGITS)]
        self._file.write(",".join(cells) + "\n")

    def close(self) -> None:
        """Close the file (line buffering has already flushed every row)."""
        self._file.close()


def latest_reading(t: float, readings: list[dict] | None) -> dict | None:
    """One sample's GPU readings combined over devices for a live display (None without readings)."""
    if not readings:
        return None

    def present(key: str) -> list[float]:
        """The devices' values for `key` that NVML gave."""
        return [r[key] for r in readings if r.get(key) is not None]

    util, power, temp = present("util"), present("power_w"), present("temp_c")
    fullest = max(readings, key=lambda r: r.get("mem_used_mb") or -1.0)
    clocks = present("sm_clock_mhz")
    return {
        "t": t,
        "util_pct": sum(util) / len(util) if util else None,
        "mem_used_mb": fullest.get("mem_used_mb"),
        "mem_total_mb": fullest.get("mem_total_mb"),
        "power_w": sum(power) if power else None,
        "temp_c": max(temp) if temp else None,
        "sm_clock_mhz": min(clocks) if clocks else None,
    }


class _Stat:
    """Count, sum and max of the values added (None skipped)."""

    def __init__(self) -> None:
        self.n, self.total, self.max = 0, 0.0, None

    def add(self, value: float | None) -> None:
        """Fold in one value."""
        if value is None:
            return
        value = float(value)
        self.n += 1
        self.total += value
        self.max = value if self.max is None else max(self.max, value)

    @property
    def mean(self) -> float | None:
        """The mean of the values added, None when there were none."""
        return self.total / self.n if self.n else None


class Window:
    """Aggregates of the samples between two marks (or over the whole run).

    Per sample, devices combine first: power summed, utilisation averaged, memory and
    temperature the max; the window then averages or maxes those per-sample figures.
    """

    def __init__(self, energy_start: list[float] | None = None) -> None:
        self.energy_start = energy_start
        self.samples = 0
        self.gpu_samples = 0
        self.power, self.util, self.mem, self.temp = _Stat(), _Stat(), _Stat(), _Stat()

    def add(self, readings: list[dict] | None) -> None:
        """Count one sample and fold in its GPU readings, if any."""
        self.samples += 1
        if not readings:
            return
        self.gpu_samples += 1

        def values(key: str) -> list[float]:
            """The devices' values for `key` that NVML gave."""
            return [r[key] for r in readings if r.get(key) is not None]

        power, util, mem, temp = values("power_w"), values("util"), values("mem_used_mb"), values("temp_c")
        self.power.add(sum(power) if power else None)
        self.util.add(sum(util) / len(util) if util else None)
        self.mem.add(max(mem) if mem else None)
        self.temp.add(max(temp) if temp else None)

    def result(self, energy_now: list[float] | None) -> dict:
        """The mark()/stop() aggregate; energy is the change of the cumulative estimate across the window."""
        energy = None
        if energy_now is not None and self.gpu_samples:
            start = self.energy_start or [0.0] * len(energy_now)
            energy = sum(now - before for now, before in zip(energy_now, start))
        return {
            "energy_j": energy,
            "power_avg_w": self.power.mean,
            "power_max_w": self.power.max,
            "gpu_util_avg": self.util.mean,
            "nvml_mem_peak_mb": self.mem.max,
            "nvml_mem_avg_mb": self.mem.mean,
            "temp_max_c": self.temp.max,
            "samples": self.samples,
        }


class EnergyMeter:
    """Cumulative joules per device since the sampler started.

    "counter": anchored at each read of the energy counter, trapezoid of sampled power between
    reads (the estimate mark() sees), and linear interpolation between reads for the rows.
    "integrated": the trapezoid of sampled power alone.
    """

    def __init__(self, n_devices: int, origin_mj: list[int] | None, t0: float) -> None:
        self.method = "counter" if origin_mj is not None else "integrated"
        self.origin_mj = origin_mj
        self.anchor_t = t0
        self.anchor_j = [0.0] * n_devices
        self.estimate = [0.0] * n_devices
        self._last_t = t0
        self._last_p: list[float | None] = [None] * n_devices

    def add_power(self, t: float, powers: list[float | None]) -> list[float]:
        """Integrate power up to sample time `t`; returns the cumulative estimate there."""
        dt = max(0.0, t - self._last_t)
        for k, power in enumerate(powers):
            if power is not None:
                before = power if self._last_p[k] is None else self._last_p[k]
                self.estimate[k] += 0.5 * (before + power) * dt
            self._last_p[k] = power
        self._last_t = max(self._last_t, t)
        return list(self.estimate)

    def add_counter(self, t: float, counters_mj: list[int]) -> tuple[float, list[float]]:
        """Anchor the estimate at counter values read at `t`; returns the previous anchor (t, joules)."""
        previous = (self.anchor_t, self.anchor_j)
        self.anchor_t = t
        self.anchor_j = [(c - o) / 1000.0 for c, o in zip(counters_mj, self.origin_mj)]
        self.estimate = list(self.anchor_j)
        self._last_t = max(self._last_t, t)
        return previous

    def interpolate(self, previous: tuple[float, list[float]], t: float) -> list[float]:
        """Cumulative joules at `t`, linear between the `previous` anchor and the current one."""
        t0, joules0 = previous
        span = self.anchor_t - t0
        fraction = 1.0 if span <= 0 else min(1.0, max(0.0, (t - t0) / span))
        return [a + (b - a) * fraction for a, b in zip(joules0, self.anchor_j)]
