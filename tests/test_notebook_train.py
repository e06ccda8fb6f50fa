"""End to end: notebooks/train.ipynb through papermill, read back with load_runs."""

from pathlib import Path

import papermill as pm
import pytest

from thesis_lib import load_runs
from thesis_lib.data import make_synthetic_events

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train.ipynb"


@pytest.mark.slow
def test_train_notebook_through_papermill(tmp_path):
    data = make_synthetic_events(tmp_path / "events.h5", n_events=1000, seed=0, n_tokens=8)
    executed = tmp_path / "executed.ipynb"
    pm.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={
            "config": {"data": {"path": str(data), "batch_size": 128},
                       "model": {"encoder": "mlp", "bottleneck": "linear", "latent_dim": 8, "hidden_dim": 32}},
            # papermill's -p passes text: the notebook must accept a JSON string too
            "overrides": '{"trainer": {"epochs": 2, "seed": 4}, "model.bottleneck": "vq", "model.vq.code_dim": 4}',
            "output_root": str(tmp_path / "outputs"),
            "run_name": "papermill",
        },
        cwd=str(tmp_path),
        progress_bar=False,
        kernel_name="python3",
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
