"""Tests for thesis_lib.models.diffusion: the diffusion_autoencoder task, its schedule, sampler, config and a real run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from thesis_lib.config import load_config
from thesis_lib.data import EventFile, EventLoader, make_synthetic_events
from thesis_lib.errors import ConfigError, ModelError
from thesis_lib.models import Autoencoder, DiffusionAutoencoder, build_model
from thesis_lib.models.diffusion import cosine_alpha_bar

import tiny_autoencoders as tiny
from tiny_autoencoders import META, make_batch

TASK = "diffusion_autoencoder"


def model_cfg(**overrides):
    return tiny.model_cfg(TASK, **overrides)


def build(seed=0, **overrides):
    return tiny.build(TASK, seed, **overrides)


# ---------------------------------------------------------------- shapes and names


@pytest.mark.parametrize("encoder,bottleneck", [("mlp", "identity"), ("transformer", "vq")])
def test_shapes_keys_and_scalar_names_match_the_autoencoder(encoder, bottleneck):
    model = build(encoder=encoder, bottleneck=bottleneck).eval()
    batch = make_batch()
    outputs = model(batch)
    assert isinstance(model, DiffusionAutoencoder) and isinstance(model, Autoencoder)
    assert {"cont", "id_logits", "globals", "z", "z_q", "commit_loss"} <= set(outputs)
    assert outputs["cont"].shape == (8, 6, 4) and outputs["id_logits"].shape == (8, 6, 5)
    assert outputs["globals"].shape == (8, 3) and outputs["z"].shape == (8, 8)
    padding = batch["tokens_id"] == 0
    assert torch.equal(outputs["cont"][padding], torch.zeros_like(outputs["cont"][padding]))

    plain = build_model(model_cfg(task="autoencoder", encoder=encoder, bottleneck=bottleneck), META)
    assert model.scalar_names == plain.scalar_names
    values = model.loss_and_metrics(batch)
    assert set(values) == {"loss", *model.scalar_names}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in values.values())
    errors = model.per_event_errors(batch)
    assert set(errors) == {"mse", "mae", "tokens_ce", "globals_mse"}
    assert all(e.shape == (8,) and e.dtype == torch.float32 and torch.isfinite(e).all() for e in errors.values())
    assert errors["mse"][0] == 0 and errors["mae"][0] == 0  # the empty event


def test_decoder_reuses_the_mlp_heads_without_a_cont_head_and_freezes_by_their_names():
    model = build(freeze=["decoder.globals_head"], diffusion={"denoiser_hidden": 24})
    names = {name for name, _ in model.decoder.named_children()}
    assert names == {"trunk", "id_head", "globals_head", "denoiser"}
    assert model.decoder.denoiser.from_x.out_features == 24
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith("decoder.globals_head.")}
    # The schedule is derived from the config, so checkpoints hold learned weights only.
    assert not any(key.endswith(("alpha_bar", "eval_t", "frequencies")) for key in model.state_dict())


# ---------------------------------------------------------------- padding and determinism


def test_values_at_padding_change_nothing_in_eval_mode():
    model = build(bottleneck="vq").eval()  # the mlp encoder reads every slot: the model must mask them itself
    batch = make_batch()
    noisy = dict(batch)
    padding = (batch["tokens_id"] == 0).unsqueeze(-1)
    noisy["tokens_cont"] = torch.where(padding, 100.0 * torch.randn_like(batch["tokens_cont"]), batch["tokens_cont"])
    assert not torch.equal(noisy["tokens_cont"], batch["tokens_cont"])
    for method in (model.loss_and_metrics, model.per_event_errors):
        clean, dirty = method(batch), method(noisy)
        assert all(torch.equal(clean[key], dirty[key]) for key in clean), method.__name__
    assert torch.equal(model(batch)["cont"], model(noisy)["cont"])


def test_eval_is_deterministic_and_per_event_scores_do_not_depend_on_the_batch():
    model = build().eval()
    batch = make_batch(seed=1)
    first, second = model.loss_and_metrics(batch), model.loss_and_metrics(batch)
    assert all(torch.equal(first[key], second[key]) for key in first)
    errors, again = model.per_event_errors(batch), model.per_event_errors(batch)
    assert all(torch.equal(errors[key], again[key]) for key in errors)
    # The evaluation noise is shared by all events: an event's score is the same in any batch.
    part = model.per_event_errors({key: value[2:5] for key, value in batch.items()})
    torch.testing.assert_close(part["mse"], errors["mse"][2:5])
    # The fixed timesteps are spread over the schedule (centres of equal slices of 1..steps).
    assert model.eval_t.tolist() == [4, 10, 17]


def test_training_mode_draws_new_timesteps_and_noise_each_call():
    model = build().train()
    batch = make_batch(seed=2)
    first, second = model.loss_and_metrics(batch), model.loss_and_metrics(batch)
    assert not torch.equal(first["loss_recon"], second["loss_recon"])
    assert torch.equal(first["loss_tokens"], second["loss_tokens"])  # the heads see no noise
    # per_event_errors is always the fixed evaluation, whatever the mode.
    assert torch.equal(model.per_event_errors(batch)["mse"], model.per_event_errors(batch)["mse"])


# ---------------------------------------------------------------- schedule and sampler


@pytest.mark.parametrize("steps", [2, 10, 100, 1000])
def test_cosine_schedule_is_monotone_in_the_open_unit_interval(steps):
    alpha_bar = cosine_alpha_bar(steps)
    assert alpha_bar.shape == (steps + 1,) and alpha_bar[0] == 1.0
    assert bool((alpha_bar[1:] > 0).all() and (alpha_bar[1:] < 1).all())
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    # Below the beta cap it is the cosine itself: alpha_bar_t = f(t) / f(0).
    f = [math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for t in (0, steps // 2)]
    assert alpha_bar[steps // 2].item() == pytest.approx(f[1] / f[0], rel=1e-9)


@pytest.mark.parametrize("sample_steps", [20, 3])
def test_ddim_on_a_perfect_denoiser_follows_the_closed_form_and_returns_x(monkeypatch, sample_steps):
    model = build(diffusion={"steps": 20, "sample_steps": sample_steps}).eval()
    batch = make_batch(seed=3)
    x0 = batch["tokens_cont"]
    seen = []

    def perfect(x_t, tokens_id, t, z_q):
        seen.append((x_t.clone(), float(t)))
        return x0

    monkeypatch.setattr(model.decoder.denoiser, "forward", perfect)
    with torch.no_grad():
        cont = model(batch)["cont"]
    torch.testing.assert_close(cont, x0, rtol=0, atol=1e-6)
    expected_t = [math.ceil(i * 20 / sample_steps) for i in range(sample_steps, 0, -1)]
    assert [t for _, t in seen] == expected_t
    # With eta = 0 and the true x0, every x_t shares the noise x_T = 0 implies:
    # x_t = (sqrt(a_t) - sqrt(1 - a_t) * sqrt(a_T / (1 - a_T))) * x0.
    a = cosine_alpha_bar(20).tolist()
    implied = math.sqrt(a[20] / (1 - a[20]))
    assert torch.equal(seen[0][0], torch.zeros_like(x0))
    for (x_t, t), previous in zip(seen[1:], expected_t[:-1]):
        assert t < previous
        scale = math.sqrt(a[int(t)]) - math.sqrt(1 - a[int(t)]) * implied
        torch.testing.assert_close(x_t, scale * x0, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- gradients


def test_gradients_reach_encoder_denoiser_and_heads():
    model = build(bottleneck="vq").train()
    model.loss_and_metrics(make_batch(seed=4))["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    prefixes = {name.split(".")[0] + "." + name.split(".")[1] for name, _ in model.named_parameters()}
    assert {"encoder.mlp", "decoder.denoiser", "decoder.id_head", "decoder.globals_head", "decoder.trunk"} <= prefixes


# ---------------------------------------------------------------- config


def test_config_defaults_and_overrides():
    cfg = load_config(None, ["model.task=diffusion_autoencoder", "model.diffusion.steps=50"])
    assert cfg.model.task == "diffusion_autoencoder"
    assert (cfg.model.diffusion.steps, cfg.model.diffusion.sample_steps) == (50, 10)
    assert (cfg.model.diffusion.eval_timesteps, cfg.model.diffusion.denoiser_hidden) == (4, 0)
    assert cfg.to_dict()["model"]["diffusion"]["steps"] == 50


@pytest.mark.parametrize("overrides,message", [
    (["model.diffusion.steps=5", "model.diffusion.sample_steps=6"],
     "model.diffusion.sample_steps=6 must be <= model.diffusion.steps=5"),
    (["model.diffusion.steps=1"], "model.diffusion.steps=1 is out of range: expected model.diffusion.steps >= 2"),
    (["model.diffusion.sample_steps=0"], "model.diffusion.sample_steps=0 is out of range: expected model.diffusion.sample_steps >= 1"),
    (["model.diffusion.eval_timesteps=0"], "model.diffusion.eval_timesteps=0 is out of range: expected model.diffusion.eval_timesteps >= 1"),
    (["model.diffusion.stepz=5"], "unknown config key 'model.diffusion.stepz' — did you mean 'steps'?"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_builder_errors_name_the_keys():
    with pytest.raises(ModelError, match=r"model\.diffusion\.sample_steps=9 must be >= 1 and <= model\.diffusion\.steps=4"):
        build(diffusion={"steps": 4, "sample_steps": 9})
    with pytest.raises(ModelError, match=r"model\.decoder='other'.*allowed: mlp"):
        build(decoder="other")
    cfg = model_cfg()
    del cfg.diffusion
    with pytest.raises(ModelError, match="needs the model.diffusion settings"):
        build_model(cfg, META)


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from thesis_lib import train

    root = tmp_path_factory.mktemp("diffusion")
    data = make_synthetic_events(root / "events.h5", n_events=1500, seed=0, n_tokens=8)
    config = {
        "output_root": str(root / "outputs"), "run_name": "diffae",
        "data": {"path": str(data), "batch_size": 64},
        "model": {"task": "diffusion_autoencoder", "encoder": "mlp", "bottleneck": "vq", "latent_dim": 16,
                  "hidden_dim": 48, "num_layers": 2, "token_embed_dim": 4, "vq": {"codebook_size": 32, "code_dim": 4},
                  "diffusion": {"steps": 50, "sample_steps": 5, "eval_timesteps": 4}},
        "optim": {"lr": 3e-3},
        "trainer": {"epochs": 3, "seed": 0, "device": "cpu"},
        "report": {"enabled": False}, "telemetry": {"enabled": False},
    }
    return train(config), data


def test_a_short_run_completes_with_falling_val_loss_and_finite_scores(trained):
    from thesis_lib.reports.inference import load_run_model

    result, data = trained
    assert result.status == "COMPLETED"
    history = json.loads((Path(result.run_dir) / "training_history.json").read_text())
    val = history["val"]["loss"]
    assert len(val) == 3 and val[-1] < val[0], val
    assert {"loss_recon", "metric_perplex"} <= set(result.test_metrics)

    model, _, meta = load_run_model(result.run_dir)
    assert isinstance(model, DiffusionAutoencoder) and not model.training
    loader = EventLoader(EventFile(data), "test", batch_size=50, normalization=meta.normalization)
    batch = next(iter(loader))
    errors = model.per_event_errors(batch)
    assert all(e.shape == (50,) and torch.isfinite(e).all() for e in errors.values())
    assert errors["mse"].max() > 0
    assert torch.equal(errors["mse"], model.per_event_errors(batch)["mse"])


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
def test_the_run_exports_and_every_format_matches_the_eager_ddim_reconstruction(trained):
    from thesis_lib.export import export_model

    result, _ = trained
    formats = ["state_dict", "torchscript"]
    if all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):
        formats.append("onnx")  # the [dev] extra installs them; the traced DDIM loop exports as a plain graph
    paths = export_model(result.run_dir, formats)
    info = json.loads(paths["export_info"].read_text())
    assert set(info["formats"]) == set(formats) and info["task"] == "diffusion_autoencoder"
    for fmt in formats:
        entry = info["formats"][fmt]
        assert entry["max_abs_diff"] <= 1e-5, fmt
        assert [o["name"] for o in entry["outputs"]] == ["recon_cont", "recon_id_logits", "recon_globals", "latent"]


def test_inference_scores_the_run_as_an_autoencoder(trained):
    from thesis_lib.reports.inference import run_inference

    result, _ = trained
    scored = run_inference([result.run_dir], corruptions=["additive_noise"])
    metrics = next(iter(scored.models.values()))
    assert (metrics["task"], metrics["model_task"]) == ("autoencoder", "diffusion_autoencoder")
    assert metrics["auroc_by_corruption"]["additive_noise"] > 0.5  # noisier events reconstruct worse
    assert not scored.errors
