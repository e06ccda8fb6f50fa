"""Profiling: torch.profiler over a window of one epoch's training batches (`trainer.profile`).

`ProfileWindow` traces batches of one epoch and writes `<run_dir>/profile/`: `trace.json` (a
Chrome trace, `export_chrome_trace`), `top_ops.txt` (torch's `key_averages().table`), `top_ops.csv`
(every op: name, calls, self/total CPU time, device time on a GPU, memory) and `profile.json` (the
window, device, torch version, time traced, the files; or the error).

How the window meets the step: through the step's one hook. `ProfiledSyncPoints` stands in for
`SyncPoints` only when `trainer.profile.enabled` (on the main process under DDP), so a run without
profiling builds no profiler, imports nothing of this module and pays no branch in its step. The
hook is already asked `due(batch)` after every step; the profiled hook first hands that batch to
the window, which steps the profiler (`prof.step()`: host bookkeeping, nothing read from the
device). So one profiler step is one batch, whatever `trainer.sync_every_n_steps` is, and sync
points stay where they were: profiling neither forces a sync every step (which would change the
very step being measured: on a GPU the host could no longer run ahead) nor coarsens the window
to whole sync intervals (`active_steps` x `sync_every_n_steps` batches: a 250-batch trace at the
default 50). The alternatives were weighed and left.

The window, counted in the epoch's batches from 1: the profiler starts before batch 1 (the hook's
`start_epoch`) on `torch.profiler.schedule(wait, warmup, active, repeat=1)`; batches
`wait + 1 .. wait + warmup` warm it up, batches `wait + warmup + 1 .. wait + warmup + active` are
kept (the trace's `ProfilerStep#N` is batch N + 1). A profiler step runs from one `due` to the
next: a batch's fetch, forward, backward and optimizer step, and the sync-point read that follows
a batch when it is one. The profiler stops right after the window's last batch; the files are
written after the epoch's training pass (`end_epoch`), outside its timing and before validation.
The profiled epoch's throughput still carries the profiler's own cost: compare other epochs.

A profiler that fails (it cannot start, a step or the export raises, the epoch ends before any
batch was kept) is switched off: the run goes on, and the failure comes back once through
`take_failures()` as an on_incident of part "profile" (printed as a warning by the run).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import time
from pathlib import Path

import torch

from ..atomic_files import atomic_write_text, check_inside
from ..config import ProfileConfig
from ..errors import describe_error
from ..layout import (
    PROFILE_DIR,
    PROFILE_INFO,
    PROFILE_TOP_OPS_CSV,
    PROFILE_TOP_OPS_TEXT,
    PROFILE_TRACE,
)
from .sync_points import SyncPoints

__all__ = ["TOP_OPS_COLUMNS", "TOP_OPS_TEXT_ROWS", "ProfileWindow", "ProfiledSyncPoints"]

INCIDENT_PART = "profile"
TOP_OPS_TEXT_ROWS = 30  # rows of top_ops.txt; top_ops.csv holds every op
# top_ops.csv's header; times in microseconds, memory in bytes; the device columns are empty on a CPU run.
TOP_OPS_COLUMNS = ("name", "calls", "self_cpu_us", "cpu_total_us", "self_device_us", "device_total_us",
                   "self_cpu_memory_bytes", "cpu_memory_bytes", "self_device_memory_bytes")


class ProfileWindow:
    """torch.profiler over batches of one epoch (`settings`), written to `<run_dir>/profile/`.

    Args:
        settings: trainer.profile.
        run_dir: the run directory (the files go to its profile/).
        device: the training device; on CUDA the device's kernels are traced too.
        batches_per_epoch: the training batches of an epoch, when the loader knows (a window longer than
            the epoch then stops at its last batch); None: it stops when the epoch's pass ends.
        label: what the line printed when the files are written starts with (the run's "[run_id]").
    """

    def __init__(self, settings: ProfileConfig, run_dir: Path, device: torch.device, *,
                 batches_per_epoch: int | None = None, label: str = ""):
        self.settings, self.run_dir, self.device, self.label = settings, Path(run_dir), device, label
        # The last batch the profiler sees: the window's, or the epoch's when that comes first.
        self.last_batch = min(settings.window_batches, batches_per_epoch or settings.window_batches)
        self.state = "waiting"  # -> "tracing" -> "traced" -> "written"; or "failed", or "closed" (never reached)
        self.profiler = None
        self._failures: list[dict] = []
        self._batch = 0  # the last batch the profiler saw this epoch
        self._kept_from: float | None = None  # perf_counter when the kept batches began
        self._kept_s = 0.0
        self._global_step = 0

    @property
    def first_kept(self) -> int:
        """The window's first kept batch (from 1 in the epoch)."""
        return self.settings.wait_steps + self.settings.warmup_steps + 1

    def begin_epoch(self, epoch: int, global_step: int) -> None:
        """Before an epoch's first batch: start the profiler when this is the profiled epoch."""
        if self.state != "waiting" or epoch != self.settings.epoch:
            return
        s = self.settings
        self._global_step, self._batch = global_step, 0
        if self.last_batch < self.first_kept:
            self.state = "failed"
            self._failures.append(self._failure(self._nothing_kept(self.last_batch), None))
            return
        try:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(
                activities=activities,
                schedule=torch.profiler.schedule(wait=s.wait_steps, warmup=s.warmup_steps, active=s.active_steps,
                                                 repeat=1),
                record_shapes=s.record_shapes, profile_memory=s.profile_memory, with_stack=s.with_stack)
            self.profiler.start()
        except Exception as exc:  # noqa: BLE001 - a profiler that cannot start costs the profile, not the run
            self._fail("the profiler could not start", exc)
            return
        self.state = "tracing"
        if self.first_kept == 1:
            self._kept_from = time.perf_counter()

    def after_step(self, batch: int) -> None:
        """After each batch (`batch` from 1 in the epoch): one profiler step; the last kept batch stops it."""
        if self.state != "tracing":
            return
        self._batch = batch
        if batch == self.last_batch:
            self._kept_s = time.perf_counter() - self._kept_from
            self._stop()
            return
        try:
            self.profiler.step()
        except Exception as exc:  # noqa: BLE001 - see begin_epoch
            self._fail(f"a profiler step failed (batch {batch})", exc)
            return
        if batch == self.first_kept - 1:
            self._kept_from = time.perf_counter()

    def end_epoch(self) -> None:
        """After an epoch's training pass: stop a window the epoch ended inside of, then write the files."""
        if self.state == "tracing":  # the epoch (or the run) ended inside the window
            if self._kept_from is not None:
                self._kept_s = time.perf_counter() - self._kept_from
            kept = self._kept()
            self._stop()
            if self.state == "traced" and kept == 0:
                self.state = "failed"
                self._failures.append(self._failure(self._nothing_kept(self._batch), None))
        if self.state == "traced":
            self._write()

    def close(self) -> None:
        """On the run's way out (an exception or a stop included): what was traced is written; idempotent."""
        if self.state == "waiting":
            self.state = "closed"
            print(f"{self.label} profile: the run ended before epoch {self.settings.epoch}; nothing was profiled")
        self.end_epoch()

    def take_failures(self) -> list[dict]:
        """The on_incident payloads (part "profile") since the last call: at most one per run."""
        failures, self._failures = self._failures, []
        return failures

    def _nothing_kept(self, batches: int) -> str:
        return (f"epoch {self.settings.epoch} ended after {batches} batches, before the window's first kept batch "
                f"({self.first_kept}): nothing was traced; lower trainer.profile.wait_steps or warmup_steps")

    def _kept(self) -> int:
        """Batches kept in the trace so far."""
        return max(0, min(self._batch - self.first_kept + 1, self.settings.active_steps))

    def _stop(self) -> None:
        try:
            self.profiler.stop()  # in the kept stage this ends the trace (torch's "trace ready")
        except Exception as exc:  # noqa: BLE001 - see begin_epoch
            self._fail("the profiler could not stop", exc)
            return
        self.state = "traced"

    def _write(self) -> None:
        """trace.json, top_ops.txt, top_ops.csv, then profile.json (the summary, last)."""
        started = time.perf_counter()
        path = self.run_dir / PROFILE_TRACE
        try:
            check_inside(self.run_dir, path)
            path.parent.mkdir(exist_ok=True)
            _export_trace(self.profiler, path)
            path = self.run_dir / PROFILE_TOP_OPS_TEXT
            averages = self.profiler.key_averages()
            on_device = self.device.type == "cuda"
            sort_by = "self_device_time_total" if on_device else "self_cpu_time_total"
            atomic_write_text(path, averages.table(sort_by=sort_by, row_limit=TOP_OPS_TEXT_ROWS) + "\n",
                              inside=self.run_dir)
            path = self.run_dir / PROFILE_TOP_OPS_CSV
            rows = sorted(averages, key=lambda e: _number(e, sort_by) or 0.0, reverse=True)
            atomic_write_text(path, _ops_csv(rows, on_device), inside=self.run_dir)
            path = self.run_dir / PROFILE_INFO
            info = self._summary(averages, sort_by, time.perf_counter() - started)
            atomic_write_text(path, json.dumps(info, indent=2) + "\n", inside=self.run_dir)
        except Exception as exc:  # noqa: BLE001 - see begin_epoch
            self._fail("the profile could not be written", exc, path=path)
            return
        finally:
            self.profiler = None  # the trace can be large: let it go with the window
        self.state = "written"
        print(f"{self.label} profile: epoch {self.settings.epoch} batches {self.first_kept}-{self.first_kept + self._kept() - 1} "
              f"traced -> {self.run_dir / PROFILE_TRACE} (open it in https://ui.perfetto.dev or chrome://tracing)")

    def _summary(self, averages, sort_by: str, export_s: float) -> dict:
        """profile.json: the window, where it ran, what it measured, the files."""
        s, kept = self.settings, self._kept()
        last_kept = self.first_kept + kept - 1
        complete = kept == s.active_steps
        return {
            "epoch": s.epoch,
            "wait_steps": s.wait_steps,
            "warmup_steps": s.warmup_steps,
            "active_steps": s.active_steps,
            "first_batch": self.first_kept,  # batches from 1 in the epoch; trace marker ProfilerStep#N is batch N + 1
            "last_batch": last_kept,
            "batches_traced": kept,
            "complete": complete,
            "note": None if complete else (f"the epoch ended after batch {self._batch}: {kept} of "
                                           f"{s.active_steps} active steps traced"),
            "steps_before_epoch": self._global_step,  # optimizer steps of the run before the profiled epoch
            "record_shapes": s.record_shapes,
            "profile_memory": s.profile_memory,
            "with_stack": s.with_stack,
            "device": str(self.device),
            "activities": ["cpu", "cuda"] if self.device.type == "cuda" else ["cpu"],
            "torch": torch.__version__,
            # Host time over the kept batches (profiler overhead included; on a GPU the host may run ahead).
            "traced_s": self._kept_s,
            "step_ms": 1000.0 * self._kept_s / kept if kept else None,
            "self_cpu_total_us": sum(_number(e, "self_cpu_time_total") or 0.0 for e in averages),
            "self_device_total_us": (sum(_number(e, "self_device_time_total") or 0.0 for e in averages)
                                     if self.device.type == "cuda" else None),
            "sort_by": sort_by,
            "export_s": export_s,
            "files": {"trace": PROFILE_TRACE, "top_ops_text": PROFILE_TOP_OPS_TEXT, "top_ops_csv": PROFILE_TOP_OPS_CSV},
        }

    def _fail(self, what: str, exc: BaseException, *, path: Path | None = None) -> None:
        """Switch the profiler off for the rest of the run and keep one failure for on_incident."""
        if self.profiler is not None:
            with contextlib.suppress(Exception):
                self.profiler.stop()
        self.profiler = None
        self.state = "failed"
        self._failures.append(self._failure(f"{what}: {describe_error(exc)}; training went on without it", exc, path))
        with contextlib.suppress(Exception):  # profile.json says it too, when profile/ was made
            if (self.run_dir / PROFILE_DIR).is_dir():
                info = {"epoch": self.settings.epoch, "device": str(self.device), "torch": torch.__version__,
                        "error": self._failures[-1]["message"]}
                atomic_write_text(self.run_dir / PROFILE_INFO, json.dumps(info, indent=2) + "\n", inside=self.run_dir)

    def _failure(self, message: str, exc: BaseException | None, path: Path | None = None) -> dict:
        failure = {"part": INCIDENT_PART, "message": message}
        if exc is not None:
            failure["error_type"] = type(exc).__name__
        if path is not None:
            failure["path"] = str(path)
        return failure


class ProfiledSyncPoints(SyncPoints):
    """SyncPoints that also hand each batch to a `ProfileWindow`; used instead of SyncPoints only when
    trainer.profile.enabled, so a run without profiling pays nothing, not even a branch per step.

    The sync points themselves are the base class's, unchanged: profiling adds none.
    """

    window: ProfileWindow | None = None  # None while the base's __init__ runs its placeholder start_epoch

    def __init__(self, every: int, *, window: ProfileWindow, **kwargs):
        super().__init__(every, **kwargs)
        self.window = window

    def start_epoch(self, epoch: int, lr: float, global_step: int, refresh_s: float | None = None) -> None:
        super().start_epoch(epoch, lr, global_step, refresh_s)
        if self.window is not None:
            self.window.begin_epoch(epoch, global_step)

    def due(self, batch: int) -> bool:
        self.window.after_step(batch)  # a profiler step: host bookkeeping, no sync
        return super().due(batch)


def _export_trace(profiler, path: Path) -> None:
    """export_chrome_trace to a temporary file beside `path`, renamed over it when whole."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        profiler.export_chrome_trace(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _number(event, name: str) -> float | None:
    """A FunctionEventAvg field as float; None when this torch has no such field."""
    value = getattr(event, name, None)
    return float(value) if isinstance(value, (int, float)) else None


def _ops_csv(events, on_device: bool) -> str:
    """top_ops.csv: one row per op (key_averages), in the order given."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TOP_OPS_COLUMNS)
    for e in events:
        times = [_number(e, "self_cpu_time_total"), _number(e, "cpu_time_total")]
        times += [_number(e, "self_device_time_total"), _number(e, "device_time_total")] if on_device else [None, None]
        memory = [_number(e, "self_cpu_memory_usage"), _number(e, "cpu_memory_usage")]
        memory += [_number(e, "self_device_memory_usage") if on_device else None]
        writer.writerow([e.key, e.count, *(None if t is None else round(t, 3) for t in times),
                         *(None if m is None else int(m) for m in memory)])
    return out.getvalue()
