"""The "autoencoder" task: encoder -> bottleneck -> decoder, each picked from the registry by name.

The loss is the masked reconstruction of the continuous token features, plus the token-type
cross-entropy, the globals reconstruction and the bottleneck's commitment loss:

    loss = loss_recon + tokens_weight * loss_tokens + globals_beta * loss_globals + loss_commit
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from thesis_lib.models import losses
from thesis_lib.models.registry import get, register

__all__ = ["Autoencoder", "build_autoencoder"]

Batch = Mapping[str, torch.Tensor]


class Autoencoder(nn.Module):
    """An event autoencoder with named parts ``encoder``, ``bottleneck`` and ``decoder``.

    ``scalar_names`` lists every key ``loss_and_metrics`` returns except "loss" (which every model
    returns): the loss components ``loss_*`` and the bottleneck's metrics (``metric_perplex`` for
    vq). It is fixed at construction, so the facts header can be written before training.
    """

    base_scalar_names: tuple[str, ...] = ("loss_recon", "loss_tokens", "loss_globals", "loss_commit")

    def __init__(
        self,
        encoder: nn.Module,
        bottleneck: nn.Module,
        decoder: nn.Module,
        *,
        tokens_weight: float,
        globals_beta: float,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.tokens_weight = tokens_weight
        self.globals_beta = globals_beta
        # scalar name -> key in the bottleneck's extras, e.g. {"metric_perplex": "perplexity"}
        self.bottleneck_metrics: dict[str, str] = dict(getattr(bottleneck, "metrics", {}))
        self.scalar_names: tuple[str, ...] = self.base_scalar_names + tuple(self.bottleneck_metrics)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Encode, quantise and decode a batch.

        Args:
            batch: dict with tokens_id [B, T], tokens_cont [B, T, C], globals [B, G].

        Returns:
            {"cont" [B, T, C], "id_logits" [B, T, V], "globals" [B, G], "z" (encoder output,
            [B, latent_dim]), "z_q" (what the decoder read), "commit_loss" (0-dim)} plus the
            bottleneck's extras (for vq: "perplexity" and "codes" [B, latent_dim / code_dim]).
        """
        z = self.encoder(batch)
        z_q, extras = self.bottleneck(z)
        outputs = dict(self.decoder(z_q))
        outputs.update(extras)
        outputs["z"] = z
        outputs["z_q"] = z_q
        return outputs

    def loss_and_metrics(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Total loss and its parts for one batch.

        Returns:
            0-dim tensors: "loss" (with its graph, to back-propagate) and, detached, every name in
            `scalar_names`: "loss_recon" (MSE of cont over valid tokens), "loss_tokens" (token-type
            cross-entropy over all positions), "loss_globals" (MSE), "loss_commit" and the
            bottleneck's metrics ("metric_perplex" for vq).
        """
        outputs = self(batch)
        valid = losses.valid_token_mask(batch["tokens_id"])
        return self.combine_losses(outputs, batch, losses.masked_mse(outputs["cont"], batch["tokens_cont"], valid))

    def combine_losses(self, outputs: dict[str, torch.Tensor], batch: Batch,
                       loss_recon: torch.Tensor) -> dict[str, torch.Tensor]:
        """`loss_and_metrics`' result from the forward outputs and the continuous features' loss.

        Variants that reconstruct the continuous features another way (the diffusion denoiser)
        pass their own `loss_recon`; the other parts, their weights and the names stay the same.
        """
        parts = {
            "loss_recon": loss_recon,
            "loss_tokens": losses.token_cross_entropy(outputs["id_logits"], batch["tokens_id"]),
            "loss_globals": losses.mse_or_zero(outputs["globals"], batch["globals"]),
            "loss_commit": outputs["commit_loss"].float(),
        }
        total = (
            parts["loss_recon"]
            + self.tokens_weight * parts["loss_tokens"]
            + self.globals_beta * parts["loss_globals"]
            + parts["loss_commit"]
        )
        values = {"loss": total}
        values.update({name: value.detach() for name, value in parts.items()})
        for scalar, key in self.bottleneck_metrics.items():
            values[scalar] = outputs[key].detach().float()
        return values

    @torch.no_grad()
    def per_event_errors(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-event reconstruction errors, for anomaly scores.

        Call it with the model in eval mode: in training mode a vq bottleneck updates its codebook.

        Returns:
            float32 tensors [B]: "mse" and "mae" of the continuous features over each event's valid
            tokens (0 for an event without tokens), "tokens_ce" (token-type cross-entropy averaged
            over the T positions) and "globals_mse".
        """
        outputs = self(batch)
        valid = losses.valid_token_mask(batch["tokens_id"])
        return {
            "mse": losses.per_event_masked_mse(outputs["cont"], batch["tokens_cont"], valid),
            "mae": losses.per_event_masked_mae(outputs["cont"], batch["tokens_cont"], valid),
            "tokens_ce": losses.per_event_token_cross_entropy(outputs["id_logits"], batch["tokens_id"]),
            "globals_mse": losses.per_event_mse(outputs["globals"], batch["globals"]),
        }


@register("task", "autoencoder")
def build_autoencoder(model_cfg: Any, meta: Any) -> Autoencoder:
    """An Autoencoder from the encoder, bottleneck and decoder that model_cfg names.

    Raises:
        ModelError: a part name is not registered, or the parts' settings do not fit together.
    """
    return Autoencoder(
        encoder=get("encoder", model_cfg.encoder)(model_cfg, meta),
        bottleneck=get("bottleneck", model_cfg.bottleneck)(model_cfg, meta),
        decoder=get("decoder", model_cfg.decoder)(model_cfg, meta),
        tokens_weight=model_cfg.tokens_weight,
        globals_beta=model_cfg.globals_beta,
    )
