"""Training-time figures: `FigureMonitor` draws plot families into ``<run_dir>/figures/``.

Families (the names ``logging.figures`` lists): ``losses``, ``metrics``, ``latency``, ``lr``
(curves from the TrainingHistory) and ``recon``, ``codebook`` (snapshots that probe the model on
a fixed validation batch). Importing this package imports neither matplotlib nor torch: the
families are loaded when a monitor first draws them.
"""

from .monitor import FigureMonitor, FigureWarning
from .names import CURVE_FAMILIES, FIGURE_FAMILIES, SNAPSHOT_FAMILIES, check_figure_families

__all__ = [
    "FigureMonitor",
    "FigureWarning",
    "FIGURE_FAMILIES",
    "CURVE_FAMILIES",
    "SNAPSHOT_FAMILIES",
    "check_figure_families",
]
