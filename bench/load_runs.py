"""load_runs over generated run directories vs reading the same files with plain pandas/json/yaml.

Run directories are written with RunWriter as training writes them: config.yaml (the full
resolved default config, bottleneck/latent_dim/seed varied), facts/events.jsonl (on_start, one
on_epoch_end per epoch with train/val metrics and resources, on_train_end, on_test_end) and
facts/scalars.csv (10 epochs x train/val = 20 rows, the autoencoder's full header).

  load_runs   thesis_lib.facts.load_runs(sweep_dir=...): discovery, status, summary columns,
              flattened config, per-epoch frames with aliases
  plain       the floor: os.walk for the runs, then per run yaml.load (the same libyaml
              CSafeLoader), json.loads per events line, pd.read_csv of scalars, and one
              DataFrame of the per-run configs (pd.json_normalize) at the end

Each repeat times both back to back, alternating which goes first (interleaved, so machine
noise hits both alike); figures are medians over repeats, after one untimed warm-up of each
(page cache). Then build_sweep_report (generic analysis, figures on, no inference) on the
smallest sweep, and optionally one render through the notebook. Usage:

    python bench/load_runs.py                         # 100 and 1,000 runs, 3 repeats
    python bench/load_runs.py --sizes 100 300 1000 --repeats 5 --render
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import yaml

from thesis_lib.config import Config
from thesis_lib.record.writer import RunWriter
from thesis_lib.record.schema import config_hash, scalar_columns
from thesis_lib.facts import load_runs
from thesis_lib.reports.sweep_report import build_sweep_report, render_sweep_report

EPOCHS = 10
COLUMNS = scalar_columns(["loss_recon", "loss_tokens", "loss_globals", "loss_commit", "metric_perplex"])
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def write_runs(sweep_dir: Path, n_runs: int) -> None:
    """n_runs finished run directories under <sweep_dir>/runs/."""
    base = Config().to_dict()
    for i in range(n_runs):
        config = json.loads(json.dumps(base))
        config["run_name"] = f"bench{i}"
        config["model"]["bottleneck"] = ("identity", "vq")[i % 2]
        config["model"]["latent_dim"] = (16, 32)[(i // 2) % 2]
        config["trainer"]["seed"] = i // 4
        config["trainer"]["epochs"] = EPOCHS
        run_id = f"run_20260101-000000_bench{i}_{i:04x}"
        run_dir = sweep_dir / "runs" / run_id
        with RunWriter(run_dir, run_id, COLUMNS) as writer:
            writer.write_config(config)
            writer.event("on_start", config_hash=config_hash(config), params={"total": 120_000, "trainable": 120_000},
                         pid=os.getpid(), host=socket.gethostname(), resumed_from_epoch=None, scalar_columns=list(COLUMNS))
            for epoch in range(EPOCHS):
                loss = 3.0 / (epoch + 1) + 0.01 * (i % 7)
                metrics = {"loss": loss, "loss_recon": loss / 3, "loss_tokens": loss / 3, "loss_globals": loss / 3,
                           "loss_commit": 0.01, "metric_perplex": 40.0 + epoch}
                t = 2.0 * (epoch + 1)
                writer.scalars({"epoch": epoch, "split": "train", "step": 50 * (epoch + 1), "t": t, **metrics, "lr": 1e-3,
                                "grad_norm": 0.5, "epoch_time_s": 2.0, "samples": 25_000, "throughput": 12_500.0,
                                "data_wait_frac": 0.02})
                writer.scalars({"epoch": epoch, "split": "val", "step": 50 * (epoch + 1), "t": t,
                                **{k: v * 1.05 for k, v in metrics.items()}, "lr": 1e-3, "epoch_time_s": 2.0,
                                "samples": 5_000, "throughput": 50_000.0})
                writer.event("on_epoch_end", epoch=epoch, step=50 * (epoch + 1), train=metrics,
                             val={k: v * 1.05 for k, v in metrics.items()}, lr=1e-3, grad_norm=0.5, epoch_time_s=2.0,
                             samples=25_000, throughput=12_500.0, best_epoch=epoch, best_val_loss=loss * 1.05,
                             resources={"data_wait_frac": 0.02, "energy_j": None}, energy_so_far_j=None)
            writer.event("on_train_end", status="COMPLETED", stop_reason="max_epochs", best_epoch=EPOCHS - 1,
                         best_val_loss=3.0 / EPOCHS * 1.05, epochs_completed=EPOCHS, steps=50 * EPOCHS,
                         samples=25_000 * EPOCHS, total_time_s=2.0 * EPOCHS)
            writer.event("on_test_end", metrics={"loss": 0.33, "loss_recon": 0.11})


def read_plain(sweep_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The same files read with yaml/json/pandas and nothing else: the floor load_runs is held to."""
    run_dirs = sorted(Path(root) for root, dirs, _ in os.walk(sweep_dir) if "facts" in dirs)
    configs, events, scalars = [], {}, {}
    for run_dir in run_dirs:
        configs.append(yaml.load((run_dir / "config.yaml").read_bytes(), Loader=_YAML_LOADER))
        events[str(run_dir)] = [json.loads(line) for line in (run_dir / "facts" / "events.jsonl").read_bytes().splitlines()]
        scalars[str(run_dir)] = pd.read_csv(run_dir / "facts" / "scalars.csv")
    return pd.json_normalize(configs), scalars


def time_once(function, *args) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def quiet_load_runs(sweep_dir: Path):
    """load_runs with its (absent, here) warnings silenced, so timing prints nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_runs(sweep_dir=sweep_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="run counts to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--render", action="store_true", help="also render the report notebook once (smallest sweep)")
    args = parser.parse_args()
    print(f"machine: {platform.node()}  cpus={os.cpu_count()}  python {platform.python_version()}  pandas {pd.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_load_runs_") as tmp:
        sweeps = {}
        for n in args.sizes:
            sweeps[n] = Path(tmp) / "multiruns" / f"exp_{n}"
            start = time.perf_counter()
            write_runs(sweeps[n], n)
            print(f"wrote {n} runs in {time.perf_counter() - start:.1f} s")
        print(f"\n{'runs':>6} {'load_runs s':>12} {'plain s':>9} {'ratio':>7}   ms/run load_runs, plain")
        for n, sweep_dir in sweeps.items():
            quiet_load_runs(sweep_dir), read_plain(sweep_dir)  # warm-up: page cache, imports
            ours, plain = [], []
            for repeat in range(args.repeats):
                pair = [("ours", quiet_load_runs), ("plain", read_plain)]
                for name, function in pair if repeat % 2 == 0 else pair[::-1]:
                    (ours if name == "ours" else plain).append(time_once(function, sweep_dir))
            a, b = statistics.median(ours), statistics.median(plain)
            print(f"{n:>6} {a:>12.3f} {b:>9.3f} {a / b:>6.2f}x   {1000 * a / n:.2f}, {1000 * b / n:.2f}")
        smallest = sweeps[min(sweeps)]
        timings = []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build_sweep_report(sweep_dir=smallest, analysis="generic", output_dir=Path(tmp) / f"report_{repeat}")
            timings.append(time.perf_counter() - start)
        print(f"\nbuild_sweep_report, generic, {min(sweeps)} runs, 4 figures, no inference: "
              f"median {statistics.median(timings):.2f} s over {args.repeats} ({', '.join(f'{t:.2f}' for t in timings)})")
        if args.render:
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                render_sweep_report(sweep_dir=smallest, analysis="generic", output_dir=Path(tmp) / "rendered")
            print(f"render_sweep_report (papermill + nbconvert), {min(sweeps)} runs: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
