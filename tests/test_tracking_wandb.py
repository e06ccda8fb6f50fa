"""W&B tracking: a live mirror and `thesis-lib sync`, read back from W&B's own transaction log, offline.

Real wandb in offline mode (nothing can go online: WANDB_MODE=offline, a base URL nobody listens
on, every W&B directory under the test's tmp path). wandb 0.31 ships no Python reader of its `.wandb`
run file (the Go core reads it), so `_read_run` reads it here: W&B's LevelDB-log framing (a
`:W&B` header, 32 KiB blocks, crc32-checked chunks) around `wandb.proto.wandb_internal_pb2.Record`
messages, W&B's own record type. Every scalars.csv, steps.csv and telemetry.csv number is compared
with the history rows, at its x axis, to float32 precision.

W&B's cost here (2 cores): `import wandb` ~1 s; the first run in a process also starts the wandb-core
service (its start ~1.9 s in all), each later run's start 0.03-0.08 s and close 0.02-0.06 s. The whole
file: ~20-30 s.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import shutil
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_train import TINY_MODEL

from thesis_lib import train
from thesis_lib.cli import main
from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import (
    read_config,
    read_events,
    read_scalars,
    read_steps,
    read_telemetry,
)
from thesis_lib.layout import TRACKING_FILE
from thesis_lib.tracking import TrackingWarning, flat_config
from thesis_lib.tracking.wandb import (
    EPOCH_AXIS,
    STEP_AXIS,
    TELEMETRY_AXIS,
    wandb_run_id,
)
from thesis_lib.tracking_sync import sync_runs
from thesis_lib.train import fit

pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """The synthetic data of test_train's tiny runs."""
    return make_synthetic_events(tmp_path_factory.mktemp("data") / "events.h5", n_events=1200, seed=0, n_tokens=8)


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """Every W&B directory under tmp, offline, quiet, nothing that could reach a server."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                            "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off", "WANDB_BASE_URL": "http://127.0.0.1:9",
                            "WANDB_DIR": str(home / "dir"), "WANDB_CACHE_DIR": str(home / "cache"),
                            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_DATA_DIR": str(home / "data"),
                            "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
                            "NETRC": str(home / "no-netrc")}.items():  # no credentials: online mode cannot start
            patch.setenv(name, value)
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
            patch.delenv(name, raising=False)
        yield home


def _config(events, root: Path, *, epochs: int = 2, **tracking):
    return {
        "output_root": str(root / "outputs"),
        "run_name": "wb",
        "data": {"path": str(events), "batch_size": 128},
        "model": dict(TINY_MODEL),
        # sync points every 2 of the 7 batches: steps.csv has rows inside each epoch and at its end
        "trainer": {"epochs": epochs, "seed": 3, "sync_every_n_steps": 2},
        "telemetry": {"interval_s": 0.1},
        "report": {"enabled": False},
        "tracking": tracking,
    }


@pytest.fixture(scope="module")
def untracked_run(events, tmp_path_factory):
    """A run trained without tracking (as every run before this feature); tests copy it before syncing."""
    result = fit(_config(events, tmp_path_factory.mktemp("untracked")), dashboard=None)
    assert result.status == "COMPLETED" and not (Path(result.run_dir) / TRACKING_FILE).exists()
    return Path(result.run_dir)


@pytest.fixture
def copied_run(untracked_run, tmp_path):
    target = tmp_path / "outputs" / "runs" / untracked_run.name
    shutil.copytree(untracked_run, target)
    return target


# --- W&B's transaction log, read back ---------------------------------------------------------------

_BLOCK = 32 * 1024
_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # ident, magic, version 0


def _records(path: Path):
    """The `Record`s of a .wandb file: LevelDB-log chunks (crc32 of type + data, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    assert data[:7] == _HEADER, data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad chunk at {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _read_run(offline_dir: Path) -> dict:
    """One offline run directory: its run record(s), config, history rows, summary, metrics, artifacts, exit."""
    (path,) = Path(offline_dir).glob("run-*.wandb")
    out = {"runs": [], "config": {}, "history": [], "summary": {}, "metrics": [], "artifacts": [], "exit": None}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["runs"].append(record.run)
            out["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            out["config"].update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            out["history"].append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "metric":
            out["metrics"].append(record.metric)
        elif kind == "artifact":
            out["artifacts"].append(record.artifact)
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


def _offline_dirs(run_dir: Path) -> list[Path]:
    ids = json.loads((run_dir / TRACKING_FILE).read_text())["wandb"]
    return [run_dir / d for d in ids["dirs"]]


# --- what the facts say ---------------------------------------------------------------------------

_AXIS_OF = {"train": EPOCH_AXIS, "val": EPOCH_AXIS, "steps": STEP_AXIS, "telemetry": TELEMETRY_AXIS}


def _f32(value: float) -> float:
    return float(np.float32(value))


def _expected(run_dir: Path) -> Counter:
    """The (metric, x, float32 value) of every number of the run's facts, by the names base.py gives every
    tracker (a multiset: the telemetry sampler may write two rows at the same millisecond)."""
    expected: Counter = Counter()

    def put(tag, x, value):
        if value is not None and math.isfinite(float(value)):
            expected[(tag, x, _f32(value))] += 1

    for row in read_scalars(run_dir).to_dict("records"):
        for column, value in row.items():
            if column not in ("epoch", "split", "train_loss", "val_loss"):
                put(f"{row['split']}/{column}", int(row["epoch"]), value)
    for row in read_steps(run_dir).to_dict("records"):
        put("steps/loss", int(row["step"]), row["loss"])
        put("steps/lr", int(row["step"]), row["lr"])
    for row in read_telemetry(run_dir).to_dict("records"):
        for column, value in row.items():
            if column != "t":
                put(f"telemetry/{column}", round(float(row["t"]), 6), value)
    return expected


def _written(history: list[dict]) -> Counter:
    """The (metric, x, float32 value) of the history rows, each metric at its own axis' value in its row."""
    points: Counter = Counter()
    for row in history:
        for key, value in row.items():
            if key.startswith("_") or key in _AXIS_OF.values():
                continue
            axis = _AXIS_OF[key.split("/")[0]]
            assert axis in row, (key, row)
            x = round(float(row[axis]), 6) if axis == TELEMETRY_AXIS else int(row[axis])
            points[(key, x, _f32(value))] += 1
    return points


def _assert_history_is_the_facts(run_dir: Path, history: list[dict]) -> None:
    """Each number of the facts as often as the facts hold it (once), at its x, in the history rows of the
    W&B run's segments together."""
    expected, written = _expected(run_dir), _written(history)
    assert {"train/loss", "val/loss", "train/loss_recon", "val/metric_perplex", "steps/loss", "steps/lr",
            "telemetry/cpu_pct", "telemetry/rss_mb"} <= {tag for tag, _, _ in expected}
    assert written - expected == Counter(), "sent more often than the facts hold it, or not in the facts"
    assert expected - written == Counter(), "in the facts, not sent"
    steps = [row["_step"] for row in history]
    assert steps == list(range(len(steps))), "W&B's history step increases, a later segment's continuing"
    # each row at the wall time of its fact: the run's origin + t (checked in the first segment: a sync
    # places a resumed segment's rows by the first on_start's origin too, a live mirror by its own)
    starts = [e for e in read_events(run_dir) if e["moment"] == "on_start"]
    origin = datetime.datetime.fromisoformat(starts[0]["time"]).timestamp() - starts[0]["t"]
    first_segment_end = starts[1]["t"] if len(starts) > 1 else math.inf
    walltimes = {row[STEP_AXIS]: row["_timestamp"] for row in history if STEP_AXIS in row}
    for row in read_steps(run_dir).to_dict("records"):
        if row["t"] < first_segment_end:
            assert walltimes[int(row["step"])] == pytest.approx(origin + row["t"], abs=0.01)
    assert len([k for k in expected if k[0] == "steps/loss"]) > 2  # sync points inside the epochs too


def _assert_the_rest(run_dir: Path, wb: dict, *, status: str = "COMPLETED", exit_code: int = 0) -> None:
    start = next(e for e in read_events(run_dir) if e["moment"] == "on_start")
    flat = flat_config(read_config(run_dir))
    assert wb["config"]["model"]["vq"]["codebook_size"] == 16  # nested: W&B filters and groups by model.vq...
    config = _flatten(wb["config"])
    for key, value in flat.items():  # every raw key, nested by its dotted name: W&B shows model.encoder, ...
        assert config[key] == value, key
    assert {"encoder": "mlp", "bottleneck": "vq", "lr": 1e-3, "seed": 3, "dataset": "events",
            "config_hash": start["config_hash"]}.items() <= config.items()
    test = [e for e in read_events(run_dir) if e["moment"] == "on_test_end"][-1]
    for name, value in test["metrics"].items():
        if value is not None and math.isfinite(value):
            assert _f32(wb["summary"][f"test/{name}"]) == _f32(value), name
    assert wb["summary"]["best_epoch"] == test["epoch"]
    assert wb["summary"]["status"] == status and wb["summary"]["stop_reason"] == "max_epochs"
    assert wb["exit"] == exit_code
    run = wb["runs"][-1]
    assert run.display_name == run_dir.name and run.run_id == wandb_run_id(run_dir.name)
    assert status.lower() in run.tags and "thesis-lib" in run.tags
    axes = {m.glob_name: m.step_metric for m in wb["metrics"] if m.glob_name}
    assert axes == {"train/*": EPOCH_AXIS, "val/*": EPOCH_AXIS, "steps/*": STEP_AXIS, "telemetry/*": TELEMETRY_AXIS}


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


# --- the live mirror -----------------------------------------------------------------------------

def test_a_tracked_run_mirrors_its_facts_to_wandb(events, tmp_path, capsys):
    cfg = _config(events, tmp_path, backends=["wandb"])
    cfg["report"] = {"enabled": True}  # the report renders before the trackers close: it goes up as an artifact
    hooks = (sys.exit, sys.excepthook)
    result = train(cfg, dashboard=None)
    assert (sys.exit, sys.excepthook) == hooks  # wandb.init's exit hooks are taken back after its finish
    run_dir = Path(result.run_dir)
    assert result.status == "COMPLETED"
    ids = json.loads((run_dir / TRACKING_FILE).read_text())["wandb"]
    assert ids["run_id"] == wandb_run_id(run_dir.name) and ids["written_by"] == "live"
    assert ids["mode"] == "offline" and ids["project"] == "thesis-lib" and ids["logdir"] == "wandb"
    (offline,) = _offline_dirs(run_dir)
    assert offline.parent == run_dir / "wandb" and offline.name.startswith("offline-run-")
    assert [p.name for p in (run_dir / "wandb").iterdir()] == [offline.name]  # no latest-run, debug.log links
    wb = _read_run(offline)
    _assert_history_is_the_facts(run_dir, wb["history"])
    _assert_the_rest(run_dir, wb)
    files = {a.type: {c.path: c for c in a.manifest.contents} for a in wb["artifacts"]}
    assert set(files) == {"model", "report"}
    assert {"model.pt", "model_info.json"} <= set(files["model"]) and "report/report.html" in files["report"]
    for kind, name in (("model", "model.pt"), ("report", "report/report.html")):
        entry = files[kind][name]
        assert entry.digest == _md5(run_dir / name) and Path(entry.local_path).is_relative_to(offline)
    assert not [e for e in read_events(run_dir) if e["moment"] == "on_incident"]
    # the marks say what was sent, for a later sync: the last epoch of each split, step, telemetry t
    assert ids["sent"]["epochs"] == {"train": 1, "val": 1} and ids["sent"]["history_step"] == len(wb["history"])
    assert ids["sent"]["last_step"] == int(read_steps(run_dir)["step"].max())

    # a sync of what the live mirror sent whole: nothing new, so no W&B segment is opened
    capsys.readouterr()
    assert main(["sync", str(run_dir), "--to", "wandb"]) == 0
    assert f"{run_dir}: updated {ids['run_id']}" in capsys.readouterr().out
    assert _offline_dirs(run_dir) == [offline] and len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert json.loads((run_dir / TRACKING_FILE).read_text())["wandb"]["written_by"] == "sync"
    assert main(["sync", str(run_dir), "--to", "wandb"]) == 0
    assert f"{run_dir}: up to date {ids['run_id']}" in capsys.readouterr().out


def test_a_resumed_tracked_run_continues_its_wandb_run(events, tmp_path):
    first = fit(_config(events, tmp_path, backends=["wandb"]), dashboard=None)
    run_dir = Path(first.run_dir)
    cfg = _config(events, tmp_path, epochs=3, backends=["wandb"])
    cfg["trainer"]["resume_from"] = str(run_dir)
    resumed = fit(cfg, dashboard=None)
    assert Path(resumed.run_dir) == run_dir and resumed.status == "COMPLETED"
    ids = json.loads((run_dir / TRACKING_FILE).read_text())["wandb"]
    assert ids["run_id"] == wandb_run_id(run_dir.name) and ids["sent"]["epochs"] == {"train": 2, "val": 2}
    segments = [_read_run(d) for d in _offline_dirs(run_dir)]
    assert len(segments) == 2 and {s["runs"][0].run_id for s in segments} == {ids["run_id"]}
    history = segments[0]["history"] + segments[1]["history"]
    _assert_history_is_the_facts(run_dir, history)
    assert [s["exit"] for s in segments] == [0, 0]


@pytest.mark.parametrize("where", ["log", "init"])
def test_a_failing_wandb_warns_once_is_recorded_and_the_run_completes(events, tmp_path, monkeypatch, where):
    import wandb
    from wandb.sdk.wandb_run import Run

    calls = []

    def broken(*args, **kwargs):
        calls.append(where)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(*((Run, "log", broken) if where == "log" else (wandb, "init", broken)))
    with pytest.warns(TrackingWarning) as warned:
        result = fit(_config(events, tmp_path, backends=["wandb"]), dashboard=None)
    assert result.status == "COMPLETED" and result.stop_reason == "max_epochs"
    tracking_warnings = [w for w in warned if issubclass(w.category, TrackingWarning)]
    assert len(tracking_warnings) == 1 and "No space left on device" in str(tracking_warnings[0].message)
    assert calls == [where]  # switched off after its first failure
    incidents = [e for e in read_events(result.run_dir) if e["moment"] == "on_incident"]
    assert [e["part"] for e in incidents] == ["tracking"]
    assert incidents[0]["error_type"] == "OSError" and "wandb" in incidents[0]["message"]
    assert "thesis-lib sync" in incidents[0]["message"]
    assert [e["moment"] for e in read_events(result.run_dir)].count("on_epoch_end") == 2
    if where == "log":  # the W&B run it had opened was ended, as failed
        (offline,) = _offline_dirs(Path(result.run_dir))
        assert _read_run(offline)["exit"] == 1


def test_online_without_credentials_fails_at_start_without_asking(events, tmp_path):
    with pytest.warns(TrackingWarning) as warned:
        result = fit(_config(events, tmp_path, backends=["wandb"], wandb_mode="online"), dashboard=None)
    assert result.status == "COMPLETED"
    (warning,) = [w for w in warned if issubclass(w.category, TrackingWarning)]
    assert "wandb start failed" in str(warning.message) and "wandb login" in str(warning.message)
    assert "tracking.wandb_mode=offline" in str(warning.message)
    assert not (Path(result.run_dir) / "wandb").exists()


# --- thesis-lib sync ------------------------------------------------------------------------------

def test_sync_writes_updates_and_never_duplicates(copied_run, events):
    telemetry = copied_run / "facts" / "telemetry.csv"  # the sampler may write two rows in one millisecond
    last = telemetry.read_text().splitlines()[-1].split(",")
    with open(telemetry, "a", encoding="utf-8") as handle:
        handle.write(",".join([last[0], *[""] * (len(last) - 2), last[-1]]) + "\n")
    (result,) = sync_runs(copied_run, "wandb", echo=None)
    assert result.action == "wrote" and result.logdir == wandb_run_id(copied_run.name)
    ids = json.loads((copied_run / TRACKING_FILE).read_text())["wandb"]
    assert ids["written_by"] == "sync" and len(ids["facts_sha256"]) == 64
    (first,) = _offline_dirs(copied_run)
    wb = _read_run(first)
    _assert_history_is_the_facts(copied_run, wb["history"])
    _assert_the_rest(copied_run, wb)
    assert {a.type for a in wb["artifacts"]} == {"model"}  # fit() renders no report

    (again,) = sync_runs(copied_run, "wandb", echo=None)
    assert again.action == "up to date"
    assert len(list((copied_run / "wandb").glob("offline-run-*"))) == 1

    # more facts: the run resumed for two more epochs (untracked), then synced again
    cfg = _config(events, copied_run.parent.parent.parent, epochs=4)
    cfg["trainer"]["resume_from"] = str(copied_run)
    resumed = fit(cfg, dashboard=None)
    assert Path(resumed.run_dir) == copied_run and resumed.epochs_completed == 4
    (updated,) = sync_runs(copied_run, "wandb", echo=None)
    assert updated.action == "updated" and updated.logdir == wandb_run_id(copied_run.name)
    dirs = _offline_dirs(copied_run)
    assert len(dirs) == 2 and dirs[0] == first
    second = _read_run(dirs[1])
    assert second["runs"][0].run_id == wandb_run_id(copied_run.name)
    epochs = sorted(row[EPOCH_AXIS] for row in second["history"] if "train/loss" in row)
    assert epochs == [2, 3]  # only what the first segment lacked
    _assert_history_is_the_facts(copied_run, wb["history"] + second["history"])  # each (metric, x) once
    assert second["summary"]["best_epoch"] == [e for e in read_events(copied_run) if e["moment"] == "on_test_end"][-1]["epoch"]
    assert second["exit"] == 0
    (model,) = [a for a in second["artifacts"] if a.type == "model"]  # the new model.pt, a new version
    assert {c.path: c.digest for c in model.manifest.contents}["model.pt"] == _md5(copied_run / "model.pt")


def test_the_cli_syncs_to_a_project_and_dir_and_dry_runs(copied_run, tmp_path, capsys):
    before = sorted(p.relative_to(copied_run) for p in copied_run.rglob("*"))
    shared = tmp_path / "shared_wandb"
    args = ["sync", str(copied_run), "--to", "wandb", "--wandb-project", "p", "--wandb-dir", str(shared)]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[dry run] {copied_run}: would write" in out and "4 scalars rows" in out and "config keys" in out
    assert sorted(p.relative_to(copied_run) for p in copied_run.rglob("*")) == before and not shared.exists()

    assert main(args) == 0
    assert f"{copied_run}: wrote {wandb_run_id(copied_run.name)}" in capsys.readouterr().out
    ids = json.loads((copied_run / TRACKING_FILE).read_text())["wandb"]
    assert ids["project"] == "p" and ids["logdir"] == str((shared / "wandb").resolve())
    (offline,) = [Path(d) for d in ids["dirs"]]
    assert offline.parent == (shared / "wandb").resolve() and not (copied_run / "wandb").exists()
    wb = _read_run(offline)
    assert wb["runs"][0].project == "p"
    _assert_history_is_the_facts(copied_run, wb["history"])
    assert main([*args, "--dry-run"]) == 0 and "up to date" in capsys.readouterr().out


def test_the_wandb_run_id_is_the_run_ids_and_valid():
    ident = wandb_run_id("run_20260101-120000_wb_ab12")
    assert ident == wandb_run_id("run_20260101-120000_wb_ab12") != wandb_run_id("run_20260101-120000_wb_ab13")
    assert ident.startswith("run_20260101-120000_wb_ab12-")
    odd = wandb_run_id("a/b:c#d?" + "x" * 100)
    assert len(odd) <= 57 and not set(odd) & set(":;,#?/'")


def test_without_the_wandb_package_the_mirror_says_how_to_install_it(tmp_path, monkeypatch):
    from thesis_lib.tracking import RunInfo, make_mirror

    mirror = make_mirror("wandb", run_dir=tmp_path, run_id="r")  # the module imports no wandb
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'thesis-lib\[tracking\]'"):
        mirror.start({}, RunInfo(run_id="r", run_dir=tmp_path, origin=0.0))
