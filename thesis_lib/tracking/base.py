"""What an experiment tracker implements (`Mirror`), and the names every tracker gives a run's numbers.

A mirror is fed the records the run's facts get, in the shapes the facts hold them: the flattened
config and the run's identity at the start, each scalars.csv row, each steps.csv row (a sync
point), each telemetry.csv row, the on_test_end metrics, the on_train_end status. The live run
feeds it as it writes the facts (thesis_lib.train, through `GuardedMirror`); `thesis-lib sync`
feeds a new one from a run directory's facts alone (thesis_lib.tracking_sync). So a tracker
written once serves both, and the names below (`epoch_scalars`, ...) are the same for every
tracker: TensorBoard today; MLflow or W&B would implement `Mirror` the same way.

Names (tag, step):
    `<split>/<column>` for every number of a scalars.csv row but `epoch` and `split`, at the epoch;
    `steps/loss`, `steps/lr` for a steps.csv row, at its optimizer step;
    `telemetry/<column>` for a telemetry.csv row, at its milliseconds since the run's start;
    `test/<metric>` for the on_test_end metrics, at the (best) epoch they were measured at.
An empty cell (a value not measured) or a non-finite value is not written.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ..config import TrackingConfig, flatten_dict
from ..layout import HISTORY_FILE, MODEL_FILE, MODEL_INFO_FILE, REPORT_HTML, REPORT_MARKDOWN, REPORT_PDF, RUN_REPORT_DIR

__all__ = ["Mirror", "RunInfo", "flat_config", "epoch_scalars", "step_scalars", "telemetry_scalars",
           "test_scalars", "telemetry_step", "wall_time", "tracking_settings", "run_artifacts", "output_root_of"]

# Columns that place a row (they are its key or its x axis), not numbers to plot.
_EPOCH_ROW_KEYS = ("epoch", "split")
_STEP_ROW_VALUES = ("loss", "lr")


@dataclass(frozen=True)
class RunInfo:
    """Who the run is: what a tracker names it by and where its facts live."""

    run_id: str
    run_dir: Path
    origin: float  # time.time() of the run's t = 0 (a row's wall time is origin + t)
    config_hash: Optional[str] = None
    resumed_from_epoch: Optional[int] = None

    def as_text(self) -> dict:
        return {"run_id": self.run_id, "run_dir": str(self.run_dir), "config_hash": self.config_hash,
                "resumed_from_epoch": self.resumed_from_epoch}


class Mirror(abc.ABC):
    """One experiment tracker, fed a run's records in order; may raise (the caller guards it).

    `name` is the backend as `tracking.backends` and `thesis-lib sync --to` name it.
    """

    name: str = ""
    # False: `thesis-lib sync` rebuilds the tracker's copy whole and swaps it in (TensorBoard's event
    # directory). True: built with the run's tracking.json entry (`previous`), the mirror continues that
    # tracker run and sends only what it does not hold yet (MLflow, W&B: their runs cannot be swapped).
    resumable: bool = False

    @abc.abstractmethod
    def start(self, config: Mapping[str, Any], run: RunInfo) -> None:
        """The run begins: `config` flattened (`flat_config`: every key, dotted), `run` its identity."""

    @abc.abstractmethod
    def epoch(self, row: Mapping[str, Any]) -> None:
        """One scalars.csv row: `epoch`, `split`, `t` and the row's numbers (None: not measured)."""

    @abc.abstractmethod
    def sync_point(self, row: Mapping[str, Any]) -> None:
        """One steps.csv row: `epoch`, `step` (optimizer steps), `t`, `loss` (mean since the previous row), `lr`."""

    @abc.abstractmethod
    def telemetry(self, row: Mapping[str, Any]) -> None:
        """One telemetry.csv row: `t`, `cpu_pct`, `rss_mb`, `gpu<i>_*` (None: empty cell)."""

    @abc.abstractmethod
    def test(self, metrics: Mapping[str, Any], epoch: Optional[int]) -> None:
        """The on_test_end metrics of the weights of `epoch` (the best one)."""

    @abc.abstractmethod
    def end(self, status: str, stop_reason: str) -> None:
        """on_train_end: COMPLETED, STOPPED or FAILED, and why."""

    @abc.abstractmethod
    def close(self, artifacts: Mapping[str, Path]) -> None:
        """Flush and release; `artifacts` (name -> file: model.pt, ...) for trackers that store files."""

    @abc.abstractmethod
    def ids(self) -> dict:
        """What tracking.json keeps for this tracker, so a later sync updates rather than duplicates."""


def flat_config(config: Mapping[str, Any]) -> dict:
    """The config as `{dotted.key: value}`, every key kept; values a tracker cannot hold as a number
    or a string (lists, None) as their JSON text."""
    flat = {}
    for key, value in flatten_dict(config).items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, default=str)
    return flat


def _number(value: Any) -> Optional[float]:
    """A finite number as float, else None (an empty cell, NaN, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def epoch_scalars(row: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of a scalars.csv row: `<split>/<column>`."""
    split = row["split"]
    for column, value in row.items():
        if column in _EPOCH_ROW_KEYS:
            continue
        number = _number(value)
        if number is not None:
            yield f"{split}/{column}", number


def step_scalars(row: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of a steps.csv row: `steps/loss`, `steps/lr`."""
    for column in _STEP_ROW_VALUES:
        number = _number(row.get(column))
        if number is not None:
            yield f"steps/{column}", number


def telemetry_scalars(row: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of a telemetry.csv row: `telemetry/<column>`."""
    for column, value in row.items():
        if column == "t":
            continue
        number = _number(value)
        if number is not None:
            yield f"telemetry/{column}", number


def wall_time(origin: Optional[float], t: Any) -> Optional[float]:
    """time.time() of a fact's `t` (seconds since the run's origin); None when either is unknown."""
    if origin is None or t is None:
        return None
    try:
        return origin + float(t)
    except (TypeError, ValueError):
        return None


def telemetry_step(t: float) -> int:
    """A telemetry row's step: milliseconds since the run's start (the samples have no step of their own)."""
    return int(round(float(t) * 1000.0))


def test_scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of the on_test_end metrics: `test/<metric>`."""
    for name, value in metrics.items():
        number = _number(value)
        if number is not None:
            yield f"test/{name}", number


def tracking_settings(*layers: Optional[Mapping[str, Any]]) -> dict:
    """The tracking section's settings, defaults first, then each layer's known keys over them (a
    run's config.yaml `tracking`, then the sync command's flags); a run from before the section gets
    the defaults."""
    settings = dataclasses.asdict(TrackingConfig())
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in settings and value is not None:
                settings[key] = value
    return settings


def output_root_of(run_dir: Path) -> Path:
    """The output_root a run directory lives under (`<output_root>/runs/<run_id>/`)."""
    return Path(run_dir).resolve().parent.parent


def run_artifacts(run_dir: Path) -> dict[str, Path]:
    """The files a tracker that stores files gets (name -> path), those that exist: the model, its
    info and history, and the rendered report (a live run closes its trackers after the report)."""
    run_dir = Path(run_dir)
    candidates = {MODEL_FILE: run_dir / MODEL_FILE, MODEL_INFO_FILE: run_dir / MODEL_INFO_FILE,
                  HISTORY_FILE: run_dir / HISTORY_FILE,
                  **{f"{RUN_REPORT_DIR}/{name}": run_dir / RUN_REPORT_DIR / name
                     for name in (REPORT_HTML, REPORT_MARKDOWN, REPORT_PDF)}}
    return {name: path for name, path in candidates.items() if path.is_file()}
