"""Samples/s of thesis_lib.train (facts on) vs a plain PyTorch loop vs Lightning's Trainer.

Same model (a small token MLP autoencoder), same data, same batch size. A fourth variant runs the
plain loop over thesis_lib's own loader, to separate what the loader gains from what train() costs.
Each repeat runs the variants back to back (interleaved, so machine noise hits all alike; the order
rotates from one repeat to the next); the figure per repeat is the median training-pass throughput
over the epochs after the first (warm-up); the ratios quote medians over repeats, and each repeat's
own ratio train() / plain-on-the-same-loader is listed.

Each case ends with a paired measurement (`--paired-epochs`): train()'s step and the plain step
alternating step by step on the same batches (two copies of the model), which resolves a few
percent where the run-level figures, on a shared machine, do not.

Two cases (`--case`, both by default):

- default: hidden 128, batch 512 (the model and batch above), where the step's arithmetic dominates;
- tiny: hidden 8, latent 4, batch 64, a launch-bound step (kernel launches and Python, no
  arithmetic to speak of), where every microsecond the loop adds around the step shows. It runs
  train() and the plain loop on the same loader only, and reports microseconds per step for both
  and the difference.

Usage:

    python bench/loop_overhead.py                          # CPU, both cases, ~15 minutes on 2 cores
    python bench/loop_overhead.py --case tiny --repeats 7  # the launch-bound case alone
    python bench/loop_overhead.py --device cuda            # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from thesis_lib import load_config, train
from thesis_lib.data import make_loaders, make_synthetic_events
from thesis_lib.facts import load_runs
from thesis_lib.models import build_model


# The two cases: the model and batch each runs (everything else is shared).
CASES = {
    "default": {"model": {"latent_dim": 32, "hidden_dim": 128}, "batch_size": 512},
    "tiny": {"model": {"latent_dim": 4, "hidden_dim": 8, "token_embed_dim": 4}, "batch_size": 64},
}


def _config(data: Path, out: Path, args: argparse.Namespace, case: str) -> dict:
    spec = CASES[case]
    return {
        "output_root": str(out),
        "run_name": f"bench-{case}",
        "data": {"path": str(data), "batch_size": args.batch_size or spec["batch_size"]},
        "model": {"encoder": "mlp", "bottleneck": "identity", "num_layers": 2, **spec["model"]},
        "trainer": {"epochs": args.epochs, "seed": 0, "device": args.device, "test": False},
        # telemetry stays on (its default); the report renders after training, outside the timing
        "report": {"enabled": False},
    }


def _us_per_step(samples_per_s: float, rows: int, batch_size: int) -> float:
    """Microseconds per step of an epoch over `rows` rows (the last batch may be partial)."""
    return rows / samples_per_s / math.ceil(rows / batch_size) * 1e6


def run_thesis_lib(cfg: dict) -> float:
    result = train(cfg)
    _, per_epoch, order = load_runs(run_dirs=[str(result.run_dir)])
    tp = per_epoch[order[0]].query("split == 'train'")["throughput"].tolist()
    return statistics.median(tp[1:])


def _tensors(cfg: dict, device: torch.device):
    resolved = load_config(cfg)
    loaders, meta = make_loaders(resolved.data, device=torch.device("cpu"), seed=0)
    parts = {k: [] for k in ("tokens_id", "tokens_cont", "globals", "labels")}
    for batch in loaders["train"]:
        for key in parts:
            parts[key].append(batch[key])
    return resolved, meta, {k: torch.cat(v) for k, v in parts.items()}


def run_plain(cfg: dict, device: torch.device) -> float:
    """The loop a researcher writes by hand: DataLoader over a TensorDataset, shuffle, Adam."""
    resolved, meta, data = _tensors(cfg, device)
    torch.manual_seed(0)
    model = build_model(resolved.model, meta).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=resolved.optim.lr)
    dataset = torch.utils.data.TensorDataset(data["tokens_id"], data["tokens_cont"], data["globals"], data["labels"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=resolved.data.batch_size, shuffle=True)
    rates = []
    for _ in range(resolved.trainer.epochs):
        model.train()
        start, seen, running = time.perf_counter(), 0, 0.0
        for tokens_id, tokens_cont, globals_, labels in loader:
            batch = {"tokens_id": tokens_id.to(device), "tokens_cont": tokens_cont.to(device),
                     "globals": globals_.to(device), "labels": labels.to(device)}
            loss = model.loss_and_metrics(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
            seen += labels.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def run_plain_on_loader(cfg: dict, device: torch.device) -> float:
    """The same hand-written loop over thesis_lib's own loader: isolates what train() adds around the step."""
    resolved = load_config(cfg)
    loaders, meta = make_loaders(resolved.data, device=device, seed=0)
    torch.manual_seed(0)
    model = build_model(resolved.model, meta).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=resolved.optim.lr)
    rates = []
    for epoch in range(resolved.trainer.epochs):
        loaders["train"].set_epoch(epoch)
        model.train()
        start, seen = time.perf_counter(), 0
        for batch in loaders["train"]:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model.loss_and_metrics(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += batch["labels"].shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def paired_steps(cfg: dict, device: torch.device, epochs: int) -> tuple[list[float], list[float]]:
    """Seconds per step of train()'s step and of the plain loop's, alternating step by step on the same batches.

    Run-level comparisons are at the mercy of a shared machine whose speed drifts by tens of
    percent within seconds; here each train() step and each plain step run back to back, on two
    copies of the same model, so drift hits both alike. train()'s side is `train_epoch` with the
    SyncPoints hook and listeners `fit` gives it (steps.csv rows, the headless text dashboard's
    control and on_sync); the plain side is the hand-written step (zero_grad, backward, Adam).
    Fetching a batch is counted in neither. The first epoch is dropped as warm-up.
    """
    from thesis_lib.live import make_dashboard
    from thesis_lib.train.epoch import train_epoch
    from thesis_lib.train.optim import Precision, build_optimizer
    from thesis_lib.train.sync_points import DashboardView, StepRows, SyncPoints

    resolved = load_config(cfg)
    loaders, meta = make_loaders(resolved.data, device=device, seed=0)
    torch.manual_seed(0)
    model = build_model(resolved.model, meta).to(device)
    twin = copy.deepcopy(model)
    optimizer = build_optimizer(resolved.optim, model.parameters(), device)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=resolved.optim.lr)
    loader, steps = loaders["train"], len(loaders["train"])
    dashboard = make_dashboard("text")
    dashboard.on_start({"run_id": "paired", "epochs": epochs, "start_epoch": 0, "steps_per_epoch": steps})
    hook = SyncPoints(resolved.trainer.sync_every_n_steps, control=dashboard.control,
                      listeners=[StepRows(time.time()), DashboardView(dashboard, steps, lambda: None)])
    ours: list[float] = []
    plain: list[float] = []

    class Paired:
        """The batches train_epoch steps through; before handing one over, the plain step runs on it."""

        device = loader.device

        def __len__(self) -> int:
            return steps

        def __iter__(self):
            handed, batches = None, iter(loader)
            while True:
                asked = time.perf_counter()  # train_epoch's previous step is done
                if handed is not None:
                    ours.append(asked - handed)
                batch = next(batches, None)
                if batch is None:
                    return
                start = time.perf_counter()
                moved = {k: v.to(device) for k, v in batch.items()}
                loss = twin.loss_and_metrics(moved)["loss"]
                twin_optimizer.zero_grad()
                loss.backward()
                twin_optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                plain.append(time.perf_counter() - start)
                handed = time.perf_counter()
                yield batch

    precision = Precision(resolved.trainer.precision, device)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        hook.start_epoch(epoch, resolved.optim.lr, 0)
        train_epoch(model, Paired(), optimizer, precision, hook, device=device, names=tuple(model.scalar_names),
                    epoch=epoch)
    dashboard.close()
    return ours[steps:], plain[steps:]


def run_lightning(cfg: dict, device: torch.device) -> float:
    """Lightning's Trainer with its defaults (progress bar off: it only adds terminal noise here)."""
    import lightning as L

    resolved, meta, data = _tensors(cfg, device)
    torch.manual_seed(0)
    model = build_model(resolved.model, meta)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            tokens_id, tokens_cont, globals_, labels = batch
            return self.model.loss_and_metrics({"tokens_id": tokens_id, "tokens_cont": tokens_cont,
                                                "globals": globals_, "labels": labels})["loss"]

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=resolved.optim.lr)

    class EpochTimer(L.Callback):
        def __init__(self):
            self.rates, self.start = [], 0.0

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.rates.append(len(data["labels"]) / (time.perf_counter() - self.start))

    timer = EpochTimer()
    dataset = torch.utils.data.TensorDataset(data["tokens_id"], data["tokens_cont"], data["globals"], data["labels"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=resolved.data.batch_size, shuffle=True)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_epochs=resolved.trainer.epochs, accelerator=device.type, devices=1,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], default_root_dir=root)
        trainer.fit(Module(), loader)
    return statistics.median(timer.rates[1:])


def run_case(case: str, data: Path, out: Path, args: argparse.Namespace, device: torch.device) -> None:
    cfg = _config(data, out / case, args, case)
    runners = {"thesis_lib": lambda: run_thesis_lib(cfg), "plain_on_loader": lambda: run_plain_on_loader(cfg, device)}
    if case == "default":  # the tiny case compares train() with the plain loop on the same loader alone
        runners["plain"] = lambda: run_plain(cfg, device)
        if not args.no_lightning and importlib.util.find_spec("lightning") is not None:
            runners["lightning"] = lambda: run_lightning(cfg, device)
        elif not args.no_lightning:
            print("[default] lightning is not installed here: its variant is skipped", flush=True)
    results: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate who goes first
        for name in order:
            results[name].append(runners[name]())
        print(f"[{case}] repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items())
              + f"; train()/plain_on_loader {results['thesis_lib'][-1] / results['plain_on_loader'][-1]:.3f}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    batch = cfg["data"]["batch_size"]
    rows = make_loaders(load_config(cfg).data, device=torch.device("cpu"), seed=0)[1].split_sizes["train"]
    ratios = [a / b for a, b in zip(results["thesis_lib"], results["plain_on_loader"])]
    print(f"\n[{case}] model {cfg['model']}, batch {batch}, events {args.n_events:,} (train split ~{rows:,} rows), "
          f"epochs {args.epochs}, repeats {args.repeats}")
    for name, value in med.items():
        print(f"  {name:<15} median {value:>10,.0f} samples/s  {_us_per_step(value, rows, batch):>8,.0f} us/step")
    ours, plain = (_us_per_step(med[k], rows, batch) for k in ("thesis_lib", "plain_on_loader"))
    print(f"  per-repeat train()/plain_on_loader: {', '.join(f'{r:.3f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.3f})")
    print(f"  ratio thesis_lib / plain_on_loader = {med['thesis_lib'] / med['plain_on_loader']:.3f}  (target >= 0.97)")
    print(f"  train() adds {ours - plain:+,.0f} us per step over the plain loop on the same loader "
          f"({100 * (ours - plain) / plain:+.1f} %, target <= 3 %)")
    if "plain" in med:
        print(f"  ratio thesis_lib / plain     = {med['thesis_lib'] / med['plain']:.3f}  (>= 2.0 expected on GPU)")
    if "lightning" in med:
        print(f"  ratio lightning  / plain     = {med['lightning'] / med['plain']:.3f}")
        print(f"  ratio thesis_lib / lightning = {med['thesis_lib'] / med['lightning']:.3f}")
    if args.paired_epochs > 1:
        ours_s, plain_s = paired_steps(cfg, device, args.paired_epochs)
        diff = [a - b for a, b in zip(ours_s, plain_s)]
        mean_plain = statistics.mean(plain_s)
        print(f"  paired steps ({len(diff):,}, train()'s step and the plain step alternating): plain "
              f"{mean_plain * 1e6:,.0f} us, train()'s {statistics.mean(ours_s) * 1e6:,.0f} us per step (means); "
              f"train() adds {statistics.mean(diff) * 1e6:+,.1f} us (mean; median {statistics.median(diff) * 1e6:+,.1f})"
              f" = {100 * statistics.mean(diff) / mean_plain:+.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", choices=["both", *CASES], default="both")
    parser.add_argument("--n-events", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the case's own (512 default, 64 tiny)")
    parser.add_argument("--epochs", type=int, default=6, help="per run; the first is dropped as warm-up")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-lightning", action="store_true")
    parser.add_argument("--paired-epochs", type=int, default=5,
                        help="epochs of the step-by-step paired measurement per case (0: skip it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_events(Path(tmp) / "events.h5", n_events=args.n_events, seed=0)
        for case in (CASES if args.case == "both" else [args.case]):
            run_case(case, data, Path(tmp) / "outputs", args, device)


if __name__ == "__main__":
    main()
