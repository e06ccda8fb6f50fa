"""One writer per run: the run directory's writer lock, and sweeps that never run a point twice.

Real processes on real files: a second process resuming a live run is refused before it writes;
a dead holder's lock, a holder without a heartbeat on another host and a requeued SLURM job are
taken over with a note; the lock is re-entrant within one process (fit's `finish` renders the
report under it); two identical `thesis-lib sweep`s started together run each point once.
The behavioural tests use only public behaviour (fit, the CLI, the run directory), so they also
run, and fail, against a thesis-lib without the lock; only the lock's own tests import run_lock.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import yaml

from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import read_events
from thesis_lib.train import fit

pytestmark = pytest.mark.slow

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return make_synthetic_events(tmp_path_factory.mktemp("data") / "events.h5", n_events=600, seed=0, n_tokens=8)


def tiny(events, output_root, **trainer):
    return {
        "output_root": str(output_root),
        "run_name": "locked",
        "data": {"path": str(events), "batch_size": 128},
        "model": {"encoder": "mlp", "hidden_dim": 16, "latent_dim": 8, "num_layers": 1},
        "trainer": {"epochs": 1, "device": "cpu", "seed": 1, **trainer},
        "report": {"enabled": False},
        "telemetry": {"enabled": False},
    }


# A training process that stops inside fit's `finish` (the run directory complete, fit not yet
# returned, so its lock still held) until the test creates <gate>/go.
_HOLDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from thesis_lib.train import fit

    config, gate = json.loads(sys.argv[1]), Path(sys.argv[2])

    def finish(run_dir):
        (gate / "in_finish").write_text(str(run_dir))
        while not (gate / "go").exists():
            time.sleep(0.05)

    fit(config, dashboard=None, finish=finish)
""")

# A process that resumes a run; exit code 3 and the message when it is refused as a second writer.
_RESUMER = textwrap.dedent("""
    import json, sys
    from thesis_lib.train import fit

    try:
        result = fit(json.loads(sys.argv[1]), dashboard=None)
    except Exception as exc:
        if type(exc).__name__ != "RunLockedError":
            raise
        print("REFUSED:", exc)
        sys.exit(3)
    print("RESUMED:", result.status, result.epochs_completed)
""")


def start_holder(config, gate: Path) -> tuple[subprocess.Popen, Path]:
    """Start _HOLDER; return it and its run directory once it waits in `finish`."""
    gate.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, json.dumps(config), str(gate)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while not (gate / "in_finish").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the holder did not reach finish (rc {proc.poll()}): {proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    return proc, Path((gate / "in_finish").read_text())


def snapshot(run_dir: Path) -> dict:
    """Every file of the run but the lock's own (the holder's heartbeat rewrites its record): size and mtime."""
    return {p.relative_to(run_dir).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.name.startswith("writer.")}


def moments(run_dir) -> list[str]:
    return [e["moment"] for e in read_events(run_dir)]


# --- training and resuming -------------------------------------------------------------------------

def test_a_second_process_resuming_a_live_run_is_refused_and_writes_nothing(events, tmp_path):
    holder, run_dir = start_holder(tiny(events, tmp_path / "outputs"), tmp_path / "gate")
    try:
        before, events_before = snapshot(run_dir), (run_dir / "facts" / "events.jsonl").read_text()
        second = subprocess.run(
            [sys.executable, "-c", _RESUMER,
             json.dumps(tiny(events, tmp_path / "outputs", epochs=2, resume_from=str(run_dir)))],
            capture_output=True, text=True, timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode == 3, f"the second resumer was not refused (rc {second.returncode}):\n{out[-3000:]}"
        assert f"pid {holder.pid} on host {HOST!r}" in out and "training (fit)" in out, out
        assert (run_dir / "facts" / "events.jsonl").read_text() == events_before
        assert snapshot(run_dir) == before, "the refused process wrote into the run directory"
    finally:
        (tmp_path / "gate" / "go").touch()
        out = holder.communicate(timeout=60)[0]
    assert holder.returncode == 0, out[-3000:]
    assert moments(run_dir).count("on_start") == 1


def test_a_lock_whose_holder_died_is_taken_over_with_a_note(events, tmp_path):
    holder, run_dir = start_holder(tiny(events, tmp_path / "outputs"), tmp_path / "gate")
    holder.send_signal(signal.SIGKILL)  # dies holding the lock: its record stays behind
    holder.communicate(timeout=30)
    with pytest.warns(UserWarning, match=rf"took over the lock .*pid {holder.pid} on this host .* is gone"):
        result = fit(tiny(events, tmp_path / "outputs", epochs=2, resume_from=str(run_dir)), dashboard=None)
    assert result.status == "COMPLETED" and result.run_dir == run_dir
    assert moments(run_dir).count("on_start") == 2
    assert f"run lock: took over the lock on run directory {run_dir}" in (run_dir / "logs" / "stdout.log").read_text()
    assert not (run_dir / "writer.json").exists(), "a clean exit leaves no holder record"
    events_ = [json.loads(line) for line in (run_dir / "facts" / "events.jsonl").read_text().splitlines()]
    (incident,) = [e for e in events_ if e["moment"] == "on_incident"]
    assert incident["part"] == "lock" and f"pid {holder.pid}" in incident["message"]


def test_fit_holds_the_lock_and_its_finish_renders_the_report_under_it(events, tmp_path):
    from thesis_lib.reports import write_run_report_markdown

    seen = {}

    def finish(run_dir):
        seen["during_fit"] = json.loads((run_dir / "writer.json").read_text())
        write_run_report_markdown(run_dir)  # takes the same lock again: re-entrant, not refused
        seen["after_report"] = json.loads((run_dir / "writer.json").read_text())

    result = fit(tiny(events, tmp_path / "outputs"), dashboard=None, finish=finish)
    run_dir = Path(result.run_dir)
    assert (run_dir / "report" / "report.md").is_file()
    assert seen["during_fit"]["pid"] == os.getpid() and seen["during_fit"]["host"] == HOST
    assert seen["during_fit"]["purpose"] == "training (fit)"
    assert seen["after_report"]["token"] == seen["during_fit"]["token"]  # still the one hold
    assert seen["after_report"]["doing"] == "training (fit)"
    assert (run_dir / "writer.lock").is_file() and not (run_dir / "writer.json").exists()


# --- the lock itself ---------------------------------------------------------------------------------

# One process, started once, that tries the lock when asked (a directory, a stale_after_s and
# environment variables such as SLURM_JOB_ID), lets it go at once and answers what happened.
_TAKER = textwrap.dedent("""
    import json, os, sys, warnings
    from thesis_lib.errors import RunLockedError
    from thesis_lib.run_lock import hold_run_lock

    warnings.simplefilter("ignore")
    for line in sys.stdin:
        ask, saved = json.loads(line), dict(os.environ)
        os.environ.update(ask["env"])
        try:
            with hold_run_lock(ask["dir"], "a test taker", stale_after_s=ask["stale"]) as lock:
                reply = {"taken": True, "notes": lock.notes}
        except RunLockedError as exc:
            reply = {"taken": False, "error": str(exc)}
        finally:
            os.environ.clear()
            os.environ.update(saved)
        print(json.dumps(reply), flush=True)
""")


@pytest.fixture(scope="module")
def take():
    """take(run_dir, stale_after_s=600, **env) -> {"taken", "notes" or "error"}: the lock tried by another process."""
    proc = subprocess.Popen([sys.executable, "-c", _TAKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def attempt(run_dir, stale_after_s=600.0, **env):
        proc.stdin.write(json.dumps({"dir": str(run_dir), "stale": stale_after_s, "env": env}) + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        assert answer, f"the taker process died (rc {proc.poll()})"
        return json.loads(answer)

    attempt.pid = proc.pid
    yield attempt
    proc.stdin.close()
    proc.wait(timeout=30)


def fake_record(run_dir: Path, *, host="node-elsewhere", pid=4242, beat_age_s=0.0, job=None) -> None:
    """The holder record a process on another host would have left (that host cannot be asked about its pid)."""
    now = time.time()
    (run_dir / "writer.json").write_text(json.dumps({
        "format": "thesis-lib writer lock 1", "pid": pid, "host": host, "process_start_unix": now - 3600,
        "started_unix": now - 600, "heartbeat_unix": now - beat_age_s, "heartbeat_every_s": 30.0,
        "purpose": "training (fit)", "doing": "training (fit)", "job": job or {}, "token": "f00d"}))


def test_a_holder_on_another_host_without_a_heartbeat_is_taken_over_after_the_stated_time(tmp_path, take):
    from thesis_lib.run_lock import STALE_AFTER_S, hold_run_lock

    assert STALE_AFTER_S == 600.0
    fake_record(tmp_path, beat_age_s=5.0)
    refused = take(tmp_path)  # five seconds without a beat: alive as far as anyone here can tell
    assert not refused["taken"] and "pid 4242 on host 'node-elsewhere'" in refused["error"]
    assert "training (fit)" in refused["error"] and re.search(r"last heartbeat \d+ s ago", refused["error"])
    taken = take(tmp_path, stale_after_s=2.0)
    assert taken["taken"], taken
    (note,) = taken["notes"]
    assert "pid 4242 on host 'node-elsewhere'" in note and re.search(r"last beat \d+ s ago, more than 2 s", note)
    assert not (tmp_path / "writer.json").exists()
    # the default figure, in this process, with the warning
    fake_record(tmp_path, beat_age_s=STALE_AFTER_S + 5)
    with pytest.warns(UserWarning, match="took over the lock"):
        with hold_run_lock(tmp_path, "a test") as lock:
            assert len(lock.notes) == 1 and json.loads((tmp_path / "writer.json").read_text())["pid"] == os.getpid()


def test_a_live_holder_heartbeats_and_is_never_taken_over_on_its_own_host(tmp_path, take):
    from thesis_lib.run_lock import read_run_lock

    script = ("import sys, time\nfrom thesis_lib.run_lock import hold_run_lock\n"
              "with hold_run_lock(sys.argv[1], 'a test holder', heartbeat_every_s=0.2):\n"
              "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        first = read_run_lock(tmp_path)
        time.sleep(0.7)
        later = read_run_lock(tmp_path)
        assert later.pid == holder.pid and later.heartbeat > first.heartbeat
        refused = take(tmp_path, stale_after_s=0.1)  # alive here: the heartbeat's age does not matter
        assert not refused["taken"] and f"pid {holder.pid} on host {HOST!r}" in refused["error"]
    finally:
        holder.kill()
        holder.wait()
    taken = take(tmp_path)
    assert taken["taken"] and f"pid {holder.pid} on this host" in taken["notes"][0]


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, take):
    # The holder, SLURM job 777, took the lock for real, then its node went away.
    script = ("import os, sys\nfrom thesis_lib.run_lock import hold_run_lock\n"
              "with hold_run_lock(sys.argv[1], 'training (fit)', heartbeat_every_s=None):\n"
              "    print('held', flush=True)\n    os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLURM_JOB_ID": "777"})
    assert done.stdout.strip() == "held", done.stderr
    record = json.loads((tmp_path / "writer.json").read_text())
    assert record["job"] == {"slurm_job_id": "777"}
    record.update(host="node-a", heartbeat_unix=time.time())  # on another node, beating a moment ago
    (tmp_path / "writer.json").write_text(json.dumps(record))

    other_job = take(tmp_path, SLURM_JOB_ID="778")
    assert not other_job["taken"] and "host 'node-a'" in other_job["error"] and "SLURM job 777" in other_job["error"]
    same_run_of_the_job = take(tmp_path, SLURM_JOB_ID="777")  # one job on two nodes is no requeue
    assert not same_run_of_the_job["taken"]
    requeued = take(tmp_path, SLURM_JOB_ID="777", SLURM_RESTART_COUNT="1")
    assert requeued["taken"], requeued
    assert "SLURM job 777" in requeued["notes"][0] and "requeued (restart 1)" in requeued["notes"][0]


def test_the_lock_is_reentrant_within_a_process_and_names_what_it_does(tmp_path, take):
    from thesis_lib.run_lock import hold_run_lock

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to take over: no warning
        with hold_run_lock(tmp_path, "training (fit)") as outer:
            with hold_run_lock(tmp_path, "rendering the run report") as inner:
                assert inner.reentered and not outer.reentered and inner.holder.token == outer.holder.token
                refused = take(tmp_path)
                assert not refused["taken"]
                assert f"pid {os.getpid()}" in refused["error"]
                assert "training (fit), now rendering the run report" in refused["error"]
            assert not take(tmp_path)["taken"]  # the inner exit lets nothing go
        assert take(tmp_path) == {"taken": True, "notes": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writer.lock"]


# --- sweeps -----------------------------------------------------------------------------------------

def test_two_identical_sweeps_started_together_run_each_point_once(events, tmp_path):
    base = tiny(events, tmp_path / "outputs")
    del base["run_name"]
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(base))
    command = [sys.executable, "-m", "thesis_lib.cli", "sweep", "--config", str(config),
               "--grid", "model.latent_dim=4,6,8", "--seeds", "1", "--name", "twin"]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n----\n".join(out[-3000:] for out in outs)

    sweep_dirs = sorted((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweep_dirs) == 1, f"the two sweeps did not share one directory: {[d.name for d in sweep_dirs]}"
    runs = sorted((sweep_dirs[0] / "runs").iterdir())
    starts = {run.name: moments(run).count("on_start") for run in runs}
    assert len(runs) == 3 and set(starts.values()) == {1}, f"a point ran twice: {starts}"
    assert sorted(yaml.safe_load((run / "config.yaml").read_text())["model"]["latent_dim"] for run in runs) == [4, 6, 8]
    # Each point was trained by exactly one of the two; the other reported it as run elsewhere or done.
    ran_here = [out.count(" COMPLETED in ") for out in outs]
    assert sum(ran_here) == 3, outs
    for out, own in zip(outs, ran_here):
        assert "[sweep twin] finished: 3 COMPLETED" in out
        if own < 3:
            assert "run by another process" in out or "already completed (skipped)" in out, out
    recorded = yaml.safe_load((sweep_dirs[0] / "sweep.yaml").read_text())
    assert recorded["state"] == "finished" and [p["status"] for p in recorded["points"]] == ["COMPLETED"] * 3
    assert {p["run_dir"] for p in recorded["points"]} == {f"runs/{run.name}" for run in runs}
    assert all(p["skipped"] for p in recorded["points"] if p["elsewhere"])


def test_an_export_into_a_run_another_process_writes_is_refused_naming_it(events, tmp_path):
    from thesis_lib import export_model
    from thesis_lib.errors import RunLockedError

    run_dir = Path(fit(tiny(events, tmp_path / "outputs"), dashboard=None).run_dir)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from thesis_lib.run_lock import hold_run_lock
        with hold_run_lock({str(run_dir)!r}, "a test holding the run"):
            print("HELD", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}"):
            export_model(run_dir, ["state_dict"])
        assert not (run_dir / "exports").exists()
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=rf"took over the lock .*pid {holder.pid} .* is gone"):
        assert set(export_model(run_dir, ["state_dict"])) == {"state_dict", "export_info"}
