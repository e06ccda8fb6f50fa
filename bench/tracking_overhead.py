"""What a live tracker mirror costs a run: a tracker on vs tracking off, and the mirror's share of the time.

Three figures, from one process, the variants interleaved (the order alternating per repeat), medians quoted:

1. throughput: the training pass's samples/s (scalars.csv, the epochs after the first) of the same
   small run with `tracking.backends: [<backend>]` and with `[]`; ratio on / off.
2. in the step: the time the training thread spends handing records to the trackers
   (`GuardedMirror.sync_point`, `.epoch`, `.poll_telemetry`: a queue put each since the trackers are
   fed from a worker thread) over the run's training time (the sum of its epoch times). Target <= 1 %
   at a sync point every step, the tightest setting.
3. in the worker: the time the trackers themselves take (`GuardedMirror._call` for steps, epoch and
   telemetry rows, on the worker thread) over the same training time: CPU the run shares, not time
   the step waits for.

Usage:

    python bench/tracking_overhead.py                # ~3 minutes on 2 cores
    python bench/tracking_overhead.py --repeats 7 --sync-every 10 --backend mlflow
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


def config(root: Path, data: Path, name: str, *, tracked: bool, epochs: int, sync_every: int,
           backend: str = "tensorboard") -> dict:
    return {"output_root": str(root / "outputs"), "run_name": name, "data": {"path": str(data), "batch_size": 256},
            "model": {"encoder": "mlp", "hidden_dim": 128, "latent_dim": 16},
            "trainer": {"epochs": epochs, "seed": 0, "test": False, "sync_every_n_steps": sync_every},
            "telemetry": {"interval_s": 0.5}, "report": {"enabled": False},
            "tracking": {"backends": [backend] if tracked else []}}


def one_run(cfg: dict, *timers: list[float]) -> tuple[float, float]:
    """(median training samples/s after the first epoch, training seconds) of one run."""
    for timer in timers:
        timer.clear()
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
    parser.add_argument("--backend", default="tensorboard", choices=("tensorboard", "mlflow", "wandb"))
    args = parser.parse_args()

    from thesis_lib.tracking import guard

    worker_seconds: list[float] = []  # inside the trackers, on the worker thread
    step_seconds: list[float] = []  # handing records over, on the training thread
    original_call = guard.GuardedMirror._call

    def timed_call(self, method, *call_args):
        start = time.perf_counter()
        try:
            return original_call(self, method, *call_args)
        finally:
            if method in ("sync_point", "epoch", "telemetry"):
                worker_seconds.append(time.perf_counter() - start)

    def timed_handover(name):
        original = getattr(guard.GuardedMirror, name)

        def handover(self, *call_args):
            start = time.perf_counter()
            try:
                return original(self, *call_args)
            finally:
                step_seconds.append(time.perf_counter() - start)

        setattr(guard.GuardedMirror, name, handover)

    for name in ("sync_point", "epoch", "poll_telemetry"):
        timed_handover(name)
    guard.GuardedMirror._call = timed_call
    print(f"machine: {platform.node()} · {platform.machine()} · {torch.get_num_threads()} torch threads · "
          f"torch {torch.__version__} · sync every {args.sync_every} step(s) · backend {args.backend}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_synthetic_events(root / "events.h5", n_events=30_000, seed=0, n_tokens=8)
        one_run(config(root, data, "warm", tracked=True, epochs=2, sync_every=args.sync_every, backend=args.backend),
                worker_seconds, step_seconds)
        on, off, in_step, in_worker = [], [], [], []
        for i in range(args.repeats):
            order = (True, False) if i % 2 == 0 else (False, True)
            for tracked in order:
                throughput, train_s = one_run(config(root, data, f"r{i}", tracked=tracked, epochs=args.epochs,
                                                     sync_every=args.sync_every, backend=args.backend),
                                              worker_seconds, step_seconds)
                (on if tracked else off).append(throughput)
                if tracked:
                    in_step.append(sum(step_seconds) / train_s)
                    in_worker.append(sum(worker_seconds) / train_s)
        ratios = [a / b for a, b in zip(on, off)]
        print(f"\nthroughput, {args.backend} on: median {statistics.median(on):,.0f} samples/s  {[round(x) for x in on]}")
        print(f"throughput, tracking off:    median {statistics.median(off):,.0f} samples/s  {[round(x) for x in off]}")
        print(f"on / off = {statistics.median(on) / statistics.median(off):.3f} "
              f"(per repeat {[round(r, 3) for r in ratios]})")
        print(f"in the step (handing records over): median {100 * statistics.median(in_step):.2f} % of the training "
              f"time (per repeat {[round(100 * s, 2) for s in in_step]} %)  (target <= 1 %)")
        print(f"in the worker thread (the tracker itself): median {100 * statistics.median(in_worker):.2f} % "
              f"(per repeat {[round(100 * s, 2) for s in in_worker]} %)")


if __name__ == "__main__":
    main()
