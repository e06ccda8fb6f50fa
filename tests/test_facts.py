"""The run-directory contract: RunWriter writes it, the readers read it back honestly."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from thesis_lib.errors import FactsError, NoValidRunsError, SchemaVersionError
from thesis_lib.record.schema import MOMENTS, SCHEMA_VERSION, TAIL_SCALAR_COLUMNS, config_hash, scalar_columns
from thesis_lib.record.writer import RunWriter
from thesis_lib.atomic_files import atomic_open, atomic_write_text
from thesis_lib.record.env import collect_env
from thesis_lib.layout import create_run_dir
from thesis_lib.facts import discover_runs, load_runs, read_events, read_scalars, run_status
from thesis_lib import layout as run_dir_module

COLUMNS = scalar_columns(["loss", "loss_recon", "metric_perplex"])
CONFIG = {
    "run_name": "unit",
    "data": {"path": "data/events.h5", "batch_size": 4},
    "model": {"task": "autoencoder", "encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "freeze": []},
    "optim": {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999]},
    "trainer": {"seed": 3, "epochs": 3},
}


def write_run(root, name="unit", val_losses=(1.0, 0.5, 0.7), *, seed=3, end=True, pid=None, host=None):
    """A complete run directory written through RunWriter; returns its path."""
    config = {**CONFIG, "trainer": {**CONFIG["trainer"], "seed": seed}}
    run_dir, run_id = create_run_dir(root, name)
    with RunWriter(run_dir, run_id, COLUMNS) as writer:
        writer.write_config(config)
        writer.write_env({"host": socket.gethostname(), "pid": os.getpid()})
        writer.event(
            "on_start",
            config_hash=config_hash(config),
            params={"total": 100, "trainable": 80},
            pid=os.getpid() if pid is None else pid,
            host=host or socket.gethostname(),
            resumed_from_epoch=None,
            scalar_columns=list(COLUMNS),
        )
        for epoch, val_loss in enumerate(val_losses):
            step = 10 * (epoch + 1)
            writer.scalars({"epoch": epoch, "split": "train", "step": step, "loss": val_loss + 0.1,
                            "lr": 1e-3, "samples": 64, "epoch_time_s": 0.5, "throughput": 100.0 * (epoch + 1)})
            writer.scalars({"epoch": epoch, "split": "val", "step": step, "loss": val_loss,
                            "loss_recon": val_loss / 2, "metric_perplex": 10.0 + epoch})
            writer.event("on_epoch_end", epoch=epoch, step=step, train={"loss": val_loss + 0.1},
                         val={"loss": val_loss}, lr=1e-3, epoch_time_s=0.5, samples=64, throughput=128.0)
            writer.flush()
        if end:
            writer.event("on_train_end", status="COMPLETED", stop_reason="max_epochs", best_epoch=1,
                         best_val_loss=0.5, epochs_completed=len(val_losses), steps=30, samples=192,
                         total_time_s=12.5)
            writer.event("on_test_end", metrics={"loss": 0.55, "metric_perplex": 11.0})
    return run_dir


def test_load_runs_summarises_a_completed_run(tmp_path):
    run_dir = write_run(tmp_path)
    runs_df, per_epoch, order = load_runs(run_dirs=[run_dir])

    assert order == [str(run_dir)]
    row = runs_df.iloc[0]
    assert row["run_id"] == run_dir.name
    assert (row["status"], row["stop_reason"]) == ("COMPLETED", "max_epochs")
    assert (row["task"], row["encoder"], row["tokenizer"]) == ("autoencoder", "mlp", "vq")
    assert (row["seed"], row["latent_dim"]) == (3, 8)
    assert row["epochs"] == 3
    assert row["best_epoch"] == 1
    assert row["loss.total_best"] == pytest.approx(0.5)
    assert row["loss.total_final"] == pytest.approx(0.7)
    assert row["loss.recon_best"] == pytest.approx(0.25)
    assert row["metric_perplex_final"] == pytest.approx(12.0)
    assert row["throughput_mean"] == pytest.approx(200.0)
    assert row["total_time_s"] == pytest.approx(12.5)
    assert (row["params_total"], row["params_trainable"]) == (100, 80)
    assert row["config_hash"] == config_hash(CONFIG)
    assert row["test.loss"] == pytest.approx(0.55)
    assert row["test.metric_perplex"] == pytest.approx(11.0)
    assert row["model.bottleneck"] == "vq"
    assert row["trainer.seed"] == 3
    assert row["data.path"] == "data/events.h5"
    assert row["optim.betas"] == "[0.9, 0.999]"
    assert row["model.freeze"] == "[]"

    frame = per_epoch[str(run_dir)]
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert frame["split"].tolist() == ["train", "val"] * 3
    assert frame["val_loss"].dropna().tolist() == pytest.approx([1.0, 0.5, 0.7])
    assert frame["train_loss"].dropna().tolist() == pytest.approx([1.1, 0.6, 0.8])


def test_a_run_without_scalars_loads_with_an_empty_per_epoch_table(tmp_path):
    run_dir = write_run(tmp_path, end=False)
    (run_dir / "facts" / "scalars.csv").unlink()
    runs_df, per_epoch, _ = load_runs(run_dirs=[run_dir])
    frame = per_epoch[str(run_dir)]
    assert len(frame) == 0 and list(frame.columns) == [*COLUMNS, "train_loss", "val_loss"]
    assert runs_df.loc[0, "epochs"] == 0 and math.isnan(runs_df.loc[0, "loss.total_best"])
    assert runs_df.loc[0, "status"] == "RUNNING"


def test_events_carry_the_schema_fields_and_plain_json_values(tmp_path):
    run_dir, run_id = create_run_dir(tmp_path, "ev")
    with RunWriter(run_dir, run_id, COLUMNS, start_time=0.0) as writer:
        written = writer.event("on_exception", error_type="NonFiniteLossError", message="nan",
                               traceback=["a"], loss=float("nan"), step=np.int64(7), grad=np.float32(0.5))
    (event,) = read_events(run_dir)
    assert event == written
    assert (event["schema_version"], event["moment"], event["run_id"]) == (SCHEMA_VERSION, "on_exception", run_id)
    assert event["time"].endswith("+00:00")
    assert event["t"] > 1e9  # start_time=0.0 is the epoch, so t counts from 1970
    assert event["loss"] is None and event["step"] == 7 and event["grad"] == 0.5
    line = (run_dir / "facts" / "events.jsonl").read_text()
    assert "NaN" not in line and line.count("\n") == 1


def test_torn_last_lines_are_skipped_with_a_warning(tmp_path):
    run_dir = write_run(tmp_path)
    events_path, scalars_path = run_dir / "facts" / "events.jsonl", run_dir / "facts" / "scalars.csv"
    with open(events_path, "ab") as handle:
        handle.write(b'{"schema_version": 1, "moment": "on_ep')
    with open(scalars_path, "ab") as handle:
        handle.write(b"3,train,40,1.")

    with pytest.warns(UserWarning, match=r"events\.jsonl: skipped 1 torn last line"):
        events = read_events(run_dir)
    assert [e["moment"] for e in events][-2:] == ["on_train_end", "on_test_end"]
    with pytest.warns(UserWarning, match=r"scalars\.csv: skipped 1 torn last line"):
        frame = read_scalars(run_dir)
    assert frame["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.warns(UserWarning, match=r"skipped 1 torn last line in each of 2 files"):
        runs_df, _, _ = load_runs(run_dirs=[run_dir])
    assert runs_df.loc[0, "loss.total_best"] == pytest.approx(0.5)


def test_invalid_line_in_the_middle_names_file_and_line(tmp_path):
    run_dir = write_run(tmp_path)
    path = run_dir / "facts" / "events.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ["{broken\n"] + lines[2:]))
    with pytest.warns(UserWarning, match=r"events\.jsonl: skipped 1 bad line .*line 3 \(not a JSON object"):
        events = read_events(run_dir)
    assert len(events) == len(lines)  # every other line kept


def test_newer_schema_is_refused_with_its_version(tmp_path):
    run_dir = write_run(tmp_path)
    with open(run_dir / "facts" / "events.jsonl", "a") as handle:
        handle.write(json.dumps({"schema_version": SCHEMA_VERSION + 1, "moment": "on_start"}) + "\n")
    expected = (f"schema_version {SCHEMA_VERSION + 1} is newer than this thesis-lib reads ({SCHEMA_VERSION}); "
                "upgrade thesis-lib to read it")
    with pytest.raises(SchemaVersionError, match=re.escape(expected)):
        read_events(run_dir)
    with pytest.raises(NoValidRunsError) as caught:
        load_runs(run_dirs=[run_dir])
    assert expected in str(caught.value)


def test_no_valid_runs_lists_every_candidate_with_its_reason(tmp_path):
    no_config = write_run(tmp_path, "noconfig")
    (no_config / "config.yaml").unlink()
    no_events = tmp_path / "runs" / "no_events"
    (no_events / "facts").mkdir(parents=True)
    (no_events / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    no_start = write_run(tmp_path, "nostart")
    (no_start / "facts" / "events.jsonl").write_text("")

    with pytest.raises(NoValidRunsError) as caught:
        load_runs(run_dirs=[no_config, no_events, no_start, tmp_path / "missing_*"])
    lines = str(caught.value).splitlines()
    assert lines[0] == "No valid runs found:"
    config_path = no_config / "config.yaml"
    assert lines[1] == f"  {no_config}: {config_path} is missing (every run writes its resolved config there)"
    assert lines[2].startswith(f"  {no_events}: {no_events / 'facts' / 'events.jsonl'} is missing")
    assert lines[3] == f"  {no_start}: no on_start event in facts/events.jsonl (the run never started)"
    assert lines[4] == f"  {tmp_path / 'missing_*'}: no directory matches this pattern"


def test_sweep_without_runs_says_where_it_looked(tmp_path):
    (tmp_path / "empty_sweep").mkdir()
    with pytest.raises(NoValidRunsError, match=r"no run directories \(with facts/events\.jsonl\) under .*empty_sweep"):
        load_runs(sweep_dir=tmp_path / "empty_sweep")
    with pytest.raises(FactsError, match=r"sweep_dir '.*nowhere' does not exist"):
        load_runs(sweep_dir=tmp_path / "nowhere")
    with pytest.raises(FactsError, match="needs sweep_dir .* or run_dirs"):
        discover_runs()


def test_invalid_runs_are_skipped_with_one_warning_or_refused_when_strict(tmp_path):
    good = write_run(tmp_path, "good")
    bad = write_run(tmp_path, "bad")
    (bad / "config.yaml").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 run directories:\n  .*bad.*config\.yaml is missing"):
        runs_df, per_epoch, order = load_runs(sweep_dir=tmp_path)
    assert order == [str(good)] and list(per_epoch) == [str(good)] and len(runs_df) == 1
    with pytest.raises(FactsError, match="skipped 1 of 2 run directories"):
        load_runs(sweep_dir=tmp_path, strict=True)


def test_status_failed_crashed_running(tmp_path):
    failed = write_run(tmp_path, "failed", end=False)
    with RunWriter(failed, failed.name, COLUMNS) as writer:
        writer.event("on_exception", error_type="NonFiniteLossError", message="loss is nan at step 30", traceback="...")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = write_run(tmp_path, "crashed", end=False, pid=dead.pid)
    running = write_run(tmp_path, "running", end=False)
    elsewhere = write_run(tmp_path, "elsewhere", end=False, host="another-node")

    runs_df, _, _ = load_runs(run_dirs=[failed, crashed, running, elsewhere])
    statuses = dict(zip(runs_df["run_dir"], zip(runs_df["status"], runs_df["stop_reason"])))
    assert statuses[str(failed)] == ("FAILED", "NonFiniteLossError: loss is nan at step 30")
    gone = f"no end event and process {dead.pid} on {socket.gethostname()!r} is gone"
    assert statuses[str(crashed)] == ("CRASHED", gone)
    assert statuses[str(running)][0] == "RUNNING"
    # just written on another host: its facts are the heartbeat
    assert statuses[str(elsewhere)][0] == "RUNNING"
    old = time.time() - 3600
    for path in (elsewhere / "facts").iterdir():
        os.utime(path, (old, old))
    runs_df, _, _ = load_runs(run_dirs=[elsewhere])
    status, reason = runs_df.iloc[0]["status"], runs_df.iloc[0]["stop_reason"]
    assert status == "CRASHED" and "'another-node'" in reason and "last written 3600 s ago" in reason


def test_a_resumed_start_reopens_the_status(tmp_path):
    start = {"moment": "on_start", "pid": os.getpid(), "host": socket.gethostname()}
    ended = [start, {"moment": "on_train_end", "status": "STOPPED", "stop_reason": "early_stopping"}]
    assert run_status(ended, start) == ("STOPPED", "early_stopping")
    assert run_status(ended + [start], start) == ("RUNNING", None)


def test_run_dirs_globs_and_sweep_discovery(tmp_path):
    sweep = tmp_path / "exp"
    first = write_run(sweep, "a")
    second = write_run(sweep, "b")
    flat = sweep / "flat_run"
    flat.mkdir()
    (flat / "facts").mkdir()
    (flat / "facts" / "events.jsonl").write_text("")
    (sweep / "runs" / "notes").mkdir()

    assert discover_runs(run_dirs=[str(sweep / "runs" / "run_*_b_*")]) == [second]
    assert discover_runs(run_dirs=str(sweep / "runs" / "run_*")) == sorted([first, second])
    assert discover_runs(sweep_dir=sweep) == [flat, first, second]
    assert discover_runs(sweep_dir=str(tmp_path / "ex*")) == [flat, first, second]
    _, _, order = load_runs(run_dirs=[str(sweep / "runs" / "run_*_b_*"), first])
    assert order == [str(second), str(first)]


def test_run_ids_are_unique_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setattr(run_dir_module.time, "strftime", lambda fmt: "20250101-120000")
    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(lambda _: create_run_dir(tmp_path, "same name"), range(50)))
    ids = [run_id for _, run_id in created]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"run_20250101-120000_same-name_[0-9a-f]{4}", run_id) for run_id in ids)
    assert all((path / "facts").is_dir() and (path / "logs").is_dir() for path, _ in created)


def test_a_colliding_suffix_is_retried(tmp_path, monkeypatch):
    suffixes = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(run_dir_module.secrets, "token_hex", lambda n: next(suffixes))
    monkeypatch.setattr(run_dir_module.time, "strftime", lambda fmt: "20250101-120000")
    _, first = create_run_dir(tmp_path, "x/../y")
    _, second = create_run_dir(tmp_path, "x/../y")
    assert (first, second) == ("run_20250101-120000_x-..-y_aaaa", "run_20250101-120000_x-..-y_bbbb")


def test_a_second_writer_appends_and_later_rows_win(tmp_path):
    run_dir = write_run(tmp_path, val_losses=(1.0, 0.5, 0.7))
    before = (run_dir / "facts" / "events.jsonl").read_text()
    with RunWriter(run_dir, run_dir.name, COLUMNS) as writer:
        writer.event("on_start", params={"total": 100, "trainable": 80}, pid=os.getpid(),
                     host=socket.gethostname(), resumed_from_epoch=2, scalar_columns=list(COLUMNS))
        writer.scalars({"epoch": 2, "split": "val", "step": 30, "loss": 0.4})
        writer.event("on_train_end", status="COMPLETED", stop_reason="max_epochs", total_time_s=20.0)
    after = (run_dir / "facts" / "events.jsonl").read_text()
    assert after.startswith(before) and after.count("\n") == before.count("\n") + 2
    scalars_text = (run_dir / "facts" / "scalars.csv").read_text()
    assert scalars_text.count("epoch,split,") == 1 and scalars_text.count("\n") == 1 + 6 + 1
    runs_df, per_epoch, _ = load_runs(run_dirs=[run_dir])
    assert per_epoch[str(run_dir)]["val_loss"].dropna().tolist() == pytest.approx([1.0, 0.5, 0.4])
    assert runs_df.loc[0, "loss.total_best"] == pytest.approx(0.4) and runs_df.loc[0, "best_epoch"] == 2
    assert runs_df.loc[0, "total_time_s"] == pytest.approx(20.0)


def test_reopening_repairs_a_torn_tail_before_appending(tmp_path):
    run_dir = write_run(tmp_path)
    with open(run_dir / "facts" / "scalars.csv", "ab") as handle:
        handle.write(b"3,train,4")
    with open(run_dir / "facts" / "events.jsonl", "ab") as handle:
        handle.write(b'{"schema_version": 1, "moment": "on_test_end", "metrics": {}}')  # whole, newline lost
    with pytest.warns(UserWarning, match=r"scalars\.csv: dropped a torn last line \(9 bytes\)"):
        RunWriter(run_dir, run_dir.name, COLUMNS).close()
    scalars_lines = (run_dir / "facts" / "scalars.csv").read_text().split("\n")
    assert len(scalars_lines) == 1 + 6 + 1 and scalars_lines[-1] == ""
    empty_tail = "," * len(TAIL_SCALAR_COLUMNS)  # the row gave none of the tail columns
    assert re.fullmatch(r"2,val,30,[0-9.]+,0\.7,0\.35,12\.0" + empty_tail, scalars_lines[-2])
    assert read_events(run_dir)[-1] == {"schema_version": 1, "moment": "on_test_end", "metrics": {}}


def test_header_mismatch_on_resume_names_both_headers(tmp_path):
    run_dir = write_run(tmp_path)
    other = scalar_columns(["loss", "metric_accuracy"])
    with pytest.raises(FactsError) as caught:
        RunWriter(run_dir, run_dir.name, other)
    message = str(caught.value)
    assert f"already has header {list(COLUMNS)}" in message and f"this run writes {list(other)}" in message


def test_writer_refuses_unknown_moments_keys_and_writes_after_close(tmp_path):
    run_dir, run_id = create_run_dir(tmp_path, "errors")
    writer = RunWriter(run_dir, run_id, COLUMNS)
    with pytest.raises(FactsError, match=re.escape("unknown event moment 'on_batch_end'")) as caught:
        writer.event("on_batch_end")
    assert str(list(MOMENTS)) in str(caught.value)
    with pytest.raises(FactsError) as caught:
        writer.scalars({"epoch": 0, "split": "train", "accuracy": 1.0})
    assert "has keys not in its header: ['accuracy']" in str(caught.value)
    assert f"header: {list(COLUMNS)}" in str(caught.value)
    with pytest.raises(FactsError, match=r"reserved keys \['t'\]"):
        writer.event("on_start", t=3)
    with pytest.raises(FactsError, match=r"value at 'params.model' has type object"):
        writer.event("on_start", params={"model": object()})
    writer.close()
    writer.close()
    with pytest.raises(FactsError, match="is closed"):
        writer.event("on_start")
    with pytest.raises(FactsError, match=r"lack \['split'\]"):
        RunWriter(run_dir, run_id, ["epoch", "loss"])


def test_config_round_trips_in_order_and_hash_ignores_key_order(tmp_path):
    run_dir, run_id = create_run_dir(tmp_path, "cfg")
    with RunWriter(run_dir, run_id, COLUMNS) as writer:
        writer.write_config({"trainer": {"seed": np.int64(1)},
                             "optim": {"betas": (0.9, np.float64(0.99)), "lr": math.inf}})
    text = (run_dir / "config.yaml").read_text()
    assert text.index("trainer") < text.index("optim")
    assert yaml.safe_load(text) == {"trainer": {"seed": 1}, "optim": {"betas": [0.9, 0.99], "lr": math.inf}}
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert re.fullmatch(r"[0-9a-f]{12}", config_hash(CONFIG)) and config_hash(CONFIG) != config_hash({"a": 1})
    assert scalar_columns(["loss", "loss_vq", "metric_perplex"]) == (
        "epoch", "split", "step", "t", "loss", "loss_vq", "metric_perplex",
        "lr", "grad_norm", "epoch_time_s", "samples", "throughput", "data_wait_frac",
        "energy_j", "power_avg_w", "gpu_util_avg", "vram_peak_mb", "nvml_mem_peak_mb",
    )


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half")
            raise RuntimeError("killed")
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_collect_env_records_the_git_commit_and_never_raises(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f").write_text("x")
    subprocess.run(["git", "-C", str(repo), "add", "f"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    monkeypatch.chdir(repo)
    env = collect_env()
    assert env["git_commit"] == head and env["git_dirty"] is False
    assert env["pid"] == os.getpid() and env["host"] == socket.gethostname()
    assert env["torch"] is not None and env["errors"] == {}
    monkeypatch.chdir(tmp_path)
    assert collect_env()["git_commit"] is None


def test_collect_env_matches_nvml_power_limits_to_torch_gpus_by_uuid(monkeypatch):
    import types

    import torch

    props = {0: types.SimpleNamespace(name="GPU B", total_memory=80 * 2**30, major=9, minor=0, uuid="bbbb"),
             1: types.SimpleNamespace(name="GPU A", total_memory=40 * 2**30, major=8, minor=0, uuid="aaaa")}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props[index])
    # NVML numbers the GPUs the other way round, as CUDA_VISIBLE_DEVICES=1,0 would make it.
    fake_nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"550.54",
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetUUID=lambda handle: ["GPU-aaaa", "GPU-bbbb"][handle],
        nvmlDeviceGetPowerManagementLimit=lambda handle: [300_000, 700_000][handle],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml)
    env = collect_env()
    assert env["cuda_available"] is True and env["gpu_driver"] == "550.54"
    assert [(g["name"], g["total_memory_mb"], g["capability"], g["power_limit_w"]) for g in env["gpus"]] == [
        ("GPU B", 81920, "9.0", 700.0),
        ("GPU A", 40960, "8.0", 300.0),
    ]
    monkeypatch.setattr(fake_nvml, "nvmlInit", lambda: 1 / 0)
    broken = collect_env()
    assert broken["errors"]["nvml"] == "ZeroDivisionError: division by zero" and len(broken["gpus"]) == 2
