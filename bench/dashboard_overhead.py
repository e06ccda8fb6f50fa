"""Training speed with a live dashboard ("text", "widget") vs none: what the dashboard costs the loop.

Three measurements, from the most end-to-end to the most precise:

1. train(): the same config for every variant (the defaults a user gets: sync every 50 steps,
   redraw at most every 250 ms, telemetry on); only `dashboard=` differs. Each repeat runs the
   variants back to back in a rotating order; the figure per run is the median training-pass
   throughput over the epochs after the first; ratios quote medians over repeats.
2. The loop's hot path (`train_epoch`, with the dashboard listening at the run's sync points as
   train() sets it up), one model and loader, the variant rotating every epoch: noise from other
   processes hits neighbouring epochs alike. Steps/s by wall clock and by process CPU time.
3. The dashboards' own work timed alone (control() per step, on_sync per sync point, one redraw)
   and the ratio it predicts for the measured step time.

The widget runs without a frontend (no kernel): its Python side is measured (state updates,
control() after every step, SVG and stats rebuilt at each redraw, trait updates), not the
websocket traffic a browser adds. Usage:

    python bench/dashboard_overhead.py                  # CPU, ~3 minutes on 2 cores
    python bench/dashboard_overhead.py --device cuda    # on a GPU machine
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import torch

from thesis_lib import load_config, train
from thesis_lib.data import make_loaders, make_synthetic_events
from thesis_lib.facts import load_runs
from thesis_lib.live import make_dashboard
from thesis_lib.models import build_model
from thesis_lib.train.epoch import train_epoch
from thesis_lib.train.optim import Precision, build_optimizer
from thesis_lib.train.sync_points import DashboardView, SyncPoints

VARIANTS = ("none", "text", "widget")


def _config(data: Path, out: Path, args: argparse.Namespace) -> dict:
    return {
        "output_root": str(out),
        "run_name": "dash",
        "data": {"path": str(data), "batch_size": args.batch_size},
        "model": {"encoder": "mlp", "bottleneck": "identity", "latent_dim": 16, "hidden_dim": 64, "num_layers": 2},
        "trainer": {"epochs": args.epochs, "seed": 0, "device": args.device, "test": False},
        "report": {"enabled": False},
    }


def run_once(cfg: dict, variant: str) -> float:
    """Median training samples/s over the epochs after the first."""
    result = train(cfg, dashboard=None if variant == "none" else variant)
    _, per_epoch, order = load_runs(run_dirs=[str(result.run_dir)])
    throughput = per_epoch[order[0]].query("split == 'train'")["throughput"].tolist()
    return statistics.median(throughput[1:])


def hot_path_rates(cfg: dict, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Steps/s (wall and CPU) of train_epoch per variant, the variant rotating every epoch."""
    resolved = load_config(cfg)
    device = torch.device(resolved.trainer.device)
    loaders, meta = make_loaders(resolved.data, device=device, seed=0)
    model = build_model(resolved.model, meta).to(device)
    optimizer = build_optimizer(resolved.optim, model.parameters(), device)
    precision = Precision(resolved.trainer.precision, device)
    names = tuple(model.scalar_names)
    steps_per_epoch = len(loaders["train"])
    rates: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in VARIANTS}
    epoch = 0
    for round_ in range(rounds + 1):  # round 0 warms up
        order = VARIANTS[round_ % len(VARIANTS):] + VARIANTS[:round_ % len(VARIANTS)]
        for variant in order:
            dashboard = None if variant == "none" else make_dashboard(variant)
            if dashboard is not None:
                dashboard.on_start({"run_id": "bench", "epochs": 10 ** 6, "start_epoch": 0,
                                    "steps_per_epoch": steps_per_epoch})
            # As train() does: the dashboard listens at sync points, its control() is polled after
            # every step, and one that owns the console also gets a sync point every update interval.
            listeners = [DashboardView(dashboard, steps_per_epoch, lambda: None)] if dashboard is not None else []
            hook = SyncPoints(resolved.trainer.sync_every_n_steps, listeners=listeners,
                              control=dashboard.control if dashboard is not None else None)
            hook.start_epoch(epoch, 1e-3, 0, refresh_s=0.25 if dashboard is not None and dashboard.owns_console else None)
            loaders["train"].set_epoch(epoch)
            wall, cpu = time.perf_counter(), time.process_time()
            stats = train_epoch(model, loaders["train"], optimizer, precision, hook, device=device, names=names,
                                epoch=epoch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if dashboard is not None:
                dashboard.close()
            epoch += 1
            if round_:
                rates[variant]["wall"].append(stats.steps / wall)
                rates[variant]["cpu"].append(stats.steps / cpu)
    return rates


def dashboard_costs(kind: str, steps_per_epoch: int, history: int = 500) -> dict[str, float]:
    """Seconds per control() call (no poll due), per on_sync (no redraw due), and per redraw at full history."""
    dashboard = make_dashboard(kind)
    inner = dashboard.inner
    dashboard.on_start({"run_id": "bench", "epochs": 100, "start_epoch": 0, "steps_per_epoch": steps_per_epoch})
    for epoch in range(history // 10):
        inner.on_epoch_end(epoch, {"loss": 1.0}, {"loss": 1.1, "metric_perplex": 3.0}, 1e-3, 0.5, 1e3, {}, 1.1, True)
    step = [0]

    def sync() -> None:
        step[0] += 1
        inner._next_render = float("inf")  # time the bookkeeping alone; redraws are timed below
        dashboard.on_sync(0, step[0], steps_per_epoch, {"loss": 1.0 / step[0], "loss_recon": 0.5,
                                                        "metric_perplex": 3.0}, step[0] * 64, 1e-3, None)

    per_sync = min(timeit.repeat(sync, number=2000, repeat=5)) / 2000
    inner._next_poll = float("inf")
    per_control = min(timeit.repeat(dashboard.control, number=100_000, repeat=5)) / 100_000

    def render_new_data() -> None:
        inner.state.version += 1  # as after a sync: the charts are rebuilt, the dearer kind of redraw
        inner._render_now()

    per_render = min(timeit.repeat(render_new_data, number=20, repeat=5)) / 20
    dashboard.close()
    return {"control": per_control, "sync": per_sync, "render": per_render}


def predicted_ratio(costs: dict[str, float], step_s: float, sync_every: int = 50, interval_s: float = 0.25) -> float:
    """Throughput with the dashboard over without: its work per step added to a step of `step_s`."""
    per_step = costs["control"] + costs["sync"] / sync_every + costs["render"] * step_s / interval_s
    return step_s / (step_s + per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-events", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15, help="epochs per variant in the hot-path measurement")
    # One thread on CPU: on a shared machine, OpenMP threads spin at barriers whenever another
    # process takes a core, and epoch times then swing by 30x whatever the dashboard does.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_synthetic_events(tmp / "events.h5", n_events=args.n_events, seed=0, n_tokens=16)
        cfg = _config(data, tmp / "out", args)
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for repeat in range(args.repeats):
            order = VARIANTS[repeat % len(VARIANTS):] + VARIANTS[:repeat % len(VARIANTS)]
            for variant in order:
                results[variant].append(run_once(cfg, variant))
            print(f"repeat {repeat + 1}: " + "  ".join(f"{v} {results[v][-1]:,.0f}" for v in VARIANTS), flush=True)
        rates = hot_path_rates(cfg, args.rounds)
    base = statistics.median(results["none"])
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"python {platform.python_version()}, torch {torch.__version__}, device {args.device}")
    print(f"{args.n_events:,} events, batch {args.batch_size}, {args.epochs} epochs, {args.repeats} repeats")
    print("| dashboard | samples/s (median) | steps/s | ratio to none | per-repeat ratios |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        median = statistics.median(results[variant])
        ratios = ", ".join(f"{r / n:.3f}" for r, n in zip(results[variant], results["none"]))
        print(f"| {variant} | {median:,.0f} | {median / args.batch_size:,.1f} | **{median / base:.3f}** | {ratios} |")
    print(f"\nhot path (train_epoch), variant rotating every epoch, {args.rounds} epochs per variant:")
    print("| dashboard | steps/s wall (median) | ratio | steps/CPU-s (median) | ratio |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        wall, cpu = (statistics.median(rates[variant][k]) for k in ("wall", "cpu"))
        base_wall, base_cpu = (statistics.median(rates["none"][k]) for k in ("wall", "cpu"))
        print(f"| {variant} | {wall:,.1f} | **{wall / base_wall:.3f}** | {cpu:,.1f} | **{cpu / base_cpu:.3f}** |")
    step_s = 1.0 / statistics.median(rates["none"]["wall"])
    print(f"\nthe dashboards' own work, timed alone (best of 5), and the ratio it predicts at "
          f"{step_s * 1e3:.1f} ms/step (the hot path above) and at 3 ms/step (a small model on an H100):")
    print("| dashboard | control() per step | on_sync per sync point | one redraw | predicted ratio | at 3 ms/step |")
    print("|---|---|---|---|---|---|")
    for kind in ("text", "widget"):
        costs = dashboard_costs(kind, steps_per_epoch=int(args.n_events * 0.7) // args.batch_size)
        print(f"| {kind} | {costs['control'] * 1e9:.0f} ns | {costs['sync'] * 1e6:.1f} us | "
              f"{costs['render'] * 1e3:.2f} ms | {predicted_ratio(costs, step_s):.4f} | "
              f"{predicted_ratio(costs, 0.003):.4f} |")


if __name__ == "__main__":
    main()
