"""Writing whole files atomically: a reader sees the old file or the whole new one, never half of one.

Checkpoints, figures, reports, exports and sweep state all go through `atomic_open`.

A run stays inside its directory: `atomic_open` never writes through a symbolic link at the file
itself, and with `inside=<run_dir>` none of the folders between the run directory and the file
may be one either (`check_inside`). The run directory and the folders above it may be links
(outputs/ pointing at scratch storage is normal); a link *within* a run (model.pt ->
~/.bashrc, facts/ -> /elsewhere, report/ -> /etc) is an UnsafePathError naming it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterator

from .errors import UnsafePathError

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_bytes", "append_open", "check_inside", "refuse_link",
           "fsync_dir"]


def check_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Check that `path` lies inside `root` and that nothing from `root` down to `path` is a link.

    `root` itself (and every folder above it) may be a symbolic link; the folders below it and
    the file itself may not, since a write would then land outside `root`. Parts that do not
    exist yet are fine: they will be created as real folders and files. The check is lexical
    (".." never climbs out) and reads only link metadata (lstat), never a link's target.

    Args:
        root: the directory writes must stay in (a run directory).
        path: the file or folder about to be written, absolute or relative to the current directory.

    Returns:
        `path` as a Path.

    Raises:
        UnsafePathError: `path` is outside `root`, or a part of it below `root` is a symbolic
            link; the message names the link and where it points.
    """
    root_abs, path_abs = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    try:
        parts = path_abs.relative_to(root_abs).parts
    except ValueError:
        raise UnsafePathError(f"{path} is not inside {root}; a run writes only inside its own directory") from None
    current = root_abs
    for part in parts:
        current = current / part
        if current.is_symlink():
            refuse_link(current, root_abs)
        if not os.path.lexists(current):
            break  # the rest is created below a real folder
    return Path(path)


def refuse_link(link: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Raise the UnsafePathError for `link`, a symbolic link found where a run's file or folder belongs."""
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    if root is None:
        raise UnsafePathError(f"{link} is a symbolic link (to {target}); thesis-lib never writes through a link: "
                              "remove the link, or write elsewhere")
    raise UnsafePathError(
        f"{link} is a symbolic link (to {target}) inside {root}; thesis-lib never writes through a link below a "
        "run directory, so that nothing lands outside it: replace the link with a real folder or file "
        "(the run directory itself, and the folders above it, may be links)"
    )


@contextlib.contextmanager
def atomic_open(path: str | Path, *, inside: str | Path | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` for binary writing; on success it replaces `path`.

    Readers see either the old file or the whole new one, never a half-written file: the data
    is fsync'ed before the rename, and os.replace is atomic within a filesystem. If the block
    raises, the temporary file is removed and `path` is untouched. Usable with `torch.save(obj, f)`.

    Args:
        path: the final file path; its folder must exist.
        inside: the directory the write must stay in (the run directory): no folder between it
            and `path` may be a symbolic link (see `check_inside`). Without it only `path`
            itself is checked.

    Yields:
        A binary file object.

    Raises:
        UnsafePathError: `path` is a symbolic link, or (with `inside`) lies outside it or below a
            link in it; nothing is written.
    """
    path = Path(path)
    if inside is not None:
        check_inside(inside, path)
    elif path.is_symlink():
        refuse_link(path)
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
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, inside: str | Path | None = None) -> Path:
    """Write `data` to `path` atomically (see `atomic_open`, also for `inside`); returns the path."""
    with atomic_open(path, inside=inside) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8", *,
                      inside: str | Path | None = None) -> Path:
    """Write `text` to `path` atomically (see `atomic_open`, also for `inside`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding), inside=inside)


def append_open(path: str | Path, mode: str = "ab", *, inside: str | Path | None = None, **open_kwargs: Any) -> IO:
    """Open `path` for appending (created if missing), never through a symbolic link.

    The append-only facts and logs of a run (events.jsonl, scalars.csv, steps.csv, stdout.log)
    are opened here: the file is opened with O_NOFOLLOW, so a link planted at the file itself
    fails instead of being followed, and with `inside` the folders between it and the run
    directory are checked as in `check_inside`.

    Args:
        path: the file.
        mode: "ab" or "a" (text), as for `open`.
        inside: the directory the file must stay in (the run directory).
        **open_kwargs: passed on to `os.fdopen` (buffering, encoding, newline).

    Raises:
        UnsafePathError: the file or (with `inside`) a folder on the way is a symbolic link.
    """
    if mode not in ("a", "ab"):
        raise ValueError(f"append_open mode {mode!r}; expected 'a' or 'ab'")
    path = Path(path)
    if inside is not None:
        check_inside(inside, path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if path.is_symlink():  # O_NOFOLLOW refuses a link with ELOOP (EMLINK on some BSDs)
            refuse_link(path, inside)
        raise
    try:
        return os.fdopen(fd, mode, **open_kwargs)
    except BaseException:
        os.close(fd)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename into `directory` durable (for files renamed into place by a writer of their own, such as Chromium); best effort, since some filesystems refuse to fsync a directory."""
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
