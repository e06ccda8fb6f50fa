"""Sweeps: expansion and names, real sweeps on a process pool, a Dask LocalCluster and inline
(failures, re-runs, the notebook driver), sweep.yaml, the CLI command, and bad input."""

import os
from pathlib import Path

import pytest
import yaml

from thesis_lib import load_runs
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ConfigError
from thesis_lib.cli import main as cli_main
from thesis_lib.sweep import expand_grid, point_name, sweep
from thesis_lib.sweep.executors import InlineExecutor, ProcessExecutor
from thesis_lib.sweep.grid import spec_hash
from thesis_lib.sweep.point import PointOutcome, PointTask, execute_point
from thesis_lib.sweep.grid import parse_grid_arg, parse_seeds_arg, resolve_base


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_synthetic_events(tmp_path_factory.mktemp("data") / "events.h5", n_events=600, n_tokens=8)


def tiny_base(data_path, output_root):
    return {
        "output_root": str(output_root),
        "data": {"path": str(data_path), "batch_size": 128},
        "model": {"encoder": "mlp", "hidden_dim": 16, "latent_dim": 8, "vq": {"code_dim": 4, "codebook_size": 16}},
        "trainer": {"epochs": 1, "device": "cpu"},
        "report": {"enabled": False},
        "telemetry": {"enabled": False},
    }


def run_ids(sweep_dir):
    runs = Path(sweep_dir) / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def read_sweep_yaml(sweep_dir):
    return yaml.safe_load((Path(sweep_dir) / "sweep.yaml").read_text())


# --- expansion, names, hashes (no training) -------------------------------------------------

def test_expansion_is_grid_times_seeds_with_short_names():
    grid = {"model.bottleneck": ["identity", "vq"], "model.latent_dim": [16, 32]}
    points = expand_grid({"trainer": {"epochs": 2}}, grid, seeds=[1, 2])
    assert [p.name for p in points[:3]] == [
        "bottleneck=identity,latent_dim=16,seed=1",
        "bottleneck=identity,latent_dim=16,seed=2",
        "bottleneck=identity,latent_dim=32,seed=1",
    ]
    assert len(points) == 8 and len({p.config_hash for p in points}) == 8
    last = points[-1]
    assert last.overrides == {"model.bottleneck": "vq", "model.latent_dim": 32} and last.seed == 2
    assert last.config["model"]["bottleneck"] == "vq" and last.config["trainer"]["seed"] == 2
    assert last.config["trainer"]["epochs"] == 2 and last.config["run_name"] == last.name
    # keys whose last part clashes keep the whole dotted key
    assert point_name({"model.vq.beta": 0.1, "optim.betas": [0.9, 0.99], "model.dropout": 0.5}, 3) == (
        "beta=0.1,betas=[0.9,0.99],dropout=0.5,seed=3")
    assert point_name({"model.vq.decay": 0.9, "other.decay": True}, 1) == "model.vq.decay=0.9,other.decay=true,seed=1"
    # no seeds: the base config's seed, one run per grid point
    (only,) = expand_grid({"trainer": {"seed": 7}}, {}, None)
    assert only.name == "seed=7" and only.config["trainer"]["seed"] == 7


def test_spec_hash_depends_on_base_grid_and_seeds_not_output_root():
    base = expand_grid({}, {}, [1])[0].config
    moved = dict(base, output_root="elsewhere", run_name="x")
    grid = {"model.latent_dim": [8, 16]}
    assert spec_hash(base, grid, [1]) == spec_hash(moved, grid, [1])
    assert spec_hash(base, grid, [1]) != spec_hash(base, grid, [1, 2])
    assert spec_hash(base, grid, [1]) != spec_hash(base, {"model.latent_dim": [8, 32]}, [1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grid": {"model.latent_dim": []}}, "sweep grid key 'model.latent_dim' has an empty list of values"),
        ({"grid": {"model.bottlenek": ["vq"]}},
         "sweep point bottlenek=vq,seed=1: unknown config key 'model.bottlenek' — did you mean 'bottleneck'?"),
        ({"grid": {"model.bottleneck": ["identity", "vqq"]}},
         "sweep point bottleneck=vqq,seed=1: model.bottleneck='vqq' — did you mean 'vq'?"),
        ({"grid": {"model.latent_dim": 16}}, "sweep grid key 'model.latent_dim': expected a list of values, got 16"),
        ({"grid": {"trainer.seed": [1, 2]}}, "sweep grid key 'trainer.seed' cannot be swept (use seeds=[...])"),
        ({"grid": {"model.latent_dim": [16, 16]}}, "two points the same name 'latent_dim=16,seed=1'"),
        ({"seeds": []}, "sweep seeds is an empty list"),
        ({"executor": "pbs"}, "executor='pbs' is not known; allowed: inline, process, dask, slurm, htcondor"),
        ({"via": "script"}, "via='script' is not known; allowed: function, notebook"),
        ({"executor": 42}, "executor=42: expected one of inline, process, dask, slurm, htcondor or a distributed.Client"),
        ({"max_workers": 0, "executor": "process"}, "max_workers=0: expected an integer >= 1"),
        ({"overrides": ["trainer.resume_from=outputs/runs/x"]},
         "trainer.resume_from='outputs/runs/x' in a sweep's base config: every point would continue the same run"),
    ],
)
def test_bad_input_fails_before_anything_runs(tmp_path, kwargs, message):
    args = {"grid": {"model.latent_dim": [8]}, "seeds": [1], **kwargs}
    with pytest.raises(ConfigError) as info:
        sweep({"output_root": str(tmp_path), "data": {"path": "nowhere.h5"}}, name="bad", **args)
    assert message in str(info.value)
    assert not (tmp_path / "multiruns").exists()


def test_sweep_dir_holding_another_sweep_is_refused(tmp_path):
    other = tmp_path / "exp_other"
    other.mkdir()
    (other / "sweep.yaml").write_text(yaml.safe_dump({"name": "other", "spec_hash": "0123456789ab", "points": []}))
    base = {"output_root": str(tmp_path), "data": {"path": "nowhere.h5"}}
    expected = spec_hash(resolve_base(base), {}, [1])
    with pytest.raises(ConfigError) as info:
        sweep(base, seeds=[1], name="mine", sweep_dir=other)
    assert str(info.value).startswith(
        f"sweep_dir {other} holds a different sweep (spec hash 0123456789ab in its sweep.yaml); "
        f"this sweep's spec hash is {expected}.")
    assert run_ids(other) == []


def test_grid_and_seed_arguments_of_the_cli_parse_to_values():
    assert parse_grid_arg("model.bottleneck=identity,vq") == ("model.bottleneck", ["identity", "vq"])
    assert parse_grid_arg("model.latent_dim=16,32") == ("model.latent_dim", [16, 32])
    assert parse_grid_arg("model.freeze=[[encoder],[]]") == ("model.freeze", [["encoder"], []])
    assert parse_grid_arg("model.freeze=[encoder],[]") == ("model.freeze", [["encoder"], []])
    assert parse_grid_arg("model.latent_dim=") == ("model.latent_dim", [])  # sweep() then names the empty list
    with pytest.raises(ConfigError, match="is not of the form key=value1,value2"):
        parse_grid_arg("model.latent_dim")
    assert parse_seeds_arg("1, 2,3") == [1, 2, 3]
    with pytest.raises(ConfigError, match="--seeds 'one': expected comma-separated integers"):
        parse_seeds_arg("one")


# --- real sweeps ------------------------------------------------------------------------------

@pytest.mark.slow
def test_process_pool_sweep_writes_runs_that_load_runs_reads(tmp_path, data_path, capsys):
    result = sweep(tiny_base(data_path, tmp_path / "outputs"), {"model.bottleneck": ["identity", "vq"]}, [1],
                   name="tokenizers", executor="process", max_workers=2)
    sweep_dir = result.sweep_dir
    assert sweep_dir.parent == (tmp_path / "outputs" / "multiruns").resolve()
    assert sweep_dir.name.startswith("exp_") and sweep_dir.name.endswith("_tokenizers")
    assert [p.status for p in result.points] == ["COMPLETED", "COMPLETED"]
    assert result.counts == {"COMPLETED": 2, "skipped": 0, "total": 2} and result.ok
    assert len(run_ids(sweep_dir)) == 2
    runs_df, per_epoch, order = load_runs(sweep_dir=sweep_dir)
    assert sorted(runs_df["tokenizer"]) == ["identity", "vq"]
    assert set(runs_df["status"]) == {"COMPLETED"} and set(runs_df["seed"]) == {1}
    assert {Path(r).parent.parent for r in order} == {sweep_dir}
    recorded = read_sweep_yaml(sweep_dir)
    assert recorded["state"] == "finished" and recorded["executor"] == "process"
    assert recorded["grid"] == {"model.bottleneck": ["identity", "vq"]} and recorded["seeds"] == [1]
    assert recorded["spec_hash"] == result.spec_hash and recorded["base"]["trainer"]["epochs"] == 1
    assert [(p["name"], p["status"]) for p in recorded["points"]] == [
        ("bottleneck=identity,seed=1", "COMPLETED"), ("bottleneck=vq,seed=1", "COMPLETED")]
    for point in recorded["points"]:
        assert (sweep_dir / point["run_dir"] / "model.pt").is_file()
    out = capsys.readouterr().out
    assert "[sweep tokenizers] 1/2 done, 0 failed, 1 running, ETA" in out
    assert "[sweep tokenizers] 2/2 done, 0 failed, 0 running, ETA 0s (last: bottleneck=" in out


@pytest.mark.slow
def test_dask_local_cluster_sweep(tmp_path, data_path):
    result = sweep(tiny_base(data_path, tmp_path / "outputs"), {"model.latent_dim": [4, 8]}, [3],
                   name="dask", executor="dask", max_workers=2)
    assert [p.status for p in result.points] == ["COMPLETED", "COMPLETED"]
    runs_df, _, _ = load_runs(sweep_dir=result.sweep_dir)
    assert sorted(runs_df["latent_dim"]) == [4, 8] and set(runs_df["status"]) == {"COMPLETED"}
    assert read_sweep_yaml(result.sweep_dir)["executor"] == "dask"


@pytest.mark.slow
def test_failing_point_is_recorded_and_a_rerun_skips_completed_points(tmp_path, data_path, capsys):
    missing = tmp_path / "later.h5"
    base = tiny_base(data_path, tmp_path / "outputs")
    grid = {"data.path": [str(data_path), str(missing)]}
    first = sweep(base, grid, [1], name="paths")
    good, bad = first.points
    assert good.status == "COMPLETED" and good.run_dir is not None and not good.skipped
    assert bad.status == "FAILED" and bad.run_dir is None
    assert bad.error == f"DataError: event file not found: {missing}"
    assert bad.traceback.endswith(f"thesis_lib.errors.DataError: event file not found: {missing}")
    assert first.counts == {"COMPLETED": 1, "FAILED": 1, "skipped": 0, "total": 2} and not first.ok
    recorded = read_sweep_yaml(first.sweep_dir)
    assert [p["status"] for p in recorded["points"]] == ["COMPLETED", "FAILED"]
    assert recorded["points"][1]["error"] == f"DataError: event file not found: {missing}"
    assert recorded["points"][0]["error"] is None and recorded["points"][0]["traceback"] is None
    assert "raise DataError" in recorded["points"][1]["traceback"]
    assert "[sweep paths] 2/2 done, 1 failed, 0 running" in capsys.readouterr().out
    before = run_ids(first.sweep_dir)
    assert len(before) == 1

    make_synthetic_events(missing, n_events=600, n_tokens=8, seed=5)
    second = sweep(base, grid, [1], name="paths")
    assert second.sweep_dir == first.sweep_dir and second.spec_hash == first.spec_hash
    good2, bad2 = second.points
    assert good2.skipped and good2.status == "COMPLETED" and good2.run_dir == good.run_dir
    assert not bad2.skipped and bad2.status == "COMPLETED"
    after = run_ids(second.sweep_dir)
    assert len(after) == 2 and set(before) < set(after)  # one new run: the point that had failed
    assert second.counts == {"COMPLETED": 2, "skipped": 1, "total": 2}
    assert "1 already completed (skipped), 1 to run" in capsys.readouterr().out

    third = sweep(base, grid, [1], name="paths")  # everything done: nothing runs, nothing new
    assert all(p.skipped for p in third.points) and run_ids(third.sweep_dir) == after
    # another spec under the same name gets its own directory
    other = sweep(base, grid, [2], name="paths", executor="inline")
    assert other.sweep_dir != first.sweep_dir and other.points[0].status == "COMPLETED"


@pytest.mark.slow
def test_notebook_point_keeps_the_executed_notebook_in_its_run_dir(tmp_path, data_path):
    result = sweep(tiny_base(data_path, tmp_path / "outputs"), {"model.bottleneck": ["linear"]}, [2],
                   name="nb", via="notebook")
    (point,) = result.points
    assert point.status == "COMPLETED", point.error
    executed = point.run_dir / "train.ipynb"
    assert executed.is_file() and '"bottleneck": "linear"' in executed.read_text()
    assert not list((result.sweep_dir / "notebooks").glob("*.ipynb"))
    runs_df, _, _ = load_runs(sweep_dir=result.sweep_dir)
    assert runs_df.loc[0, "tokenizer"] == "linear" and runs_df.loc[0, "seed"] == 2
    assert read_sweep_yaml(result.sweep_dir)["via"] == "notebook"


@pytest.mark.slow
def test_cli_sweep_command_runs_a_sweep(tmp_path, data_path):
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(tiny_base(data_path, tmp_path / "outputs")))
    assert cli_main(["sweep", "--config", str(config), "--grid", "model.latent_dim=4", "--seeds", "1",
                     "--name", "cli", "trainer.sync_every_n_steps=2"]) == 0
    (sweep_dir,) = (tmp_path / "outputs" / "multiruns").iterdir()
    recorded = read_sweep_yaml(sweep_dir)
    assert recorded["name"] == "cli" and recorded["base"]["trainer"]["sync_every_n_steps"] == 2
    assert [p["name"] for p in recorded["points"]] == ["latent_dim=4,seed=1"]


# --- a worker that dies ---------------------------------------------------------------------

def crash_or_succeed(task: PointTask) -> PointOutcome:
    """Module-level, so spawned workers can import it: os._exit kills the worker for 'crash'."""
    if task.name == "crash":
        os._exit(3)
    return PointOutcome(task.name, "COMPLETED", None, None, 0.0)


@pytest.mark.slow
def test_a_dead_worker_is_recorded_and_the_pool_goes_on(tmp_path):
    tasks = [PointTask(name, {"trainer": {"device": "cpu"}}, "function", str(tmp_path)) for name in ("crash", "fine")]
    executor = ProcessExecutor(max_workers=1, devices=[], task_fn=crash_or_succeed)
    try:
        outcomes = {task.name: outcome for task, outcome in executor.run(tasks)}
    finally:
        executor.close()
    assert outcomes["fine"].status == "COMPLETED"
    assert outcomes["crash"].status == "CRASHED" and "its worker process died" in outcomes["crash"].error


def test_execute_point_reports_an_exception_instead_of_raising(tmp_path):
    config = expand_grid({"data": {"path": str(tmp_path / "absent.h5")}, "output_root": str(tmp_path)}, {}, [1])[0].config
    outcome = execute_point(PointTask("seed=1", config, "function", str(tmp_path)))
    assert outcome.status == "FAILED" and outcome.run_dir is None
    assert outcome.error == f"DataError: event file not found: {tmp_path / 'absent.h5'}"
    assert outcome.stop_reason == "exception: DataError" and "EventFile(" in outcome.traceback


def report_visible_devices(task: PointTask) -> PointOutcome:
    """Module-level for spawned workers: what CUDA_VISIBLE_DEVICES this point ran with, and in which process."""
    return PointOutcome(task.name, "COMPLETED", None, None, 0.0,
                        stop_reason=f"{os.environ.get('CUDA_VISIBLE_DEVICES')}/{os.getpid()}")


@pytest.mark.slow
def test_process_pool_gives_each_gpu_point_one_device_in_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    tasks = [PointTask(name, {"trainer": {"device": device}}, "function", str(tmp_path))
             for name, device in (("a", "auto"), ("b", "cuda"), ("c", "cpu"))]
    executor = ProcessExecutor(max_workers=2, devices=["3", "5"], task_fn=report_visible_devices)
    try:
        seen = {task.name: outcome.stop_reason.split("/") for task, outcome in executor.run(tasks)}
    finally:
        executor.close()
    assert {seen["a"][0], seen["b"][0]} == {"3", "5"}  # started together: one GPU each
    assert seen["c"][0] == "None"  # a point pinned to the CPU is left alone
    assert len({pid for _, pid in seen.values()}) == 3  # no process reuses a CUDA context


def stopped_by_the_user(task: PointTask) -> PointOutcome:
    return PointOutcome(task.name, "STOPPED", None, None, 0.0, stop_reason="interrupted")


def test_ctrl_c_in_an_inline_point_stops_the_sweep(tmp_path):
    tasks = [PointTask(name, {}, "function", str(tmp_path)) for name in ("first", "second")]
    seen = []
    with pytest.raises(KeyboardInterrupt, match="sweep interrupted during first"):
        for task, outcome in InlineExecutor(task_fn=stopped_by_the_user).run(tasks):
            seen.append((task.name, outcome.status))
    assert seen == [("first", "STOPPED")]


def test_a_notebook_point_never_generates_missing_data(tmp_path):
    config = expand_grid({"data": {"path": str(tmp_path / "absent.h5")}, "output_root": str(tmp_path)}, {}, [1])[0].config
    outcome = execute_point(PointTask("seed=1", config, "notebook", str(tmp_path), notebook="unused.ipynb"))
    assert outcome.status == "FAILED"
    assert outcome.error == f"DataError: event file not found: {tmp_path / 'absent.h5'} (a sweep never generates data)"
    assert not (tmp_path / "absent.h5").exists()
