"""The "gan_autoencoder" task: the autoencoder plus a discriminator, played in one backward pass.

The encoder, bottleneck and decoder are the registered parts ``model.encoder``, ``model.bottleneck``
and ``model.decoder`` name, exactly as in the "autoencoder" task, and so are its losses. Beside
them sits ``discriminator``, a small set network (`EventDiscriminator`) that tells real events
from reconstructions. The fake event is (real token types, reconstructed continuous features,
real globals): token types are discrete, so no gradient could reach their logits, and the real
globals make D a conditional critic of the token features given the event's layout and globals.
The globals head is therefore left to its own loss, so ``globals_beta`` sweeps
(compare_globals_heads) mean the same here as for the plain autoencoder.

Why a gradient reversal layer (Ganin & Lempitsky 2015): the training loop has ONE optimizer over
all trainable parameters and ONE backward per step, and its checkpoints, resume, gradient
accumulation, clipping, AMP scaling and DDP all rest on that. With a GRL the whole game fits it:

    loss = autoencoder loss + adversarial.weight * loss_adv
    loss_adv = BCE(D(x), 1) + BCE(D(GRL(x_hat)), 0)

The GRL is the identity forward and multiplies the gradient by -grl_lambda backward, so D's
parameters descend loss_adv while the encoder and decoder receive -grl_lambda * weight times its
gradient: they ascend D's loss, i.e. minimise E[log(1 - D(x_hat))], the saturating minimax form of
the original GAN (Goodfellow et al. 2014). The non-saturating variant (the autoencoder minimising
-log D(x_hat)) is not available with a GRL: it needs a generator loss that is not a multiple of
D's, i.e. a second pass through D with its parameters held fixed. With the saturating form the
autoencoder's adversarial gradient is weak while D rejects reconstructions confidently (the
reconstruction losses keep it learning meanwhile) and strong once it fools D, whose loss on
fakes has no upper bound: a game can overshoot for an epoch (d_fake above d_real, loss_recon up)
before D catches up, as a 6-epoch run on 1050 synthetic events did at the defaults.

What the numbers mean: "loss_adv" near 2 ln 2 = 1.386 with "metric_d_real" and "metric_d_fake"
near 0.5 is the balanced game; d_real -> 1 and d_fake -> 0 means D is winning; d_fake above
d_real means the autoencoder is. Under Adam the per-parameter step size does not depend on the
gradient's scale, so ``adversarial.weight`` sets the adversarial term against the reconstruction
in the autoencoder's parameters but barely changes how fast D learns (D sees nothing else). With
weight = 0 nothing is adversarial and D does not learn; with grl_lambda = 0 D learns but the
autoencoder ignores it (D then only measures how far reconstructions are from real events).
Validation losses use the same total, so the best epoch is chosen on it, D's loss included.

``forward`` and ``per_event_errors`` are the autoencoder's, so inference and export need nothing
new; per_event_errors adds "d_score", D's probability that the (real) event is real (higher means
more typical, the opposite of the error scores; inference reads only the keys it knows).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models import losses
from thesis_lib.models.autoencoder import Autoencoder
from thesis_lib.models.encoders import make_mlp
from thesis_lib.models.registry import get, register

__all__ = [
    "GradientReversal",
    "reverse_gradient",
    "EventDiscriminator",
    "GANAutoencoder",
    "build_gan_autoencoder",
]

Batch = Mapping[str, torch.Tensor]


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -lambda (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        # view_as: a new tensor object, so autograd records this node instead of passing x through.
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * -ctx.lambda_, None


def reverse_gradient(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    """x unchanged; the gradient that flows back through it is multiplied by -lambda_."""
    return GradientReversal.apply(x, lambda_)


class EventDiscriminator(nn.Module):
    """One logit per event, real vs reconstructed: a Deep Sets network over the valid tokens.

    Per token an MLP reads [token-type embedding, continuous features]; the token vectors are
    pooled by their masked mean and masked max over valid tokens (mean sees the event's overall
    shape, max its extreme tokens), the globals are appended and an MLP maps to one logit. The
    features at padding (``tokens_id == 0``) are replaced by zeros before anything reads them and
    padding is never pooled, so whatever a padded slot holds (a reconstruction's output there
    included) cannot change the logit. An event without tokens is judged by its globals alone.
    """

    def __init__(self, *, n_token_types: int, cont_dim: int, globals_dim: int, token_embed_dim: int,
                 hidden_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.token_type = nn.Embedding(n_token_types, token_embed_dim, padding_idx=0)
        self.token_mlp = make_mlp(token_embed_dim + cont_dim, hidden_dim, hidden_dim, num_layers, dropout)
        self.head = make_mlp(2 * hidden_dim + globals_dim, hidden_dim, 1, 1, dropout)

    def forward(self, tokens_id: torch.Tensor, tokens_cont: torch.Tensor, globals: torch.Tensor) -> torch.Tensor:
        """Logits [B] from tokens_id [B, T], tokens_cont [B, T, C] and globals [B, G]."""
        valid = (tokens_id != 0).unsqueeze(-1)
        cont = torch.where(valid, tokens_cont, torch.zeros((), dtype=tokens_cont.dtype, device=tokens_cont.device))
        hidden = self.token_mlp(torch.cat([self.token_type(tokens_id).to(cont.dtype), cont], dim=-1))
        zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        count = valid.sum(dim=1).clamp(min=1).to(hidden.dtype)
        mean = torch.where(valid, hidden, zero).sum(dim=1) / count
        # A finite fill, not -inf: an empty event's max is then finite and replaced by zeros below.
        floor = torch.full((), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        peak = torch.where(valid, hidden, floor).amax(dim=1)
        peak = torch.where(valid.any(dim=1), peak, zero)
        return self.head(torch.cat([mean, peak, globals.to(hidden.dtype)], dim=-1)).squeeze(-1)


class GANAutoencoder(Autoencoder):
    """Encoder -> bottleneck -> decoder, plus ``discriminator`` played through a GRL; see the module docstring.

    ``scalar_names`` are the Autoencoder's followed by "loss_adv", "metric_d_real" and
    "metric_d_fake"; the total loss is the Autoencoder's plus ``adversarial_weight * loss_adv``.
    """

    adversarial_scalar_names: tuple[str, ...] = ("loss_adv", "metric_d_real", "metric_d_fake")

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, decoder: nn.Module,
                 discriminator: EventDiscriminator, *, tokens_weight: float, globals_beta: float,
                 adversarial_weight: float, grl_lambda: float) -> None:
        _check_settings(adversarial_weight, grl_lambda)
        super().__init__(encoder, bottleneck, decoder, tokens_weight=tokens_weight, globals_beta=globals_beta)
        self.discriminator = discriminator
        self.adversarial_weight = float(adversarial_weight)
        self.grl_lambda = float(grl_lambda)
        self.scalar_names = self.scalar_names + self.adversarial_scalar_names

    def discriminate(self, batch: Batch, cont: torch.Tensor) -> torch.Tensor:
        """D's logits [B] for the event with its features replaced by `cont` [B, T, C] (types, globals real)."""
        return self.discriminator(batch["tokens_id"], cont, batch["globals"])

    def loss_and_metrics(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Total loss, its parts and the game's scores for one batch, in either mode.

        Returns:
            0-dim tensors: "loss" (with its graph) and, detached, every name in `scalar_names`: the
            Autoencoder's parts, "loss_adv" (D's BCE on real events plus on reconstructions),
            "metric_d_real" and "metric_d_fake" (mean sigmoid of D on each).
        """
        outputs = self(batch)
        valid = losses.valid_token_mask(batch["tokens_id"])
        parts = {
            "loss_recon": losses.masked_mse(outputs["cont"], batch["tokens_cont"], valid),
            "loss_tokens": losses.token_cross_entropy(outputs["id_logits"], batch["tokens_id"]),
            "loss_globals": losses.mse_or_zero(outputs["globals"], batch["globals"]),
            "loss_commit": outputs["commit_loss"].float(),
        }
        real = batch["tokens_cont"]
        fake = reverse_gradient(outputs["cont"], self.grl_lambda).to(real.dtype)
        # Real and fake through D as one batch: one pass, and D has no batch statistics to mix.
        logits = self.discriminator(batch["tokens_id"].repeat(2, 1), torch.cat([real, fake]),
                                    batch["globals"].repeat(2, 1)).float()
        real_logits, fake_logits = logits.chunk(2)
        parts["loss_adv"] = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                             + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        total = (parts["loss_recon"] + self.tokens_weight * parts["loss_tokens"]
                 + self.globals_beta * parts["loss_globals"] + parts["loss_commit"]
                 + self.adversarial_weight * parts["loss_adv"])
        values = {"loss": total}
        values.update({name: value.detach() for name, value in parts.items()})
        for scalar, key in self.bottleneck_metrics.items():
            values[scalar] = outputs[key].detach().float()
        values["metric_d_real"] = torch.sigmoid(real_logits.detach()).mean()
        values["metric_d_fake"] = torch.sigmoid(fake_logits.detach()).mean()
        return values

    @torch.no_grad()
    def per_event_errors(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The Autoencoder's per-event errors plus "d_score": float32 [B], D's sigmoid on the real event.

        Call it with the model in eval mode (dropout; a vq bottleneck's codebook update).
        """
        errors = super().per_event_errors(batch)
        errors["d_score"] = torch.sigmoid(self.discriminate(batch, batch["tokens_cont"]).float())
        return errors


def _check_settings(weight: float, grl_lambda: float) -> None:
    """ModelError naming the model.adversarial key whose value is negative."""
    if weight < 0:
        raise ModelError(f"model.adversarial.weight={weight} must be >= 0")
    if grl_lambda < 0:
        raise ModelError(f"model.adversarial.grl_lambda={grl_lambda} must be >= 0 (a negative one would let "
                         "the autoencoder help the discriminator)")


@register("task", "gan_autoencoder")
def build_gan_autoencoder(model_cfg: Any, meta: Any) -> GANAutoencoder:
    """A GANAutoencoder from model_cfg's encoder, bottleneck, decoder and ``adversarial`` settings.

    Raises:
        ModelError: a part name is not registered, the parts' settings do not fit together,
            model_cfg has no ``adversarial`` section, or a weight in it is negative.
    """
    settings = getattr(model_cfg, "adversarial", None)
    if settings is None:
        raise ModelError("model.task='gan_autoencoder' needs the model.adversarial settings "
                         "(weight, grl_lambda, disc_hidden)")
    _check_settings(settings.weight, settings.grl_lambda)
    if settings.disc_hidden < 0:
        raise ModelError(f"model.adversarial.disc_hidden={settings.disc_hidden} must be >= 0 (0: model.hidden_dim)")
    # The autoencoder's parts first: under one seed they start as a plain autoencoder's would.
    encoder = get("encoder", model_cfg.encoder)(model_cfg, meta)
    bottleneck = get("bottleneck", model_cfg.bottleneck)(model_cfg, meta)
    decoder = get("decoder", model_cfg.decoder)(model_cfg, meta)
    discriminator = EventDiscriminator(
        n_token_types=meta.n_token_types,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        token_embed_dim=model_cfg.token_embed_dim,
        hidden_dim=settings.disc_hidden or model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
    )
    return GANAutoencoder(
        encoder=encoder,
        bottleneck=bottleneck,
        decoder=decoder,
        discriminator=discriminator,
        tokens_weight=model_cfg.tokens_weight,
        globals_beta=model_cfg.globals_beta,
        adversarial_weight=settings.weight,
        grl_lambda=settings.grl_lambda,
    )
