"""Batches of events as torch tensors: a split held in memory (or on the GPU), or streamed by block."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError, DataError
from .h5 import EventFile, RowCheck
from .normalization import Normalization, compute_normalization

__all__ = ["Normalization", "compute_normalization", "EventLoader", "DataMeta", "make_loaders"]

LOADER_MODES = ("auto", "memory", "stream")
# Stream blocks default to about this many rows, rounded to whole HDF5 chunks.
_TARGET_BLOCK_ROWS = 8192
_MB = 1 << 20


def _seed_words(seed: int, epoch: int, stream: int = 0) -> list[int]:
    """Entropy words for a generator that depends on (seed, epoch, stream) and nothing else."""
    mask = (1 << 64) - 1
    return [seed & mask, epoch & mask, stream & mask]


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled row order of one epoch, identical on every device and every run."""
    state = np.random.SeedSequence(_seed_words(seed, epoch)).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    return torch.randperm(n, generator=generator)


def _batch_count(rows: int, batch_size: int, drop_last: bool) -> int:
    """Batches that `rows` rows make."""
    return rows // batch_size if drop_last else math.ceil(rows / batch_size)


class _BlockStream(IterableDataset):
    """Contiguous blocks read in a (seed, epoch)-shuffled order, rows shuffled within a buffer.

    Under a DataLoader with workers, worker w takes blocks w, w+W, ... of the epoch's block
    order, so every row is seen exactly once per epoch whatever the worker count. With several
    shards (DDP ranks), shard s reads the blocks of its workers s*W + w, s*W + w + S*W, ...
    """

    def __init__(self, event_file: EventFile, split: str, num_rows: int, block_rows: int, batch_size: int,
                 shuffle: bool, seed: int, drop_last: bool, normalization: Normalization, buffer_blocks: int,
                 shard: int = 0, num_shards: int = 1):
        super().__init__()
        self.event_file, self.split, self.batch_size = event_file, split, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.normalization, self.buffer_blocks = normalization, buffer_blocks
        self.shard, self.num_shards = shard, num_shards
        self.blocks = [(s, min(num_rows, s + block_rows)) for s in range(0, num_rows, block_rows)]
        self.epoch = 0

    def worker_blocks(self, worker: int, num_workers: int, shard: int | None = None) -> np.ndarray:
        """Indices into self.blocks that `worker` of `shard` (default: this one) reads this epoch."""
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng(_seed_words(self.seed, self.epoch)).permutation(order)
        shard = self.shard if shard is None else shard
        return order[shard * num_workers + worker::self.num_shards * num_workers]

    def batches_per_worker(self, num_workers: int, shard: int | None = None) -> list[int]:
        """How many batches each worker of `shard` yields this epoch (each carries its own remainder)."""
        sizes = np.array([stop - start for start, stop in self.blocks], dtype=np.int64)
        return [_batch_count(int(sizes[self.worker_blocks(w, num_workers, shard)].sum()), self.batch_size,
                             self.drop_last) for w in range(num_workers)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.worker_blocks(worker, num_workers)
        if len(mine) == 0:
            return
        rng = np.random.default_rng(_seed_words(self.seed, self.epoch, 1 + worker))
        bs, carry = self.batch_size, None
        # Shuffled batches are gathered copies, so one buffer can be refilled for every group
        # (no fresh pages to fault in); unshuffled batches are views and need fresh buffers.
        scratch = self.event_file.empty_block(self.buffer_blocks * self.blocks[0][1] + bs) if self.shuffle else None
        for i in range(0, len(mine), self.buffer_blocks):
            buf = self._fill_buffer([self.blocks[b] for b in mine[i:i + self.buffer_blocks]], carry, scratch)
            n = len(buf["labels"])
            order = torch.from_numpy(rng.permutation(n)) if self.shuffle else None
            full = n - n % bs
            for lo in range(0, full, bs):
                yield _take(buf, order, lo, lo + bs)
            # The remainder joins the next buffer, so batches stay full until the very last one.
            carry = _take(buf, order, full, n) if full < n else None
        if carry is not None and not self.drop_last:
            yield carry

    def _fill_buffer(self, blocks: list[tuple[int, int]], carry: dict[str, torch.Tensor] | None,
                     scratch: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor]:
        """Carried rows, then `blocks` read straight into one buffer (scratch's prefix) and normalized."""
        kept = 0 if carry is None else len(carry["labels"])
        total = kept + sum(stop - start for start, stop in blocks)
        arrays = self.event_file.empty_block(total) if scratch is None else {k: v[:total] for k, v in scratch.items()}
        row = kept
        for start, stop in blocks:
            view = {k: v[row:row + stop - start] for k, v in arrays.items()}
            # Checked and normalized right after its read, while the block is still in cache.
            self.event_file.read_block(self.split, start, stop, out=view)
            check = RowCheck(self.event_file, self.split)
            if not check.add(start, view):
                check.raise_if_bad(start, stop, " (the block being streamed; later blocks are not yet read)")
            self.normalization.apply(view)
            row += stop - start
        buf = {k: torch.from_numpy(v) for k, v in arrays.items()}
        for k in buf if carry is not None else ():
            buf[k][:kept] = carry[k]
        return buf


def _take(buf: dict[str, torch.Tensor], order: torch.Tensor | None, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Rows lo..hi of the buffer in `order` (a gather), or as views when unshuffled."""
    if order is None:
        return {k: v[lo:hi] for k, v in buf.items()}
    index = order[lo:hi]
    return {k: v.index_select(0, index) for k, v in buf.items()}


class EventLoader:
    """Iterable over batches of one split: dicts of torch tensors, normalized, padding zeroed.

    Modes: "memory" (split decoded once into host tensors), "device" (the same, on the CUDA
    device: per-batch index_select on the GPU, no host-to-device copy per batch), "stream"
    (contiguous chunk-aligned blocks in a shuffled order, rows shuffled within a buffer of
    `buffer_blocks` blocks). Call set_epoch(e) before each epoch: the order is a function of
    (seed, epoch) alone. Unshuffled memory-mode batches are views: do not modify them in place.

    Sharded (`num_shards` > 1, one shard per DDP rank): in memory, shard s takes every S-th row
    of the epoch's order from s, so batch i of all shards together is batch i of one process with
    S times the batch size; streamed, shard s takes every S-th group of blocks. `equal_shards`
    (training) trims every shard to the same number of batches, which DDP needs (each step is a
    collective); evaluation shards may differ by a batch.
    """

    def __init__(self, source: EventFile | str | Path, split: str, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0, normalization: Normalization | None = None, device: str | torch.device = "cpu",
                 mode: str = "auto", memory_budget_mb: float = 2048, device_budget_mb: float = 4096,
                 block_rows: int = 0, max_rows: int = 0, drop_last: bool = False, num_workers: int = 0,
                 buffer_blocks: int = 4, shard: int = 0, num_shards: int = 1, equal_shards: bool = False) -> None:
        """Choose the mode and, for memory/device, load the split.

        Args:
            source: an EventFile or a path to one.
            split: "train", "val" or "test".
            batch_size: rows per batch.
            shuffle: shuffle rows each epoch (train); otherwise file order.
            seed: with the epoch, fixes the order.
            normalization: statistics to apply; None computes them from the train split.
            device: where batches land; "device" mode needs CUDA.
            mode: "auto" (memory when the decoded split fits memory_budget_mb, else stream),
                "memory" or "stream".
            memory_budget_mb, device_budget_mb: size limits for holding the split in RAM / on the GPU.
            block_rows: rows per read block; 0 aligns about 8192 rows to the file's chunks.
            max_rows: use only the first max_rows rows (0: all).
            drop_last: drop the final partial batch (per worker in stream mode with workers).
            num_workers: stream mode only: DataLoader worker processes reading disjoint blocks.
            buffer_blocks: stream mode: blocks shuffled together.
            shard, num_shards: this loader's part of the split (DDP: rank and world size).
            equal_shards: give every shard the same number of batches (rows past that are left
                out of this epoch; a shuffled split leaves out different rows each epoch).

        Raises:
            ConfigError: a size, count or mode is out of range.
            DataError: the split is missing, the normalization does not match the file's features,
                or the split holds bad data (see make_loaders): checked while a memory or device
                split loads, and as each block is read when streamed.
        """
        self.event_file = source if isinstance(source, EventFile) else EventFile(source)
        for name, value, low in (("batch_size", batch_size, 1), ("max_rows", max_rows, 0),
                                 ("block_rows", block_rows, 0), ("num_workers", num_workers, 0),
                                 ("buffer_blocks", buffer_blocks, 1), ("num_shards", num_shards, 1)):
            if int(value) < low:
                raise ConfigError(f"EventLoader {name}={value}; expected an integer >= {low}")
        if not 0 <= int(shard) < int(num_shards):
            raise ConfigError(f"EventLoader shard={shard}; expected 0 <= shard < num_shards={num_shards}")
        self.shard, self.num_shards, self.equal_shards = int(shard), int(num_shards), bool(equal_shards)
        if mode not in LOADER_MODES:
            raise ConfigError(f"EventLoader mode={mode!r}; expected one of {list(LOADER_MODES)}")
        self.split, self.batch_size, self.shuffle, self.seed = split, int(batch_size), shuffle, int(seed)
        self.drop_last, self.num_workers, self.device = drop_last, int(num_workers), torch.device(device)
        total = self.event_file.num_rows(split)
        self.num_rows = min(total, max_rows) if max_rows else total
        self.normalization = normalization or compute_normalization(self.event_file, "train", max_rows=max_rows)
        ef = self.event_file
        if (len(self.normalization.cont_mean), len(self.normalization.globals_mean)) != (ef.cont_dim, ef.globals_dim):
            raise DataError(f"{ef.path}: normalization has {len(self.normalization.cont_mean)} token features and "
                            f"{len(self.normalization.globals_mean)} globals; expected {ef.cont_dim} and "
                            f"{ef.globals_dim} (the file's cont_features and globals_features)")
        chunk = ef.chunk_rows(split) or 1
        self.block_rows = int(block_rows) or chunk * max(1, round(_TARGET_BLOCK_ROWS / chunk))
        nbytes = self.num_rows * ef.row_nbytes
        if mode == "stream" or (mode == "auto" and nbytes > memory_budget_mb * _MB):
            self.mode = "stream"
        elif self.device.type == "cuda" and nbytes <= device_budget_mb * _MB:
            self.mode = "device"
        else:
            self.mode = "memory"
        self._epoch = 0
        if self.mode == "stream":
            self._stream = _BlockStream(ef, split, self.num_rows, self.block_rows, self.batch_size, shuffle,
                                        self.seed, drop_last, self.normalization, int(buffer_blocks),
                                        self.shard, self.num_shards)
        else:
            self._tensors = self._load_split()

    def _load_split(self) -> dict[str, torch.Tensor]:
        """Decode and normalize the whole split block by block, then place it on its device."""
        ef, n = self.event_file, self.num_rows
        arrays = ef.empty_block(n)
        check = RowCheck(ef, self.split)
        for start in range(0, n, self.block_rows):
            stop = min(n, start + self.block_rows)
            view = {k: v[start:stop] for k, v in arrays.items()}
            check.add(start, ef.read_block(self.split, start, stop, out=view))
            self.normalization.apply(view)
        check.raise_if_bad(0, n)  # after the whole split: the count is of all its bad rows
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        if self.mode == "device":
            tensors = {k: v.to(self.device) for k, v in tensors.items()}
        return tensors

    def set_epoch(self, epoch: int) -> None:
        """Fix the order of the next iteration to the one of `epoch` (with this loader's seed)."""
        self._epoch = int(epoch)

    @property
    def shard_rows(self) -> int:
        """Rows of the split this shard holds in memory mode (all of them unsharded)."""
        if self.num_shards == 1:
            return self.num_rows
        if self.equal_shards:
            return self.num_rows // self.num_shards
        return len(range(self.shard, self.num_rows, self.num_shards))

    def __len__(self) -> int:
        if self.mode == "stream":
            self._stream.epoch = self._epoch
            workers = max(1, self.num_workers)
            if self.equal_shards and self.num_shards > 1:
                return min(sum(self._stream.batches_per_worker(workers, s)) for s in range(self.num_shards))
            return sum(self._stream.batches_per_worker(workers))
        return _batch_count(self.shard_rows, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.mode == "stream":
            batches = self._iter_stream()
            if self.equal_shards and self.num_shards > 1:
                batches = itertools.islice(batches, len(self))
        else:
            batches = self._iter_memory()
        to_device = self.mode != "device" and self.device.type != "cpu"
        for batch in batches:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()} if to_device else batch

    def _shard_index(self, storage: torch.device) -> torch.Tensor | None:
        """This epoch's rows of this shard in order, or None for the whole split in file order (views)."""
        if self.shuffle:
            order = _epoch_permutation(self.num_rows, self.seed, self._epoch)
        elif self.num_shards > 1:
            order = torch.arange(self.num_rows)
        else:
            return None
        return order[self.shard::self.num_shards][:self.shard_rows].to(storage)

    def _iter_memory(self) -> Iterator[dict[str, torch.Tensor]]:
        """Slices of one permutation per epoch: no per-sample Python work."""
        index = self._shard_index(self._tensors["labels"].device)
        rows = self.shard_rows
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(rows, (b + 1) * self.batch_size)
            if index is None:
                yield {k: v[lo:hi] for k, v in self._tensors.items()}
            else:
                batch_index = index[lo:hi]
                yield {k: v.index_select(0, batch_index) for k, v in self._tensors.items()}

    def _iter_stream(self) -> Iterator[dict[str, torch.Tensor]]:
        """Blocks in this process, or through DataLoader workers that each open the file themselves."""
        self._stream.epoch = self._epoch
        if not self.num_workers:
            yield from self._stream
            return
        # Workers fork from this process: it must not hold an HDF5 handle across the fork.
        self.event_file.close()
        yield from DataLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                              pin_memory=self.device.type == "cuda")

    def __repr__(self) -> str:
        shard = f", shard={self.shard}/{self.num_shards}" if self.num_shards > 1 else ""
        return (f"EventLoader(split={self.split!r}, mode={self.mode!r}, rows={self.num_rows}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, device={str(self.device)!r}{shard})")


@dataclass
class DataMeta:
    """What a model and a report need to know about the data of a run (saved as data_meta.json)."""

    path: str
    layout: str
    n_tokens: int
    cont_dim: int
    globals_dim: int
    n_token_types: int
    n_classes: int
    cont_features: tuple[str, ...]
    globals_features: tuple[str, ...]
    token_types: tuple[str, ...]
    label_names: tuple[str, ...]
    split_sizes: dict[str, int] = field(default_factory=dict)
    normalization: Normalization | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples as lists, normalization as its dict)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        out["split_sizes"] = dict(self.split_sizes)
        out["normalization"] = self.normalization.to_dict() if self.normalization else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "DataMeta":
        """Rebuild from to_dict() output (e.g. a run's data_meta.json).

        Raises:
            DataError: a field is missing.
        """
        names = [f for f in cls.__dataclass_fields__]
        missing = [f for f in names if f not in data]
        if missing:
            raise DataError(f"data meta lacks keys {missing}; expected {names}")
        values = {f: (tuple(data[f]) if isinstance(data[f], list) else data[f]) for f in names}
        values["split_sizes"] = dict(data["split_sizes"])
        values["normalization"] = Normalization.from_dict(data["normalization"]) if data["normalization"] else None
        return cls(**values)


def _check_training_rows(ef: EventFile, max_rows: int, num_shards: int) -> None:
    """DataError unless train and val have rows (train at least one per shard): no metric over 0 samples."""
    sizes = {s: ef.num_rows(s) for s in ef.splits}
    listed = ", ".join(f"{s} {n}" for s, n in sizes.items())
    for split in ("train", "val"):
        if sizes[split] == 0:
            raise DataError(f"{ef.path}: split {split} has no rows; training needs at least one row in train "
                            f"and in val (the file's split sizes: {listed})")
    rows = min(sizes["train"], max_rows) if max_rows else sizes["train"]
    if rows < num_shards:
        raise DataError(f"{ef.path}: split train has {rows} rows but training runs on {num_shards} processes; "
                        f"each needs at least one row (the file's split sizes: {listed})")


def make_loaders(data_cfg, *, device: str | torch.device, seed: int, shard: int = 0,
                 num_shards: int = 1) -> tuple[dict[str, EventLoader], DataMeta]:
    """Loaders for every split of the file in data_cfg.path, normalized with train statistics.

    Args:
        data_cfg: an object with path, batch_size and optionally eval_batch_size (0: batch_size),
            loader, memory_budget_mb, device_budget_mb, block_rows, num_workers, max_events
            (0: all; caps each split) — a DataConfig or a SimpleNamespace.
        device: where batches land.
        seed: shuffle seed of the train loader (with the epoch set by set_epoch).
        shard, num_shards: this process's part of every split (DDP rank and world size); the
            train shards get equal batch counts.

    Returns:
        ({split: EventLoader} with train shuffled and val/test in file order, DataMeta).

    Raises:
        DataError: the file is unreadable, lacks a train or val split, or one of them has no rows
            (or train has fewer rows than shards: a shard would train on nothing); or a split
            read in memory holds bad data (NaN or inf in a valid token's features or in the
            globals, a token id outside token_types, a label outside label_names); streamed
            splits are checked as each block is read. The message names file, split, dataset,
            the first bad row and how many there are. Nothing is written before these checks.
        ConfigError: a loader setting is out of range.
    """
    ef = EventFile(data_cfg.path)
    missing = [s for s in ("train", "val") if s not in ef.splits]
    if missing:
        raise DataError(f"{ef.path}: splits {missing} not found; training needs train and val "
                        f"(the file has {list(ef.splits)})")
    max_rows = int(getattr(data_cfg, "max_events", 0))
    _check_training_rows(ef, max_rows, num_shards)
    normalization = compute_normalization(ef, "train", max_rows=max_rows)
    eval_batch_size = int(getattr(data_cfg, "eval_batch_size", 0)) or data_cfg.batch_size
    loaders = {
        split: EventLoader(ef, split, batch_size=data_cfg.batch_size if split == "train" else eval_batch_size,
                           shuffle=split == "train", seed=seed, normalization=normalization, device=device,
                           mode=getattr(data_cfg, "loader", "auto"),
                           memory_budget_mb=getattr(data_cfg, "memory_budget_mb", 2048),
                           device_budget_mb=getattr(data_cfg, "device_budget_mb", 4096),
                           block_rows=getattr(data_cfg, "block_rows", 0), max_rows=max_rows,
                           num_workers=getattr(data_cfg, "num_workers", 0), shard=shard, num_shards=num_shards,
                           equal_shards=split == "train")
        for split in ef.splits
    }
    train = loaders["train"]
    if len(train) == 0:  # streamed, train's blocks are shared out whole: too few blocks leave a shard without one
        raise DataError(f"{ef.path}: split train has {train.num_rows} rows in blocks of {train.block_rows}, too few "
                        f"blocks for {num_shards} processes x {max(1, train.num_workers)} workers: a shard would "
                        f"train on nothing; expected a smaller data.block_rows, fewer workers or loader=memory")
    meta = DataMeta(path=str(ef.path), layout=ef.layout, n_tokens=ef.n_tokens, cont_dim=ef.cont_dim,
                    globals_dim=ef.globals_dim, n_token_types=ef.n_token_types, n_classes=ef.n_classes,
                    cont_features=ef.cont_features, globals_features=ef.globals_features,
                    token_types=ef.token_types, label_names=ef.label_names,
                    split_sizes={s: loader.num_rows for s, loader in loaders.items()},
                    normalization=normalization)
    return loaders, meta
