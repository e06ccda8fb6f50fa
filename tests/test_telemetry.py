"""TelemetrySampler against the scripted NVML stand-in: rows, failures, energy, windows, lifecycle."""

from __future__ import annotations

import csv
import os
import statistics
import sys
import threading
import time
import types
import warnings

import pytest

from thesis_lib.telemetry import NvmlBackend, ScriptedBackend, TelemetrySampler, TelemetryWarning
from thesis_lib.telemetry.backends import nvml_indices_for_torch_devices, visible_nvml_indices
from thesis_lib.telemetry.records import telemetry_columns
from thesis_lib.telemetry import backends as backends_module

H100 = {"name": "Scripted H100", "uuid": "GPU-aaaa1111"}
H100_B = {"name": "Scripted H100", "uuid": "GPU-bbbb2222"}
GPU_FIELDS = ["util_pct", "mem_used_mb", "mem_total_mb", "power_w", "temp_c", "sm_clock_mhz", "energy_j"]


def steady(power_w: float = 250.0):
    """Readings that never change: device 0 and device 1 differ so their columns can be told apart."""
    def readings(t: float, index: int) -> dict:
        if index == 0:
            return {"util": 50, "mem_used_mb": 1000.0, "mem_total_mb": 81559.0, "power_w": power_w,
                    "temp_c": 40, "sm_clock_mhz": 1980}
        return {"util": 70, "mem_used_mb": 3000.0, "mem_total_mb": 81559.0, "power_w": 150.0,
                "temp_c": 45, "sm_clock_mhz": 1755}
    return readings


def read_rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def telemetry_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]


@pytest.fixture(autouse=True)
def _all_devices_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_readings_become_rows_per_device(tmp_path):
    backend = ScriptedBackend([H100, H100_B], steady(), energy_counter=False)
    path = tmp_path / "facts" / "telemetry.csv"
    with TelemetrySampler(path, interval_s=0.1, backend=backend) as sampler:
        time.sleep(0.55)
        window = sampler.mark()
        latest = sampler.latest()
    columns, rows = read_rows(path)
    assert 0.3 < latest.pop("t") < 0.7
    assert latest == {"util_pct": 60.0, "mem_used_mb": 3000.0, "mem_total_mb": 81559.0, "power_w": 400.0,
                      "temp_c": 45, "sm_clock_mhz": 1755}
    assert columns == ["t", "cpu_pct", "rss_mb"] + [f"gpu{i}_{f}" for i in (0, 1) for f in GPU_FIELDS]
    assert columns == telemetry_columns([0, 1])
    assert 5 <= len(rows) <= 9
    for row in rows:
        assert (row["gpu0_util_pct"], row["gpu0_mem_used_mb"], row["gpu0_mem_total_mb"]) == ("50", "1000.0", "81559.0")
        assert (row["gpu0_power_w"], row["gpu0_temp_c"], row["gpu0_sm_clock_mhz"]) == ("250.00", "40", "1980")
        assert (row["gpu1_util_pct"], row["gpu1_mem_used_mb"], row["gpu1_power_w"]) == ("70", "3000.0", "150.00")
        assert float(row["rss_mb"]) > 10
    times = [float(r["t"]) for r in rows]
    assert times == sorted(times) and times[0] < 0.1
    assert statistics.median(b - a for a, b in zip(times, times[1:])) == pytest.approx(0.1, abs=0.02)
    # several GPUs: power summed, utilisation averaged, memory and temperature the max
    assert window["power_avg_w"] == 400.0 and window["power_max_w"] == 400.0
    assert window["gpu_util_avg"] == 60.0
    assert window["nvml_mem_peak_mb"] == 3000.0 and window["nvml_mem_avg_mb"] == 3000.0
    assert window["temp_max_c"] == 45.0
    info = sampler.info()
    assert info["devices"] == [{"index": 0, **H100}, {"index": 1, **H100_B}]
    assert (info["backend"], info["power_field"], info["memory_info"]) == ("scripted", "instant", "v2")
    assert info["warning"] is None
    # NVML is initialised in the sampler thread and only that thread ever queries the devices
    assert backend.init_calls == [(os.getpid(), "thesis-lib-telemetry")]
    assert backend.query_threads == {"thesis-lib-telemetry"}
    assert backend.shutdown_calls == 1


def test_gpu_error_mid_run_keeps_cpu_rows_and_warns_once(tmp_path):
    backend = ScriptedBackend([H100], steady(), energy_counter=False, fail_after=4)
    path = tmp_path / "telemetry.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = TelemetrySampler(path, interval_s=0.1, backend=backend).start()
        time.sleep(0.8)
        window = sampler.mark()
        summary = sampler.stop()
    _, rows = read_rows(path)
    assert [r["gpu0_power_w"] for r in rows[:4]] == ["250.00"] * 4
    assert all(r["gpu0_power_w"] == "" and r["gpu0_energy_j"] == "" and r["gpu0_util_pct"] == "" for r in rows[4:])
    assert len(rows) >= 8 and all(float(r["rss_mb"]) > 10 for r in rows)
    messages = telemetry_warnings(caught)
    assert len(messages) == 1
    assert "GPU telemetry stopped" in messages[0] and "ScriptedNVMLError: GPU is lost" in messages[0]
    assert summary["warning"] == messages[0]
    assert summary["samples"] == len(rows) and window["power_avg_w"] == 250.0
    assert sampler.latest() is None  # the newest sample has no GPU reading
    assert backend.read_calls == 4 and backend.shutdown_calls == 1


def test_energy_from_counter_within_2_percent(tmp_path):
    # The counter says 300 J/s while the power readings say 250 W: the result shows which one was used.
    backend = ScriptedBackend([H100], steady(250.0), energy_counter=lambda t, i: 300.0 * t)
    path = tmp_path / "telemetry.csv"
    with TelemetrySampler(path, interval_s=0.1, backend=backend, energy_interval_s=0.3) as sampler:
        time.sleep(1.0)
    summary = sampler.stop()
    assert summary["energy_method"] == "counter"
    assert summary["energy_j"] == pytest.approx(300.0 * summary["duration_s"], rel=0.02)
    _, rows = read_rows(path)
    # rows interpolate between counter reads: they follow the counter's 300 J/s, not the 250 W readings
    for row in rows:
        assert float(row["gpu0_energy_j"]) == pytest.approx(300.0 * float(row["t"]), abs=6.0)
    # the final counter read comes a moment after the final sample
    assert float(rows[-1]["gpu0_energy_j"]) == pytest.approx(summary["energy_j"], abs=1.5)


def test_energy_integrated_without_counter_within_2_percent(tmp_path):
    backend = ScriptedBackend([H100], steady(250.0), energy_counter=False)
    path = tmp_path / "telemetry.csv"
    with TelemetrySampler(path, interval_s=0.1, backend=backend) as sampler:
        time.sleep(1.0)
    summary = sampler.stop()
    assert summary["energy_method"] == "integrated"
    assert summary["energy_j"] == pytest.approx(250.0 * summary["duration_s"], rel=0.02)
    _, rows = read_rows(path)
    energies = [float(r["gpu0_energy_j"]) for r in rows]
    assert energies == sorted(energies)
    assert energies[-1] == pytest.approx(summary["energy_j"], abs=0.01)


def test_mark_windows_split_the_energy(tmp_path):
    backend = ScriptedBackend([H100], steady(300.0), energy_counter=True, has_instant_power=False)
    path = tmp_path / "telemetry.csv"
    sampler = TelemetrySampler(path, interval_s=0.1, backend=backend).start()
    time.sleep(0.5)
    first = sampler.mark()
    time.sleep(0.5)
    second = sampler.mark()
    summary = sampler.stop()
    rest = sampler.mark()
    assert summary["power_field"] == "average"
    assert first["samples"] + second["samples"] + rest["samples"] == summary["samples"]
    # a window ends at its last sample: 300 J/s times the time between the windows' last rows
    _, rows = read_rows(path)
    end_first = float(rows[first["samples"] - 1]["t"])
    end_second = float(rows[first["samples"] + second["samples"] - 1]["t"])
    assert first["energy_j"] == pytest.approx(300.0 * end_first, abs=3.0)
    assert second["energy_j"] == pytest.approx(300.0 * (end_second - end_first), abs=3.0)
    assert first["energy_j"] + second["energy_j"] + rest["energy_j"] == pytest.approx(summary["energy_j"], rel=1e-9)


def _nvml_without_library() -> types.ModuleType:
    """A pynvml whose nvmlInit fails as it does on a machine without the NVIDIA driver."""
    class NVMLError_LibraryNotFound(Exception):
        def __str__(self) -> str:
            return "NVML Shared Library Not Found"

    def nvml_init() -> None:
        raise NVMLError_LibraryNotFound()

    return types.SimpleNamespace(nvmlInit=nvml_init, NVMLError_LibraryNotFound=NVMLError_LibraryNotFound)


def test_no_gpu_backend_writes_cpu_columns_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _nvml_without_library())
    path = tmp_path / "telemetry.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with TelemetrySampler(path, interval_s=0.1, backend=None) as sampler:
            time.sleep(0.35)
            window = sampler.mark()
            assert sampler.latest() is None
    columns, rows = read_rows(path)
    assert columns == ["t", "cpu_pct", "rss_mb"]
    assert len(rows) >= 3 and all(float(r["rss_mb"]) > 10 for r in rows)
    assert any(r["cpu_pct"] != "" for r in rows)
    info = sampler.info()
    assert info["backend"] is None and info["devices"] == [] and info["energy_method"] is None
    # NVML, asked once why there is no GPU, answers in its own words
    assert info["warning"] == "no NVIDIA GPU visible: NVML Shared Library Not Found"
    assert telemetry_warnings(caught) == []  # asked for: recorded, not warned
    assert window["energy_j"] is None and window["power_avg_w"] is None and window["samples"] >= 3


def test_auto_without_pynvml_and_failing_init_warn_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = TelemetrySampler(tmp_path / "a.csv", interval_s=0.1).start().stop()
        failing = ScriptedBackend([H100], steady(), fail_init="Driver Not Loaded")
        failed = TelemetrySampler(tmp_path / "b.csv", interval_s=0.1, backend=failing).start().stop()
    assert telemetry_warnings(caught) == [
        "pynvml is not installed, so NVIDIA GPUs cannot be read (pip install nvidia-ml-py)",
        "the scripted backend could not start (ScriptedNVMLError: Driver Not Loaded)",
    ]
    assert summary["backend"] is None and failed["backend"] is None and failed["samples"] >= 1
    assert read_rows(tmp_path / "b.csv")[0] == ["t", "cpu_pct", "rss_mb"]


def test_missing_device_index_and_hidden_devices_turn_gpu_off(tmp_path, monkeypatch):
    with pytest.warns(TelemetryWarning, match=r"device index \[3\] not found: the scripted backend sees 1 device"):
        TelemetrySampler(tmp_path / "a.csv", interval_s=0.1, devices=[3],
                         backend=ScriptedBackend([H100], steady())).start().stop()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.warns(TelemetryWarning, match="no GPU visible to this process"):
        TelemetrySampler(tmp_path / "b.csv", interval_s=0.1, backend=ScriptedBackend([H100], steady())).start().stop()


def test_visible_devices_follow_cuda_visible_devices():
    backend = ScriptedBackend([H100, H100_B], steady())
    assert visible_nvml_indices(backend, 2, None) == [0, 1]
    assert visible_nvml_indices(backend, 2, "1") == [1]
    assert visible_nvml_indices(backend, 2, "GPU-bbbb,0") == [1, 0]
    assert visible_nvml_indices(backend, 2, "0,7,1") == [0]  # CUDA stops at the first bad entry
    assert visible_nvml_indices(backend, 2, "-1") == []


def test_torch_indices_map_to_nvml_indices_by_uuid(monkeypatch):
    backend = ScriptedBackend([H100, H100_B], steady())
    # CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is NVML's device 1
    monkeypatch.setattr(backends_module, "_torch_device_uuid", lambda i: {0: "bbbb2222", 1: "unknown"}[i])
    assert nvml_indices_for_torch_devices([0, 1], backend=backend) == [1, 1]
    assert backend.shutdown_calls == 1
    broken = ScriptedBackend([H100], steady(), fail_init="Driver Not Loaded")
    assert nvml_indices_for_torch_devices([0], backend=broken) == [0]


def test_pid_change_reinitialises_in_the_sampler_thread(tmp_path, monkeypatch):
    backend = ScriptedBackend([H100], steady(), energy_counter=False)
    sampler = TelemetrySampler(tmp_path / "telemetry.csv", interval_s=0.1, backend=backend).start()
    time.sleep(0.15)
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)  # what the thread sees after a fork
    time.sleep(0.25)
    monkeypatch.undo()
    time.sleep(0.15)
    summary = sampler.stop()
    # each change of process id re-initialises the backend, always from the sampler thread
    assert backend.init_calls == [(real_pid, "thesis-lib-telemetry"), (real_pid + 1, "thesis-lib-telemetry"),
                                  (real_pid, "thesis-lib-telemetry")]
    assert summary["warning"] is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_sees_a_stopped_sampler(tmp_path):
    path = tmp_path / "telemetry.csv"
    backend = ScriptedBackend([H100], steady(), energy_counter=False)
    sampler = TelemetrySampler(path, interval_s=0.1, backend=backend).start()
    time.sleep(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running: the child uses none
        pid = os.fork()
    if pid == 0:
        ok = sampler.mark()["samples"] == 0 and sampler.stop()["samples"] == 0 and backend.init_calls[-1][0] != os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    summary = sampler.stop()
    assert os.waitstatus_to_exitcode(status) == 0
    _, rows = read_rows(path)
    assert len(rows) == summary["samples"] and len(backend.init_calls) == 1


def test_interval_is_clamped_and_checked(tmp_path):
    with pytest.warns(TelemetryWarning, match=r"interval_s=0.02 is below 0.1 s"):
        sampler = TelemetrySampler(tmp_path / "t.csv", interval_s=0.02, backend=None)
    assert sampler.interval_s == 0.1 and sampler.info()["interval_s"] == 0.1
    with pytest.raises(ValueError, match=r"interval_s must be a positive number of seconds, got 0"):
        TelemetrySampler(tmp_path / "t.csv", interval_s=0, backend=None)
    with pytest.raises(ValueError, match=r"energy_interval_s must be a positive number of seconds, got nan"):
        TelemetrySampler(tmp_path / "t.csv", energy_interval_s=float("nan"), backend=None)


def test_stop_is_idempotent_and_safe_without_start(tmp_path):
    never = TelemetrySampler(tmp_path / "never.csv", backend=None)
    assert never.stop()["samples"] == 0 and never.stop()["duration_s"] == 0.0
    assert not (tmp_path / "never.csv").exists()
    sampler = TelemetrySampler(tmp_path / "t.csv", interval_s=0.1, backend=None).start()
    first = sampler.stop()
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert sampler.stop() is first
    assert (tmp_path / "t.csv").read_text().splitlines() == lines
    assert not any(t.name == "thesis-lib-telemetry" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="was stopped; create a new one"):
        sampler.start()


def test_t_counts_from_start_time(tmp_path):
    start_time = time.time() - 100.0
    with TelemetrySampler(tmp_path / "t.csv", interval_s=0.1, backend=None, start_time=start_time):
        time.sleep(0.15)
    _, rows = read_rows(tmp_path / "t.csv")
    assert 100.0 <= float(rows[0]["t"]) < 100.5


def test_resumed_run_appends_and_different_header_rotates(tmp_path):
    path = tmp_path / "telemetry.csv"
    TelemetrySampler(path, interval_s=0.1, backend=None).start().stop()
    with open(path, "a") as handle:
        handle.write("0.9,12")  # a run killed mid-row
    summary = TelemetrySampler(path, interval_s=0.1, backend=None).start().stop()
    lines = path.read_text().splitlines()
    assert lines.count("t,cpu_pct,rss_mb") == 1 and "0.9,12" in lines
    assert summary["csv_path"] == str(path)
    rotated = TelemetrySampler(path, interval_s=0.1, backend=ScriptedBackend([H100], steady())).start().stop()
    assert rotated["csv_path"] == str(tmp_path / "telemetry_1.csv")
    assert read_rows(tmp_path / "telemetry_1.csv")[0] == telemetry_columns([0])
    assert path.read_text().splitlines()[: len(lines)] == lines


def fake_pynvml(*, instant_ok: bool, memory_v2_ok: bool) -> types.ModuleType:
    """pynvml with its constants and error classes, and the device calls NvmlBackend makes answered in Python."""
    pynvml = pytest.importorskip("pynvml")
    fake = types.ModuleType("pynvml")
    fake.__dict__.update({k: v for k, v in vars(pynvml).items() if k.startswith(("NVML_", "NVMLError", "nvmlMemory"))})
    fake.nvmlInit = fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    fake.nvmlDeviceGetUUID = lambda h: "GPU-1234"
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87)
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 61
    fake.nvmlDeviceGetClockInfo = lambda h, clock: 1980 if clock == fake.NVML_CLOCK_SM else 0
    fake.nvmlDeviceGetPowerUsage = lambda h: 312_000
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: 5_000_000

    def memory(h, version=None):
        if version is None:  # v1 counts the driver's reserved memory as used
            return types.SimpleNamespace(used=600 * 2**20, total=81559 * 2**20)
        if not memory_v2_ok:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return types.SimpleNamespace(used=100 * 2**20, total=81559 * 2**20)

    def field_values(h, field_ids):
        value = pynvml.c_nvmlFieldValue_t()
        value.nvmlReturn = pynvml.NVML_SUCCESS if instant_ok else pynvml.NVML_ERROR_NOT_SUPPORTED
        value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        value.value.uiVal = 345_678
        return [value]

    fake.nvmlDeviceGetMemoryInfo = memory
    fake.nvmlDeviceGetFieldValues = field_values
    return fake


def test_nvml_backend_prefers_instant_power_and_memory_v2(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(instant_ok=True, memory_v2_ok=True))
    backend = NvmlBackend()
    backend.init()
    assert backend.device(0) == {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234"}
    assert backend.read(0) == {"util": 87, "mem_used_mb": 100.0, "mem_total_mb": 81559.0, "power_w": 345.678,
                               "temp_c": 61, "sm_clock_mhz": 1980, "power_field": "instant", "memory_info": "v2"}
    assert backend.energy_mj(0) == 5_000_000


def test_nvml_backend_falls_back_to_averaged_power_and_memory_v1(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(instant_ok=False, memory_v2_ok=False))
    backend = NvmlBackend()
    backend.init()
    reading = backend.read(0)
    assert (reading["power_w"], reading["power_field"]) == (312.0, "average")
    assert (reading["mem_used_mb"], reading["memory_info"]) == (600.0, "v1")
    assert backend.read(0)["power_field"] == "average"


def test_process_stats_read_cpu_and_rss():
    import psutil

    from thesis_lib.telemetry.process import ProcessStats

    stats = ProcessStats()
    stats.start()
    assert stats.read()[0] is None  # no span to measure CPU over yet
    end = time.monotonic() + 0.2
    while time.monotonic() < end:  # keep this process busy: one core
        pass
    cpu_pct, rss_mb = stats.read()
    assert 40.0 < cpu_pct < 250.0
    assert rss_mb == pytest.approx(psutil.Process().memory_info().rss / 2**20, rel=0.05)
    stats.close()  # without /proc/self/statm, psutil answers
    assert stats.read()[1] == pytest.approx(rss_mb, rel=0.05)
