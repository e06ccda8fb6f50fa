"""Tee everything a run prints (stdout and stderr) into logs/stdout.log."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, TextIO

__all__ = ["capture_output"]


class _Tee:
    """A text stream that writes to the original stream and to the run's log file."""

    def __init__(self, original: TextIO, log: TextIO):
        self._original = original
        self._log = log

    def write(self, text: str) -> int:
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


@contextlib.contextmanager
def capture_output(log_path: Path) -> Iterator[Path]:
    """Within the block, sys.stdout and sys.stderr also go to `log_path` (appended, line-buffered)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Line buffering: a killed run keeps every complete line it printed.
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, log), _Tee(old_err, log)
        try:
            yield log_path
        finally:
            sys.stdout, sys.stderr = old_out, old_err
