"""The per-run report: sections and numbers from hand-written facts, figures, findings, a real tiny run."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pandas as pd
import pytest

from thesis_lib.config import Config
from thesis_lib.errors import FactsError, ReportError
from thesis_lib.record.writer import RunWriter
from thesis_lib.record.schema import scalar_columns
from thesis_lib.reports import (
    curves_figure,
    escape_markdown,
    load_run_report,
    plot_telemetry,
    telemetry_figure,
    write_run_report_markdown,
)
from thesis_lib.reports.findings import find
from thesis_lib.reports.telemetry_plot import PROCESS_PANELS
from thesis_lib.reports.template_exec import RUN_REPORT_TEMPLATE, template_sections

pytest_plugins = ("report_fixtures",)

COLUMNS = scalar_columns(["loss", "loss_recon", "metric_accuracy"])
RUN_ID = "run_20260101-000000_fixture_abcd"
TELEMETRY = pd.DataFrame({
    "t": [10.0 * i for i in range(10)],
    "cpu_pct": [100.0] * 10,
    "rss_mb": [2000.0 + 10 * i for i in range(10)],
    "gpu0_util_pct": [30.0, 50.0, 60.0, 70.0, 80.0, 40.0, 50.0, 60.0, 50.0, 60.0],  # mean 55
    "gpu0_mem_used_mb": [1000.0 * (i + 1) for i in range(10)],  # peak 10000, mean 5500
    "gpu0_mem_total_mb": [81559.0] * 10,
    "gpu0_power_w": [100.0, 200.0, 300.0, 400.0, 500.0, 100.0, 200.0, 300.0, 400.0, 500.0],  # peak 500, mean 300
    "gpu0_temp_c": [40.0, 50.0, 60.0, 70.0, 71.0, 65.0, 60.0, 60.0, 60.0, 60.0],
    "gpu0_sm_clock_mhz": [1980.0] * 10,
    "gpu0_energy_j": [0.0, 800.0, 1600.0, 2400.0, 3200.0, 4000.0, 4800.0, 5600.0, 6400.0, 7000.0],
})
PAYLOAD = {"backend": "nvml", "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1"}],
           "power_field": "instant", "energy_method": "counter", "interval_s": 0.5, "warning": None,
           "energy_j": 7200.0, "power_avg_w": 300.0, "power_max_w": 500.0, "gpu_util_avg": 55.0,
           "nvml_mem_peak_mb": 10000.0, "duration_s": 100.0, "samples": 10}
# Six healthy epochs: train and val both fall, the last three by 0.5 % (converged), nothing else to say.
EPOCHS = [
    {"train": 1.0, "val": 1.1, "lr": 1e-3, "wait": 0.1, "vram": 4000.0, "throughput": 1000.0, "grad": 1.0},
    {"train": 0.8, "val": 0.9, "lr": 1e-3, "wait": 0.1, "vram": 4500.0, "throughput": 1000.0, "grad": 1.0},
    {"train": 0.7, "val": 0.8, "lr": 1e-3, "wait": 0.1, "vram": 4500.0, "throughput": 1200.0, "grad": 1.0},
    {"train": 0.69, "val": 0.799, "lr": 1e-3, "wait": 0.1, "vram": 4200.0, "throughput": 1200.0, "grad": 1.0},
    {"train": 0.685, "val": 0.798, "lr": 1e-3, "wait": 0.1, "vram": 4100.0, "throughput": 1100.0, "grad": 1.0},
    {"train": 0.68, "val": 0.796, "lr": 1e-3, "wait": 0.1, "vram": 4100.0, "throughput": 1100.0, "grad": 1.0},
]


def write_run(root: Path, epochs=EPOCHS, *, status="COMPLETED", stop_reason="max_epochs", telemetry=TELEMETRY,
              payload=PAYLOAD, exception=None, ended=True, pid=None, log_lines=40, config=None, device="cuda:0",
              steps=True) -> Path:
    """A run directory written with RunWriter from known numbers (a GPU run, unless told otherwise)."""
    run_dir = root / RUN_ID
    cfg = Config().to_dict()
    cfg["data"]["batch_size"] = 64
    cfg["trainer"].update(grad_accum_steps=4, precision="bf16", epochs=len(epochs), early_stopping_patience=2)
    cfg["optim"].update(name="adamw", lr=1e-3, scheduler="plateau")
    for section, values in (config or {}).items():
        cfg[section].update(values)
    with RunWriter(run_dir, RUN_ID, COLUMNS) as writer:
        writer.write_config(cfg)
        writer.write_env({"host": socket.gethostname(), "gpus": []})
        writer.event("on_start", params={"total": 1000, "trainable": 250}, pid=pid or os.getpid(),
                     host=socket.gethostname(), device=device, scalar_columns=list(COLUMNS))
        for e, row in enumerate(epochs):
            t = 25.0 * (e + 1)
            common = {"epoch": e, "step": 10 * (e + 1), "t": t, "lr": row["lr"], "epoch_time_s": 25.0}
            writer.scalars({**common, "split": "train", "loss": row["train"], "metric_accuracy": 0.5 + 0.1 * e,
                            "data_wait_frac": row["wait"], "vram_peak_mb": row["vram"] if device != "cpu" else None,
                            "throughput": row["throughput"], "samples": 1000, "grad_norm": row["grad"]})
            writer.scalars({**common, "split": "val", "loss": row["val"], "metric_accuracy": 0.4 + 0.1 * e,
                            "samples": 200, "throughput": 5000.0})
            writer.event("on_epoch_end", epoch=e, step=10 * (e + 1))
            if steps:
                writer.steps([{"epoch": e, "step": 10 * e + k, "t": 25.0 * e + 5 * k, "loss": row["train"] + 0.01 * k,
                               "lr": row["lr"]} for k in (1, 3, 5)])
        if exception:
            writer.event("on_exception", **exception)
        if ended:
            writer.event("on_train_end", status=status, stop_reason=stop_reason, epochs_completed=len(epochs),
                         steps=10 * len(epochs), samples=1000 * len(epochs), total_time_s=150.0, telemetry=payload)
        if ended and status != "FAILED":
            writer.event("on_test_end", metrics={"loss": 0.75, "metric_accuracy": 0.81}, epoch=5, samples=200)
    if telemetry is not None:
        telemetry.to_csv(run_dir / "facts" / "telemetry.csv", index=False)
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "stdout.log").write_text("".join(f"log line {i}\n" for i in range(log_lines)))
    return run_dir


def _kinds(report):
    return [f.kind for f in report.findings]


def test_key_metrics_of_a_gpu_run_are_the_hand_written_numbers(tmp_path):
    report = load_run_report(write_run(tmp_path))
    m = report.metrics
    assert (report.status, report.stop_reason, report.steps, report.duration_s) == ("COMPLETED", "max_epochs", 60, 150.0)
    assert (report.params_trainable, report.params_total, report.trainable_pct) == (250, 1000, 25.0)
    assert (m.loss_initial_train, m.loss_initial_val, m.loss_best_val, m.best_epoch) == (1.0, 1.1, 0.796, 5)
    assert (m.loss_final_train, m.loss_final_val) == (0.68, 0.796)
    assert (m.vram_peak_mb, m.vram_avg_mb, m.vram_total_mb, m.torch_vram_peak_mb) == (10000.0, 5500.0, 81559.0, 4500.0)
    assert (m.power_peak_w, m.power_avg_w, m.gpu_util_avg) == (500.0, 300.0, 55.0)
    assert (m.energy_j, m.energy_method, m.energy_kwh, m.energy_j_per_sample) == (7200.0, "counter", 0.002, 1.2)
    assert (m.samples, m.samples_per_s) == (6000, 1100.0)
    assert report.telemetry.temp_peak_c == 71.0 and report.telemetry.rss_peak_mb == 2090.0
    markdown = report.to_markdown({"telemetry": "telemetry.png", "curves": "curves.png"})
    for line in ["| VRAM peak / avg (NVML) | 10,000 MB / 5,500 MB of 81,559 MB |",
                 "| VRAM peak (torch allocated) | 4,500 MB |", "| Power peak / avg | 500.0 W / 300.0 W |",
                 "| Energy | 0.002 kWh (7,200 J; counter) |", "| Energy per sample | 1.2 J/sample |",
                 "| Samples processed | 6,000 |", "| Throughput | 1,100 samples/s |", "| GPU utilisation avg | 55.0 % |",
                 "| Loss, initial | train 1 · val 1.1 (epoch 0) |", "| Loss, best | val 0.796 (epoch 5) |",
                 "- **Trainable params:** 250 of 1,000 (25.0 %)", "- **Status:** COMPLETED (max_epochs)",
                 "- **Device:** cuda:0 (NVIDIA H100 80GB HBM3)", "- **Duration:** 2 min 30 s",
                 "![Telemetry](telemetry.png)", "![Training curves](curves.png)", "| metric_accuracy | 0.81 |",
                 "Sampled by nvml every 0.5 s (10 samples); power field: instant; energy: counter."]:
        assert line in markdown, line
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings == [f"# Run report: {RUN_ID}", "## Executive summary", "## Key metrics", "## Configuration", "## Dataset",
                        "## Training curves", "## Telemetry", "## Profile", "## Findings", "## Test metrics",
                        "## Log tail"]


def test_configuration_snapshot_and_log_tail(tmp_path):
    report = load_run_report(write_run(tmp_path))
    c = report.config
    assert (c.batch_size, c.grad_accum_steps, c.effective_batch, c.precision, c.optimizer, c.lr) == (64, 4, 256, "bf16", "adamw", 0.001)
    configuration = report.section("configuration")
    for line in ["| Effective batch | 256 |", "| Gradient accumulation | 4 |", "| Precision | bf16 |",
                 "| Scheduler | plateau (factor 0.5, patience 2) |", "| Learning rate | 0.001 |", "```yaml"]:
        assert line in configuration, line
    assert report.log_tail == [f"log line {i}" for i in range(10, 40)]
    assert "The last 30 lines of `logs/stdout.log`" in report.section("log")
    with pytest.raises(ReportError, match="unknown run-report section 'nope'.*known: title, summary"):
        report.section("nope")


def test_a_section_reads_the_same_alone_and_in_the_whole_report(tmp_path):
    report = load_run_report(write_run(tmp_path))
    images = {"telemetry": "telemetry.png", "curves": "curves.png"}
    names = template_sections(RUN_REPORT_TEMPLATE)
    assert names == ["title", "summary", "metrics", "configuration", "dataset", "curves", "telemetry", "profile", "findings",
                     "test", "log"]
    assert report.to_markdown(images) == "\n".join(report.section(name, images) for name in names)


def test_two_gpus_sum_power_and_take_the_highest_memory(tmp_path):
    telemetry = TELEMETRY.assign(gpu1_util_pct=65.0, gpu1_mem_used_mb=20000.0, gpu1_mem_total_mb=81559.0,
                                 gpu1_power_w=100.0, gpu1_temp_c=80.0, gpu1_energy_j=0.0)
    m = load_run_report(write_run(tmp_path, telemetry=telemetry, payload={})).metrics
    assert (m.vram_peak_mb, m.vram_avg_mb) == (20000.0, (55000.0 + 200000.0) / 20)
    assert (m.power_peak_w, m.power_avg_w, m.gpu_util_avg) == (600.0, 400.0, 60.0)
    # Without the sampler's total: last minus first of each GPU's cumulative energy column.
    assert (m.energy_j, m.energy_method) == (7000.0, "telemetry.csv cumulative energy")


def test_cpu_only_report_says_no_gpu_telemetry_and_why(tmp_path):
    payload = {"backend": None, "devices": [], "power_field": None, "energy_method": None, "energy_j": None,
               "warning": "NVML unavailable: libnvidia-ml.so.1 not found"}
    run_dir = write_run(tmp_path, telemetry=TELEMETRY[["t", "cpu_pct", "rss_mb"]], payload=payload, device="cpu")
    report = load_run_report(run_dir)
    assert not report.telemetry.has_gpu and report.gpu_devices() == []
    markdown = report.to_markdown()
    assert "No GPU telemetry: NVML unavailable: libnvidia-ml.so.1 not found." in markdown
    assert "| GPU utilisation avg | n/a (no GPU telemetry) |" in markdown and "| Energy per sample | n/a |" in markdown
    assert "Process: CPU 100.0 % on average, RSS peak 2,090 MB." in markdown
    fig = telemetry_figure(report)
    # The process's CPU % and RSS take the GPU panels' place; why there is no GPU is written beneath.
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(PROCESS_PANELS)
    assert all(ax.has_data() and not ax.texts for ax in fig.axes)
    assert fig.get_supxlabel() == "No GPU telemetry: NVML unavailable: libnvidia-ml.so.1 not found."
    assert "energy" not in _kinds(report) and "gpu_underused" not in _kinds(report)


def test_telemetry_png_has_six_panels_with_the_gpu_lines(tmp_path):
    report = load_run_report(write_run(tmp_path))
    fig = telemetry_figure(report)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["Training loss", "Learning rate", "VRAM (MB)", "GPU utilisation (%)", "Power (W)", "Temperature (°C)"]
    loss_labels = [line.get_label() for line in fig.axes[0].lines]
    assert loss_labels[:2] == ["train (per sync point)", "smoothed (EMA, span 2)"]
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx(pd.read_csv(report.run_dir / "facts/steps.csv")["loss"])
    vram_lines = fig.axes[2].lines
    assert max(vram_lines[0].get_ydata()) == 10000.0 and len(fig.axes[2].collections) == 1  # torch peaks as hlines
    assert len(fig.axes[4].collections) == 1  # the power min/max shading
    assert all(not ax.texts for ax in fig.axes)
    epoch_marks = [line for line in fig.axes[3].lines if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in epoch_marks] == [25.0, 50.0, 75.0, 100.0, 125.0, 150.0]
    path = plot_telemetry(report.run_dir, tmp_path / "out" / "telemetry.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_have_a_loss_panel_and_one_per_metric(tmp_path):
    fig = curves_figure(load_run_report(write_run(tmp_path)))
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["Loss per epoch", "accuracy"]
    assert list(fig.axes[0].lines[1].get_ydata()) == [1.1, 0.9, 0.8, 0.799, 0.798, 0.796]


def test_a_run_without_steps_csv_or_resource_columns_still_reports(tmp_path):
    run_dir = write_run(tmp_path, telemetry=None, payload=None, steps=False, device="cpu")
    report = load_run_report(run_dir)
    fig = telemetry_figure(report)
    assert fig.axes[0].lines[0].get_label() == "train (per epoch)"
    assert "facts/telemetry.csv is absent" in report.section("telemetry")
    assert report.metrics.torch_vram_peak_mb is None


def test_running_and_crashed_runs_report_what_they_wrote(tmp_path):
    running = load_run_report(write_run(tmp_path / "a", epochs=EPOCHS[:1], ended=False, telemetry=None, device="cpu"))
    assert running.status == "RUNNING" and running.findings == []  # the no-finding case
    assert "No findings" in running.section("findings")
    crashed = load_run_report(write_run(tmp_path / "b", ended=False, pid=2**22 + 4321))
    assert crashed.status == "CRASHED" and _kinds(crashed)[0] == "stop"
    assert "has no end event" in crashed.findings[0].text and "6 epochs in scalars.csv" in crashed.findings[0].evidence


def test_missing_run_dir_names_the_path(tmp_path):
    with pytest.raises(FactsError, match=f"run directory {tmp_path / 'nope'} does not exist"):
        load_run_report(tmp_path / "nope")


# -- findings ---------------------------------------------------------------------------------------


def _epochs(train, val, lr=None, wait=None, grad=None):
    n = len(train)
    return [{"train": train[i], "val": val[i], "lr": (lr or [1e-3] * n)[i], "wait": (wait or [0.1] * n)[i],
             "vram": 1000.0, "throughput": 1000.0, "grad": (grad or [1.0] * n)[i]} for i in range(n)]


def test_a_healthy_run_finds_only_why_it_stopped_and_that_it_converged(tmp_path):
    report = load_run_report(write_run(tmp_path))
    assert _kinds(report) == ["stop", "outcome", "energy"]
    convergence = report.findings[1]
    assert convergence.title == "Converged" and "improved by only 0.50 %" in convergence.text
    assert convergence.evidence == "best val loss 0.8 by epoch 2 -> 0.796 by epoch 5 (0.50 %)"
    energy = report.findings[2]
    assert "0.002 kWh (7,200 J, counter): 1.2 J per training sample over 6,000 samples" in energy.text


def test_still_improving(tmp_path):
    report = load_run_report(write_run(tmp_path, _epochs([1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 0.8, 0.7])))
    finding = next(f for f in report.findings if f.kind == "outcome")
    assert finding.title == "Still improving" and "fell 30.00 %" in finding.text


def test_overfitting_names_the_epoch_it_began(tmp_path):
    report = load_run_report(write_run(tmp_path, _epochs([1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.0, 0.8, 0.7, 0.75, 0.8, 0.9])))
    finding = next(f for f in report.findings if f.kind == "outcome")
    assert "From epoch 2 on" in finding.text and "from 0.1 (epoch 2) to 0.6 (epoch 5)" in finding.text
    assert finding.evidence == ("val loss 0.7 (epoch 2) -> 0.9 (epoch 5), +28.57 %; train loss 0.6 -> 0.3 over the same "
                                "epochs; val rose and train fell in each of the last 2 epochs (scalars.csv)")
    assert finding.level == "warning"


def test_a_gap_that_closes_again_is_not_over_fitting(tmp_path):
    epochs = _epochs([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], [1.0, 1.05, 1.1, 0.6, 0.55, 0.5])
    assert "Over-fitting" not in [f.title for f in load_run_report(write_run(tmp_path, epochs)).findings]


def test_plateau_ended_by_an_lr_cut(tmp_path):
    val = [1.0, 0.8, 0.799, 0.798, 0.797, 0.7, 0.69, 0.6]
    lr = [1e-3] * 5 + [5e-4] * 3
    report = load_run_report(write_run(tmp_path, _epochs([v - 0.1 for v in val], val, lr=lr)))
    plateau = next(f for f in report.findings if f.kind == "plateau")
    assert "epochs 1-4, then it improved 12.17 % at epoch 5, after the LR cut at epoch 5" in plateau.text
    cut = next(f for f in report.findings if f.kind == "lr_cut")
    assert cut.title == "Learning-rate cut" and "cut once (optim.scheduler = plateau): at epoch 5 (0.001 -> 0.0005)" in cut.text
    assert "0.797 -> 0.6 by epoch 7 (24.72 %)" in cut.text
    assert cut.evidence == "lr 0.001 (epoch 4) -> 0.0005 (epoch 5), x0.5 (scalars.csv lr)"


@pytest.mark.parametrize("reason, status, title, text", [
    ("early_stopping", "STOPPED", "Stopped early", "did not improve for 2 epochs after its best 0.796 at epoch 5"),
    ("interrupted", "STOPPED", "Interrupted", "Stopped by the user (KeyboardInterrupt) after 6 of 6 epochs"),
    ("max_epochs", "COMPLETED", "Reached the epoch limit", "All 6 of 6 epochs ran (trainer.epochs = 6)."),
    ("signal: SIGTERM", "STOPPED", "Stopped by SIGTERM", "(SLURM, HTCondor, Kubernetes, docker stop) sent SIGTERM "
     "after 6 of 6 epochs"),
    ("signal: SIGUSR1", "STOPPED", "Stopped by SIGUSR1", "SLURM's --signal warning"),
])
def test_why_it_stopped(tmp_path, reason, status, title, text):
    finding = load_run_report(write_run(tmp_path, status=status, stop_reason=reason)).findings[0]
    assert (finding.kind, finding.title) == ("stop", title) and text in finding.text


def test_non_finite_loss_cites_the_message_and_the_gradient_norm(tmp_path):
    error = {"error_type": "NonFiniteLossError", "message": "training loss became nan at step 37 in epoch 4",
             "traceback": "Traceback...\nNonFiniteLossError: training loss became nan"}
    epochs = _epochs([1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 0.8, 0.7], grad=[1.0, 2.0, 8.0, 40.0])
    report = load_run_report(write_run(tmp_path, epochs, status="FAILED", stop_reason="non_finite_loss", exception=error))
    finding = report.findings[0]
    assert (finding.kind, finding.title, finding.level) == ("stop", "Loss became NaN/inf", "warning")
    assert "because training loss became nan at step 37 in epoch 4." in finding.text and "optim.grad_clip" in finding.text
    assert "grad norm 1 (epoch 0) -> 40 (epoch 3)" in finding.evidence and "last finite train loss 0.7 (epoch 3)" in finding.evidence


def test_an_exception_is_reported_with_its_message(tmp_path):
    error = {"error_type": "RuntimeError", "message": "CUDA out of memory", "traceback": "File x\nRuntimeError: CUDA out of memory"}
    report = load_run_report(write_run(tmp_path, status="FAILED", stop_reason="exception: RuntimeError", exception=error))
    finding = report.findings[0]
    assert finding.title == "Failed" and finding.text.endswith("with RuntimeError: CUDA out of memory")
    assert finding.evidence.endswith("RuntimeError: CUDA out of memory")


def test_input_bound_and_under_used_gpu_cite_their_numbers(tmp_path):
    epochs = _epochs([1.0, 0.9, 0.85], [1.0, 0.9, 0.85], wait=[0.3, 0.4, 0.5])
    report = load_run_report(write_run(tmp_path, epochs, telemetry=TELEMETRY.assign(gpu0_util_pct=20.0), payload={},
                                       config={"data": {"loader": "stream", "num_workers": 0}}))
    bound = next(f for f in report.findings if f.kind == "input_bound")
    assert "waited for data 40.0 % of the time (data.loader = stream, data.num_workers = 0)" in bound.text
    assert bound.evidence == "data_wait_frac mean 0.400 over 3 epochs, highest 0.500 (epoch 2) (scalars.csv)"
    idle = next(f for f in report.findings if f.kind == "gpu_underused")
    assert "busy 20.0 % of the time on average (< 50 %); the data wait above explains part of it" in idle.text
    assert idle.evidence == "GPU utilisation mean 20.0 % (telemetry.csv, 10 samples; GPU 0: 20.0 %)"


def test_find_is_deterministic(tmp_path):
    report = load_run_report(write_run(tmp_path))
    assert find(report) == find(report) == report.findings


# -- a real run ----------------------------------------------------------------------------------------


def test_markdown_report_of_a_real_cpu_run(autoencoder_run, tmp_path):
    paths = write_run_report_markdown(autoencoder_run, tmp_path / "report")
    assert set(paths) == {"markdown", "telemetry", "curves"} and all(p.is_file() for p in paths.values())
    markdown = paths["markdown"].read_text()
    assert "![Telemetry](telemetry.png)" in markdown and "![Training curves](curves.png)" in markdown
    assert "- **Status:** COMPLETED (max_epochs)" in markdown and "No GPU telemetry:" in markdown
    report = load_run_report(autoencoder_run)
    assert markdown == report.to_markdown({"telemetry": "telemetry.png", "curves": "curves.png"})
    assert len(report.steps_table) > 2  # sync points every step: the loss panel's raw line
    assert report.metrics.samples == 2 * 560 and report.epochs_completed == 2


# -- escaping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("<script>alert(1)</script>", "&lt;script>alert(1)&lt;/script>"),
    ("**x**|y", r"\*\*x\*\*\|y"),
    ("[link](http://x) `code` ~~gone~~", r"\[link\](http://x) \`code\` \~\~gone\~\~"),
    ("_emph_ but max_epochs", r"\_emph\_ but max_epochs"),  # "_" inside a word never emphasises
    ("&amp; & b", "&amp;amp; & b"),
    ("# not a heading", r"\# not a heading"),
    ("1. not a list", r"1\. not a list"),
    ("two\nlines", "two lines"),
    ("C:\\runs", r"C:\\runs"),
    (None, "n/a"),
    (0.001, "0.001"),
])
def test_escape_markdown(value, expected):
    assert escape_markdown(value) == expected


def test_escape_markdown_code_spans_and_blocks_outlast_backticks():
    assert escape_markdown("a``b", code=True) == "```a``b```"
    assert escape_markdown("`x", code=True) == "`` `x ``"
    assert escape_markdown("one\n```\ntwo", code="text") == "````text\none\n```\ntwo\n````"


HOSTILE = "<script>alert(1)</script>**x**|y"


def test_hostile_strings_from_every_field_of_a_run_render_as_text(tmp_path):
    """Every string a run provides, in every section: nothing of it becomes markup outside code blocks."""
    error = {"error_type": "RuntimeError", "message": HOSTILE, "traceback": f"File x\nRuntimeError: {HOSTILE}"}
    payload = {**PAYLOAD, "backend": HOSTILE, "power_field": HOSTILE, "energy_method": HOSTILE, "warning": HOSTILE,
               "devices": [{"index": 0, "name": HOSTILE}]}
    config = {section: {key: HOSTILE for key in keys} for section, keys in {
        "model": ("task", "encoder", "bottleneck", "decoder"), "trainer": ("precision", "device"),
        "optim": ("name", "scheduler"), "data": ("path", "loader")}.items()}
    run_dir = write_run(tmp_path, status="FAILED", stop_reason=HOSTILE, exception=error, payload=payload,
                        config=config, device=f"cuda:0 {HOSTILE}")
    with open(run_dir / "logs" / "stdout.log", "a") as log:
        log.write(HOSTILE + "\n")
    report = load_run_report(run_dir)
    report.test_metrics = {HOSTILE: 1.0}
    report.confusion = {"matrix": [[1, 0], [0, 1]], "class_names": [HOSTILE, "b"]}
    markdown = report.to_markdown({"telemetry": "telemetry.png", "curves": "curves.png"})
    outside_code = re.sub(r"(`{3,})[a-z]*\n.*?\n\1", "", markdown, flags=re.S)
    assert outside_code.count(r"&lt;script>alert(1)&lt;/script>\*\*x\*\*\|y") >= 15
    assert "<script" not in outside_code and not re.search(r"(?<!\\)\*\*x", outside_code)
    assert not re.search(r"(?<!\\)\|y", outside_code)
    assert HOSTILE in markdown  # the log tail and config.yaml keep the text verbatim, inside code blocks
