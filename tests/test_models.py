"""Tests for thesis_lib.models: registry, parts, losses, the vq bottleneck, freezing, training."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from thesis_lib import config as config_module
from thesis_lib.config import load_config
from thesis_lib.errors import ConfigError, ModelError
from thesis_lib.models import (
    Autoencoder,
    Classifier,
    build_model,
    count_parameters,
    registry,
)
from thesis_lib.models import losses
from thesis_lib.models.encoders import MLPEncoder, attention_padding_mask
from thesis_lib.models.vq import VectorQuantizer

META = SimpleNamespace(n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5, n_classes=3)


def model_cfg(**overrides):
    """A tiny model config namespace with ModelConfig's attributes; `vq` takes a dict of overrides."""
    vq = dict(codebook_size=16, code_dim=4, beta=0.25, decay=0.99, eps=1e-5, dead_code_threshold=0.01)
    vq.update(overrides.pop("vq", {}))
    values = dict(
        task="autoencoder",
        encoder="mlp",
        bottleneck="identity",
        decoder="mlp",
        latent_dim=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        token_embed_dim=4,
        dropout=0.0,
        globals_beta=0.1,
        tokens_weight=1.0,
        freeze=[],
    )
    values.update(overrides)
    return SimpleNamespace(**values, vq=SimpleNamespace(**vq))


def make_batch(batch_size=8, seed=0, meta=META, empty_events=()):
    """A batch like the loaders yield: trailing padding, cont zero at padding, some events empty."""
    gen = torch.Generator().manual_seed(seed)
    n_valid = torch.randint(1, meta.n_tokens + 1, (batch_size,), generator=gen)
    for index in empty_events:
        n_valid[index] = 0
    positions = torch.arange(meta.n_tokens).unsqueeze(0)
    valid = positions < n_valid.unsqueeze(1)
    tokens_id = torch.randint(1, meta.n_token_types, (batch_size, meta.n_tokens), generator=gen) * valid
    tokens_cont = torch.randn(batch_size, meta.n_tokens, meta.cont_dim, generator=gen) * valid.unsqueeze(-1)
    return {
        "tokens_id": tokens_id,
        "tokens_cont": tokens_cont,
        "globals": torch.randn(batch_size, meta.globals_dim, generator=gen),
        "labels": torch.randint(0, meta.n_classes, (batch_size,), generator=gen),
    }


# ---------------------------------------------------------------- registry


def test_every_name_a_config_may_choose_has_a_builder_and_no_builder_is_unknown_to_the_config():
    for kind in registry.KINDS:
        assert registry.names(kind) == tuple(sorted(config_module.MODEL_PART_NAMES[kind])), kind


def test_registry_names_are_populated_by_importing_the_package():
    assert registry.names("encoder") == ("cnn", "gnn", "mlp", "resnet", "transformer")
    assert registry.names("bottleneck") == ("identity", "linear", "vq")
    assert registry.names("decoder") == ("gnn", "mlp")
    assert registry.names("task") == ("autoencoder", "classifier", "diffusion_autoencoder", "gan_autoencoder")


def test_registry_unknown_name_lists_allowed_and_nearest():
    with pytest.raises(ModelError) as info:
        registry.get("bottleneck", "vqq")
    assert str(info.value) == "unknown bottleneck 'vqq'; allowed bottleneck names: identity, linear, vq; did you mean 'vq'?"


def test_registry_unknown_kind_names_allowed_kinds():
    with pytest.raises(ModelError, match=r"unknown registry kind 'encoders'; allowed kinds: encoder, bottleneck, decoder, task"):
        registry.names("encoders")


def test_build_model_with_misspelled_encoder_suggests_the_right_one():
    with pytest.raises(ModelError, match=r"unknown encoder 'transfomer'.*mlp, resnet, transformer; did you mean 'transformer'\?"):
        build_model(model_cfg(encoder="transfomer"), META)


def test_new_part_is_one_register_line_and_duplicates_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", copy.deepcopy(registry._BUILDERS))
    monkeypatch.setattr(config_module, "MODEL_PART_NAMES", copy.deepcopy(config_module.MODEL_PART_NAMES))
    with pytest.raises(ConfigError, match="allowed: cnn, gnn, mlp, resnet, transformer$"):
        load_config(None, ["model.encoder=zeros"])

    @registry.register("encoder", "zeros")
    def build_zero_encoder(cfg, meta):
        return MLPEncoder(
            n_tokens=meta.n_tokens, cont_dim=meta.cont_dim, globals_dim=meta.globals_dim,
            n_token_types=meta.n_token_types, token_embed_dim=2, hidden_dim=4, num_layers=0,
            dropout=0.0, out_dim=cfg.latent_dim,
        )

    assert registry.names("encoder") == ("cnn", "gnn", "mlp", "resnet", "transformer", "zeros")
    assert load_config(None, ["model.encoder=zeros"]).model.encoder == "zeros"  # the config learns the name
    model = build_model(model_cfg(encoder="zeros"), META)
    assert model.encoder.mlp[0].in_features == 6 * (4 + 2) + 3
    with pytest.raises(ModelError, match=r"encoder 'mlp' is already registered \(by thesis_lib\.models\.encoders\.build_mlp_encoder\)"):
        registry.register("encoder", "mlp")(build_zero_encoder)


# ---------------------------------------------------------------- shapes and keys


@pytest.mark.parametrize("encoder", ["mlp", "transformer"])
@pytest.mark.parametrize("bottleneck", ["identity", "linear", "vq"])
def test_autoencoder_shapes_and_scalar_names(encoder, bottleneck):
    torch.manual_seed(0)
    model = build_model(model_cfg(encoder=encoder, bottleneck=bottleneck), META)
    assert isinstance(model, Autoencoder)
    batch = make_batch(batch_size=5, empty_events=(2,))
    out = model(batch)
    assert out["cont"].shape == (5, 6, 4)
    assert out["id_logits"].shape == (5, 6, 5)
    assert out["globals"].shape == (5, 3)
    assert out["z"].shape == (5, 8) and out["z_q"].shape == (5, 8)
    assert out["commit_loss"].shape == ()

    values = model.loss_and_metrics(batch)
    expected = ["loss_recon", "loss_tokens", "loss_globals", "loss_commit"]
    if bottleneck == "vq":
        expected.append("metric_perplex")
        assert out["codes"].shape == (5, 2)
        assert 1.0 <= float(values["metric_perplex"]) <= 10.0  # 10 code vectors in the batch
    else:
        assert float(values["loss_commit"]) == 0.0
    assert model.scalar_names == tuple(expected)
    assert list(values) == ["loss", *expected]
    assert all(v.shape == () and torch.isfinite(v) for v in values.values())
    assert values["loss"].requires_grad and not values["loss_recon"].requires_grad
    total = values["loss_recon"] + values["loss_tokens"] + 0.1 * values["loss_globals"] + values["loss_commit"]
    torch.testing.assert_close(values["loss"].detach(), total)


@pytest.mark.parametrize("encoder", ["mlp", "transformer"])
def test_classifier_shapes_accuracy_and_scalar_names(encoder):
    torch.manual_seed(0)
    model = build_model(model_cfg(task="classifier", encoder=encoder), META)
    assert isinstance(model, Classifier)
    batch = make_batch(batch_size=7)
    logits = model.predict_logits(batch)
    assert logits.shape == (7, 3)
    values = model.loss_and_metrics(batch)
    assert list(values) == ["loss", *model.scalar_names] == ["loss", "metric_accuracy"]
    expected_accuracy = (logits.argmax(1) == batch["labels"]).float().mean()
    torch.testing.assert_close(values["metric_accuracy"], expected_accuracy)
    torch.testing.assert_close(values["loss"], torch.nn.functional.cross_entropy(logits, batch["labels"]))


def test_batch_with_wrong_shape_names_key_and_expected_shape():
    model = build_model(model_cfg(), META)
    batch = make_batch()
    batch["tokens_cont"] = batch["tokens_cont"][..., :3]
    with pytest.raises(ModelError, match=r"batch\['tokens_cont'\] has shape \[8, 6, 3\]; the model was built for \[B, 6, 4\]"):
        model(batch)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_events_without_globals_train_with_zero_globals_loss():
    meta = SimpleNamespace(n_tokens=4, cont_dim=2, globals_dim=0, n_token_types=3, n_classes=2)
    model = build_model(model_cfg(), meta)
    values = model.loss_and_metrics(make_batch(meta=meta))
    assert float(values["loss_globals"]) == 0.0
    assert torch.isfinite(values["loss"])


# ---------------------------------------------------------------- padding


def test_transformer_ignores_cont_values_at_padding_positions():
    torch.manual_seed(0)
    model = build_model(model_cfg(encoder="transformer"), META).eval()
    batch = make_batch()
    padding = batch["tokens_id"] == 0
    assert padding.any() and (~padding).any()
    noisy = dict(batch, tokens_cont=batch["tokens_cont"] + 50.0 * padding.unsqueeze(-1))
    torch.testing.assert_close(model.encoder(noisy), model.encoder(batch))
    # The same change at real tokens does change the latent: the check above can fail.
    shifted = dict(batch, tokens_cont=batch["tokens_cont"] + 50.0 * (~padding).unsqueeze(-1))
    assert not torch.allclose(model.encoder(shifted), model.encoder(batch))


def test_attention_mask_unmasks_one_position_of_empty_events_only():
    tokens_id = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 0]])
    expected = torch.tensor([[False, False, True], [False, True, True], [False, True, True]])
    assert torch.equal(attention_padding_mask(tokens_id), expected)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fully_padded_event_gives_finite_outputs_and_gradients(mode):
    torch.manual_seed(0)
    model = build_model(model_cfg(encoder="transformer", bottleneck="vq"), META)
    model.train(mode == "train")
    batch = make_batch(batch_size=4, empty_events=(0, 3))
    assert not batch["tokens_id"][0].any()
    out = model(batch)
    assert all(torch.isfinite(out[key]).all() for key in ("z", "cont", "id_logits", "globals"))
    model.loss_and_metrics(batch)["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_masked_mse_ignores_padding_and_handles_empty_batches():
    pred = torch.tensor([[[1.0, 2.0], [9.0, 9.0]], [[0.0, 0.0], [3.0, 3.0]]])
    target = torch.zeros(2, 2, 2)
    tokens_id = torch.tensor([[1, 0], [2, 0]])
    valid = losses.valid_token_mask(tokens_id)
    # valid squared errors: 1 + 4 + 0 + 0 over 2 tokens x 2 features
    assert float(losses.masked_mse(pred, target, valid)) == pytest.approx(1.25)
    changed_pred, changed_target = pred.clone(), target.clone()
    changed_pred[:, 1] = -100.0
    changed_target[:, 1] = 77.0
    assert float(losses.masked_mse(changed_pred, changed_target, valid)) == pytest.approx(1.25)
    assert float(losses.masked_mse(pred, target, torch.zeros(2, 2))) == 0.0
    torch.testing.assert_close(losses.per_event_masked_mse(pred, target, valid), torch.tensor([2.5, 0.0]))
    torch.testing.assert_close(losses.per_event_masked_mae(pred, target, valid), torch.tensor([1.5, 0.0]))


def test_per_event_errors_are_per_event_and_zero_for_empty_events():
    torch.manual_seed(0)
    model = build_model(model_cfg(), META).eval()
    batch = make_batch(batch_size=6, empty_events=(4,))
    errors = model.per_event_errors(batch)
    assert sorted(errors) == ["globals_mse", "mae", "mse", "tokens_ce"]
    assert all(value.shape == (6,) for value in errors.values())
    assert float(errors["mse"][4]) == 0.0 and float(errors["mae"][4]) == 0.0
    out = model(batch)
    valid = batch["tokens_id"][0] != 0
    manual = (out["cont"][0][valid] - batch["tokens_cont"][0][valid]).square().mean()
    torch.testing.assert_close(errors["mse"][0], manual.detach())


# ---------------------------------------------------------------- vq


def make_vq(**overrides):
    """A small VectorQuantizer: latent 4 split into 2 codes of 2, codebook of 8."""
    settings = dict(codebook_size=8, code_dim=2, beta=0.25, decay=0.9, eps=1e-8, dead_code_threshold=0.0)
    settings.update(overrides)
    return VectorQuantizer(4, **settings)


def test_vq_latent_not_divisible_by_code_dim_names_both_numbers():
    with pytest.raises(ModelError, match=r"model\.latent_dim=10 is not divisible by model\.vq\.code_dim=4"):
        build_model(model_cfg(bottleneck="vq", latent_dim=10, vq={"code_dim": 4}), META)


def test_vq_straight_through_gradient_reaches_the_encoder():
    vq = make_vq().eval()
    z = torch.randn(3, 4, requires_grad=True)
    weights = torch.randn(3, 4)
    z_q, _ = vq(z)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)

    torch.manual_seed(0)
    model = build_model(model_cfg(bottleneck="vq", vq={"beta": 0.0}), META)
    values = model.loss_and_metrics(make_batch())
    assert float(values["loss_commit"]) == 0.0  # so the encoder's gradient comes through z_q alone
    values["loss"].backward()
    assert model.encoder.mlp[0].weight.grad.abs().sum() > 0


def test_vq_commitment_loss_is_beta_times_distance_to_codes():
    vq = make_vq(beta=0.5).eval()
    vq.codebook.zero_()
    z = torch.tensor([[1.0, 1.0, 2.0, 0.0]])
    _, extras = vq(z)
    torch.testing.assert_close(extras["commit_loss"], torch.tensor(0.5 * 6.0 / 4))


def test_vq_ema_moves_codebook_to_assigned_means_in_train_mode_only():
    vq = make_vq()
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]] + [[100.0, 100.0 + i] for i in range(6)]))
    z = torch.tensor([[1.0, 0.0, 9.0, 9.0], [0.0, 1.0, 11.0, 12.0]])  # codes: rows 0,1,0,1

    before = {name: buffer.clone() for name, buffer in vq.named_buffers()}
    vq.eval()
    vq(z)
    for name, buffer in vq.named_buffers():
        torch.testing.assert_close(buffer, before[name])

    vq.train()
    vq(z)
    # The EMAs start at zero, so one update puts each used row at the mean of its vectors.
    torch.testing.assert_close(vq.codebook[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(vq.codebook[1], torch.tensor([10.0, 10.5]))
    torch.testing.assert_close(vq.codebook[2:], before["codebook"][2:])  # never used: left in place
    torch.testing.assert_close(vq.cluster_size[:2], torch.tensor([0.2, 0.2]))

    # A second batch moves row 0 toward its new vectors, weighted by the EMA.
    vq(torch.tensor([[2.0, 2.0, 10.0, 10.0]]))
    assert 0.5 < float(vq.codebook[0, 0]) < 2.0
    torch.testing.assert_close(vq.codebook[0], (0.9 * 0.1 * torch.tensor([1.0, 1.0]) + 0.1 * torch.tensor([2.0, 2.0])) / (0.9 * 0.2 + 0.1))


def test_vq_perplexity_counts_used_codes_for_uniform_usage():
    vq = make_vq().eval()
    vq.codebook.copy_(torch.arange(16.0).view(8, 2) * 10)
    four_codes = vq.codebook[:4].reshape(2, 4).repeat(3, 1)  # rows 0..3, three times each
    _, extras = vq(four_codes)
    torch.testing.assert_close(extras["perplexity"], torch.tensor(4.0))
    _, extras = vq(vq.codebook[5].repeat(6).view(3, 4))
    torch.testing.assert_close(extras["perplexity"], torch.tensor(1.0))


def test_vq_dead_codes_are_revived_with_batch_vectors():
    torch.manual_seed(0)
    vq = make_vq(dead_code_threshold=0.5).train()
    alive = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    vq.codebook.copy_(torch.cat([alive, torch.full((4, 2), 1000.0)]))
    vq.cluster_size.copy_(torch.tensor([10.0] * 4 + [0.1] * 4))  # rows 4..7 below the threshold
    vq.embed_sum.copy_(vq.codebook * vq.cluster_size.unsqueeze(1))
    z = alive.reshape(2, 4) + 0.1 * torch.randn(2, 4)
    vq(z)
    vectors = z.reshape(-1, 2)
    for row in vq.codebook[4:]:
        assert (row - vectors).abs().amax(dim=1).min() < 1e-6, f"{row} is not a batch vector"
    # Distinct picks: the four batch vectors each seed one revived row.
    assert len({tuple(row.tolist()) for row in vq.codebook[4:]}) == 4
    torch.testing.assert_close(vq.cluster_size[4:], torch.full((4,), 0.5))
    assert (vq.codebook[:4] - alive).abs().max() < 0.2  # live rows were updated, not re-seeded


# ---------------------------------------------------------------- freezing and counting


def test_freeze_encoder_leaves_the_rest_trainable_and_counts_agree():
    model = build_model(model_cfg(freeze=["encoder"]), META)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    counts = count_parameters(model)
    encoder_size = sum(p.numel() for p in model.encoder.parameters())
    assert encoder_size > 0
    assert counts == {"total": counts["total"], "trainable": counts["total"] - encoder_size}
    assert counts["total"] == count_parameters(build_model(model_cfg(), META))["total"]


def test_freeze_the_globals_head_only():
    model = build_model(model_cfg(freeze=["decoder.globals_head"]), META)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith("decoder.globals_head.")}
    assert len(frozen) == 4  # two linear layers, weight and bias each


def test_frozen_vq_bottleneck_stops_its_ema_updates():
    torch.manual_seed(0)
    model = build_model(model_cfg(bottleneck="vq", freeze=["bottleneck"]), META).train()
    codebook = model.bottleneck.codebook.clone()
    model(make_batch())
    torch.testing.assert_close(model.bottleneck.codebook, codebook)
    unfrozen = build_model(model_cfg(bottleneck="vq"), META).train()
    codebook = unfrozen.bottleneck.codebook.clone()
    unfrozen(make_batch())
    assert not torch.equal(unfrozen.bottleneck.codebook, codebook)


def test_unknown_freeze_name_lists_available_names_and_nearest():
    with pytest.raises(ModelError) as info:
        build_model(model_cfg(freeze=["decoder.global_head"]), META)
    message = str(info.value)
    assert message.startswith("model.freeze: 'decoder.global_head' matches no submodule of the Autoencoder")
    assert "top-level names: encoder, bottleneck, decoder;" in message
    assert "second-level names: encoder.embed, encoder.mlp, decoder.trunk, decoder.cont_head, decoder.id_head, decoder.globals_head" in message
    assert message.endswith("did you mean 'decoder.globals_head'?")


def test_transformer_hidden_dim_must_divide_into_heads():
    with pytest.raises(ModelError, match=r"model\.hidden_dim=10 must be divisible by model\.num_heads=4"):
        build_model(model_cfg(encoder="transformer", hidden_dim=10, num_heads=4), META)


# ---------------------------------------------------------------- training smoke tests


@pytest.mark.parametrize(
    "overrides",
    [
        dict(encoder="mlp", bottleneck="vq"),
        dict(encoder="transformer", bottleneck="identity"),
        dict(task="classifier"),
    ],
    ids=["mlp-vq", "transformer-identity", "classifier"],
)
def test_thirty_adam_steps_reduce_the_loss(overrides):
    torch.manual_seed(0)
    model = build_model(model_cfg(hidden_dim=32, **overrides), META)
    batch = make_batch(batch_size=16, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(model.loss_and_metrics(batch)["loss"])

    initial = eval_loss()
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        model.loss_and_metrics(batch)["loss"].backward()
        optimizer.step()
    final = eval_loss()
    assert final < 0.7 * initial, f"loss {initial:.3f} -> {final:.3f}"
