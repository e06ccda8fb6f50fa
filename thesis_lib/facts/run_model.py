"""A run's model rebuilt from its directory: config.yaml + data_meta.json give the architecture, model.pt the weights.

Reports (inference) and exports both start from here; it reads files only and imports nothing
above the facts layer, so a model can be reloaded on any machine from a copy of the run.

The weights are model.pt (the best epoch's, written when the run ends) or, for a run that ended
before writing it (a crash, a kill), best_val.pt: the same best epoch's weights, saved each time
validation improved. `load_run_model_and_weights` says which file was used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import Config, load_config
from ..data.loader import DataMeta
from ..errors import DataError, ReportError, ThesisLibError
from ..layout import BEST_CHECKPOINT, DATA_META_FILE, MODEL_FILE
from ..models import build_model
from .reader import read_config

__all__ = ["RunWeights", "load_run_model", "load_run_model_and_weights"]


@dataclass(frozen=True)
class RunWeights:
    """Which weights a reloaded model got: `file` (model.pt or best_val.pt), its path, and why.

    `epoch` is the best epoch best_val.pt records (None for model.pt, a bare state_dict);
    `note` says why best_val.pt was used (None when it is model.pt).
    """

    file: str
    path: Path
    epoch: Optional[int] = None
    note: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"file", "path", "epoch", "note"}."""
        return {"file": self.file, "path": str(self.path), "epoch": self.epoch, "note": self.note}

    def describe(self) -> str:
        """One line: "model.pt" or "best_val.pt (best epoch 3; <note>)"."""
        if self.note is None:
            return self.file
        epoch = f"best epoch {self.epoch}; " if self.epoch is not None else ""
        return f"{self.file} ({epoch}{self.note})"


def load_run_model(run_dir: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config, DataMeta]:
    """Rebuild a run's model from config.yaml + data_meta.json and load its best weights.

    The weights come from model.pt, or from best_val.pt when the run has no model.pt (it crashed
    or was killed after at least one validation); `load_run_model_and_weights` also says which.

    Args:
        run_dir: the run directory.
        device: where the model goes.

    Returns:
        (model in eval mode on `device`, the run's Config, its DataMeta).

    Raises:
        ReportError: the directory, config.yaml or data_meta.json is missing or unreadable, the
            run has neither model.pt nor best_val.pt, the weights file is unreadable, or it does
            not fit the model the config describes; the message names the run directory, the
            file and the cause.
    """
    model, config, meta, _ = load_run_model_and_weights(run_dir, device=device)
    return model, config, meta


def load_run_model_and_weights(run_dir: str | Path, *, device: str | torch.device = "cpu"
                               ) -> tuple[torch.nn.Module, Config, DataMeta, RunWeights]:
    """`load_run_model`, plus the RunWeights saying which file the weights came from (model.pt or best_val.pt)."""
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
    state, weights = _read_weights(run_dir, device)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        m = config.model
        raise ReportError(f"{run_dir}: {weights.file} does not match the model config.yaml describes ({m.task} "
                          f"{m.encoder}/{m.bottleneck}, latent_dim={m.latent_dim}): {exc}") from exc
    return model.to(device).eval(), config, meta, weights


def _read_weights(run_dir: Path, device: str | torch.device) -> tuple[Mapping, RunWeights]:
    """(state_dict, RunWeights) from model.pt, else from best_val.pt's "model" entry; ReportError naming the file."""
    model_path, best_path = run_dir / MODEL_FILE, run_dir / BEST_CHECKPOINT
    # A finished run resumed and then killed keeps the model.pt of its first ending, while best_val.pt
    # may have moved on since: the newer file holds the run's best weights.
    stale = (model_path.is_file() and best_path.is_file()
             and best_path.stat().st_mtime_ns > model_path.stat().st_mtime_ns)
    if model_path.is_file() and not stale:
        return _load_state(run_dir, model_path, device), RunWeights(MODEL_FILE, model_path)
    if not best_path.is_file():
        raise ReportError(f"{run_dir}: neither {MODEL_FILE} nor {BEST_CHECKPOINT} found; the run saved no weights "
                          "(it failed or was stopped before its first validation)")
    checkpoint = _load_state(run_dir, best_path, device)
    state = checkpoint.get("model")
    if not isinstance(state, Mapping):
        raise ReportError(f"{run_dir}: {BEST_CHECKPOINT} holds no 'model' state_dict (keys {sorted(map(str, checkpoint))}); "
                          f"expected the checkpoint training writes")
    epoch = checkpoint.get("epoch")
    if stale:
        note = (f"{MODEL_FILE} is older than {BEST_CHECKPOINT} (the run was resumed after writing it and did not "
                f"finish again), so the best validation epoch's weights come from {BEST_CHECKPOINT}")
    else:
        note = (f"{MODEL_FILE} not found: the run ended before writing it (a crash or a kill), "
                f"so the best validation epoch's weights come from {BEST_CHECKPOINT}")
    return state, RunWeights(BEST_CHECKPOINT, best_path, int(epoch) if isinstance(epoch, int) else None, note)


def _load_state(run_dir: Path, path: Path, device: str | torch.device) -> Mapping:
    """torch.load(weights_only) of a weights file that must hold a mapping; ReportError naming it otherwise."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ReportError(f"{run_dir}: {path.name} could not be loaded ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); expected a state_dict written by torch.save") from exc
    if not isinstance(state, Mapping):
        raise ReportError(f"{run_dir}: {path.name} holds a {type(state).__name__}; expected a state_dict")
    return state


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
