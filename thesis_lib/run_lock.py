"""The run directory's writer lock: one process at a time writes into a run directory.

Every process that writes into a run directory holds the run's lock while it writes: training
and resuming (`fit`), rendering the run report, a sweep report's backlink, an export::

    with hold_run_lock(run_dir, "rendering the run report") as lock:
        ...  # lock.notes: the stale holder this process took over, if any (also warned)

A second live writer is refused with `RunLockedError`, whose message names the holder: pid, host,
when its process started and when it took the lock, its batch job (SLURM, HTCondor), what it is
doing and when it last beat. The lock is re-entrant within one process: `fit` holds it and its
`finish` renders the report, which takes it again (and the record then says what it is doing now).
Sweeps use the same lock, on other files (`hold_lock`), for their points and their directory.

Two files per lock, named in layout.py (for a run: writer.lock and writer.json):

- the guard, an empty file that `filelock.FileLock` locks (flock on Linux) only for the moment a
  process reads and replaces the holder record. It stays in place on release: unlinking a lock
  file that others may be waiting on would let two of them lock two different files.
- the holder record, JSON, present while a process holds the lock and removed when it lets go:
  `format, pid, host, process_start(_unix), started(_unix), heartbeat(_unix), heartbeat_every_s,
  stale_after_s, purpose, doing, job {slurm_job_id, slurm_array_job_id, slurm_array_task_id,
  slurm_restart_count, condor_cluster_id, condor_proc_id, condor_num_job_starts}, command, token`.

Why the record and a heartbeat, not the flock alone: on one machine a flock would be enough (the
kernel drops it when its process dies), but across NFS clients it is unreliable (mounts with
`nolock` or `local_lock=all` keep it local to each client; a lock can outlive a crashed client),
and a process on another node cannot be asked whether it lives. So the record says who holds the
lock, and the flock only makes its check-and-replace atomic where flock works. Where it does not,
two processes on two hosts reaching a free lock within the same few milliseconds could both take
it; everything else (a live holder anywhere, a dead one, a requeue) is decided by the record.

A record whose holder is gone is taken over, with a note (`warnings.warn` with
`RunLockTakeoverWarning`, and `lock.notes` for the caller to record), when:

1. the holder ran on this host and its process is gone (no process with its pid and its start
   time: a reused pid does not count as the holder);
2. the holder ran on another host as the same batch job, restarted: the same SLURM_JOB_ID (and
   array job and task) with a higher SLURM_RESTART_COUNT here (a requeue), or the same HTCondor
   ClusterId.ProcId with a higher NumJobStarts;
3. the holder ran on another host and its last heartbeat is older than `STALE_AFTER_S` (600 s,
   ten minutes). The holder rewrites its heartbeat every `HEARTBEAT_EVERY_S` (30 s) from a daemon
   thread, so that is twenty missed beats; host clocks must agree to well within that.

A holder on this host whose process lives is never taken over, however old its heartbeat: a
process stopped with Ctrl-Z, or stuck on a dead mount, writes again when it wakes; stop it
first. Two processes of one SLURM job incarnation on two nodes are not a requeue (rule 2 needs a
restart), so a multi-node job cannot take its own live lock. A holder whose lock was taken over
notices at its next heartbeat and warns; a re-entry into a lost lock raises RunLockedError.

The module is a leaf: errors, layout and atomic_files of thesis_lib, filelock and psutil.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import filelock

from .atomic_files import atomic_write_text
from .errors import FactsError, RunLockedError
from .layout import WRITER_LOCK, WRITER_RECORD

__all__ = [
    "hold_run_lock",
    "hold_lock",
    "read_run_lock",
    "read_lock",
    "run_lock_refusal",
    "RunLock",
    "LockHolder",
    "RunLockTakeoverWarning",
    "batch_job",
    "describe_job",
    "STALE_AFTER_S",
    "HEARTBEAT_EVERY_S",
]

STALE_AFTER_S = 600.0  # a holder on another host that has not beaten for this long is taken as gone
HEARTBEAT_EVERY_S = 30.0  # how often the holder rewrites its heartbeat
GUARD_TIMEOUT_S = 30.0  # the guard is held for milliseconds; this long means something is stuck
POLL_S = 1.0  # how often a waiting process tries again
_FORMAT = "thesis-lib writer lock 1"
_START_SLACK_S = 1.0  # process start times read twice can differ by rounding

PathLike = Union[str, "os.PathLike[str]"]


class RunLockTakeoverWarning(UserWarning):
    """A stale lock (its holder gone) was taken over; the message says whose and why."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its record says."""

    pid: int
    host: str
    process_start: Optional[float]  # the holder process's start (unix time); tells a reused pid apart
    started: float  # when it took the lock (unix time)
    heartbeat: float  # its last heartbeat (unix time)
    purpose: str  # what it took the lock for
    doing: str  # what it is doing now (the innermost re-entry; else the purpose)
    job: dict  # batch job identifiers (empty outside a batch system)
    token: str  # unique per acquisition
    heartbeat_every_s: Optional[float] = HEARTBEAT_EVERY_S
    command: str = ""

    def to_record(self, stale_after_s: float) -> dict:
        return {
            "format": _FORMAT,
            "pid": self.pid,
            "host": self.host,
            "process_start": _iso(self.process_start),
            "process_start_unix": self.process_start,
            "started": _iso(self.started),
            "started_unix": self.started,
            "heartbeat": _iso(self.heartbeat),
            "heartbeat_unix": self.heartbeat,
            "heartbeat_every_s": self.heartbeat_every_s,
            "stale_after_s": stale_after_s,
            "purpose": self.purpose,
            "doing": self.doing,
            "job": self.job,
            "command": self.command,
            "token": self.token,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "LockHolder":
        """Raises KeyError, TypeError or ValueError on a record that is not one."""
        start = record.get("process_start_unix")
        every = record.get("heartbeat_every_s")
        return cls(pid=int(record["pid"]), host=str(record["host"]),
                   process_start=float(start) if start is not None else None,
                   started=float(record["started_unix"]), heartbeat=float(record["heartbeat_unix"]),
                   purpose=str(record.get("purpose") or ""), doing=str(record.get("doing") or record.get("purpose") or ""),
                   job=dict(record.get("job") or {}), token=str(record["token"]),
                   heartbeat_every_s=float(every) if every is not None else None,
                   command=str(record.get("command") or ""))

    def describe(self, now: Optional[float] = None) -> str:
        """One line: pid, host, process start, job, what it does, since when, last heartbeat."""
        now = time.time() if now is None else now
        started = f", process started {_iso(self.process_start)}" if self.process_start else ""
        job = f", {describe_job(self.job)}" if self.job else ""
        doing = self.purpose if self.doing in ("", self.purpose) else f"{self.purpose}, now {self.doing}"
        return (f"pid {self.pid} on host {self.host!r}{started}{job}: {doing or 'writing'} "
                f"(holding the lock since {_iso(self.started)}, last heartbeat {max(now - self.heartbeat, 0):.0f} s ago)")


@dataclasses.dataclass
class RunLock:
    """A held lock, as `hold_run_lock` / `hold_lock` yield it."""

    path: Path  # the guard file
    record_path: Path  # the holder record
    holder: LockHolder  # this process's record (the outermost hold's)
    notes: list = dataclasses.field(default_factory=list)  # takeover notes; empty unless a stale lock was taken over
    reentered: bool = False  # this process held it already: nothing was acquired, nothing is released


def hold_run_lock(run_dir: PathLike, purpose: str, *, wait_s: Optional[float] = 0.0,
                  stale_after_s: float = STALE_AFTER_S,
                  heartbeat_every_s: Optional[float] = HEARTBEAT_EVERY_S) -> contextlib.AbstractContextManager:
    """Hold the writer lock of a run directory while the block writes into it (see the module docstring).

    Args:
        run_dir: the run directory (it must exist).
        purpose: what this process is doing, for the holder record and others' errors, e.g.
            "training (fit)", "rendering the run report", "exporting the model".
        wait_s: how long to wait for a live holder to let go: 0 refuses at once, None waits forever.
        stale_after_s: a holder on another host without a heartbeat for this long is taken over.
        heartbeat_every_s: how often this process's heartbeat is rewritten; None: never.

    Yields:
        RunLock: `.notes` lists what was taken over (each also warned as RunLockTakeoverWarning).

    Raises:
        RunLockedError: another live process holds it; the message names it (pid, host, start, job,
            what it is doing). Also on re-entry into a lock this process has lost to a takeover.
        FactsError: the lock's files cannot be created (a missing or read-only directory).
    """
    run_dir = Path(run_dir)
    return hold_lock(run_dir / WRITER_LOCK, purpose, record_file=run_dir / WRITER_RECORD,
                     subject=f"run directory {run_dir}", wait_s=wait_s, stale_after_s=stale_after_s,
                     heartbeat_every_s=heartbeat_every_s)


@contextlib.contextmanager
def hold_lock(lock_file: PathLike, purpose: str, *, record_file: Optional[PathLike] = None,
              subject: Optional[str] = None, wait_s: Optional[float] = 0.0, stale_after_s: float = STALE_AFTER_S,
              heartbeat_every_s: Optional[float] = HEARTBEAT_EVERY_S) -> Iterator[RunLock]:
    """`hold_run_lock` on any guard file: the record defaults to the guard's name with `.json`.

    `subject` names what is locked in messages (default: the lock file). Arguments, yield and
    errors as for `hold_run_lock`.
    """
    lock_file = Path(lock_file)
    record_path = Path(record_file) if record_file is not None else lock_file.with_suffix(".json")
    subject = subject or f"lock {lock_file}"
    deadline = None if wait_s is None else time.monotonic() + max(float(wait_s), 0.0)
    while True:
        try:
            hold, notes, reentered = _enter(lock_file, record_path, purpose, subject, stale_after_s, heartbeat_every_s)
            break
        except RunLockedError as exc:
            if getattr(exc, "lost", False) or (deadline is not None and time.monotonic() >= deadline):
                raise
        time.sleep(POLL_S if deadline is None else max(min(POLL_S, deadline - time.monotonic()), 0.0))
    for note in notes:
        warnings.warn(note, RunLockTakeoverWarning, stacklevel=3)
    try:
        yield RunLock(lock_file, record_path, hold.holder, list(notes), reentered)
    finally:
        _exit(hold, reentered)


def read_lock(lock_file: PathLike, record_file: Optional[PathLike] = None) -> Optional[LockHolder]:
    """The holder a lock's record names (live or stale), or None when no record is there or it is unreadable."""
    lock_file = Path(lock_file)
    holder, _ = _read_record(Path(record_file) if record_file is not None else lock_file.with_suffix(".json"))
    return holder


def read_run_lock(run_dir: PathLike) -> Optional[LockHolder]:
    """Who is writing a run directory, as its writer record says (None: nobody, or a record that is unreadable)."""
    return read_lock(Path(run_dir) / WRITER_LOCK, Path(run_dir) / WRITER_RECORD)


def run_lock_refusal(run_dir: PathLike, *, stale_after_s: float = STALE_AFTER_S) -> Optional[RunLockedError]:
    """The RunLockedError `hold_run_lock(run_dir, ...)` would raise now, or None when it would be taken.

    A look, not a take: the record is read without the guard. None when there is no record, when
    its holder is gone by the takeover rules (a dead process on this host, a requeue of its batch
    job, no heartbeat for `stale_after_s`), or when this process holds it. For a caller deciding
    whether a run is being written (`trainer.resume_from=auto`); the hold itself decides again.
    """
    run_dir = Path(run_dir)
    record_path = run_dir / WRITER_RECORD
    current, unreadable = _read_record(record_path)
    if current is None and not unreadable:
        return None
    with _LOCAL:
        if os.path.abspath(run_dir / WRITER_LOCK) in _held():
            return None
    if _stale_reason(current, stale_after_s) is not None:
        return None
    return _refusal(f"run directory {run_dir}", current, record_path, stale_after_s)


def describe_job(job: Mapping[str, Any]) -> str:
    """'SLURM job 123 (array 120_3, restart 1)', 'HTCondor job 45.0', or ''."""
    parts = []
    if job.get("slurm_job_id"):
        extra = []
        if job.get("slurm_array_job_id"):
            extra.append(f"array {job['slurm_array_job_id']}_{job.get('slurm_array_task_id', '?')}")
        if job.get("slurm_restart_count"):
            extra.append(f"restart {job['slurm_restart_count']}")
        parts.append(f"SLURM job {job['slurm_job_id']}" + (f" ({', '.join(extra)})" if extra else ""))
    if job.get("condor_cluster_id") is not None:
        parts.append(f"HTCondor job {job['condor_cluster_id']}.{job.get('condor_proc_id', 0)}")
    return "; ".join(parts)


def batch_job(environ: Optional[Mapping[str, str]] = None) -> dict:
    """This process's batch job: SLURM variables, and HTCondor's job ad (`_CONDOR_JOB_AD`) when set."""
    env = os.environ if environ is None else environ
    job: dict = {}
    for key, name in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_array_job_id", "SLURM_ARRAY_JOB_ID"),
                      ("slurm_array_task_id", "SLURM_ARRAY_TASK_ID"), ("slurm_restart_count", "SLURM_RESTART_COUNT")):
        if env.get(name):
            job[key] = env[name]
    ad_path = env.get("_CONDOR_JOB_AD")
    if ad_path:
        try:
            ad = Path(ad_path).read_text(errors="replace")
        except OSError:
            ad = ""
        for key, attribute in (("condor_cluster_id", "ClusterId"), ("condor_proc_id", "ProcId"),
                               ("condor_num_job_starts", "NumJobStarts")):
            match = re.search(rf"^\s*{attribute}\s*=\s*(\d+)\s*$", ad, re.MULTILINE | re.IGNORECASE)
            if match:
                job[key] = match.group(1)
    return job


# --- this process's holds ---------------------------------------------------------------------------

class _Hold:
    """One lock this process holds: its record, how deep it is re-entered, its heartbeat thread."""

    def __init__(self, lock_file: Path, record_path: Path, holder: LockHolder, subject: str, stale_after_s: float):
        self.lock_file, self.record_path, self.holder, self.subject = lock_file, record_path, holder, subject
        self.stale_after_s = stale_after_s
        self.doing = [holder.purpose]
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.lost: Optional[str] = None  # who took it over, once noticed

    def start_heartbeat(self) -> None:
        every = self.holder.heartbeat_every_s
        if every is None or every <= 0:
            return
        self.thread = threading.Thread(target=self._beat, args=(every,), name=f"run-lock heartbeat {self.lock_file}",
                                       daemon=True)
        self.thread.start()

    def _beat(self, every: float) -> None:
        while not self.stop.wait(every):
            try:
                self.rewrite()
            except RunLockedError as exc:  # taken over: say so once (it lands in the run's log), stop beating
                print(f"warning: {exc}", file=sys.stderr, flush=True)
                return
            except Exception:  # noqa: BLE001 - a heartbeat that fails once (a slow mount) tries again
                continue

    def rewrite(self) -> None:
        """Refresh heartbeat and `doing` in the record, if it is still ours; RunLockedError if it was taken over."""
        with _guard(self.lock_file, self.subject):
            current, unreadable = _read_record(self.record_path)
            if current is None or current.token != self.holder.token:
                who = current.describe() if current is not None else ("an unreadable record" if unreadable
                                                                       else "nobody (its record was removed)")
                self.lost = who
                raise RunLockedError(f"the lock on {self.subject} held by this process (pid {os.getpid()}, "
                                     f"{self.holder.purpose}) was taken over; it is now held by {who}")
            self.holder = dataclasses.replace(self.holder, heartbeat=time.time(), doing=self.doing[-1])
            _write_record(self.record_path, self.holder, self.stale_after_s)


_LOCAL = threading.RLock()  # this process's holds: acquiring, re-entering and releasing
_HELD: dict = {}  # str(lock file, absolute) -> _Hold
_HELD_PID = [os.getpid()]  # a forked child inherits _HELD but holds nothing


def _held() -> dict:
    if _HELD_PID[0] != os.getpid():
        _HELD.clear()
        _HELD_PID[0] = os.getpid()
    return _HELD


def _enter(lock_file: Path, record_path: Path, purpose: str, subject: str, stale_after_s: float,
           heartbeat_every_s: Optional[float]) -> tuple[_Hold, list, bool]:
    """One attempt: re-enter this process's hold, or take a free or stale lock; RunLockedError otherwise."""
    key = os.path.abspath(lock_file)
    with _LOCAL:
        hold = _held().get(key)
        if hold is not None:
            if hold.lost is not None:
                error = RunLockedError(f"{subject}: this process's lock was taken over by {hold.lost}; it must not write")
                error.lost = True  # type: ignore[attr-defined]
                raise error
            hold.doing.append(purpose)
            try:
                hold.rewrite()
            except RunLockedError as exc:
                hold.doing.pop()
                exc.lost = True  # type: ignore[attr-defined]
                raise
            except Exception:  # noqa: BLE001 - the record saying what it does now is a nicety
                pass
            return hold, [], True
        notes: list = []
        with _guard(lock_file, subject):
            current, unreadable = _read_record(record_path)
            if current is not None or unreadable:
                reason = _stale_reason(current, stale_after_s)
                if reason is None:
                    raise _refusal(subject, current, record_path, stale_after_s)
                notes.append(f"took over the lock on {subject}: {reason}")
            me = LockHolder(pid=os.getpid(), host=socket.gethostname(), process_start=_process_start(os.getpid()),
                            started=time.time(), heartbeat=time.time(), purpose=purpose, doing=purpose,
                            job=batch_job(), token=secrets.token_hex(8), heartbeat_every_s=heartbeat_every_s,
                            command=" ".join(sys.argv)[:300])
            _write_record(record_path, me, stale_after_s)
        hold = _Hold(lock_file, record_path, me, subject, stale_after_s)
        _held()[key] = hold
    hold.start_heartbeat()
    return hold, notes, False


def _exit(hold: _Hold, reentered: bool) -> None:
    if reentered:
        with _LOCAL:
            hold.doing.pop()
        with contextlib.suppress(Exception):
            if hold.lost is None:
                hold.rewrite()
        return
    hold.stop.set()
    if hold.thread is not None:
        hold.thread.join(GUARD_TIMEOUT_S + 1.0)
    with _LOCAL:
        _held().pop(os.path.abspath(hold.lock_file), None)
    try:
        with _guard(hold.lock_file, hold.subject):
            current, _ = _read_record(hold.record_path)
            if current is not None and current.token == hold.holder.token:
                hold.record_path.unlink()
    except (OSError, FactsError, RunLockedError) as exc:  # the directory went away, a stuck mount
        warnings.warn(f"could not release the lock on {hold.subject} ({hold.record_path}): {exc}", stacklevel=3)


@contextlib.contextmanager
def _guard(lock_file: Path, subject: str) -> Iterator[None]:
    """The guard's flock, held while a record is read and replaced."""
    if not lock_file.parent.is_dir():  # filelock would create the folder: a deleted run would come back
        raise FactsError(f"cannot lock {subject}: {lock_file.parent} does not exist")
    guard = filelock.FileLock(str(lock_file))
    try:
        guard.acquire(timeout=GUARD_TIMEOUT_S, poll_interval=0.05)
    except filelock.Timeout:
        holder, _ = _read_record(lock_file.with_suffix(".json"))
        who = f"; its record names {holder.describe()}" if holder is not None else ""
        raise RunLockedError(f"{subject}: the guard {lock_file} stayed locked for {GUARD_TIMEOUT_S:.0f} s "
                             f"(it is held for milliseconds; a process may be stuck on the filesystem){who}") from None
    except OSError as exc:
        raise FactsError(f"cannot lock {subject}: cannot create {lock_file}: {exc}") from exc
    try:
        yield
    finally:
        guard.release()


def _read_record(path: Path) -> tuple[Optional[LockHolder], bool]:
    """(holder, unreadable): (None, False) when there is no record."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, False
    except OSError:
        return None, True
    try:
        return LockHolder.from_record(json.loads(text)), False
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, True


def _write_record(path: Path, holder: LockHolder, stale_after_s: float) -> None:
    try:
        atomic_write_text(path, json.dumps(holder.to_record(stale_after_s), indent=2) + "\n")
    except OSError as exc:
        raise FactsError(f"cannot write the lock record {path}: {exc}") from exc


def _stale_reason(current: Optional[LockHolder], stale_after_s: float) -> Optional[str]:
    """Why the record's holder is gone (the lock may be taken over), or None when it may be alive."""
    if current is None:
        return "its holder record was unreadable"
    here, now = socket.gethostname(), time.time()
    if current.host == here:
        mine = _process_start(os.getpid())
        if current.pid == os.getpid() and _same_start(current.process_start, mine):
            return f"its record names this very process (pid {current.pid}), from a hold that was not released"
        if _process_alive(current.pid, current.process_start):
            return None
        job = f", {describe_job(current.job)}" if current.job else ""
        return f"its holder, pid {current.pid} on this host {here!r}{job} ({current.doing or current.purpose}), is gone"
    requeue = _requeue_of(current.job, batch_job())
    if requeue is not None:
        return f"its holder, pid {current.pid} on host {current.host!r}, ran as {requeue}"
    age = now - current.heartbeat
    if age > stale_after_s:
        return (f"its holder, pid {current.pid} on host {current.host!r} ({current.doing or current.purpose}), "
                f"last beat {age:.0f} s ago, more than {stale_after_s:.0f} s: taken as gone")
    return None


def _requeue_of(holder_job: Mapping[str, Any], my_job: Mapping[str, Any]) -> Optional[str]:
    """'SLURM job N (restart r), and this process is its restart r2' when this process restarts the holder's job."""
    def count(job, key):
        try:
            return int(job.get(key) or 0)
        except (TypeError, ValueError):
            return 0

    same_slurm = (holder_job.get("slurm_job_id") and holder_job.get("slurm_job_id") == my_job.get("slurm_job_id")
                  and all(holder_job.get(k) == my_job.get(k) for k in ("slurm_array_job_id", "slurm_array_task_id")))
    if same_slurm and count(my_job, "slurm_restart_count") > count(holder_job, "slurm_restart_count"):
        return (f"{describe_job(holder_job)} and this process is the same job requeued "
                f"(restart {count(my_job, 'slurm_restart_count')})")
    same_condor = (holder_job.get("condor_cluster_id") is not None
                   and all(holder_job.get(k) == my_job.get(k) for k in ("condor_cluster_id", "condor_proc_id")))
    if same_condor and count(my_job, "condor_num_job_starts") > count(holder_job, "condor_num_job_starts"):
        return f"{describe_job(holder_job)} and this process is the same job restarted"
    return None


def _refusal(subject: str, holder: LockHolder, record_path: Path, stale_after_s: float) -> RunLockedError:
    here = socket.gethostname()
    how = ("wait for it to finish, or stop it" if holder.host == here else
           f"wait for it to finish, or stop it: on another host it is taken as gone after {stale_after_s:.0f} s "
           "without a heartbeat, or at once by a requeue of its batch job")
    error = RunLockedError(f"{subject} is being written by another process: {holder.describe()}. "
                           f"Only one process writes a run at a time; {how} (holder record: {record_path})")
    error.holder = holder  # type: ignore[attr-defined]
    return error


def _process_start(pid: int) -> Optional[float]:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - no psutil, no such process, no permission
        return None


def _same_start(a: Optional[float], b: Optional[float]) -> bool:
    return a is None or b is None or abs(a - b) <= _START_SLACK_S


def _process_alive(pid: int, recorded_start: Optional[float]) -> bool:
    """A process with this pid runs on this host and (when both are known) started when the record says."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return _same_start(recorded_start, process.create_time())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _iso(unix: Optional[float]) -> Optional[str]:
    if unix is None:
        return None
    return _dt.datetime.fromtimestamp(unix, _dt.timezone.utc).isoformat(timespec="seconds")
