"""What a run report costs: the in-process render against papermill's, at the end of a run, and in a sweep.

Three measurements, each in this one process, the variants interleaved (A B A B ..., the order
alternating from one repeat to the next) so a noisy shared machine hits them alike; medians quoted:

1. render: `render_run_report(run_dir)` in this process vs `engine="papermill"` (a fresh kernel,
   what `papermill report_templates/run_report.ipynb` does) on the same 3-epoch run. Prints
   in-process ÷ papermill (target <= 0.25).
2. end of run: `train()` of a small 1-epoch run with `report.enabled` on vs off; the difference of
   the medians is what the report adds to a run (target <= 1.5 s on 2 cores).
3. sweep: a 4-point inline sweep of small runs with reports on vs off; the share of the sweep's
   time spent on reports = (on - off) / on.

Usage:

    python bench/report_render.py               # ~3 minutes on 2 cores
    python bench/report_render.py --repeats 5
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

from thesis_lib import sweep, train
from thesis_lib.data import make_synthetic_events
from thesis_lib.reports import render_run_report

SMALL_MODEL = {"encoder": "mlp", "hidden_dim": 32, "num_layers": 1, "latent_dim": 8}


def small_config(root: Path, data: Path, name: str, *, epochs: int, report: bool) -> dict:
    return {"output_root": str(root / "outputs"), "run_name": name, "data": {"path": str(data), "batch_size": 128},
            "model": SMALL_MODEL, "trainer": {"epochs": epochs, "seed": 0, "test": True},
            "report": {"enabled": report}}


def timed(fn) -> float:
    """Seconds `fn()` takes, its printing swallowed (the runs' logs are in their directories)."""
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def interleaved(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """`repeats` timings of each, alternating which goes first."""
    times_a, times_b = [], []
    for i in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)) if i % 2 == 0 else ((b, times_b), (a, times_a)):
            times.append(timed(fn))
    return times_a, times_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{torch.get_num_threads()} torch threads · python {platform.python_version()} · torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_synthetic_events(root / "events.h5", n_events=2_000, seed=0, n_tokens=8)

        # Warm-up: imports, matplotlib's font cache, the first kernel start, outside every timing.
        with contextlib.redirect_stdout(io.StringIO()):
            run_dir = Path(train(small_config(root, data, "render", epochs=3, report=False)).run_dir)
            render_run_report(run_dir, root / "warm_a")
            render_run_report(run_dir, root / "warm_b", engine="papermill")

        fast, papermill = interleaved(lambda: render_run_report(run_dir, root / "fast"),
                                      lambda: render_run_report(run_dir, root / "pm", engine="papermill"),
                                      args.repeats)
        print(f"\n1. render one run's report ({args.repeats} repeats, interleaved)")
        print(f"   in-process: median {statistics.median(fast):.2f} s  {_list(fast)}")
        print(f"   papermill:  median {statistics.median(papermill):.2f} s  {_list(papermill)}")
        print(f"   in-process / papermill = {statistics.median(fast) / statistics.median(papermill):.3f}  (target <= 0.25)")

        on, off = interleaved(lambda: train(small_config(root, data, "on", epochs=1, report=True)),
                              lambda: train(small_config(root, data, "off", epochs=1, report=False)), args.repeats)
        print(f"\n2. train() of a 1-epoch small run ({args.repeats} repeats, interleaved)")
        print(f"   report on:  median {statistics.median(on):.2f} s  {_list(on)}")
        print(f"   report off: median {statistics.median(off):.2f} s  {_list(off)}")
        print(f"   the report adds {statistics.median(on) - statistics.median(off):.2f} s  (target <= 1.5 s)")

        sweeps = iter(range(10_000))

        def a_sweep(report: bool):
            # A fresh sweep directory each time: re-running a sweep would skip its completed points.
            base = small_config(root, data, "s", epochs=1, report=report)
            return lambda: sweep(base=base, grid={"model.latent_dim": [4, 8], "model.bottleneck": ["identity", "linear"]},
                                 name=f"report_{'on' if report else 'off'}",
                                 sweep_dir=root / "multiruns" / f"exp_{next(sweeps)}")

        sweep_on, sweep_off = interleaved(a_sweep(True), a_sweep(False), args.repeats)
        share = (statistics.median(sweep_on) - statistics.median(sweep_off)) / statistics.median(sweep_on)
        print(f"\n3. a 4-point inline sweep of small 1-epoch runs ({args.repeats} repeats, interleaved)")
        print(f"   reports on:  median {statistics.median(sweep_on):.2f} s  {_list(sweep_on)}")
        print(f"   reports off: median {statistics.median(sweep_off):.2f} s  {_list(sweep_off)}")
        print(f"   share of the sweep spent on reports: {100 * share:.0f} %")


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
