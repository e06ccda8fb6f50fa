"""Tiny autoencoder-variant configs and padded batches shared by the diffusion and GAN task tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from thesis_lib.models import build_model

META = SimpleNamespace(n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5, n_classes=3)
# Each variant's own settings section and its defaults in these tests.
SECTIONS = {
    "diffusion_autoencoder": ("diffusion", dict(steps=20, sample_steps=5, eval_timesteps=3, denoiser_hidden=0)),
    "gan_autoencoder": ("adversarial", dict(weight=0.1, grl_lambda=1.0, disc_hidden=0)),
}


def model_cfg(variant: str, **overrides) -> SimpleNamespace:
    """A tiny config namespace for the `variant` task; `vq` and its section take dicts of overrides.

    `task=` may still be overridden (e.g. "autoencoder", to build the plain model from the same parts).
    """
    vq = dict(codebook_size=16, code_dim=4, beta=0.25, decay=0.99, eps=1e-5, dead_code_threshold=0.01)
    vq.update(overrides.pop("vq", {}))
    section, defaults = SECTIONS[variant]
    settings = {**defaults, **overrides.pop(section, {})}
    values = dict(task=variant, encoder="mlp", bottleneck="identity", decoder="mlp", latent_dim=8,
                  hidden_dim=16, num_layers=2, num_heads=2, token_embed_dim=4, dropout=0.0, globals_beta=0.1,
                  tokens_weight=1.0, freeze=[])
    values.update(overrides)
    return SimpleNamespace(**values, vq=SimpleNamespace(**vq), **{section: SimpleNamespace(**settings)})


def make_batch(batch_size=8, seed=0, empty_events=(0,)) -> dict[str, torch.Tensor]:
    """Trailing padding with cont zero there (as the loaders give), event 0 without tokens."""
    gen = torch.Generator().manual_seed(seed)
    n_valid = torch.randint(1, META.n_tokens + 1, (batch_size,), generator=gen)
    n_valid[list(empty_events)] = 0
    valid = torch.arange(META.n_tokens).unsqueeze(0) < n_valid.unsqueeze(1)
    tokens_id = torch.randint(1, META.n_token_types, (batch_size, META.n_tokens), generator=gen) * valid
    tokens_cont = torch.randn(batch_size, META.n_tokens, META.cont_dim, generator=gen) * valid.unsqueeze(-1)
    return {"tokens_id": tokens_id, "tokens_cont": tokens_cont,
            "globals": torch.randn(batch_size, META.globals_dim, generator=gen),
            "labels": torch.randint(0, META.n_classes, (batch_size,), generator=gen)}


def build(variant: str, seed=0, **overrides):
    """The `variant` model from model_cfg, its weights drawn under `seed`."""
    torch.manual_seed(seed)
    return build_model(model_cfg(variant, **overrides), META)
