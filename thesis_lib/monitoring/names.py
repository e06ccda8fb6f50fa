"""The names of the training-time figure families, and the check a config runs on them.

This module imports neither torch nor matplotlib (nor anything of thesis_lib but its errors), so
`thesis_lib.config` can validate `logging.figures` against it without pulling in the plotting
stack or creating an import cycle; the families themselves are imported only when a run uses them.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from thesis_lib.errors import ConfigError

__all__ = [
    "CURVE_FAMILIES",
    "SNAPSHOT_FAMILIES",
    "GENERAL_FAMILIES",
    "TASK_FAMILIES",
    "FIGURE_FAMILIES",
    "check_figure_families",
]

# Curves are drawn from the TrainingHistory alone; each draw replaces figures/<family>.png.
CURVE_FAMILIES: tuple[str, ...] = ("losses", "metrics", "latency", "lr", "adversarial")
# Snapshots probe the model; each epoch's draw is kept as figures/<family>_epoch<NNN>.png.
SNAPSHOT_FAMILIES: tuple[str, ...] = ("recon", "codebook", "diffusion")
# The general families, which any autoencoder run draws (classifiers skip recon and codebook).
GENERAL_FAMILIES: tuple[str, ...] = ("losses", "metrics", "latency", "lr", "recon", "codebook")
# Families of one task's model (adversarial: gan_autoencoder, diffusion: diffusion_autoencoder);
# every other run skips them with a note. Listed last so error messages name the general ones first.
TASK_FAMILIES: tuple[str, ...] = ("adversarial", "diffusion")
# What logging.figures accepts.
FIGURE_FAMILIES: tuple[str, ...] = GENERAL_FAMILIES + TASK_FAMILIES


def check_figure_families(families: Iterable[str], key: str = "logging.figures") -> tuple[str, ...]:
    """Validate a list of figure-family names.

    Args:
        families: the names a config lists, e.g. ["losses", "recon"]; any of FIGURE_FAMILIES.
        key: the config key named in error messages.

    Returns:
        The names as a tuple, in the order given.

    Raises:
        ConfigError: a name is not a string or not a family (the message names the key, the bad
            value, the nearest family and the allowed ones), or a name is listed twice.
    """
    if isinstance(families, (str, bytes)):
        raise ConfigError(f"{key}={families!r}: expected a list of family names, e.g. [{families!r}]")
    allowed = ", ".join(FIGURE_FAMILIES)
    names: list[str] = []
    for name in families:
        if not isinstance(name, str):
            raise ConfigError(f"{key}: {name!r} is not a family name (a string); allowed: {allowed}")
        if name not in FIGURE_FAMILIES:
            match = difflib.get_close_matches(name, FIGURE_FAMILIES, n=1, cutoff=0.5)
            hint = f" — did you mean {match[0]!r}?" if match else " is not a figure family;"
            raise ConfigError(f"{key}: {name!r}{hint} allowed: {allowed}")
        if name in names:
            raise ConfigError(f"{key}: {name!r} is listed twice; list each family once")
        names.append(name)
    return tuple(names)
