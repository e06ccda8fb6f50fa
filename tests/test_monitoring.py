"""Training-time figures (thesis_lib.monitoring): files, cadence, skips, fail-safety, untouched models, config."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from thesis_lib.config import load_config
from thesis_lib.data import make_loaders, make_synthetic_events
from thesis_lib.errors import ConfigError
from thesis_lib.models import build_model
from thesis_lib.monitoring import FigureMonitor, FigureWarning
from thesis_lib.monitoring.names import GENERAL_FAMILIES
from thesis_lib.monitoring import curves
from thesis_lib.monitoring.curves import lr_cuts
from thesis_lib.monitoring.recon import feature_names
from thesis_lib.train.artifacts import TrainingHistory

CURVES = ("losses", "metrics", "latency", "lr")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A real event file's meta, a train batch and a fixed probe batch from its val split."""
    path = make_synthetic_events(tmp_path_factory.mktemp("events") / "events.h5", n_events=400, seed=0, n_tokens=6)
    cfg = SimpleNamespace(path=str(path), batch_size=64, eval_batch_size=32, max_events=0)
    loaders, meta = make_loaders(cfg, device="cpu", seed=0)
    return SimpleNamespace(meta=meta, train=next(iter(loaders["train"])), probe=next(iter(loaders["val"])), path=path)


def make_model(data, **model):
    """A tiny model of the task and parts given; a vq model has trained its EMA for a few steps."""
    settings = dict(latent_dim=8, hidden_dim=16, num_layers=1, token_embed_dim=4, vq={"codebook_size": 16, "code_dim": 4})
    settings.update(model)
    torch.manual_seed(0)
    net = build_model(load_config({"model": settings}).model, data.meta)
    if settings.get("bottleneck") == "vq":
        for _ in range(3):  # training-mode forwards move cluster_size off zero, so the EMA panel has bars
            net.loss_and_metrics(data.train)
    return net


def make_history(model, n_epochs=4):
    """Plausible per-epoch numbers for the model's scalars: falling losses, an LR cut at epoch 2."""
    history = TrainingHistory()
    names = ("loss",) + tuple(model.scalar_names)
    for epoch in range(n_epochs):
        history.epochs.append(epoch)
        history.lr.append(1e-3 if epoch < 2 else 5e-4)
        history.epoch_time_s.append(2.0 if epoch == 0 else 1.2 + 0.05 * epoch)
        history.throughput.append(5000.0 + 100 * epoch)
        for split, offset in (("train", 0.0), ("val", 0.05)):
            series = getattr(history, split)
            for name in names:
                value = 0.0 if name == "loss_commit" and "metric_perplex" not in names else 1.0 / (epoch + 1) + offset
                if name.startswith("metric_"):
                    value = 0.5 + 0.1 * epoch + offset
                series.setdefault(name, []).append(value)
    return history


def assert_png(path):
    """A real, non-blank image of a plausible size."""
    assert path.is_file(), path
    image = imread(path)
    assert image.shape[0] > 150 and image.shape[1] > 150 and image.shape[2] in (3, 4)
    assert float(np.std(image[..., :3])) > 0.01  # not a single colour


def run_epochs(monitor, model, history):
    for epoch in history.epochs:
        monitor.on_epoch_end(epoch, model, history)


def test_every_family_writes_its_files_for_a_vq_autoencoder(tmp_path, data):
    model = make_model(data, bottleneck="vq")
    history = make_history(model, n_epochs=2)
    monitor = FigureMonitor(tmp_path, families=list(GENERAL_FAMILIES), every_n_epochs=2, probe_batch=data.probe,
                            cont_features=data.meta.cont_features)
    monitor.on_epoch_end(0, model, history)
    figures = tmp_path / "figures"
    for family in CURVES:  # written at the first epoch end already: a crashed run keeps its curves
        assert_png(figures / f"{family}.png")
    for epoch in history.epochs[1:]:
        monitor.on_epoch_end(epoch, model, history)
    monitor.on_train_end(model, history, "COMPLETED")
    names = sorted(p.name for p in figures.iterdir())
    assert names == sorted([f"{f}.png" for f in GENERAL_FAMILIES]
                           + [f"{f}_epoch{e:03d}.png" for f in ("recon", "codebook") for e in (0,)])
    for name in names:
        assert_png(figures / name)
    assert monitor.warnings == [] and monitor.notes == []
    assert monitor.active == GENERAL_FAMILIES
    # losses.png: epoch 0, then the end; epoch 1 is not one of every 2.
    assert [p.name for p in monitor.written].count("losses.png") == 2
    assert monitor.elapsed_s > 0


def test_every_n_epochs_sets_which_epochs_draw(tmp_path, data):
    model = make_model(data, bottleneck="vq")
    history = make_history(model, n_epochs=5)
    monitor = FigureMonitor(tmp_path, families=["codebook", "lr"], every_n_epochs=3, probe_batch=data.probe)
    run_epochs(monitor, model, history)
    snapshots = sorted(p.name for p in (tmp_path / "figures").glob("codebook_epoch*.png"))
    assert snapshots == ["codebook_epoch000.png", "codebook_epoch003.png"]
    assert [p.name for p in monitor.written].count("lr.png") == 2
    with pytest.raises(ConfigError, match="every_n_epochs=0"):
        FigureMonitor(tmp_path, families=["lr"], every_n_epochs=0)


def test_classifier_skips_recon_and_codebook_with_one_note_each(tmp_path, data):
    model = make_model(data, task="classifier")
    history = make_history(model)
    monitor = FigureMonitor(tmp_path, families=["recon", "codebook", "metrics"], probe_batch=data.probe)
    run_epochs(monitor, model, history)
    monitor.on_train_end(model, history, "STOPPED")
    assert len(monitor.notes) == 2
    assert "recon: the model (Classifier) is not an autoencoder" in monitor.notes[0]
    assert "codebook: the model's bottleneck is no bottleneck, not vq" in monitor.notes[1]
    assert monitor.warnings == [] and monitor.active == ("metrics",)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["metrics.png"]


def test_identity_autoencoder_draws_recon_but_skips_codebook_and_metrics(tmp_path, data):
    model = make_model(data, bottleneck="identity")
    history = make_history(model, n_epochs=1)
    monitor = FigureMonitor(tmp_path, families=["recon", "codebook", "metrics", "losses"], probe_batch=data.probe)
    run_epochs(monitor, model, history)
    monitor.on_train_end(model, history, "COMPLETED")
    assert [n.split(":")[0] for n in monitor.notes] == ["codebook", "metrics"]
    assert "IdentityBottleneck, not vq" in monitor.notes[0]
    assert "no metric_* series" in monitor.notes[1]
    for name in ("recon_epoch000.png", "recon.png", "losses.png"):
        assert_png(tmp_path / "figures" / name)
    # Without a probe batch recon has nothing to draw from: a note, not a failure.
    bare = FigureMonitor(tmp_path / "bare", families=["recon"])
    bare.on_epoch_end(0, model, history)
    assert bare.notes == ["recon: no probe batch was given; skipped"] and bare.warnings == []


def test_a_failing_family_is_switched_off_with_one_warning_and_never_raises(tmp_path, data, monkeypatch):
    def broken(ctx):
        raise RuntimeError("axis exploded")

    monkeypatch.setattr(curves, "losses_figure", broken)
    model = make_model(data, bottleneck="identity")
    history = make_history(model, n_epochs=3)
    # recon fails for real: a probe batch whose features do not fit the model makes its forward raise.
    bad_probe = dict(data.probe, tokens_cont=data.probe["tokens_cont"][..., :2])
    monitor = FigureMonitor(tmp_path, families=["losses", "recon", "lr"], probe_batch=bad_probe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(monitor, model, history)
        monitor.on_train_end(model, history, "COMPLETED")
    figure_warnings = [w for w in caught if issubclass(w.category, FigureWarning)]
    assert len(figure_warnings) == 2 and len(monitor.warnings) == 2
    assert [str(w.message) for w in figure_warnings] == monitor.warnings
    assert "'losses' failed at epoch 0 (RuntimeError: axis exploded)" in monitor.warnings[0]
    assert "'recon' failed at epoch 0" in monitor.warnings[1]
    assert monitor.active == ("lr",)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["lr.png"]
    assert model.training  # the failed probe still put the model's mode back


def test_probes_leave_modes_parameters_buffers_and_rng_untouched(tmp_path, data):
    model = make_model(data, bottleneck="vq")
    model.train()
    model.decoder.eval()  # a mixed state must come back as it was, not as all-train
    modes = {name: m.training for name, m in model.named_modules()}
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    history = make_history(model, n_epochs=1)
    monitor = FigureMonitor(tmp_path, families=["recon", "codebook"], probe_batch=data.probe)
    run_epochs(monitor, model, history)  # the end of training probes through the same path
    assert monitor.warnings == [] and len(monitor.written) == 2
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # includes bottleneck.codebook, cluster_size and embed_sum
        assert torch.equal(before[key], after[key]), key
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
    # The same check fails without the probe's eval mode: a training-mode forward moves the EMA.
    model.loss_and_metrics(data.probe)
    assert not torch.equal(before["bottleneck.cluster_size"], model.state_dict()["bottleneck.cluster_size"])


def test_end_of_a_run_without_epochs_writes_no_curves_and_no_warning(tmp_path, data):
    model = make_model(data, bottleneck="identity")
    monitor = FigureMonitor(tmp_path, families=["losses", "latency", "recon"], probe_batch=data.probe)
    monitor.on_train_end(model, TrainingHistory(), "FAILED")
    assert monitor.warnings == [] and monitor.notes == []
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["recon.png"]


def test_no_families_is_off_and_creates_nothing(tmp_path, data):
    model = make_model(data)
    monitor = FigureMonitor(tmp_path, families=[])
    monitor.on_epoch_end(0, model, make_history(model, n_epochs=1))
    monitor.on_train_end(model, make_history(model, n_epochs=1), "COMPLETED")
    assert not (tmp_path / "figures").exists() and monitor.written == []


def test_curves_accept_a_history_dict_and_find_lr_cuts(tmp_path, data):
    history = make_history(make_model(data), n_epochs=4)
    assert lr_cuts(history.epochs, history.lr) == [(2, 0.5)]
    assert lr_cuts([0, 1, 2], [1e-3, 2e-3, 2e-3]) == []
    monitor = FigureMonitor(tmp_path, families=["lr", "latency"])
    monitor.on_train_end(None, history.to_dict(), "COMPLETED")  # e.g. a loaded training_history.json
    assert monitor.warnings == []
    assert_png(tmp_path / "figures" / "lr.png")
    assert_png(tmp_path / "figures" / "latency.png")


def test_feature_names_fall_back_to_the_model_then_indices():
    model = SimpleNamespace(cont_features=("a", "b"))
    assert feature_names(("E", "pT"), model, 2) == ["E", "pT"]
    assert feature_names(None, model, 2) == ["a", "b"]
    assert feature_names(("E",), object(), 2) == ["feature 0", "feature 1"]


def test_importing_the_monitor_does_not_import_matplotlib():
    # The training loop imports FigureMonitor; a run without figures must not pay for matplotlib.
    code = "import sys, thesis_lib.monitoring; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ---- config: logging.figures and logging.figures_every_n_epochs ----


def test_config_figures_default_off_and_accepts_families():
    assert load_config().logging.figures == [] and load_config().logging.figures_every_n_epochs == 1
    cfg = load_config(None, ["logging.figures=[losses,recon,codebook]", "logging.figures_every_n_epochs=5"])
    assert cfg.logging.figures == ["losses", "recon", "codebook"]
    assert cfg.logging.figures_every_n_epochs == 5
    assert load_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logging.figures=[los]"], "logging.figures: 'los' — did you mean 'losses'? allowed: losses, metrics, "
                                    "latency, lr, recon, codebook"),
        (["logging.figures=[losses,xyz]"], "logging.figures: 'xyz' is not a figure family; allowed: losses"),
        (["logging.figures=[lr,lr]"], "logging.figures: 'lr' is listed twice"),
        (["logging.figures=losses"], "logging.figures='losses': expected list of str, got str"),
        (["logging.figures=[1]"], "logging.figures[0]=1: expected str, got int"),
        (["logging.figures_every_n_epochs=0"], "logging.figures_every_n_epochs=0 is out of range: expected logging.figures_every_n_epochs >= 1"),
        (["logging.figure=[lr]"], "unknown config key 'logging.figure' — did you mean 'figures'?"),
    ],
)
def test_config_figure_errors_name_the_key_the_value_and_the_allowed(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_monitor_rejects_unknown_families_like_the_config():
    with pytest.raises(ConfigError, match=re.escape("FigureMonitor families: 'recons' — did you mean 'recon'?")):
        FigureMonitor(".", families=["recons"])


def test_train_draws_the_figures_and_trains_the_same_weights_as_without(tmp_path, data):
    from thesis_lib import train

    common = {"data": {"path": str(data.path), "batch_size": 64},
              "model": {"encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "vq": {"code_dim": 4, "codebook_size": 16}},
              "trainer": {"epochs": 2, "seed": 3}, "report": {"enabled": False}, "telemetry": {"enabled": False}}
    with_figures = train({**common, "output_root": str(tmp_path / "on"),
                          "logging": {"figures": ["losses", "lr", "recon", "codebook"]}}, dashboard=None)
    without = train({**common, "output_root": str(tmp_path / "off")}, dashboard=None)
    figures = with_figures.run_dir / "figures"
    assert sorted(p.name for p in figures.iterdir()) == [
        "codebook.png", "codebook_epoch000.png", "codebook_epoch001.png", "losses.png", "lr.png",
        "recon.png", "recon_epoch000.png", "recon_epoch001.png"]
    for png in figures.iterdir():
        assert_png(png)
    assert not (without.run_dir / "figures").exists()
    # The probes run in eval mode on their own RNG stream: the training itself is unchanged.
    on, off = torch.load(with_figures.run_dir / "model.pt"), torch.load(without.run_dir / "model.pt")
    for name, value in off.items():
        torch.testing.assert_close(on[name], value, msg=name)
