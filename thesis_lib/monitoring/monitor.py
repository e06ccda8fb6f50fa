"""`FigureMonitor`: routes a run's epoch ends and its end to the enabled figure families.

The training loop calls ``on_epoch_end(epoch, model, history)`` and ``on_train_end(model,
history, status)``; the monitor never raises into training. A family that fails is caught,
reported once (in ``monitor.warnings`` and as one `FigureWarning`) and switched off; one that
does not apply to the run (``recon`` for a classifier) is noted once in ``monitor.notes`` and
switched off. Families are imported on first use, so importing this module (and the training
loop that imports it) does not import matplotlib.

Files under ``<run_dir>/figures/``: every family writes ``<family>.png`` at the end of training.
At the epochs where ``epoch % every_n_epochs == 0``, curve families (losses, metrics, latency,
lr, adversarial) replace ``<family>.png`` atomically, so a crashed run keeps its latest curves, and
snapshot families (recon, codebook, diffusion) write ``<family>_epoch<NNN>.png`` and keep them, to
show how they evolve.
"""

from __future__ import annotations

import importlib
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ..errors import ConfigError
from ..layout import FIGURES_DIR

from .context import FamilySkipped, FigureContext
from .names import CURVE_FAMILIES, check_figure_families

__all__ = ["FigureMonitor", "FigureWarning"]

# family -> (module, function); imported on first use (matplotlib, and torch for the probes).
_DRAWERS: Mapping[str, tuple[str, str]] = {
    "losses": ("thesis_lib.monitoring.curves", "losses_figure"),
    "metrics": ("thesis_lib.monitoring.curves", "metrics_figure"),
    "latency": ("thesis_lib.monitoring.curves", "latency_figure"),
    "lr": ("thesis_lib.monitoring.curves", "lr_figure"),
    "recon": ("thesis_lib.monitoring.recon", "recon_figure"),
    "codebook": ("thesis_lib.monitoring.codebook", "codebook_figure"),
    "adversarial": ("thesis_lib.monitoring.adversarial", "adversarial_figure"),
    "diffusion": ("thesis_lib.monitoring.diffusion", "diffusion_figure"),
}


class FigureWarning(UserWarning):
    """A training-time figure family failed and was switched off; training went on."""


class FigureMonitor:
    """Draws the configured figure families into ``<run_dir>/figures/`` during and after training.

    Attributes:
        families: the families asked for, in order.
        figures_dir: ``<run_dir>/figures`` (created on the first save).
        warnings: one line per family that failed (for the run's log).
        notes: one line per family skipped because it does not apply to this run.
        written: every PNG path saved, in order (a curve file once per save).
        elapsed_s: wall time spent drawing and saving, in total.
    """

    def __init__(
        self,
        run_dir: Union[str, Path],
        families: Sequence[str] = (),
        every_n_epochs: int = 1,
        probe_batch: Optional[Mapping[str, Any]] = None,
        *,
        cont_features: Optional[Sequence[str]] = None,
    ) -> None:
        """
        Args:
            run_dir: the run directory; figures go to its ``figures/`` folder.
            families: family names (see `thesis_lib.monitoring.FIGURE_FAMILIES`); empty: off.
            every_n_epochs: draw at the epoch ends where ``epoch % every_n_epochs == 0``.
            probe_batch: a small fixed validation batch (dict of tensors on the model's device)
                for recon, codebook and diffusion, or None (recon and diffusion are then skipped,
                codebook shows EMA usage only).
            cont_features: names of the continuous token features for recon's panels
                (e.g. ``meta.cont_features``); default: the model's ``cont_features``, else indices.

        Raises:
            ConfigError: an unknown or repeated family name, or every_n_epochs < 1.
        """
        self.families = check_figure_families(families, key="FigureMonitor families")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(f"FigureMonitor every_n_epochs={every_n_epochs!r} must be an int >= 1")
        self.every_n_epochs = every_n_epochs
        self.probe_batch = probe_batch
        self.cont_features = cont_features
        self.figures_dir = Path(run_dir) / FIGURES_DIR
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.written: list[Path] = []
        self.elapsed_s = 0.0
        self._active: list[str] = list(self.families)

    @property
    def active(self) -> tuple[str, ...]:
        """The families still drawing (neither failed nor skipped)."""
        return tuple(self._active)

    def on_epoch_end(self, epoch: int, model: Any, history: Any) -> None:
        """Draw the active families for an epoch just finished, if it is one of every_n_epochs.

        Args:
            epoch: the epoch just finished (0-based, as the loop counts).
            model: the model being trained; probes leave its modes, parameters and buffers as found.
            history: the run's TrainingHistory, including this epoch.
        """
        if not self._active or epoch % self.every_n_epochs:
            return
        ctx = FigureContext(epoch=epoch, model=model, history=history, probe_batch=self.probe_batch,
                            cont_features=self.cont_features)
        self._draw_all(ctx, final=False)

    def on_train_end(self, model: Any, history: Any, status: str) -> None:
        """Draw every active family's final ``<family>.png``.

        Args:
            model: the model as training left it.
            history: the run's TrainingHistory.
            status: the run's status (COMPLETED, STOPPED, FAILED), shown in the titles.
        """
        if not self._active:
            return
        epochs = getattr(history, "epochs", None)
        if epochs is None and isinstance(history, Mapping):
            epochs = history.get("epochs")
        ctx = FigureContext(epoch=epochs[-1] if epochs else None, model=model, history=history,
                            probe_batch=self.probe_batch, status=str(status), cont_features=self.cont_features)
        self._draw_all(ctx, final=True)

    def _draw_all(self, ctx: FigureContext, final: bool) -> None:
        """Each active family in turn; whatever happens, nothing propagates to the caller."""
        start = time.perf_counter()
        try:
            for family in list(self._active):
                self._draw_one(family, ctx, final)
        except Exception as exc:  # only the bookkeeping itself could get here; never into training
            self._fail("monitor", exc, "while routing", switch_off=list(self._active))
        finally:
            self.elapsed_s += time.perf_counter() - start

    def _draw_one(self, family: str, ctx: FigureContext, final: bool) -> None:
        where = "at the end of training" if final else f"at epoch {ctx.epoch}"
        try:
            draw = self._drawer(family)
            fig = draw(ctx)
            if fig is None:  # nothing to draw yet (no epoch finished)
                return
            from ..figure_io import figure_path, release_figure, save_figure

            epoch = None if final or family in CURVE_FAMILIES else ctx.epoch
            try:
                path = save_figure(fig, figure_path(self.figures_dir, family, epoch))
            finally:
                release_figure(fig)
            self.written.append(path)
        except FamilySkipped as skip:
            self.notes.append(str(skip))
            self._active.remove(family)
        except Exception as exc:
            self._fail(family, exc, where, switch_off=[family])

    @staticmethod
    def _drawer(family: str) -> Callable[[FigureContext], Any]:
        """The family's draw function, importing its module on first use."""
        module, name = _DRAWERS[family]
        return getattr(importlib.import_module(module), name)

    def _fail(self, family: str, exc: Exception, where: str, switch_off: list[str]) -> None:
        """Record a failure once, warn once, and stop drawing the families it concerns."""
        message = (f"figures: {family!r} failed {where} ({type(exc).__name__}: {exc}); "
                   f"switched off for the rest of the run")
        self.warnings.append(message)
        warnings.warn(message, FigureWarning, stacklevel=4)
        for name in switch_off:
            if name in self._active:
                self._active.remove(name)
