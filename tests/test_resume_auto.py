"""`trainer.resume_from=auto` against real runs: which run an invocation continues, and what it says.

Runs that must end by a signal or a kill run as real `thesis-lib train` child processes (as in
test_signals.py); the invocation that resolves "auto" runs here through `thesis_lib.train` or
through the CLI. Every run has the same name and, unless a test changes it, the same config.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from thesis_lib.config import load_config
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ConfigError, RunLockedError
from thesis_lib.facts import resume_config_hash
from thesis_lib.train import fit
from thesis_lib.workflow import train

pytestmark = pytest.mark.slow

EPOCHS = 8  # enough that a signal after the first epoch lands long before the end (~0.1-0.5 s an epoch)
_TINY = ["run_name=auto", "model.encoder=transformer", "model.hidden_dim=32", "model.num_layers=1",
         "model.latent_dim=8", "data.batch_size=16", "trainer.sync_every_n_steps=1", "report.enabled=false",
         "telemetry.enabled=false", "trainer.max_steps_per_epoch=4"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume_auto") / "events.h5"
    make_synthetic_events(path, n_events=400, seed=0)
    return path


def _overrides(events: Path, out: Path, epochs: int = EPOCHS) -> list[str]:
    return [f"data.path={events}", f"output_root={out}", *_TINY, f"trainer.epochs={epochs}", "trainer.resume_from=auto"]


def _signals_default() -> None:
    """In the child before exec: the stop signals handled and unblocked, whatever the test runner left."""
    stop_signals = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    for signum in stop_signals:
        signal.signal(signum, signal.SIG_DFL)


def _cli(events: Path, out: Path, epochs: int = EPOCHS) -> list[str]:
    return [sys.executable, "-m", "thesis_lib.cli", "train", *_overrides(events, out, epochs)]


def _start(events: Path, out: Path, epochs: int = EPOCHS) -> subprocess.Popen:
    return subprocess.Popen(_cli(events, out, epochs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_signals_default)


def _wait_for_first_epoch(proc: subprocess.Popen, out: Path) -> Path:
    """The child's run directory once its first epoch's facts and last.pt are on disk."""
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((out / "runs").glob("*/facts/events.jsonl"))
        if found and '"on_epoch_end"' in found[0].read_text() and (found[0].parents[1] / "last.pt").exists():
            return found[0].parents[1]
        if proc.poll() is not None:
            raise AssertionError(f"the child ended early (rc {proc.returncode}): {proc.stdout.read().decode()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the child run never finished an epoch")


def _crashed_run(events: Path, out: Path, epochs: int = EPOCHS) -> Path:
    """A run killed with SIGKILL after its first last.pt: CRASHED."""
    proc = _start(events, out, epochs)
    run_dir = _wait_for_first_epoch(proc, out)
    proc.kill()
    proc.wait(timeout=30)
    return run_dir


def _here(events: Path, out: Path, epochs: int = EPOCHS):
    return train(None, _overrides(events, out, epochs), dashboard=None)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "facts" / "events.jsonl").read_text().splitlines() if line.strip()]


def _moment(run_dir: Path, moment: str) -> list[dict]:
    return [e for e in _events(run_dir) if e["moment"] == moment]


def _log(run_dir: Path) -> str:
    return (Path(run_dir) / "logs" / "stdout.log").read_text()


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "runs").iterdir())


def test_no_earlier_run_starts_a_new_one_and_says_so(events, tmp_path):
    out = tmp_path / "out"
    result = _here(events, out, epochs=1)
    assert result.status == "COMPLETED" and _run_dirs(out) == [Path(result.run_dir)]
    wanted = resume_config_hash(load_config(None, _overrides(events, out, epochs=1)))
    assert f"no unfinished run named 'auto' with config hash {wanted} under {out}: starting a new run" in _log(result.run_dir)
    (start,) = _moment(result.run_dir, "on_start")
    assert start["resumed_from_epoch"] is None


def test_a_run_stopped_by_sigterm_is_resumed_in_its_directory_to_the_end(events, tmp_path):
    out = tmp_path / "out"
    proc = _start(events, out)
    run_dir = _wait_for_first_epoch(proc, out)
    proc.send_signal(signal.SIGTERM)
    first, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, first.decode()
    assert "starting a new run" in first.decode()  # the first invocation, through the CLI: no run yet
    (stopped,) = _moment(run_dir, "on_train_end")
    assert stopped["status"] == "STOPPED" and stopped["stop_reason"] == "signal: SIGTERM"
    last_epoch = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
    assert 1 <= last_epoch < EPOCHS

    # The same command again (a requeue): it continues that run.
    again = subprocess.run(_cli(events, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming {run_dir} (STOPPED, signal: SIGTERM)" in again.stdout
    assert _run_dirs(out) == [run_dir]
    starts = _moment(run_dir, "on_start")
    assert [s["resumed_from_epoch"] for s in starts] == [None, last_epoch]
    assert [e["epoch"] for e in _moment(run_dir, "on_epoch_end")] == list(range(EPOCHS))
    ends = _moment(run_dir, "on_train_end")
    assert [e["status"] for e in ends] == ["STOPPED", "COMPLETED"] and ends[-1]["epochs_completed"] == EPOCHS
    assert f"resuming {run_dir}" in _log(run_dir)


def test_a_crashed_run_is_resumed(events, tmp_path):
    out = tmp_path / "out"
    run_dir = _crashed_run(events, out)
    last_epoch = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
    result = _here(events, out)
    assert Path(result.run_dir) == run_dir and result.status == "COMPLETED" and result.epochs_completed == EPOCHS
    assert _run_dirs(out) == [run_dir]
    assert [s["resumed_from_epoch"] for s in _moment(run_dir, "on_start")] == [None, last_epoch]
    (end,) = _moment(run_dir, "on_train_end")
    assert end["status"] == "COMPLETED"
    log = _log(run_dir)
    assert f"resuming {run_dir} (CRASHED, no end event and process" in log and "is gone)" in log


def test_a_failed_run_is_not_resumed_and_the_output_says_so(events, tmp_path, monkeypatch):
    from thesis_lib.models import Autoencoder

    out = tmp_path / "out"
    calls = [0]
    real = Autoencoder.loss_and_metrics

    def failing_in_the_second_epoch(self, batch):
        calls[0] += 1
        if calls[0] > 12:  # an epoch is ~8 calls (4 train steps, 4 val batches): last.pt of epoch 0 exists
            raise ValueError("bad batch")
        return real(self, batch)

    monkeypatch.setattr(Autoencoder, "loss_and_metrics", failing_in_the_second_epoch)
    with pytest.raises(ValueError, match="bad batch"):
        _here(events, out)
    monkeypatch.undo()
    (failed,) = _run_dirs(out)
    assert (failed / "last.pt").is_file() and _moment(failed, "on_exception")

    result = _here(events, out, epochs=EPOCHS)
    assert Path(result.run_dir) != failed and result.status == "COMPLETED"
    assert len(_moment(failed, "on_start")) == 1  # untouched
    log = _log(result.run_dir)
    assert "starting a new run" in log
    assert (f"{failed.name} FAILED (exception: ValueError: bad batch): not resumed — fix the cause and pass its directory "
            "as trainer.resume_from explicitly") in log


def test_a_completed_run_with_the_same_name_gives_a_new_run(events, tmp_path):
    out = tmp_path / "out"
    first = _here(events, out, epochs=1)
    second = _here(events, out, epochs=1)
    assert first.status == second.status == "COMPLETED" and first.run_dir != second.run_dir
    assert len(_moment(first.run_dir, "on_start")) == 1
    log = _log(second.run_dir)
    assert "starting a new run" in log and f"{Path(first.run_dir).name} COMPLETED (max_epochs): finished" in log


def test_a_run_of_another_config_is_not_resumed(events, tmp_path):
    out = tmp_path / "out"
    crashed = _crashed_run(events, out, epochs=EPOCHS)
    # trainer.epochs differs: an explicit resume_from=<dir> would allow it, "auto" does not (a new config).
    result = _here(events, out, epochs=2)
    assert Path(result.run_dir) != crashed and result.status == "COMPLETED"
    assert len(_moment(crashed, "on_start")) == 1
    assert "(1 run named 'auto' with another config hash not considered): starting a new run" in _log(result.run_dir)


def test_a_run_whose_writer_lock_a_live_process_holds_is_refused(events, tmp_path):
    """Chosen: refused with the lock's message (not passed by), so that no duplicate run starts beside it."""
    out = tmp_path / "out"
    run_dir = _crashed_run(events, out)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys
            from thesis_lib.run_lock import hold_run_lock
            with hold_run_lock(sys.argv[1], "a test holding the lock"):
                print("held", flush=True)
                sys.stdin.read()
            """), str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"newest unfinished run named 'auto' .* is {run_dir} \(CRASHED\), "
                                                 rf"and it is not resumed: .*pid {holder.pid} .*a test holding the lock"):
            _here(events, out)
        assert _run_dirs(out) == [run_dir] and len(_moment(run_dir, "on_start")) == 1
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    result = _here(events, out)  # the holder let go: resumed
    assert Path(result.run_dir) == run_dir and result.status == "COMPLETED"


def test_fit_alone_refuses_auto_before_anything_is_written(events, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r'resume_from="auto" is resolved by thesis_lib.train'):
        fit(None, _overrides(events, out), dashboard=None)
    assert not out.exists()


def test_the_resume_hash_ignores_only_where_and_how_a_run_is_resumed():
    from thesis_lib.sweep.grid import point_config_hash

    base = load_config(None, ["run_name=a", "trainer.epochs=3"])
    same = [load_config(base, ["output_root=/elsewhere", "run_name=b"]),
            load_config(base, ["trainer.resume_from=auto"]),
            load_config(base, ["trainer.resume_from=outputs/runs/run_x"])]
    assert {resume_config_hash(c) for c in same} == {resume_config_hash(base)}
    assert resume_config_hash(base) == point_config_hash(base.to_dict())  # the sweep's identity of a point
    for change in (["trainer.epochs=4"], ["trainer.seed=1"], ["model.latent_dim=16"], ["logging.print_every_n_steps=5"]):
        assert resume_config_hash(load_config(base, change)) != resume_config_hash(base), change
    # config.yaml of a run from before a config key existed: resolved with its default, the same hash
    older = base.to_dict()
    del older["model"]["diffusion"]
    assert resume_config_hash(older) == resume_config_hash(base)
