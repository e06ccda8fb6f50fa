"""End to end: notebooks/train.ipynb through papermill, read back with load_runs; every notebook's parameters documented."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from thesis_lib import load_runs
from thesis_lib.data import make_synthetic_events

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
PARAMETERISED = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "report_templates").glob("*.ipynb"))


@pytest.mark.slow
def test_train_notebook_through_the_papermill_command_line(tmp_path):
    data = make_synthetic_events(tmp_path / "events.h5", n_events=1000, seed=0, n_tokens=8)
    executed = tmp_path / "executed.ipynb"
    config = {"data": {"path": str(data), "batch_size": 128},
              "model": {"encoder": "mlp", "bottleneck": "linear", "latent_dim": 8, "hidden_dim": 32}}
    papermill = Path(sys.executable).parent / "papermill"
    # -p passes text: the config and the overrides arrive as JSON strings
    subprocess.run(
        [str(papermill), str(NOTEBOOK), str(executed), "--cwd", str(tmp_path), "--no-progress-bar",
         "-p", "config", json.dumps(config),
         "-p", "overrides", '{"trainer": {"epochs": 2, "seed": 4}, "model.bottleneck": "vq", "model.vq.code_dim": 4}',
         "-p", "output_root", str(tmp_path / "outputs"), "-p", "run_name", "papermill"],
        check=True, capture_output=True, text=True, timeout=600,
    )
    runs_df, per_epoch, order = load_runs(sweep_dir=str(tmp_path / "outputs"))
    assert len(runs_df) == 1
    row = runs_df.iloc[0]
    assert row["status"] == "COMPLETED" and row["tokenizer"] == "vq" and row["seed"] == 4
    assert row["run_id"].split("_")[2] == "papermill"
    assert row["epochs"] == 2 and len(per_epoch[order[0]]) == 4
    assert "COMPLETED" in executed.read_text()


@pytest.mark.slow
def test_train_notebook_reports_a_bad_override(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="did you mean 'vq'"):
        pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"),
                            parameters={"overrides": ["model.bottleneck=vqq"], "output_root": str(tmp_path)},
                            cwd=str(tmp_path), progress_bar=False, kernel_name="python3")


@pytest.mark.parametrize("notebook", PARAMETERISED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_parameter_shows_in_help_notebook_with_a_help_line(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    body = ast.parse("".join(cell["source"])).body
    assigned = [target.id for node in body for target in
                (node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else [])
                if isinstance(target, ast.Name)]
    shown = pm.inspect_notebook(str(notebook))  # what `papermill --help-notebook` prints
    assert list(shown) == assigned, f"parameters papermill cannot parse in {notebook.name}: {set(assigned) - set(shown)}"
    undocumented = [name for name, parameter in shown.items() if not parameter["help"].strip()]
    assert undocumented == [], f"{notebook.name}: parameters without a one-line help: {undocumented}"
