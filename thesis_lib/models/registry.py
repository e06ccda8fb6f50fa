"""The registry from config names to model-part builders.

A builder is a function `(model_cfg, meta) -> nn.Module`. Parts register themselves with
`@register(kind, name)` when their module is imported, and `thesis_lib/models/__init__.py`
imports every part module, so importing `thesis_lib.models` populates the registry. The names a
config may choose are the config's (`thesis_lib.config.MODEL_PART_NAMES`, so it validates without
importing torch); registering a builder under a name the config does not know yet adds it there.

Kinds and what their builders return:

- ``encoder``: a module mapping a batch dict to a latent ``[B, latent_dim]``.
- ``bottleneck``: a module mapping ``z [B, latent_dim]`` to ``(z_q, extras)``.
- ``decoder``: a module mapping ``z_q`` to ``{"cont", "id_logits", "globals"}``.
- ``task``: a whole model with ``loss_and_metrics(batch)`` and ``scalar_names``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import MODEL_PART_NAMES, allow_model_part
from ..errors import ModelError, did_you_mean

__all__ = ["KINDS", "Builder", "register", "names", "get"]

KINDS: tuple[str, ...] = tuple(MODEL_PART_NAMES)

Builder = Callable[[Any, Any], Any]

_BUILDERS: dict[str, dict[str, Builder]] = {kind: {} for kind in KINDS}


def _builders_of(kind: str) -> dict[str, Builder]:
    """The name -> builder table of `kind`; ModelError for an unknown kind."""
    try:
        return _BUILDERS[kind]
    except KeyError:
        raise ModelError(
            f"unknown registry kind {kind!r}; allowed kinds: {', '.join(KINDS)}"
        ) from None


def register(kind: str, name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under `name` for `kind`.

    Args:
        kind: one of KINDS ("encoder", "bottleneck", "decoder", "task").
        name: the value a config uses to select this builder (e.g. ``model.encoder=mlp``).

    Returns:
        A decorator that records the builder and returns it unchanged.

    Raises:
        ModelError: `kind` is unknown, or `name` is already registered for `kind` (two parts
            silently shadowing each other would make a config mean different things by import order).
    """
    table = _builders_of(kind)

    def decorate(builder: Builder) -> Builder:
        if name in table and table[name] is not builder:
            raise ModelError(
                f"{kind} {name!r} is already registered (by {table[name].__module__}."
                f"{table[name].__qualname__}); pick another name for {builder.__module__}.{builder.__qualname__}"
            )
        table[name] = builder
        allow_model_part(kind, name)
        return builder

    return decorate


def names(kind: str) -> tuple[str, ...]:
    """The registered names of `kind`, sorted.

    Raises:
        ModelError: `kind` is not one of KINDS.
    """
    return tuple(sorted(_builders_of(kind)))


def get(kind: str, name: str) -> Builder:
    """The builder registered as `name` for `kind`.

    Args:
        kind: one of KINDS.
        name: the registered name.

    Returns:
        The builder function `(model_cfg, meta) -> nn.Module`.

    Raises:
        ModelError: `kind` is unknown, or no builder of `kind` is named `name`; the message lists
            the allowed names and the nearest match.
    """
    table = _builders_of(kind)
    if name in table:
        return table[name]
    allowed = names(kind)
    nearest = did_you_mean(name, allowed)
    hint = f"; did you mean {nearest!r}?" if nearest else ""
    raise ModelError(f"unknown {kind} {name!r}; allowed {kind} names: {', '.join(allowed)}{hint}")
