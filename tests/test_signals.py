"""Stop signals and bookkeeping faults against real processes: what the run directory says afterwards.

Every test here starts `thesis-lib train` (or a small script) as a real child process, sends it
real signals or takes its console or disk away, and reads the run directory it leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from thesis_lib.data import make_synthetic_events

pytestmark = pytest.mark.slow

# Slow enough per epoch (about 0.1-0.5 s here) that a signal lands mid-epoch, small enough to start fast.
_TRAIN_ARGS = ["model.encoder=transformer", "model.hidden_dim=32", "model.num_layers=1", "model.latent_dim=8",
               "data.batch_size=16", "trainer.epochs=10000", "trainer.sync_every_n_steps=1", "report.enabled=false"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("signals") / "events.h5"
    make_synthetic_events(path, n_events=400, seed=0)
    return path


def _signals_default() -> None:
    """In the child before exec: the stop signals handled and unblocked, whatever the test runner left
    (a runner started in the background ignores SIGINT, and a child inherits that)."""
    stop_signals = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    for signum in stop_signals:
        signal.signal(signum, signal.SIG_DFL)


def _start_train(events: Path, out: Path, *extra: str, stdout=subprocess.PIPE, preexec=_signals_default):
    args = [sys.executable, "-m", "thesis_lib.cli", "train", f"data.path={events}", f"output_root={out}",
            *_TRAIN_ARGS, *extra]
    return subprocess.Popen(args, stdout=stdout, stderr=subprocess.STDOUT, preexec_fn=preexec)


def _wait_for_epochs(proc: subprocess.Popen, out: Path, epochs: int = 1) -> Path:
    """The run directory once `epochs` epochs and last.pt are on disk (the child is then mid-epoch)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((out / "runs").glob("*/facts/events.jsonl"))
        if found and found[0].read_text().count('"on_epoch_end"') >= epochs and (found[0].parents[1] / "last.pt").exists():
            time.sleep(0.2)
            return found[0].parents[1]
        if proc.poll() is not None:
            raise AssertionError(f"the child ended early (rc {proc.returncode}): {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the child run never finished an epoch")


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "facts" / "events.jsonl").read_text().splitlines()]


def _moment(run_dir: Path, moment: str) -> list[dict]:
    return [e for e in _events(run_dir) if e["moment"] == moment]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_stop_signal_ends_the_run_stopped_with_model_pt_and_exit_128_plus_signum(events, tmp_path, signum):
    out = tmp_path / "out"
    proc = _start_train(events, out)
    run_dir = _wait_for_epochs(proc, out)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, output.decode()
    (end,) = _moment(run_dir, "on_train_end")
    assert end["status"] == "STOPPED" and end["stop_reason"] == f"signal: {name}"
    for checkpoint in ("last.pt", "best_val.pt", "model.pt"):
        assert (run_dir / checkpoint).is_file(), checkpoint
    best = torch.load(run_dir / "best_val.pt", weights_only=True)
    model = torch.load(run_dir / "model.pt", weights_only=True)
    assert best["epoch"] == end["best_epoch"]
    assert all(torch.equal(best["model"][k], model[k]) for k in model)
    # The last epoch the facts hold is the one last.pt continues from.
    epochs = [e["epoch"] for e in _moment(run_dir, "on_epoch_end")]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == epochs[-1] + 1
    # No test pass raced against the batch system's kill: it is recorded as skipped, no number in it.
    (test,) = _moment(run_dir, "on_test_end")
    assert "metrics" not in test and name in test["skipped"]
    assert f"{name} received" in (run_dir / "logs" / "stdout.log").read_text()


def test_signals_while_the_run_writes_its_ending_do_not_lose_model_pt(events, tmp_path):
    """Ctrl-C pressed again and again: the first stops the run, the rest arrive while it finishes."""
    out = tmp_path / "out"
    proc = _start_train(events, out)
    run_dir = _wait_for_epochs(proc, out)
    events_file = run_dir / "facts" / "events.jsonl"
    deadline = time.time() + 60
    sent = 0
    # Until the run's ending is written (after it, the process is the CLI's again and Ctrl-C is Ctrl-C).
    while '"on_train_end"' not in events_file.read_text() and proc.poll() is None and time.time() < deadline:
        proc.send_signal(signal.SIGINT)
        sent += 1
        time.sleep(0.005)
    output, _ = proc.communicate(timeout=60)
    assert sent >= 2
    assert proc.returncode == 128 + signal.SIGINT, output.decode()
    (end,) = _moment(run_dir, "on_train_end")
    assert end["status"] == "STOPPED" and end["stop_reason"] == "signal: SIGINT"
    assert (run_dir / "model.pt").is_file()
    model = torch.load(run_dir / "model.pt", weights_only=True)
    best = torch.load(run_dir / "best_val.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], model[k]) for k in model)
    # The later ones were noted: they stopped the step at once, waited for the epoch's writes, or
    # were ignored while the ending was written; none reached the ending.
    log = (run_dir / "logs" / "stdout.log").read_text()
    assert any(note in log for note in ("(twice): stopped at once", "received again", "while writing the run's ending"))


_THREADED = textwrap.dedent(
    """
    import os, signal, sys, threading
    from thesis_lib import fit
    from thesis_lib.train.signals import install_stop_handlers

    assert install_stop_handlers()
    results = []
    config = {"output_root": sys.argv[2], "data": {"path": sys.argv[1], "batch_size": 16},
              "model": {"encoder": "transformer", "hidden_dim": 32, "num_layers": 1, "latent_dim": 8},
              "trainer": {"epochs": 10000, "sync_every_n_steps": 1}}
    worker = threading.Thread(target=lambda: results.append(fit(config, dashboard=None)))
    worker.start()
    # The process's main thread waits here, as a Dask or SLURM worker's does while a task runs.
    while worker.is_alive():
        worker.join(0.05)
    result = results[0]
    print("RESULT", result.status, result.stop_reason, result.stop_signal)
    """
)


def test_a_run_in_a_worker_thread_stops_through_the_processs_handler(events, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _THREADED, str(events), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_signals_default)
    run_dir = _wait_for_epochs(proc, out)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output.decode()
    assert f"RESULT STOPPED signal: SIGTERM {int(signal.SIGTERM)}" in output.decode()
    (end,) = _moment(run_dir, "on_train_end")
    assert end["stop_reason"] == "signal: SIGTERM" and (run_dir / "model.pt").is_file()


def test_a_console_that_goes_away_is_dropped_and_noted_and_the_run_completes(events, tmp_path):
    """`thesis-lib train ... | head -1`: the reader of stdout leaves after the first line."""
    out = tmp_path / "out"
    reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc = _start_train(events, out, "trainer.epochs=3", "trainer.sync_every_n_steps=50", stdout=reader.stdin)
    reader.stdin.close()
    reader.wait(timeout=60)
    assert proc.wait(timeout=120) == 0
    (run_dir,) = (out / "runs").iterdir()
    (end,) = _moment(run_dir, "on_train_end")
    assert end["status"] == "COMPLETED" and end["epochs_completed"] == 3
    incidents = _moment(run_dir, "on_incident")
    assert [i["part"] for i in incidents] == ["console"]
    assert "BrokenPipeError" in incidents[0]["message"]
    log = (run_dir / "logs" / "stdout.log").read_text()
    assert log.count("the console went away") == 1
    assert "epoch   2 (3/3)" in log  # what came after still reached the log
    assert (run_dir / "model.pt").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (mounting works as root); else the test is skipped for want of a full disk to fill."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE test covers file limits")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_while_a_checkpoint_is_written_names_the_os_error_and_the_path(events, tmp_path, small_disk):
    # A model of about 1 MiB of weights: best_val.pt fits, last.pt (weights + Adam's two moments) does not.
    proc = _start_train(events, small_disk, "model.hidden_dim=160", "model.num_layers=2", "trainer.epochs=3",
                        "trainer.sync_every_n_steps=50")
    output, _ = proc.communicate(timeout=300)
    text = output.decode()
    assert proc.returncode == 1, text
    (run_dir,) = (small_disk / "runs").iterdir()
    (error,) = _moment(run_dir, "on_exception")
    assert error["error_type"] == "CheckpointError"
    assert "No space left on device" in error["message"] and str(run_dir / "last.pt") in error["message"]
    assert "inline_container" not in error["message"] + text
    (end,) = _moment(run_dir, "on_train_end")
    assert end["status"] == "FAILED"
    # The best the facts name is the one whose weights are on disk, and model.pt holds them.
    assert torch.load(run_dir / "best_val.pt", weights_only=True)["epoch"] == end["best_epoch"]
    assert not list(run_dir.glob(".*.tmp")), "a failed write left its temporary file"


_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    from thesis_lib import fit
    # Writing past the limit fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    config = {"output_root": sys.argv[2], "data": {"path": sys.argv[1], "batch_size": 16},
              "model": {"encoder": "transformer", "hidden_dim": 160, "num_layers": 2, "latent_dim": 8},
              "trainer": {"epochs": 2, "sync_every_n_steps": 50}}
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
    result = fit(config, dashboard=None)
    print("RESULT", result.status, result.stop_reason)
    """
)


def test_a_file_size_limit_on_model_pt_is_recorded_and_the_run_still_ends(events, tmp_path):
    """RLIMIT_FSIZE between best_val.pt and last.pt: a checkpoint write fails with the OS's EFBIG."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _LIMITED, str(events), str(out), str(3_000_000)],
                          capture_output=True, text=True, timeout=300)
    assert "RESULT FAILED exception: CheckpointError" in done.stdout, done.stdout + done.stderr
    (run_dir,) = (out / "runs").iterdir()
    (error,) = _moment(run_dir, "on_exception")
    assert "File too large" in error["message"] and "last.pt" in error["message"]
    assert _moment(run_dir, "on_train_end")[0]["status"] == "FAILED"


def test_a_model_pt_that_cannot_be_written_is_an_incident_after_which_the_run_ends_and_reports(events, tmp_path):
    out = tmp_path / "out"
    proc = _start_train(events, out, "report.enabled=true")
    run_dir = _wait_for_epochs(proc, out)
    (run_dir / "model.pt").mkdir()  # something in the way of the final rename
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, output.decode()
    events_ = _events(run_dir)
    moments = [e["moment"] for e in events_]
    assert "on_train_end" in moments
    incident = next(e for e in events_ if e["moment"] == "on_incident" and e["part"] == "checkpoint")
    assert incident["path"] == str(run_dir / "model.pt") and "best_val.pt holds the best weights" in incident["message"]
    assert moments.index("on_incident") < moments.index("on_train_end")
    assert (run_dir / "report" / "report.md").is_file(), output.decode()


def test_a_report_that_fails_after_the_run_is_recorded_as_an_incident(events, tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import thesis_lib.reports as reports
        from thesis_lib import train
        def broken(run_dir, **kwargs):
            raise RuntimeError("template went missing")
        reports.render_run_report = broken
        result = train({"output_root": sys.argv[2], "data": {"path": sys.argv[1], "batch_size": 16},
                        "model": {"hidden_dim": 32, "num_layers": 1, "latent_dim": 8}, "trainer": {"epochs": 1}},
                       dashboard=None)
        print("RESULT", result.status)
        """
    )
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", script, str(events), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert "RESULT COMPLETED" in done.stdout, done.stdout + done.stderr
    (run_dir,) = (out / "runs").iterdir()
    events_ = _events(run_dir)
    moments = [e["moment"] for e in events_]
    assert moments.index("on_incident") > moments.index("on_train_end")
    (incident,) = [e for e in events_ if e["moment"] == "on_incident"]
    assert incident["part"] == "report" and "template went missing" in incident["message"]


_FULL_LOG = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from thesis_lib.train.output_capture import capture_output

    disk = Path(sys.argv[1])
    with open(disk / "filler", "wb") as filler:  # fill the disk to its last byte
        try:
            while True:
                filler.write(b"x" * 65536)
                filler.flush()
        except OSError:
            pass
    with capture_output(disk / "logs" / "stdout.log") as capture:
        for i in range(2000):
            print(f"line {i} " + "y" * 100)
        print("STILL RUNNING")
    print("INCIDENTS", [(i["part"], i["path"]) for i in capture.incidents])
    """
)


def test_a_log_on_a_full_disk_is_dropped_with_one_note_and_printing_goes_on(small_disk):
    done = subprocess.run([sys.executable, "-c", _FULL_LOG, str(small_disk)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    log = small_disk / "logs" / "stdout.log"
    assert done.stderr.count("No space left on device") == 1 and str(log) in done.stderr
    assert "STILL RUNNING" in done.stdout
    assert f"INCIDENTS [('stdout_log', '{log}')]" in done.stdout


def test_sigterm_to_a_dask_worker_stops_its_point_gracefully(events, tmp_path):
    """The worker runs the point in a thread; the executor's plugin routes the worker's SIGTERM to it."""
    import threading

    from distributed import Client, LocalCluster

    from thesis_lib import sweep

    base = {"output_root": str(tmp_path / "out"), "data": {"path": str(events), "batch_size": 16},
            "model": {"encoder": "transformer", "hidden_dim": 32, "num_layers": 1, "latent_dim": 8},
            "trainer": {"epochs": 10000, "sync_every_n_steps": 1}, "report": {"enabled": False}}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        results = []
        runner = threading.Thread(target=lambda: results.append(
            sweep(base, {"model.latent_dim": [8]}, name="preempted", executor=client)))
        runner.start()
        (worker_pid,) = client.run(os.getpid).values()
        deadline = time.time() + 120
        while time.time() < deadline:
            found = list((tmp_path / "out").glob("multiruns/*/runs/*/facts/events.jsonl"))
            if found and found[0].read_text().count('"on_epoch_end"') >= 1:
                break
            time.sleep(0.1)
        os.kill(worker_pid, signal.SIGTERM)
        runner.join(120)
    assert not runner.is_alive()
    run_dir = found[0].parents[1]
    (end,) = _moment(run_dir, "on_train_end")
    assert end["status"] == "STOPPED" and end["stop_reason"] == "signal: SIGTERM"
    assert (run_dir / "model.pt").is_file()
    assert results[0].points[0].status == "STOPPED"
