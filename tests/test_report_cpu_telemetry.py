"""A CPU run's telemetry.png draws what was sampled (process CPU % and RSS), and says truthfully why there is no GPU.

Real tiny runs through fit(): one on the CPU with NVML failing as it does on a machine without
the NVIDIA driver (a stand-in pynvml, so the wording is the same on a GPU machine), one with the
scripted NVML stand-in, whose figure keeps the six GPU panels.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import read_events
from thesis_lib.reports import load_run_report, plot_telemetry, telemetry_figure
from thesis_lib.reports.run_metrics import telemetry_summary
from thesis_lib.reports.telemetry_plot import PROCESS_PANELS, TELEMETRY_PANELS
from thesis_lib.telemetry import ScriptedBackend, TelemetrySampler, TelemetryWarning
from thesis_lib.train import fit
from test_telemetry import _nvml_without_library as nvml_without_library

# `thesis_lib.train` the attribute is workflow's function; the module is reached through importlib.
RESOURCES = importlib.import_module("thesis_lib.train.resources")
NO_LIBRARY = "no NVIDIA GPU visible: NVML Shared Library Not Found"


def nvml_with_one_gpu() -> types.SimpleNamespace:
    """A pynvml that starts and sees one GPU (enough for the probe and device lookup, not for readings)."""
    return types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: "Stand-in H100",
        nvmlDeviceGetUUID=lambda h: "GPU-0000aaaa",
    )


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    return make_synthetic_events(tmp_path_factory.mktemp("cpu_tel") / "events.h5", n_events=1000, seed=0, n_tokens=8)


def train(events: Path, tmp_path: Path, batch_size: int = 32, **trainer) -> Path:
    """A tiny run on the CPU with telemetry on (every 0.1 s); returns its run directory."""
    result = fit({
        "output_root": str(tmp_path / "outputs"), "run_name": "cpu_tel",
        "data": {"path": str(events), "batch_size": batch_size},
        "model": {"encoder": "mlp", "bottleneck": "identity", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1},
        "trainer": {"epochs": 2, "seed": 0, "device": "cpu", "sync_every_n_steps": 4, **trainer},
        "telemetry": {"interval_s": 0.1}, "report": {"enabled": False},
    })
    assert result.status == "COMPLETED"
    return Path(result.run_dir)


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


def drawn_values(ax) -> np.ndarray:
    """The y values of the solid data lines of a panel (epoch marks are dotted)."""
    lines = [line for line in ax.lines if line.get_linestyle() != ":"]
    return np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in lines]) if lines else np.empty(0)


def test_cpu_run_draws_process_cpu_and_rss_and_says_no_nvidia_gpu_is_visible(events, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", nvml_without_library())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TelemetryWarning)  # a CPU run's missing GPU is a note, not a warning
        run_dir = train(events, tmp_path, batch_size=8)  # ~90 steps an epoch: a second or more of samples
    end = next(e for e in read_events(run_dir) if e["moment"] == "on_train_end")
    assert end["telemetry"]["warning"] == NO_LIBRARY  # what the run recorded: NVML's own reason

    report = load_run_report(run_dir)
    assert report.device == "cpu" and not report.telemetry.has_gpu
    assert report.telemetry.warning.startswith("no NVIDIA GPU visible")
    assert f"No GPU telemetry: {NO_LIBRARY}." in report.section("telemetry")

    fig = telemetry_figure(report)
    assert titles(fig) == list(PROCESS_PANELS)
    cpu_ax, rss_ax = fig.axes[2], fig.axes[3]
    assert "CPU" in cpu_ax.get_title(loc="left") and "RSS" in rss_ax.get_title(loc="left")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert not any("no gpu telemetry" in text.lower() for text in texts)  # no empty boxes
    assert fig.get_supxlabel() == f"No GPU telemetry: {NO_LIBRARY}."
    samples = report.telemetry_table
    assert len(samples) >= 5
    cpu, rss = drawn_values(cpu_ax), drawn_values(rss_ax)
    # a CPU reading needs 50 ms of CPU time since the last one: the first and last samples may have none
    assert np.isfinite(cpu).sum() >= 3 and (cpu[np.isfinite(cpu)] >= 0).all()
    assert np.isfinite(rss).sum() >= 3 and (rss[np.isfinite(rss)] > 10).all()  # MB of a Python process with torch
    assert list(rss_ax.lines[0].get_ydata()) == pytest.approx(samples["rss_mb"].tolist(), nan_ok=True)
    assert all(ax.has_data() for ax in fig.axes)
    # the bottom row carries the time axis
    assert [ax.get_xlabel() for ax in fig.axes[2:]] == ["time since start (s)"] * 2
    path = plot_telemetry(report, tmp_path / "telemetry.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scripted_gpu_run_keeps_the_six_gpu_panels(events, tmp_path, monkeypatch):
    backend = ScriptedBackend([{"name": "Scripted H100", "uuid": "GPU-scripted-0"}],
                              lambda t, i: {"util": 80.0, "mem_used_mb": 2048.0 + 100 * t, "mem_total_mb": 81559.0,
                                            "power_w": 300.0 + 20 * np.sin(t), "temp_c": 55.0, "sm_clock_mhz": 1980.0})
    monkeypatch.setattr(RESOURCES, "telemetry_backend", lambda device: backend)
    report = load_run_report(train(events, tmp_path))
    assert report.telemetry.has_gpu and report.gpu_devices() == [0] and report.telemetry.warning is None
    fig = telemetry_figure(report)
    assert titles(fig) == list(TELEMETRY_PANELS)
    for ax in fig.axes[2:]:
        assert np.isfinite(drawn_values(ax)).sum() >= 2, ax.get_title(loc="left")
    assert len(fig.axes[4].collections) == 1  # power's rolling min/max shading
    assert not any(ax.texts for ax in fig.axes) and fig.get_supxlabel() in ("", None)
    assert "Scripted H100" in fig.get_suptitle()


def test_sampler_without_backend_on_a_machine_with_a_gpu_says_it_was_not_given_one(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", nvml_with_one_gpu())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    summary = TelemetrySampler(tmp_path / "t.csv", interval_s=0.1, backend=None).start().stop()
    assert summary["warning"] == "no GPU backend was given (backend=None), although NVML sees 1 GPU(s)"
    table = pd.read_csv(tmp_path / "t.csv")
    # the trainer gives a CPU run no backend: the report says the run trained on cpu
    cpu = telemetry_summary(table, summary, {}, "cpu")
    assert cpu.warning == "the run trained on cpu, so no GPU was sampled, although NVML sees 1 GPU(s)"
    assert telemetry_summary(table, summary, {}, None).warning == summary["warning"]


def test_auto_backend_names_nvmls_reason_or_the_hiding_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", nvml_without_library())
    with pytest.warns(TelemetryWarning) as caught:
        summary = TelemetrySampler(tmp_path / "a.csv", interval_s=0.1).start().stop()
    assert summary["warning"] == NO_LIBRARY and [str(w.message) for w in caught] == [NO_LIBRARY]
    monkeypatch.setitem(sys.modules, "pynvml", nvml_with_one_gpu())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.warns(TelemetryWarning):
        summary = TelemetrySampler(tmp_path / "b.csv", interval_s=0.1).start().stop()
    assert summary["warning"] == ("no NVIDIA GPU visible: CUDA_VISIBLE_DEVICES='' names none of the 1 device(s) "
                                  "NVML sees")


@pytest.mark.parametrize("recorded, device, shown", [
    # runs recorded before the sampler said why: every CPU run had this note
    ("GPU telemetry off: no GPU backend was requested (backend=None)", "cpu",
     "the run trained on cpu, so no GPU was sampled"),
    ("GPU telemetry off: no GPU backend was requested (backend=None)", None,
     "no GPU backend was requested (backend=None)"),
    ("GPU telemetry off: pynvml is not installed (pip install nvidia-ml-py)", "cuda:0",
     "pynvml is not installed (pip install nvidia-ml-py)"),
    (NO_LIBRARY, "cpu", NO_LIBRARY),
])
def test_recorded_reasons_read_after_no_gpu_telemetry(recorded, device, shown):
    table = pd.DataFrame({"t": [0.0, 0.5], "cpu_pct": [90.0, 95.0], "rss_mb": [500.0, 510.0]})
    summary = telemetry_summary(table, {"backend": None, "warning": recorded}, {}, device)
    assert summary.warning == shown and not summary.warning.startswith("GPU telemetry off")


def test_telemetry_switched_off_in_the_config_says_so():
    summary = telemetry_summary(pd.DataFrame(), {}, {}, "cpu", {"enabled": False})
    assert summary.warning == "telemetry was switched off (telemetry.enabled: false)"
    older = telemetry_summary(pd.DataFrame(), {}, {}, "cpu")
    assert older.warning == "facts/telemetry.csv is absent (telemetry was off, or the run predates the sampler)"


def test_a_run_without_process_samples_has_no_empty_panels(tmp_path, events, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", nvml_without_library())
    run_dir = train(events, tmp_path, epochs=1)
    (run_dir / "facts" / "telemetry.csv").unlink()  # a run from before the sampler
    report = load_run_report(run_dir)
    fig = telemetry_figure(report)
    assert titles(fig) == list(PROCESS_PANELS[:2]) and all(ax.has_data() for ax in fig.axes)
    assert fig.get_supxlabel().startswith("No GPU telemetry: ")
