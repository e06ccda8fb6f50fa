"""Writing whole files atomically: a reader sees the old file or the whole new one, never half of one.

Checkpoints, figures, reports, exports and sweep state all go through `atomic_open`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_bytes"]


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
