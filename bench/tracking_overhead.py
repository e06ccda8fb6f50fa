"""What a live tracker mirror costs a run: TensorBoard on vs tracking off, and the mirror's own share of the time.

Two figures, from one process, the variants interleaved (the order alternating per repeat), medians quoted:

1. throughput: the training pass's samples/s (scalars.csv, the epochs after the first) of the same
   small run with `tracking.backends: [tensorboard]` and with `[]`; ratio on / off.
2. share: the time spent inside the mirror's calls (`GuardedMirror._call`: every steps.csv row at
   its sync point, every epoch row, the telemetry rows read at epoch ends) divided by the run's
   training time (the sum of its epoch times). Target <= 1 % at a sync point every step, the
   tightest setting.

Usage:

    python bench/tracking_overhead.py                # ~3 minutes on 2 cores
    python bench/tracking_overhead.py --repeats 7 --sync-every 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thesis_lib import load_runs, train
from thesis_lib.data import make_synthetic_events


def config(root: Path, data: Path, name: str, *, tracked: bool, epochs: int, sync_every: int) -> dict:
    return {"output_root": str(root / "outputs"), "run_name": name, "data": {"path": str(data), "batch_size": 256},
            "model": {"encoder": "mlp", "hidden_dim": 128, "latent_dim": 16},
            "trainer": {"epochs": epochs, "seed": 0, "test": False, "sync_every_n_steps": sync_every},
            "telemetry": {"interval_s": 0.5}, "report": {"enabled": False},
            "tracking": {"backends": ["tensorboard"] if tracked else []}}


def one_run(cfg: dict, mirror_seconds: list[float]) -> tuple[float, float]:
    """(median training samples/s after the first epoch, training seconds) of one run."""
    mirror_seconds.clear()
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg, dashboard=None)
    _, per_epoch, order = load_runs(run_dirs=[str(result.run_dir)])
    rows = per_epoch[order[0]].query("split == 'train'")
    return float(rows["throughput"].iloc[1:].median()), float(rows["epoch_time_s"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sync-every", type=int, default=1, help="trainer.sync_every_n_steps (1: a row every step)")
    args = parser.parse_args()

    from thesis_lib.tracking import guard

    mirror_seconds: list[float] = []
    original_call = guard.GuardedMirror._call

    def timed_call(self, method, *call_args):
        start = time.perf_counter()
        try:
            return original_call(self, method, *call_args)
        finally:
            if method in ("sync_point", "epoch", "telemetry"):
                mirror_seconds.append(time.perf_counter() - start)

    guard.GuardedMirror._call = timed_call
    print(f"machine: {platform.node()} · {platform.machine()} · {torch.get_num_threads()} torch threads · "
          f"torch {torch.__version__} · sync every {args.sync_every} step(s)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_synthetic_events(root / "events.h5", n_events=30_000, seed=0, n_tokens=8)
        one_run(config(root, data, "warm", tracked=True, epochs=2, sync_every=args.sync_every), mirror_seconds)
        on, off, shares = [], [], []
        for i in range(args.repeats):
            order = (True, False) if i % 2 == 0 else (False, True)
            for tracked in order:
                throughput, train_s = one_run(config(root, data, f"r{i}", tracked=tracked, epochs=args.epochs,
                                                     sync_every=args.sync_every), mirror_seconds)
                (on if tracked else off).append(throughput)
                if tracked:
                    shares.append(sum(mirror_seconds) / train_s)
        ratios = [a / b for a, b in zip(on, off)]
        print(f"\nthroughput, tensorboard on:  median {statistics.median(on):,.0f} samples/s  {[round(x) for x in on]}")
        print(f"throughput, tracking off:    median {statistics.median(off):,.0f} samples/s  {[round(x) for x in off]}")
        print(f"on / off = {statistics.median(on) / statistics.median(off):.3f} "
              f"(per repeat {[round(r, 3) for r in ratios]})")
        print(f"the mirror's calls: median {100 * statistics.median(shares):.2f} % of the training time "
              f"(per repeat {[round(100 * s, 2) for s in shares]} %)  (target <= 1 %)")


if __name__ == "__main__":
    main()
