"""What a run costs, epoch by epoch: energy, power, GPU use, VRAM peaks and time waiting for data.

`RunResources` owns the run's TelemetrySampler (its own thread; nothing here runs in the step)
and turns its readings into the per-epoch resource columns of scalars.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..config import TelemetryConfig

__all__ = ["RunResources", "telemetry_backend"]


def telemetry_backend(device: torch.device) -> Any:
    """NVML ("auto") for a CUDA run, none for a CPU run; tests swap in the scripted NVML stand-in here."""
    return "auto" if device.type == "cuda" else None


class RunResources:
    """The sampler (or None when telemetry is off) and the energy total across epochs."""

    def __init__(self, cfg: TelemetryConfig, device: torch.device, csv_path: Path, start_time: float,
                 energy_before_j: float = 0.0, local_devices: int = 1):
        self.device = device
        self.local_devices = local_devices  # a DDP node's GPUs 0..N-1, sampled by rank 0
        self.energy_total_j = energy_before_j  # a resumed run carries on from its checkpoint's total
        self.sampler = self._start_sampler(cfg, csv_path, start_time) if cfg.enabled else None

    def _start_sampler(self, cfg: TelemetryConfig, csv_path: Path, start_time: float):
        from ..telemetry import TelemetrySampler
        from ..telemetry.backends import nvml_indices_for_torch_devices

        devices = None  # every device of the backend: the scripted stand-in's, or none on CPU
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            indices = list(range(self.local_devices)) if self.local_devices > 1 else [index]
            devices = nvml_indices_for_torch_devices(indices)
        return TelemetrySampler(
            csv_path,
            interval_s=cfg.interval_s,
            energy_interval_s=cfg.energy_interval_s,
            devices=devices,
            backend=telemetry_backend(self.device),
            start_time=start_time,
        ).start()

    def begin_epoch(self) -> None:
        """Reset torch's peak-memory counter so each epoch reports its own peak."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def latest_gpu(self) -> Optional[dict]:
        """The sampler's newest GPU reading (for the dashboard), or None."""
        return self.sampler.latest() if self.sampler is not None else None

    def end_epoch(self, data_wait_frac: Optional[float]) -> dict:
        """The epoch's resource columns (None where there is no GPU); adds its energy to the total."""
        marked = self.sampler.mark() if self.sampler is not None else {}
        if marked.get("energy_j") is not None:
            self.energy_total_j += marked["energy_j"]
        vram = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return {
            "data_wait_frac": data_wait_frac,
            "energy_j": marked.get("energy_j"),
            "power_avg_w": marked.get("power_avg_w"),
            "gpu_util_avg": marked.get("gpu_util_avg"),
            "vram_peak_mb": vram,
            "nvml_mem_peak_mb": marked.get("nvml_mem_peak_mb"),
        }

    def stop(self) -> Optional[dict]:
        """Stop the sampler; its summary (method, device, totals, warning) or None when telemetry was off."""
        return self.sampler.stop() if self.sampler is not None else None
