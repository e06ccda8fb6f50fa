"""The "diffusion_autoencoder" task: the autoencoder's encoder and bottleneck, a diffusion decoder for cont.

The encoder and bottleneck are the registered parts ``model.encoder`` and ``model.bottleneck`` name,
exactly as in the "autoencoder" task, and token types and globals are decoded from z_q by the mlp
decoder's heads. The continuous token features x [B, T, C] are decoded by a conditional denoiser
instead (Preechakul et al. 2022, "Diffusion Autoencoders"): DDPM training (Ho et al. 2020) with
the x0-parameterisation on a cosine schedule of ``diffusion.steps`` timesteps (Nichol & Dhariwal
2021). ``TokenDenoiser`` predicts each token's x0 from [x_t, token type, slot, t, z_q]; it is
conditioned on the event's true token types, so "cont" errors measure the features given the
layout, and the layout itself is scored by the token-type head.

- Training mode: ``loss_and_metrics`` draws one t per event and Gaussian noise on the device;
  ``loss_recon`` is the masked MSE between the predicted x0 and x, the same quantity (and name)
  as the autoencoder's, and the total is assembled the same way.
- Evaluation (eval-mode ``loss_and_metrics``, and ``per_event_errors`` in any mode): the x0 error
  is averaged over ``diffusion.eval_timesteps`` fixed t values spread evenly over the schedule,
  with fixed noise [K, 1, T, C] from a ``torch.Generator`` seeded with ``EVAL_NOISE_SEED`` on the
  batch's device and shared by every event. An event's score therefore depends on that event
  alone (not on its batch or the batch size), validation losses are comparable across epochs
  and anomaly scores are reproducible; CPU and CUDA generators give different (fixed) noise.
- ``forward`` returns the autoencoder's keys, "cont" being a deterministic DDIM reconstruction
  (eta = 0, ``diffusion.sample_steps`` steps from x_T = 0): an unrolled loop over constants, so
  TorchScript tracing and ONNX export see a plain graph.

Padding (``tokens_id == 0``) never matters: the features there are zeroed before the encoder or
the denoiser reads them, the noise is zero there and so is every prediction.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models import losses
from thesis_lib.models.autoencoder import Autoencoder
from thesis_lib.models.decoders import MLPDecoder
from thesis_lib.models.encoders import check_batch, make_mlp
from thesis_lib.models.registry import get, register

__all__ = [
    "EVAL_NOISE_SEED",
    "cosine_alpha_bar",
    "timestep_embedding",
    "TokenDenoiser",
    "DiffusionDecoder",
    "DiffusionAutoencoder",
    "build_diffusion_autoencoder",
]

Batch = Mapping[str, torch.Tensor]

EVAL_NOISE_SEED = 20_221_003  # any constant: it fixes the evaluation noise
TIME_FEATURES = 32  # sin + cos of 16 frequencies: resolves integer t up to thousands of steps


def cosine_alpha_bar(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule's cumulative signal fraction alpha_bar_t for t = 0..steps (Nichol & Dhariwal 2021).

    Args:
        steps: number of diffusion timesteps (>= 1).
        offset: the small s that keeps beta_1 from vanishing.
        max_beta: per-step noise cap; it keeps alpha_bar_steps above 0 (the raw cosine reaches 0).

    Returns:
        float64 [steps + 1]: alpha_bar_0 = 1, then strictly decreasing values in (0, 1).
    """
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((grid + offset) / (1.0 + offset) * math.pi / 2).square()
    betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])


def timestep_embedding(t: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features [..., 2F] of timesteps t [...] (any shape) at frequencies [F]."""
    angles = t.to(torch.float32).unsqueeze(-1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TokenDenoiser(nn.Module):
    """x0 prediction per token from [x_t, token-type embedding, slot, sin/cos(t), z_q], an MLP shared by all tokens.

    The first layer is a linear map of that concatenation written as a sum of one map per part:
    z_q and t are projected once per event rather than once per token, and broadcasting needs
    no batch-size constant, so a traced graph keeps a dynamic batch axis. The learned slot
    embedding is there because slots are ordered: without it two tokens of one type would get
    the same prediction once x_t is mostly noise.
    """

    def __init__(self, *, n_tokens: int, cont_dim: int, n_token_types: int, latent_dim: int,
                 hidden_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.from_x = nn.Linear(cont_dim, hidden_dim)
        self.token_type = nn.Embedding(n_token_types, hidden_dim, padding_idx=0)
        self.slot = nn.Parameter(torch.randn(n_tokens, hidden_dim) * 0.02)
        self.from_time = nn.Linear(TIME_FEATURES, hidden_dim, bias=False)
        self.from_latent = nn.Linear(latent_dim, hidden_dim, bias=False)
        half = TIME_FEATURES // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10_000.0) * torch.arange(half) / half),
                             persistent=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Dropout(dropout),
                                 *make_mlp(hidden_dim, hidden_dim, cont_dim, num_layers - 1, dropout))

    def forward(self, x_t: torch.Tensor, tokens_id: torch.Tensor, t: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """Predicted x0 [B, T, C] from x_t [B, T, C], tokens_id [B, T], t ([B] or 0-dim) and z_q [B, D]."""
        time = self.from_time(timestep_embedding(t, self.frequencies))
        if time.dim() == 2:  # one t per event: broadcast over the tokens
            time = time.unsqueeze(1)
        hidden = (self.from_x(x_t) + self.token_type(tokens_id) + self.slot + time
                  + self.from_latent(z_q).unsqueeze(1))
        return self.mlp(hidden)


class DiffusionDecoder(MLPDecoder):
    """The mlp decoder's trunk, token-type head and globals head, with a ``denoiser`` in place of its cont head.

    Called on z_q it returns {"id_logits" [B, T, V], "globals" [B, G]}; the cont features come
    from ``denoiser`` (driven by the DiffusionAutoencoder). Submodule names match the mlp
    decoder's, so ``model.freeze`` entries such as "decoder.globals_head" mean the same here.
    """

    def __init__(self, *, denoiser: TokenDenoiser, **mlp_decoder_args: Any) -> None:
        super().__init__(**mlp_decoder_args)
        # cont comes from the denoiser: a head without a loss would only hold parameters DDP waits on.
        del self.cont_head
        self.denoiser = denoiser

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"id_logits": [B, T, V], "globals": [B, G]} from z [B, latent_dim]."""
        features = self.trunk(z)
        return {
            "id_logits": self.id_head(features).view(z.shape[0], self.n_tokens, self.n_token_types),
            "globals": self.globals_head(z),
        }


class DiffusionAutoencoder(Autoencoder):
    """Encoder -> bottleneck -> (token/globals heads, conditional denoiser for cont); see the module docstring.

    ``scalar_names``, ``tokens_weight`` and ``globals_beta`` are the Autoencoder's, and so is the
    total loss: loss_recon + tokens_weight * loss_tokens + globals_beta * loss_globals + loss_commit.
    """

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, decoder: DiffusionDecoder, *,
                 tokens_weight: float, globals_beta: float, dims: tuple[int, int, int],
                 steps: int, sample_steps: int, eval_timesteps: int) -> None:
        _check_steps(steps, sample_steps, eval_timesteps)
        super().__init__(encoder, bottleneck, decoder, tokens_weight=tokens_weight, globals_beta=globals_beta)
        self.dims = dims  # (n_tokens, cont_dim, globals_dim), for check_batch
        self.steps = steps
        alpha_bar = cosine_alpha_bar(steps)
        # Derived from the config, so not saved: checkpoints hold only what was learned.
        self.register_buffer("alpha_bar", alpha_bar.to(torch.float32), persistent=False)
        # Evenly spread: the centres of K equal slices of 1..steps (distinct while K <= steps).
        fixed = [min(steps, max(1, math.ceil((k + 0.5) * steps / eval_timesteps))) for k in range(eval_timesteps)]
        self.register_buffer("eval_t", torch.tensor(fixed, dtype=torch.long), persistent=False)
        # DDIM visits tau_S = steps > ... > tau_1 >= 1, then 0 (alpha_bar = 1: the clean features).
        taus = [0] + [-(-i * steps // sample_steps) for i in range(1, sample_steps + 1)]
        a = alpha_bar.tolist()
        # Python floats: the sampling loop's coefficients are constants of a traced graph.
        self.sample_plan = [(t, math.sqrt(a[t]), math.sqrt(1.0 - a[t]), math.sqrt(a[prev]), math.sqrt(1.0 - a[prev]))
                            for t, prev in zip(reversed(taus[1:]), reversed(taus[:-1]))]

    def _prepare(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(batch with cont zeroed at padding, valid mask [B, T] float32, clean features x0 [B, T, C])."""
        check_batch(batch, *self.dims)
        valid = losses.valid_token_mask(batch["tokens_id"])
        cont = batch["tokens_cont"]
        x0 = cont * valid.unsqueeze(-1).to(cont.dtype)
        return {**batch, "tokens_cont": x0}, valid, x0

    def _encode(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(heads' outputs + bottleneck extras + "z" + "z_q", valid mask, x0) for a batch."""
        masked, valid, x0 = self._prepare(batch)
        z = self.encoder(masked)
        z_q, extras = self.bottleneck(z)
        outputs = dict(self.decoder(z_q))
        outputs.update(extras)
        outputs["z"] = z
        outputs["z_q"] = z_q
        return outputs, valid, x0

    def sample(self, tokens_id: torch.Tensor, z_q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) reconstruction [B, T, C] from x_T = 0, zero at padding.

        Args:
            tokens_id: token types [B, T] (0: padding), the denoiser's conditioning with z_q.
            z_q: the bottleneck's output [B, latent_dim].
            like: any [B, T, C] tensor; only its shape, dtype and device are used (for x_T).
        """
        mask = losses.valid_token_mask(tokens_id).unsqueeze(-1)
        x = torch.zeros_like(like)
        for t, sqrt_a, sqrt_1ma, sqrt_a_prev, sqrt_1ma_prev in self.sample_plan:
            x0 = self.decoder.denoiser(x, tokens_id, torch.full((), float(t), device=z_q.device), z_q) * mask
            eps = (x - sqrt_a * x0) / sqrt_1ma  # the noise x_t implies, given the x0 prediction
            x = sqrt_a_prev * x0 + sqrt_1ma_prev * eps  # the last step has alpha_bar = 1: x = x0
        return x

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Encode, quantise and decode a batch; "cont" is the DDIM reconstruction (`sample`) in either mode.

        The result depends on the mode only through dropout and, for vq, the training-mode codebook update.

        Returns:
            {"cont" [B, T, C], "id_logits" [B, T, V], "globals" [B, G], "z" [B, latent_dim],
            "z_q", "commit_loss"} plus the bottleneck's extras, as the Autoencoder's forward.
        """
        outputs, _, x0 = self._encode(batch)
        outputs["cont"] = self.sample(batch["tokens_id"], outputs["z_q"], x0)
        return outputs

    def _x0_predictions(self, x0: torch.Tensor, tokens_id: torch.Tensor, valid: torch.Tensor,
                        z_q: torch.Tensor, fixed: bool) -> torch.Tensor:
        """x0 predictions [K, B, T, C] from x_t at K timesteps: one random t per event (K = 1), or the fixed set.

        Random: t and the noise are drawn on the device (no host sync). Fixed: `eval_t` and noise
        from a generator seeded with EVAL_NOISE_SEED, shared by all events; the K copies of the
        batch run through the denoiser as one batch.
        """
        batch_size = x0.shape[0]
        if fixed:
            k = self.eval_t.shape[0]
            generator = torch.Generator(device=x0.device).manual_seed(EVAL_NOISE_SEED)
            noise = torch.randn((k, 1, *x0.shape[1:]), generator=generator, device=x0.device, dtype=torch.float32)
            noise = noise.expand(k, batch_size, *x0.shape[1:])
            t = self.eval_t.view(k, 1).expand(k, batch_size).reshape(-1)  # k-major, as the repeats below
        else:
            k = 1
            noise = torch.randn((1, *x0.shape), device=x0.device, dtype=torch.float32)
            t = torch.randint(1, self.steps + 1, (batch_size,), device=x0.device)
        mask = valid.unsqueeze(-1).repeat(k, 1, 1)
        alpha_bar = self.alpha_bar[t].view(-1, 1, 1)
        x_t = (alpha_bar.sqrt() * x0.float().repeat(k, 1, 1) + (1.0 - alpha_bar).sqrt() * noise.flatten(0, 1)) * mask
        predicted = self.decoder.denoiser(x_t.to(x0.dtype), tokens_id.repeat(k, 1), t, z_q.repeat(k, 1)) * mask
        return predicted.view(k, *x0.shape)

    def loss_and_metrics(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Total loss and its parts for one batch: random t in training mode, the fixed evaluation set in eval mode.

        Returns:
            0-dim tensors: "loss" (with its graph) and, detached, every name in `scalar_names`:
            "loss_recon" (MSE of the predicted x0 over valid tokens, averaged over the timesteps),
            "loss_tokens", "loss_globals", "loss_commit" and the bottleneck's metrics.
        """
        outputs, valid, x0 = self._encode(batch)
        predicted = self._x0_predictions(x0, batch["tokens_id"], valid, outputs["z_q"], fixed=not self.training)
        k = predicted.shape[0]
        # Every copy has the same valid count, so the pooled MSE is the mean of the K per-t MSEs.
        loss_recon = losses.masked_mse(predicted.flatten(0, 1), x0.repeat(k, 1, 1), valid.repeat(k, 1))
        return self.combine_losses(outputs, batch, loss_recon)

    @torch.no_grad()
    def per_event_errors(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-event errors for anomaly scores, always at the fixed evaluation timesteps and noise.

        Call it with the model in eval mode: in training mode dropout is on and a vq bottleneck
        updates its codebook.

        Returns:
            float32 tensors [B]: "mse" and "mae" of the x0 predictions over each event's valid tokens,
            averaged over the evaluation timesteps (0 for an event without tokens), "tokens_ce" and
            "globals_mse" as the Autoencoder's.
        """
        outputs, valid, x0 = self._encode(batch)
        predicted = self._x0_predictions(x0, batch["tokens_id"], valid, outputs["z_q"], fixed=True)
        k, batch_size = predicted.shape[:2]
        flat, target, mask = predicted.flatten(0, 1), x0.repeat(k, 1, 1), valid.repeat(k, 1)
        return {
            "mse": losses.per_event_masked_mse(flat, target, mask).view(k, batch_size).mean(dim=0),
            "mae": losses.per_event_masked_mae(flat, target, mask).view(k, batch_size).mean(dim=0),
            "tokens_ce": losses.per_event_token_cross_entropy(outputs["id_logits"], batch["tokens_id"]),
            "globals_mse": losses.per_event_mse(outputs["globals"], batch["globals"]),
        }


def _check_steps(steps: int, sample_steps: int, eval_timesteps: int) -> None:
    """ModelError naming the model.diffusion keys when the step counts do not fit together."""
    if steps < 2:
        raise ModelError(f"model.diffusion.steps={steps} must be >= 2")
    if not 1 <= sample_steps <= steps:
        raise ModelError(f"model.diffusion.sample_steps={sample_steps} must be >= 1 and <= "
                         f"model.diffusion.steps={steps}")
    if eval_timesteps < 1:
        raise ModelError(f"model.diffusion.eval_timesteps={eval_timesteps} must be >= 1")


@register("task", "diffusion_autoencoder")
def build_diffusion_autoencoder(model_cfg: Any, meta: Any) -> DiffusionAutoencoder:
    """A DiffusionAutoencoder from model_cfg's encoder, bottleneck and ``diffusion`` settings.

    Raises:
        ModelError: a part name is not registered, model.decoder is not "mlp" (whose heads this task
            uses), model_cfg has no ``diffusion`` section, or its step counts do not fit together.
    """
    settings = getattr(model_cfg, "diffusion", None)
    if settings is None:
        raise ModelError("model.task='diffusion_autoencoder' needs the model.diffusion settings "
                         "(steps, sample_steps, eval_timesteps, denoiser_hidden)")
    if model_cfg.decoder != "mlp":
        raise ModelError(f"model.decoder={model_cfg.decoder!r}: the diffusion_autoencoder decodes token types and "
                         "globals with the mlp decoder's heads; allowed: mlp")
    _check_steps(settings.steps, settings.sample_steps, settings.eval_timesteps)
    denoiser = TokenDenoiser(
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        n_token_types=meta.n_token_types,
        latent_dim=model_cfg.latent_dim,
        hidden_dim=settings.denoiser_hidden or model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
    )
    decoder = DiffusionDecoder(
        denoiser=denoiser,
        latent_dim=model_cfg.latent_dim,
        hidden_dim=model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        n_token_types=meta.n_token_types,
    )
    return DiffusionAutoencoder(
        encoder=get("encoder", model_cfg.encoder)(model_cfg, meta),
        bottleneck=get("bottleneck", model_cfg.bottleneck)(model_cfg, meta),
        decoder=decoder,
        tokens_weight=model_cfg.tokens_weight,
        globals_beta=model_cfg.globals_beta,
        dims=(meta.n_tokens, meta.cont_dim, meta.globals_dim),
        steps=settings.steps,
        sample_steps=settings.sample_steps,
        eval_timesteps=settings.eval_timesteps,
    )
