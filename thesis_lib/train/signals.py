"""Stop signals: SIGTERM, SIGINT and SIGUSR1 end a run gracefully instead of killing it.

SIGTERM is what SLURM, HTCondor, Kubernetes and `docker stop` send before they kill; SIGUSR1 is
what SLURM sends `--signal=USR1@<seconds>` before a job's time runs out; SIGINT is Ctrl-C (and a
notebook's Interrupt). The first one asks the run to stop after the step it is in (the next sync
point; under torchrun the next fixed one, where every rank learns it), after which the run writes
last.pt, model.pt and on_train_end STOPPED with the signal's name as its reason. A second signal
while the run still trains stops it at once (the weights on disk are whole: checkpoints are
only written between epochs); any signal once the run is writing its ending is noted and
otherwise ignored, so that model.pt is never lost to an impatient second Ctrl-C.

Python lets only the main thread install handlers. A run in the main thread (a script, the CLI,
a notebook cell, a sweep point in its own process) installs them itself for as long as it runs.
A run started in another thread (a Dask worker runs tasks in threads) registers itself, and
whoever owns that process's main thread calls `install_stop_handlers()` once: its handler sets
the same stop flag on every run the process holds (`stop_active_runs`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

__all__ = ["STOP_SIGNALS", "signal_name", "stop_active_runs", "install_stop_handlers", "stop_signals_reach",
           "RunStopSignals", "SignalStop"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

_active: dict[int, Callable[[int], None]] = {}
_active_lock = threading.Lock()
_installed_previous: dict[int, object] = {}


def signal_name(signum: int) -> str:
    """"SIGTERM" for 15; the number itself for a signal Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_active_runs(signum: int) -> int:
    """Hand `signum` to every run of this process that is still training; returns how many got it.

    Safe to call from a signal handler: it takes no lock a run could hold while it is interrupted
    (the registry's lock is only held to copy the registry, never around a run's own code).
    """
    with _active_lock:
        receivers = list(_active.values())
    for receiver in receivers:
        receiver(signum)
    return len(receivers)


def _handler(signum: int, frame: object) -> None:
    if stop_active_runs(signum) == 0:
        _fall_back(signum)


def _fall_back(signum: int) -> None:
    """No run to stop: do what the signal did before this module took it over."""
    previous = _installed_previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, None)
    elif previous == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def install_stop_handlers() -> bool:
    """Route SIGTERM, SIGINT and SIGUSR1 of this process to its active runs; False off the main thread.

    Idempotent. With no run active a signal does what it did before (SIGTERM still terminates,
    Ctrl-C still raises KeyboardInterrupt), so a process that calls this keeps its usual manners
    between runs.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is not _handler:
            _installed_previous[signum] = current
            signal.signal(signum, _handler)
    return True


def _uninstall_stop_handlers() -> None:
    for signum, previous in list(_installed_previous.items()):
        if signal.getsignal(signum) is _handler:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        del _installed_previous[signum]


@contextlib.contextmanager
def stop_signals_reach(receiver: Callable[[int], None]) -> Iterator[bool]:
    """While the block runs, stop signals reach `receiver(signum)`; yields whether this thread installed them.

    On the main thread the handlers are installed for the block and the previous ones restored
    after it (unless an outer block, or `install_stop_handlers()`, had them installed already).
    Off it, `receiver` is registered and the process's main-thread handler, if any, reaches it.
    """
    key = id(receiver)
    installed_here = False
    with _active_lock:
        _active[key] = receiver
    try:
        if threading.current_thread() is threading.main_thread() and not _installed_previous:
            installed_here = install_stop_handlers()
        yield installed_here or bool(_installed_previous)
    finally:
        with _active_lock:
            _active.pop(key, None)
        if installed_here:
            _uninstall_stop_handlers()


class SignalStop(Exception):
    """A second stop signal while the run trains: stop now, between two bytecodes of the step."""

    def __init__(self, signum: int):
        super().__init__(f"{signal_name(signum)} received twice: stopping at once")
        self.signum = signum


class RunStopSignals:
    """One run's view of stop signals: what arrived, and what to do with the next one.

    `phase`: "training" while steps run (a second signal raises `SignalStop` there), "writing"
    while an epoch's facts and checkpoints are written (a second signal waits: a raise could cut
    a line in half), "finishing" once the run writes its ending (signals are noted, nothing
    more). `on_stop()` asks the run to stop at its next sync point; `notes` are lines for the
    run to print at its next safe point.
    """

    def __init__(self, on_stop: Callable[[], None], *, allow_immediate: bool = True):
        self.on_stop = on_stop
        # Under DDP a rank that left its step alone would leave the others waiting in a collective.
        self.allow_immediate = allow_immediate
        self.phase = "training"
        self.signum: Optional[int] = None
        self.received: list[int] = []
        self.notes: list[str] = []
        self._owner = threading.current_thread()

    @property
    def stop_reason(self) -> Optional[str]:
        """"signal: SIGTERM" once a stop signal arrived, else None."""
        return None if self.signum is None else f"signal: {signal_name(self.signum)}"

    def __call__(self, signum: int) -> None:
        # Runs inside a signal handler: it only appends to `notes` (printed by the run at its next
        # safe point), since printing here could re-enter a stream the interrupted code is writing.
        self.received.append(signum)
        name = signal_name(signum)
        if self.phase == "finishing":
            self.notes.append(f"{name} received while writing the run's ending: ignored until model.pt and the "
                              "facts are written")
            return
        if self.signum is None:
            self.signum = signum
            self.on_stop()
            self.notes.append(f"{name} received: stopping after this step, then writing last.pt, model.pt and the "
                              "facts (send it again to stop at once)")
            return
        if self.phase == "training" and self.allow_immediate and threading.current_thread() is self._owner:
            raise SignalStop(signum)
        self.notes.append(f"{name} received again: the run stops at its next sync point")

    def take_notes(self) -> list[str]:
        """The notes since the last call."""
        taken, self.notes = self.notes, []
        return taken
