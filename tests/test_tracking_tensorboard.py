"""TensorBoard tracking: a live mirror and `thesis-lib sync`, read back with TensorBoard's own reader.

Offline and real: tiny runs train, the event files are read with
`tensorboard.backend.event_processing.event_accumulator.EventAccumulator`, and every scalar is
compared with what the run's facts hold, to float32 precision (TensorBoard stores float32).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from thesis_lib.cli import main  # noqa: E402
from thesis_lib.config import load_config  # noqa: E402
from thesis_lib.errors import ConfigError  # noqa: E402
from thesis_lib.facts import read_config, read_events, read_scalars, read_steps, read_telemetry  # noqa: E402
from thesis_lib.layout import TENSORBOARD_DIR, TRACKING_FILE  # noqa: E402
from thesis_lib.train import fit  # noqa: E402

from test_train import TINY_MODEL, events  # noqa: E402,F401  (the same tiny model and module-scoped data)


def _config(events, root: Path, **tracking):
    return {
        "output_root": str(root / "outputs"),
        "run_name": "tb",
        "data": {"path": str(events), "batch_size": 128},
        "model": dict(TINY_MODEL),
        # sync points every 2 of the 7 batches: steps.csv has rows inside each epoch and at its end
        "trainer": {"epochs": 2, "seed": 3, "sync_every_n_steps": 2},
        "telemetry": {"interval_s": 0.1},
        "report": {"enabled": False},
        "tracking": tracking,
    }


@pytest.fixture(scope="module")
def untracked_run(events, tmp_path_factory):
    """A run trained without tracking (as every run before this feature); tests copy it before syncing."""
    result = fit(_config(events, tmp_path_factory.mktemp("untracked")), dashboard=None)
    assert result.status == "COMPLETED"
    assert not (Path(result.run_dir) / TENSORBOARD_DIR).exists() and not (Path(result.run_dir) / TRACKING_FILE).exists()
    return Path(result.run_dir)


@pytest.fixture
def copied_run(untracked_run, tmp_path):
    target = tmp_path / "runs" / untracked_run.name
    shutil.copytree(untracked_run, target)
    return target


def _f32(value) -> float:
    return float(np.float32(value))


def fact_points(run_dir: Path):
    """(tag, step, value) of every scalars.csv, steps.csv and telemetry.csv number, named and placed as
    the README promises every tracker names them (the tests of each tracker compare against these)."""
    for row in read_scalars(run_dir).to_dict("records"):
        for column, value in row.items():
            if column not in ("epoch", "split", "train_loss", "val_loss"):
                yield f"{row['split']}/{column}", row["epoch"], value
    for row in read_steps(run_dir).to_dict("records"):
        yield "steps/loss", row["step"], row["loss"]
        yield "steps/lr", row["step"], row["lr"]
    for row in read_telemetry(run_dir).to_dict("records"):
        for column, value in row.items():
            if column != "t":
                yield f"telemetry/{column}", round(row["t"] * 1000), value


def _expected(run_dir: Path) -> dict:
    """tag -> [(step, float32 value)] from the run's facts alone, by the naming the README promises."""
    expected: dict = {}

    def put(tag, step, value):
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and math.isfinite(float(value)):
            expected.setdefault(tag, []).append((int(step), _f32(value)))

    for tag, step, value in fact_points(run_dir):
        put(tag, step, value)
    (test,) = [e for e in read_events(run_dir) if e["moment"] == "on_test_end"]
    for name, value in test["metrics"].items():
        put(f"test/{name}", test["epoch"], value)
    return {tag: sorted(points) for tag, points in expected.items()}


def _accumulator(logdir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _written(logdir: Path) -> dict:
    accumulator = _accumulator(logdir)
    return {tag: sorted((e.step, _f32(e.value)) for e in accumulator.Scalars(tag))
            for tag in accumulator.Tags()["scalars"]}


def _text(accumulator: EventAccumulator, tag: str) -> str:
    (event,) = accumulator.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def _assert_mirrors_the_facts(run_dir: Path, logdir: Path) -> None:
    expected, written = _expected(run_dir), _written(logdir)
    assert {"train/loss", "val/loss", "train/loss_recon", "val/metric_perplex", "steps/loss", "test/loss",
            "telemetry/cpu_pct", "telemetry/rss_mb"} <= set(expected)
    assert set(written) == set(expected)
    for tag in expected:
        assert written[tag] == expected[tag], tag
    assert [step for step, _ in written["train/loss"]] == [0, 1]  # per epoch, from 0
    assert len(written["steps/loss"]) > 2  # sync points inside the epochs, not only their ends
    accumulator = _accumulator(logdir)
    config_text = _text(accumulator, "config")
    for key in ("model.vq.codebook_size", "optim.betas", "trainer.resume_from", "data.path"):
        assert f"| {key} |" in config_text
    assert "status: COMPLETED, stop reason: max_epochs" in _text(accumulator, "end")
    assert set(accumulator.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                              "_hparams_/session_end_info"}


def _event_files(logdir: Path) -> list:
    return sorted(p.name for p in logdir.iterdir() if p.name.startswith("events.out.tfevents"))


# --- config ---------------------------------------------------------------------------------------

def test_the_tracking_section_accepts_only_what_works():
    cfg = load_config(None, ["tracking.backends=[tensorboard]"])
    assert cfg.tracking.backends == ["tensorboard"] and cfg.tracking.tensorboard_dir == ""
    assert load_config().tracking.backends == []
    all_three = load_config(None, ["tracking.backends=[tensorboard, mlflow, wandb]"]).tracking
    assert all_three.backends == ["tensorboard", "mlflow", "wandb"] and all_three.wandb_mode == "offline"
    for bad, says in ((["tracking.backends=[mlflo]"], "tracking.backends: 'mlflo' — did you mean 'mlflow'?"),
                      (["tracking.backends=[comet]"], "'comet' is not a tracking backend; allowed: tensorboard, mlflow, wandb"),
                      (["tracking.backends=[tensorbord]"], "did you mean 'tensorboard'"),
                      (["tracking.wandb_mode=disabled"], "tracking.wandb_mode='disabled' is not a W&B mode; "
                                                         "allowed: online, offline"),
                      (["tracking.backends=tensorboard"], "tracking.backends="),
                      (["tracking.backends=[tensorboard, tensorboard]"], "listed twice"),
                      (["tracking.mlflow_uri=x"], "unknown config key 'tracking.mlflow_uri'")):
        with pytest.raises(ConfigError, match=".*") as caught:
            load_config(None, bad)
        assert says in str(caught.value)


# --- the live mirror -----------------------------------------------------------------------------

def test_a_tracked_run_mirrors_its_facts_to_tensorboard(events, tmp_path):
    result = fit(_config(events, tmp_path, backends=["tensorboard"]), dashboard=None)
    run_dir = Path(result.run_dir)
    assert result.status == "COMPLETED"
    ids = json.loads((run_dir / TRACKING_FILE).read_text())["tensorboard"]
    assert ids["logdir"] == TENSORBOARD_DIR and ids["written_by"] == "live"
    logdir = run_dir / TENSORBOARD_DIR
    assert len(_event_files(logdir)) == 1
    _assert_mirrors_the_facts(run_dir, logdir)
    assert not [e for e in read_events(run_dir) if e["moment"] == "on_incident"]


def test_a_shared_tensorboard_dir_gets_one_folder_per_run(events, tmp_path):
    shared = tmp_path / "tb"
    result = fit(_config(events, tmp_path, backends=["tensorboard"], tensorboard_dir=str(shared)), dashboard=None)
    run_dir = Path(result.run_dir)
    assert not (run_dir / TENSORBOARD_DIR).exists()
    assert json.loads((run_dir / TRACKING_FILE).read_text())["tensorboard"]["logdir"] == str(shared / run_dir.name)
    assert _written(shared / run_dir.name)["val/loss"] == _expected(run_dir)["val/loss"]


def test_a_failing_tracker_warns_once_is_recorded_and_the_run_completes(events, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    from thesis_lib.tracking import TrackingWarning

    calls = []

    def broken(self, *args, **kwargs):
        calls.append(args[0])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    with pytest.warns(TrackingWarning) as warned:
        result = fit(_config(events, tmp_path, backends=["tensorboard"]), dashboard=None)
    assert result.status == "COMPLETED" and result.stop_reason == "max_epochs"
    tracking_warnings = [w for w in warned if issubclass(w.category, TrackingWarning)]
    assert len(tracking_warnings) == 1 and "No space left on device" in str(tracking_warnings[0].message)
    assert len(calls) == 1  # switched off after its first failure: nothing more is handed to it
    incidents = [e for e in read_events(result.run_dir) if e["moment"] == "on_incident"]
    assert [e["part"] for e in incidents] == ["tracking"]
    assert incidents[0]["error_type"] == "OSError" and "sync" in incidents[0]["message"]
    assert [e["moment"] for e in read_events(result.run_dir)].count("on_epoch_end") == 2
    assert (Path(result.run_dir) / "model.pt").is_file()


def test_a_run_without_backends_imports_no_tracking(events, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from thesis_lib import train
        config = {_config(events, tmp_path)!r}
        config["trainer"]["epochs"] = 1
        assert train(config, dashboard=None).status == "COMPLETED"
        def loaded():
            return sorted(m for m in sys.modules if m.startswith(("thesis_lib.tracking", "torch.utils.tensorboard"))
                          or m == "tensorboard" or m.startswith("tensorboard."))
        print("OFF", loaded())
        config["tracking"] = {{"backends": ["tensorboard"]}}
        assert train(config, dashboard=None).status == "COMPLETED"
        print("ON", "thesis_lib.tracking.tensorboard" in loaded(), "torch.utils.tensorboard" in loaded())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFF []" in done.stdout, done.stdout[-2000:]
    assert "ON True True" in done.stdout  # the check sees the modules when a run does import them


# --- thesis-lib sync ------------------------------------------------------------------------------

def test_sync_of_an_untracked_run_gives_the_same_scalars(copied_run, capsys):
    assert main(["sync", str(copied_run), "--to", "tensorboard"]) == 0
    out = capsys.readouterr().out
    assert f"{copied_run}: wrote {copied_run / TENSORBOARD_DIR}" in out
    ids = json.loads((copied_run / TRACKING_FILE).read_text())["tensorboard"]
    assert ids["logdir"] == TENSORBOARD_DIR and ids["written_by"] == "sync" and len(ids["facts_sha256"]) == 64
    _assert_mirrors_the_facts(copied_run, copied_run / TENSORBOARD_DIR)
    assert read_config(copied_run)["tracking"]["backends"] == []


def test_a_second_sync_adds_no_duplicate_events(copied_run, capsys):
    logdir = copied_run / TENSORBOARD_DIR
    assert main(["sync", str(copied_run), "--to", "tensorboard"]) == 0
    first_files, first = _event_files(logdir), _written(logdir)
    assert main(["sync", str(copied_run), "--to", "tensorboard"]) == 0
    assert "up to date" in capsys.readouterr().out.splitlines()[-1]
    assert _event_files(logdir) == first_files and _written(logdir) == first
    # facts that changed since (a note appended): the directory is rebuilt and swapped, still once each
    with open(copied_run / "facts" / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"schema_version": 2, "moment": "on_incident", "run_id": copied_run.name,
                                 "time": "2026-01-01T00:00:00.000+00:00", "t": 1.0, "part": "report", "message": "a later note"}) + "\n")
    assert main(["sync", str(copied_run), "--to", "tensorboard"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert len(_event_files(logdir)) == 1 and _written(logdir) == first
    assert not [p for p in copied_run.iterdir() if p.name.startswith(".")]  # no leftover temporary folder


def test_a_sync_after_a_live_mirrored_run_replaces_it(events, tmp_path, capsys):
    result = fit(_config(events, tmp_path, backends=["tensorboard"]), dashboard=None)
    run_dir, logdir = Path(result.run_dir), Path(result.run_dir) / TENSORBOARD_DIR
    live = _written(logdir)
    assert main(["sync", str(tmp_path / "outputs"), "--to", "tensorboard"]) == 0  # a directory holding runs
    assert f"{run_dir}: replaced {logdir}" in capsys.readouterr().out
    assert len(_event_files(logdir)) == 1 and _written(logdir) == live


def test_dry_run_writes_nothing_and_says_what_it_would_do(copied_run, capsys):
    before = sorted(p.relative_to(copied_run) for p in copied_run.rglob("*"))
    assert main(["sync", str(copied_run), "--to", "tensorboard", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[dry run] {copied_run}: would write {copied_run / TENSORBOARD_DIR}" in out
    assert "4 scalars rows" in out and "steps rows" in out and "telemetry rows" in out and "config keys" in out
    assert sorted(p.relative_to(copied_run) for p in copied_run.rglob("*")) == before


def test_sync_names_what_it_cannot_sync(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["sync", str(tmp_path / "empty"), "--to", "tensorboard"]) == 2
    assert "holds no run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sync", str(tmp_path), "--to", "comet"])
