"""The task figure families (thesis_lib.monitoring adversarial and diffusion): files, skips, untouched models, maths."""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

# tests/ is on sys.path under pytest's default import mode: the helpers are plain module-level functions.
from test_monitoring import assert_png, make_history, make_model

from thesis_lib.config import load_config
from thesis_lib.data import make_loaders, make_synthetic_events
from thesis_lib.errors import ConfigError
from thesis_lib.monitoring import FigureMonitor, FigureWarning
from thesis_lib.monitoring.names import (
    CURVE_FAMILIES,
    FIGURE_FAMILIES,
    GENERAL_FAMILIES,
    SNAPSHOT_FAMILIES,
    TASK_FAMILIES,
)
from thesis_lib.monitoring.adversarial import BALANCED_BCE, adversarial_figure
from thesis_lib.monitoring.context import FigureContext
from thesis_lib.monitoring.diffusion import ddim_x0_trajectory, evenly_spaced_timesteps, x0_errors_by_timestep

DIFFUSION = {"steps": 30, "sample_steps": 5, "eval_timesteps": 3}
SKIP_ADVERSARIAL = "adversarial: the history has no metric_d_real (not a gan_autoencoder); skipped"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A real event file's meta, a train batch and a fixed probe batch from its val split."""
    path = make_synthetic_events(tmp_path_factory.mktemp("events") / "events.h5", n_events=400, seed=0, n_tokens=6)
    cfg = SimpleNamespace(path=str(path), batch_size=64, eval_batch_size=32, max_events=0)
    loaders, meta = make_loaders(cfg, device="cpu", seed=0)
    return SimpleNamespace(meta=meta, train=next(iter(loaders["train"])), probe=next(iter(loaders["val"])), path=path)


def gan_history(model, n_epochs=3):
    """make_history's numbers, with D pulling ahead: d_real rising, d_fake falling, loss_adv under 2 ln 2."""
    history = make_history(model, n_epochs=n_epochs)
    for split, offset in (("train", 0.0), ("val", 0.02)):
        series = getattr(history, split)
        series["metric_d_real"] = [0.55 + 0.1 * e + offset for e in range(n_epochs)]
        series["metric_d_fake"] = [0.45 - 0.1 * e + offset for e in range(n_epochs)]
        series["loss_adv"] = [1.35 - 0.2 * e + offset for e in range(n_epochs)]
    return history


def horizontal_lines(ax):
    """The y of every horizontal line drawn on an axis (axhline and constant series)."""
    return [float(line.get_ydata()[0]) for line in ax.get_lines()
            if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]]


def test_adversarial_draws_a_curve_for_a_gan_autoencoder_and_diffusion_skips_it(tmp_path, data):
    model = make_model(data, task="gan_autoencoder")
    history = gan_history(model)
    monitor = FigureMonitor(tmp_path, families=["adversarial", "diffusion"], probe_batch=data.probe)
    monitor.on_epoch_end(0, model, history)
    assert_png(tmp_path / "figures" / "adversarial.png")  # a curve: no epoch in its name, from the first epoch
    for epoch in history.epochs[1:]:
        monitor.on_epoch_end(epoch, model, history)
    monitor.on_train_end(model, history, "COMPLETED")
    assert monitor.notes == ["diffusion: the model (GANAutoencoder) is not a DiffusionAutoencoder; skipped"]
    assert monitor.warnings == [] and monitor.active == ("adversarial",)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["adversarial.png"]
    assert [p.name for p in monitor.written] == ["adversarial.png"] * 4


def test_adversarial_marks_the_balance_lines_and_draws_every_series(data):
    model = make_model(data, task="gan_autoencoder")
    fig = adversarial_figure(FigureContext(epoch=2, model=model, history=gan_history(model)))
    scores, loss = fig.axes[:2]
    assert 0.5 in horizontal_lines(scores)
    assert horizontal_lines(loss) == [pytest.approx(2 * math.log(2))] and BALANCED_BCE == pytest.approx(1.3863, abs=1e-4)
    labels = [line.get_label() for line in scores.get_lines()]
    for what in ("real", "reconstructed"):
        for split in ("train", "val"):
            assert any(label.startswith(f"{what} ({split}") for label in labels), (what, split, labels)
    assert [line.get_label()[:5] for line in loss.get_lines()][:2] == ["train", "val ("]
    # No epoch finished yet: nothing to draw, not a skip.
    assert adversarial_figure(FigureContext(epoch=None, model=model, history={"epochs": []})) is None


def test_diffusion_writes_snapshots_for_a_diffusion_autoencoder_and_adversarial_skips_it(tmp_path, data):
    model = make_model(data, task="diffusion_autoencoder", diffusion=DIFFUSION)
    history = make_history(model, n_epochs=2)
    monitor = FigureMonitor(tmp_path, families=["adversarial", "diffusion"], probe_batch=data.probe,
                            cont_features=data.meta.cont_features)
    for epoch in history.epochs:
        monitor.on_epoch_end(epoch, model, history)
    monitor.on_train_end(model, history, "COMPLETED")
    assert monitor.notes == [SKIP_ADVERSARIAL] and monitor.warnings == []
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == ["diffusion.png", "diffusion_epoch000.png", "diffusion_epoch001.png"]
    for name in names:
        assert_png(tmp_path / "figures" / name)
    # Without a probe batch there is nothing to probe: a note, not a failure.
    bare = FigureMonitor(tmp_path / "bare", families=["diffusion"])
    bare.on_epoch_end(0, model, history)
    assert bare.notes == ["diffusion: no probe batch was given; skipped"] and bare.warnings == []


def test_a_plain_autoencoder_skips_both_with_one_note_each(tmp_path, data):
    model = make_model(data, bottleneck="identity")
    history = make_history(model, n_epochs=3)
    monitor = FigureMonitor(tmp_path, families=["adversarial", "diffusion"], probe_batch=data.probe)
    for epoch in history.epochs:
        monitor.on_epoch_end(epoch, model, history)
    monitor.on_train_end(model, history, "COMPLETED")
    assert monitor.notes == [SKIP_ADVERSARIAL,
                             "diffusion: the model (Autoencoder) is not a DiffusionAutoencoder; skipped"]
    assert monitor.warnings == [] and monitor.active == () and monitor.written == []
    assert not (tmp_path / "figures").exists()


def test_the_diffusion_probe_leaves_weights_buffers_modes_and_rng_as_they_were(tmp_path, data):
    model = make_model(data, task="diffusion_autoencoder", bottleneck="vq", diffusion=DIFFUSION)
    model.train()
    model.decoder.denoiser.eval()  # a mixed state must come back as it was, not as all-train
    modes = {name: m.training for name, m in model.named_modules()}
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    monitor = FigureMonitor(tmp_path, families=["diffusion"], probe_batch=data.probe)
    monitor.on_epoch_end(0, model, make_history(model, n_epochs=1))
    assert monitor.warnings == [] and [p.name for p in monitor.written] == ["diffusion_epoch000.png"]
    after = model.state_dict()
    assert before.keys() == after.keys() and "bottleneck.cluster_size" in after
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_recomputed_diffusion_maths_match_the_models_own(data):
    model = make_model(data, task="diffusion_autoencoder", diffusion=DIFFUSION).eval()
    batch = data.probe
    with torch.no_grad():
        outputs = model(batch)
        valid = (batch["tokens_id"] != 0).unsqueeze(-1)
        x0 = batch["tokens_cont"] * valid.to(batch["tokens_cont"].dtype)
        # At the model's eval t, with its seeded noise, the per-t errors average to its eval-mode loss_recon.
        errors = x0_errors_by_timestep(model, batch["tokens_id"], x0, outputs["z_q"], model.eval_t.tolist())
        expected = model.loss_and_metrics(batch)["loss_recon"]
        trajectory = ddim_x0_trajectory(model, batch["tokens_id"], outputs["z_q"], x0)
    assert errors.shape == (DIFFUSION["eval_timesteps"],)
    torch.testing.assert_close(errors.mean(), expected, rtol=1e-5, atol=1e-6)
    assert trajectory.shape == (DIFFUSION["sample_steps"], *x0.shape)
    torch.testing.assert_close(trajectory[-1], outputs["cont"])  # the last DDIM estimate is forward's "cont"
    assert torch.all(trajectory[:, ~valid.squeeze(-1)] == 0)
    assert evenly_spaced_timesteps(100) == [1] + [int(round(1 + 99 * k / 19)) for k in range(1, 19)] + [100]
    assert evenly_spaced_timesteps(5) == [1, 2, 3, 4, 5]


def test_the_family_names_and_the_config_accept_the_task_families():
    assert TASK_FAMILIES == ("adversarial", "diffusion")
    assert FIGURE_FAMILIES == GENERAL_FAMILIES + TASK_FAMILIES
    assert set(CURVE_FAMILIES) | set(SNAPSHOT_FAMILIES) == set(FIGURE_FAMILIES)
    assert "adversarial" in CURVE_FAMILIES and "diffusion" in SNAPSHOT_FAMILIES
    cfg = load_config(None, ["logging.figures=[losses,adversarial,diffusion]"])
    assert cfg.logging.figures == ["losses", "adversarial", "diffusion"]
    message = "logging.figures: 'difusion' — did you mean 'diffusion'? allowed: losses, metrics, latency, lr, " \
              "recon, codebook, adversarial, diffusion"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, ["logging.figures=[difusion]"])


def test_train_on_a_gan_autoencoder_writes_the_adversarial_curve(tmp_path, data):
    from thesis_lib import train

    config = {"data": {"path": str(data.path), "batch_size": 64},
              "model": {"task": "gan_autoencoder", "encoder": "mlp", "latent_dim": 8, "hidden_dim": 32},
              "trainer": {"epochs": 2, "seed": 3}, "report": {"enabled": False},
              "telemetry": {"enabled": False}, "output_root": str(tmp_path),
              "logging": {"figures": ["adversarial"]}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, dashboard=None)
    assert result.status == "COMPLETED"
    assert not [w for w in caught if issubclass(w.category, FigureWarning)]
    figures = result.run_dir / "figures"
    assert [p.name for p in figures.iterdir()] == ["adversarial.png"]
    assert_png(figures / "adversarial.png")
    assert "figures:" not in (result.run_dir / "logs" / "stdout.log").read_text()  # no skip note
    saved = json.loads((result.run_dir / "training_history.json").read_text())
    assert len(saved["val"]["metric_d_real"]) == len(saved["epochs"]) == 2  # what the curve was drawn from
