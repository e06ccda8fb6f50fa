"""The hot path: one training epoch (`train_epoch`) and one evaluation pass (`evaluate`).

One step of `train_epoch`, top to bottom: fetch a batch; forward and backward (under DDP the
gradient all-reduce happens on an accumulation's last micro-batch only); an optimizer step when
the accumulation is complete; the step's metrics kept, on the device; then one question to the
run's `SyncPoints` hook (sync_points.py): "is this a sync point?". Only when it is does the host
read anything back: the running means, summed over ranks under DDP, handed to the hook once.

The step does no I/O and no per-step `.item()` (one cost +16 % on a 3 ms H100 step), and launches
no kernel of its own besides the model's and the optimizer's: `MetricAccumulator.add` only keeps
the step's 0-dim metric tensors, and the sums are taken on the host at the sync point. (Adding
them up on the device every step took eight kernel launches: most of what the loop used to add to
a launch-bound step.)
What varies from run to run sits behind named helpers instead of branches in the step:
`GradAccumulation` (is this micro-batch the last of an accumulation? its share of the loss; DDP's
`no_sync`) and `MetricAccumulator.read(ranks)` (the running means, summed over ranks or not).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import ContextManager, Iterable, Mapping, Optional, Sequence

import torch

from ..errors import NonFiniteLossError
from .distributed import SINGLE_PROCESS, DistributedContext
from .optim import Precision
from .sync_points import SyncPoints

__all__ = ["MetricAccumulator", "GradAccumulation", "EpochStats", "StopRequested", "train_epoch", "evaluate",
           "confusion_matrix"]

Batch = Mapping[str, torch.Tensor]

# Step tensors kept before `add` stacks them into one (a launch, no sync): bounds what waits on the
# device when sync points are far apart (sync_every_n_steps in the thousands, a long eval pass).
_STACK_AT = 4096
_NO_CONTEXT = contextlib.nullcontext()  # reusable: entering it does nothing


class StopRequested(Exception):
    """The user asked a dashboard to stop: the current step has finished, nothing is lost."""


class MetricAccumulator:
    """Batch-size-weighted sums of each step's 0-dim metric tensors (the first name is the loss).

    `add` launches no kernel: it keeps the step's tensors where they are and its batch size.
    `read` stacks what was kept into one tensor, copies it to the host in one transfer (the sync
    point) and adds `n * value` per step in float64, in step order. These are the sums a float64
    accumulator on the device gave, to the bit: `n * value` is exact in float64 for float32,
    bf16 and fp16 values and n < 2**29, so only the additions round, and they round alike.
    """

    def __init__(self, names: Sequence[str], device: torch.device):
        self.names = tuple(names)
        self._loss, self._rest = self.names[0], self.names[1:]
        self.device = device
        self.sums = [0.0] * len(self.names)
        self.count = 0  # samples added on this rank
        self._sizes: list[int] = []  # batch size of each step not yet summed
        self._waiting: list[torch.Tensor] = []  # their metric tensors, len(names) per step
        self._stacked: list[torch.Tensor] = []  # earlier waiting tensors, stacked

    def add(self, values: Mapping[str, torch.Tensor], n: int) -> None:
        """Keep one step's metrics (the loss without its graph) and its batch size `n`."""
        self._waiting.append(values[self._loss].detach())
        self._waiting.extend(map(values.__getitem__, self._rest))
        self._sizes.append(n)
        self.count += n
        if len(self._waiting) >= _STACK_AT:
            with torch.no_grad():
                self._stacked.append(torch.stack(self._waiting))
            self._waiting = []

    def read(self, ranks: DistributedContext = SINGLE_PROCESS, stop: bool = False) -> tuple[dict[str, float], int, bool]:
        """(means since the start, samples, stop): note: a CPU-GPU sync point, and under DDP a collective.

        The means are {} when no sample was seen (over all ranks under DDP).

        Under DDP (`ranks.enabled`) sums and samples are summed over ranks, and `stop` rides along
        in the same collective and comes back true if any rank asked, so every rank acts on a
        user's Stop at the same step; alone they are this process's own.
        """
        self._sum_waiting()
        if not ranks.enabled:
            return self._means(self.sums, self.count), self.count, stop
        totals = torch.tensor([*self.sums, self.count, float(stop)], dtype=torch.float64, device=self.device)
        *sums, count, stops = ranks.all_reduce_sum(totals).tolist()
        count = int(round(count))
        return self._means(sums, count), count, stops > 0

    def _means(self, sums: Sequence[float], count: int) -> dict[str, float]:
        """name -> sum / count; empty when no sample was seen: a mean over 0 samples is absent, not 0.0."""
        return dict(zip(self.names, (s / count for s in sums))) if count else {}

    def _sum_waiting(self) -> None:
        """Add the kept steps to the host sums, in step order (one stack and one copy to the host)."""
        if not self._sizes:
            return
        with torch.no_grad():
            parts = self._stacked + ([torch.stack(self._waiting)] if self._waiting else [])
            flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()  # note: the sync point
        width, sums = len(self.names), self.sums
        for i, n in enumerate(self._sizes):
            sums = [s + n * v for s, v in zip(sums, flat[i * width:(i + 1) * width])]
        self.sums = sums
        self._sizes, self._waiting, self._stacked = [], [], []


class GradAccumulation:
    """`steps` micro-batches per optimizer step, and what that means for each micro-batch.

    Args:
        steps: micro-batches per optimizer step (`trainer.grad_accum_steps`).
        model: the module the step calls; under DDP its `no_sync` defers the gradient all-reduce.
        batches: the epoch's micro-batches when known: the last one then ends a partial
            accumulation, and under DDP its gradients are all-reduced like any last micro-batch.
    """

    def __init__(self, steps: int, model: torch.nn.Module, batches: Optional[int] = None):
        self.steps = steps
        self.batches = batches
        self._no_sync = getattr(model, "no_sync", None)  # DDP only

    def ends_step(self, batch: int) -> bool:
        """Whether micro-batch `batch` (counted from 1 in the epoch) is the last of an accumulation."""
        return batch % self.steps == 0 or batch == self.batches

    def loss_share(self, loss: torch.Tensor) -> torch.Tensor:
        """What one micro-batch back-propagates: its loss over the accumulation's length."""
        return loss / self.steps if self.steps > 1 else loss

    def gradient_sync(self, batch: int) -> ContextManager:
        """Under DDP, micro-batches that do not end an accumulation skip the gradient all-reduce."""
        if self._no_sync is None or self.ends_step(batch):
            return _NO_CONTEXT
        return self._no_sync()


@dataclass
class EpochStats:
    """One pass's means (`metrics`, {} over 0 samples), samples, optimizer steps and timings."""

    metrics: dict[str, float]
    samples: int
    steps: int
    seconds: float
    grad_norm: Optional[float] = None
    data_wait_frac: Optional[float] = None

    @property
    def throughput(self) -> Optional[float]:
        """Samples per second; None over 0 samples (no rate was measured)."""
        if self.samples == 0:
            return None
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def _to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    # non_blocking overlaps the copy with the step for batches not yet on the device.
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _epoch_length(batches: Iterable[Batch], max_steps: int) -> Optional[int]:
    """Batches this epoch will take, when the loader knows its length."""
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
    return min(n, max_steps) if max_steps else n


def _check_finite(metrics: Mapping[str, float], where: str) -> None:
    loss = metrics.get("loss", float("nan"))
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"loss became {loss} {where}")


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    hook: SyncPoints,
    *,
    device: torch.device,
    names: Sequence[str],
    ranks: DistributedContext = SINGLE_PROCESS,
    grad_accum_steps: int = 1,
    grad_clip: float = 0.0,
    max_steps: int = 0,
    epoch: int = 0,
) -> EpochStats:
    """Train for one pass over `batches` (at most `max_steps` of them when > 0); returns the epoch's mean metrics.

    Args:
        model: what the step calls (`loss_and_metrics`); a DistributedModel under DDP.
        hook: the run's sync points: asked after every step whether it is one, told the running
            means when it is (steps.csv rows, dashboard, progress lines, a user's Stop).
        ranks: under DDP (`ranks.enabled`) every sync point and the epoch's end read metrics
            summed over ranks (a collective: the hook is due at the same steps on every rank),
            and a Stop seen by any rank ends the epoch on all at the same step. Samples and
            means are then global.
        names: the model's scalar names besides "loss".

    An epoch of 0 samples (an empty loader) returns metrics {} and samples 0, as `evaluate` does.

    Without clipping the gradient norm is a diagnostic, not worth an extra pass over every
    gradient each step: it is measured at the epoch's first optimizer step and at the first one
    after each fixed sync point (every `hook.every` batches), so once per sync point whatever
    `grad_accum_steps` is; EpochStats.grad_norm is their mean. With clipping every optimizer step
    measures it anyway and all count.

    Raises:
        NonFiniteLossError: the running loss read at a sync point, or the epoch's, is NaN or infinite.
        StopRequested: the hook was asked to stop (a dashboard's Stop).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    metrics = MetricAccumulator(("loss", *names), device)
    accumulation = GradAccumulation(grad_accum_steps, model, _epoch_length(batches, max_steps))
    move = getattr(batches, "device", None) != device  # a loader hands out batches on its own device
    norms = _NormMean(device)
    optimizer_steps = batch_no = 0
    measure_norm = True  # at the next optimizer step
    unapplied = False  # gradients accumulated but not yet stepped
    data_wait = 0.0  # host time spent waiting for the next batch: "input-bound" shows here
    iterator = iter(batches)
    start = time.perf_counter()
    while not (max_steps and batch_no >= max_steps):
        fetch_start = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            break
        data_wait += time.perf_counter() - fetch_start
        batch_no += 1
        if move:
            batch = _to_device(batch, device)

        with accumulation.gradient_sync(batch_no):
            with precision.autocast():
                values = model.loss_and_metrics(batch)
            precision.scaler.scale(accumulation.loss_share(values["loss"])).backward()
        unapplied = True
        if accumulation.ends_step(batch_no):
            norms.add(_optimizer_step(optimizer, precision, params, grad_clip, measure_norm))
            optimizer_steps += 1
            unapplied = measure_norm = False
        metrics.add(values, batch["labels"].shape[0])  # keeps tensors; launches nothing

        if batch_no % hook.every == 0:
            measure_norm = True
        if hook.due(batch_no):
            # note: this is a CPU-GPU sync point, and under DDP a collective (all ranks are due together)
            running, samples, stop = metrics.read(ranks, stop=hook.should_stop())
            _check_finite(running, f"in epoch {epoch} by step {batch_no}")
            hook.on_sync(batch_no, running, samples)
            if stop:
                raise StopRequested(f"stopped by the user in epoch {epoch} after step {batch_no}")

    if unapplied:
        # A loader without a length ended mid-accumulation: its last gradients still count.
        norms.add(_optimizer_step(optimizer, precision, params, grad_clip, measure_norm))
        optimizer_steps += 1
    # note: a CPU-GPU sync point, and under DDP a collective: the epoch's end
    running, samples, stop = metrics.read(ranks, stop=hook.should_stop())
    seconds = time.perf_counter() - start
    if samples:  # over 0 samples `running` is empty: nothing was measured, nothing is non-finite
        _check_finite(running, f"in epoch {epoch}")
    if stop:  # under DDP: a Stop after the epoch's last fixed sync point
        raise StopRequested(f"stopped by the user at the end of epoch {epoch}")
    return EpochStats(running, samples, optimizer_steps, seconds, norms.mean(), data_wait / seconds if seconds > 0 else 0.0)


class _NormMean:
    """The mean of the measured gradient norms; summed on the device (one add per measured step)."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        self.count = 0

    def add(self, norm: Optional[torch.Tensor]) -> None:
        if norm is not None:
            self.sum += norm
            self.count += 1

    def mean(self) -> Optional[float]:
        """Note: a CPU-GPU sync point (called after the epoch's end has synced anyway)."""
        return float(self.sum) / self.count if self.count else None


def _optimizer_step(optimizer: torch.optim.Optimizer, precision: Precision, params: list, grad_clip: float,
                    measure: bool) -> Optional[torch.Tensor]:
    """Unscale, clip, step, zero; returns the gradient norm (a device tensor) when clipping or `measure`."""
    precision.scaler.unscale_(optimizer)
    norm = None
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    elif measure:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else None
    precision.scaler.step(optimizer)
    precision.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return None if norm is None else norm.detach()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    precision: Precision,
    *,
    device: torch.device,
    names: Sequence[str],
    ranks: DistributedContext = SINGLE_PROCESS,
) -> EpochStats:
    """Mean loss and metrics over `batches` in eval mode; one host sync at the end (summed over ranks under DDP).

    Over 0 samples (summed over ranks under DDP) nothing was measured: metrics is {} (no "loss"
    key), samples 0, steps 0 and throughput None, never 0.0.
    """
    model.eval()
    metrics = MetricAccumulator(("loss", *names), device)
    move = getattr(batches, "device", None) != device
    start = time.perf_counter()
    for batch in batches:
        if move:
            batch = _to_device(batch, device)
        with precision.autocast():
            values = model.loss_and_metrics(batch)
        metrics.add(values, batch["labels"].shape[0])
    means, samples, _ = metrics.read(ranks)  # note: a CPU-GPU sync point (and a collective under DDP): the pass's end
    return EpochStats(means, samples, 0, time.perf_counter() - start)


@torch.no_grad()
def confusion_matrix(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    precision: Precision,
    *,
    device: torch.device,
    n_classes: int,
    ranks: DistributedContext = SINGLE_PROCESS,
) -> list[list[int]]:
    """Counts [true class][predicted class] of a classifier over `batches`; one host sync at the end."""
    model.eval()
    counts = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=device)
    for batch in batches:
        batch = _to_device(batch, device)
        with precision.autocast():
            predicted = model.predict_logits(batch).argmax(dim=-1)
        pairs = batch["labels"].clamp(0, n_classes - 1) * n_classes + predicted
        counts += torch.bincount(pairs, minlength=n_classes * n_classes)
    ranks.all_reduce_sum(counts)  # collective under DDP: every rank's shard of the test split; alone a no-op
    return counts.view(n_classes, n_classes).tolist()  # note: a CPU-GPU sync point: the pass's end
