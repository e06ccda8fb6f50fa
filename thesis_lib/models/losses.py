"""Loss and metric functions shared by the models: pure functions of tensors, no host syncs.

Padding convention: ``tokens_id == 0`` marks a padding position. Reconstruction losses of the
continuous token features count valid (non-padding) positions only; the token-type loss counts
every position, since predicting where the padding is is part of reconstructing an event.
Reductions run in float32 so bf16/fp16 autocast does not round the sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "valid_token_mask",
    "masked_mse",
    "per_event_masked_mse",
    "per_event_masked_mae",
    "token_cross_entropy",
    "per_event_token_cross_entropy",
    "mse_or_zero",
    "per_event_mse",
    "accuracy",
]


def valid_token_mask(tokens_id: torch.Tensor) -> torch.Tensor:
    """Float mask [B, T]: 1.0 at real tokens, 0.0 at padding (id 0)."""
    return (tokens_id != 0).to(torch.float32)


def _masked_squared_error(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Squared error [B, T, C] in float32, zeroed at padding positions."""
    return (pred.float() - target.float()).square() * valid.to(torch.float32).unsqueeze(-1)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid tokens x features.

    Args:
        pred: predicted continuous features [B, T, C].
        target: true continuous features [B, T, C].
        valid: mask [B, T], nonzero at valid tokens (see `valid_token_mask`).

    Returns:
        0-dim float32 tensor: sum of squared errors at valid positions / (valid tokens * C).
        A batch without any valid token gives 0 (the denominator is clamped to 1), not NaN.
    """
    count = valid.to(torch.float32).sum() * pred.shape[-1]
    return _masked_squared_error(pred, target, valid).sum() / count.clamp(min=1.0)


def per_event_masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-event mean squared error over valid tokens x features, [B]; 0 for an empty event."""
    count = valid.to(torch.float32).sum(dim=1) * pred.shape[-1]
    return _masked_squared_error(pred, target, valid).sum(dim=(1, 2)) / count.clamp(min=1.0)


def per_event_masked_mae(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-event mean absolute error over valid tokens x features, [B]; 0 for an empty event."""
    weights = valid.to(torch.float32)
    count = weights.sum(dim=1) * pred.shape[-1]
    absolute = (pred.float() - target.float()).abs() * weights.unsqueeze(-1)
    return absolute.sum(dim=(1, 2)) / count.clamp(min=1.0)


def token_cross_entropy(id_logits: torch.Tensor, tokens_id: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of token-type logits [B, T, V] against ids [B, T], mean over all B*T positions."""
    return F.cross_entropy(id_logits.flatten(0, 1).float(), tokens_id.flatten())


def per_event_token_cross_entropy(id_logits: torch.Tensor, tokens_id: torch.Tensor) -> torch.Tensor:
    """Token-type cross-entropy averaged over the T positions of each event, [B]."""
    per_position = F.cross_entropy(id_logits.flatten(0, 1).float(), tokens_id.flatten(), reduction="none")
    return per_position.view(tokens_id.shape).mean(dim=1)


def mse_or_zero(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32; 0 when there is nothing to compare (e.g. no globals, G = 0)."""
    if pred.numel() == 0:  # shape arithmetic, not a device read
        return pred.new_zeros((), dtype=torch.float32)
    return F.mse_loss(pred.float(), target.float())


def per_event_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the feature axis of [B, G] tensors, [B]; zeros when G = 0."""
    if pred.shape[-1] == 0:
        return pred.new_zeros(pred.shape[0], dtype=torch.float32)
    return (pred.float() - target.float()).square().mean(dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose argmax equals the label, as a 0-dim float32 tensor."""
    return (logits.argmax(dim=-1) == labels).to(torch.float32).mean()
