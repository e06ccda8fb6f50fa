"""Training-time figures: `FigureMonitor` draws plot families into ``<run_dir>/figures/``.

Families (the names ``logging.figures`` lists): ``losses``, ``metrics``, ``latency``, ``lr``
(curves from the TrainingHistory) and ``recon``, ``codebook`` (snapshots that probe the model on
a fixed validation batch); for one task's model, ``adversarial`` (gan_autoencoder: D's scores and
loss, a curve) and ``diffusion`` (diffusion_autoencoder: the denoiser across its schedule and a
DDIM trajectory, a snapshot). Importing this package imports neither matplotlib nor torch: the
families are loaded when a monitor first draws them.
"""

from .monitor import FigureMonitor, FigureWarning

__all__ = ["FigureMonitor", "FigureWarning"]
