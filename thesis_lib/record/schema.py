"""Facts schema, version 2: the event moments, run statuses and the fixed scalars header.

Writers and readers both import these names, so the on-disk contract lives in one place.
A reader accepts every `schema_version` up to `SCHEMA_VERSION` and refuses a newer one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

from ..errors import FactsError

__all__ = [
    "SCHEMA_VERSION",
    "MOMENTS",
    "INCIDENT_PARTS",
    "STATUSES",
    "BASE_SCALAR_COLUMNS",
    "TAIL_SCALAR_COLUMNS",
    "EVENT_FIELDS",
    "STEPS_COLUMNS",
    "scalar_columns",
    "config_hash",
]

# Version 2 added `on_incident` and the skipped test pass (`on_test_end` with `skipped`, no
# `metrics`); a metric measured over zero samples is left out, never written as 0.0.
SCHEMA_VERSION = 2

# on_incident: a part of the run that is not its numbers failed and the run went on: fields
# `part` (one of INCIDENT_PARTS), `message` (the OS or library error text), `path` (the file being
# written, when there is one), `error_type`. It may follow on_train_end: a report that fails after
# the run ended is recorded as one, and it never changes the run's status.
MOMENTS = ("on_start", "on_epoch_end", "on_train_end", "on_test_end", "on_exception", "on_incident")

INCIDENT_PARTS = ("console", "stdout_log", "figures", "report", "telemetry", "checkpoint", "disk", "lock",
                  "signal", "history", "model_info", "dashboard", "finish", "tracking", "profile")

# RUNNING and CRASHED are never written: the reader derives them from a missing end event.
STATUSES = ("COMPLETED", "STOPPED", "FAILED", "RUNNING", "CRASHED")

BASE_SCALAR_COLUMNS = ("epoch", "split", "step", "t", "loss")
TAIL_SCALAR_COLUMNS = ("lr", "grad_norm", "epoch_time_s", "samples", "throughput", "data_wait_frac",
                       # Resources per epoch; empty without a GPU. vram_peak_mb is the framework's view
                       # (torch.cuda.max_memory_allocated), nvml_mem_peak_mb the device's (NVML).
                       "energy_j", "power_avg_w", "gpu_util_avg", "vram_peak_mb", "nvml_mem_peak_mb")

# Every event carries these; a payload may not use them as keys.
EVENT_FIELDS = ("schema_version", "moment", "run_id", "time", "t")

# facts/steps.csv: the training loss at sync-point resolution (mean over the steps since the
# previous sync point), buffered in memory during the epoch and written at its end: the step
# itself does no I/O. Where each file lives is thesis_lib.layout's.
STEPS_COLUMNS = ("epoch", "step", "t", "loss", "lr")


def scalar_columns(model_scalar_names: Iterable[str]) -> tuple[str, ...]:
    """The fixed scalars.csv header for a model: base columns, the model's names, tail columns.

    Models declare the keys their `loss_and_metrics` returns, which include `loss`; names
    already among the base or tail columns are therefore dropped rather than repeated.

    Args:
        model_scalar_names: the model's `scalar_names` (`loss`, `loss_*`, `metric_*`), in order.

    Returns:
        The header as a tuple of column names, without duplicates.

    Raises:
        FactsError: a name is not a non-empty string.
    """
    fixed = set(BASE_SCALAR_COLUMNS) | set(TAIL_SCALAR_COLUMNS)
    middle: list[str] = []
    for name in model_scalar_names:
        if not isinstance(name, str) or not name:
            raise FactsError(
                f"model scalar name {name!r} is not a non-empty string; expected names such as 'loss_recon'"
            )
        if name not in fixed and name not in middle:
            middle.append(name)
    return BASE_SCALAR_COLUMNS + tuple(middle) + TAIL_SCALAR_COLUMNS


def config_hash(config_dict: Mapping[str, Any]) -> str:
    """A stable fingerprint of a resolved config: sha256 of its canonical JSON, first 12 hex digits.

    Key order does not matter (keys are sorted); values that JSON cannot hold (paths, tuples)
    are hashed through `str`, which is stable for the plain values a config holds.

    Args:
        config_dict: the resolved config as a plain nested dict.

    Returns:
        12 lowercase hex characters.
    """
    canonical = json.dumps(config_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
