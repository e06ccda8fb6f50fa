"""Shared fixtures: the checkout's data/ and outputs/ stay out of the tests, and a real killed run.

The README's two commands run in order on one clone: `thesis-lib demo` leaves data/events.h5 and
outputs/ in the checkout, then the test suite runs. No test may depend on (or change) what the
demo left there, so for the whole session

* the working directory is an empty temporary folder: a relative path such as data/events.h5
  (a config default) can never find, read or write the checkout's files, and
* the checkout's data/ and outputs/ are snapshotted (every path with its size and mtime) before
  the first test and compared after the last: a test that created, changed or removed anything
  there fails the session, naming the paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUARDED = ("data", "outputs")  # what `thesis-lib demo` writes into the checkout


def _snapshot(repo: Path = REPO) -> dict[str, tuple[int, int]]:
    """{path relative to the checkout: (size, mtime_ns)} of everything under the guarded folders (lstat)."""
    found: dict[str, tuple[int, int]] = {}
    for name in GUARDED:
        top = repo / name
        if not os.path.lexists(top):
            continue
        stat = os.lstat(top)
        found[name] = (stat.st_size, stat.st_mtime_ns)
        for folder, dirs, files in os.walk(top):
            for entry in (*dirs, *files):
                path = os.path.join(folder, entry)
                stat = os.lstat(path)
                found[os.path.relpath(path, repo)] = (stat.st_size, stat.st_mtime_ns)
    return found


def snapshot_differences(before: dict, after: dict) -> list[str]:
    """Lines naming what was created, changed or removed between two snapshots."""
    lines = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


@pytest.fixture(scope="session", autouse=True)
def checkout_data_and_outputs_untouched(tmp_path_factory):
    """Run the session in an empty working directory; fail it if the checkout's data/ or outputs/ changed."""
    before = _snapshot()
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(previous)
    differences = snapshot_differences(before, _snapshot())
    if differences:
        shown = "\n  ".join(differences[:20]) + ("\n  ..." if len(differences) > 20 else "")
        pytest.fail(f"tests wrote into the checkout's {' or '.join(f'{g}/' for g in GUARDED)} ({REPO}); "
                    f"tests must use tmp_path:\n  {shown}", pytrace=False)


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory):
    """A real crashed run: `thesis-lib train` SIGKILLed after its first validation.

    It has best_val.pt (saved when validation improved) but no model.pt (written only when a
    run ends) and no on_train_end event. Returns {"run_dir", "data"}.
    """
    from thesis_lib.data import make_synthetic_events

    root = tmp_path_factory.mktemp("killed")
    data = make_synthetic_events(root / "events.h5", n_events=600, seed=0, n_tokens=8, anomaly_fraction=0.1)
    out = root / "outputs"
    args = [sys.executable, "-m", "thesis_lib.cli", "train", f"data.path={data}", f"output_root={out}",
            "run_name=killed", "model.encoder=mlp", "model.hidden_dim=16", "model.latent_dim=8",
            "data.batch_size=64", "trainer.epochs=100000", "trainer.device=cpu", "report.enabled=false",
            "telemetry.enabled=false"]
    proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, run_dir = time.monotonic() + 180, None
        while time.monotonic() < deadline and run_dir is None:
            for events in out.glob("runs/*/facts/events.jsonl"):
                if '"on_epoch_end"' in events.read_text() and (events.parents[1] / "best_val.pt").is_file():
                    run_dir = events.parents[1]
            if proc.poll() is not None:
                raise AssertionError(f"the training child ended early (rc {proc.returncode}): "
                                     f"{proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.05)
        assert run_dir is not None, "the training child never finished its first validation"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    moments = [json.loads(line)["moment"] for line in (run_dir / "facts" / "events.jsonl").read_text().splitlines()
               if line.strip()]
    assert not (run_dir / "model.pt").exists() and "on_train_end" not in moments  # crashed, for real
    return {"run_dir": run_dir, "data": data}
