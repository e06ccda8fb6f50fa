"""Loading one run's report: the facts of a run directory gathered into a `RunReport`, findings included.

`load_run_report(run_dir)` reads the facts (events, scalars, steps, telemetry), config.yaml,
model_info.json and the log, computes the key metrics once (`run_metrics.py` says where each
comes from) and the findings (`findings.py`). Only events.jsonl must be readable: bad lines are
skipped and listed, and an optional file that cannot be read is left out with its reason, which
the report states. The data model itself is `report_data.RunReport`;
how it is laid out as a report is the run-report template's business.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from ..errors import FactsError
from ..facts import read_config, read_events, read_scalars, read_steps, read_telemetry, run_status
from ..layout import (CONFIG_FILE, DATA_META_FILE, ENV_FILE, EVENTS_FILE, MODEL_INFO_FILE, PROFILE_DIR, PROFILE_INFO,
                      PROFILE_TOP_OPS_CSV, PROFILE_TRACE, SCALARS_FILE, STDOUT_LOG, STEPS_FILE, TELEMETRY_FILE)
from .findings import find
from .report_data import PROFILE_OPS_SHOWN, ConfigSnapshot, ProfileView, RunReport
from .run_metrics import key_metrics, telemetry_summary

__all__ = ["RunReport", "ConfigSnapshot", "load_run_report", "LOG_TAIL_LINES"]

LOG_TAIL_LINES = 30
# Per-epoch columns that describe the whole epoch: read from the train row (the loop writes them there).
_EPOCH_COLUMNS = ("step", "t", "lr", "grad_norm", "epoch_time_s", "data_wait_frac", "energy_j", "power_avg_w",
                  "gpu_util_avg", "vram_peak_mb", "nvml_mem_peak_mb")


def load_run_report(run_dir: str | Path) -> RunReport:
    """Gather a run's facts into a RunReport (findings included); reads files only, never a GPU.

    Works for every status: a RUNNING or CRASHED run reports what it wrote so far, and runs
    from before steps.csv / telemetry.csv existed report without them. Only events.jsonl is
    required: a bad line in any facts file is skipped and listed (`bad_lines`), and an optional
    file that cannot be read (config.yaml, scalars.csv, steps.csv, telemetry.csv, env.json,
    model_info.json, data_meta.json, the log) is left out with the reason (`unreadable`), never
    failing the report. `dataset` is data_meta.json's `dataset` section, {} for a run from before it.

    Args:
        run_dir: the run directory.

    Returns:
        The RunReport.

    Raises:
        FactsError: the directory does not exist, or its events cannot be read or hold no on_start.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FactsError(f"run directory {run_dir} does not exist (expected a folder holding {EVENTS_FILE})")
    bad_lines: list = []
    unreadable: dict[str, str] = {}
    try:
        events = read_events(run_dir, bad_lines=bad_lines)
    except OSError as exc:
        raise FactsError(f"{run_dir / EVENTS_FILE} cannot be read: {exc}") from exc
    start_index = max((i for i, e in enumerate(events) if e.get("moment") == "on_start"), default=None)
    if start_index is None:
        raise FactsError(f"{run_dir / EVENTS_FILE} has no on_start event: the run never started")
    start, since_start = events[start_index], events[start_index:]
    end = _last(since_start, "on_train_end")
    status, stop_reason = run_status(events, start, run_dir)
    config = _optional(CONFIG_FILE, unreadable, lambda: read_config(run_dir), {})
    columns = start.get("scalar_columns") if isinstance(start.get("scalar_columns"), list) else None
    scalars = pd.DataFrame()
    if (run_dir / SCALARS_FILE).exists():
        scalars = _optional(SCALARS_FILE, unreadable,
                            lambda: read_scalars(run_dir, columns=columns, bad_lines=bad_lines), pd.DataFrame())
    epochs = _epoch_table(scalars)
    steps_table = _optional(STEPS_FILE, unreadable, lambda: read_steps(run_dir, bad_lines=bad_lines), pd.DataFrame())
    telemetry_table = _optional(TELEMETRY_FILE, unreadable, lambda: read_telemetry(run_dir, bad_lines=bad_lines),
                                pd.DataFrame())
    model_info, env = _read_json(run_dir, MODEL_INFO_FILE, unreadable), _read_json(run_dir, ENV_FILE, unreadable)
    params = _mapping(model_info.get("parameters")) or _mapping(start.get("params"))
    dataset = _dataset(run_dir, unreadable)
    test = _last(events, "on_test_end") or {}
    skipped = test.get("skipped")
    payload = _mapping((end or {}).get("telemetry"))
    duration = _number((end or {}).get("total_time_s"))
    if duration is None:  # no end yet: the last thing the run wrote
        last_sample = telemetry_table["t"].max() if "t" in telemetry_table and len(telemetry_table) else 0.0
        duration = max([_number(e.get("t")) or 0.0 for e in events] + [float(last_sample)])
    telemetry = telemetry_summary(telemetry_table, payload, env, start.get("device"),
                                  _mapping(config.get("telemetry")) if isinstance(config, dict) else {})
    if TELEMETRY_FILE in unreadable and not telemetry.has_gpu and not payload.get("warning"):
        telemetry.warning = f"{TELEMETRY_FILE} could not be read ({unreadable[TELEMETRY_FILE]})"
    completed = _number((end or {}).get("epochs_completed"))
    steps = _number((end or {}).get("steps"))
    metrics = test.get("metrics")
    report = RunReport(
        run_dir=run_dir,
        run_id=str(start.get("run_id") or run_dir.name),
        status=status,
        stop_reason=stop_reason,
        started=start.get("time"),
        duration_s=float(duration) if duration is not None else None,
        epochs_completed=int(completed) if completed is not None else len(epochs),
        steps=int(steps) if steps is not None else _last_step(epochs),
        params_total=params.get("total"),
        params_trainable=params.get("trainable"),
        device=start.get("device"),
        metrics=key_metrics(epochs, telemetry_table, payload, end),
        config=ConfigSnapshot.from_config(config, world_size=int(_number(start.get("world_size")) or 1.0)),
        telemetry=telemetry,
        # A skipped pass measured nothing: no metrics, never zeros; a metric left out stays out.
        test_metrics={} if skipped or not isinstance(metrics, dict) else dict(metrics),
        test_epoch=test.get("epoch"),
        confusion=({"matrix": test["confusion_matrix"], "class_names": test.get("class_names") or []}
                   if not skipped and test.get("confusion_matrix") else None),
        exception=_last(since_start, "on_exception"),
        log_tail=_log_tail(run_dir, unreadable),
        config_text=_read_text(run_dir / CONFIG_FILE) if CONFIG_FILE not in unreadable else "",
        epochs=epochs,
        steps_table=steps_table,
        telemetry_table=telemetry_table,
        test_skipped=str(skipped) if skipped else None,
        incidents=[e for e in events if e.get("moment") == "on_incident"],
        bad_lines=bad_lines,
        unreadable=unreadable,
        dataset=dataset,
        profile=_profile(run_dir, config, unreadable),
    )
    report.findings = find(report)
    return report


def _optional(name: str, unreadable: dict, read: Callable[[], Any], default: Any) -> Any:
    """What `read` returns, or `default` with the reason kept in `unreadable[name]` when the file cannot be read."""
    try:
        return read()
    except (FactsError, OSError, ValueError) as exc:
        unreadable[name] = _why(exc)
        return default


def _why(exc: BaseException) -> str:
    """An error as a short reason: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text[:300] or type(exc).__name__


def _epoch_table(scalars: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch: train_<x> / val_<x> for every loss and metric, plus the epoch-wide columns."""
    if scalars.empty or "split" not in scalars.columns:
        return pd.DataFrame(columns=["train_loss", "val_loss", *_EPOCH_COLUMNS], index=pd.Index([], name="epoch"))
    scalars = scalars.drop(columns=["train_loss", "val_loss"], errors="ignore")
    train = scalars[scalars["split"] == "train"].set_index("epoch")
    val = scalars[scalars["split"] == "val"].set_index("epoch")
    table = pd.DataFrame(index=pd.Index(sorted(set(train.index) | set(val.index)), name="epoch"))
    values = [c for c in scalars.columns if c == "loss" or c.startswith(("loss_", "metric_"))]
    for column in values:
        table[f"train_{column}"] = pd.to_numeric(train[column], errors="coerce")
        table[f"val_{column}"] = pd.to_numeric(val[column], errors="coerce")
    for column in _EPOCH_COLUMNS:
        if column in scalars.columns:
            from_train = pd.to_numeric(train[column], errors="coerce").reindex(table.index)
            table[column] = from_train.combine_first(pd.to_numeric(val[column], errors="coerce").reindex(table.index))
    for column in ("samples", "throughput"):  # these differ per split: keep the training phase's
        if column in scalars.columns:
            table[column] = pd.to_numeric(train[column], errors="coerce").reindex(table.index)
    table.index = table.index.astype(int)
    return table


def _last_step(epochs: pd.DataFrame) -> Optional[int]:
    """The optimiser step count after the last recorded epoch, or None."""
    if "step" not in epochs or not epochs["step"].notna().any():
        return None
    return int(epochs["step"].max())


def _last(events: list, moment: str) -> Optional[dict]:
    """The last event of a moment, or None."""
    return next((e for e in reversed(events) if e.get("moment") == moment), None)


def _mapping(value: Any) -> dict:
    """A dict as it is; anything else as an empty one."""
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> Optional[float]:
    """A finite number as float; None when absent or not a number (never 0 for a missing value)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_json(run_dir: Path, name: str, unreadable: dict) -> dict:
    """A JSON object file of the run, or {} when absent; when present but unusable, {} and the reason in `unreadable`."""
    path = run_dir / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        unreadable[name] = _why(exc) if not isinstance(exc, ValueError) else f"not valid JSON ({_why(exc)})"
        return {}
    if not isinstance(data, dict):
        unreadable[name] = f"it holds a JSON {type(data).__name__}, not an object"
        return {}
    return data


def _dataset(run_dir: Path, unreadable: dict) -> dict:
    """data_meta.json's `dataset` section (what the data was), or {} when the run did not record one."""
    section = _read_json(run_dir, DATA_META_FILE, unreadable).get("dataset")
    if section is None or isinstance(section, dict):
        return section or {}
    unreadable[DATA_META_FILE] = f"its dataset section holds a JSON {type(section).__name__}, not an object"
    return {}


def _profile(run_dir: Path, config: Any, unreadable: dict) -> ProfileView | None:
    """profile/ of a run with trainer.profile on: profile.json, the top rows of top_ops.csv, the trace; None
    when profiling was off (or config.yaml is unreadable) and there is no profile/."""
    trainer = _mapping(config.get("trainer")) if isinstance(config, dict) else {}
    settings = _mapping(trainer.get("profile"))
    if not (run_dir / PROFILE_DIR).is_dir():
        return ProfileView(settings, {}, [], 0, None) if settings.get("enabled") is True else None
    info = _read_json(run_dir, PROFILE_INFO, unreadable)
    rows: list[dict] = []
    try:
        with open(run_dir / PROFILE_TOP_OPS_CSV, newline="", encoding="utf-8") as handle:
            rows = [{key: value if key == "name" else _float_or_text(value) for key, value in row.items()}
                    for row in csv.DictReader(handle)]
    except FileNotFoundError:
        pass
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        unreadable[PROFILE_TOP_OPS_CSV] = _why(exc)
    trace = run_dir / PROFILE_TRACE
    return ProfileView(settings=settings, info=info, top_ops=rows[:PROFILE_OPS_SHOWN], ops_total=len(rows),
                       trace=trace if trace.is_file() else None)


def _float_or_text(value: str | None) -> Any:
    """A CSV cell: a finite number as float, an empty cell as None, anything else as its text."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else None


def _read_text(path: Path) -> str:
    """A text file's contents, or '' when absent or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _log_tail(run_dir: Path, unreadable: dict, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of the run's log (carriage-return progress redraws collapsed); why not, in `unreadable`."""
    try:
        text = (run_dir / STDOUT_LOG).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        unreadable[STDOUT_LOG] = _why(exc)
        return []
    rows = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return rows[-lines:]
