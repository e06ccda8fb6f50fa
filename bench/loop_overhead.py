"""Samples/s of thesis_lib.train (facts on) vs a plain PyTorch loop vs Lightning's Trainer.

Same model (a small token MLP autoencoder), same data, same batch size. A fourth variant runs the
plain loop over thesis_lib's own loader, to separate what the loader gains from what train() costs. Each repeat runs the three
back to back (interleaved, so machine noise hits all alike); the figure per repeat is the median
training-pass throughput over the epochs after the first (warm-up); the ratios quote medians over
repeats. Usage:

    python bench/loop_overhead.py                 # CPU, ~2 minutes on 2 cores
    python bench/loop_overhead.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
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


def _config(data: Path, out: Path, args: argparse.Namespace) -> dict:
    return {
        "output_root": str(out),
        "run_name": "bench",
        "data": {"path": str(data), "batch_size": args.batch_size},
        "model": {"encoder": "mlp", "bottleneck": "identity", "latent_dim": 32, "hidden_dim": 128, "num_layers": 2},
        "trainer": {"epochs": args.epochs, "seed": 0, "device": args.device, "test": False},
        # telemetry stays on (its default); the report renders after training, outside the timing
        "report": {"enabled": False},
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-events", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-lightning", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_events(Path(tmp) / "events.h5", n_events=args.n_events, seed=0)
        cfg = _config(data, Path(tmp) / "outputs", args)
        results = {"thesis_lib": [], "plain": [], "plain_on_loader": [], "lightning": []}
        for repeat in range(args.repeats):
            results["thesis_lib"].append(run_thesis_lib(cfg))
            results["plain"].append(run_plain(cfg, device))
            results["plain_on_loader"].append(run_plain_on_loader(cfg, device))
            if not args.no_lightning:
                results["lightning"].append(run_lightning(cfg, device))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items() if v))
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, device {device}")
    print(f"events {args.n_events:,} (train split ~70 %), batch {args.batch_size}, epochs {args.epochs}, repeats {args.repeats}")
    for name, value in med.items():
        print(f"  {name:<15} median {value:>10,.0f} samples/s")
    print(f"ratio thesis_lib / plain     = {med['thesis_lib'] / med['plain']:.3f}  (target >= 0.97 on CPU, >= 2.0 on GPU)")
    print(f"ratio thesis_lib / plain_on_loader = {med['thesis_lib'] / med['plain_on_loader']:.3f}  (what facts, checks and accumulation cost)")
    if "lightning" in med:
        print(f"ratio lightning  / plain     = {med['lightning'] / med['plain']:.3f}")
        print(f"ratio thesis_lib / lightning = {med['thesis_lib'] / med['lightning']:.3f}")


if __name__ == "__main__":
    main()
