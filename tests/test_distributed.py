"""One run on several processes: torchrun + DDP on CPU (gloo), rank 0 alone writing the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thesis_lib.data import EventLoader, make_synthetic_events
from thesis_lib.errors import ConfigError
from thesis_lib.facts import load_runs, read_events
from thesis_lib.reports.run_report import load_run_report
from thesis_lib.train.distributed import DistributedContext
from thesis_lib.train.epoch import StopRequested, train_epoch
from thesis_lib.train.optim import Precision
from thesis_lib.train.sync_points import SyncPoints

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "events.h5"
    make_synthetic_events(path, n_events=1000, seed=0, n_tokens=8)
    return path


def _cli_train(args: list[str], cwd: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, "-m", "thesis_lib.cli", "train", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _only_run(root: Path) -> Path:
    runs = sorted((root / "runs").iterdir())
    assert len(runs) == 1, runs  # one run directory, however many processes trained it
    return runs[0]


def test_two_ranks_train_what_one_process_trains_with_twice_the_batch(events, tmp_path):
    common = [f"data.path={events}", "model.task=classifier", "model.encoder=mlp", "trainer.epochs=2",
              "trainer.sync_every_n_steps=5", "report.enabled=false", "telemetry.enabled=false"]
    ddp = _cli_train([*common, "data.batch_size=16", f"output_root={tmp_path / 'ddp'}", "run_name=ddp"],
                     tmp_path, TORCHRUN)
    _cli_train([*common, "data.batch_size=32", f"output_root={tmp_path / 'one'}", "run_name=one"],
               tmp_path, [sys.executable])
    ddp_dir, one_dir = _only_run(tmp_path / "ddp"), _only_run(tmp_path / "one")

    # Batch i of the two shards together is batch i of one process: the same weights come out.
    ddp_weights, one_weights = torch.load(ddp_dir / "model.pt"), torch.load(one_dir / "model.pt")
    for name, value in one_weights.items():
        torch.testing.assert_close(ddp_weights[name], value, atol=1e-5, rtol=1e-4, msg=name)

    ddp_events, one_events = read_events(ddp_dir), read_events(one_dir)
    assert [e["moment"] for e in ddp_events] == [e["moment"] for e in one_events]  # written once, by rank 0
    start = ddp_events[0]
    assert start["world_size"] == 2
    assert json.loads((ddp_dir / "env.json").read_text())["world_size"] == 2
    for mine, theirs in zip(ddp_events, one_events):
        if mine["moment"] == "on_epoch_end":
            assert mine["samples"] == theirs["samples"] == 700  # summed over ranks
            assert mine["val"]["loss"] == pytest.approx(theirs["val"]["loss"], rel=1e-5)
            assert mine["train"]["loss"] == pytest.approx(theirs["train"]["loss"], rel=1e-5)
    ddp_test = next(e for e in ddp_events if e["moment"] == "on_test_end")
    one_test = next(e for e in one_events if e["moment"] == "on_test_end")
    assert ddp_test["samples"] == one_test["samples"] == 150  # the test shards cover the split once
    assert ddp_test["confusion_matrix"] == one_test["confusion_matrix"]
    assert ddp_test["metrics"]["loss"] == pytest.approx(one_test["metrics"]["loss"], rel=1e-5)

    # steps.csv rows come from collective sync points: global running losses, same as one process.
    ddp_steps = (ddp_dir / "facts" / "steps.csv").read_text().splitlines()
    one_steps = (one_dir / "facts" / "steps.csv").read_text().splitlines()
    assert len(ddp_steps) == len(one_steps)
    for mine, theirs in zip(ddp_steps[1:], one_steps[1:]):
        assert float(mine.split(",")[3]) == pytest.approx(float(theirs.split(",")[3]), rel=1e-5)

    log = (ddp_dir / "logs" / "stdout.log").read_text()
    assert log.count("COMPLETED (max_epochs)") == 1  # other ranks print nothing
    assert ddp.stdout.count("COMPLETED (max_epochs)") == 1
    runs_df, _, _ = load_runs(run_dirs=[ddp_dir])
    assert runs_df.loc[0, "status"] == "COMPLETED"
    configuration = load_run_report(ddp_dir).section("configuration")
    assert "| Processes (DDP) | 2 |" in configuration and "| Effective batch | 32 |" in configuration


def test_vq_autoencoder_with_accumulation_and_streaming_under_two_ranks(events, tmp_path):
    _cli_train([f"data.path={events}", "model.encoder=transformer", "model.bottleneck=vq", "model.latent_dim=16",
                "model.vq.code_dim=4", "model.vq.codebook_size=32", "trainer.epochs=2", "data.batch_size=32",
                "data.loader=stream", "data.block_rows=64", "trainer.grad_accum_steps=2", "report.enabled=false",
                f"output_root={tmp_path}", "run_name=vq"], tmp_path, TORCHRUN)
    run_dir = _only_run(tmp_path)
    events_ = read_events(run_dir)
    end = next(e for e in events_ if e["moment"] == "on_train_end")
    assert end["status"] == "COMPLETED"
    epochs = [e for e in events_ if e["moment"] == "on_epoch_end"]
    assert len(epochs) == 2
    assert epochs[1]["train"]["loss"] < epochs[0]["train"]["loss"]
    assert epochs[0]["train"]["metric_perplex"] > 1.0  # the codebook is in use
    # Streamed shards (whole blocks each) are trimmed to the shortest one's batch count: at most
    # about a block per rank is left out of an epoch.
    assert 700 - 2 * 64 <= epochs[0]["samples"] < 700
    weights = torch.load(run_dir / "model.pt")
    assert not any(name.startswith(("module.", "model.model")) for name in weights)  # plain model keys


def _rows(loader: EventLoader) -> list[torch.Tensor]:
    """Each batch's rows, identified by their (unique) continuous features."""
    return [batch["tokens_cont"][:, 0, :].clone() for batch in loader]


def test_memory_shards_compose_the_unsharded_batches(events):
    whole = EventLoader(events, "train", batch_size=64, shuffle=True, seed=3, mode="memory")
    shards = [EventLoader(events, "train", batch_size=32, shuffle=True, seed=3, mode="memory",
                          normalization=whole.normalization, shard=r, num_shards=2, equal_shards=True)
              for r in range(2)]
    for loader in (whole, *shards):
        loader.set_epoch(1)
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for batch, parts in zip(_rows(whole), zip(*(_rows(s) for s in shards))):
        joined = torch.cat(parts)
        assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple, batch.tolist()))


def test_eval_shards_cover_the_split_once_and_stream_shards_are_disjoint(events):
    val = [EventLoader(events, "val", batch_size=40, mode="memory", shard=r, num_shards=3) for r in range(3)]
    seen = torch.cat([rows for loader in val for rows in _rows(loader)])
    assert len(seen) == val[0].num_rows == len({tuple(r) for r in seen.tolist()})

    stream = [EventLoader(events, "train", batch_size=16, shuffle=True, seed=1, mode="stream", block_rows=50,
                          shard=r, num_shards=2, equal_shards=True) for r in range(2)]
    rows = [{tuple(r) for b in _rows(loader) for r in b.tolist()} for loader in stream]
    assert len(stream[0]) == len(stream[1]) == len(list(stream[0])) == len(list(stream[1]))
    assert not rows[0] & rows[1]


def test_bad_shard_and_torchrun_environment_are_named(events, monkeypatch):
    with pytest.raises(ConfigError, match=r"shard=2; expected 0 <= shard < num_shards=2"):
        EventLoader(events, "val", batch_size=8, shard=2, num_shards=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 but RANK/LOCAL_RANK are missing"):
        DistributedContext.from_env(torch.device("cpu"))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def loss_and_metrics(self, batch):
        return {"loss": (self.w * batch["x"]).pow(2).mean()}


class _OneRankGroup(DistributedContext):
    """DDP's code path with one rank: every collective is the identity."""

    def all_reduce_sum(self, tensor):
        return tensor


def test_a_stop_under_ddp_waits_for_the_next_collective_sync_point():
    model, stops_asked = _Tiny(), []
    batches = [{"x": torch.ones(4), "labels": torch.zeros(4)} for _ in range(20)]

    def control():
        stops_asked.append(1)
        return "stop" if len(stops_asked) >= 3 else "run"

    def epoch(ranks):
        hook = SyncPoints(5, control=control, distributed=ranks.enabled)
        train_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.01), Precision("fp32", torch.device("cpu")),
                    hook, device=torch.device("cpu"), names=(), ranks=ranks)

    with pytest.raises(StopRequested, match="after step 5"):
        epoch(_OneRankGroup(rank=0, world_size=2))
    with pytest.raises(StopRequested, match="after step 3"):  # one process stops at once, as before
        stops_asked.clear()
        epoch(DistributedContext())


def test_sigterm_to_torchrun_stops_every_rank_at_the_next_fixed_sync_point(events, tmp_path):
    """What SLURM's scancel does to a torchrun job: the agent passes SIGTERM to each rank; each stops
    at the next fixed sync point, where the stop rides along with the metrics (no collective per step)."""
    import signal
    import time

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*TORCHRUN, "-m", "thesis_lib.cli", "train", f"data.path={events}", f"output_root={out}",
                             "model.task=classifier", "model.encoder=mlp", "data.batch_size=16", "trainer.epochs=100000",
                             "trainer.sync_every_n_steps=7", "report.enabled=false", "telemetry.enabled=false"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        found = list((out / "runs").glob("*/facts/events.jsonl"))
        if found and found[0].read_text().count('"on_epoch_end"') >= 2:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    run_dir = _only_run(out)
    events_ = read_events(run_dir)
    ends = [e for e in events_ if e["moment"] == "on_train_end"]
    assert len(ends) == 1, output.decode()[-3000:]
    assert ends[0]["status"] == "STOPPED" and ends[0]["stop_reason"] == "signal: SIGTERM"
    assert (run_dir / "model.pt").is_file() and (run_dir / "last.pt").is_file()
    # Written once, by rank 0, which could only get there if rank 1 joined the stopping sync point: a
    # rank killed by the signal would leave rank 0 waiting in that collective until torchrun's SIGKILL.
    assert sum(e["moment"] == "on_start" for e in events_) == 1
    assert "SIGTERM received" in (run_dir / "logs" / "stdout.log").read_text()
