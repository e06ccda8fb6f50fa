"""How the training-time figure families draw: curves from the history, snapshots probing the model.

What `logging.figures` accepts (FIGURE_FAMILIES) and its check belong to the config; this module
sorts those names by how they are drawn and which runs draw them.
"""

from __future__ import annotations

from ..config import FIGURE_FAMILIES, check_figure_families

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
# Families of one task's model (adversarial: gan_autoencoder, diffusion: diffusion_autoencoder);
# every other run skips them with a note.
TASK_FAMILIES: tuple[str, ...] = ("adversarial", "diffusion")
# The general families, which any autoencoder run draws (classifiers skip recon and codebook).
GENERAL_FAMILIES: tuple[str, ...] = tuple(f for f in FIGURE_FAMILIES if f not in TASK_FAMILIES)
