"""CPU and memory of the training process itself.

Only this process is measured: DataLoader worker processes are not included (their CPU time
would make an input-bound run look busy rather than waiting).

Cost matters here because the sampler runs beside training every 0.1-0.5 s. Opening a /proc file
after the thread slept cost ~150 µs of CPU on the 2-core sandbox, which is what psutil does on
each call. So CPU time comes from `os.times()` (one system call, ~15 µs; the same percentage
psutil's cpu_percent computes) and, on Linux, RSS from /proc/self/statm kept open and re-read with
pread (~20 µs); psutil reads RSS where that file does not exist.
"""

from __future__ import annotations

import os
import time

import psutil

__all__ = ["ProcessStats"]

_MB = 2**20
# CPU times tick every 10 ms: over a shorter span the percentage is noise (0 or thousands).
_MIN_CPU_SPAN_S = 0.05


class ProcessStats:
    """CPU% and resident memory of this process, sampled on demand.

    CPU% is the process's CPU time (user + system, all threads) over wall time since the
    previous CPU reading, as psutil's Process.cpu_percent defines it: 100 is one core busy, so it
    can exceed 100 on several cores. RSS is in MB (2**20 bytes).
    """

    def __init__(self) -> None:
        self._process: psutil.Process | None = None
        self._statm_fd: int | None = None
        self._page_mb = 0.0
        self._cpu_since = 0.0
        self._cpu_seconds = 0.0

    def start(self) -> None:
        """Open the memory source and start the CPU clock, in the process to be measured."""
        try:
            self._statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
            self._page_mb = os.sysconf("SC_PAGE_SIZE") / _MB
        except (OSError, AttributeError, ValueError):
            self._statm_fd = None
        try:
            self._process = psutil.Process(os.getpid())
        except psutil.Error:
            self._process = None
        self._cpu_since, self._cpu_seconds = time.monotonic(), _cpu_seconds()

    def read(self) -> tuple[float | None, float | None]:
        """(cpu_pct since the previous CPU reading, rss_mb); None for what cannot be read.

        cpu_pct is None when less than 50 ms passed since the previous CPU reading (too short to
        measure); that span then counts towards the next reading.
        """
        cpu_pct = None
        now = time.monotonic()
        if now - self._cpu_since >= _MIN_CPU_SPAN_S:
            cpu_seconds = _cpu_seconds()
            cpu_pct = 100.0 * (cpu_seconds - self._cpu_seconds) / (now - self._cpu_since)
            self._cpu_since, self._cpu_seconds = now, cpu_seconds
        return cpu_pct, self._rss_mb()

    def close(self) -> None:
        """Close /proc/self/statm."""
        if self._statm_fd is not None:
            os.close(self._statm_fd)
            self._statm_fd = None

    def _rss_mb(self) -> float | None:
        """Resident set size in MB: statm's second field (pages), else psutil."""
        if self._statm_fd is not None:
            try:
                return int(os.pread(self._statm_fd, 256, 0).split()[1]) * self._page_mb
            except (OSError, IndexError, ValueError):
                self.close()
        if self._process is not None:
            try:
                return self._process.memory_info().rss / _MB
            except psutil.Error:
                return None
        return None


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    times = os.times()
    return times.user + times.system
