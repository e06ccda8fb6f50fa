"""Tests for thesis_lib.models.adversarial: the gan_autoencoder task, its GRL, discriminator, config and a real run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from thesis_lib.config import load_config
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ConfigError, ModelError
from thesis_lib.models import Autoencoder, GANAutoencoder, build_model, count_parameters
from thesis_lib.models.adversarial import EventDiscriminator, reverse_gradient

import tiny_autoencoders as tiny
from tiny_autoencoders import META, make_batch

TASK = "gan_autoencoder"
GAME_SCALARS = ("loss_adv", "metric_d_real", "metric_d_fake")


def model_cfg(**overrides):
    return tiny.model_cfg(TASK, **overrides)


def build(seed=0, **overrides):
    return tiny.build(TASK, seed, **overrides)


def adversarial_loss(model, batch):
    """D's loss recomputed by hand, without the GRL: BCE(D(x), 1) + BCE(D(x_hat), 0)."""
    real = model.discriminate(batch, batch["tokens_cont"])
    fake = model.discriminate(batch, model(batch)["cont"])
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def step_along(model, grads, length):
    """An SGD step of the named parameters only: p -= length * g / ||g|| over all of them together."""
    norm = torch.sqrt(sum(g.square().sum() for g in grads.values()))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, g in grads.items():
            params[name] -= length * g / norm


def grads_of(model, names):
    return {name: p.grad.clone() for name, p in model.named_parameters() if name.startswith(names)}


# ---------------------------------------------------------------- the gradient reversal layer


@pytest.mark.parametrize("lambda_", [1.0, 0.3, 0.0])
def test_grl_is_the_identity_forward_and_reverses_the_gradient_by_lambda(lambda_):
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    y = reverse_gradient(x, lambda_)
    assert torch.equal(y, x) and y.grad_fn is not None
    upstream = torch.randn(3, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    torch.testing.assert_close(grad, -lambda_ * upstream, rtol=0, atol=0)
    # Without the layer the same graph gives +upstream: the sign comes from the GRL alone.
    (plain,) = torch.autograd.grad(x * 1.0, x, grad_outputs=upstream)
    assert torch.equal(plain, upstream)


# ---------------------------------------------------------------- shapes and names


@pytest.mark.parametrize("encoder,bottleneck", [("mlp", "identity"), ("transformer", "vq")])
def test_shapes_scalar_names_and_the_total_loss(encoder, bottleneck):
    model = build(encoder=encoder, bottleneck=bottleneck, adversarial={"weight": 0.5}).eval()
    batch = make_batch()
    assert isinstance(model, GANAutoencoder) and isinstance(model, Autoencoder)
    plain = build_model(model_cfg(task="autoencoder", encoder=encoder, bottleneck=bottleneck), META)
    assert model.scalar_names == plain.scalar_names + GAME_SCALARS

    outputs = model(batch)
    assert set(outputs) == set(plain.eval()(batch))  # forward is the autoencoder's: export reads the same keys
    assert outputs["cont"].shape == (8, 6, 4) and outputs["id_logits"].shape == (8, 6, 5)

    values = model.loss_and_metrics(batch)
    assert set(values) == {"loss", *model.scalar_names}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in values.values())
    assert all(not v.requires_grad for k, v in values.items() if k != "loss")
    assert 0 < values["metric_d_real"] < 1 and 0 < values["metric_d_fake"] < 1
    expected = (values["loss_recon"] + values["loss_tokens"] + 0.1 * values["loss_globals"]
                + values["loss_commit"] + 0.5 * values["loss_adv"])
    torch.testing.assert_close(values["loss"].detach(), expected)
    torch.testing.assert_close(values["loss_adv"], adversarial_loss(model, batch).detach())

    errors = model.per_event_errors(batch)
    assert set(errors) == {"mse", "mae", "tokens_ce", "globals_mse", "d_score"}
    assert all(e.shape == (8,) and e.dtype == torch.float32 and torch.isfinite(e).all() for e in errors.values())
    assert bool(((errors["d_score"] > 0) & (errors["d_score"] < 1)).all())


def test_with_weight_zero_it_is_the_plain_autoencoder():
    gan = build(seed=3, adversarial={"weight": 0.0}).eval()
    plain = build(seed=3, task="autoencoder").eval()
    shared = plain.state_dict()
    assert {k: v for k, v in gan.state_dict().items() if not k.startswith("discriminator.")}.keys() == shared.keys()
    assert all(torch.equal(gan.state_dict()[k], v) for k, v in shared.items())  # same seed, same start
    batch = make_batch(seed=3)
    assert torch.equal(gan.loss_and_metrics(batch)["loss"], plain.loss_and_metrics(batch)["loss"])


# ---------------------------------------------------------------- the discriminator


def test_discriminator_ignores_padding_and_token_order():
    torch.manual_seed(0)
    disc = EventDiscriminator(n_token_types=5, cont_dim=4, globals_dim=3, token_embed_dim=4, hidden_dim=16,
                              num_layers=2, dropout=0.0)
    batch = make_batch(seed=1)
    logits = disc(batch["tokens_id"], batch["tokens_cont"], batch["globals"])
    assert logits.shape == (8,) and torch.isfinite(logits).all()

    padding = (batch["tokens_id"] == 0).unsqueeze(-1)
    assert padding.any()
    dirty = torch.where(padding, 1e4 * torch.randn_like(batch["tokens_cont"]), batch["tokens_cont"])
    assert torch.equal(disc(batch["tokens_id"], dirty, batch["globals"]), logits)
    # Not even non-finite values there reach D's output or its gradients.
    inf = torch.where(padding, torch.full_like(dirty, float("inf")), batch["tokens_cont"])
    disc(batch["tokens_id"], inf, batch["globals"]).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in disc.parameters())
    # Neither is padding pooled: more padded slots (the set network takes any T) change nothing.
    longer_id = F.pad(batch["tokens_id"], (0, 3))
    longer_cont = F.pad(batch["tokens_cont"], (0, 0, 0, 3), value=7.0)
    torch.testing.assert_close(disc(longer_id, longer_cont, batch["globals"]), logits)

    # A set network: the same tokens in another slot order give the same logit.
    order = torch.randperm(META.n_tokens)
    shuffled = disc(batch["tokens_id"][:, order], batch["tokens_cont"][:, order], batch["globals"])
    torch.testing.assert_close(shuffled, logits)
    # ... and it does read the features and the globals.
    assert not torch.equal(disc(batch["tokens_id"], batch["tokens_cont"] + 1.0, batch["globals"]), logits)
    assert not torch.equal(disc(batch["tokens_id"], batch["tokens_cont"], batch["globals"] + 1.0), logits)


def test_reconstructions_at_padding_do_not_reach_the_game():
    model = build().eval()
    batch = make_batch(seed=2)
    first = model.loss_and_metrics(batch)
    # Move the decoder's cont output at padded slots only: D must not see it.
    padding = (batch["tokens_id"] == 0).unsqueeze(-1)
    head = model.decoder.cont_head
    original = head.forward
    head.forward = lambda x: original(x) + 50.0 * padding.flatten(1).repeat_interleave(META.cont_dim, dim=1)
    second = model.loss_and_metrics(batch)
    for key in ("loss_adv", "metric_d_fake", "loss_recon", "loss"):
        assert torch.equal(first[key], second[key]), key


# ---------------------------------------------------------------- gradient signs


def test_one_backward_trains_d_down_its_loss_and_the_decoder_up_it():
    lam, weight, lr = 0.5, 1.0, 0.05
    model = build(seed=1, adversarial={"weight": weight, "grl_lambda": lam}).train()  # dropout 0: modes agree
    batch = make_batch(seed=5)
    model.loss_and_metrics(batch)["loss"].backward()
    total = grads_of(model, ("discriminator.", "decoder."))
    model.zero_grad()
    model.adversarial_weight = 0.0
    model.loss_and_metrics(batch)["loss"].backward()
    without = grads_of(model, ("decoder.",))
    model.zero_grad()
    model.adversarial_weight = weight

    # The true gradients of D's loss, computed without the GRL.
    disc_params = dict(model.discriminator.named_parameters(prefix="discriminator"))
    dec_params = dict(model.decoder.named_parameters(prefix="decoder"))
    loss = adversarial_loss(model, batch)
    true = dict(zip([*disc_params, *dec_params],
                    torch.autograd.grad(loss, [*disc_params.values(), *dec_params.values()], allow_unused=True)))

    # D gets +weight * dL_D/dtheta_D: it descends its loss.
    for name in disc_params:
        torch.testing.assert_close(total[name], weight * true[name], msg=name)
    # The decoder's adversarial part is -lambda * weight * dL_D/dtheta: it ascends D's loss.
    adversarial = {name: total[name] - without[name] for name in dec_params}
    torch.testing.assert_close(adversarial["decoder.cont_head.weight"], -lam * weight * true["decoder.cont_head.weight"])
    assert adversarial["decoder.cont_head.weight"].abs().sum() > 0
    # The fake event keeps the real globals and token types: those heads play no part in the game.
    for name in ("decoder.globals_head.0.weight", "decoder.id_head.weight"):
        assert torch.equal(adversarial[name], torch.zeros_like(adversarial[name])), name

    # Steps of a fixed length (D barely separates the events at initialisation, so its gradients
    # are small), each from the same start: D alone along -(its gradient), the decoder alone along
    # -(its adversarial gradient).
    before = adversarial_loss(model, batch).item()
    d_step, g_step = copy.deepcopy(model), copy.deepcopy(model)
    step_along(d_step, {name: total[name] for name in disc_params}, lr)
    assert adversarial_loss(d_step, batch).item() < before - 1e-5
    step_along(g_step, adversarial, lr)
    assert adversarial_loss(g_step, batch).item() > before + 1e-6


def test_freezing_the_discriminator():
    model = build(freeze=["discriminator"])
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and frozen == {name for name, _ in model.named_parameters() if name.startswith("discriminator.")}
    counts = count_parameters(model)
    assert counts["total"] - counts["trainable"] == sum(p.numel() for p in model.discriminator.parameters())
    model.loss_and_metrics(make_batch(seed=6))["loss"].backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert model.decoder.cont_head.weight.grad.abs().sum() > 0  # a fixed D still pushes the autoencoder
    with pytest.raises(ModelError, match="did you mean 'discriminator'"):
        build(freeze=["discriminater"])


# ---------------------------------------------------------------- config


def test_config_defaults_overrides_and_older_configs():
    cfg = load_config(None, ["model.task=gan_autoencoder", "model.adversarial.weight=0.5"])
    assert cfg.model.task == "gan_autoencoder"
    adv = cfg.model.adversarial
    assert (adv.weight, adv.grl_lambda, adv.disc_hidden) == (0.5, 0.1, 0)
    assert cfg.to_dict()["model"]["adversarial"] == {"weight": 0.5, "grl_lambda": 0.1, "disc_hidden": 0}
    # A config written before model.adversarial existed resolves with today's defaults.
    old = load_config({"model": {"task": "autoencoder", "latent_dim": 8}})
    assert old.model.adversarial.weight == 0.1
    model = build(adversarial={"disc_hidden": 24})
    assert model.discriminator.token_mlp[0].out_features == 24


@pytest.mark.parametrize("overrides,message", [
    (["model.adversarial.weight=-1"], "model.adversarial.weight=-1 is out of range: expected model.adversarial.weight >= 0"),
    (["model.adversarial.grl_lambda=-0.5"], "model.adversarial.grl_lambda=-0.5 is out of range: expected model.adversarial.grl_lambda >= 0"),
    (["model.adversarial.disc_hidden=-2"], "model.adversarial.disc_hidden=-2 is out of range: expected model.adversarial.disc_hidden >= 0"),
    (["model.adversarial.wieght=1"], "unknown config key 'model.adversarial.wieght' — did you mean 'weight'?"),
    (["model.task=gan_autoencodr"], "model.task='gan_autoencodr' — did you mean 'gan_autoencoder'?"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_builder_errors_name_the_keys():
    with pytest.raises(ModelError, match=r"model\.adversarial\.grl_lambda=-1 must be >= 0"):
        build(adversarial={"grl_lambda": -1})
    with pytest.raises(ModelError, match=r"model\.adversarial\.weight=-0\.1 must be >= 0"):
        build(adversarial={"weight": -0.1})
    cfg = model_cfg()
    del cfg.adversarial
    with pytest.raises(ModelError, match="needs the model.adversarial settings"):
        build_model(cfg, META)


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from thesis_lib import train

    root = tmp_path_factory.mktemp("gan")
    data = make_synthetic_events(root / "events.h5", n_events=1500, seed=0, n_tokens=8)
    config = {
        "output_root": str(root / "outputs"), "run_name": "ganae",
        "data": {"path": str(data), "batch_size": 64},
        "model": {"task": "gan_autoencoder", "encoder": "mlp", "bottleneck": "identity", "latent_dim": 16,
                  "hidden_dim": 48, "num_layers": 2, "token_embed_dim": 4, "adversarial": {"weight": 0.1}},
        "optim": {"lr": 3e-3},
        "trainer": {"epochs": 3, "seed": 0, "device": "cpu"},
        "report": {"enabled": False}, "telemetry": {"enabled": False},
    }
    return train(config), config


def test_a_short_run_completes_with_the_game_in_its_scalars(trained):
    result, _ = trained
    assert result.status == "COMPLETED"
    assert set(GAME_SCALARS) <= set(result.test_metrics)
    scalars = pd.read_csv(Path(result.run_dir) / "facts" / "scalars.csv")
    assert set(GAME_SCALARS) <= set(scalars.columns)
    assert len(scalars) >= 6  # train and val rows of 3 epochs
    for name in ("loss", "loss_recon", "loss_adv", "metric_d_real", "metric_d_fake"):
        column = scalars[name].dropna()
        assert len(column) >= 6 and column.map(lambda v: v == v and abs(v) != float("inf")).all(), name
    for name in ("metric_d_real", "metric_d_fake"):
        assert scalars[name].dropna().between(0, 1, inclusive="neither").all(), name
    history = json.loads((Path(result.run_dir) / "training_history.json").read_text())
    recon = history["val"]["loss_recon"]
    # The best epoch, not the last: a game may overshoot for an epoch (here D wins, then the
    # autoencoder out-plays it at the cost of its reconstruction), and model.pt is the best epoch.
    assert len(recon) == 3 and min(recon) < recon[0], recon


def test_inference_scores_the_run_as_an_autoencoder(trained):
    from thesis_lib.reports.inference import run_inference

    result, _ = trained
    scored = run_inference([result.run_dir], corruptions=["additive_noise"])
    assert not scored.errors
    metrics = next(iter(scored.models.values()))
    assert (metrics["task"], metrics["model_task"]) == ("autoencoder", "gan_autoencoder")
    assert metrics["auroc_by_corruption"]["additive_noise"] > 0.5  # noisier events reconstruct worse


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
def test_the_run_exports(trained):
    from thesis_lib.export import export_model

    result, _ = trained
    paths = export_model(result.run_dir, ["state_dict", "torchscript"])
    info = json.loads(paths["export_info"].read_text())
    assert set(info["formats"]) == {"state_dict", "torchscript"} and info["task"] == "gan_autoencoder"
    for entry in info["formats"].values():
        assert entry["max_abs_diff"] <= 1e-5
        assert [o["name"] for o in entry["outputs"]] == ["recon_cont", "recon_id_logits", "recon_globals", "latent"]


def test_the_run_resumes_even_from_a_checkpoint_without_the_adversarial_key(trained):
    from thesis_lib import train

    result, config = trained
    last = Path(result.run_dir) / "last.pt"
    state = torch.load(last, weights_only=False)
    before = {k: v.clone() for k, v in state["model"].items() if k.startswith("discriminator.")}
    assert before
    del state["config"]["model"]["adversarial"]  # as a run written before model.adversarial existed
    torch.save(state, last)
    resumed = train({**config, "trainer": {**config["trainer"], "epochs": 4, "resume_from": str(result.run_dir)}})
    assert resumed.run_dir == result.run_dir and resumed.status == "COMPLETED" and resumed.epochs_completed == 4
    after = torch.load(last, weights_only=True)["model"]
    assert any(not torch.equal(after[k], v) for k, v in before.items())  # D went on learning
