"""fit(): the run directory it leaves, its statuses, resume, `finish`, and what survives a kill."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import CheckpointError, DataError
from thesis_lib.facts import load_runs, read_events
from thesis_lib.layout import HISTORY_FILE, MODEL_FILE, MODEL_INFO_FILE, RUN_REPORT_DIR, STDOUT_LOG
from thesis_lib.train import fit

TINY_MODEL = {"encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1,
              "token_embed_dim": 4, "vq": {"codebook_size": 16, "code_dim": 4}}


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "events.h5"
    make_synthetic_events(path, n_events=1200, seed=0, n_tokens=8)
    return path


def _config(events, tmp_path, **sections):
    cfg = {
        "output_root": str(tmp_path / "outputs"),
        "run_name": "t",
        "data": {"path": str(events), "batch_size": 128},
        "model": dict(TINY_MODEL),
        "trainer": {"epochs": 2, "seed": 3},
        "report": {"enabled": False},  # fit() ignores it: a report comes from `finish` (workflow.train)
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg[section] = {**cfg.get(section, {}), **values}
        else:
            cfg[section] = values
    return cfg


def _moments(run_dir):
    return [e["moment"] for e in read_events(run_dir)]


def test_train_leaves_a_complete_run_directory(events, tmp_path):
    result = fit(_config(events, tmp_path))
    run = Path(result.run_dir)
    assert result.status == "COMPLETED" and result.stop_reason == "max_epochs"
    assert run.parent == tmp_path / "outputs" / "runs" and run.name.startswith("run_") and "_t_" in run.name
    for name in ["config.yaml", "env.json", "facts/events.jsonl", "facts/scalars.csv", "logs/stdout.log",
                 "best_val.pt", "last.pt", "model.pt", "model_info.json", "training_history.json", "data_meta.json"]:
        assert (run / name).is_file(), name
    assert _moments(run) == ["on_start", "on_epoch_end", "on_epoch_end", "on_train_end", "on_test_end"]
    scalars = pd.read_csv(run / "facts" / "scalars.csv")
    assert list(scalars["split"]) == ["train", "val", "train", "val"]
    assert {"loss_recon", "loss_tokens", "loss_globals", "loss_commit", "metric_perplex", "lr", "throughput"} <= set(scalars.columns)
    # model.pt is exactly the best epoch's weights
    best = torch.load(run / "best_val.pt", weights_only=True)
    weights = torch.load(run / "model.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch
    assert all(torch.equal(weights[k], best["model"][k]) for k in weights)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["bottleneck"] == "vq"
    log = (run / "logs" / "stdout.log").read_text()
    assert "epoch   1 (2/2)" in log and "test (best epoch" in log
    history = json.loads((run / "training_history.json").read_text())
    assert history["epochs"] == [0, 1] and len(history["val"]["loss"]) == 2
    info = json.loads((run / "model_info.json").read_text())
    assert info["parameters"]["trainable"] == info["parameters"]["total"] > 0
    assert set(result.test_metrics) >= {"loss", "loss_recon", "metric_perplex"}

    runs_df, per_epoch, order = load_runs(run_dirs=[str(run)])
    row = runs_df.iloc[0]
    assert row["status"] == "COMPLETED" and row["tokenizer"] == "vq" and row["encoder"] == "mlp"
    assert row["seed"] == 3 and row["epochs"] == 2
    assert row["loss.total_best"] == pytest.approx(result.best_val_loss)
    assert row["metric_perplex_final"] > 1.0
    assert len(per_epoch[order[0]]) == 4


def test_finish_sees_the_complete_run_directory_and_what_it_prints_is_logged(events, tmp_path):
    seen = []

    def finish(run_dir):
        # complete: the best weights, the metadata files and the last event are all there
        assert all((run_dir / name).is_file() for name in (MODEL_FILE, MODEL_INFO_FILE, HISTORY_FILE))
        assert _moments(run_dir)[-1] == "on_test_end"
        seen.append(run_dir)
        print("finish: a report would be rendered here")

    # fit() renders nothing itself, whatever report.enabled says: the caller decides through `finish`
    result = fit(_config(events, tmp_path, trainer={"epochs": 1}, report={"enabled": True}), finish=finish)
    assert seen == [Path(result.run_dir)] and not (Path(result.run_dir) / RUN_REPORT_DIR).exists()
    log = (Path(result.run_dir) / STDOUT_LOG).read_text()
    assert log.index("finish: a report would be rendered here") < log.index("COMPLETED (max_epochs) best epoch 0")


def test_finish_runs_for_a_failed_run_before_its_error_is_raised(events, tmp_path, monkeypatch):
    from thesis_lib.models import Autoencoder

    def exploding(self, batch):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(Autoencoder, "loss_and_metrics", exploding)
    seen = []
    with pytest.raises(RuntimeError, match="model exploded"):
        fit(_config(events, tmp_path), finish=lambda run_dir: seen.append(_moments(run_dir)))
    assert len(seen) == 1 and seen[0][-2:] == ["on_exception", "on_train_end"]


def test_missing_data_file_fails_before_any_run_directory(tmp_path):
    cfg = _config(tmp_path / "nope.h5", tmp_path)
    with pytest.raises(DataError, match="nope.h5"):
        fit(cfg)
    assert not (tmp_path / "outputs").exists()


def test_non_finite_loss_ends_failed_with_best_weights_kept(events, tmp_path, monkeypatch):
    from thesis_lib.models import Autoencoder

    original = Autoencoder.loss_and_metrics
    calls = {"n": 0}

    def poisoned(self, batch):
        values = original(self, batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 7:  # epoch 0 has 7 training batches: poison from epoch 1 on
                values["loss"] = values["loss"] * float("nan")
        return values

    monkeypatch.setattr(Autoencoder, "loss_and_metrics", poisoned)
    result = fit(_config(events, tmp_path, trainer={"epochs": 3, "sync_every_n_steps": 2}))
    assert result.status == "FAILED" and result.stop_reason == "non_finite_loss"
    events_ = read_events(result.run_dir)
    exc = [e for e in events_ if e["moment"] == "on_exception"]
    assert exc and exc[0]["error_type"] == "NonFiniteLossError" and "nan" in exc[0]["message"]
    assert result.best_epoch == 0 and (Path(result.run_dir) / "model.pt").is_file()
    runs_df, _, _ = load_runs(run_dirs=[str(result.run_dir)])
    assert runs_df.iloc[0]["status"] == "FAILED"


def test_early_stopping_and_plateau_scheduler(events, tmp_path):
    # A learning rate too small to move the loss: every epoch after the first is a plateau.
    cfg = _config(events, tmp_path, model={"bottleneck": "identity"},  # VQ's EMA codebook moves without the LR
                  optim={"lr": 1e-12, "scheduler": "plateau", "plateau_patience": 0, "plateau_factor": 0.5},
                  trainer={"epochs": 6, "early_stopping_patience": 2, "early_stopping_min_delta": 1.0})
    result = fit(cfg)
    assert result.status == "STOPPED" and result.stop_reason == "early_stopping"
    assert result.epochs_completed == 3
    lrs = pd.read_csv(Path(result.run_dir) / "facts" / "scalars.csv").query("split == 'train'")["lr"].tolist()
    assert lrs == pytest.approx([1e-12, 1e-12, 0.5e-12])


def test_gradient_accumulation_counts_optimizer_steps(events, tmp_path):
    one = fit(_config(events, tmp_path, trainer={"epochs": 1}))
    two = fit(_config(events, tmp_path, trainer={"epochs": 1, "grad_accum_steps": 2}))
    steps = [read_events(r.run_dir)[1]["step"] for r in (one, two)]
    assert steps == [7, 4]  # 840 train events / 128 = 7 batches; pairs of them: 4 optimizer steps


def test_freezing_a_submodule_keeps_its_weights(events, tmp_path):
    from thesis_lib.config import load_config
    from thesis_lib.data import make_loaders
    from thesis_lib.models import build_model
    from thesis_lib.train import seed_everything

    cfg = _config(events, tmp_path, model={"freeze": ["encoder"]})
    result = fit(cfg)
    info = json.loads((Path(result.run_dir) / "model_info.json").read_text())
    assert 0 < info["parameters"]["trainable"] < info["parameters"]["total"]
    assert info["parameters"]["trainable_pct"] < 100
    resolved = load_config(cfg)
    seed_everything(resolved.trainer.seed)
    _, meta = make_loaders(resolved.data, device=torch.device("cpu"), seed=resolved.trainer.seed)
    fresh = build_model(resolved.model, meta).state_dict()
    trained = torch.load(Path(result.run_dir) / "model.pt", weights_only=True)
    encoder_keys = [k for k in trained if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(trained[k], fresh[k]) for k in encoder_keys)
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained if k.startswith("decoder."))


def test_bf16_autocast_on_cpu(events, tmp_path):
    result = fit(_config(events, tmp_path, trainer={"epochs": 1, "precision": "bf16"}))
    assert result.status == "COMPLETED"


def test_classifier_task(events, tmp_path):
    cfg = _config(events, tmp_path, model={"task": "classifier", "hidden_dim": 32, "num_layers": 1}, trainer={"epochs": 2})
    result = fit(cfg)
    assert result.status == "COMPLETED"
    assert 0.0 <= result.test_metrics["metric_accuracy"] <= 1.0
    scalars = pd.read_csv(Path(result.run_dir) / "facts" / "scalars.csv")
    assert "metric_accuracy" in scalars.columns and "loss_recon" not in scalars.columns
    test_end = [e for e in read_events(result.run_dir) if e["moment"] == "on_test_end"][0]
    matrix = test_end["confusion_matrix"]
    assert len(matrix) == len(test_end["class_names"]) == 4 and sum(map(sum, matrix)) == test_end["samples"] == 180
    diagonal = sum(matrix[i][i] for i in range(4)) / 180
    assert diagonal == pytest.approx(result.test_metrics["metric_accuracy"], abs=1e-6)

    from thesis_lib.reports import load_run_report

    section = load_run_report(result.run_dir).section("test")
    assert "### Confusion matrix" in section and "**qcd_multijet**" in section and "recall" in section


def test_resume_continues_to_the_same_weights(events, tmp_path):
    model = {"dropout": 0.2}  # dropout draws from the global RNG: resume must restore it
    full = fit(_config(events, tmp_path / "a", model=model, trainer={"epochs": 3},
                         optim={"scheduler": "plateau"}))
    part = fit(_config(events, tmp_path / "b", model=model, trainer={"epochs": 2},
                         optim={"scheduler": "plateau"}))
    resumed = fit(_config(events, tmp_path / "b", model=model, optim={"scheduler": "plateau"},
                            trainer={"epochs": 3, "resume_from": str(part.run_dir)}))
    assert resumed.run_dir == part.run_dir and resumed.status == "COMPLETED"
    a = torch.load(Path(full.run_dir) / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(resumed.run_dir) / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    runs_df, per_epoch, order = load_runs(run_dirs=[str(resumed.run_dir)])
    assert runs_df.iloc[0]["epochs"] == 3 and runs_df.iloc[0]["status"] == "COMPLETED"
    assert list(per_epoch[order[0]].query("split == 'val'")["epoch"]) == [0, 1, 2]


def test_resume_refuses_a_different_model(events, tmp_path):
    part = fit(_config(events, tmp_path, trainer={"epochs": 1}))
    with pytest.raises(CheckpointError, match=r"config differs from the run's in model.latent_dim: 8 -> 16"):
        fit(_config(events, tmp_path, model={"latent_dim": 16}, trainer={"epochs": 2, "resume_from": str(part.run_dir)}))
    with pytest.raises(CheckpointError, match="no last.pt there"):
        fit(_config(events, tmp_path, trainer={"resume_from": str(tmp_path)}))


def test_a_run_from_before_a_new_config_key_still_resumes(events, tmp_path):
    part = fit(_config(events, tmp_path, trainer={"epochs": 1}))
    last = Path(part.run_dir) / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["config"]["model"]["diffusion"]  # as a checkpoint written before model.diffusion existed
    torch.save(state, last)
    resumed = fit(_config(events, tmp_path, trainer={"epochs": 2, "resume_from": str(part.run_dir)}))
    assert resumed.status == "COMPLETED" and resumed.epochs_completed == 2


_CHILD = textwrap.dedent(
    """
    import sys
    from thesis_lib.train import fit
    fit({"output_root": sys.argv[2], "run_name": "child", "data": {"path": sys.argv[1], "batch_size": 16},
           "model": {"encoder": "transformer", "hidden_dim": 32, "num_layers": 1, "latent_dim": 8},
           "trainer": {"epochs": 10000, "sync_every_n_steps": 1}})
    """
)


def _default_sigint() -> None:
    """In the child before exec: SIGINT handled and unblocked, whatever the test runner left behind.

    A child inherits its parent's signal mask and an ignored SIGINT; a runner (or a library an
    earlier test started) that blocks or ignores it would make Ctrl-C vanish in the child.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_child(events, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(events), str(tmp_path / "outputs")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = list((tmp_path / "outputs" / "runs").glob("*/facts/events.jsonl"))
        if runs and runs[0].read_text().count('"on_epoch_end"') >= 1 and (runs[0].parent.parent / "last.pt").exists():
            time.sleep(0.3)  # into the next epoch
            return proc, runs[0].parent.parent
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode())
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("child run never finished an epoch")


@pytest.mark.slow
def test_a_killed_run_is_readable_and_crashed(events, tmp_path):
    proc, run_dir = _start_child(events, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    runs_df, per_epoch, order = load_runs(run_dirs=[str(run_dir)])
    assert runs_df.iloc[0]["status"] == "CRASHED"
    assert len(per_epoch[order[0]]) >= 2
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] >= 1


@pytest.mark.slow
def test_ctrl_c_stops_with_checkpoints_and_facts(events, tmp_path):
    proc, run_dir = _start_child(events, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    runs_df, _, _ = load_runs(run_dirs=[str(run_dir)])
    assert runs_df.iloc[0]["status"] == "STOPPED" and runs_df.iloc[0]["stop_reason"] == "signal: SIGINT"
    for name in ("last.pt", "best_val.pt", "model.pt"):
        assert (run_dir / name).is_file()
    assert "SIGINT received" in (run_dir / "logs" / "stdout.log").read_text()


class _CountingDashboard:
    """A console-owning dashboard that only counts what the loop hands it."""

    owns_console = True

    def __init__(self):
        self.syncs = []

    def on_start(self, info):
        pass

    def on_sync(self, epoch, batch, steps_per_epoch, metrics, samples, lr, gpu):
        self.syncs.append((epoch, batch))

    def on_epoch_end(self, *args):
        pass

    def control(self):
        return "run"

    def on_end(self, status, stop_reason, summary):
        pass

    def close(self):
        pass


def test_a_live_dashboard_is_refreshed_between_scheduled_syncs(events, tmp_path):
    from thesis_lib.facts import read_steps

    dashboard = _CountingDashboard()
    cfg = _config(events, tmp_path, data={"path": str(events), "batch_size": 8},
                  trainer={"epochs": 1, "sync_every_n_steps": 10_000}, logging={"update_interval_ms": 10})
    result = fit(cfg, dashboard=dashboard)
    assert result.status == "COMPLETED"
    # no scheduled sync point in 105 steps, yet the dashboard saw fresh numbers as time passed
    assert len(dashboard.syncs) >= 2 and all(epoch == 0 for epoch, _ in dashboard.syncs)
    # steps.csv keeps its fixed resolution: only the epoch-end row
    assert list(read_steps(result.run_dir)["step"]) == [105]
