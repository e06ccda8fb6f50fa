"""Bottlenecks without a codebook: "identity" and "linear" (the VQ bottleneck lives in vq.py).

The bottleneck contract: ``forward(z [B, D]) -> (z_q [B, D], extras)`` where ``extras`` holds
``"commit_loss"`` (a 0-dim tensor; zero when the bottleneck has none) and whatever else the
bottleneck measures. The class attribute ``metrics`` maps each scalar the autoencoder reports
for this bottleneck (``metric_*``) to its key in ``extras``; it is empty here.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from thesis_lib.models.registry import register

__all__ = ["IdentityBottleneck", "LinearBottleneck", "build_identity_bottleneck", "build_linear_bottleneck"]


class IdentityBottleneck(nn.Module):
    """Pass the latent through unchanged: a plain autoencoder."""

    metrics: Mapping[str, str] = {}

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(z, {"commit_loss": 0})."""
        return z, {"commit_loss": z.new_zeros((), dtype=torch.float32)}


class LinearBottleneck(nn.Module):
    """A learned linear projection of the latent, latent_dim -> latent_dim."""

    metrics: Mapping[str, str] = {}

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(latent_dim, latent_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(W z + b, {"commit_loss": 0})."""
        return self.project(z), {"commit_loss": z.new_zeros((), dtype=torch.float32)}


@register("bottleneck", "identity")
def build_identity_bottleneck(model_cfg: Any, meta: Any) -> IdentityBottleneck:
    """The "identity" bottleneck."""
    return IdentityBottleneck()


@register("bottleneck", "linear")
def build_linear_bottleneck(model_cfg: Any, meta: Any) -> LinearBottleneck:
    """The "linear" bottleneck over model_cfg.latent_dim."""
    return LinearBottleneck(model_cfg.latent_dim)
