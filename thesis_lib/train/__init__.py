"""The training loop: `fit(config) -> RunResult`, from a config to a complete run directory."""

from .loop import fit
from .run import RunResult, seed_everything

__all__ = ["fit", "RunResult", "seed_everything"]
