"""training_history.json and model_info.json: the run's metadata files beside the checkpoints."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from ..version import __version__
from ..atomic_files import atomic_write_text
from ..layout import CONFIG_FILE, DATA_META_FILE, MODEL_FILE
from ..models import count_parameters

__all__ = ["TrainingHistory", "write_model_info"]


@dataclass
class TrainingHistory:
    """Per-epoch lists, the shape the seed's training_history.json had: one list per quantity."""

    epochs: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    train: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, list[float]] = field(default_factory=dict)

    def append(self, epoch: int, lr: float, epoch_time_s: float, train_stats: Any, val_stats: Any) -> None:
        self.epochs.append(epoch)
        self.lr.append(lr)
        self.epoch_time_s.append(epoch_time_s)
        self.throughput.append(train_stats.throughput)
        for split, stats in (("train", train_stats), ("val", val_stats)):
            series = getattr(self, split)
            for name, value in stats.metrics.items():
                series.setdefault(name, []).append(value)

    def to_dict(self) -> dict:
        return {
            "epochs": list(self.epochs),
            "lr": list(self.lr),
            "epoch_time_s": list(self.epoch_time_s),
            "throughput": list(self.throughput),
            "train": {k: list(v) for k, v in self.train.items()},
            "val": {k: list(v) for k, v in self.val.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingHistory":
        return cls(**{key: data[key] for key in ("epochs", "lr", "epoch_time_s", "throughput", "train", "val")})

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def write_model_info(
    path: Path,
    *,
    model: torch.nn.Module,
    cfg: Any,
    meta: Any,
    run_id: str,
    status: str,
    best_epoch: Optional[int],
    best_val_loss: Optional[float],
    test_metrics: dict,
) -> None:
    """What the model is and how to load it, readable without torch."""
    params = count_parameters(model)
    per_module = {
        name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()
    }
    info = {
        "run_id": run_id,
        "status": status,
        "task": cfg.model.task,
        "model_class": type(model).__name__,
        "architecture": {
            "encoder": cfg.model.encoder,
            "bottleneck": cfg.model.bottleneck,
            "decoder": cfg.model.decoder,
            "latent_dim": cfg.model.latent_dim,
        },
        "parameters": {
            **params,
            "trainable_pct": round(100.0 * params["trainable"] / max(params["total"], 1), 3),
            "per_module": per_module,
            "frozen_modules": list(cfg.model.freeze),
        },
        "inputs": {
            "n_tokens": meta.n_tokens,
            "cont_dim": meta.cont_dim,
            "globals_dim": meta.globals_dim,
            "n_token_types": meta.n_token_types,
            "n_classes": meta.n_classes,
            "cont_features": list(meta.cont_features),
            "globals_features": list(meta.globals_features),
        },
        "best_epoch": best_epoch,
        "best_val_loss": best_val_loss,
        "test_metrics": test_metrics,
        "files": {
            "weights": f"{MODEL_FILE} (state_dict of the best epoch; torch.load(..., weights_only=True))",
            "rebuild": f"{CONFIG_FILE} + {DATA_META_FILE} -> thesis_lib.models.build_model",
        },
        "versions": {"thesis_lib": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(),
    }
    atomic_write_text(path, json.dumps(info, indent=2))
