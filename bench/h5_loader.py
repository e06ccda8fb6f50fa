"""Rows/s of one shuffled epoch: EventLoader (memory, stream) vs a per-sample h5py Dataset vs numpy.

The four readers see the same synthetic file and batch size and do the same work per row
(z-scoring, padding zeroed, torch tensors out):

  A  EventLoader, memory mode      the split decoded once (load time printed apart), then slices
                                   of one permutation per epoch
  B  EventLoader, stream mode      contiguous chunk-aligned blocks, shuffled order and buffer
  C  per-sample h5py Dataset       one h5py read per dataset per __getitem__, torch DataLoader
                                   (shuffle=True): the baseline a first version usually writes
  D  numpy in memory               arrays already loaded and normalized: permutation + fancy index

Each repeat runs A, B, C, D back to back (interleaved, so machine noise hits all alike); the
figures are medians over repeats. C is slow, so it is timed on its first --per-sample-batches
batches and its epoch time is scaled from that rate (the output says so). Usage:

    python bench/h5_loader.py                       # about a minute on 2 CPU cores
    python bench/h5_loader.py --n-events 400000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from thesis_lib.data import EventFile, EventLoader, make_synthetic_events
from thesis_lib.data.normalization import compute_normalization


class PerSampleH5(Dataset):
    """One event per __getitem__, read with h5py and normalized the same way as EventLoader."""

    def __init__(self, path: Path, split: str, norm) -> None:
        self.path, self.split, self.file = path, split, None
        self.mean, self.std = np.float32(norm.cont_mean), np.float32(norm.cont_std)
        self.gmean, self.gstd = np.float32(norm.globals_mean), np.float32(norm.globals_std)
        with h5py.File(path) as f:
            self.n = len(f[split]["labels"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        g = self.file[self.split]
        ids = g["tokens_id"][i].astype(np.int64)
        cont = (g["tokens_cont"][i] - self.mean) / self.std
        cont[ids == 0] = 0.0
        return {"tokens_id": torch.from_numpy(ids), "tokens_cont": torch.from_numpy(cont),
                "globals": torch.from_numpy((g["globals"][i] - self.gmean) / self.gstd),
                "labels": torch.tensor(int(g["labels"][i]))}


def cpu_name() -> str:
    """The CPU model: platform.processor() is empty on many Linux machines, /proc/cpuinfo is not."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def epoch_seconds(batches) -> tuple[float, int]:
    """Wall time to draw every batch, and the rows seen."""
    start, rows = time.perf_counter(), 0
    for batch in batches:
        rows += len(batch["labels"])
    return time.perf_counter() - start, rows


def time_per_sample(dataset: PerSampleH5, batch_size: int, max_batches: int, seed: int) -> tuple[float, float]:
    """Epoch seconds scaled from the rate over the first max_batches batches; and the rows timed."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    start, rows = time.perf_counter(), 0
    for b, batch in enumerate(loader):
        rows += len(batch["labels"])
        if b + 1 == max_batches:
            break
    return (time.perf_counter() - start) * len(dataset) / rows, rows


def numpy_epoch(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> float:
    """The in-memory numpy reference: one permutation, fancy-indexed batches, torch tensors out."""
    n = len(arrays["labels"])
    start = time.perf_counter()
    perm = np.random.default_rng(seed).permutation(n)
    for lo in range(0, n, batch_size):
        idx = perm[lo:lo + batch_size]
        {k: torch.from_numpy(v[idx]) for k, v in arrays.items()}
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-events", type=int, default=150_000, help="events in the file (train is 70%%)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (>= 3)")
    parser.add_argument("--per-sample-batches", type=int, default=20, help="batches timed for the per-sample reader")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3: medians of fewer are noise")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = make_synthetic_events(Path(tmp) / "bench.h5", n_events=args.n_events, seed=0)
        print(f"generated {args.n_events} events in {time.perf_counter() - t0:.2f} s -> {path.name}")
        ef = EventFile(path)
        norm = compute_normalization(ef)
        t0 = time.perf_counter()
        memory = EventLoader(ef, "train", batch_size=args.batch_size, shuffle=True, normalization=norm, mode="memory")
        load_s = time.perf_counter() - t0
        stream = EventLoader(ef, "train", batch_size=args.batch_size, shuffle=True, normalization=norm, mode="stream")
        arrays = {k: v.numpy() for k, v in memory._tensors.items()}
        per_sample = PerSampleH5(path, "train", norm)
        n = memory.num_rows
        print(f"train split: {n} rows, batch {args.batch_size}, stream blocks of {stream.block_rows} rows; "
              f"memory mode load (read + normalize once): {load_s:.3f} s")

        times: dict[str, list[float]] = {"A memory": [], "B stream": [], "C per-sample": [], "D numpy": []}
        for r in range(args.repeats):
            memory.set_epoch(r)
            stream.set_epoch(r)
            times["A memory"].append(epoch_seconds(memory)[0])
            times["B stream"].append(epoch_seconds(stream)[0])
            seconds, timed_rows = time_per_sample(per_sample, args.batch_size, args.per_sample_batches, r)
            times["C per-sample"].append(seconds)
            times["D numpy"].append(numpy_epoch(arrays, args.batch_size, r))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"h5py {h5py.__version__}; medians over {args.repeats} interleaved repeats")
    print(f"{'reader':<14} {'epoch s':>9} {'rows/s':>12}")
    for k, s in med.items():
        print(f"{k:<14} {s:9.3f} {n / s:12,.0f}")
    print(f"(C is scaled from its first {timed_rows} rows: {args.per_sample_batches} batches)")
    print(f"\nloader memory / per-sample speedup: {med['C per-sample'] / med['A memory']:.1f}x  (target >= 20x)")
    print(f"stream vs in-memory numpy:         {med['D numpy'] / med['B stream']:.2f}x  (target >= 0.5x)")
    print(f"stream / per-sample speedup:       {med['C per-sample'] / med['B stream']:.1f}x")
    print(f"loader memory vs in-memory numpy:  {med['D numpy'] / med['A memory']:.2f}x")


if __name__ == "__main__":
    main()
