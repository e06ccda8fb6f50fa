"""The training loop: `train(config) -> RunResult`."""

from .loop import RunResult, seed_everything, train

__all__ = ["train", "RunResult", "seed_everything"]
