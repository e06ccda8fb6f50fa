"""Steps/s of thesis_lib.train with the telemetry sampler at 0.1 s vs off: the same run, interleaved.

Each repeat trains the same small token-MLP autoencoder twice, sampler on (`telemetry.interval_s`
= 0.1, the fastest allowed) and off (`telemetry.enabled = False`), alternating which goes first so
drift in machine load hits both alike. The figures per run are the median and the best training-pass
steps/s over the epochs after the first (warm-up); the ratios quote medians over repeats, and the
median of the per-repeat ratios (robust to load from other processes on a shared machine). One
untimed run goes first: a process's first run pays one-off costs. Reports are off: they are
rendered after training and are not what is measured.

On a CPU machine train() runs no GPU backend, so by default the bench swaps in the scripted NVML
stand-in (`--backend scripted`): the sampler then runs its whole GPU path (readings, energy
bookkeeping, 10 csv columns a row) beside the training thread, which is the cost being measured.
With `--device cuda` the real NVML backend is used and the sampler's energy is compared with
NVML's counter and with integrated power read over the same run.

A second figure is the sampler's own CPU cost: process CPU time while the main thread sleeps and
the sampler runs alone for a few seconds.

    python bench/telemetry_overhead.py                   # CPU, ~2 minutes on 2 cores
    python bench/telemetry_overhead.py --device cuda     # on a GPU machine (NVML)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thesis_lib import train
from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import load_runs
from thesis_lib.telemetry import ScriptedBackend, TelemetrySampler
from thesis_lib.train import resources as resources_module  # the module: `thesis_lib.train` names the function

SCRIPTED_GPU = [{"name": "Scripted H100", "uuid": "GPU-00000000-bench"}]


def scripted_backend() -> ScriptedBackend:
    """A steady scripted H100 with an energy counter, as NVML would present one."""
    return ScriptedBackend(SCRIPTED_GPU, lambda t, i: {"util": 90, "mem_used_mb": 4200.0, "mem_total_mb": 81559.0,
                                                      "power_w": 310.0, "temp_c": 55, "sm_clock_mhz": 1980},
                           energy_counter=lambda t, i: 310.0 * t)


def config(data: Path, out: Path, args: argparse.Namespace, telemetry: bool) -> dict:
    return {
        "output_root": str(out),
        "run_name": "telemetry_on" if telemetry else "telemetry_off",
        "data": {"path": str(data), "batch_size": args.batch_size},
        "model": {"encoder": "mlp", "bottleneck": "identity", "latent_dim": 32, "hidden_dim": 128, "num_layers": 2},
        "trainer": {"epochs": args.epochs, "seed": 0, "device": args.device, "test": False},
        "telemetry": {"enabled": True, "interval_s": 0.1} if telemetry else {"enabled": False},
        "report": {"enabled": False},
    }


def steps_per_s(cfg: dict, batch_size: int) -> tuple[float, float, Path]:
    """Median and best training steps/s over the epochs after the first, and the run directory.

    The best epoch is timeit's rule: other processes only ever slow an epoch down, while the
    sampler's cost is in every epoch, so the best epoch keeps the cost and sheds the noise.
    """
    result = train(cfg)
    _, per_epoch, order = load_runs(run_dirs=[str(result.run_dir)])
    steps = [x / batch_size for x in per_epoch[order[0]].query("split == 'train'")["throughput"].tolist()[1:]]
    return statistics.median(steps), max(steps), Path(result.run_dir)


def sampler_cpu_cost(backend: str, seconds: float = 5.0) -> float:
    """Milliseconds of CPU per second the sampler uses at 0.1 s, measured with the main thread asleep."""
    with tempfile.TemporaryDirectory() as tmp:
        chosen = scripted_backend() if backend == "scripted" else (None if backend == "none" else "auto")
        sampler = TelemetrySampler(Path(tmp) / "telemetry.csv", interval_s=0.1, backend=chosen).start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        sampler.stop()
    return 1000.0 * (cpu1 - cpu0) / (wall1 - wall0)


def energy_check(run_dir: Path) -> str:
    """On a GPU run: NVML's counter total vs the epochs' energy (mark()) and vs integrated sampled power."""
    import json

    import pandas as pd

    events = [json.loads(line) for line in (run_dir / "facts" / "events.jsonl").read_text().splitlines() if line]
    end = next((e for e in events if e.get("moment") == "on_train_end"), {})
    counter = (end.get("telemetry") or {}).get("energy_j")
    epochs = [(e.get("resources") or {}).get("energy_j") for e in events if e.get("moment") == "on_epoch_end"]
    frame = pd.read_csv(run_dir / "facts" / "telemetry.csv")
    power = frame[[c for c in frame.columns if c.endswith("_power_w")]].sum(axis=1, min_count=1).dropna()
    if counter is None or power.empty:
        return "no GPU energy recorded (see the run's telemetry warning)"
    t = frame.loc[power.index, "t"].to_numpy()
    p = power.to_numpy()
    integrated = float(((p[1:] + p[:-1]) / 2 * (t[1:] - t[:-1])).sum())
    method = (end.get("telemetry") or {}).get("energy_method")
    lines = [f"energy over the run ({method}): {counter:,.1f} J",
             f"  integrated sampled power: {integrated:,.1f} J, ratio {integrated / counter:.4f}"]
    if epochs and all(e is not None for e in epochs):
        lines.append(f"  sum of the epochs' energy (mark(), to the last epoch end): {sum(epochs):,.1f} J, "
                     f"ratio {sum(epochs) / counter:.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["scripted", "none", "auto"], default=None,
                        help="GPU backend of the sampler (default: scripted on CPU, auto (NVML) on CUDA)")
    parser.add_argument("--n-events", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend = args.backend or ("auto" if args.device.startswith("cuda") else "scripted")
    if backend == "scripted":
        resources_module.telemetry_backend = lambda device: scripted_backend()
    elif backend == "auto":
        resources_module.telemetry_backend = lambda device: "auto"
    results: dict[str, list[float]] = {"on": [], "off": [], "on_best": [], "off_best": []}
    last_on_run: Path | None = None
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_events(Path(tmp) / "events.h5", n_events=args.n_events, seed=0)
        # The process's first run pays one-off costs (allocator, oneDNN kernels, page cache): untimed.
        steps_per_s(config(data, Path(tmp) / "outputs", args, False), args.batch_size)
        for repeat in range(args.repeats):
            order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
            for variant in order:
                median, best, run_dir = steps_per_s(config(data, Path(tmp) / "outputs", args, variant == "on"),
                                                    args.batch_size)
                results[variant].append(median)
                results[f"{variant}_best"].append(best)
                if variant == "on":
                    last_on_run = run_dir
            # the load average shows when other processes, not the sampler, slowed a repeat
            print(f"repeat {repeat + 1}: median epoch on {results['on'][-1]:,.1f} / off {results['off'][-1]:,.1f} "
                  f"steps/s, best epoch on {results['on_best'][-1]:,.1f} / off {results['off_best'][-1]:,.1f}, "
                  f"load average {os.getloadavg()[0]:.2f}")
        energy = energy_check(last_on_run) if backend != "none" else None
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, sampler backend {backend}")
    print(f"events {args.n_events:,} (train split ~70 %), batch {args.batch_size}, epochs {args.epochs}, "
          f"repeats {args.repeats}, sampler interval 0.1 s")
    for figure in ("median epoch", "best epoch"):
        suffix = "" if figure == "median epoch" else "_best"
        ratios = sorted(on / off for on, off in zip(results["on" + suffix], results["off" + suffix]))
        print(f"{figure}: on {med['on' + suffix]:,.1f} steps/s, off {med['off' + suffix]:,.1f} steps/s; "
              f"ratio on / off = {med['on' + suffix] / med['off' + suffix]:.4f} (medians), "
              f"{statistics.median(ratios):.4f} (median of per-repeat ratios)  (target >= 0.99)")
        print(f"  per-repeat ratios, sorted: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"sampler CPU alone at 0.1 s ({backend}): {sampler_cpu_cost(backend):.2f} ms per s")
    if energy:
        print(energy)


if __name__ == "__main__":
    main()
