"""The training step alone: its sync points, gradient accumulation, grad-norm samples and metric sums."""

from __future__ import annotations

import contextlib
import random
import time
from types import SimpleNamespace

import pytest
import torch

from thesis_lib.train import epoch as epoch_module
from thesis_lib.train import sync_points as sync_points_module
from thesis_lib.train.epoch import GradAccumulation, MetricAccumulator, StopRequested, train_epoch
from thesis_lib.train.optim import Precision
from thesis_lib.train.sync_points import ProgressLines, StepRows, SyncPoint, SyncPoints

CPU = torch.device("cpu")


class _Tiny(torch.nn.Module):
    """Two weights and a loss whose gradient changes every batch; counts the batches it has seen."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.batches = 0

    def loss_and_metrics(self, batch):
        self.batches += 1
        loss = ((self.w * batch["x"]).sum(dim=1) - batch["y"]).pow(2).mean()
        return {"loss": loss, "metric_w0": self.w[0].detach()}


def _batches(n: int, rows: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(rows, 2, generator=g), "y": torch.randn(rows, generator=g), "labels": torch.zeros(rows)}
            for _ in range(n)]


def _epoch(model, batches, hook, **kwargs):
    return train_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.05), Precision("fp32", CPU), hook,
                       device=CPU, names=("metric_w0",), **kwargs)


@pytest.mark.parametrize("accum, measured_at", [
    (1, [1, 6, 11, 16]),  # the first optimizer step and the one after each sync point (batches 5, 10, 15)
    # Optimizer steps end batches 2, 4, ..., 20: the first, then the first after batches 5, 10 and 15.
    # Counting optimizer steps instead (every 5th: batches 2, 12) sampled half as often.
    (2, [2, 6, 12, 16]),
])
def test_the_grad_norm_is_sampled_after_each_sync_point_whatever_the_accumulation(monkeypatch, accum, measured_at):
    model, measured = _Tiny(), []
    real = torch.nn.utils.get_total_norm

    def recording(grads, *args, **kwargs):
        norm = real(grads, *args, **kwargs)
        measured.append((model.batches, float(norm)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", recording)
    stats = _epoch(model, _batches(20), SyncPoints(5, grad_accum_steps=accum), grad_accum_steps=accum)
    assert [batch for batch, _ in measured] == measured_at
    assert stats.steps == 20 // accum
    assert stats.grad_norm == pytest.approx(sum(norm for _, norm in measured) / len(measured), rel=1e-12)


def test_with_clipping_every_optimizer_step_measures_the_norm(monkeypatch):
    model, clipped = _Tiny(), []
    real = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *args, **kwargs):
        norm = real(params, max_norm, *args, **kwargs)
        clipped.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    stats = _epoch(model, _batches(20), SyncPoints(5, grad_accum_steps=2), grad_accum_steps=2, grad_clip=100.0)
    assert len(clipped) == 10 and stats.grad_norm == pytest.approx(sum(clipped) / 10, rel=1e-12)


def test_a_partial_last_accumulation_ends_the_epoch_with_all_gradients_reduced():
    class NoSyncRecorder(_Tiny):
        """A stand-in for DDP's model: records the batches run under no_sync (no gradient all-reduce)."""

        def __init__(self):
            super().__init__()
            self.deferred = []

        @contextlib.contextmanager
        def no_sync(self):
            self.deferred.append(self.batches + 1)
            yield

    model = NoSyncRecorder()
    stats = _epoch(model, _batches(7), SyncPoints(50), grad_accum_steps=3)
    # Batch 7 starts an accumulation the epoch does not complete: it is still the last micro-batch
    # before an optimizer step, so its gradients must be all-reduced (not under no_sync).
    assert model.deferred == [1, 2, 4, 5] and stats.steps == 3
    accumulation = GradAccumulation(3, model, batches=7)
    assert [b for b in range(1, 8) if accumulation.ends_step(b)] == [3, 6, 7]
    assert [b for b in range(1, 8) if GradAccumulation(3, model).ends_step(b)] == [3, 6]  # length unknown


def test_a_loader_without_a_length_still_applies_its_last_gradients():
    model = _Tiny()
    stats = _epoch(model, iter(_batches(7)), SyncPoints(50), grad_accum_steps=3)
    assert stats.steps == 3 and stats.samples == 28


def test_sync_points_reach_every_listener_with_the_running_numbers():
    points = []

    class Recorder:
        def on_sync(self, point: SyncPoint):
            points.append(point)

    hook = SyncPoints(4, grad_accum_steps=2, listeners=[Recorder()])
    hook.start_epoch(3, 0.01, 100)
    model = _Tiny()
    batches = _batches(10)
    stats = _epoch(model, batches, hook, grad_accum_steps=2, epoch=3)
    assert [(p.epoch, p.batch, p.step, p.samples, p.lr, p.fixed) for p in points] == [
        (3, 4, 102, 16, 0.01, True), (3, 8, 104, 32, 0.01, True)]
    assert stats.samples == 40 and set(points[0].running) == {"loss", "metric_w0"}


def test_a_stop_ends_the_epoch_at_once_in_one_process_and_at_the_next_fixed_point_under_ddp():
    for distributed, stopped_at in ((False, 3), (True, 5)):
        hook = SyncPoints(5, distributed=distributed)
        assert [hook.due(b) for b in (1, 2)] == [False, False]
        hook.request_stop()  # a signal handler or a listener, say
        assert [hook.due(b) for b in (3, 4, 5)] == ([False, False, True] if distributed else [True, True, True])
        assert hook.should_stop()
        model = _Tiny()
        hook = SyncPoints(5, distributed=distributed, control=lambda m=model: "stop" if m.batches >= 3 else "run")
        with pytest.raises(StopRequested, match=f"after step {stopped_at}"):
            _epoch(model, _batches(20), hook)


def test_a_live_view_gets_timed_refreshes_between_fixed_points(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(sync_points_module, "time", SimpleNamespace(perf_counter=lambda: clock[0], time=time.time))
    hook = SyncPoints(100)
    hook.start_epoch(0, 1e-3, 0, refresh_s=0.25)
    due = []
    for batch in range(1, 8):
        clock[0] += 0.1
        if hook.due(batch):
            due.append(batch)
            hook.on_sync(batch, {"loss": 1.0}, batch)
    assert due == [3, 6]  # 0.3 s and 0.6 s: each 0.25 s after the previous refresh
    distributed = SyncPoints(100, distributed=True)
    distributed.start_epoch(0, 1e-3, 0, refresh_s=0.25)
    clock[0] += 10
    assert not distributed.due(1)  # under DDP only fixed points are sync points


def test_step_rows_and_progress_lines(capsys):
    rows, lines = StepRows(origin=0.0), ProgressLines(3, "[run]", 10)
    for epoch in (0, 1):
        for batch, loss, fixed in ((2, 4.0, True), (4, 3.0, True), (5, 3.0, False)):
            point = SyncPoint(epoch, batch, batch, {"loss": loss}, batch * 10, 0.1, fixed)
            rows.on_sync(point)
            lines.on_sync(point)
        rows.add(epoch, 6, 2.5, 60, 0.1)  # the epoch's end
    taken = rows.take()
    # each row: the mean loss of the samples since the previous row (of the same epoch)
    assert [(r["epoch"], r["step"], r["loss"]) for r in taken] == [(e, s, loss) for e in (0, 1)
                                                                   for s, loss in ((2, 4.0), (4, 2.0), (6, 1.5))]
    assert rows.take() == []
    assert capsys.readouterr().out.splitlines() == ["[run] epoch 0 step 4/10 loss 3.0000",
                                                    "[run] epoch 1 step 4/10 loss 3.0000"]


@pytest.mark.parametrize("stack_at", [epoch_module._STACK_AT, 7])
def test_metric_sums_match_a_float64_device_accumulator_to_the_bit(monkeypatch, stack_at):
    monkeypatch.setattr(epoch_module, "_STACK_AT", stack_at)
    rng = random.Random(0)
    names = ("loss", "metric_a", "metric_b")
    accumulator = MetricAccumulator(names, CPU)
    reference = torch.zeros(len(names), dtype=torch.float64)
    count = 0
    for step in range(1, 301):
        values = {"loss": torch.tensor(rng.uniform(0, 10), requires_grad=True) * 1.0,
                  "metric_a": torch.tensor(rng.uniform(-1e-3, 1e-3)),
                  "metric_b": torch.tensor(rng.uniform(0, 1e4), dtype=torch.bfloat16)}
        n = rng.choice([64, 17, 3, 500])
        accumulator.add(values, n)
        # what the step did before: a float64 sum on the device, updated every step
        reference.add_(torch.stack([values[k].detach().to(torch.float64) for k in names]), alpha=n)
        count += n
        if step % 50 == 0:
            means, samples, stop = accumulator.read()
            assert samples == count and not stop
            assert list(means.values()) == (reference / count).tolist()
