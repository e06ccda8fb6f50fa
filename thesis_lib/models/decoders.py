"""Decoders: a (quantised) latent [B, latent_dim] -> the reconstructed event.

Registered as ``decoder`` "mlp". The output dict holds ``cont`` [B, T, C] (continuous token
features), ``id_logits`` [B, T, V] (token type, padding id 0 included) and ``globals`` [B, G].
The globals come from a head of their own (``globals_head``), a small MLP reading the latent
directly, so it can be weighted (``globals_beta``), frozen or compared on its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from thesis_lib.models.encoders import make_mlp
from thesis_lib.models.registry import register

__all__ = ["MLPDecoder", "build_mlp_decoder"]


class MLPDecoder(nn.Module):
    """Latent -> MLP trunk -> linear heads for cont and token ids; a separate MLP head for globals."""

    def __init__(
        self,
        *,
        latent_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        n_tokens: int,
        cont_dim: int,
        globals_dim: int,
        n_token_types: int,
    ) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.cont_dim = cont_dim
        self.n_token_types = n_token_types
        # The trunk ends in a hidden-width layer with its activation; the heads are linear on top.
        trunk_layers = make_mlp(latent_dim, hidden_dim, hidden_dim, max(num_layers - 1, 0), dropout)
        self.trunk = nn.Sequential(*trunk_layers, nn.GELU(), nn.Dropout(dropout))
        self.cont_head = nn.Linear(hidden_dim, n_tokens * cont_dim)
        self.id_head = nn.Linear(hidden_dim, n_tokens * n_token_types)
        self.globals_head = make_mlp(latent_dim, hidden_dim, globals_dim, 1, dropout)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"cont": [B, T, C], "id_logits": [B, T, V], "globals": [B, G]} from z [B, latent_dim]."""
        features = self.trunk(z)
        batch_size = z.shape[0]
        return {
            "cont": self.cont_head(features).view(batch_size, self.n_tokens, self.cont_dim),
            "id_logits": self.id_head(features).view(batch_size, self.n_tokens, self.n_token_types),
            "globals": self.globals_head(z),
        }


@register("decoder", "mlp")
def build_mlp_decoder(model_cfg: Any, meta: Any) -> MLPDecoder:
    """The "mlp" decoder for the event shape in meta."""
    return MLPDecoder(
        latent_dim=model_cfg.latent_dim,
        hidden_dim=model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        n_token_types=meta.n_token_types,
    )
