"""MLflow: a run's records as one MLflow run, through an explicit `mlflow.tracking.MlflowClient`.

Never the fluent API (`mlflow.start_run` and its process-wide active run): the live mirror runs in
a worker thread, a sweep may train several runs in one process, and each mirror talks to its own
store. The store is `tracking.mlflow_tracking_uri`; "" is a local one beside the runs:
`sqlite:///<output_root>/mlflow.db`, artifacts in `<output_root>/mlartifacts/` (`mlflow ui
--backend-store-uri sqlite:///<output_root>/mlflow.db` shows it). Any sqlite store's experiment is
created with its artifacts beside the database (`<db dir>/mlartifacts`), not in the working
directory's `./mlruns`.

One thesis-lib run is one MLflow run (named by the thesis-lib run id), in experiment
`tracking.mlflow_experiment` (created when missing). `previous`, the run's tracking.json entry,
names the MLflow run a live mirror or an earlier sync made, and its store: that run is continued (a
resumed training run, a sync), sending only what it does not hold yet: params it lacks, metric
points at a (name, step) it has no point at. A new MLflow run is opened only when there is none
recorded or the recorded one is gone from its store.

What goes where:
- params: the flattened config, every key (MLflow keeps a param's first value: a resumed run's
  changed values, e.g. trainer.epochs, are in the tag `thesis_lib.params_changed`; values over
  MLflow's 6000 characters are cut, named in `thesis_lib.params_truncated`). The whole flattened
  config is also the artifact `config.yaml` (layout.CONFIG_FILE), rewritten at each start.
- tags: `thesis_lib.run_id`, `.run_dir`, `.config_hash`, `.resumed_from_epoch`, and at the end
  `.status`, `.stop_reason`; the MLflow run ends FINISHED (COMPLETED), KILLED (STOPPED), FAILED.
- metrics: named as in `thesis_lib.tracking.base` (`train/loss` at the epoch, `steps/loss` at the
  optimizer step, `telemetry/<column>` at milliseconds since the run's start, `test/<metric>` at
  the best epoch), each timestamped with the wall time of its fact (the run's origin + its `t`;
  the test metrics: the latest fact's). Buffered, sent with `log_batch` (1000 a call) at each
  epoch, the test metrics, the end and the close: the worker thread pays one round trip an epoch.
- artifacts (`close`): model.pt, its info and history, the report (`report/report.html` under
  `report/`); in an experiment this mirror creates in a sqlite store, under
  `<db dir>/mlartifacts/<mlflow run id>/artifacts/`.

First use of a sqlite store creates its tables (alembic migrations, 2-3 s once); two processes doing
that at once break the database for good, so a sqlite store is opened under a file lock beside it
(`<db>.lock`). Importing mlflow and its store costs 3-5 s a process, paid at the run's start. A
server (http, https) is asked once, without MLflow's retries, whether it answers at all before the
run starts; MLflow's own retries (7, with backoff: about 4 minutes) would hold the run's start.

Needs the `mlflow` package: `pip install 'thesis-lib[tracking]'`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..layout import CONFIG_FILE
from .base import (
    Mirror,
    RunInfo,
    epoch_scalars,
    output_root_of,
    step_scalars,
    telemetry_scalars,
    telemetry_step,
    test_scalars,
)

__all__ = ["MlflowMirror", "local_store"]

# thesis-lib's statuses as MLflow's run statuses.
_RUN_STATUS = {"COMPLETED": "FINISHED", "STOPPED": "KILLED", "FAILED": "FAILED"}
_TAG = "thesis_lib."
_BATCH = 1000  # MLflow's limit of metrics a log_batch call
_PARAM_BATCH = 100  # ... and of params or tags
_PARAM_LIMIT = 6000  # characters of a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
_TAG_LIMIT = 8000  # characters of a tag value
_LOCK_TIMEOUT_S = 300.0
_PROBE_TIMEOUT_S = 10.0


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError(f"{exc}; the MLflow mirror needs the mlflow package: "
                          "pip install 'thesis-lib[tracking]'") from exc
    return MlflowClient


def local_store(output_root: Path) -> tuple[str, str]:
    """The local store of `tracking.mlflow_tracking_uri: ""`: (its sqlite URI, its artifact location)."""
    output_root = Path(output_root).resolve()
    return "sqlite:///" + (output_root / "mlflow.db").as_posix(), (output_root / "mlartifacts").as_uri()


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None (a server, a ":memory:" store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _absolute(uri: str) -> str:
    """A `sqlite:///relative.db` URI made absolute (the working directory's), so tracking.json's record
    names the same store from anywhere; any other URI as it is."""
    database = _sqlite_file(uri)
    if database is None or database.is_absolute():
        return uri
    return "sqlite:///" + database.resolve().as_posix() + (uri[uri.index("?"):] if "?" in uri else "")


def _probe(uri: str, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    """An http(s) server answers at all (any status: auth and proxies are MLflow's business), else raise.

    MLflow retries a request it cannot send 7 times with backoff: about 4 minutes before an unreachable
    server's error, in the training thread at the run's start. This costs one connection instead.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"the MLflow server {uri} is not reachable: {reason}") from exc


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MlflowMirror(Mirror):
    """One thesis-lib run as one MLflow run (see the module doc).

    Args:
        run_dir: the run directory (its output_root holds the local store).
        run_id: the thesis-lib run id: the MLflow run's name and `thesis_lib.run_id` tag.
        settings: the tracking section (`mlflow_tracking_uri`, `mlflow_experiment`).
        previous: the run's tracking.json `mlflow` entry ({} when none): the MLflow run to continue.
    """

    name = "mlflow"
    resumable = True

    def __init__(self, *, run_dir: Path, run_id: str, settings: Mapping[str, Any], previous: Mapping[str, Any]):
        self.run_dir = Path(run_dir)
        self.thesis_run_id = run_id
        self.previous = dict(previous or {})
        configured = str(settings.get("mlflow_tracking_uri") or "")
        if configured:
            self.tracking_uri, self.artifact_location = _absolute(configured), None
        else:
            self.tracking_uri, self.artifact_location = local_store(output_root_of(self.run_dir))
        recorded = self.previous.get("tracking_uri")
        if self.previous.get("run_id") and recorded and recorded != self.tracking_uri:
            database = _sqlite_file(recorded)
            if database is None or database.is_file():  # the run lives there (a sqlite store that is gone: not)
                self.tracking_uri, self.artifact_location = recorded, None
        self.experiment_name = str(self.previous.get("experiment") or settings.get("mlflow_experiment") or "thesis-lib")
        self.client = None
        self.mlflow_run_id: str | None = None
        self.experiment_id: str | None = None
        self.continued = False  # True: the run existed before this mirror
        self.origin: float | None = None
        self._present: dict[str, set[int]] = {}  # metric -> steps the MLflow run holds a point at
        self._pending: list = []  # Metric entities not yet sent
        self._latest_ms: int | None = None
        self._failed = False  # a batch of metrics the store did not take

    # --- the store and the run ---------------------------------------------------------------

    def _open_client(self):
        """The client, its store opened (under the file lock for sqlite: the first use migrates it)."""
        client_class = _mlflow()
        database = _sqlite_file(self.tracking_uri)
        if database is None:
            _probe(self.tracking_uri)
            client = client_class(tracking_uri=self.tracking_uri)
            self._experiment(client)
            return client
        from filelock import FileLock

        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(database) + ".lock", timeout=_LOCK_TIMEOUT_S):
            client = client_class(tracking_uri=self.tracking_uri)
            self._experiment(client)
        return client

    def _experiment(self, client) -> str:
        """The experiment's id, created when missing (with its artifacts beside a sqlite store)."""
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            location = self.artifact_location
            database = _sqlite_file(self.tracking_uri)
            if location is None and database is not None:
                location = (database.resolve().parent / "mlartifacts").as_uri()
            self.experiment_id = client.create_experiment(self.experiment_name, artifact_location=location)
        elif experiment.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment {self.experiment_name!r} is deleted in {self.tracking_uri}: restore it "
                               "(mlflow experiments restore) or set tracking.mlflow_experiment to another name")
        else:
            self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def _recorded_run(self):
        """The MLflow run tracking.json names, when it is in this store and not deleted; else None."""
        run_id = self.previous.get("run_id")
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(str(run_id))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise  # the store failed: no second run, the guard (or the sync) names the error
        return run if run.info.lifecycle_stage == "active" else None

    def _held_points(self, run) -> None:
        """The (metric, step) points the run holds already, so a continued run gets none twice."""
        for key in run.data.metrics:
            self._present[key] = {metric.step for metric in self.client.get_metric_history(run.info.run_id, key)}

    def start(self, config: Mapping[str, Any], run: RunInfo) -> None:
        from mlflow.entities import Param, RunTag

        self.client = self._open_client()
        self.origin = run.origin
        existing = self._recorded_run()
        if existing is not None:
            self.continued = True
            self.mlflow_run_id = existing.info.run_id
            if existing.info.experiment_id != self.experiment_id:
                self.experiment_id = existing.info.experiment_id
                self.experiment_name = self.client.get_experiment(self.experiment_id).name
            self._held_points(existing)
            held_params = dict(existing.data.params)
            if existing.info.status != "RUNNING":
                self.client.update_run(self.mlflow_run_id, status="RUNNING")
        else:
            created = self.client.create_run(self.experiment_id, run_name=self.thesis_run_id,
                                             start_time=self._ms(0.0))
            self.mlflow_run_id = created.info.run_id
            held_params = {}
        params, changed, truncated = [], {}, []
        for key, value in config.items():
            text = str(value)
            if len(text) > _PARAM_LIMIT:
                truncated.append(key)
                text = _cut(text, _PARAM_LIMIT)
            if key not in held_params:
                params.append(Param(key, text))
            elif held_params[key] != text:
                changed[key] = text
        tags = {"run_id": run.run_id, "run_dir": str(run.run_dir), "config_hash": run.config_hash,
                "resumed_from_epoch": run.resumed_from_epoch}
        if changed:
            tags["params_changed"] = ", ".join(f"{key}={value}" for key, value in changed.items())
        if truncated:
            tags["params_truncated"] = ", ".join(truncated) + f" (whole in the artifact {CONFIG_FILE})"
        tag_entities = [RunTag(_TAG + key, _cut(str(value), _TAG_LIMIT)) for key, value in tags.items()
                        if value is not None]
        for first in range(0, max(len(params), len(tag_entities)), _PARAM_BATCH):
            self.client.log_batch(self.mlflow_run_id, params=params[first:first + _PARAM_BATCH],
                                  tags=tag_entities[first:first + _PARAM_BATCH], synchronous=True)
        self.client.log_dict(self.mlflow_run_id, dict(config), CONFIG_FILE)

    # --- the records -------------------------------------------------------------------------

    def _ms(self, t: Any) -> int | None:
        """The wall time in ms of a fact at `t` seconds since the run's start (None: not known)."""
        if self.origin is None or t is None:
            return None
        try:
            return round((self.origin + float(t)) * 1000.0)
        except (TypeError, ValueError):
            return None

    def _add(self, pairs: Iterable[tuple[str, float]], step: int, timestamp: int | None) -> None:
        from mlflow.entities import Metric

        if timestamp is None:
            timestamp = self._latest_ms if self._latest_ms is not None else int(time.time() * 1000)
        else:
            self._latest_ms = timestamp if self._latest_ms is None else max(self._latest_ms, timestamp)
        for key, value in pairs:
            steps = self._present.setdefault(key, set())
            if step in steps:
                continue
            steps.add(step)
            self._pending.append(Metric(key, value, timestamp, step))

    def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:_BATCH]
            self._failed = True  # until the store took it: `close` after a failure sends nothing more
            self.client.log_batch(self.mlflow_run_id, metrics=batch, synchronous=True)
            self._failed = False
            del self._pending[:len(batch)]

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._add(epoch_scalars(row), int(row["epoch"]), self._ms(row.get("t")))
        self._flush()

    def sync_point(self, row: Mapping[str, Any]) -> None:
        self._add(step_scalars(row), int(row["step"]), self._ms(row.get("t")))

    def telemetry(self, row: Mapping[str, Any]) -> None:
        self._add(telemetry_scalars(row), telemetry_step(row["t"]), self._ms(row["t"]))

    def test(self, metrics: Mapping[str, Any], epoch: int | None) -> None:
        self._add(test_scalars(metrics), int(epoch) if epoch is not None else 0, None)
        self._flush()

    def end(self, status: str, stop_reason: str) -> None:
        from mlflow.entities import RunTag

        self._flush()
        self.client.log_batch(self.mlflow_run_id, tags=[RunTag(_TAG + "status", str(status)),
                                                        RunTag(_TAG + "stop_reason", _cut(str(stop_reason), _TAG_LIMIT))],
                              synchronous=True)
        self._terminate(_RUN_STATUS.get(status, "FAILED"))

    def _terminate(self, status: str) -> None:
        """End the MLflow run at its latest fact's wall time. Through the store: `set_terminated` first
        writes two lines ("🏃 View run ...") to stdout for a server store, on every run, and an emoji
        that a non-UTF-8 console cannot encode fails it before the status is set."""
        from mlflow.entities import RunStatus

        end_ms = self._latest_ms if self._latest_ms is not None else int(time.time() * 1000)
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        if store is None or not hasattr(store, "update_run_info"):
            self.client.set_terminated(self.mlflow_run_id, status=status, end_time=end_ms)
            return
        store.update_run_info(self.mlflow_run_id, run_status=RunStatus.from_string(status), end_time=end_ms,
                              run_name=None)

    def close(self, artifacts: Mapping[str, Path]) -> None:
        if self.client is None or self.mlflow_run_id is None or self._failed:
            return  # not started, or its store failed (the guard closes a failed mirror: no second wait on it)
        self._flush()
        for name, path in artifacts.items():
            folder = Path(name).parent.as_posix()
            self.client.log_artifact(self.mlflow_run_id, str(path), artifact_path=None if folder == "." else folder)

    def ids(self) -> dict:
        return {"run_id": self.mlflow_run_id, "tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id,
                "experiment": self.experiment_name}
