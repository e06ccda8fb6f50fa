"""Tests for thesis_lib.models.gnn_decoder: the "gnn" decoder's contract, its graph, and that it learns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from thesis_lib.config import load_config
from thesis_lib.data import make_loaders, make_synthetic_events
from thesis_lib.errors import ConfigError, ModelError
from thesis_lib.facts.run_model import load_run_model
from thesis_lib.models import build_model
from thesis_lib.models.gnn_decoder import GNNDecoder
from thesis_lib.train import fit

META = SimpleNamespace(n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5, n_classes=3)
TINY = ["model.latent_dim=8", "model.hidden_dim=16", "model.token_embed_dim=4", "model.num_heads=2",
        "model.vq.code_dim=4", "model.vq.codebook_size=16"]


def make_batch(batch_size=8, seed=0, meta=META):
    """Trailing padding with cont zero there (as the loaders give); events 0 and 1 have no tokens."""
    gen = torch.Generator().manual_seed(seed)
    n_valid = torch.randint(1, meta.n_tokens + 1, (batch_size,), generator=gen)
    n_valid[:2] = 0
    valid = torch.arange(meta.n_tokens).unsqueeze(0) < n_valid.unsqueeze(1)
    return {
        "tokens_id": torch.randint(1, meta.n_token_types, (batch_size, meta.n_tokens), generator=gen) * valid,
        "tokens_cont": torch.randn(batch_size, meta.n_tokens, meta.cont_dim, generator=gen) * valid.unsqueeze(-1),
        "globals": torch.randn(batch_size, meta.globals_dim, generator=gen),
        "labels": torch.randint(0, meta.n_classes, (batch_size,), generator=gen),
    }


def build_decoder(seed=0, meta=META, num_layers=2, **kwargs):
    """A GNNDecoder for `meta`, in eval mode, its weights drawn under `seed`."""
    torch.manual_seed(seed)
    return GNNDecoder(latent_dim=8, hidden_dim=16, num_layers=num_layers, dropout=0.0, n_tokens=meta.n_tokens,
                      cont_dim=meta.cont_dim, globals_dim=meta.globals_dim, n_token_types=meta.n_token_types,
                      **kwargs).eval()


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("encoder,bottleneck", [("mlp", "identity"), ("transformer", "vq"), ("gnn", "linear")])
def test_builds_from_the_config_with_the_mlp_decoders_output_shapes_and_no_nan_on_empty_events(encoder, bottleneck):
    overrides = TINY + [f"model.encoder={encoder}", f"model.bottleneck={bottleneck}"]
    torch.manual_seed(0)
    model = build_model(load_config(overrides=overrides + ["model.decoder=gnn"]).model, META)
    reference = build_model(load_config(overrides=overrides + ["model.decoder=mlp"]).model, META)
    assert isinstance(model.decoder, GNNDecoder) and len(model.decoder.blocks) == 2 and model.decoder.k == 5
    batch = make_batch()
    outputs, expected = model(batch), reference(batch)
    for key in ("cont", "id_logits", "globals"):
        assert outputs[key].shape == expected[key].shape, key
        assert torch.isfinite(outputs[key]).all(), key
    assert outputs["cont"].shape == (8, 6, 4) and outputs["id_logits"].shape == (8, 6, 5)
    # every parameter gets a finite gradient, with events without tokens in the batch
    model.loss_and_metrics(batch)["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(parameter.grad.abs().sum() > 0 for parameter in model.decoder.blocks.parameters())


def test_a_batch_of_only_empty_events_decodes_to_finite_values():
    model = build_model(load_config(overrides=TINY + ["model.decoder=gnn"]).model, META).eval()
    batch = make_batch()
    batch["tokens_id"].zero_()
    batch["tokens_cont"].zero_()
    errors = model.per_event_errors(batch)
    assert all(torch.isfinite(values).all() for values in errors.values())


def test_bad_settings_are_model_errors_and_an_unknown_decoder_name_suggests_the_nearest():
    with pytest.raises(ModelError, match=r"gnn decoder: k=7 neighbours; expected 1 <= k <= n_tokens=6"):
        build_decoder(k=7)
    with pytest.raises(ModelError, match=r"gnn decoder: aggregation 'sum'; allowed: mean, max"):
        build_decoder(aggregation="sum")
    with pytest.raises(ConfigError, match=r"model.decoder='gnnn' — did you mean 'gnn'\? allowed: gnn, mlp$"):
        load_config(overrides=["model.decoder=gnnn"])


# ---------------------------------------------------------------- graph


@pytest.mark.parametrize("n_tokens,k", [(6, 5), (20, 16)])
def test_graph_is_each_nodes_k_nearest_other_nodes(n_tokens, k):
    meta = SimpleNamespace(n_tokens=n_tokens, cont_dim=4, globals_dim=3, n_token_types=5)
    decoder = build_decoder(meta=meta)
    nodes = decoder.initial_nodes(torch.randn(3, 8))
    neighbours = decoder.graph(nodes)
    assert decoder.k == k and neighbours.shape == (3, n_tokens, k)
    distances = torch.cdist(nodes, nodes)
    distances.diagonal(dim1=1, dim2=2).fill_(float("inf"))  # no node is its own neighbour
    expected = distances.topk(k, dim=-1, largest=False).indices
    assert torch.equal(neighbours.sort(dim=-1).values, expected.sort(dim=-1).values)


@pytest.mark.parametrize("n_tokens", [6, 20])
def test_permuting_the_edges_changes_the_output_and_the_same_edges_reproduce_it(n_tokens):
    meta = SimpleNamespace(n_tokens=n_tokens, cont_dim=4, globals_dim=3, n_token_types=5)
    decoder = build_decoder(meta=meta)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = decoder(z)
    graph, calls = decoder.graph, []

    def same_edges(nodes):
        calls.append(nodes.shape)
        return graph(nodes)

    decoder.graph = same_edges  # an instance attribute shadows the method: forward calls this one
    with torch.no_grad():
        again = decoder(z)
    assert len(calls) == len(decoder.blocks) == 2  # forward builds its graph through graph(), once per block
    assert all(torch.equal(again[key], reference[key]) for key in reference)

    # node i gets node i+1's neighbour list: the same edge count, other edges
    decoder.graph = lambda nodes: graph(nodes).roll(1, dims=1)
    with torch.no_grad():
        permuted = decoder(z)
    for key in ("cont", "id_logits"):
        assert (permuted[key] - reference[key]).abs().amax() > 1e-3, key
    assert torch.equal(permuted["globals"], reference["globals"])  # the globals head reads z alone


# ---------------------------------------------------------------- training


@pytest.fixture
def one_thread():
    """Run torch on one thread: batches this small gain nothing from more, and the CI cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_beats_the_train_mean_baseline_on_the_test_split(tmp_path, one_thread):
    events = make_synthetic_events(tmp_path / "events.h5", n_events=2000, seed=0, n_tokens=8)
    cfg = {
        "output_root": str(tmp_path / "outputs"),
        "run_name": "gnn_decoder",
        "data": {"path": str(events), "batch_size": 64},
        "model": {"encoder": "mlp", "decoder": "gnn", "latent_dim": 16, "hidden_dim": 32, "num_layers": 2,
                  "token_embed_dim": 4},
        "optim": {"lr": 3e-3},
        "trainer": {"epochs": 15, "seed": 0, "device": "cpu"},
        "telemetry": {"enabled": False},
        "report": {"enabled": False},
    }
    result = fit(cfg)
    assert result.status == "COMPLETED"
    model, _, meta = load_run_model(result.run_dir)
    assert isinstance(model.decoder, GNNDecoder)
    loaders, _ = make_loaders(SimpleNamespace(path=str(events), batch_size=256), device="cpu", seed=0)

    # The baseline predicts every valid token's features as their mean over the train split's valid tokens.
    total, count = torch.zeros(meta.cont_dim, dtype=torch.float64), 0
    for batch in loaders["train"]:
        valid = batch["tokens_id"] != 0
        total += batch["tokens_cont"][valid].double().sum(dim=0)
        count += int(valid.sum())
    train_mean = total / count

    model_se = baseline_se = 0.0
    values = 0
    with torch.no_grad():
        for batch in loaders["test"]:
            valid = batch["tokens_id"] != 0
            target = batch["tokens_cont"][valid].double()
            model_se += float((model(batch)["cont"][valid].double() - target).square().sum())
            baseline_se += float((train_mean - target).square().sum())
            values += target.numel()
    model_mse, baseline_mse = model_se / values, baseline_se / values
    assert model_mse <= 0.8 * baseline_mse, (model_mse, baseline_mse)
