"""Re-running a sweep resumes its unfinished points: a point stopped by a signal, or killed, continues
its own run directory from last.pt (`trainer.resume_from="auto"`, which the sweep sets on every point);
completed points are skipped, and a point that never ran starts a new run.

The first attempt is a real `thesis-lib sweep` child process stopped by SIGTERM (what a batch system
sends before it preempts or requeues a job) or killed by SIGKILL once its first point has a
checkpoint; the re-run is the same sweep, here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thesis_lib.data import make_synthetic_events
from thesis_lib.sweep import sweep

pytestmark = pytest.mark.slow

EPOCHS = 6  # the signal lands after the first point's first epoch, long before it ends
GRID = {"model.bottleneck": ["identity", "vq"]}


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return make_synthetic_events(tmp_path_factory.mktemp("sweep_resume") / "events.h5", n_events=400, seed=0)


def _base(events: Path, out: Path) -> dict:
    return {"output_root": str(out), "data": {"path": str(events), "batch_size": 16},
            "model": {"encoder": "transformer", "hidden_dim": 32, "num_layers": 1, "latent_dim": 8,
                      "vq": {"code_dim": 4, "codebook_size": 16}},
            "trainer": {"epochs": EPOCHS, "device": "cpu", "max_steps_per_epoch": 4, "sync_every_n_steps": 1},
            "report": {"enabled": False}, "telemetry": {"enabled": False}}


def _signals_default() -> None:
    stop_signals = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    for signum in stop_signals:
        signal.signal(signum, signal.SIG_DFL)


def _start_sweep(events: Path, out: Path) -> subprocess.Popen:
    base = out.parent / f"{out.name}_base.yaml"
    base.write_text(yaml.safe_dump(_base(events, out)))
    command = [sys.executable, "-m", "thesis_lib.cli", "sweep", "--config", str(base), "--name", "resume",
               "--grid", "model.bottleneck=identity,vq"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_signals_default)


def _wait_for_first_checkpoint(proc: subprocess.Popen, out: Path) -> Path:
    deadline = time.time() + 180
    while time.time() < deadline:
        found = list(out.glob("multiruns/*/runs/*/facts/events.jsonl"))
        if found and '"on_epoch_end"' in found[0].read_text() and (found[0].parents[1] / "last.pt").exists():
            return found[0].parents[1]
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early (rc {proc.returncode}): {proc.stdout.read().decode()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the sweep's first point never finished an epoch")


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "facts" / "events.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_rerun_resumes_the_interrupted_point_in_its_run_directory(events, tmp_path, how):
    out = tmp_path / "out"
    proc = _start_sweep(events, out)
    first_run = _wait_for_first_checkpoint(proc, out)
    proc.send_signal(getattr(signal, how))
    first_output, _ = proc.communicate(timeout=120)
    sweep_dir = first_run.parents[1]
    before = _events(first_run)
    if how == "SIGTERM":
        end = [e for e in before if e["moment"] == "on_train_end"][-1]
        assert (end["status"], end["stop_reason"]) == ("STOPPED", "signal: SIGTERM"), first_output.decode()
    else:
        assert not [e for e in before if e["moment"] == "on_train_end"]  # killed: CRASHED
    saved_epochs = len([e for e in before if e["moment"] == "on_epoch_end"])

    result = sweep(_base(events, out), GRID, name="resume")

    assert result.sweep_dir == sweep_dir and result.ok, [(p.name, p.status, p.error) for p in result.points]
    assert [p.status for p in result.points] == ["COMPLETED", "COMPLETED"]
    interrupted = result.points[0]
    assert interrupted.run_dir == first_run  # continued where it was, not a second run of the point
    runs = sorted(p.name for p in (sweep_dir / "runs").iterdir())
    assert len(runs) == 2, runs
    events_after = _events(first_run)
    starts = [e for e in events_after if e["moment"] == "on_start"]
    assert len(starts) == 2 and starts[0].get("resumed_from_epoch") is None
    assert starts[1]["resumed_from_epoch"] >= 1 and starts[1]["resumed_from_epoch"] <= saved_epochs
    epochs = [e["epoch"] for e in events_after if e["moment"] == "on_epoch_end"]
    assert max(epochs) == EPOCHS - 1
    assert "resuming" in (first_run / "logs" / "stdout.log").read_text()
    recorded = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert [p["status"] for p in recorded["points"]] == ["COMPLETED", "COMPLETED"]

    again = sweep(_base(events, out), GRID, name="resume")  # nothing left: both skipped, no new run
    assert all(p.skipped for p in again.points)
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == runs
