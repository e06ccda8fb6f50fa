"""Figure plumbing shared by the families: a pyplot-free figure, atomic PNG saves, file names.

Figures are `matplotlib.figure.Figure` objects on their own Agg canvas, never pyplot: no global
figure registry to leak into and no display backend, so drawing works inside a training process,
a papermill kernel or a headless job alike. Saves go to a temporary file renamed over the target,
so a run killed mid-save still leaves the previous complete PNG; a figure of a run
(`<run_dir>/figures/`, `<run_dir>/report/`) is never written through a symbolic link out of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from thesis_lib.atomic_files import atomic_open, check_inside
from thesis_lib.layout import CONFIG_FILE, FACTS_DIR, FIGURES_DIR, RUN_REPORT_DIR

__all__ = [
    "DPI",
    "figure_path",
    "new_figure",
    "save_figure",
    "release_figure",
    "no_data",
    "epoch_axis",
    "log_scale_if_positive",
]

DPI = 100  # small files, fast saves: these are looked at while a run trains, not printed


def figure_path(figures_dir: Union[str, Path], family: str, epoch: Optional[int] = None) -> Path:
    """figures/<family>.png, or figures/<family>_epoch<NNN>.png for one epoch's snapshot."""
    name = family if epoch is None else f"{family}_epoch{epoch:03d}"
    return Path(figures_dir) / f"{name}.png"


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure with its own Agg canvas (no pyplot)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Union[str, Path], dpi: int = DPI, *, inside: Union[str, Path, None] = None,
                **savefig_kwargs: Any) -> Path:
    """Write `fig` as a PNG at `path` atomically (temporary file, then rename); creates the folder.

    Args:
        fig: the figure.
        path: the PNG to write.
        dpi: its resolution.
        inside: the directory the figure must stay in (no symbolic link between it and `path`);
            by default the run directory of a `<run_dir>/figures/` or `<run_dir>/report/` path
            (a folder holding config.yaml or facts/), else only `path` itself is checked.
        **savefig_kwargs: passed on to `Figure.savefig` (e.g. `bbox_inches="tight"`).

    Returns:
        The path written.

    Raises:
        UnsafePathError: `path`, or a folder between it and the run directory, is a symbolic link.
    """
    path = Path(path)
    if inside is None:
        inside = _run_dir_of(path)
    if inside is not None:
        check_inside(inside, path)  # before the folder is created: a dangling link is named too
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, inside=inside) as handle:
        if savefig_kwargs:
            fig.savefig(handle, format="png", dpi=dpi, **savefig_kwargs)
        else:
            _write_png(fig, handle, dpi)
    return path


def _write_png(fig: Figure, handle: Any, dpi: int) -> None:
    """The figure drawn once on its Agg canvas and written as a PNG by Pillow.

    `Figure.savefig` draws a figure with a layout engine twice (once to lay it out, once to
    render); one draw lays out and renders alike, which halves the cost of the run report's
    figures (about 0.3 s each on 2 cores).
    """
    from PIL import Image  # matplotlib's own PNG writer is Pillow

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    original_dpi = fig.dpi
    fig.dpi = dpi
    try:
        canvas.draw()
        width, height = canvas.get_width_height(physical=True)
        image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        image.save(handle, format="png", dpi=(dpi, dpi))
    finally:
        fig.dpi = original_dpi


def _run_dir_of(path: Path) -> Optional[Path]:
    """The run directory of a run's figure (<run_dir>/figures/x.png, <run_dir>/report/x.png), or None."""
    folder = path.parent
    if folder.name in (FIGURES_DIR, RUN_REPORT_DIR):
        run_dir = folder.parent
        if any(os.path.lexists(run_dir / name) for name in (CONFIG_FILE, FACTS_DIR)):
            return run_dir
    return None


def release_figure(fig: Figure) -> None:
    """Drop the figure's artists: the object API has no plt.close, and a run draws many figures."""
    fig.clear()


def no_data(ax: Axes, message: str) -> None:
    """An axis that says why it is empty instead of showing blank axes."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def epoch_axis(ax: Axes) -> None:
    """Integer epoch ticks, the x label and a light grid."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def log_scale_if_positive(ax: Axes, series: Iterable[Iterable[float]]) -> bool:
    """Log y when every finite value drawn is positive (and one exists); returns whether it did."""
    values = np.concatenate([np.asarray(list(s), dtype=float).ravel() for s in series] or [np.empty(0)])
    finite = values[np.isfinite(values)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
        return True
    return False
