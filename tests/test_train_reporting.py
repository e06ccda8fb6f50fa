"""fit() with its telemetry sampler (CPU + scripted NVML), and workflow.train's run report rendered at the end."""

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest

from thesis_lib.train import fit
from thesis_lib.workflow import train
from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import load_runs, read_events, read_steps, read_telemetry
from thesis_lib.telemetry import ScriptedBackend

# `thesis_lib.train` the attribute is workflow's function; the module is reached through importlib.
RESOURCES = importlib.import_module("thesis_lib.train.resources")


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return make_synthetic_events(tmp_path_factory.mktemp("rep") / "events.h5", n_events=1000, seed=0, n_tokens=8)


def _config(events, tmp_path, **extra):
    cfg = {
        "output_root": str(tmp_path / "outputs"),
        "run_name": "rep",
        "data": {"path": str(events), "batch_size": 64},
        "model": {"encoder": "mlp", "bottleneck": "identity", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1},
        "trainer": {"epochs": 2, "seed": 0, "sync_every_n_steps": 4},
        "telemetry": {"interval_s": 0.1},
        "report": {"enabled": False},
    }
    cfg.update(extra)
    return cfg


def _scripted(fail_after=None):
    return ScriptedBackend(
        [{"name": "Scripted H100", "uuid": "GPU-scripted-0"}],
        lambda t, i: {"util": 80.0, "mem_used_mb": 2048.0, "mem_total_mb": 81559.0, "power_w": 300.0,
                      "temp_c": 55.0, "sm_clock_mhz": 1980.0},
        energy_counter=True,
        fail_after=fail_after,
    )


def test_cpu_run_records_cpu_telemetry_steps_and_data_wait(events, tmp_path):
    result = fit(_config(events, tmp_path))
    telemetry = read_telemetry(result.run_dir)
    assert list(telemetry.columns) == ["t", "cpu_pct", "rss_mb"] and len(telemetry) >= 2
    assert (telemetry["rss_mb"] > 50).all()
    end = [e for e in read_events(result.run_dir) if e["moment"] == "on_train_end"][0]
    assert end["telemetry"]["backend"] is None and end["telemetry"]["energy_method"] is None
    steps = read_steps(result.run_dir)
    # 700 train events / 64 = 11 batches: sync rows at 4 and 8, plus the epoch-end remainder
    assert list(steps.query("epoch == 0")["step"]) == [4, 8, 11]
    scalars = pd.read_csv(Path(result.run_dir) / "facts" / "scalars.csv")
    train_rows = scalars.query("split == 'train'")
    assert train_rows["data_wait_frac"].between(0, 1).all()
    assert train_rows["energy_j"].isna().all()  # no GPU: no energy, not zero


def test_scripted_gpu_energy_reaches_epoch_facts(events, tmp_path, monkeypatch):
    monkeypatch.setattr(RESOURCES, "telemetry_backend", lambda device: _scripted())
    # batch 8: epochs long enough (~90 steps) to hold several 0.1 s samples each
    result = fit(_config(events, tmp_path, trainer={"epochs": 3, "seed": 0, "sync_every_n_steps": 4},
                           data={"path": str(events), "batch_size": 8}))
    scalars = pd.read_csv(Path(result.run_dir) / "facts" / "scalars.csv").query("split == 'train'")
    assert (scalars["energy_j"] > 0).all()
    assert scalars["power_avg_w"].dropna().between(299, 301).all()
    assert scalars["gpu_util_avg"].dropna().eq(80.0).all()
    end = [e for e in read_events(result.run_dir) if e["moment"] == "on_train_end"][0]
    tel = end["telemetry"]
    assert tel["backend"] == "scripted" and tel["energy_method"] == "counter"
    # the counter integrates 300 W over the sampler's life; the epochs' shares sum to less
    assert scalars["energy_j"].sum() <= tel["energy_j"] + 1e-6
    assert tel["energy_j"] == pytest.approx(300.0 * tel["duration_s"], rel=0.05)


def test_nvml_error_mid_run_keeps_training_and_facts(events, tmp_path, monkeypatch):
    monkeypatch.setattr(RESOURCES, "telemetry_backend", lambda device: _scripted(fail_after=3))
    with pytest.warns(UserWarning, match="GPU is lost"):
        # batch 8: a run of a second or more, so the scripted GPU fails partway through
        result = fit(_config(events, tmp_path, trainer={"epochs": 3, "seed": 0},
                               data={"path": str(events), "batch_size": 8}))
    assert result.status == "COMPLETED" and result.epochs_completed == 3
    telemetry = read_telemetry(result.run_dir)
    gpu_cols = [c for c in telemetry.columns if c.startswith("gpu0_")]
    assert gpu_cols and telemetry[gpu_cols[0]].notna().sum() >= 1 and telemetry[gpu_cols[0]].isna().sum() >= 1
    after_error = telemetry[telemetry[gpu_cols[0]].isna()]
    assert after_error["cpu_pct"].notna().sum() >= 1  # the process columns keep coming
    end = [e for e in read_events(result.run_dir) if e["moment"] == "on_train_end"][0]
    assert "GPU is lost" in end["telemetry"]["warning"]
    runs_df, per_epoch, order = load_runs(run_dirs=[str(result.run_dir)])
    assert runs_df.iloc[0]["status"] == "COMPLETED" and len(per_epoch[order[0]]) == 6


@pytest.mark.slow
def test_report_rendered_at_the_end_of_train(events, tmp_path):
    result = train(_config(events, tmp_path, report={"enabled": True}))
    report = Path(result.run_dir) / "report"
    for name in ("report.md", "report.html", "telemetry.png"):
        assert (report / name).is_file(), name
    text = (report / "report.md").read_text()
    assert "COMPLETED" in text and "no GPU telemetry" in text
    assert "report:" in (Path(result.run_dir) / "logs" / "stdout.log").read_text()


def test_report_failure_never_fails_the_run(events, tmp_path, monkeypatch):
    import thesis_lib.reports as reports

    def broken(run_dir, **options):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(reports, "render_run_report", broken)
    result = train(_config(events, tmp_path, report={"enabled": True}, trainer={"epochs": 1, "seed": 0}))
    assert result.status == "COMPLETED"
    log = (Path(result.run_dir) / "logs" / "stdout.log").read_text()
    assert "warning: report: report not rendered" in log and "template exploded" in log
    incidents = [e for e in map(json.loads, (Path(result.run_dir) / "facts" / "events.jsonl").read_text().splitlines())
                 if e["moment"] == "on_incident"]
    assert [(i["part"], i["error_type"]) for i in incidents] == [("report", "RuntimeError")]
    json.loads((Path(result.run_dir) / "model_info.json").read_text())
