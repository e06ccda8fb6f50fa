"""Sweeps and a requeued training job on a real one-node SLURM cluster (tests/slurm_cluster.py).

Skipped, with the reason, where SLURM and munge are not installed or the tests do not run as root
(.ci/install-slurm-deps installs them in CI). The cluster starts once for the session.

- A two-point sweep with executor="slurm": each point runs in its own batch job (dask-jobqueue's
  SLURMCluster), both COMPLETED; sweep.yaml and each run's launch record say slurm and the job.
- A partition SLURM does not have: the sweep stops at once with sbatch's own message, nothing waits.
- A training job requeued with `scontrol requeue`: SLURM sends SIGTERM, the run stops (STOPPED,
  signal: SIGTERM), and the job's second start continues the same run directory through
  `trainer.resume_from=auto` to COMPLETED, its on_start naming the restart.

Requeue on this cluster (measured): `scontrol requeue` puts the job back to PENDING with
Reason=BeginTime and a begin time about 120 s ahead (SLURM holds a requeued job back so the node
can clean up). The test does what an impatient admin would, `scontrol update jobid=N StartTime=now`,
after which the job starts again within a second or two, with SLURM_RESTART_COUNT=1 set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import PARTITION, slurm_cluster  # noqa: F401  (the session's cluster)
from test_sweep import data_path, tiny_base  # noqa: F401  (the sweep tests' data and tiny base config)

from thesis_lib.errors import ConfigError
from thesis_lib.sweep import sweep

pytestmark = pytest.mark.slow

EPOCHS = 20  # the requeued run: still training seconds after its first checkpoint (0.1-0.3 s an epoch, 2 s loaded)


@pytest.fixture
def cluster(slurm_cluster, monkeypatch):  # noqa: F811
    """The session's cluster, with SLURM_CONF set for this process (dask-jobqueue runs sbatch from here)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster


def _events(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "facts" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _no_jobs_left(cluster, name: str, timeout: float = 60.0) -> None:
    """Every job named `name` is gone from the queue (the sweep cancels its worker jobs when it ends)."""
    deadline = time.monotonic() + timeout
    while True:
        left = cluster.run("squeue", "-h", "-n", name, "-o", "%i %T").stdout.strip()
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs still queued after the sweep ended: {left}")
        time.sleep(0.5)


def test_a_sweep_runs_each_point_in_a_slurm_job(cluster, tmp_path, data_path):  # noqa: F811
    options = {"cores": 1, "memory": "1GiB", "walltime": "00:10:00", "partition": PARTITION,
               "scheduler_host": "127.0.0.1"}
    result = sweep(tiny_base(data_path, tmp_path / "out"), {"model.bottleneck": ["identity", "vq"]}, [1],
                   name="on_slurm", executor="slurm", executor_options=options)

    assert [p.status for p in result.points] == ["COMPLETED", "COMPLETED"], [p.error for p in result.points]
    record = yaml.safe_load((result.sweep_dir / "sweep.yaml").read_text())
    assert record["executor"] == "slurm" and record["executor_options"] == options
    assert record["state"] == "finished" and [p["executor"] for p in record["points"]] == ["slurm", "slurm"]
    jobs = []
    for point in result.points:
        launch = json.loads((point.run_dir / "env.json").read_text())["launch"]
        assert launch["executor"] == "slurm" and launch["sweep_point"] == point.name
        assert launch["slurm"]["SLURM_JOB_NAME"] == "thesis-lib-sweep"
        jobs.append(launch["slurm"]["SLURM_JOB_ID"])
        (start,) = [e for e in _events(point.run_dir) if e["moment"] == "on_start"]
        assert start["launch"]["slurm"]["SLURM_JOB_ID"] == jobs[-1]
    assert len(set(jobs)) == 2  # one point per job: the first job to start did not take both
    for job in jobs:
        info = cluster.job(job)
        assert info["JobName"] == "thesis-lib-sweep" and info["NumCPUs"] == "1", info
    logs = sorted(p.name for p in (result.sweep_dir / "job_logs").iterdir())
    assert logs == sorted(f"thesis-lib-sweep-{j}.{kind}" for j in jobs for kind in ("err", "out"))
    _no_jobs_left(cluster, "thesis-lib-sweep")


def test_a_partition_slurm_does_not_have_stops_the_sweep_with_sbatchs_message(cluster, tmp_path, data_path):  # noqa: F811
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        sweep(tiny_base(data_path, tmp_path / "out"), {"model.bottleneck": ["identity"]}, [1], name="refused",
              executor="slurm", executor_options={"partition": "no_such_partition", "scheduler_host": "127.0.0.1"})
    message = str(raised.value)
    assert "SLURM refused the sweep's worker jobs (sbatch)" in message
    assert "invalid partition specified: no_such_partition" in message
    assert time.monotonic() - started < 60  # named at once, not after waiting for workers
    (sweep_dir,) = (tmp_path / "out" / "multiruns").iterdir()
    record = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert record["state"] == "interrupted" and [p["status"] for p in record["points"]] == ["PENDING"]
    assert not (sweep_dir / "runs").exists()


def test_a_requeued_training_job_resumes_its_run_to_completion(cluster, tmp_path, data_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    overrides = [f"data.path={data_path}", f"output_root={out}", "run_name=requeued", "model.encoder=mlp",
                 "model.hidden_dim=16", "model.latent_dim=8", "data.batch_size=32", "trainer.max_steps_per_epoch=4",
                 "trainer.device=cpu", "report.enabled=false", "telemetry.enabled=false", f"trainer.epochs={EPOCHS}",
                 "trainer.resume_from=auto"]
    script = tmp_path / "train.sh"
    # The command a user puts in a requeue-able job: the same line runs again on every start.
    script.write_text("#!/bin/bash\nexec " + " ".join([sys.executable, "-m", "thesis_lib.cli", "train", *overrides])
                      + "\n")
    job = cluster.sbatch("--requeue", "-J", "requeue-test", "-o", str(tmp_path / "job-%j.out"), "--open-mode=append",
                         "-c", "1", "--mem=1G", str(script))

    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/last.pt")):  # the first epoch saved: the run can be resumed
        info = cluster.job(job)
        if info["JobState"] not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint before the job ended or 120 s passed: {info}\n"
                                 + _read(tmp_path / f"job-{job}.out"))
        time.sleep(0.1)
    cluster.run("scontrol", "requeue", job)
    held = cluster.wait_for_state(job, ("PENDING",), timeout=60)
    assert held["Restarts"] == "1", held
    # SLURM holds a requeued job back (Reason=BeginTime, ~120 s here): let it start now.
    cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    done = cluster.wait_for_state(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=180)
    log = _read(tmp_path / f"job-{job}.out")
    assert done["JobState"] == "COMPLETED" and done["ExitCode"] == "0:0", (done, log)

    (run_dir,) = (out / "runs").iterdir()  # the restart continued the run: one run directory
    events = _events(run_dir)
    starts = [e for e in events if e["moment"] == "on_start"]
    ends = [e for e in events if e["moment"] == "on_train_end"]
    assert [(e["status"], e["stop_reason"]) for e in ends] == [("STOPPED", "signal: SIGTERM"),
                                                               ("COMPLETED", "max_epochs")], log
    first_life = events[:events.index(ends[0])]
    stopped_at = max(e["epoch"] for e in first_life if e["moment"] == "on_epoch_end")
    assert starts[0]["resumed_from_epoch"] is None and starts[1]["resumed_from_epoch"] == stopped_at + 1
    assert [e["epoch"] for e in events if e["moment"] == "on_epoch_end"][-1] == EPOCHS - 1
    assert [s["launch"]["slurm"]["SLURM_JOB_ID"] for s in starts] == [job, job]
    assert "SLURM_RESTART_COUNT" not in starts[0]["launch"]["slurm"]
    assert starts[1]["launch"]["slurm"]["SLURM_RESTART_COUNT"] == "1"
    env = json.loads((run_dir / "env.json").read_text())
    assert env["launch"]["slurm"]["SLURM_JOB_ID"] == job
    assert f"resuming {run_dir} (STOPPED, signal: SIGTERM)" in log


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else f"({path} not written)"
