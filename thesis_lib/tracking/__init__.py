"""Experiment trackers: a run mirrored live to TensorBoard, MLflow and W&B, any combination.

`Mirror` (base.py) is what a tracker implements: `TensorBoardMirror` (tensorboard.py),
`MlflowMirror` (mlflow.py), `WandbMirror` (wandb.py), each importing its package only when built.
A training run with `tracking.backends` set builds them with `open_live_mirror` and holds the
`GuardedMirror` (guard.py), its one call site: a tracker that fails is warned about once, recorded
as an on_incident (part "tracking") and switched off, and the run goes on. With no backend the run
holds None and imports nothing of this package. Each tracker's ids for a run are kept in
`<run_dir>/tracking.json` (ids.py), so `thesis-lib sync` (thesis_lib.tracking_sync, a layer above the
facts readers) updates what a live mirror or an earlier sync wrote instead of adding a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .base import Mirror, RunInfo, flat_config, output_root_of, run_artifacts, tracking_settings
from .guard import GuardedMirror, TelemetryTail, TrackingWarning
from .ids import read_tracking_ids, recorded_logdir, tensorboard_logdir, write_tracking_ids

__all__ = ["Mirror", "RunInfo", "GuardedMirror", "TrackingWarning", "TelemetryTail", "open_live_mirror", "check_available",
           "make_mirror", "flat_config", "read_tracking_ids", "write_tracking_ids", "recorded_logdir",
           "tensorboard_logdir", "tracking_settings", "run_artifacts", "output_root_of", "mirror_class",
           "PACKAGES"]

# Each backend's package (what `pip install` names) and its import name.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def check_available(backends: Sequence[str]) -> None:
    """Before a run writes anything: each backend's package is installed (else a ConfigError naming
    tracking.backends and the install command). Looks the package up without importing it."""
    import importlib.util

    from ..errors import ConfigError

    for backend in backends:
        package, module = PACKAGES[backend]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking.backends lists {backend!r}, but the {package} package is not installed: "
                              f"pip install 'thesis-lib[tracking]' (or pip install {package})")


def mirror_class(backend: str) -> type:
    """The `Mirror` class of a `tracking.backends` name (its module imported, not its package)."""
    if backend == "tensorboard":
        from .tensorboard import TensorBoardMirror

        return TensorBoardMirror
    if backend == "mlflow":
        from .mlflow import MlflowMirror

        return MlflowMirror
    if backend == "wandb":
        from .wandb import WandbMirror

        return WandbMirror
    raise ValueError(f"no tracker named {backend!r}")  # config validation refuses it before a run starts


def make_mirror(backend: str, *, run_dir: Path, run_id: str, settings: Optional[Mapping[str, Any]] = None,
                previous: Optional[Mapping[str, Any]] = None, logdir: Optional[Path] = None) -> Mirror:
    """A tracker by its `tracking.backends` name.

    Args:
        settings: the tracking section (`tracking_settings`: defaults filled in).
        previous: the backend's tracking.json entry for this run, if any: a resumable tracker (MLflow,
            W&B) continues that tracker run instead of opening a second one.
        logdir: where TensorBoard writes, instead of the settings' place (a sync's fresh directory).
    """
    settings = tracking_settings(settings)
    cls = mirror_class(backend)
    if backend == "tensorboard":
        return cls(logdir if logdir is not None else tensorboard_logdir(run_dir, run_id, settings["tensorboard_dir"]))
    return cls(run_dir=Path(run_dir), run_id=run_id, settings=settings, previous=dict(previous or {}))


def open_live_mirror(backends: Sequence[str], *, run_dir: Path, run_id: str, settings: Mapping[str, Any],
                     telemetry: Optional[TelemetryTail] = None) -> GuardedMirror:
    """The run's trackers behind one guard, which records their ids in tracking.json as they start and close
    (call `start` next). A resumed run's trackers continue the tracker runs tracking.json names.

    A tracker that cannot even be built (its package missing) is a failure of the guard like any other.
    """
    guard = GuardedMirror([], telemetry, run_dir=run_dir)
    recorded = read_tracking_ids(run_dir)
    for backend in backends:
        try:
            mirror = make_mirror(backend, run_dir=run_dir, run_id=run_id, settings=settings,
                                 previous=recorded.get(backend))
        except Exception as exc:  # noqa: BLE001 - the run goes on without it
            guard.failures.append({"part": "tracking", "error_type": type(exc).__name__,
                                   "message": f"{backend} could not be set up: {type(exc).__name__}: {exc}"})
            import warnings

            warnings.warn(guard.failures[-1]["message"], TrackingWarning, stacklevel=2)
            continue
        guard.mirrors.append(mirror)
    return guard
