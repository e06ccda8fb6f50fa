"""HDF5 event layout version 1: its names, the shape checks on it, and `write_events`, its writer.

A file holds root attributes (`layout_version`, feature, token-type and label names) and one
group per split with `tokens_id [N, T]`, `tokens_cont [N, T, C]`, `globals [N, G]` and
`labels [N]`. `EventFile` in `h5` reads it back (and the seed's legacy flat layout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataError

__all__ = [
    "LAYOUT_VERSION",
    "SPLITS",
    "DATASETS",
    "DEFAULT_CONT_FEATURES",
    "DEFAULT_GLOBALS_FEATURES",
    "write_events",
]

LAYOUT_VERSION = 1
SPLITS = ("train", "val", "test")
DATASETS = ("tokens_id", "tokens_cont", "globals", "labels")
DEFAULT_CONT_FEATURES = ("E", "pT", "eta", "phi")
DEFAULT_GLOBALS_FEATURES = ("MET", "MET_phi")
# Root attributes the layout itself defines: extra_attrs may not replace them.
_LAYOUT_ATTRS = ("layout_version", "cont_features", "globals_features", "token_types", "label_names")


def _describe_shape(dims: Sequence[str], known: Mapping[str, tuple[int, str]]) -> str:
    """'[N, T, C] with T=20 (from /train/tokens_id), ...' for an error message."""
    pattern = "[" + ", ".join(dims) + "]"
    fixed = [f"{d}={known[d][0]} (from {known[d][1]})" for d in dims if d in known]
    return pattern + (" with " + ", ".join(fixed) if fixed else "")


def _check_shape(where: str, shape: tuple[int, ...], dims: Sequence[str], known: Mapping[str, tuple[int, str]]) -> None:
    """Raise DataError unless `shape` has len(dims) axes and every known axis has its value."""
    ok = len(shape) == len(dims) and all(d not in known or shape[i] == known[d][0] for i, d in enumerate(dims))
    if not ok:
        raise DataError(f"{where} has shape {list(shape)}; expected {_describe_shape(dims, known)}")


def _names(values: Sequence[str] | None, prefix: str, count: int) -> tuple[str, ...]:
    """The given names, or prefix_0 .. prefix_{count-1} when none were given."""
    if values is not None:
        return tuple(str(v) for v in values)
    return tuple(f"{prefix}_{i}" for i in range(count))


def write_events(
    path: str | os.PathLike,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    *,
    cont_features: Sequence[str] = DEFAULT_CONT_FEATURES,
    globals_features: Sequence[str] = DEFAULT_GLOBALS_FEATURES,
    token_types: Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
    chunk_rows: int = 1024,
    compression: str | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write events in layout version 1, atomically (temporary file, then rename).

    Args:
        path: destination .h5 file; parent directories are created.
        splits: split name (train/val/test) -> {tokens_id [N,T] int, tokens_cont [N,T,C],
            globals [N,G], labels [N] int}.
        cont_features: names of the C per-token continuous features.
        globals_features: names of the G per-event globals.
        token_types: vocabulary, index 0 = padding; default "pad", "type_1", ... up to the largest id.
        label_names: class names; default "class_0", ... up to the largest label.
        chunk_rows: chunk length along N (datasets are chunked along N only).
        compression: None (default, fastest reads) or an h5py filter name such as "gzip".
        extra_attrs: further root attributes recording how the file was made (str, number,
            bool, or a sequence of str or of numbers; store structures as JSON strings).
            Readers of the layout ignore them.

    Returns:
        The path written.

    Raises:
        DataError: a split or dataset is missing or unknown, a shape or dtype disagrees (the
            message names split, dataset, expected and found shape), an id or label is out of
            range, a feature value is not finite, or an extra attribute replaces a layout
            attribute or has a type HDF5 cannot store.
    """
    more_attrs = _extra_attrs(path, extra_attrs)
    if not splits:
        raise DataError(f"write_events({path}): no splits given; expected some of {list(SPLITS)}")
    cont_features, globals_features = tuple(cont_features), tuple(globals_features)
    known: dict[str, tuple[int, str]] = {"C": (len(cont_features), "cont_features"),
                                         "G": (len(globals_features), "globals_features")}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for split, data in splits.items():
        if split not in SPLITS:
            raise DataError(f"write_events({path}): unknown split '{split}'; expected one of {list(SPLITS)}")
        missing = [k for k in DATASETS if k not in data]
        extra = [k for k in data if k not in DATASETS]
        if missing or extra:
            raise DataError(f"write_events({path}): split '{split}' has datasets {sorted(data)}; "
                            f"expected exactly {list(DATASETS)} (missing {missing}, unknown {extra})")
        arrays[split] = _validated_split(path, split, data, known)
    max_id = max((int(a["tokens_id"].max(initial=0)) for a in arrays.values()), default=0)
    max_label = max((int(a["labels"].max(initial=0)) for a in arrays.values()), default=0)
    token_types = _names(token_types, "type", max_id + 1)
    if token_types and token_types[0] == "type_0":
        token_types = ("pad",) + token_types[1:]
    label_names = _names(label_names, "class", max_label + 1)
    for what, top, names in (("tokens_id", max_id, token_types), ("labels", max_label, label_names)):
        if top >= len(names):
            raise DataError(f"write_events({path}): {what} holds value {top} but only {len(names)} "
                            f"names were given ({list(names)}); expected values in [0, {len(names)})")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    str_dtype = h5py.string_dtype()
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["layout_version"] = LAYOUT_VERSION
            f.attrs["cont_features"] = np.array(cont_features, dtype=str_dtype)
            f.attrs["globals_features"] = np.array(globals_features, dtype=str_dtype)
            f.attrs["token_types"] = np.array(token_types, dtype=str_dtype)
            f.attrs["label_names"] = np.array(label_names, dtype=str_dtype)
            for key, value in more_attrs.items():
                f.attrs[key] = value
            for split, data in arrays.items():
                group = f.create_group(split)
                rows = max(1, min(int(chunk_rows), len(data["labels"])))
                for name, array in data.items():
                    # maxshape unlimited along N: lets an empty split keep a 1-row chunk
                    group.create_dataset(name, data=array, chunks=(rows,) + array.shape[1:],
                                         maxshape=(None,) + array.shape[1:], compression=compression)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _extra_attrs(path, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """extra_attrs converted to what h5py stores (str arrays for sequences of str), or DataError."""
    out: dict[str, Any] = {}
    for key, value in (attrs or {}).items():
        if not isinstance(key, str) or key in _LAYOUT_ATTRS:
            raise DataError(f"write_events({path}): extra attribute {key!r} is not allowed; expected a str "
                            f"name other than the layout's own {list(_LAYOUT_ATTRS)}")
        if isinstance(value, (str, bool, int, float, np.generic)):
            out[key] = value
            continue
        items = list(value) if isinstance(value, (Sequence, np.ndarray)) else None
        try:  # a ragged or mixed sequence makes numpy raise or give an object array
            numbers = None if items is None else np.asarray(items)
        except ValueError:
            numbers = None
        if items and all(isinstance(v, str) for v in items):
            out[key] = np.array(items, dtype=h5py.string_dtype())
        elif numbers is not None and numbers.dtype.kind in "biuf":
            out[key] = numbers
        else:
            raise DataError(f"write_events({path}): extra attribute {key!r} has type {type(value).__name__}; "
                            f"expected a str, number, bool, or a sequence of str or of numbers "
                            f"(store structures as a JSON string)")
    return out


def _validated_split(path, split: str, data: Mapping[str, np.ndarray],
                     known: dict[str, tuple[int, str]]) -> dict[str, np.ndarray]:
    """One split's arrays checked against the shapes seen so far (fills `known`), cast for storage."""
    out = {k: np.asarray(data[k]) for k in DATASETS}
    where = f"write_events({path}): split '{split}' dataset"
    _check_shape(f"{where} 'tokens_id'", out["tokens_id"].shape, ("N", "T"), known)
    known.setdefault("T", (out["tokens_id"].shape[1], f"{split} tokens_id"))
    n_here = {**known, "N": (out["tokens_id"].shape[0], f"{split} tokens_id")}
    _check_shape(f"{where} 'tokens_cont'", out["tokens_cont"].shape, ("N", "T", "C"), n_here)
    _check_shape(f"{where} 'globals'", out["globals"].shape, ("N", "G"), n_here)
    _check_shape(f"{where} 'labels'", out["labels"].shape, ("N",), n_here)
    for name, kinds in (("tokens_id", "iu"), ("labels", "iu"), ("tokens_cont", "fiu"), ("globals", "fiu")):
        if out[name].dtype.kind not in kinds:
            expected = "an integer dtype" if kinds == "iu" else "a real numeric dtype (stored as float32)"
            raise DataError(f"{where} '{name}' has dtype {out[name].dtype}; expected {expected}")
    for name in ("tokens_id", "labels"):
        if out[name].size and int(out[name].min()) < 0:
            raise DataError(f"{where} '{name}' holds negative value {int(out[name].min())}; expected values >= 0")
    for name in ("tokens_cont", "globals"):
        out[name] = out[name].astype(np.float32, copy=False)
        bad = int(out[name].size - np.count_nonzero(np.isfinite(out[name])))
        if bad:
            raise DataError(f"{where} '{name}' holds {bad} non-finite values (NaN or inf); expected finite floats")
    out["tokens_id"] = out["tokens_id"].astype(np.int32, copy=False)
    out["labels"] = out["labels"].astype(np.int64, copy=False)
    return out

