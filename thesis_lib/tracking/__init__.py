"""Experiment trackers: a run mirrored live to TensorBoard (MLflow and W&B would plug in the same way).

`Mirror` (base.py) is what a tracker implements; `TensorBoardMirror` (tensorboard.py) is the first.
A training run with `tracking.backends` set builds them with `open_live_mirror` and holds the
`GuardedMirror` (guard.py), its one call site: a tracker that fails is warned about once, recorded
as an on_incident (part "tracking") and switched off, and the run goes on. With no backend the run
holds None and imports nothing of this package. Each tracker's ids for a run are kept in
`<run_dir>/tracking.json` (ids.py), so `thesis-lib sync` (thesis_lib.tracking_sync, a layer above the
facts readers) updates what a live mirror or an earlier sync wrote instead of adding a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .base import Mirror, RunInfo, flat_config
from .guard import GuardedMirror, TelemetryTail, TrackingWarning
from .ids import read_tracking_ids, recorded_logdir, tensorboard_logdir, write_tracking_ids

__all__ = ["Mirror", "RunInfo", "GuardedMirror", "TrackingWarning", "TelemetryTail", "open_live_mirror", "check_available",
           "make_mirror", "flat_config", "read_tracking_ids", "write_tracking_ids", "recorded_logdir",
           "tensorboard_logdir"]


def check_available(backends: Sequence[str]) -> None:
    """Before a run writes anything: each backend's package is installed (else a ConfigError naming
    tracking.backends and the install command). Looks the package up without importing it."""
    import importlib.util

    from ..errors import ConfigError

    for backend in backends:
        if backend == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tracking.backends lists 'tensorboard', but the tensorboard package is not installed: "
                              "pip install 'thesis-lib[tracking]' (or pip install tensorboard)")


def make_mirror(backend: str, *, run_dir: Path, run_id: str, tensorboard_dir: Optional[str] = None,
                logdir: Optional[Path] = None) -> Mirror:
    """A tracker by its `tracking.backends` name; `logdir` overrides where TensorBoard writes."""
    if backend == "tensorboard":
        from .tensorboard import TensorBoardMirror

        return TensorBoardMirror(logdir if logdir is not None else tensorboard_logdir(run_dir, run_id, tensorboard_dir))
    raise ValueError(f"no tracker named {backend!r}")  # config validation refuses it before a run starts


def open_live_mirror(backends: Sequence[str], *, run_dir: Path, run_id: str, tensorboard_dir: Optional[str],
                     telemetry: Optional[TelemetryTail] = None) -> GuardedMirror:
    """The run's trackers behind one guard, their ids recorded in tracking.json (call `start` next).

    A tracker that cannot even be built (its package missing) is a failure of the guard like any other.
    """
    guard = GuardedMirror([], telemetry)
    for backend in backends:
        try:
            mirror = make_mirror(backend, run_dir=run_dir, run_id=run_id, tensorboard_dir=tensorboard_dir)
            write_tracking_ids(run_dir, backend, {**mirror.ids(), "written_by": "live", "facts_sha256": None})
        except Exception as exc:  # noqa: BLE001 - the run goes on without it
            guard.failures.append({"part": "tracking", "error_type": type(exc).__name__,
                                   "message": f"{backend} could not be set up: {type(exc).__name__}: {exc}"})
            import warnings

            warnings.warn(guard.failures[-1]["message"], TrackingWarning, stacklevel=2)
            continue
        guard.mirrors.append(mirror)
    return guard
