"""The "classifier" task: an event encoder as body, then a linear head to class logits.

The body is the encoder the config names ("mlp" by default: the flattened event through an
MLP), built exactly as the autoencoder builds it, so an autoencoder's trained ``encoder`` state
loads into a classifier's ``encoder`` unchanged (``model.freeze=[encoder]`` then trains the head).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from thesis_lib.models import losses
from thesis_lib.models.registry import get, register

__all__ = ["Classifier", "build_classifier"]

Batch = Mapping[str, torch.Tensor]


class Classifier(nn.Module):
    """Encoder body [B, latent_dim] -> GELU -> dropout -> linear head [B, n_classes].

    ``scalar_names`` lists the keys ``loss_and_metrics`` returns besides "loss".
    """

    scalar_names: tuple[str, ...] = ("metric_accuracy",)

    def __init__(self, encoder: nn.Module, *, latent_dim: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(latent_dim, n_classes))

    def predict_logits(self, batch: Batch) -> torch.Tensor:
        """Class logits [B, n_classes] for a batch dict (tokens_id, tokens_cont, globals)."""
        return self.head(self.encoder(batch))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{"logits": [B, n_classes]}."""
        return {"logits": self.predict_logits(batch)}

    def loss_and_metrics(self, batch: Batch) -> dict[str, torch.Tensor]:
        """0-dim tensors: "loss" (cross-entropy against batch["labels"]) and "metric_accuracy" (detached)."""
        logits = self.predict_logits(batch)
        return {
            "loss": F.cross_entropy(logits.float(), batch["labels"]),
            "metric_accuracy": losses.accuracy(logits.detach(), batch["labels"]),
        }


@register("task", "classifier")
def build_classifier(model_cfg: Any, meta: Any) -> Classifier:
    """A Classifier over meta.n_classes with the encoder model_cfg names as its body.

    Raises:
        ModelError: model_cfg.encoder is not registered.
    """
    return Classifier(
        get("encoder", model_cfg.encoder)(model_cfg, meta),
        latent_dim=model_cfg.latent_dim,
        n_classes=meta.n_classes,
        dropout=model_cfg.dropout,
    )
