"""Creating a run directory with a unique id, and writing whole files atomically.

Run ids are `run_<YYYYmmdd-HHMMSS>_<name>_<4 hex>` (local time). Uniqueness comes from
`os.mkdir`, which fails when the directory exists, on every POSIX filesystem including NFS:
a collision (50 runs of one sweep started in the same second) retries with a new suffix.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import FactsError

__all__ = ["create_run_dir", "sanitize_run_name", "atomic_open", "atomic_write_text", "atomic_write_bytes"]

_MAX_NAME_CHARS = 64
_MAX_ATTEMPTS = 64


def sanitize_run_name(run_name: str) -> str:
    """Keep [A-Za-z0-9_.-]; other runs of characters become '-'; empty or dot-only names become 'run'."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(run_name)).strip("-.")
    return cleaned[:_MAX_NAME_CHARS] or "run"


def create_run_dir(output_root: str | Path, run_name: str) -> tuple[Path, str]:
    """Create `<output_root>/runs/<run_id>/` with its `facts/` and `logs/` folders.

    Args:
        output_root: the outputs folder (created if missing).
        run_name: a human name for the run; characters outside [A-Za-z0-9_.-] are replaced.

    Returns:
        (run_dir, run_id).

    Raises:
        FactsError: the runs folder cannot be created, or no free id was found after many tries.
    """
    runs_root = Path(output_root) / "runs"
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FactsError(f"cannot create the runs folder {runs_root}: {exc}") from exc
    name = sanitize_run_name(run_name)
    for _ in range(_MAX_ATTEMPTS):
        run_id = f"run_{time.strftime('%Y%m%d-%H%M%S')}_{name}_{secrets.token_hex(2)}"
        run_dir = runs_root / run_id
        try:
            os.mkdir(run_dir)
        except FileExistsError:
            continue
        except OSError as exc:
            raise FactsError(f"cannot create the run directory {run_dir}: {exc}") from exc
        (run_dir / "facts").mkdir()
        (run_dir / "logs").mkdir()
        return run_dir, run_id
    raise FactsError(
        f"no free run id under {runs_root} for name {name!r} after {_MAX_ATTEMPTS} tries; "
        "is something creating directories there in a loop?"
    )


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for binary writing; on success it replaces `path`.

    Readers see either the old file or the whole new one, never a half-written file: the data
    is fsync'ed before the rename, and os.replace is atomic within a filesystem. If the block
    raises, the temporary file is removed and `path` is untouched. Usable with `torch.save(obj, f)`.

    Args:
        path: the final file path; its folder must exist.

    Yields:
        A binary file object.
    """
    path = Path(path)
    # Opened with "xb" (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp_path, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_open`); returns the path."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_open`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort, since some filesystems refuse to fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
