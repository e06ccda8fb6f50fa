"""Tee everything a run prints (stdout and stderr) into logs/stdout.log."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

__all__ = ["capture_output", "silence_output", "CapturedOutput"]


class _Tee:
    """A text stream that writes to the original stream and to the run's log file."""

    def __init__(self, original: TextIO, log: TextIO, capture: "CapturedOutput"):
        self._original = original
        self._log = log
        self._capture = capture

    def write(self, text: str) -> int:
        if self._capture.echo:
            self._original.write(text)
        try:
            self._log.write(text)
        except ValueError:  # the log was closed under us (e.g. a thread printing after the run)
            pass
        return len(text)

    def flush(self) -> None:
        self._original.flush()
        with contextlib.suppress(ValueError):
            self._log.flush()

    def isatty(self) -> bool:
        return getattr(self._original, "isatty", lambda: False)()

    def __getattr__(self, name: str):
        # fileno, encoding, ... come from the original so libraries that probe the stream still work.
        return getattr(self._original, name)


class CapturedOutput:
    """The capture's handle: where the log is, and whether printed text also reaches the console.

    A dashboard that owns the console (full-screen terminal, notebook widget) turns `echo` off:
    the lines still go to the log, but no longer scribble over the dashboard.
    """

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.echo = True


@contextlib.contextmanager
def capture_output(log_path: Path) -> Iterator[CapturedOutput]:
    """Within the block, sys.stdout and sys.stderr also go to `log_path` (appended, line-buffered)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    capture = CapturedOutput(log_path)
    # Line buffering: a killed run keeps every complete line it printed.
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, log, capture), _Tee(old_err, log, capture)
        try:
            yield capture
        finally:
            sys.stdout, sys.stderr = old_out, old_err


@contextlib.contextmanager
def silence_output() -> Iterator[CapturedOutput]:
    """Within the block, printed text goes nowhere: a DDP rank other than 0, whose run rank 0 reports."""
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield CapturedOutput(Path(os.devnull))
