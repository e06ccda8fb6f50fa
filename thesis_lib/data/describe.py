"""What a run's data was, measured at its start: the `dataset` section of the run's data meta file.

`describe_dataset(data_cfg, loaders, meta)` describes the data `make_loaders` gave a run: the
file's format (layout, layout version, the root attributes recording how it was made, such as
`kind="spectrogram"`), the rows of each split the loaders use (after `max_events`), the features,
the class names and per-split class counts (the labels read from the file), where the
normalization came from and how the loaders read the data. Everything is read from the file or
the loaders; what neither says is left out, never filled in. The file's identity (path, size,
mtime, sample hash) is the caller's `file_identity` (`record.env.describe_data_file`, a layer
above this one). The training loop writes the result as `dataset` in the run's data meta file;
the run report shows it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from .h5 import EventFile
from .loader import DataMeta, EventLoader

__all__ = ["DATASET_SCHEMA", "describe_dataset"]

# Version of the `dataset` section's shape; a reader checks it before trusting the keys below.
DATASET_SCHEMA = 1
# The layout's own root attributes (described under "features" and "classes", not copied as attributes).
_LAYOUT_ATTRS = ("layout_version", "cont_features", "globals_features", "token_types", "label_names")
# A root attribute longer than this (as JSON) is recorded by its size only.
_MAX_ATTR_CHARS = 4000
# Labels are counted in blocks of this many rows, so memory stays bounded.
_COUNT_ROWS = 1 << 16


def describe_dataset(data_cfg: Any, loaders: Mapping[str, EventLoader], meta: DataMeta, *,
                     file_identity: Mapping[str, Any] | None = None, world_size: int = 1) -> dict:
    """The `dataset` section: a JSON-ready dict of what the run's data was (module docstring).

    Args:
        data_cfg: the run's data config (path, batch_size, loader, max_events, num_workers).
        loaders: make_loaders' loaders ({split: EventLoader}, train and val at least).
        meta: make_loaders' DataMeta.
        file_identity: the data file's identity (describe_data_file), or None when not taken.
        world_size: processes training together (DDP); each loader is one process's share.

    Returns:
        {"schema", "file", "format", "splits", "features", "classes", "normalization", "loader"}:
        "file": the identity ({"path"} alone when none was taken); "format": {"layout", and when
        the file records them "layout_version", "kind", "attributes"}; "splits": {split: {"rows"
        (used, after max_events), "rows_in_file", "batches" (per process and epoch)}};
        "features": {"n_tokens", "token_features", "n_token_features", "globals", "n_globals",
        "token_types", "vocab_size", "names_from"}; "classes": {"names", "n_classes",
        "names_from", "counts": {split: [count per class, in the order of names]}, and
        "out_of_range": {split: count} when labels fall outside the names}; "normalization":
        {"source": "computed" with "split", "rows", "applied_to", or "none"}; "loader":
        {"requested", "mode": {split: mode}, "batch_size", "eval_batch_size", "max_events",
        "num_workers", "processes"}. Every number is an int.

    Raises:
        OSError, DataError: the file cannot be read again (the caller records it; the run goes on).
    """
    train = loaders["train"]
    event_file = train.event_file
    names_from = "file" if event_file.layout == "tokens" else "library defaults (the legacy layout names none)"
    return {
        "schema": DATASET_SCHEMA,
        "file": dict(file_identity) if file_identity else {"path": str(data_cfg.path)},
        "format": _format(event_file),
        "splits": {split: {"rows": int(loader.num_rows), "rows_in_file": int(event_file.num_rows(split)),
                           "batches": len(loader)}
                   for split, loader in loaders.items()},
        "features": {
            "n_tokens": int(meta.n_tokens),
            "token_features": list(meta.cont_features),
            "n_token_features": int(meta.cont_dim),
            "globals": list(meta.globals_features),
            "n_globals": int(meta.globals_dim),
            "token_types": list(meta.token_types),
            "vocab_size": int(meta.n_token_types),
            "names_from": names_from,
        },
        "classes": _classes(event_file, loaders, meta, names_from),
        "normalization": _normalization(loaders, meta),
        "loader": {
            "requested": str(getattr(data_cfg, "loader", "auto")),
            "mode": {split: str(loader.mode) for split, loader in loaders.items()},
            "batch_size": int(train.batch_size),
            "eval_batch_size": int(loaders["val"].batch_size),
            "max_events": int(getattr(data_cfg, "max_events", 0)),
            "num_workers": int(train.num_workers),
            "processes": int(world_size),
        },
    }


def _format(event_file: EventFile) -> dict:
    """The layout EventFile recognised, and what the file's root attributes say about how it was made."""
    out: dict[str, Any] = {"layout": event_file.layout}
    with h5py.File(event_file.path, "r") as f:
        attrs = {key: _plain(f.attrs[key]) for key in f.attrs}
    if "layout_version" in attrs:
        out["layout_version"] = attrs["layout_version"]
    if isinstance(attrs.get("kind"), str):
        out["kind"] = attrs["kind"]
    extra = {key: _bounded(value) for key, value in attrs.items() if key not in _LAYOUT_ATTRS and key != "kind"}
    if extra:
        out["attributes"] = extra
    return out


def _classes(event_file: EventFile, loaders: Mapping[str, EventLoader], meta: DataMeta, names_from: str) -> dict:
    """Class names and, per split, how many of the rows the loaders use hold each label (read from the file)."""
    n_classes = int(meta.n_classes)
    counts: dict[str, list[int]] = {}
    out_of_range: dict[str, int] = {}
    with h5py.File(event_file.path, "r") as f:
        for split, loader in loaders.items():
            labels = f[event_file.dataset_name(split, "labels")]
            total = np.zeros(n_classes, np.int64)
            outside = 0
            for start in range(0, loader.num_rows, _COUNT_ROWS):
                block = np.asarray(labels[start:min(loader.num_rows, start + _COUNT_ROWS)]).reshape(-1)
                if block.dtype.kind == "f":  # a legacy float column: NaN is no class
                    finite = np.isfinite(block)
                    outside += int(block.size - np.count_nonzero(finite))
                    block = np.rint(block[finite])
                block = block.astype(np.int64)
                inside = (block >= 0) & (block < n_classes)
                outside += int(block.size - np.count_nonzero(inside))
                total += np.bincount(block[inside], minlength=n_classes)
            counts[split] = [int(c) for c in total]
            if outside:
                out_of_range[split] = outside
    out: dict[str, Any] = {"names": list(meta.label_names), "n_classes": n_classes, "names_from": names_from,
                           "counts": counts}
    if out_of_range:
        out["out_of_range"] = out_of_range
    return out


def _normalization(loaders: Mapping[str, EventLoader], meta: DataMeta) -> dict:
    """Where the z-score statistics came from: make_loaders computes them over the train rows the run uses."""
    norm = meta.normalization
    if norm is None:
        return {"source": "none"}
    return {
        "source": "computed",
        "split": "train",
        # compute_normalization(file, "train", max_rows=max_events): the rows the train loader reads.
        "rows": int(loaders["train"].num_rows),
        "token_features_over": "valid tokens (token id not 0)",
        "globals_over": "every row",
        "applied_to": [split for split, loader in loaders.items() if loader.normalization is norm],
    }


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON-ready Python: str, int, float, bool or a list of them."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _bounded(value: Any) -> Any:
    """A root attribute as recorded: a JSON string decoded (e.g. recordings per split); a long one by its size only."""
    if isinstance(value, str) and value.startswith(("[", "{")):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    size = len(json.dumps(value))
    if size > _MAX_ATTR_CHARS:
        return {"not_copied": f"{size} characters as JSON"}
    return value
