"""Which torch device a setting means: "auto" picks CUDA when a GPU is visible, else the CPU."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device, key: str = "trainer.device") -> torch.device:
    """The device `name` means ("auto", "cpu", "cuda", "cuda:N", "mps").

    Raises:
        ConfigError: a CUDA device is asked for but none is visible; the message names `key`.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={str(name)!r} but no CUDA device is visible; use 'auto' or 'cpu'")
    return device
