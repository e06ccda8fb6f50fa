"""The ThesisLibError family: every error the library raises on bad input names what and where."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional

__all__ = [
    "ThesisLibError",
    "ConfigError",
    "DataError",
    "ModelError",
    "FactsError",
    "SchemaVersionError",
    "NoValidRunsError",
    "NonFiniteLossError",
    "CheckpointError",
    "ReportError",
    "RunLockedError",
    "UnsafePathError",
    "did_you_mean",
    "describe_error",
]


class ThesisLibError(Exception):
    """Base class: catch this to handle any error thesis-lib raises on purpose."""


class ConfigError(ThesisLibError, ValueError):
    """A config key, value or type is wrong; the message names the key and the allowed values."""


class DataError(ThesisLibError, ValueError):
    """An event file, dataset or array does not match the expected layout."""


class ModelError(ThesisLibError, ValueError):
    """A model cannot be built from its config (e.g. a freeze name that matches no submodule)."""


class FactsError(ThesisLibError):
    """A run directory's facts cannot be written or read."""


class SchemaVersionError(FactsError):
    """The facts were written by a newer schema than this version of thesis-lib reads."""


class NoValidRunsError(FactsError):
    """No candidate run directory could be loaded; the message lists every candidate and why."""


class NonFiniteLossError(ThesisLibError, FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(ThesisLibError):
    """A checkpoint is missing, unreadable or does not match the run it should resume."""


class ReportError(ThesisLibError):
    """A report could not be rendered; the message names the run (or template) and the failing step."""


class RunLockedError(FactsError):
    """Another live process holds the run directory's lock; the message names it (pid, host, start, job)."""


class UnsafePathError(FactsError):
    """A path inside a run directory is a link (or leads) out of it; the message names the path."""


def did_you_mean(name: object, allowed: Iterable[object]) -> Optional[str]:
    """The allowed name closest to `name` (difflib's ratio of at least 0.5), or None: the hint of an error message."""
    matches = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.5)
    return matches[0] if matches else None


def describe_error(exc: BaseException) -> str:
    """An error as a message line: "[Errno 28] No space left on device" for an OS error (the path is the
    caller's to name), "TypeName: message" for anything else."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
