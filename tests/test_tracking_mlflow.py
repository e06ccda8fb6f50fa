"""MLflow tracking: a live mirror and `thesis-lib sync --to mlflow`, read back with MLflow's own client.

Offline and real: tiny runs train into local sqlite stores, each MLflow run is read back with
`mlflow.tracking.MlflowClient`, and every metric point is compared with what the run's facts hold,
keyed by (name, step); a name with two points at one step is a duplicate and fails. A fresh sqlite
store costs a few seconds of migrations, so all but the first test start from a copy of one store
migrated once for the module.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

import yaml
from mlflow.tracking import MlflowClient
from test_tracking_tensorboard import fact_points  # the facts' numbers as every tracker names them
from test_train import TINY_MODEL  # the same tiny model

from thesis_lib import train
from thesis_lib.cli import main
from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import (
    read_config,
    read_events,
    read_scalars,
)
from thesis_lib.layout import HISTORY_FILE, MODEL_FILE, MODEL_INFO_FILE, TRACKING_FILE
from thesis_lib.tracking import flat_config, make_mirror, read_tracking_ids
from thesis_lib.tracking.mlflow import local_store
from thesis_lib.tracking_sync import sync_runs
from thesis_lib.train import fit

EXPERIMENT = "thesis-lib"


def _config(events, root: Path, *, epochs: int = 2, resume_from=None, report: bool = False, **tracking):
    return {
        "output_root": str(root / "outputs"),
        "run_name": "ml",
        "data": {"path": str(events), "batch_size": 128},
        "model": dict(TINY_MODEL),
        # sync points every 2 of the 7 batches: steps.csv has rows inside each epoch and at its end
        "trainer": {"epochs": epochs, "seed": 3, "sync_every_n_steps": 2,
                    "resume_from": None if resume_from is None else str(resume_from)},
        "telemetry": {"interval_s": 0.1},
        "report": {"enabled": report},
        "tracking": tracking,
    }


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    """test_train's data (1200 events, seed 0)."""
    return make_synthetic_events(tmp_path_factory.mktemp("data") / "events.h5", n_events=1200, seed=0, n_tokens=8)


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory) -> Path:
    """An empty sqlite store, its tables made once (copied where a test's store will be)."""
    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


def _seed_store(migrated_store: Path, output_root: Path) -> str:
    """The local store of `output_root` (tracking.mlflow_tracking_uri ""), from the migrated copy."""
    output_root.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_store, output_root / "mlflow.db")
    return local_store(output_root)[0]


@pytest.fixture(scope="module")
def untracked_run(events, tmp_path_factory):
    """A run trained without tracking (as every run before this feature); tests copy it before syncing."""
    result = fit(_config(events, tmp_path_factory.mktemp("untracked")), dashboard=None)
    assert result.status == "COMPLETED" and not (Path(result.run_dir) / TRACKING_FILE).exists()
    return Path(result.run_dir)


@pytest.fixture
def copied_run(untracked_run, tmp_path, migrated_store):
    """The untracked run under `<tmp_path>/outputs/runs/`, its output_root holding a (migrated) local store."""
    target = tmp_path / "outputs" / "runs" / untracked_run.name
    shutil.copytree(untracked_run, target)
    _seed_store(migrated_store, tmp_path / "outputs")
    return target


# --- reading back ---------------------------------------------------------------------------------

def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and math.isfinite(float(value))


def _expected(run_dir: Path) -> dict:
    """name -> {step: value} from the run's facts alone, by the naming base.py promises.

    A name's first value at a step: telemetry.csv can hold two rows at one `t` (a sampler that
    stalled, e.g. while the mirror's start imported mlflow, writes a catch-up row with an empty
    cpu_pct); the mirror sends one point per (name, step), the first.
    """
    expected: dict = {}

    def put(name, step, value):
        if _finite(value):
            expected.setdefault(name, {}).setdefault(int(step), float(value))

    for name, step, value in fact_points(run_dir):
        put(name, step, value)
    test = [e for e in read_events(run_dir) if e["moment"] == "on_test_end"][-1]
    for name, value in test["metrics"].items():
        put(f"test/{name}", test["epoch"], value)
    return expected


def _earlier_tests(run_dir: Path) -> dict:
    """name -> {step: value} of the on_test_end events before the last (a resumed run's earlier segments):
    a live mirror sent them as they came, a sync sends the last one only."""
    earlier: dict = {}
    for test in [e for e in read_events(run_dir) if e["moment"] == "on_test_end"][:-1]:
        for name, value in test["metrics"].items():
            if _finite(value):
                earlier.setdefault(f"test/{name}", {}).setdefault(int(test["epoch"]), float(value))
    return earlier


def _client(run_dir: Path) -> tuple[MlflowClient, dict]:
    ids = json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]
    return MlflowClient(tracking_uri=ids["tracking_uri"]), ids


def _runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], run_view_type=3)  # active and deleted


def _histories(client: MlflowClient, run_id: str) -> dict:
    """name -> [(step, value)] of every point the MLflow run holds, duplicates included."""
    run = client.get_run(run_id)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def _assert_mirrors_the_facts(run_dir: Path) -> None:
    """The MLflow run tracking.json names holds exactly the facts' numbers, once each, and the config."""
    client, ids = _client(run_dir)
    histories = _histories(client, ids["run_id"])
    for key, points in histories.items():
        steps = Counter(step for step, _ in points)
        assert max(steps.values()) == 1, f"{key} has duplicate steps {[s for s, n in steps.items() if n > 1]}"
    written = {key: dict(points) for key, points in histories.items()}
    expected = _expected(run_dir)
    assert {"train/loss", "val/loss", "train/loss_recon", "val/metric_perplex", "steps/loss", "steps/lr",
            "test/loss", "telemetry/cpu_pct", "telemetry/rss_mb"} <= set(expected)
    assert set(written) == set(expected)
    for key, points in _earlier_tests(run_dir).items():  # held (a live mirror) or not (a sync), but never other values
        for step, value in points.items():
            if step not in expected[key] and step in written[key]:
                expected[key][step] = value
    for key, points in expected.items():
        assert set(written[key]) == set(points), key
        for step, value in points.items():
            assert written[key][step] == pytest.approx(value, rel=1e-12, abs=1e-300), (key, step)
    n_epochs = len(read_scalars(run_dir).query("split == 'train'"))
    assert sorted(written["train/loss"]) == list(range(n_epochs))  # per epoch, from 0
    assert len(written["steps/loss"]) > 2 * n_epochs - 1  # sync points inside the epochs, not only their ends
    run = client.get_run(ids["run_id"])
    params = run.data.params
    config = flat_config(read_config(run_dir))
    changed = run.data.tags.get("thesis_lib.params_changed", "")
    for key, value in config.items():  # each key a param; a value the run changed since, in the tag
        assert params[key] == str(value) or f"{key}={value}" in changed, key
    starts = [e for e in read_events(run_dir) if e["moment"] == "on_start"]
    (end,) = [e for e in read_events(run_dir) if e["moment"] == "on_train_end"][-1:]
    tags = run.data.tags
    assert tags["mlflow.runName"] == tags["thesis_lib.run_id"] == run_dir.name
    assert tags["thesis_lib.run_dir"] == str(run_dir)
    # a resumed run's segments differ in config (trainer.epochs): the hash is one of them (live: the last; sync: the first)
    assert tags["thesis_lib.config_hash"] in {start["config_hash"] for start in starts}
    assert (tags["thesis_lib.status"], tags["thesis_lib.stop_reason"]) == (end["status"], end["stop_reason"])
    assert run.info.status == {"COMPLETED": "FINISHED", "STOPPED": "KILLED", "FAILED": "FAILED"}[end["status"]]
    assert run.info.run_name == run_dir.name and run.info.start_time <= run.info.end_time  # at the facts' times
    assert ids["experiment"] == EXPERIMENT and ids["experiment_id"] == run.info.experiment_id
    artifacts = {a.path for a in client.list_artifacts(ids["run_id"])}
    assert {"config.yaml", MODEL_FILE, MODEL_INFO_FILE, HISTORY_FILE} <= artifacts, artifacts
    stored = yaml.safe_load(Path(run.info.artifact_uri.removeprefix("file://"), "config.yaml").read_text())
    assert stored == config  # the whole flattened config, as the run has it now


# --- the live mirror -----------------------------------------------------------------------------

def test_a_tracked_run_mirrors_its_facts_to_mlflow(events, tmp_path):
    """A live run into the default local store (made fresh here): one MLflow run holding the facts, the report."""
    result = train(_config(events, tmp_path, report=True, backends=["mlflow"]), dashboard=None)
    run_dir, outputs = Path(result.run_dir), tmp_path / "outputs"
    assert result.status == "COMPLETED"
    ids = json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]
    assert ids["written_by"] == "live" and ids["facts_sha256"] is None
    assert ids["tracking_uri"] == f"sqlite:///{outputs.resolve() / 'mlflow.db'}" and len(ids["run_id"]) == 32
    client, _ = _client(run_dir)
    assert [r.info.run_id for r in _runs(client)] == [ids["run_id"]]
    _assert_mirrors_the_facts(run_dir)
    assert {a.path for a in client.list_artifacts(ids["run_id"], "report")} >= {"report/report.html", "report/report.md"}
    assert (outputs / "mlartifacts" / ids["run_id"] / "artifacts" / "report" / "report.html").is_file()
    assert not [e for e in read_events(run_dir) if e["moment"] == "on_incident"]


def test_a_resumed_run_and_a_later_sync_continue_the_one_mlflow_run(events, tmp_path, migrated_store, capsys):
    """Live, then resumed live (a terminated MLflow run running again), then synced: one run, no point twice."""
    _seed_store(migrated_store, tmp_path / "outputs")
    first = fit(_config(events, tmp_path, backends=["mlflow"]), dashboard=None)
    run_dir = Path(first.run_dir)
    client, ids = _client(run_dir)
    assert client.get_run(ids["run_id"]).info.status == "FINISHED"
    resumed = fit(_config(events, tmp_path, epochs=3, resume_from=run_dir, backends=["mlflow"]), dashboard=None)
    assert Path(resumed.run_dir) == run_dir and resumed.status == "COMPLETED"
    again = json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]
    assert again["run_id"] == ids["run_id"] and [r.info.run_id for r in _runs(client)] == [ids["run_id"]]
    run = client.get_run(ids["run_id"])
    assert run.data.params["trainer.epochs"] == "2" and "trainer.epochs=3" in run.data.tags["thesis_lib.params_changed"]
    assert run.data.tags["thesis_lib.resumed_from_epoch"] == "2"
    _assert_mirrors_the_facts(run_dir)
    live = _histories(client, ids["run_id"])

    assert main(["sync", str(tmp_path / "outputs"), "--to", "mlflow"]) == 0  # a directory holding runs
    assert f"{run_dir}: updated {ids['run_id']}" in capsys.readouterr().out
    synced = json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]
    assert synced["run_id"] == ids["run_id"] and synced["written_by"] == "sync"
    assert [r.info.run_id for r in _runs(client)] == [ids["run_id"]]
    assert _histories(client, ids["run_id"]) == live  # nothing was missing, nothing sent twice
    _assert_mirrors_the_facts(run_dir)


def test_an_unreachable_mlflow_server_costs_one_warning_and_the_run_completes(events, tmp_path):
    """MLflow's own retries (about 4 minutes) are not waited for: the server is asked once at the start."""
    from thesis_lib.tracking import TrackingWarning

    started = time.monotonic()
    with pytest.warns(TrackingWarning) as warned:
        result = fit(_config(events, tmp_path, backends=["mlflow"], mlflow_tracking_uri="http://127.0.0.1:9"),
                     dashboard=None)
    assert time.monotonic() - started < 60
    assert result.status == "COMPLETED" and result.stop_reason == "max_epochs"
    tracking_warnings = [w for w in warned if issubclass(w.category, TrackingWarning)]
    assert len(tracking_warnings) == 1 and str(tracking_warnings[0].message).startswith("mlflow start failed")
    incidents = [e for e in read_events(result.run_dir) if e["moment"] == "on_incident"]
    assert [e["part"] for e in incidents] == ["tracking"]
    assert "mlflow" in incidents[0]["message"] and "127.0.0.1:9" in incidents[0]["message"]
    assert [e["moment"] for e in read_events(result.run_dir)].count("on_epoch_end") == 2
    assert "mlflow" not in read_tracking_ids(result.run_dir)  # no MLflow run was made: none recorded
    assert (Path(result.run_dir) / "model.pt").is_file()


def test_a_store_failing_mid_run_is_switched_off_and_a_sync_completes_its_run(events, tmp_path, migrated_store,
                                                                             monkeypatch, capsys):
    from thesis_lib.tracking import TrackingWarning

    _seed_store(migrated_store, tmp_path / "outputs")
    original = MlflowClient.log_batch
    calls = []

    def full_disk(self, run_id, metrics=(), *args, **kwargs):
        if metrics:
            calls.append(len(metrics))
            raise OSError(28, "No space left on device")
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", full_disk)
    with pytest.warns(TrackingWarning) as warned:
        result = fit(_config(events, tmp_path, backends=["mlflow"]), dashboard=None)
    monkeypatch.setattr(MlflowClient, "log_batch", original)
    run_dir = Path(result.run_dir)
    assert result.status == "COMPLETED"
    assert len([w for w in warned if issubclass(w.category, TrackingWarning)]) == 1
    assert len(calls) == 1  # switched off after its first failure: nothing more is sent, not even by its close
    incidents = [e for e in read_events(run_dir) if e["moment"] == "on_incident"]
    assert [e["part"] for e in incidents] == ["tracking"] and incidents[0]["message"].startswith("mlflow epoch failed")
    client, ids = _client(run_dir)  # recorded at its start: the sync continues that run
    assert client.get_run(ids["run_id"]).info.status == "RUNNING" and not client.get_run(ids["run_id"]).data.metrics

    assert main(["sync", str(run_dir), "--to", "mlflow"]) == 0
    assert f"{run_dir}: updated {ids['run_id']}" in capsys.readouterr().out
    assert [r.info.run_id for r in _runs(client)] == [ids["run_id"]]
    _assert_mirrors_the_facts(run_dir)


# --- thesis-lib sync ------------------------------------------------------------------------------

def test_sync_writes_once_then_is_up_to_date_then_updates_the_same_run(events, copied_run, capsys):
    results = sync_runs(copied_run, "mlflow", echo=None)
    assert [r.action for r in results] == ["wrote"]
    client, ids = _client(copied_run)
    assert results[0].logdir == ids["run_id"] and ids["written_by"] == "sync" and len(ids["facts_sha256"]) == 64
    assert ids["tracking_uri"] == local_store(copied_run.parent.parent)[0]
    _assert_mirrors_the_facts(copied_run)
    first = _histories(client, ids["run_id"])

    assert [r.action for r in sync_runs(copied_run, "mlflow", echo=None)] == ["up to date"]
    assert [r.info.run_id for r in _runs(client)] == [ids["run_id"]] and _histories(client, ids["run_id"]) == first

    # the run goes on (resumed for a third epoch, untracked), its facts grow: the sync adds what is new
    resumed = fit(_config(events, copied_run.parent.parent.parent, epochs=3, resume_from=copied_run), dashboard=None)
    assert Path(resumed.run_dir) == copied_run and resumed.epochs_completed == 3
    assert [r.action for r in sync_runs(copied_run, "mlflow", echo=None)] == ["updated"]
    assert [r.info.run_id for r in _runs(client)] == [ids["run_id"]]
    after = _histories(client, ids["run_id"])
    assert all(set(points) <= set(after[key]) for key, points in first.items())  # what was there stays
    assert sorted(step for step, _ in after["val/loss"]) == [0, 1, 2]
    _assert_mirrors_the_facts(copied_run)  # and nothing twice


def test_a_recorded_run_missing_from_its_store_gets_a_new_one_and_the_recorded_store_wins(copied_run, tmp_path):
    store = local_store(copied_run.parent.parent)[0]
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # a --mlflow-uri that is not where the run is
    previous = {"run_id": "0" * 32, "tracking_uri": store, "experiment": EXPERIMENT}
    mirror = make_mirror("mlflow", run_dir=copied_run, run_id=copied_run.name,
                         settings={"mlflow_tracking_uri": elsewhere}, previous=previous)
    assert mirror.tracking_uri == store
    assert sync_runs(copied_run, "mlflow", echo=None)[0].action == "wrote"  # nothing recorded yet: a new run
    ids = _client(copied_run)[1]
    recorded = make_mirror("mlflow", run_dir=copied_run, run_id=copied_run.name,
                           settings={"mlflow_tracking_uri": elsewhere}, previous=ids)
    assert recorded.tracking_uri == store  # the run lives there
    gone = make_mirror("mlflow", run_dir=copied_run, run_id=copied_run.name, settings={}, previous=previous)
    gone.start(flat_config(read_config(copied_run)), _run_info(copied_run))
    gone.close({})
    assert gone.ids()["run_id"] not in (None, previous["run_id"], ids["run_id"])
    assert not (tmp_path / "elsewhere.db").exists()


def test_a_long_value_is_cut_as_a_param_whole_in_config_yaml_and_a_relative_store_is_recorded_absolute(
        tmp_path, migrated_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(migrated_store, tmp_path / "rel.db")
    run_dir = tmp_path / "outputs" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    config = {"data.path": "x" * 7000, "model.encoder": "mlp", "optim.lr": 0.001}
    mirror = make_mirror("mlflow", run_dir=run_dir, run_id="r1", settings={"mlflow_tracking_uri": "sqlite:///rel.db"})
    mirror.start(config, _run_info(run_dir))
    mirror.close({})
    ids = mirror.ids()
    assert ids["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    run = client.get_run(ids["run_id"])
    assert run.data.params["optim.lr"] == "0.001" and len(run.data.params["data.path"]) == 6000
    assert run.data.tags["thesis_lib.params_truncated"].startswith("data.path ")
    stored = yaml.safe_load(Path(run.info.artifact_uri.removeprefix("file://"), "config.yaml").read_text())
    assert stored == config


def _run_info(run_dir: Path):
    from thesis_lib.tracking import RunInfo

    return RunInfo(run_id=run_dir.name, run_dir=run_dir, origin=0.0)


def test_the_sync_command_with_an_mlflow_uri_and_a_dry_run(copied_run, tmp_path, migrated_store, capsys):
    database = tmp_path / "server" / "store.db"
    uri = f"sqlite:///{database}"
    before = sorted(p.relative_to(copied_run) for p in copied_run.rglob("*"))
    assert main(["sync", str(copied_run.parent.parent), "--to", "mlflow", "--mlflow-uri", uri, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[dry run] {copied_run}: would write" in out and "4 scalars rows" in out and "config keys" in out
    assert sorted(p.relative_to(copied_run) for p in copied_run.rglob("*")) == before and not database.parent.exists()

    database.parent.mkdir()
    shutil.copy(migrated_store, database)  # as a store made before (its tables made: the test saves the seconds)

    assert main(["sync", str(copied_run.parent.parent), "--to", "mlflow", "--mlflow-uri", uri,
                 "--mlflow-experiment", EXPERIMENT]) == 0
    client, ids = _client(copied_run)
    assert f"{copied_run}: wrote {ids['run_id']}" in capsys.readouterr().out
    assert ids["tracking_uri"] == uri and [r.info.run_id for r in _runs(client)] == [ids["run_id"]]
    _assert_mirrors_the_facts(copied_run)
    # a sqlite store's artifacts lie beside it, not in the working directory's ./mlruns
    assert (database.parent / "mlartifacts" / ids["run_id"] / "artifacts" / MODEL_FILE).is_file()
    assert not Path("mlruns").exists()
    assert main(["sync", str(copied_run), "--to", "mlflow", "--mlflow-uri", uri, "--dry-run"]) == 0
    assert "up to date" in capsys.readouterr().out
