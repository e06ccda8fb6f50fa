"""Running the model on the probe batch without touching the run: eval mode, no grad, state restored.

A probe must leave training exactly as it found it, so figures on or off give the same run:
every module's train/eval flag is put back as it was (not just the root's: a frozen part may sit
in eval mode inside a model in training mode), gradients are off, and the RNG streams are forked
so a probe consumes no random numbers. Eval mode is also what keeps buffers still: the vq
codebook's EMA and dead-code revival, and batch-norm statistics, update only in training mode.
"""

from __future__ import annotations

import contextlib
from itertools import chain
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["unwrap_model", "probing", "to_numpy", "batch_size_of"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    for _ in range(4):  # wrappers nest at most a few deep (compile inside DDP)
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            break
    return model


def _cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA device indices the model's tensors live on (whose RNG a probe could touch)."""
    return sorted({t.device.index or 0 for t in chain(model.parameters(), model.buffers()) if t.is_cuda})


@contextlib.contextmanager
def probing(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad for the block, RNG forked; every module's mode restored afterwards.

    Args:
        model: the (unwrapped) model to probe.

    Yields:
        The model, in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(model)):
            yield model
    finally:
        for module, training in modes:
            module.training = training


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """float32 numpy copy on the host (the probe's one device sync per figure)."""
    return tensor.detach().float().cpu().numpy()


def batch_size_of(batch: Mapping[str, torch.Tensor]) -> int:
    """Rows in a batch dict: the first dimension of its first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 0

