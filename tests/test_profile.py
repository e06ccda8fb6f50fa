"""trainer.profile: torch.profiler over a window of one epoch's batches, written to profile/ and shown by the run report.

Each run is a tiny mlp on 800 synthetic events, batch 32 (18 batches an epoch), CPU, no test pass, a
sync point every 4 batches: the window is stepped per batch all the same.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from thesis_lib.config import load_config
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ConfigError
from thesis_lib.facts import read_events
from thesis_lib.layout import (
    CONFIG_FILE,
    PROFILE_DIR,
    PROFILE_INFO,
    PROFILE_TOP_OPS_CSV,
    PROFILE_TOP_OPS_TEXT,
    PROFILE_TRACE,
    STDOUT_LOG,
)
from thesis_lib.reports import load_run_report, render_run_report
from thesis_lib.train import fit
from thesis_lib.train.profiling import TOP_OPS_COLUMNS

TINY_MLP = {"encoder": "mlp", "hidden_dim": 16, "num_layers": 1, "latent_dim": 8, "token_embed_dim": 4}
# Batches 1-2 skipped, 3 warm-up, 4-6 kept: the trace's ProfilerStep#3..#5.
WINDOW = {"enabled": True, "epoch": 1, "wait_steps": 2, "warmup_steps": 1, "active_steps": 3}
HOSTILE_OP = "<script>alert(1)</script>|**x**"


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile_data") / "events.h5"
    make_synthetic_events(path, n_events=800, seed=0, n_tokens=8)
    return path


def _run(events: Path, root: Path, profile: dict | None = None, *, epochs: int = 1, **data):
    config = load_config({
        "output_root": str(root / "outputs"), "run_name": "profile",
        "data": {"path": str(events), "batch_size": 32, **data}, "model": TINY_MLP,
        "trainer": {"epochs": epochs, "seed": 0, "sync_every_n_steps": 4, "test": False,
                    **({"profile": profile} if profile else {})},
        "telemetry": {"enabled": False}, "report": {"enabled": False},
    })
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(config)


def _incidents(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["moment"] == "on_incident"]


@pytest.fixture(scope="module")
def profiled(events, tmp_path_factory) -> Path:
    result = _run(events, tmp_path_factory.mktemp("profiled"), WINDOW, epochs=2)  # epoch 0 runs untraced
    assert result.status == "COMPLETED" and result.epochs_completed == 2
    return Path(result.run_dir)


def test_a_profiled_run_writes_the_trace_the_op_tables_and_the_window(profiled):
    trace = json.loads((profiled / PROFILE_TRACE).read_text())
    names = [e.get("name", "") for e in trace["traceEvents"]]
    assert any(name.startswith("aten::") for name in names)
    # One profiler step per batch, the kept ones only, though sync points come every 4 batches.
    assert sorted(n for n in set(names) if n.startswith("ProfilerStep#")) == ["ProfilerStep#3", "ProfilerStep#4",
                                                                                "ProfilerStep#5"]
    text = (profiled / PROFILE_TOP_OPS_TEXT).read_text()
    assert "aten::addmm" in text and "Self CPU" in text
    with open(profiled / PROFILE_TOP_OPS_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == TOP_OPS_COLUMNS
    ops = {row["name"]: row for row in rows}
    assert int(ops["aten::addmm"]["calls"]) > 0 and float(ops["aten::addmm"]["self_cpu_us"]) > 0
    assert ops["aten::addmm"]["self_device_us"] == ""  # a CPU run measured no device time
    self_cpu = [float(row["self_cpu_us"]) for row in rows]
    assert self_cpu == sorted(self_cpu, reverse=True)
    info = json.loads((profiled / PROFILE_INFO).read_text())
    assert {k: info[k] for k in ("epoch", "first_batch", "last_batch", "batches_traced", "complete", "device")} == {
        "epoch": 1, "first_batch": 4, "last_batch": 6, "batches_traced": 3, "complete": True, "device": "cpu"}
    assert info["torch"] == torch.__version__ and info["traced_s"] > 0 and info["steps_before_epoch"] == 18
    assert info["files"]["trace"] == PROFILE_TRACE
    assert _incidents(profiled) == []
    assert "profile: epoch 1 batches 4-6 traced" in (profiled / STDOUT_LOG).read_text()


def test_the_report_shows_the_window_the_top_ops_and_how_to_open_the_trace(profiled, tmp_path):
    paths = render_run_report(profiled, tmp_path / "report")
    markdown = paths["markdown"].read_text()
    section = markdown.split("## Profile\n\n", 1)[1].split("\n## ", 1)[0]
    assert "Epoch 1, batches 4 to 6 of the epoch (3 traced, after 2 skipped and 1 of warm-up" in section
    assert "| aten::addmm | " in section and section.count("\n| ") == 11  # header + 10 ops
    assert f"`{profiled / PROFILE_TRACE}`" in section
    assert "`chrome://tracing`" in section and "`https://ui.perfetto.dev`" in section
    assert "<h2>Profile</h2>" in paths["html"].read_text()
    # Op names are run-provided text: escaped, the table keeps its cells.
    copy = shutil.copytree(profiled, tmp_path / "hostile")
    rows = (copy / PROFILE_TOP_OPS_CSV).read_text().splitlines()
    rows[1] = f'"{HOSTILE_OP}",' + rows[1].split(",", 1)[1]
    (copy / PROFILE_TOP_OPS_CSV).write_text("\n".join(rows) + "\n")
    section = load_run_report(copy).section("profile")
    assert "<script>" not in section
    assert "| &lt;script>alert(1)&lt;/script>\\|\\*\\*x\\*\\* | " in section


def test_profiling_off_builds_no_profiler_and_the_report_says_so(events, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(torch.profiler, "profile", lambda *a, **k: built.append(k))
    result = _run(events, tmp_path)
    run_dir = Path(result.run_dir)
    assert result.status == "COMPLETED" and built == []
    assert not (run_dir / PROFILE_DIR).exists() and _incidents(run_dir) == []
    section = load_run_report(run_dir).section("profile")
    assert section.startswith("## Profile\n\nNot profiled: `trainer.profile.enabled` was off.")
    # Profiling on, but the run never reached its epoch: the report does not say it was off.
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    config["trainer"]["profile"].update(enabled=True, epoch=3)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config))
    section = load_run_report(run_dir).section("profile")
    assert "Nothing was traced: `trainer.profile.enabled` was on for epoch 3, and the run ended" in section


def test_a_failing_profiler_costs_one_incident_not_the_run(events, tmp_path, monkeypatch):
    def refuse(self, path):
        raise RuntimeError("no <b>room</b> for traces")

    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace", refuse)
    result = _run(events, tmp_path, {**WINDOW, "epoch": 0})
    run_dir = Path(result.run_dir)
    assert result.status == "COMPLETED" and result.epochs_completed == 1
    incidents = _incidents(run_dir)
    assert [i["part"] for i in incidents] == ["profile"]
    assert "RuntimeError: no <b>room</b> for traces" in incidents[0]["message"]
    assert incidents[0]["path"] == str(run_dir / PROFILE_TRACE) and not (run_dir / PROFILE_TRACE).exists()
    assert "error" in json.loads((run_dir / PROFILE_INFO).read_text())
    assert (run_dir / STDOUT_LOG).read_text().count("warning: profile:") == 1  # warned once
    section = load_run_report(run_dir).section("profile")
    assert ("⚠ The profiler failed: the profile could not be written: RuntimeError: no &lt;b>room&lt;/b> for traces; "
            "training went on without it." in section) and "<b>" not in section


def test_an_epoch_shorter_than_the_window_keeps_what_was_traced(events, tmp_path):
    # 560 training rows in batches of 128: 5 batches, so 3 of the 10 active steps (batches 3-5).
    result = _run(events, tmp_path, {**WINDOW, "epoch": 0, "wait_steps": 1, "active_steps": 10}, batch_size=128)
    run_dir = Path(result.run_dir)
    assert result.status == "COMPLETED" and _incidents(run_dir) == []
    info = json.loads((run_dir / PROFILE_INFO).read_text())
    assert (info["first_batch"], info["last_batch"], info["batches_traced"], info["complete"]) == (3, 5, 3, False)
    names = {e.get("name", "") for e in json.loads((run_dir / PROFILE_TRACE).read_text())["traceEvents"]}
    assert sorted(n for n in names if n.startswith("ProfilerStep#")) == ["ProfilerStep#2", "ProfilerStep#3",
                                                                           "ProfilerStep#4"]
    assert "⚠ Partial window: the epoch ended after batch 5: 3 of 10 active steps traced." in (
        load_run_report(run_dir).section("profile"))


@pytest.mark.parametrize("trainer, message", [
    ({"epochs": 2, "profile": {"enabled": True, "epoch": 2}},
     r"trainer.profile.epoch=2 is not an epoch of this run: trainer.epochs=2 runs epochs 0..1"),
    ({"max_steps_per_epoch": 5, "profile": {"enabled": True}},
     (r"trainer.profile needs 7 batches \(wait_steps 1 \+ warmup_steps 1 \+ active_steps 5\) but "
      r"trainer.max_steps_per_epoch=5")),
    ({"profile": {"active_steps": 0}},
     r"trainer.profile.active_steps=0 is out of range: expected trainer.profile.active_steps >= 1"),
    ({"profile": {"activ_steps": 3}}, r"unknown config key 'trainer.profile.activ_steps' — did you mean 'active_steps'"),
])
def test_a_bad_profile_setting_names_the_key(trainer, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"trainer": trainer})


def test_profiling_is_off_by_default_and_set_by_a_dotted_override():
    assert load_config().trainer.profile.enabled is False
    cfg = load_config(overrides=["trainer.profile.enabled=true", "trainer.profile.active_steps=2"])
    assert (cfg.trainer.profile.enabled, cfg.trainer.profile.active_steps) == (True, 2)
    assert load_config({"trainer": {"epochs": 1, "profile": {"epoch": 7}}}).trainer.profile.epoch == 7  # off: unchecked
