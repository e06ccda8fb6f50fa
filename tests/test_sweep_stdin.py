"""Process-pool sweeps started from a script with no main file (`python -`, `python -c`), a model part
defined in `__main__` refused up front, the reason a broken pool gives, and the executor sweep.yaml
keeps for points a re-run skips."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from thesis_lib.data import make_synthetic_events
from thesis_lib.sweep import sweep
from thesis_lib.sweep.executors import ProcessExecutor
from thesis_lib.sweep.point import PointOutcome, PointTask
from test_sweep import data_path, tiny_base  # noqa: F401  (the sweep tests' data and tiny base config)

REPO = Path(__file__).resolve().parent.parent


def sweep_script(base, grid, prelude=""):
    """A script that runs a 2-worker process-pool sweep and prints its point statuses as JSON."""
    return textwrap.dedent(prelude) + textwrap.dedent(f"""
        import json
        import thesis_lib
        result = thesis_lib.sweep(base={base!r}, grid={grid!r}, seeds=[1], name="nofile",
                                  executor="process", max_workers=2)
        print("RESULT " + json.dumps([[p.name, p.status, p.error] for p in result.points]))
    """)


def run_python(args, tmp_path, script=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], input=script, capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)


def statuses(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result; stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def read_sweep_yaml(sweep_dir):
    return yaml.safe_load((Path(sweep_dir) / "sweep.yaml").read_text())


@pytest.mark.slow
def test_process_sweep_from_a_script_on_standard_input_completes_every_point(tmp_path, data_path):
    script = sweep_script(tiny_base(data_path, tmp_path / "outputs"), {"model.latent_dim": [4, 8]})
    proc = run_python(["-"], tmp_path, script)
    points = statuses(proc)
    assert [status for _, status, _ in points] == ["COMPLETED", "COMPLETED"], points
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multiruns").iterdir()
    recorded = read_sweep_yaml(sweep_dir)
    assert [p["status"] for p in recorded["points"]] == ["COMPLETED", "COMPLETED"]
    assert [p["executor"] for p in recorded["points"]] == ["process", "process"]


@pytest.mark.slow
def test_process_sweep_from_python_c_runs_a_model_part_of_an_importable_module(tmp_path, data_path):
    # The part is registered by a module the script imports; the workers import it before their point.
    parts = tmp_path / "my_parts"
    parts.mkdir()
    (parts / "stdin_parts.py").write_text(textwrap.dedent("""
        from thesis_lib.models.registry import get, register

        @register("encoder", "mlp_from_my_module")
        def build(model_cfg, meta):
            return get("encoder", "mlp")(model_cfg, meta)
    """))
    prelude = f"""
        import sys
        sys.path.insert(0, {str(parts)!r})
        import stdin_parts
    """
    grid = {"model.encoder": ["mlp", "mlp_from_my_module"]}
    proc = run_python(["-c", sweep_script(tiny_base(data_path, tmp_path / "outputs"), grid, prelude)], tmp_path)
    points = statuses(proc)
    assert [status for _, status, _ in points] == ["COMPLETED", "COMPLETED"], points
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["-", "-c"])
def test_a_model_part_defined_in_main_is_refused_before_any_worker_starts(tmp_path, data_path, how):
    prelude = """
        from thesis_lib.models.registry import get, register

        @register("encoder", "main_mlp")
        def main_mlp(model_cfg, meta):
            return get("encoder", "mlp")(model_cfg, meta)
    """
    script = sweep_script(tiny_base(data_path, tmp_path / "outputs"), {"model.encoder": ["mlp", "main_mlp"]}, prelude)
    proc = run_python([how] if how == "-" else [how, script], tmp_path, script if how == "-" else None)
    assert proc.returncode != 0 and "RESULT" not in proc.stdout
    assert "thesis_lib.errors.ConfigError: model.encoder='main_mlp' is built by 'main_mlp', defined in __main__" \
           in proc.stderr, proc.stderr[-3000:]
    origin = "standard input" if how == "-" else "python -c, an interactive session or a notebook"
    assert f"(this script: {origin}), which a spawned worker process cannot import: move it into an importable " \
           "module" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # refused before the sweep wrote (or started) anything


def exit_with_code_3(task: PointTask) -> PointOutcome:
    """Module-level, so spawned workers can import it: the worker dies with exit code 3."""
    os._exit(3)


@pytest.mark.slow
def test_a_point_lost_with_its_worker_says_how_the_worker_ended(tmp_path):
    tasks = [PointTask("dies", {"trainer": {"device": "cpu"}}, "function", str(tmp_path))]
    executor = ProcessExecutor(max_workers=1, devices=[], task_fn=exit_with_code_3)
    try:
        ((_, outcome),) = list(executor.run(tasks))
    finally:
        executor.close()
    assert outcome.status == "CRASHED"
    assert outcome.error.startswith("CRASHED: its worker process died (worker pid ")
    assert "exited with code 3" in outcome.error


@pytest.mark.slow
def test_a_rerun_with_another_executor_keeps_the_executor_of_the_points_it_skips(tmp_path, data_path):
    later = tmp_path / "later.h5"
    base = tiny_base(data_path, tmp_path / "outputs")
    grid = {"data.path": [str(data_path), str(later)]}
    first = sweep(base, grid, [1], name="mixed", executor="inline")
    assert [p.status for p in first.points] == ["COMPLETED", "FAILED"]

    make_synthetic_events(later, n_events=600, n_tokens=8, seed=5)
    second = sweep(base, grid, [1], name="mixed", executor="process", max_workers=1)
    assert second.sweep_dir == first.sweep_dir
    assert [(p.status, p.skipped) for p in second.points] == [("COMPLETED", True), ("COMPLETED", False)]
    recorded = read_sweep_yaml(second.sweep_dir)
    assert recorded["executor"] == "inline"  # the sweep's first run: a re-run does not rewrite it
    assert [(p["executor"], p["via"]) for p in recorded["points"]] == [("inline", "function"), ("process", "function")]

    third = sweep(base, grid, [1], name="mixed", executor="process", via="function")  # skips both
    assert all(p.skipped for p in third.points)
    recorded = read_sweep_yaml(third.sweep_dir)
    assert recorded["executor"] == "inline"
    assert [p["executor"] for p in recorded["points"]] == ["inline", "process"]
    assert [p.executor for p in third.points] == ["inline", "process"]
