"""Checkpoints written atomically, and the RNG state a resumed run needs to continue exactly."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, describe_error
from ..atomic_files import atomic_open
from ..layout import LAST_CHECKPOINT

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng_state", "restore_rng_state", "resolve_last_checkpoint"]


def save_checkpoint(path: Path, payload: dict) -> Path:
    """torch.save `payload` atomically: a run killed mid-write leaves the previous checkpoint whole.

    The checkpoint is serialised in memory first and written with plain file writes, so that a
    full disk surfaces as the operating system's own error ("[Errno 28] No space left on
    device") and not as torch's "enforce fail at inline_container.cc ... unexpected pos".

    Raises:
        CheckpointError: the file could not be written; the message names the path and the OS
            error, which is also the exception's __cause__.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        with atomic_open(path) as handle:
            handle.write(buffer.getbuffer())
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {describe_error(exc)}") from exc
    return Path(path)


def load_checkpoint(path: Path, *, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain data only: weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} could not be read: {type(exc).__name__}: {exc}") from exc


def resolve_last_checkpoint(resume_from: str | Path) -> Path:
    """Accept a run directory or a path to its last.pt."""
    path = Path(resume_from)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"trainer.resume_from={str(resume_from)!r}: no {LAST_CHECKPOINT} there "
            f"(give a run directory that finished at least one epoch, or its {LAST_CHECKPOINT})"
        )
    return path


def capture_rng_state() -> dict:
    """Every generator the loop draws from, in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
