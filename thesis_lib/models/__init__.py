"""Models: build one from its config through the registry, freeze parts of it, count its parameters.

Importing this package imports every part module, and each registers its builders, so the
registry is complete as soon as ``thesis_lib.models`` (or ``thesis_lib.models.registry``) is
imported. Adding a part: write its module with one ``@register(kind, name)`` builder and import
the module below.

Every model built here implements ``loss_and_metrics(batch) -> dict[str, Tensor]`` (0-dim
tensors: "loss" with its graph, detached ``loss_*`` parts and ``metric_*`` metrics) and
``scalar_names`` (those keys except "loss").
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from thesis_lib.errors import ModelError, did_you_mean
from thesis_lib.models import registry

# Part modules: imported for their @register side effect (and re-exported classes).
from thesis_lib.models import encoders, gnn, cnn, bottlenecks, vq, decoders, gnn_decoder, autoencoder, diffusion, adversarial, classifier  # noqa: F401
from thesis_lib.models.adversarial import GANAutoencoder
from thesis_lib.models.autoencoder import Autoencoder
from thesis_lib.models.classifier import Classifier
from thesis_lib.models.diffusion import DiffusionAutoencoder

__all__ = [
    "build_model",
    "freeze_modules",
    "count_parameters",
    "registry",
    "Autoencoder",
    "Classifier",
    "DiffusionAutoencoder",
    "GANAutoencoder",
]


def build_model(model_cfg: Any, meta: Any) -> nn.Module:
    """Build the model model_cfg.task names and freeze the submodules in model_cfg.freeze.

    Args:
        model_cfg: the model config (``ModelConfig`` or any object with its attributes).
        meta: the data's shape: n_tokens, cont_dim, globals_dim, n_token_types, n_classes.

    Returns:
        The model (on the CPU, in training mode), with ``loss_and_metrics`` and ``scalar_names``.

    Raises:
        ModelError: a task or part name is not registered, the parts' settings do not fit
            together (e.g. latent_dim not divisible by vq.code_dim), or a freeze name matches no
            submodule.
    """
    model = registry.get("task", model_cfg.task)(model_cfg, meta)
    freeze_modules(model, model_cfg.freeze)
    return model


def freeze_modules(model: nn.Module, names: Iterable[str]) -> None:
    """Stop training the named submodules: requires_grad=False on their parameters.

    Modules that learn without gradients (the vq codebook's EMA) define ``on_freeze()``; it is
    called for every module inside a frozen one, so a frozen part changes in no way at all.

    Args:
        model: the model to change in place.
        names: dotted submodule names, e.g. ["encoder"] or ["decoder.globals_head"].

    Raises:
        ModelError: a name matches no submodule; the message lists the top- and second-level
            names and the nearest match.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    for name in names:
        if name not in modules:
            raise ModelError(_unknown_submodule_message(model, name, modules))
        frozen = modules[name]
        for parameter in frozen.parameters():
            parameter.requires_grad_(False)
        for module in frozen.modules():
            on_freeze = getattr(module, "on_freeze", None)
            if callable(on_freeze):
                on_freeze()


def _unknown_submodule_message(model: nn.Module, name: str, modules: dict[str, nn.Module]) -> str:
    """Error text for a freeze name that matches no submodule: what exists and what was meant."""
    top = [n for n in modules if "." not in n]
    second = [n for n in modules if n.count(".") == 1]
    nearest = did_you_mean(name, modules)
    hint = f"; did you mean {nearest!r}?" if nearest else ""
    return (
        f"model.freeze: {name!r} matches no submodule of the {type(model).__name__}; "
        f"top-level names: {', '.join(top)}; second-level names: {', '.join(second)}{hint}"
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: {"total": all parameters, "trainable": those with requires_grad}.

    Buffers (e.g. the vq codebook, learned by EMA) are not parameters and are not counted.
    """
    parameters = list(model.parameters())
    return {
        "total": sum(p.numel() for p in parameters),
        "trainable": sum(p.numel() for p in parameters if p.requires_grad),
    }
