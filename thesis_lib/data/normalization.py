"""Z-scoring with train-split statistics: computed blockwise over valid tokens, saved with the run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .h5 import EventFile, RowCheck

__all__ = ["Normalization", "compute_normalization"]

# A std below this is a constant feature: dividing by it would blow the feature up, so use 1.
_STD_FLOOR = 1e-6


@dataclass(frozen=True)
class Normalization:
    """Per-feature mean and std used to z-score tokens_cont (valid tokens only) and globals."""

    cont_mean: tuple[float, ...]
    cont_std: tuple[float, ...]
    globals_mean: tuple[float, ...]
    globals_std: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready lists, the form saved with a run."""
        return {k: list(getattr(self, k)) for k in ("cont_mean", "cont_std", "globals_mean", "globals_std")}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Normalization":
        """Rebuild from to_dict() output.

        Raises:
            DataError: a key is missing or a mean and its std differ in length.
        """
        keys = ("cont_mean", "cont_std", "globals_mean", "globals_std")
        missing = [k for k in keys if k not in data]
        if missing:
            raise DataError(f"normalization dict lacks keys {missing}; expected {list(keys)}")
        values = {k: tuple(float(v) for v in data[k]) for k in keys}
        for part in ("cont", "globals"):
            if len(values[f"{part}_mean"]) != len(values[f"{part}_std"]):
                raise DataError(f"normalization {part}_mean has {len(values[f'{part}_mean'])} values but "
                                f"{part}_std has {len(values[f'{part}_std'])}; expected equal lengths")
        return cls(**values)

    def apply(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Z-score a block from EventFile.read_block in place, zeroing padding positions; returns it."""
        # torch on numpy views: its broadcasting over the short feature axis is several times
        # faster than numpy's; x * (1/std) + (-mean/std) is one fused pass (addcmul).
        for part, key in (("cont", "tokens_cont"), ("globals", "globals")):
            x = torch.from_numpy(block[key])
            scale, shift = self._affine(part)
            torch.addcmul(shift, x, scale, out=x)
        # masked_fill rather than a multiply: padding that held NaN becomes 0 too.
        padding = torch.from_numpy(block["tokens_id"] == 0).unsqueeze(-1)
        torch.from_numpy(block["tokens_cont"]).masked_fill_(padding, 0.0)
        return block

    def _affine(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1/std, -mean/std) of "cont" or "globals" as float32 tensors."""
        mean, std = np.asarray(getattr(self, f"{part}_mean")), np.asarray(getattr(self, f"{part}_std"))
        return torch.from_numpy((1.0 / std).astype(np.float32)), torch.from_numpy((-mean / std).astype(np.float32))


class _Moments:
    """Streaming mean and variance per column, merged block by block (Chan et al.)."""

    def __init__(self, dim: int) -> None:
        self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

    def update(self, x: np.ndarray) -> None:
        """Merge the rows of x [k, dim] into the running moments."""
        k = len(x)
        if k == 0:
            return
        x = x.astype(np.float64)
        block_mean = x.mean(axis=0)
        block_m2 = ((x - block_mean) ** 2).sum(axis=0)
        delta, total = block_mean - self.mean, self.n + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + block_m2 + delta**2 * (self.n * k / total)
        self.n = total

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, population std) with constant columns given std 1."""
        if self.n == 0:
            return tuple(0.0 for _ in self.mean), tuple(1.0 for _ in self.mean)
        std = np.sqrt(self.m2 / self.n)
        std = np.where(std < _STD_FLOOR, 1.0, std)
        return tuple(float(v) for v in self.mean), tuple(float(v) for v in std)


def compute_normalization(event_file: EventFile | str | Path, split: str = "train", *,
                          block_rows: int = 65536, max_rows: int = 0) -> Normalization:
    """Mean and std of every continuous feature over valid tokens (id != 0) and of every global.

    Args:
        event_file: an EventFile or a path to one.
        split: the split whose statistics define the normalization (train, always, in training).
        block_rows: rows read per block; memory stays bounded by this.
        max_rows: use only the first max_rows rows (0: all), matching a capped loader.

    Returns:
        The Normalization; a feature with std below 1e-6 gets std 1.

    Raises:
        DataError: the split is missing or has no rows, or rows hold bad data (NaN or inf in a
            valid token's features or in the globals, a token id or label out of range): the
            message names file, split, dataset, the first bad row and how many there are.
    """
    ef = event_file if isinstance(event_file, EventFile) else EventFile(event_file)
    n = ef.num_rows(split)
    n = min(n, max_rows) if max_rows else n
    if n == 0:
        raise DataError(f"{ef.path}: split {split} has no rows; cannot compute a normalization from it")
    cont, glob = _Moments(ef.cont_dim), _Moments(ef.globals_dim)
    check = RowCheck(ef, split)
    for start in range(0, n, block_rows):
        block = ef.read_block(split, start, min(n, start + block_rows))
        if check.add(start, block):  # a bad block is counted, never averaged in
            cont.update(block["tokens_cont"][block["tokens_id"] != 0])
            glob.update(block["globals"])
    check.raise_if_bad(0, n)  # after the whole split: the count is of all its bad rows
    (cm, cs), (gm, gs) = cont.mean_std(), glob.mean_std()
    return Normalization(cm, cs, gm, gs)
