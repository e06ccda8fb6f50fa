"""What a figure family is given (`FigureContext`) and how it declines to draw (`FamilySkipped`).

Every family is a function ``draw(ctx: FigureContext) -> Figure | None``: it returns the figure
to save, None when there is nothing to draw yet (no epoch has finished), or raises
`FamilySkipped` when it does not apply to this run at all (a reconstruction plot for a
classifier); the monitor then notes why, once, and stops asking it. Any other exception is a
failure: the monitor warns once and switches the family off.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Sequence

__all__ = ["FigureContext", "FamilySkipped", "history_view"]

_HISTORY_FIELDS = ("epochs", "lr", "epoch_time_s", "throughput", "train", "val")


class FamilySkipped(Exception):
    """A family does not apply to this run (wrong model kind, no probe batch); the message says why."""


@dataclass(frozen=True)
class FigureContext:
    """Everything a family may draw from, at one moment of a run.

    Attributes:
        epoch: the epoch just finished (at an epoch end) or the last finished one (at the end of
            training); None when no epoch finished.
        model: the model being trained (possibly wrapped by DDP or torch.compile).
        history: a TrainingHistory (or an object/dict with its fields), see `history_view`.
        probe_batch: a small fixed validation batch on the model's device, or None.
        status: None at an epoch end; the run's final status (COMPLETED, STOPPED, FAILED) at the end.
        cont_features: names of the continuous token features, when known.
    """

    epoch: Optional[int]
    model: Any
    history: Any
    probe_batch: Optional[Mapping[str, Any]] = None
    status: Optional[str] = None
    cont_features: Optional[Sequence[str]] = None

    @property
    def moment(self) -> str:
        """A short label for titles: "epoch 3" or "final · COMPLETED (epoch 9)"."""
        at = f"epoch {self.epoch}" if self.epoch is not None else "no epoch finished"
        return at if self.status is None else f"final · {self.status} ({at})"


def history_view(history: Any) -> SimpleNamespace:
    """The six per-epoch fields of a TrainingHistory, from the object or from its `to_dict()` form.

    Missing fields read as empty, so a family can draw from a partial history (e.g. a
    training_history.json written by an older version) without special cases.
    """
    if isinstance(history, Mapping):
        get = history.get
    else:
        def get(name: str, default: Any = None) -> Any:
            return getattr(history, name, default)
    values = {}
    for name in _HISTORY_FIELDS:
        value = get(name, None)
        if name in ("train", "val"):
            values[name] = {k: list(v) for k, v in dict(value or {}).items()}
        else:
            values[name] = list(value or [])
    return SimpleNamespace(**values)
