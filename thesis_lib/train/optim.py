"""Optimiser, LR scheduler and mixed-precision setup from the config."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Optional

import torch

from ..config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "Precision"]

_NO_AUTOCAST = contextlib.nullcontext()  # fp32: one reusable do-nothing context for every step


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD over the trainable parameters; fused kernels on CUDA (one launch per step)."""
    trainable = [p for p in params if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.name == "adam":
        return torch.optim.Adam(trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer) -> Optional[torch.optim.lr_scheduler.ReduceLROnPlateau]:
    """torch's ReduceLROnPlateau on the validation loss, or None."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    return None


@dataclass
class Precision:
    """Autocast context and gradient scaler for fp32 / bf16 / fp16."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]
        # Only fp16 needs loss scaling: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def autocast(self) -> ContextManager[Any]:
        if self.dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
