"""The "vq" bottleneck: vector quantisation against a shared codebook learned by EMA.

The latent ``[B, D]`` is split into ``D / code_dim`` codes of ``code_dim`` each; every code is
replaced by its nearest codebook row. Gradients pass straight through to the encoder, a
commitment loss keeps the encoder near the codebook, and the codebook itself is not a parameter:
it follows the mean of the vectors assigned to each row through exponential moving averages
(van den Oord et al. 2017, appendix; Razavi et al. 2019). Rows whose usage decays below
``dead_code_threshold`` are re-seeded with encoder outputs from the current batch.

Nothing in the forward pass reads a device value on the host: dead-code revival is a masked
``torch.where`` over all rows, so the training step keeps its no-per-step-sync promise.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models.registry import register

__all__ = ["VectorQuantizer", "code_perplexity", "build_vq_bottleneck"]


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code-usage distribution given per-code counts [K]; K_used for uniform usage."""
    probs = counts / counts.sum().clamp(min=1.0)
    # p log p -> 0 as p -> 0: the where keeps unused codes from contributing 0 * -inf = NaN.
    plogp = torch.where(probs > 0, probs * probs.clamp(min=1e-30).log(), torch.zeros_like(probs))
    return torch.exp(-plogp.sum())


class VectorQuantizer(nn.Module):
    """EMA vector quantiser with straight-through gradients, commitment loss and dead-code revival.

    Buffers (saved in the state dict, not counted as parameters): ``codebook`` [K, code_dim],
    ``cluster_size`` [K] (EMA of assignments per row) and ``embed_sum`` [K, code_dim] (EMA of the
    sum of vectors assigned per row). Both EMAs start at zero, so after the first update each used
    row is exactly the mean of its vectors; the EMAs are updated only in training mode, and not at
    all once the module is frozen (`on_freeze`).
    """

    metrics: Mapping[str, str] = {"metric_perplex": "perplexity"}

    def __init__(
        self,
        latent_dim: int,
        *,
        codebook_size: int,
        code_dim: int,
        beta: float,
        decay: float,
        eps: float,
        dead_code_threshold: float,
    ) -> None:
        super().__init__()
        if latent_dim % code_dim != 0:
            raise ModelError(
                f"model.latent_dim={latent_dim} is not divisible by model.vq.code_dim={code_dim}: "
                "the vq bottleneck splits the latent into latent_dim / code_dim codes; pick a latent_dim "
                f"that is a multiple of {code_dim}"
            )
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.beta = beta
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.ema_update = True
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", torch.zeros(codebook_size, code_dim))

    def on_freeze(self) -> None:
        """Stop the EMA codebook updates: freezing must freeze what gradients do not reach too."""
        self.ema_update = False

    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index [N] of the nearest codebook row (squared Euclidean distance) for each row of flat [N, d]."""
        distances = (
            flat.square().sum(dim=1, keepdim=True)
            - 2.0 * flat @ self.codebook.t()
            + self.codebook.square().sum(dim=1).unsqueeze(0)
        )
        return distances.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Quantise z [B, D].

        Returns:
            (z_q [B, D] with straight-through gradients, extras) where extras holds "commit_loss"
            (beta * mse(z, sg[q]), 0-dim), "perplexity" (of code usage in this batch, 0-dim) and
            "codes" (the chosen row per code, int64 [B, D / code_dim]).
        """
        batch_size = z.shape[0]
        # Distances and EMAs in float32 whatever the autocast: bf16 rounding would flip argmins.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().reshape(-1, self.code_dim)
            codes = self.nearest_codes(flat)
            quantized = F.embedding(codes, self.codebook)
            # With num_classes given, one_hot skips its range check on CUDA (no sync); unlike
            # bincount, which reads the max index on the host.
            one_hot = F.one_hot(codes, self.codebook_size).to(flat.dtype)
            counts = one_hot.sum(dim=0)
            if self.training and self.ema_update:
                self._update_codebook(flat.detach(), one_hot, counts)
            commit_loss = self.beta * F.mse_loss(flat, quantized.detach())
            straight_through = flat + (quantized - flat).detach()
            perplexity = code_perplexity(counts).detach()
        extras = {
            "commit_loss": commit_loss,
            "perplexity": perplexity,
            "codes": codes.view(batch_size, -1),
        }
        return straight_through.view_as(z).to(z.dtype), extras

    @torch.no_grad()
    def _update_codebook(self, flat: torch.Tensor, one_hot: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA step of cluster_size and embed_sum, Laplace-smoothed renormalisation, then revival."""
        batch_sum = one_hot.t() @ flat
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Under DDP every rank's assignments feed one EMA, so the codebook follows the global
            # batch as it would in one process (revival stays per rank: DDP broadcasts rank 0's buffers).
            stats = torch.cat([counts.unsqueeze(1), batch_sum], dim=1)
            dist.all_reduce(stats)
            counts, batch_sum = stats[:, 0], stats[:, 1:]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(batch_sum, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps rows with (almost) no usage from dividing by zero.
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        updated = self.embed_sum / smoothed.unsqueeze(1)
        # A row never assigned has an empty EMA; keep it where it is rather than collapse it to 0.
        ever_used = (self.cluster_size > 0).unsqueeze(1)
        self.codebook.copy_(torch.where(ever_used, updated, self.codebook))
        self._revive_dead_codes(flat)

    @torch.no_grad()
    def _revive_dead_codes(self, flat: torch.Tensor) -> None:
        """Re-seed rows with EMA usage below the threshold from distinct random vectors of this batch."""
        if self.dead_code_threshold <= 0:  # a config float, not a device value
            return
        dead = (self.cluster_size < self.dead_code_threshold).unsqueeze(1)
        order = torch.randperm(flat.shape[0], device=flat.device)
        picks = order[torch.arange(self.codebook_size, device=flat.device) % flat.shape[0]]
        samples = flat[picks]
        # A revived row starts at the threshold with a consistent embed_sum, so the next EMA step
        # keeps it at its sample; unused again, it decays below the threshold and is re-seeded.
        self.codebook.copy_(torch.where(dead, samples, self.codebook))
        self.embed_sum.copy_(torch.where(dead, samples * self.dead_code_threshold, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead.squeeze(1), self.dead_code_threshold, self.cluster_size))

    def extra_repr(self) -> str:
        """Codebook shape and EMA settings, shown by print(model)."""
        return (
            f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta}, "
            f"decay={self.decay}, dead_code_threshold={self.dead_code_threshold}"
        )


@register("bottleneck", "vq")
def build_vq_bottleneck(model_cfg: Any, meta: Any) -> VectorQuantizer:
    """The "vq" bottleneck from model_cfg.latent_dim and model_cfg.vq."""
    vq = model_cfg.vq
    return VectorQuantizer(
        model_cfg.latent_dim,
        codebook_size=vq.codebook_size,
        code_dim=vq.code_dim,
        beta=vq.beta,
        decay=vq.decay,
        eps=vq.eps,
        dead_code_threshold=vq.dead_code_threshold,
    )
