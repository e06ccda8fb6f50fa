"""HDF5 event layout version 1: its names and shape checks, `write_events` (its writer) and `EventFile` (its reader).

A file holds root attributes (`layout_version`, feature, token-type and label names) and one
group per split with `tokens_id [N, T]`, `tokens_cont [N, T, C]`, `globals [N, G]` and
`labels [N]`. `EventFile` reads it back by block, and the seed's legacy flat layout too; `RowCheck`
finds bad rows (NaN or inf, ids or labels out of range) in what is read.
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
    "EventFile",
    "RowCheck",
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


_ROOT_ATTRS = ("layout_version", "cont_features", "globals_features", "token_types", "label_names")
_LAYOUT_HELP = "tokens_id [N, T], tokens_cont [N, T, C], globals [N, G], labels [N]"
# Maxima over a whole split are scanned in blocks of this many rows so memory stays bounded.
_SCAN_ROWS = 1 << 16


def _decode_strings(value) -> tuple[str, ...]:
    """An HDF5 string-array attribute as a tuple of str (h5py may hand back bytes)."""
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value))


class EventFile:
    """An event file in layout version 1 ("tokens") or the legacy flat layout ("legacy").

    The h5py handle opens on first read and reopens when the process id changes, because an
    HDF5 handle must not be used across a fork (DataLoader workers); pickling drops it.

    Attributes:
        path, layout, splits (present splits), n_tokens (T), cont_dim (C), globals_dim (G),
        cont_features, globals_features; n_token_types, n_classes, token_types and label_names
        are properties (the legacy layout derives them from a scan of the ids and labels).
    """

    def __init__(self, path: str | os.PathLike, *,
                 legacy_cont_features: Sequence[str] = DEFAULT_CONT_FEATURES,
                 legacy_globals_features: Sequence[str] = DEFAULT_GLOBALS_FEATURES) -> None:
        """Open `path` once to detect its layout and check every split's shapes.

        Args:
            path: the .h5 file.
            legacy_cont_features: names of the 4 per-token features of a legacy file.
            legacy_globals_features: names of the 2 globals of a legacy file.

        Raises:
            DataError: the file is missing or not HDF5, no layout is recognised, the layout
                version is newer than this library reads, or a dataset is missing or misshapen.
        """
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"event file not found: {self.path}")
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._max_id: int | None = None
        self._max_label: int | None = None
        self._datasets: dict[tuple[str, str], h5py.Dataset] = {}
        f = self._handle()
        try:
            self._inspect(f, tuple(legacy_cont_features), tuple(legacy_globals_features))
        except BaseException:
            self.close()
            raise

    def _inspect(self, f: h5py.File, legacy_cont_features: tuple[str, ...],
                 legacy_globals_features: tuple[str, ...]) -> None:
        """Detect the layout and check it."""
        if any(s in f for s in SPLITS) or "layout_version" in f.attrs:
            self.layout = "tokens"
            self._inspect_tokens(f)
        elif any(f"X_{s}" in f for s in SPLITS):
            self.layout = "legacy"
            self._inspect_legacy(f, legacy_cont_features, legacy_globals_features)
        else:
            raise DataError(f"{self.path}: no known event layout; expected root attribute layout_version "
                            f"with groups /train, /val, /test (layout {LAYOUT_VERSION}) or legacy datasets "
                            f"/X_train, /X_val, /X_test; found {sorted(f.keys())}")

    def _inspect_tokens(self, f: h5py.File) -> None:
        """Read layout-1 attributes and check every present split's datasets."""
        # The version first: a newer layout may legitimately lack what version 1 requires.
        version = int(f.attrs.get("layout_version", LAYOUT_VERSION))
        if version > LAYOUT_VERSION:
            raise DataError(f"{self.path}: layout_version {version} is newer than this thesis-lib reads "
                            f"(up to {LAYOUT_VERSION}); upgrade thesis-lib to read it")
        missing = [a for a in _ROOT_ATTRS if a not in f.attrs]
        if missing:
            raise DataError(f"{self.path}: root attributes {missing} missing; layout {LAYOUT_VERSION} "
                            f"requires {list(_ROOT_ATTRS)}")
        self.cont_features = _decode_strings(f.attrs["cont_features"])
        self.globals_features = _decode_strings(f.attrs["globals_features"])
        self._token_types = _decode_strings(f.attrs["token_types"])
        self._label_names = _decode_strings(f.attrs["label_names"])
        self.splits = tuple(s for s in SPLITS if s in f)
        if not self.splits:
            raise DataError(f"{self.path}: no split groups; expected at least one of /train, /val, /test")
        known = {"C": (len(self.cont_features), "root attribute cont_features"),
                 "G": (len(self.globals_features), "root attribute globals_features")}
        for split in self.splits:
            group = f[split]
            for name in DATASETS:
                if not isinstance(group.get(name), h5py.Dataset):
                    raise DataError(f"{self.path}: dataset /{split}/{name} not found; a layout "
                                    f"{LAYOUT_VERSION} split group holds {_LAYOUT_HELP}")
            ref = f"/{split}/tokens_id"
            _check_shape(f"{self.path}: dataset {ref}", group["tokens_id"].shape, ("N", "T"), known)
            known.setdefault("T", (group["tokens_id"].shape[1], ref))
            in_split = {**known, "N": (group["tokens_id"].shape[0], ref)}
            for name, dims in (("tokens_cont", ("N", "T", "C")), ("globals", ("N", "G")), ("labels", ("N",))):
                _check_shape(f"{self.path}: dataset /{split}/{name}", group[name].shape, dims, in_split)
            for name, kinds in (("tokens_id", "iu"), ("labels", "iu"), ("tokens_cont", "f"), ("globals", "f")):
                if group[name].dtype.kind not in kinds:
                    raise DataError(f"{self.path}: dataset /{split}/{name} has dtype {group[name].dtype}; "
                                    f"expected {'an integer' if kinds == 'iu' else 'a float'} dtype")
        self.n_tokens = known["T"][0]
        self.cont_dim, self.globals_dim = len(self.cont_features), len(self.globals_features)
        self._x_width = 0

    def _inspect_legacy(self, f: h5py.File, cont_features: tuple[str, ...], globals_features: tuple[str, ...]) -> None:
        """Check the flat X_<split> / Y_<split> datasets and derive T from their width."""
        if len(cont_features) != 4 or len(globals_features) != 2:
            raise DataError(f"{self.path}: the legacy layout has 4 per-token features and 2 globals; "
                            f"got names {list(cont_features)} and {list(globals_features)}")
        self.splits = tuple(s for s in SPLITS if f"X_{s}" in f)
        self._label_paths: dict[str, str] = {}
        width = None
        for split in self.splits:
            x = f[f"X_{split}"]
            if x.ndim != 2 or (x.shape[1] - 2) % 5 or x.shape[1] < 7:
                raise DataError(f"{self.path}: legacy dataset /X_{split} has shape {list(x.shape)} (width "
                                f"{x.shape[1] if x.ndim == 2 else 'n/a'}); expected [N, W] with W = T + 2 + 4T "
                                f"= 5T + 2 for some T >= 1 (token ids, 2 globals, 4 features per token)")
            if width is not None and x.shape[1] != width[0]:
                raise DataError(f"{self.path}: legacy dataset /X_{split} has width {x.shape[1]}; "
                                f"expected {width[0]} (from {width[1]})")
            width = width or (x.shape[1], f"/X_{split}")
            names = [n for n in (f"Y_{split}", f"y_{split}") if n in f]
            if not names:
                raise DataError(f"{self.path}: labels for legacy split {split} not found; expected dataset "
                                f"/Y_{split} or /y_{split} with shape [N] where N={x.shape[0]} (from /X_{split})")
            y = f[names[0]]
            if y.shape not in ((x.shape[0],), (x.shape[0], 1)):
                raise DataError(f"{self.path}: legacy dataset /{names[0]} has shape {list(y.shape)}; expected "
                                f"[N] or [N, 1] with N={x.shape[0]} (from /X_{split})")
            self._label_paths[split] = names[0]
        self._x_width = width[0]
        self.n_tokens = (self._x_width - 2) // 5
        self.cont_features, self.globals_features = cont_features, globals_features
        self.cont_dim, self.globals_dim = 4, 2
        self._token_types = self._label_names = ()

    # -- handle management: one h5py.File per process ------------------------------------------
    def _handle(self) -> h5py.File:
        """The open h5py.File for this process, (re)opened after a fork or a close()."""
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise DataError(f"{self.path}: cannot open as HDF5 ({exc}); expected an event .h5 file") from exc
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def close(self) -> None:
        """Close this process's handle; the next read reopens it."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None
        self._datasets = {}

    def __enter__(self) -> "EventFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = None
        state["_datasets"] = {}
        return state

    def __repr__(self) -> str:
        return f"EventFile({str(self.path)!r}, layout={self.layout!r}, splits={self.splits}, T={self.n_tokens})"

    # -- metadata --------------------------------------------------------------------------------
    @property
    def token_types(self) -> tuple[str, ...]:
        """Token vocabulary, index 0 = padding (legacy: "pad", "type_1", ... from the largest id)."""
        return self._token_types or ("pad",) + tuple(f"type_{i}" for i in range(1, self.n_token_types))

    @property
    def n_token_types(self) -> int:
        """Vocabulary size including padding."""
        return len(self._token_types) if self._token_types else self._scan_max("ids") + 1

    @property
    def label_names(self) -> tuple[str, ...]:
        """Class names (derived as class_0 ... when the file names none)."""
        return self._label_names or tuple(f"class_{i}" for i in range(self.n_classes))

    @property
    def n_classes(self) -> int:
        """Number of classes: len(label_names), else the largest label + 1."""
        return len(self._label_names) if self._label_names else self._scan_max("labels") + 1

    @property
    def row_nbytes(self) -> int:
        """Bytes one decoded row takes in memory (int64 ids and labels, float32 features)."""
        return self.n_tokens * 8 + self.n_tokens * self.cont_dim * 4 + self.globals_dim * 4 + 8

    def _scan_max(self, what: str) -> int:
        """Largest token id or label over all splits, read once in bounded blocks and cached."""
        cached = self._max_id if what == "ids" else self._max_label
        if cached is None:
            cached = 0
            for split in self.splits:
                ds = self._dataset(split, "tokens_id" if what == "ids" else "labels")
                for start in range(0, ds.shape[0], _SCAN_ROWS):
                    if what == "ids" and self.layout == "legacy":
                        block = np.rint(ds[start:start + _SCAN_ROWS, : self.n_tokens])
                    else:
                        block = ds[start:start + _SCAN_ROWS]
                    if block.dtype.kind == "f":  # a legacy float column: NaN is bad data, found by RowCheck
                        block = np.where(np.isfinite(block), block, 0)
                    cached = max(cached, int(np.max(block, initial=0)))
            if what == "ids":
                self._max_id = cached
            else:
                self._max_label = cached
        return cached

    # -- reading ---------------------------------------------------------------------------------
    def _dataset(self, split: str, name: str) -> h5py.Dataset:
        """The h5py dataset behind `name` of `split` (legacy: the flat X or label dataset)."""
        if split not in self.splits:
            where = f"/{split}" if self.layout == "tokens" else f"/X_{split}"
            raise DataError(f"{self.path}: split {where} not found; this {self.layout} file has splits "
                            f"{list(self.splits)}")
        f = self._handle()
        # Cached: an h5py lookup by name costs about as much as reading a small block.
        ds = self._datasets.get((split, name))
        if ds is None:
            if self.layout == "tokens":
                ds = f[split][name]
            else:
                ds = f[self._label_paths[split]] if name == "labels" else f[f"X_{split}"]
            self._datasets[(split, name)] = ds
        return ds

    def dataset_name(self, split: str, name: str) -> str:
        """The HDF5 dataset holding `name` of `split`: /train/tokens_cont, or legacy /X_train (its columns)."""
        if self.layout == "tokens":
            return f"/{split}/{name}"
        if name == "labels":
            return f"/{self._label_paths[split]}"
        return f"/X_{split} ({name} columns)"

    def num_rows(self, split: str) -> int:
        """Number of events in `split`."""
        return int(self._dataset(split, "labels").shape[0])

    def chunk_rows(self, split: str) -> int | None:
        """Chunk length along N of the split's feature dataset, or None when stored contiguously."""
        chunks = self._dataset(split, "tokens_cont").chunks
        return int(chunks[0]) if chunks else None

    def empty_block(self, rows: int) -> dict[str, np.ndarray]:
        """Uninitialised arrays for `rows` decoded rows, in read_block's shapes and dtypes."""
        t = self.n_tokens
        return {"tokens_id": np.empty((rows, t), np.int64),
                "tokens_cont": np.empty((rows, t, self.cont_dim), np.float32),
                "globals": np.empty((rows, self.globals_dim), np.float32),
                "labels": np.empty(rows, np.int64)}

    def read_block(self, split: str, start: int, stop: int,
                   out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Rows [start, stop) of `split`, decoded.

        Args:
            split: "train", "val" or "test".
            start, stop: row range, 0 <= start <= stop <= num_rows(split).
            out: arrays to fill (C-contiguous, stop - start rows, shapes and dtypes as
                returned, e.g. row slices of one empty_block); layout-1 files are read straight
                into them, saving a copy. None: fresh arrays.

        Returns:
            {tokens_id int64 [n,T], tokens_cont float32 [n,T,C], globals float32 [n,G], labels int64 [n]}
            (`out` itself when given).

        Raises:
            DataError: the split is absent or the range is outside it.
        """
        n = self.num_rows(split)
        if not 0 <= start <= stop <= n:
            raise DataError(f"{self.path}: rows [{start}, {stop}) of split {split} out of range; "
                            f"expected 0 <= start <= stop <= {n}")
        out = self.empty_block(stop - start) if out is None else out
        if stop == start:
            return out
        if self.layout == "tokens":
            rows = np.s_[start:stop]
            for name in DATASETS:
                # HDF5 converts the stored dtype (e.g. int32 ids) to the buffer's while reading.
                self._dataset(split, name).read_direct(out[name], rows)
            return out
        labels = self._dataset(split, "labels")[start:stop].reshape(-1)
        out["labels"][:] = np.rint(labels) if labels.dtype.kind == "f" else labels
        t = self.n_tokens
        x = self._dataset(split, "X")[start:stop]
        out["tokens_id"][:] = np.rint(x[:, :t])
        out["globals"][:] = x[:, t:t + 2]
        # token-major: column t+2 + 4*i + k is feature k of token i
        out["tokens_cont"][:] = x[:, t + 2:].reshape(len(x), t, 4)
        return out


def _name_list(names: Sequence[str], most: int = 8) -> str:
    """'pad, jet, bjet' (the first `most` names, then how many more) for an error message."""
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def _all_below(values: np.ndarray, bound: int) -> bool:
    """Whether every integer is in [0, bound): one max over the values read as unsigned (a negative is huge)."""
    if values.size == 0:
        return True
    if values.dtype.kind == "i":
        values = values.view(values.dtype.str.replace("i", "u"))
    return int(values.max()) < bound


class RowCheck:
    """Bad rows of one split, found block by block as data is read; `error` names the first and the count.

    What is bad: a NaN or inf among the features of a valid token (tokens_id != 0; padding is
    zeroed by the normalization, so a non-finite padding value is harmless) or among the globals;
    a token id outside [0, len(token_types)); a label outside [0, len(label_names)). Every check is
    vectorised over the whole block (numpy, one thread), and a clean block costs one pass per
    dataset: an unsigned max for ids and labels, an isfinite for the features.
    """

    def __init__(self, event_file: EventFile, split: str) -> None:
        self.event_file, self.split = event_file, split
        self.n_token_types, self.n_classes = event_file.n_token_types, event_file.n_classes
        # dataset -> [first bad row, bad rows, the first row's bad value, what is wrong, what was expected]
        self.found: dict[str, list] = {}

    def add(self, start: int, block: Mapping[str, np.ndarray]) -> bool:
        """Check rows [start, start + len) of the split (a read_block result, before normalization); True if clean."""
        ids, labels = block["tokens_id"], block["labels"]
        clean = True
        if not _all_below(ids, self.n_token_types):
            bad = (ids < 0) | (ids >= self.n_token_types)
            clean &= self._record("tokens_id", start, bad.any(axis=1), ids[bad],
                                  "token id {} is outside the vocabulary",
                                  f"ids in [0, {self.n_token_types}) (token_types: "
                                  f"{_name_list(self.event_file.token_types)})")
        if not _all_below(labels, self.n_classes):
            bad = (labels < 0) | (labels >= self.n_classes)
            clean &= self._record("labels", start, bad, labels[bad], "label {} is outside the label names",
                                  f"labels in [0, {self.n_classes}) (label_names: "
                                  f"{_name_list(self.event_file.label_names)})")
        for name in ("tokens_cont", "globals"):
            x = block[name]
            if not np.isfinite(x).all():  # only then is the block searched row by row
                bad = ~np.isfinite(x)
                if name == "tokens_cont":
                    bad &= (ids != 0)[..., None]
                clean &= self._record(name, start, bad.reshape(len(x), -1).any(axis=1), x[bad],
                                      "non-finite value {}" + (" in a valid token's features" if name == "tokens_cont"
                                                               else ""), "finite numbers")
        return clean

    def _record(self, name: str, start: int, bad_rows: np.ndarray, bad_values: np.ndarray, what: str,
                expected: str) -> bool:
        """Add one dataset's bad rows of a block; True when there were none (non-finite padding only)."""
        count = int(np.count_nonzero(bad_rows))
        if not count:
            return True
        entry = self.found.get(name)
        if entry is None:
            self.found[name] = [start + int(np.argmax(bad_rows)), count, bad_values[0].item(), what, expected]
        else:
            entry[1] += count
        return False

    def error(self, start: int, stop: int, note: str = "") -> DataError | None:
        """The DataError for what rows [start, stop) held, or None when they were clean."""
        if not self.found:
            return None
        lines = []
        for name in DATASETS:
            if name not in self.found:
                continue
            first, count, value, what, expected = self.found[name]
            lines.append(f"{self.event_file.path}: split {self.split}, dataset "
                         f"{self.event_file.dataset_name(self.split, name)}: {count} bad row{'s' if count != 1 else ''} "
                         f"among rows [{start}, {stop}){note}; the first is row {first}: {what.format(value)}; "
                         f"expected {expected}")
        return DataError("\n".join(lines))

    def raise_if_bad(self, start: int, stop: int, note: str = "") -> None:
        """Raise `error(start, stop, note)` if there is one."""
        err = self.error(start, stop, note)
        if err is not None:
            raise err
