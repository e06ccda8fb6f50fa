"""Session fixtures for the report tests: tiny real runs trained once, the templates rendered against them.

A test module uses them with `pytest_plugins = ("report_fixtures",)`: registered once as a plugin,
each fixture trains once per session however many modules ask for it. Every run is a 2-epoch
mlp model on 800 synthetic events with telemetry and its own report off (seconds each on a CPU).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from thesis_lib.config import load_config
from thesis_lib.data import make_synthetic_events

from thesis_lib.train import fit

TINY_MLP = {"encoder": "mlp", "hidden_dim": 16, "num_layers": 1, "latent_dim": 8, "token_embed_dim": 4}


def train_tiny(root: Path, events: Path, run_name: str, *, output_root: Path | None = None, model=None,
               trainer=None) -> Path:
    """Train one tiny run quietly and return its run directory."""
    config = load_config({
        "output_root": str(output_root or root / "outputs"), "run_name": run_name,
        "data": {"path": str(events), "batch_size": 128},
        "model": {**TINY_MLP, **(model or {})},
        "trainer": {"epochs": 2, "seed": 0, **(trainer or {})},
        "telemetry": {"enabled": False}, "report": {"enabled": False},
    })
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own log is in its logs/stdout.log
        result = fit(config)
    return Path(result.run_dir)


@pytest.fixture(scope="session")
def tiny_trainer():
    """`train_tiny`, for modules that train runs of their own (the plugin is not imported as a module there)."""
    return train_tiny


@pytest.fixture(scope="session")
def report_root(tmp_path_factory) -> Path:
    """A folder holding the session's synthetic events file (800 events, 8 tokens)."""
    root = tmp_path_factory.mktemp("report_runs")
    make_synthetic_events(root / "events.h5", n_events=800, seed=0, n_tokens=8)
    return root


@pytest.fixture(scope="session")
def autoencoder_run(report_root) -> Path:
    """An autoencoder run; a sync point every step, so the telemetry loss panel has a raw line."""
    return train_tiny(report_root, report_root / "events.h5", "autoencoder", trainer={"sync_every_n_steps": 1})


@pytest.fixture(scope="session")
def classifier_run(report_root) -> Path:
    """A classifier run: its report has the confusion-matrix section."""
    return train_tiny(report_root, report_root / "events.h5", "classifier", model={"task": "classifier"})


@pytest.fixture(scope="session")
def report_sweep(report_root) -> Path:
    """Two runs of a sweep-like folder `<root>/multiruns/exp_fixture` (bottleneck identity and linear)."""
    sweep_dir = report_root / "multiruns" / "exp_fixture"
    for bottleneck in ("identity", "linear"):
        train_tiny(report_root, report_root / "events.h5", bottleneck, output_root=sweep_dir,
                   model={"bottleneck": bottleneck})
    return sweep_dir
