"""The sweep report: analyses, the report directory's layout, selection, bad inputs, inference, rendering."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from thesis_lib.version import __version__
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ConfigError, FactsError, ReportError
from thesis_lib.record.writer import RunWriter
from thesis_lib.record.schema import config_hash, scalar_columns
from thesis_lib.layout import create_run_dir
from thesis_lib.reports.analyses import ANALYSES, get_analysis
from thesis_lib.reports.analyses.compare_tokenizers import compression_bits, time_to_threshold
from thesis_lib.reports.sweep_plots import pareto_front
from thesis_lib.cli import main as cli_main
from thesis_lib.layout import REPORT_BACKLINKS as BACKLINK_FILE
from thesis_lib.reports.sweep_report import build_sweep_report, render_sweep_report
pytest_plugins = ("report_fixtures",)

TINY_MODEL = {"latent_dim": 8, "hidden_dim": 32, "num_layers": 1, "token_embed_dim": 4,
              "vq": {"codebook_size": 16, "code_dim": 4}}
# (bottleneck, globals_beta, seed): identity/vq x 2 seeds at beta 0.1, and vq at beta 1.0 for the globals grid.
POINTS = [("identity", 0.1, 1), ("identity", 0.1, 2), ("vq", 0.1, 1), ("vq", 0.1, 2), ("vq", 1.0, 1), ("vq", 1.0, 2)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_trainer):
    """Six real two-epoch runs under <root>/multiruns/exp_test; returns the sweep folder."""
    root = tmp_path_factory.mktemp("outputs")
    data = root / "events.h5"
    make_synthetic_events(data, n_events=600, seed=0, n_tokens=8)
    sweep_dir = root / "multiruns" / "exp_test"
    for bottleneck, beta, seed in POINTS:
        tiny_trainer(root, data, f"{bottleneck}_{beta}_{seed}", output_root=sweep_dir,
                   model={**TINY_MODEL, "bottleneck": bottleneck, "globals_beta": beta}, trainer={"seed": seed})
    return sweep_dir


def write_run(root, name, *, val_recon, val_globals=None, times=None, energy=None, seed=1, task="autoencoder",
              model=None):
    """A finished run written by hand through RunWriter: val loss = recon + globals, exact numbers."""
    model = {"task": task, "encoder": "mlp", "bottleneck": "identity", "latent_dim": 8, "globals_beta": 0.1, **(model or {})}
    config = {"output_root": str(root), "run_name": name, "data": {"path": "events.h5"}, "model": model,
              "trainer": {"seed": seed, "epochs": len(val_recon)}}
    columns = scalar_columns(["loss_recon", "loss_globals"])
    val_globals = val_globals or [0.0] * len(val_recon)
    times = times or [float(i + 1) for i in range(len(val_recon))]
    run_dir, run_id = create_run_dir(root, name)
    with RunWriter(run_dir, run_id, columns) as writer:
        writer.write_config(config)
        writer.event("on_start", config_hash=config_hash(config), params={"total": 10, "trainable": 10},
                     pid=os.getpid(), host=socket.gethostname(), resumed_from_epoch=None, scalar_columns=list(columns))
        for epoch, (recon, glob, t) in enumerate(zip(val_recon, val_globals, times)):
            train_row = {"epoch": epoch, "split": "train", "t": t, "loss": recon + glob + 0.1, "throughput": 100.0}
            if energy is not None:
                train_row["energy_j"] = energy[epoch]
            writer.scalars(train_row)
            writer.scalars({"epoch": epoch, "split": "val", "t": t, "loss": recon + glob, "loss_recon": recon,
                            "loss_globals": glob})
        writer.event("on_train_end", status="COMPLETED", stop_reason="max_epochs", total_time_s=times[-1])
    return run_dir


# -- analyses on real runs -------------------------------------------------------------------------

@pytest.mark.parametrize("analysis", sorted(ANALYSES))
def test_each_analysis_draws_every_figure_and_the_layout(sweep, tmp_path, analysis):
    report = build_sweep_report(sweep_dir=sweep, analysis=analysis, output_dir=tmp_path / "report")
    expected = set(get_analysis(analysis).FIGURES)
    assert set(report.figures) == expected
    for name in expected:
        path = tmp_path / "report" / "training" / "figures" / f"figure-{name}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for relative in ("manifest.yaml", "training/summary.csv", "training/summary.json"):
        assert (tmp_path / "report" / relative).is_file(), relative
    summary = pd.read_csv(tmp_path / "report" / "training" / "summary.csv")
    assert len(summary) == len(POINTS) and summary["run_id"].is_unique
    assert set(summary["tokenizer"]) == {"identity", "vq"}
    for table in report.output.tables:
        assert (tmp_path / "report" / "training" / f"table-{table}.csv").is_file()


def test_manifest_summary_and_backlinks(sweep):
    report = build_sweep_report(sweep_dir=sweep, analysis="compare_tokenizers", thresholds={"val_mse": 0.5},
                                which_figures=["val_mse_vs_time", "time_to_threshold"], name="tok")
    root = sweep.parent.parent
    assert report.report_dir.parent == root / "reports"
    assert re.fullmatch(r"report_\d{8}-\d{6}_tok(-\d+)?", report.report_dir.name)
    assert set(report.figures) == {"val_mse_vs_time", "time_to_threshold"}
    assert not (report.report_dir / "training" / "figures" / "figure-vq_perplexity_boxplot.png").exists()
    manifest = yaml.safe_load(report.manifest_path.read_text())
    assert manifest["analysis"] == "compare_tokenizers" and manifest["thesis_lib_version"] == __version__
    assert manifest["inputs"]["sweep_dir"] == str(sweep) and manifest["thresholds"] == {"val_mse": 0.5}
    hashes = {run["run_dir"]: run["config_hash"] for run in manifest["runs"]}
    assert hashes == dict(zip(report.runs_df["run_dir"], report.runs_df["config_hash"])) and len(hashes) == 6
    assert "training/summary.csv" in manifest["outputs"] and manifest["skipped"] == []
    summary = json.loads((report.report_dir / "training" / "summary.json").read_text())
    assert summary["summary"]["thresholds_val_mse"] == [0.5] and summary["summary"]["threshold_automatic"] is False
    assert summary["figures"]["time_to_threshold"] == "training/figures/figure-time_to_threshold.png"
    # 0.5 is far below what two epochs reach: every run is reported as never crossing it
    assert summary["tables"]["time_to_threshold"][0]["time_to_0.5_s"] is None
    for run_dir in report.runs_df["run_dir"]:
        lines = (Path(run_dir) / BACKLINK_FILE).read_text().splitlines()
        assert f"\tcompare_tokenizers\t{report.report_dir.resolve()}" in lines[-1]


def test_compare_globals_heads_grid_on_real_runs(sweep, tmp_path):
    report = build_sweep_report(sweep_dir=sweep, analysis="compare_globals_heads", select={"tokenizer": "vq"},
                                output_dir=tmp_path / "r")
    assert report.output.summary["grid_x"] == "model.globals_beta" and report.output.summary["grid_y"] is None
    grid = report.output.tables["grid_best_rec_globals"]
    assert list(grid.columns) == [0.1, 1.0] and grid.shape == (1, 2)
    values = report.output.tables["best_epoch_values"].set_index("run_id")["best_rec_globals"]
    betas = report.runs_df.set_index("run_id")["model.globals_beta"]
    assert grid.iloc[0][1.0] == pytest.approx(values[betas == 1.0].mean())


# -- selection and bad input -----------------------------------------------------------------------

def test_select_matches_numbers_given_as_text_and_lists(sweep, tmp_path):
    report = build_sweep_report(sweep_dir=sweep, select={"tokenizer": ["vq"], "trainer.seed": "2"}, output_dir=tmp_path / "a")
    assert sorted(report.runs_df["model.globals_beta"]) == [0.1, 1.0]
    assert set(report.runs_df["seed"]) == {2} and set(report.runs_df["tokenizer"]) == {"vq"}
    manifest = yaml.safe_load((tmp_path / "a" / "manifest.yaml").read_text())
    assert manifest["filters"]["select"] == {"tokenizer": ["vq"], "trainer.seed": "2"}


def test_select_that_matches_nothing_lists_existing_values(sweep, tmp_path):
    with pytest.raises(ConfigError) as caught:
        build_sweep_report(sweep_dir=sweep, select={"model.latent_dim": 64, "tokenizer": "vq"}, output_dir=tmp_path / "b")
    message = str(caught.value)
    assert "matches none of the 6 runs" in message
    assert "model.latent_dim: ['8']" in message and "tokenizer: ['identity', 'vq']" in message
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match=r"no column 'tokenizr'.*did you mean 'tokenizer'"):
        build_sweep_report(sweep_dir=sweep, select={"tokenizr": "vq"})


def test_unknown_analysis_and_figure_names(sweep):
    with pytest.raises(ConfigError, match=r"unknown analysis 'compare_tokenizer'; expected one of "
                                          r"\['compare_globals_heads', 'compare_tokenizers', 'generic'\]; "
                                          r"did you mean 'compare_tokenizers'\?"):
        build_sweep_report(sweep_dir=sweep, analysis="compare_tokenizer")
    with pytest.raises(ConfigError, match=r"analysis 'generic' has no figure 'val_curve'.*did you mean 'val_curves'"):
        build_sweep_report(sweep_dir=sweep, which_figures=["val_curve"])


def test_missing_sweep_dir_is_named(tmp_path):
    missing = tmp_path / "multiruns" / "exp_nope"
    with pytest.raises(FactsError, match=re.escape(f"sweep_dir '{missing}' does not exist")):
        build_sweep_report(sweep_dir=missing)


def test_runs_missing_facts_are_listed_in_the_manifest(tmp_path):
    sweep_dir = tmp_path / "multiruns" / "exp_x"
    good = write_run(sweep_dir, "good", val_recon=[1.0, 0.5])
    broken = write_run(sweep_dir, "broken", val_recon=[1.0])
    (broken / "config.yaml").unlink()
    with pytest.warns(UserWarning, match="skipped 1 of 2 run directories"):
        report = build_sweep_report(sweep_dir=sweep_dir)
    assert list(report.runs_df["run_dir"]) == [str(good)]
    assert report.skipped == [{"run_dir": str(broken), "reason": f"{broken / 'config.yaml'} is missing "
                                                                 "(every run writes its resolved config there)"}]
    assert yaml.safe_load(report.manifest_path.read_text())["skipped"] == report.skipped
    assert not (broken / BACKLINK_FILE).exists() and (good / BACKLINK_FILE).is_file()


def test_mixed_tasks_leave_out_the_other_task_and_say_why(tmp_path):
    ae = write_run(tmp_path, "ae", val_recon=[1.0, 0.5])
    clf = write_run(tmp_path, "clf", val_recon=[0.7, 0.6], task="classifier")
    with pytest.warns(UserWarning, match="1 run\\(s\\) left out"):
        report = build_sweep_report(run_dirs=[ae, clf], analysis="compare_tokenizers", output_dir=tmp_path / "r")
    assert list(report.runs_df["run_dir"]) == [str(ae)]
    assert report.excluded[0]["run_dir"] == str(clf)
    assert report.excluded[0]["reason"] == ("task 'classifier': analysis 'compare_tokenizers' reads autoencoder / "
                                            "diffusion_autoencoder / gan_autoencoder runs only")
    assert yaml.safe_load(report.manifest_path.read_text())["excluded"][0]["task"] == "classifier"
    with pytest.raises(ReportError, match=r"reads autoencoder / diffusion_autoencoder / gan_autoencoder runs, but "
                                          r"the 1 selected runs are of tasks \['classifier'\]"):
        build_sweep_report(run_dirs=[clf], analysis="compare_globals_heads", output_dir=tmp_path / "r2")
    # generic reads any task, one at a time: the most common one (here two classifiers to one autoencoder)
    clf2 = write_run(tmp_path, "clf2", val_recon=[0.9, 0.8], task="classifier")
    with pytest.warns(UserWarning, match="left out of the 'generic' report"):
        generic = build_sweep_report(run_dirs=[ae, clf, clf2], output_dir=tmp_path / "r3")
    assert sorted(generic.runs_df["run_dir"]) == sorted([str(clf), str(clf2)])
    assert generic.excluded[0]["reason"] == ("task 'autoencoder': losses of different tasks are not comparable; "
                                             "this 'generic' report covers the classifier runs")


def test_a_failing_analysis_still_leaves_a_manifest_that_says_so(tmp_path, monkeypatch):
    from thesis_lib.reports.analyses import generic

    run = write_run(tmp_path, "one", val_recon=[1.0])

    def broken(ctx):
        raise RuntimeError("plot exploded")

    monkeypatch.setattr(generic, "run", broken)
    with pytest.raises(RuntimeError, match="plot exploded"):
        build_sweep_report(run_dirs=[run], output_dir=tmp_path / "r")
    manifest = yaml.safe_load((tmp_path / "r" / "manifest.yaml").read_text())
    assert manifest["error"] == "RuntimeError: plot exploded" and manifest["runs"][0]["run_dir"] == str(run)
    assert not (run / BACKLINK_FILE).exists()


# -- numbers on hand-written facts ---------------------------------------------------------------

def test_seed_aggregation_mean_and_std(tmp_path):
    runs = [write_run(tmp_path, f"a{seed}", val_recon=[v + 1.0, v], seed=seed, model={"latent_dim": 8})
            for seed, v in zip((1, 2, 3), (1.0, 2.0, 4.0))]
    runs.append(write_run(tmp_path, "b1", val_recon=[3.0, 0.5], seed=1, model={"latent_dim": 16}))
    report = build_sweep_report(run_dirs=runs, output_dir=tmp_path / "r")
    table = report.output.tables["seed_aggregation"].set_index("model.latent_dim")
    assert report.output.summary["grid_columns"] == ["model.latent_dim"]
    assert table.loc[8, "n_runs"] == 3 and table.loc[8, "seeds"] == "1,2,3"
    assert table.loc[8, "loss.total_best_mean"] == pytest.approx(7 / 3)
    assert table.loc[8, "loss.total_best_std"] == pytest.approx(math.sqrt(7 / 3))  # sample std of 1, 2, 4
    assert table.loc[16, "loss.total_best_mean"] == 0.5 and math.isnan(table.loc[16, "loss.total_best_std"])
    best = report.output.tables["best_runs"]
    assert list(best["loss.total_best"]) == [0.5, 1.0, 2.0, 4.0]
    saved = pd.read_csv(tmp_path / "r" / "training" / "table-seed_aggregation.csv")
    assert saved["loss.total_best_mean"].tolist() == pytest.approx([7 / 3, 0.5])


def test_pareto_front_on_known_points():
    x = [1.0, 2.0, 3.0, 4.0, 2.0, np.nan, 5.0]
    y = [5.0, 3.0, 4.0, 1.0, 3.0, 0.0, 1.0]
    assert pareto_front(x, y).tolist() == [True, True, False, True, True, False, False]
    # larger x better: (5, 1) dominates (4, 1) and everything with y >= 1
    assert pareto_front(x, y, maximize_x=True).tolist() == [False, False, False, False, False, False, True]


def test_loss_vs_energy_front_and_the_cpu_message(tmp_path):
    fast = write_run(tmp_path, "fast", val_recon=[2.0, 1.0], energy=[10.0, 10.0])
    good = write_run(tmp_path, "good", val_recon=[2.0, 0.5], energy=[30.0, 30.0])
    bad = write_run(tmp_path, "bad", val_recon=[2.0, 1.5], energy=[40.0, 40.0])
    report = build_sweep_report(run_dirs=[fast, good, bad], output_dir=tmp_path / "gpu")
    pareto = report.output.tables["pareto"].set_index("run_id")
    assert pareto["energy_j_total"].tolist() == [20.0, 60.0, 80.0]
    assert pareto["on_front_energy_j_total"].tolist() == [True, True, False]
    assert report.output.summary["energy_measured"] is True
    cpu = build_sweep_report(run_dirs=[write_run(tmp_path, "cpu", val_recon=[1.0])], output_dir=tmp_path / "cpu")
    assert "Loss vs energy: no energy measured (CPU runs); energy comes from NVML on GPU runs." in cpu.output.notes
    assert cpu.figures["pareto_loss_vs_energy"].is_file() and cpu.output.summary["front_energy_j_total"] == []


def test_time_to_threshold_and_compression_bits():
    val = pd.DataFrame({"t": [1.0, 2.0, 3.0], "loss_recon": [0.5, 0.3, 0.2]})
    assert time_to_threshold(val, "loss_recon", 0.25) == 3.0
    assert time_to_threshold(val, "loss_recon", 0.3) == 2.0
    assert math.isnan(time_to_threshold(val, "loss_recon", 0.1))
    meta = {"n_tokens": 8, "cont_dim": 4, "globals_dim": 2, "n_token_types": 4}
    assert compression_bits({"latent_dim": 8, "bottleneck": "vq", "code_dim": 4, "codebook_size": 16}, meta) == (1104.0, 8.0)
    assert compression_bits({"latent_dim": 8, "bottleneck": "identity"}, meta) == (1104.0, 256.0)


def test_compare_globals_heads_two_axis_grid(tmp_path):
    runs = [write_run(tmp_path, f"b{beta}_l{latent}", val_recon=[1.0, recon], val_globals=[1.0, glob],
                      model={"globals_beta": beta, "latent_dim": latent})
            for beta, latent, recon, glob in [(0.1, 8, 0.4, 0.9), (1.0, 8, 0.6, 0.2), (0.1, 16, 0.3, 0.8), (1.0, 16, 0.5, 0.1)]]
    report = build_sweep_report(run_dirs=runs, analysis="compare_globals_heads", output_dir=tmp_path / "r")
    assert (report.output.summary["grid_x"], report.output.summary["grid_y"]) == ("model.globals_beta", "model.latent_dim")
    globals_grid = report.output.tables["grid_best_rec_globals"]
    assert globals_grid.loc[8, 0.1] == pytest.approx(0.9) and globals_grid.loc[16, 1.0] == pytest.approx(0.1)
    assert report.output.tables["grid_best_rec_tokens"].loc[16, 0.1] == pytest.approx(0.3)
    assert report.output.summary["best_beta"] == {"best_rec_tokens": 0.1, "best_rec_globals": 1.0}


# -- inference, CLI and the notebook ---------------------------------------------------------------

def test_inference_section_records_a_checkpoint_that_will_not_load(sweep, tmp_path):
    copy = tmp_path / "multiruns" / "exp_copy"
    shutil.copytree(sweep, copy)
    runs = sorted((copy / "runs").iterdir())
    (runs[0] / "model.pt").write_bytes(b"not a checkpoint")
    report = build_sweep_report(sweep_dir=copy, select={"model.globals_beta": 0.1}, output_dir=tmp_path / "r",
                                inference={"enabled": True, "max_samples": 64, "batch_size": 64})
    summary = json.loads((tmp_path / "r" / "inference" / "summary.json").read_text())
    assert summary["options"]["dataset_split"] == "test" and summary["options"]["max_samples"] == 64
    assert list(summary["errors"]) == [str(runs[0])]
    assert len(summary["models"]) == 3
    for metrics in summary["models"].values():
        assert 0.0 <= metrics["auroc"] <= 1.0 and set(metrics["auroc_by_corruption"])
    for name in ("reconstruction_error_distributions", "model_comparison_bars", "auroc_comparison"):
        assert (tmp_path / "r" / "inference" / "figures" / f"figure-{name}.png").is_file()
    assert any(note.startswith(f"Inference could not evaluate {runs[0]}") for note in report.output.notes)
    assert len(pd.read_csv(tmp_path / "r" / "training" / "summary.csv")) == 4


def test_cli_report_sweep_writes_the_layout(sweep, tmp_path, capsys):
    assert cli_main(["report", "sweep", str(sweep), "--analysis", "compare_tokenizers", "--select", "tokenizer=vq",
                     "--select", "model.globals_beta=0.1", "--threshold", "val_mse=2.0",
                     "--which-figures", "time_to_threshold", "--output-dir", str(tmp_path / "cli"), "--no-notebook"]) == 0
    assert f"sweep report (2 runs): {tmp_path / 'cli'}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "training" / "summary.json").read_text())
    assert summary["select"] == {"tokenizer": ["vq"], "model.globals_beta": ["0.1"]}
    assert summary["summary"]["thresholds_val_mse"] == [2.0]
    assert sorted(p.name for p in (tmp_path / "cli" / "training" / "figures").iterdir()) == ["figure-time_to_threshold.png"]


@pytest.mark.slow
def test_the_sweep_template_renders_two_runs(report_sweep, tmp_path):
    paths = render_sweep_report(sweep_dir=report_sweep, analysis="generic", output_dir=tmp_path / "rendered")
    assert paths["report_dir"] == tmp_path / "rendered" and paths["manifest"].is_file()
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64") >= 4 and not re.findall(r'<img[^>]*src="(?!data:)', html)
    assert "build_sweep_report" not in html  # code hidden
    markdown = paths["markdown"].read_text()
    assert "# Sweep report: `generic`" in markdown and "**2 runs** analysed" in markdown
    assert "![val_curves](training/figures/figure-val_curves.png)" in markdown
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == [
        "## Runs", "## Figures (generic)", "## Tables", "## Summary and notes", "## Inference"]
    runs_table = markdown.split("## Runs", 1)[1].split("## Figures", 1)[0]
    assert runs_table.count("| COMPLETED |") == 2  # one Markdown row per run, escaped like every run value
