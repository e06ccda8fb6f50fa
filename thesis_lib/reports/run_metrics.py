"""A run's key metrics and telemetry summary, each number from a fixed source.

Where two sources could give a number, the rule is fixed: the raw telemetry samples
(facts/telemetry.csv) give VRAM, power and GPU utilisation (they are what telemetry.png draws);
the sampler's own summary in `on_train_end.telemetry` is the fallback, then the per-epoch
columns of scalars.csv. Energy prefers the sampler's total (NVML's counter where the GPU has
one), then the cumulative energy columns of telemetry.csv, then the per-epoch energies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from ..layout import TELEMETRY_FILE

__all__ = ["KeyMetrics", "TelemetrySummary", "key_metrics", "telemetry_summary", "gpu_indices", "gpu_column"]

_GPU_COLUMN = re.compile(r"^gpu(\d+)_(.+)$")


@dataclass
class KeyMetrics:
    """The numbers of the key-metrics table; None where the run has no such fact (e.g. no GPU)."""

    loss_initial_train: Optional[float] = None
    loss_initial_val: Optional[float] = None
    loss_best_val: Optional[float] = None
    best_epoch: Optional[int] = None
    loss_final_train: Optional[float] = None
    loss_final_val: Optional[float] = None
    final_epoch: Optional[int] = None
    vram_peak_mb: Optional[float] = None  # NVML, device view: highest reading of any GPU
    vram_avg_mb: Optional[float] = None  # NVML: mean of all readings of all GPUs
    vram_total_mb: Optional[float] = None
    torch_vram_peak_mb: Optional[float] = None  # framework view: max over epochs of max_memory_allocated
    power_peak_w: Optional[float] = None  # summed over GPUs, per sample
    power_avg_w: Optional[float] = None
    energy_j: Optional[float] = None
    energy_method: Optional[str] = None  # "counter", "integrated", or where the number came from
    samples: Optional[int] = None  # training samples processed
    samples_per_s: Optional[float] = None  # mean training throughput over epochs
    gpu_util_avg: Optional[float] = None  # percent, mean of all readings of all GPUs

    @property
    def energy_kwh(self) -> Optional[float]:
        return None if self.energy_j is None else self.energy_j / 3.6e6

    @property
    def energy_j_per_sample(self) -> Optional[float]:
        if self.energy_j is None or not self.samples:
            return None
        return self.energy_j / self.samples


@dataclass
class TelemetrySummary:
    """What the telemetry sampler saw, and why there is no GPU telemetry when there is none."""

    has_gpu: bool = False
    warning: Optional[str] = None  # why there is no GPU telemetry (or what went wrong mid-run)
    backend: Optional[str] = None
    devices: list = field(default_factory=list)  # [{index, name, uuid}]
    power_field: Optional[str] = None
    interval_s: Optional[float] = None
    samples: int = 0
    temp_peak_c: Optional[float] = None
    cpu_avg_pct: Optional[float] = None
    rss_peak_mb: Optional[float] = None


def gpu_indices(telemetry: pd.DataFrame) -> list[int]:
    """Indices of the GPUs with at least one non-empty reading in a telemetry table."""
    found = set()
    for column in telemetry.columns:
        match = _GPU_COLUMN.match(str(column))
        if match and telemetry[column].notna().any():
            found.add(int(match.group(1)))
    return sorted(found)


def gpu_column(telemetry: pd.DataFrame, index: int, name: str) -> Optional[pd.Series]:
    """The numeric column gpu<index>_<name>, or None when absent or empty."""
    column = f"gpu{index}_{name}"
    if column not in telemetry.columns:
        return None
    values = pd.to_numeric(telemetry[column], errors="coerce")
    return values if values.notna().any() else None


def key_metrics(epochs: pd.DataFrame, telemetry: pd.DataFrame, payload: Mapping, end: Optional[Mapping]) -> KeyMetrics:
    """Loss, memory, power, energy, throughput and utilisation, each from its best source (see the module doc).

    Args:
        epochs: the per-epoch table (`run_report` builds it from scalars.csv).
        telemetry: facts/telemetry.csv as read by `read_telemetry` (empty without one).
        payload: `on_train_end.telemetry`, the sampler's summary ({} without one).
        end: the on_train_end event, or None for a run without an end.

    Returns:
        The KeyMetrics; a number no source gives stays None.
    """
    metrics = KeyMetrics()
    train_loss, val_loss = _finite(epochs, "train_loss"), _finite(epochs, "val_loss")
    if len(train_loss):
        metrics.loss_initial_train, metrics.loss_final_train = float(train_loss.iloc[0]), float(train_loss.iloc[-1])
    if len(val_loss):
        metrics.loss_initial_val, metrics.loss_final_val = float(val_loss.iloc[0]), float(val_loss.iloc[-1])
        metrics.best_epoch = int(val_loss.idxmin())
        metrics.loss_best_val = float(val_loss.min())
    if len(epochs.index):
        metrics.final_epoch = int(epochs.index.max())

    devices = gpu_indices(telemetry)
    memory = [s for s in (gpu_column(telemetry, i, "mem_used_mb") for i in devices) if s is not None]
    if memory:
        readings = pd.concat(memory, ignore_index=True).dropna()
        metrics.vram_peak_mb, metrics.vram_avg_mb = float(readings.max()), float(readings.mean())
        totals = [s.max() for s in (gpu_column(telemetry, i, "mem_total_mb") for i in devices) if s is not None]
        metrics.vram_total_mb = float(max(totals)) if totals else None
    elif _float_or_none(payload.get("nvml_mem_peak_mb")) is not None:
        metrics.vram_peak_mb = float(payload["nvml_mem_peak_mb"])
    metrics.torch_vram_peak_mb = _max_or_none(epochs, "vram_peak_mb")

    power = [s for s in (gpu_column(telemetry, i, "power_w") for i in devices) if s is not None]
    if power:
        per_sample = pd.concat(power, axis=1).sum(axis=1, min_count=1).dropna()  # the job's draw, all GPUs
        metrics.power_peak_w, metrics.power_avg_w = float(per_sample.max()), float(per_sample.mean())
    else:
        metrics.power_peak_w = _float_or_none(payload.get("power_max_w"))
        metrics.power_avg_w = _float_or_none(payload.get("power_avg_w"))

    utilisation = [s for s in (gpu_column(telemetry, i, "util_pct") for i in devices) if s is not None]
    if utilisation:
        metrics.gpu_util_avg = float(pd.concat(utilisation, ignore_index=True).dropna().mean())
    elif _float_or_none(payload.get("gpu_util_avg")) is not None:
        metrics.gpu_util_avg = float(payload["gpu_util_avg"])
    elif "gpu_util_avg" in epochs and epochs["gpu_util_avg"].notna().any():
        metrics.gpu_util_avg = float(epochs["gpu_util_avg"].mean())

    metrics.energy_j, metrics.energy_method = _energy(telemetry, devices, payload, epochs)
    samples = _float_or_none((end or {}).get("samples"))  # absent (or not a number) is missing, never 0
    if samples is None and "samples" in epochs and epochs["samples"].notna().any():
        samples = pd.to_numeric(epochs["samples"], errors="coerce").sum()
    metrics.samples = int(samples) if samples is not None else None
    throughput = _finite(epochs, "throughput")
    if len(throughput):
        metrics.samples_per_s = float(throughput.mean())
    return metrics


def _energy(telemetry: pd.DataFrame, devices: list[int], payload: Mapping, epochs: pd.DataFrame) -> tuple:
    """(energy in J, how it was measured): the sampler's total, else its cumulative columns, else per-epoch sums."""
    if _float_or_none(payload.get("energy_j")) is not None:
        return float(payload["energy_j"]), payload.get("energy_method") or "sampler total, method not recorded"
    cumulative = [s.dropna() for s in (gpu_column(telemetry, i, "energy_j") for i in devices) if s is not None]
    if cumulative:
        # Last minus first: correct whether the column counts from the sampler's start or the driver's.
        return float(sum(s.iloc[-1] - s.iloc[0] for s in cumulative)), "telemetry.csv cumulative energy"
    if "energy_j" in epochs and epochs["energy_j"].notna().any():
        return float(epochs["energy_j"].sum()), "sum of per-epoch energy (scalars.csv)"
    return None, None


def telemetry_summary(telemetry: pd.DataFrame, payload: Mapping, env: Mapping, device: Optional[str],
                      telemetry_config: Optional[Mapping] = None) -> TelemetrySummary:
    """Sampler settings, devices and process readings; the reason when there is no GPU telemetry.

    Args:
        telemetry: facts/telemetry.csv (empty without one).
        payload: `on_train_end.telemetry` ({} without one).
        env: env.json, whose GPU list names the devices of runs without a payload.
        device: the device the run trained on (`on_start.device`).
        telemetry_config: the config's `telemetry` section (whether telemetry was switched off).

    Returns:
        The TelemetrySummary; `warning` always says why when `has_gpu` is False, worded to read
        after "No GPU telemetry: " (older runs' "GPU telemetry off: ..." texts reworded so).
    """
    devices = gpu_indices(telemetry)
    summary = TelemetrySummary(
        has_gpu=bool(devices),
        warning=payload.get("warning"),
        backend=payload.get("backend"),
        devices=list(payload.get("devices") or []),
        power_field=payload.get("power_field"),
        interval_s=_float_or_none(payload.get("interval_s")),
        samples=int(len(telemetry.index)),
    )
    if not summary.devices:  # older runs: the GPUs env.json saw
        summary.devices = [{key: gpu.get(key) for key in ("index", "name", "uuid")} for gpu in env.get("gpus") or []]
    temps = [s.max() for s in (gpu_column(telemetry, i, "temp_c") for i in devices) if s is not None]
    summary.temp_peak_c = float(max(temps)) if temps else None
    summary.cpu_avg_pct = _max_or_none(telemetry, "cpu_pct", reduce="mean")
    summary.rss_peak_mb = _max_or_none(telemetry, "rss_mb")
    if not summary.has_gpu:
        summary.warning = _no_gpu_reason(summary.warning, device, telemetry.empty and not payload, telemetry_config)
    return summary


_OFF_PREFIX = "GPU telemetry off: "  # older samplers began every reason so; the report says "No GPU telemetry: " itself
_OLD_NOT_REQUESTED = "no GPU backend was requested (backend=None)"  # older samplers, on every CPU run
_NOT_GIVEN = "no GPU backend was given (backend=None)"  # the sampler's note on a CPU run of a machine with GPUs


def _no_gpu_reason(warning: Optional[str], device: Optional[str], nothing_sampled: bool,
                   telemetry_config: Optional[Mapping]) -> str:
    """Why a run has no GPU readings, in words that follow "No GPU telemetry: "."""
    on_cpu = str(device or "").split(":")[0] == "cpu"
    if warning:
        text = warning.removeprefix(_OFF_PREFIX)
        if on_cpu and text == _OLD_NOT_REQUESTED:  # the trainer gave a CPU run's sampler no backend; nobody asked
            return "the run trained on cpu, so no GPU was sampled"
        if on_cpu and text.startswith(_NOT_GIVEN):
            return "the run trained on cpu, so no GPU was sampled" + text[len(_NOT_GIVEN):]
        return text
    if (telemetry_config or {}).get("enabled") is False:
        return "telemetry was switched off (telemetry.enabled: false)"
    if nothing_sampled:
        return f"{TELEMETRY_FILE} is absent (telemetry was off, or the run predates the sampler)"
    return f"the run used {device or 'no GPU'}; {TELEMETRY_FILE} has no GPU readings"


def _finite(table: pd.DataFrame, column: str) -> pd.Series:
    """A column's finite values (index kept), empty when the column is absent."""
    if column not in table.columns:
        return pd.Series(dtype=float)
    values = pd.to_numeric(table[column], errors="coerce")
    return values[np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))]


def _max_or_none(table: pd.DataFrame, column: str, reduce: str = "max") -> Optional[float]:
    """max (or mean) of a column's finite values, None when it has none."""
    values = _finite(table, column)
    return float(getattr(values, reduce)()) if len(values) else None


def _float_or_none(value: Any) -> Optional[float]:
    """float(value) for finite numbers, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
