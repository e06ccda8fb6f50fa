"""Tee everything a run prints (stdout and stderr) into logs/stdout.log, never through a symbolic link."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, TextIO

from ..errors import describe_error
from ..atomic_files import append_open, check_inside
from ..layout import STDOUT_LOG

__all__ = ["capture_output", "silence_output", "CapturedOutput"]


class _Tee:
    """A text stream that writes to the original stream and to the run's log file.

    Neither side may kill the run: a console that goes away (`thesis-lib train | head`, a closed
    terminal, a notebook whose kernel lost its client) is dropped with one note in the log, and
    a log that cannot be written (a full disk) is dropped with one note on the console. Each
    loss is kept in `capture.incidents` for the run to record in its facts.
    """

    def __init__(self, original: TextIO, log: TextIO, capture: "CapturedOutput"):
        self._original = original
        self._log = log
        self._capture = capture

    def write(self, text: str) -> int:
        capture = self._capture
        if capture.echo and not capture.console_lost:
            try:
                self._original.write(text)
            except (OSError, ValueError) as exc:  # EPIPE, EIO, a closed stream
                capture.lose_console(exc)
        if not capture.log_lost:
            try:
                self._log.write(text)
            except ValueError:  # the log was closed under us (e.g. a thread printing after the run)
                pass
            except OSError as exc:  # ENOSPC, EIO, EDQUOT
                capture.lose_log(exc)
        return len(text)

    def flush(self) -> None:
        capture = self._capture
        if not capture.console_lost:
            try:
                self._original.flush()
            except (OSError, ValueError) as exc:
                capture.lose_console(exc)
        if not capture.log_lost:
            try:
                self._log.flush()
            except ValueError:
                pass
            except OSError as exc:
                capture.lose_log(exc)

    def isatty(self) -> bool:
        return getattr(self._original, "isatty", lambda: False)()

    def __getattr__(self, name: str):
        # fileno, encoding, ... come from the original so libraries that probe the stream still work.
        return getattr(self._original, name)


class CapturedOutput:
    """The capture's handle: where the log is, and whether printed text also reaches the console.

    A dashboard that owns the console (full-screen terminal, notebook widget) turns `echo` off:
    the lines still go to the log, but no longer scribble over the dashboard. `incidents` holds
    what was lost on the way (the console, the log), as on_incident payloads the run takes with
    `take_incidents()` and writes to its facts.
    """

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.echo = True
        self.console_lost = False
        self.log_lost = False
        self.incidents: list[dict] = []
        self._log: Optional[TextIO] = None
        self._console: Optional[TextIO] = None

    def lose_console(self, exc: BaseException) -> None:
        """The console went away: from now on printed text reaches the log alone."""
        if self.console_lost:
            return
        self.console_lost = True
        message = f"the console went away ({type(exc).__name__}: {exc}); output continues in {self.log_path} only"
        self.incidents.append({"part": "console", "message": message, "error_type": type(exc).__name__})
        if self._log is not None and not self.log_lost:
            with contextlib.suppress(OSError, ValueError):
                self._log.write(f"[thesis-lib] {message}\n")

    def lose_log(self, exc: BaseException) -> None:
        """The log cannot be written: printed text reaches the console alone."""
        if self.log_lost:
            return
        self.log_lost = True
        message = f"could not write {self.log_path}: {describe_error(exc)}; the rest of the output goes to the console only"
        self.incidents.append({"part": "stdout_log", "message": message, "path": str(self.log_path),
                               "error_type": type(exc).__name__})
        if self._console is not None and not self.console_lost:
            with contextlib.suppress(OSError, ValueError):
                self._console.write(f"[thesis-lib] warning: {message}\n")

    def take_incidents(self) -> list[dict]:
        """The incidents since the last call."""
        taken, self.incidents = self.incidents, []
        return taken



@contextlib.contextmanager
def capture_output(log_path: Path, *, inside: Optional[Path] = None) -> Iterator[CapturedOutput]:
    """Within the block, sys.stdout and sys.stderr also go to `log_path` (appended, line-buffered).

    Args:
        log_path: the log file, normally `<run_dir>/logs/stdout.log`.
        inside: the run directory the log must stay in; by default the run directory of a
            `<run_dir>/logs/stdout.log` path. Neither logs/ nor the log may be a symbolic link.

    Raises:
        UnsafePathError: logs/ or the log file is a symbolic link; nothing is captured or written.
    """
    log_path = Path(log_path)
    depth = len(Path(STDOUT_LOG).parts)
    if inside is None and log_path.parts[-depth:] == Path(STDOUT_LOG).parts:
        inside = log_path.parents[depth - 1]
    # Checked before logs/ is created: a dangling link there must be named, not a FileExistsError.
    if inside is not None:
        check_inside(inside, log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    capture = CapturedOutput(log_path)
    # Line buffering: a killed run keeps every complete line it printed.
    log = append_open(log_path, "a", inside=inside, buffering=1, encoding="utf-8")
    old_out, old_err = sys.stdout, sys.stderr
    capture._log, capture._console = log, old_err
    sys.stdout, sys.stderr = _Tee(old_out, log, capture), _Tee(old_err, log, capture)
    try:
        yield capture
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        with contextlib.suppress(OSError):  # a full disk refusing the last flush must not replace the run's outcome
            log.close()


@contextlib.contextmanager
def silence_output() -> Iterator[CapturedOutput]:
    """Within the block, printed text goes nowhere: a DDP rank other than 0, whose run rank 0 reports."""
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield CapturedOutput(Path(os.devnull))
