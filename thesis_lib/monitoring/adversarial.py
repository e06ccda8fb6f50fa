"""The "adversarial" family: how the gan_autoencoder's game goes, epoch by epoch, from the TrainingHistory.

Left, D's mean score on real events (``metric_d_real``) and on reconstructions
(``metric_d_fake``), train solid and val dashed, with the 0.5 line where D cannot tell them apart:
d_real -> 1 and d_fake -> 0 means D is winning, d_fake above d_real means the autoencoder is.
Right, D's loss ``loss_adv`` (BCE on real plus BCE on fakes) with 2 ln 2, its value when D outputs
0.5 for everything, the balanced game. A curve family: it reads only the history, shares
curves.py's series and LR-cut helpers, and replaces figures/adversarial.png at each draw.
"""

from __future__ import annotations

import math
from typing import Optional

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .context import FamilySkipped, FigureContext
from .curves import _TRAIN, _VAL, _epochs_or_none, _mark_cuts, _series, lr_cuts
from ..figure_io import epoch_axis, new_figure, no_data

__all__ = ["adversarial_figure", "BALANCED_BCE"]

# loss_adv when D outputs 0.5 on every event: -ln(0.5) on the real half plus -ln(0.5) on the fakes.
BALANCED_BCE = 2.0 * math.log(2.0)
_SCORES = (("metric_d_real", "real", "tab:green"), ("metric_d_fake", "reconstructed", "tab:red"))


def adversarial_figure(ctx: FigureContext) -> Optional[Figure]:
    """D's mean scores on real and reconstructed events (0.5 marked), and loss_adv (2 ln 2 marked), per epoch.

    Returns:
        The figure, or None while no epoch has finished.

    Raises:
        FamilySkipped: the history has epochs but no metric_d_real (the model is not a gan_autoencoder).
    """
    history = _epochs_or_none(ctx)
    if history is None:
        return None
    if not any("metric_d_real" in getattr(history, split) for split in ("train", "val")):
        raise FamilySkipped("adversarial: the history has no metric_d_real (not a gan_autoencoder); skipped")
    cuts = lr_cuts(history.epochs, history.lr)
    fig = new_figure(11, 4)
    left, right = fig.subplots(1, 2)
    _scores_panel(left, history, cuts)
    _loss_panel(right, history, cuts)
    fig.suptitle(f"adversarial · {ctx.moment}", fontsize=11)
    return fig


def _scores_panel(ax: Axes, history, cuts) -> None:
    """d_real and d_fake, train solid and val dashed, on [0, 1] with the 0.5 line."""
    ax.set_title("D's mean score (train solid, val dashed)", loc="left", fontsize=10)
    drawn = 0
    for name, what, color in _SCORES:
        for split, style in (("train", "-"), ("val", "--")):
            values = _series(history, split, name)
            if values is not None:
                ax.plot(history.epochs, values, style, marker=".", color=color,
                        label=f"{what} ({split}, last {values[-1]:.3f})")
                drawn += 1
    if not drawn:
        no_data(ax, "no complete d_real / d_fake series")
        return
    ax.axhline(0.5, color="0.3", ls=":", lw=1.2, label="0.5: D cannot tell them apart")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("mean sigmoid(D)")
    _mark_cuts(ax, cuts)
    ax.legend(fontsize=7)
    epoch_axis(ax)


def _loss_panel(ax: Axes, history, cuts) -> None:
    """loss_adv train and val, with the balanced game's 2 ln 2 dashed."""
    ax.set_title("D's loss loss_adv (BCE real + BCE reconstructed)", loc="left", fontsize=10)
    drawn = 0
    for split, color in (("train", _TRAIN), ("val", _VAL)):
        values = _series(history, split, "loss_adv")
        if values is not None:
            ax.plot(history.epochs, values, marker="o", ms=3, color=color, label=f"{split} (last {values[-1]:.3f})")
            drawn += 1
    if not drawn:
        no_data(ax, "no complete loss_adv series")
        return
    ax.axhline(BALANCED_BCE, color="0.3", ls="--", lw=1.2, label=f"2 ln 2 = {BALANCED_BCE:.3f}: balance")
    _mark_cuts(ax, cuts)
    ax.legend(fontsize=7)
    epoch_axis(ax)
