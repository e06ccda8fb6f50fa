"""Tests for thesis_lib.models.gnn: the EdgeConv encoder's graph, invariances, padding, and its use in training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from thesis_lib.config import load_config
from thesis_lib.data import make_synthetic_events
from thesis_lib.data.normalization import Normalization
from thesis_lib.errors import ConfigError, ModelError
from thesis_lib.models import Autoencoder, Classifier, build_model, registry
from thesis_lib.models.gnn import GNNEncoder
from thesis_lib.models.gnn import default_neighbours, knn_coordinates, knn_indices
from thesis_lib import train

NORMALIZATION = Normalization(
    cont_mean=(50.0, 30.0, 0.1, 0.05), cont_std=(40.0, 20.0, 1.5, 1.8), globals_mean=(0.0,) * 3, globals_std=(1.0,) * 3
)
META = SimpleNamespace(
    n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5, n_classes=3,
    cont_features=("E", "pT", "eta", "phi"), normalization=NORMALIZATION,
)


def model_cfg(**overrides):
    """A tiny model config namespace with ModelConfig's attributes, the encoder set to gnn."""
    vq = SimpleNamespace(codebook_size=16, code_dim=4, beta=0.25, decay=0.99, eps=1e-5, dead_code_threshold=0.01)
    values = dict(
        task="autoencoder", encoder="gnn", bottleneck="identity", decoder="mlp", latent_dim=8, hidden_dim=16,
        num_layers=3, num_heads=2, token_embed_dim=4, dropout=0.0, globals_beta=0.1, tokens_weight=1.0, freeze=[],
    )
    values.update(overrides)
    return SimpleNamespace(**values, vq=vq)


def make_batch(batch_size=8, seed=0, meta=META, n_valid=None):
    """A batch like the loaders yield: trailing padding, cont zero at padding; n_valid fixes tokens per event."""
    gen = torch.Generator().manual_seed(seed)
    if n_valid is None:
        n_valid = torch.randint(0, meta.n_tokens + 1, (batch_size,), generator=gen)
    n_valid = torch.as_tensor(n_valid)
    valid = torch.arange(meta.n_tokens).unsqueeze(0) < n_valid.unsqueeze(1)
    return {
        "tokens_id": torch.randint(1, meta.n_token_types, (len(n_valid), meta.n_tokens), generator=gen) * valid,
        "tokens_cont": torch.randn(len(n_valid), meta.n_tokens, meta.cont_dim, generator=gen) * valid.unsqueeze(-1),
        "globals": torch.randn(len(n_valid), meta.globals_dim, generator=gen),
        "labels": torch.randint(0, meta.n_classes, (len(n_valid),), generator=gen),
    }


def build_encoder(seed=0, meta=META, **overrides):
    """The registered gnn encoder for `meta`, in eval mode."""
    torch.manual_seed(seed)
    return registry.get("encoder", "gnn")(model_cfg(**overrides), meta).eval()


# ---------------------------------------------------------------- graph


def test_registered_and_k_follows_n_tokens():
    assert "gnn" in registry.names("encoder")
    assert [default_neighbours(t) for t in (1, 2, 6, 17, 18, 100)] == [1, 1, 5, 16, 16, 16]
    encoder = build_encoder()
    assert isinstance(encoder, GNNEncoder) and encoder.k == 5 and len(encoder.blocks) == 3
    assert encoder(make_batch(batch_size=7)).shape == (7, 8)


def test_knn_coordinates_use_eta_phi_and_the_normalization_when_present():
    assert knn_coordinates(META) == ((2, 3), (1.5, 1.8), True)
    no_stats = SimpleNamespace(cont_features=("pt", "ETA", "Phi"), normalization=None)
    assert knn_coordinates(no_stats) == ((1, 2), (1.0, 1.0), False)
    assert knn_coordinates(SimpleNamespace(cont_features=("a", "b"))) == (None, (1.0, 1.0), False)
    assert knn_coordinates(SimpleNamespace(n_tokens=3)) == (None, (1.0, 1.0), False)
    bad = SimpleNamespace(cont_features=("eta", "phi"), normalization=NORMALIZATION)
    with pytest.raises(ModelError, match=r"4 cont_std values but cont_features has 2 names \(eta, phi\)"):
        knn_coordinates(bad)


def test_knn_indices_skip_padding_and_self_and_fill_with_self_loops():
    # event 0: tokens 0..2 valid on a line at 0, 1, 3; event 1: one valid token; event 2: empty.
    x = torch.tensor([0.0, 1.0, 3.0, 100.0]).view(1, 4, 1).repeat(3, 1, 1)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    distances = (x - x.transpose(1, 2)).square()
    index = knn_indices(distances, valid, 3, torch.eye(4, dtype=torch.bool))
    assert index.shape == (3, 4, 3)
    assert index[0, 0].tolist() == [1, 2, 0] and index[0, 1].tolist() == [0, 2, 1] and index[0, 2].tolist() == [1, 0, 2]
    assert index[1, 0].tolist() == [0, 0, 0]
    assert (index[2] == torch.arange(4).view(4, 1)).all()  # empty event: self loops only


def test_first_graph_wraps_delta_phi_in_raw_units():
    # raw phi 3.0, -3.0 and 1.9 (z-scored with phi's std 1.8, mean 0.05), same eta: wrapped, 3.0's
    # nearest is -3.0 (0.28 rad apart), unwrapped it would be 1.9 (1.1 apart vs 6.0).
    raw_phi = torch.tensor([3.0, -3.0, 1.9])
    cont = torch.zeros(1, 6, 4)
    cont[0, :3, 3] = (raw_phi - 0.05) / 1.8
    valid = torch.tensor([[True, True, True, False, False, False]])
    encoder = build_encoder()
    index = knn_indices(encoder._first_distances(cont), valid, 1, encoder.self_loops)
    assert index[0, :3, 0].tolist() == [1, 0, 0]
    unwrapped = build_encoder(meta=SimpleNamespace(**{**vars(META), "normalization": None}))
    index = knn_indices(unwrapped._first_distances(cont), valid, 1, unwrapped.self_loops)
    assert index[0, :3, 0].tolist() == [2, 2, 0]


# ---------------------------------------------------------------- invariances and padding


def test_values_at_padded_positions_change_nothing():
    encoder = build_encoder()
    batch = make_batch(batch_size=9, seed=1)
    padding = (batch["tokens_id"] == 0).unsqueeze(-1)
    junk = torch.randn_like(batch["tokens_cont"]) * 1e3
    noisy = dict(batch, tokens_cont=torch.where(padding, junk, batch["tokens_cont"]))
    noisy["tokens_cont"][0, -1] = float("nan")  # event 0 is padded at the end
    assert padding[0, -1].item()
    with torch.no_grad():
        torch.testing.assert_close(encoder(noisy), encoder(batch), rtol=0, atol=0)
    # nor do they reach the gradients: a NaN at padding would poison every weight's grad
    encoder.train()
    encoder(noisy).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


def test_more_padding_slots_change_nothing():
    # Same weights and k, events padded to 6 or to 10 slots: padding is never a neighbour nor pooled.
    dims = dict(cont_dim=4, globals_dim=3, n_token_types=5, token_embed_dim=4, hidden_dim=16, num_layers=3,
                dropout=0.0, out_dim=8, k=3, coord_columns=(2, 3), coord_scale=(1.5, 1.8), wrap_phi=True)
    torch.manual_seed(0)
    short = GNNEncoder(n_tokens=6, **dims).eval()
    long = GNNEncoder(n_tokens=10, **dims).eval()
    long.load_state_dict(short.state_dict())
    batch = make_batch(batch_size=10, seed=5, n_valid=[0, 1, 2, 3, 4, 5, 6, 2, 1, 6])
    padded = {
        "tokens_id": torch.nn.functional.pad(batch["tokens_id"], (0, 4)),
        "tokens_cont": torch.nn.functional.pad(batch["tokens_cont"], (0, 0, 0, 4)),
        "globals": batch["globals"],
    }
    with torch.no_grad():
        torch.testing.assert_close(long(padded), short(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_shuffling_tokens_within_events_keeps_the_output(aggregation):
    torch.manual_seed(0)
    encoder = GNNEncoder(
        n_tokens=10, cont_dim=4, globals_dim=3, n_token_types=5, token_embed_dim=4, hidden_dim=16, num_layers=3,
        dropout=0.1, out_dim=8, k=4, coord_columns=(2, 3), coord_scale=(1.5, 1.8), wrap_phi=True,
        aggregation=aggregation,
    ).eval()
    meta = SimpleNamespace(**{**vars(META), "n_tokens": 10})
    batch = make_batch(batch_size=16, seed=2, meta=meta)
    # a different permutation per event, padding moved into the middle as well
    order = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(i)) for i in range(16)])
    shuffled = {
        "tokens_id": batch["tokens_id"].gather(1, order),
        "tokens_cont": batch["tokens_cont"].gather(1, order.unsqueeze(-1).expand(-1, -1, 4)),
        "globals": batch["globals"],
    }
    assert not torch.equal(shuffled["tokens_id"], batch["tokens_id"])
    with torch.no_grad():
        torch.testing.assert_close(encoder(shuffled), encoder(batch), rtol=0, atol=1e-5)


def test_empty_and_single_token_events_are_finite_and_differentiable():
    encoder = build_encoder().train()
    batch = make_batch(n_valid=[0, 1, 0, 1, 6])
    z = encoder(batch)
    assert torch.isfinite(z).all()
    z.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
    # an empty event is described by its globals alone: its tokens' values are irrelevant
    other = dict(batch, tokens_cont=torch.randn_like(batch["tokens_cont"]))
    with torch.no_grad():
        encoder.eval()
        torch.testing.assert_close(encoder(other)[[0, 2]], encoder(batch)[[0, 2]], rtol=0, atol=0)


def test_gradients_reach_every_parameter():
    encoder = build_encoder().train()
    encoder(make_batch(batch_size=12, seed=3)).square().sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_state_dict_holds_weights_only_so_it_loads_whatever_the_meta():
    encoder = build_encoder()
    assert not {"coord_scale", "self_loops"} & set(encoder.state_dict())
    plain = build_encoder(seed=1, meta=SimpleNamespace(n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5))
    assert plain.coord_columns is None and not plain.wrap_phi
    plain.load_state_dict(encoder.state_dict())


def test_bad_batch_shape_and_bad_settings_are_model_errors():
    encoder = build_encoder()
    batch = make_batch()
    shape_error = r"batch\['tokens_cont'\] has shape \[8, 6, 3\]; the model was built for \[B, 6, 4\]"
    with pytest.raises(ModelError, match=shape_error):
        encoder(dict(batch, tokens_cont=batch["tokens_cont"][..., :3]))
    with pytest.raises(ModelError, match=r"batch has no key 'globals'"):
        encoder({k: v for k, v in batch.items() if k != "globals"})
    dims = dict(n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5, token_embed_dim=4, hidden_dim=8,
                num_layers=1, dropout=0.0, out_dim=4)
    with pytest.raises(ModelError, match=r"k=7 neighbours; expected 1 <= k <= n_tokens=6"):
        GNNEncoder(**dims, k=7)
    with pytest.raises(ModelError, match=r"aggregation 'sum'; allowed: mean, max"):
        GNNEncoder(**dims, aggregation="sum")
    with pytest.raises(ModelError, match=r"coord_columns \[2, 4\] outside tokens_cont's 4 features"):
        GNNEncoder(**dims, coord_columns=(2, 4))


# ---------------------------------------------------------------- tasks, config, training


def test_autoencoder_with_vq_and_classifier_build_and_step():
    torch.manual_seed(0)
    autoencoder = build_model(model_cfg(bottleneck="vq"), META)
    assert isinstance(autoencoder, Autoencoder) and isinstance(autoencoder.encoder, GNNEncoder)
    batch = make_batch(batch_size=6, seed=4, n_valid=[0, 1, 2, 3, 6, 6])
    values = autoencoder.loss_and_metrics(batch)
    assert set(values) == {"loss", *autoencoder.scalar_names} and "metric_perplex" in values
    assert all(torch.isfinite(v) for v in values.values())
    values["loss"].backward()

    classifier = build_model(model_cfg(task="classifier"), META)
    assert isinstance(classifier, Classifier) and classifier(batch)["logits"].shape == (6, 3)
    classifier.encoder.load_state_dict(autoencoder.encoder.state_dict())  # AE weights fit the classifier body
    assert torch.isfinite(classifier.loss_and_metrics(batch)["loss"])


def test_config_accepts_gnn_and_suggests_it_for_a_typo():
    assert load_config(overrides=["model.encoder=gnn"]).model.encoder == "gnn"
    with pytest.raises(ConfigError, match=r"model.encoder='gnnn' — did you mean 'gnn'\?"):
        load_config(overrides=["model.encoder=gnnn"])


def test_short_training_run_completes_with_falling_train_loss(tmp_path):
    events = make_synthetic_events(tmp_path / "events.h5", n_events=800, seed=0, n_tokens=8)
    cfg = {
        "output_root": str(tmp_path / "outputs"),
        "run_name": "gnn",
        "data": {"path": str(events), "batch_size": 64},
        "model": {"encoder": "gnn", "bottleneck": "vq", "latent_dim": 8, "hidden_dim": 16, "num_layers": 2,
                  "token_embed_dim": 4, "vq": {"codebook_size": 16, "code_dim": 4}},
        "optim": {"lr": 3e-3},
        "trainer": {"epochs": 2, "seed": 0, "device": "cpu"},
        "telemetry": {"enabled": False},
        "report": {"enabled": False},
    }
    result = train(cfg)
    assert result.status == "COMPLETED" and result.epochs_completed == 2
    scalars = pd.read_csv(result.run_dir / "facts" / "scalars.csv")
    train_loss = scalars.loc[scalars["split"] == "train", "loss"].tolist()
    assert len(train_loss) == 2 and all(math.isfinite(v) for v in train_loss)
    assert train_loss[1] < train_loss[0]
