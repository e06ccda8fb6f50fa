"""A run's model rebuilt from its directory: config.yaml + data_meta.json give the architecture, model.pt the weights.

Reports (inference) and exports both start from here; it reads files only and imports nothing
above the facts layer, so a model can be reloaded on any machine from a copy of the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import Config, load_config
from ..data.loader import DataMeta
from ..errors import DataError, ReportError, ThesisLibError
from ..layout import DATA_META_FILE, MODEL_FILE
from ..models import build_model
from .reader import read_config

__all__ = ["load_run_model"]


def load_run_model(run_dir: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config, DataMeta]:
    """Rebuild a run's model from config.yaml + data_meta.json and load its best weights (model.pt).

    Args:
        run_dir: the run directory.
        device: where the model goes.

    Returns:
        (model in eval mode on `device`, the run's Config, its DataMeta).

    Raises:
        ReportError: the directory, config.yaml, data_meta.json or model.pt is missing or unreadable,
            or model.pt does not fit the model the config describes; the message names the run
            directory and the cause.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    try:
        config = load_config(read_config(run_dir))
    except ThesisLibError as exc:
        raise ReportError(f"{run_dir}: cannot rebuild the model from config.yaml: {exc}") from exc
    meta = _read_data_meta(run_dir)
    try:
        model = build_model(config.model, meta)
    except ThesisLibError as exc:
        raise ReportError(f"{run_dir}: the model in config.yaml cannot be built: {exc}") from exc
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise ReportError(f"{run_dir}: {MODEL_FILE} not found; the run saved no best weights (it may have failed "
                          "or been stopped before its first validation)")
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ReportError(f"{run_dir}: {MODEL_FILE} could not be loaded ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); expected a state_dict written by torch.save") from exc
    if not isinstance(state, Mapping):
        raise ReportError(f"{run_dir}: {MODEL_FILE} holds a {type(state).__name__}; expected a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        m = config.model
        raise ReportError(f"{run_dir}: {MODEL_FILE} does not match the model config.yaml describes ({m.task} "
                          f"{m.encoder}/{m.bottleneck}, latent_dim={m.latent_dim}): {exc}") from exc
    return model.to(device).eval(), config, meta


def _read_data_meta(run_dir: Path) -> DataMeta:
    """The run's DataMeta from data_meta.json; ReportError naming the file when it is unusable."""
    path = run_dir / DATA_META_FILE
    try:
        return DataMeta.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ReportError(f"{run_dir}: {DATA_META_FILE} not found; every run writes it at start (data shapes, "
                          "features, normalization) and the model cannot be rebuilt without it") from None
    except (ValueError, TypeError, DataError) as exc:
        raise ReportError(f"{run_dir}: {path} is unusable: {exc}") from exc
