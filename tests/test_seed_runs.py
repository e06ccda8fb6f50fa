"""Runs written by thesis-ml, the seed project, load beside thesis-lib's own (facts/seed_dialect.py).

The seed-style run directories come from `thesis_ml_runs`, which writes them as thesis-ml's writers did
(pinned commit in its docstring); the thesis-lib runs are real tiny trainings.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from thesis_ml_runs import (append_scalars_csv, composed_config, epoch_end_offsets, total_time_s,
                            write_thesis_ml_run)

from thesis_lib.config import load_config
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import FactsError
from thesis_lib.facts import load_runs
from thesis_lib.facts.seed_dialect import config_columns, is_thesis_ml_run, load_thesis_ml_run, read_thesis_ml_config
from thesis_lib.reports.sweep_report import render_sweep_report
from thesis_lib.train import fit

SEED_VQ = "run_20251103-140953_compare_latent_spaces_job2"
SEED_NONE = "run_20251103-140953_compare_latent_spaces_job0"


def _load(*run_dirs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-formed seed run loads without a single skipped line
        return load_runs(run_dirs=list(run_dirs), **kwargs)


def _row(runs_df: pd.DataFrame, run_dir: Path) -> pd.Series:
    return runs_df.set_index("run_dir").loc[str(run_dir)]


def _missing(row: pd.Series, column: str) -> bool:
    """The column is absent from the table, or empty in this row."""
    return column not in row or row[column] is None or (isinstance(row[column], float) and math.isnan(row[column]))


# --- the two layouts ----------------------------------------------------------------------------------

def test_a_hydra_run_loads_with_its_directory_name_status_and_mapped_config(tmp_path):
    run = write_thesis_ml_run(tmp_path, SEED_VQ, latent_space="vq", seed=3, epoch_time_s=[2.0, 2.5, 3.0],
                              test_loss=0.71)
    assert is_thesis_ml_run(run) and (run / ".hydra" / "config.yaml").is_file() and not (run / "cfg.yaml").exists()
    runs_df = _load(run).runs_df
    row = _row(runs_df, run)
    assert row["run_id"] == SEED_VQ  # not the uuid4 each event's meta carries
    events = [json.loads(line) for line in (run / "facts" / "events.jsonl").read_text().splitlines()]
    event_ids = {e["meta"]["run_id"] for e in events}
    assert len(event_ids) == len(events) and SEED_VQ not in event_ids
    assert (row["status"], row["stop_reason"], row["dialect"]) == ("COMPLETED", None, "thesis-ml")
    identity = (row["task"], row["encoder"], row["tokenizer"], row["seed"], row["latent_dim"])
    assert identity == ("autoencoder", "mlp", "vq", 3, 32)
    mapped = {"model.task": "autoencoder", "model.encoder": "mlp", "model.bottleneck": "vq", "model.decoder": "mlp",
              "model.latent_dim": 32, "model.vq.codebook_size": 512, "model.vq.beta": 0.25, "model.globals_beta": 1.0,
              "trainer.seed": 3, "trainer.epochs": 3, "optim.lr": 0.001, "optim.weight_decay": 0.0,
              "optim.grad_clip": 1.0, "data.batch_size": 512,
              "data.path": "/data/atlas/users/nterlind/datasets/4tops_splitted.h5"}  # ${env.data_root} resolved
    assert {key: row[key] for key in mapped} == mapped
    assert (row["epochs"], row["best_epoch"], row["loss.total_best"], row["loss.total_final"]) == (3, 2, 0.7, 0.7)
    assert row["total_time_s"] == pytest.approx(total_time_s([2.0, 2.5, 3.0]))  # on_train_end's, not a sum
    assert row["test.loss"] == 0.71 and row["metric_perplex_final"] == 120.0
    # Never recorded by thesis-ml, so missing, not invented: parameter counts, thesis-lib's own loss parts.
    assert _missing(row, "params_total") and _missing(row, "params_trainable") and _missing(row, "throughput_mean")
    assert not [c for c in runs_df.columns if c.startswith(("thesis_ml.", "loss.recon"))]  # every override mapped


def test_a_cfg_yaml_run_loads_and_a_run_without_on_train_end_is_crashed_with_the_reason(tmp_path):
    run = write_thesis_ml_run(tmp_path, SEED_NONE, latent_space="none", layout="cfg_yaml", crash_after=1,
                              epoch_time_s=[2.0, 2.5, 3.0])
    assert (run / "cfg.yaml").is_file() and not (run / ".hydra").exists()
    runs_df, per_epoch, _ = _load(run)
    row = _row(runs_df, run)
    assert (row["run_id"], row["status"], row["dialect"]) == (SEED_NONE, "CRASHED", "thesis-ml")
    assert row["stop_reason"].startswith("no on_train_end event: its last event is on_epoch_end of epoch 1;")
    assert "thesis-ml records neither an exception nor its pid" in row["stop_reason"]
    # the seed's `none` latent space is the identity bottleneck (thesis_ml.phase1.autoenc.bottlenecks.identity)
    identity = (row["tokenizer"], row["model.bottleneck"], row["encoder"], row["seed"])
    assert identity == ("identity", "identity", "mlp", 42)
    assert row["epochs"] == 2 and row["total_time_s"] == pytest.approx(epoch_end_offsets([2.0, 2.5])[-1])
    assert _missing(row, "test.loss")
    # The 0.0 perplexity thesis-ml wrote for a run without VQ is a placeholder: no metric_perplex at all.
    assert "metric_perplex" in (run / "facts" / "scalars.csv").read_text()
    assert "metric_perplex" not in per_epoch[str(run)] and _missing(row, "metric_perplex_final")


def test_per_epoch_rows_equal_the_scalars_the_seed_wrote(tmp_path):
    times = [2.0, 2.5, 3.0]
    run = write_thesis_ml_run(tmp_path, SEED_VQ, latent_space="vq", train_loss=[1.25, 0.875, 0.625],
                              val_loss=[1.375, 0.9375, 0.6875], rec_tokens=[1.0, 0.5, 0.25], epoch_time_s=times)
    _, per_epoch, _ = _load(run)
    frame = per_epoch[str(run)]
    written = pd.read_csv(run / "facts" / "scalars.csv")  # as thesis-ml's own reader read it
    assert list(written.columns) == ["epoch", "split", "train_loss", "val_loss", "epoch_time_s", "throughput",
                                     "max_memory_mib", "metric_perplex"]
    assert frame[["epoch", "split"]].values.tolist() == written[["epoch", "split"]].values.tolist()
    for column in ("train_loss", "val_loss", "epoch_time_s", "metric_perplex", "max_memory_mib"):
        np.testing.assert_array_equal(frame[column].to_numpy(float), written[column].to_numpy(float), err_msg=column)
    np.testing.assert_array_equal(frame["loss"], written["train_loss"].fillna(written["val_loss"]))
    # throughput is train samples / (train + val seconds) in thesis-ml: kept under a name of its own
    np.testing.assert_array_equal(frame["thesis_ml_throughput"], written["throughput"])
    assert "throughput" not in frame and "loss_recon" not in frame
    # t: each epoch's on_epoch_end meta.timestamp minus on_start's, on both of the epoch's rows
    np.testing.assert_allclose(frame["t"], np.repeat(epoch_end_offsets(times), 2))
    val = frame["split"] == "val"
    assert frame.loc[val, "rec_tokens"].tolist() == [1.0, 0.5, 0.25] and frame.loc[~val, "rec_tokens"].isna().all()
    assert frame["step"].isna().all() and frame["epoch"].dtype == np.int64


# --- the config mapping -------------------------------------------------------------------------------

def test_the_loop_decides_which_sections_map_and_unmapped_overrides_become_columns():
    config = composed_config("linear", seed=5)
    columns = config_columns(config, ["phase1/latent_space=linear", "phase1.decoder.dropout=0.1",
                                      "+data.limit_samples=500", "env=stoomboot", "logging=wandb_online",
                                      "phase1.trainer.lr=0.001"])
    assert columns["model.bottleneck"] == "linear" and "model.vq.codebook_size" not in columns
    assert columns["trainer.seed"] == 5 and columns["optim.lr"] == 0.001
    # the composed value (0.0 here: the override string says 0.1, the saved config is the truth)
    assert columns["thesis_ml.phase1.decoder.dropout"] == 0.0 and columns["thesis_ml.data.limit_samples"] == 0
    assert not [c for c in columns if c in ("thesis_ml.env", "thesis_ml.logging", "thesis_ml.phase1/latent_space",
                                            "thesis_ml.phase1.trainer.lr")]
    # A classifier loop composes the phase1 defaults too; they are not its model, and its trainer is classifier.trainer.
    classifier = {**composed_config("vq"), "loop": "transformer_classifier"}
    columns = config_columns(classifier)
    assert columns["model.task"] == "classifier" and columns["model.encoder"] == "transformer"
    assert "model.bottleneck" not in columns and "model.latent_dim" not in columns
    assert (columns["trainer.seed"], columns["optim.lr"], columns["data.batch_size"]) == (7, 0.0001, 64)
    # An unknown loop keeps its name; no section is guessed for it.
    assert config_columns({**config, "loop": "test_mlp"}) == {"model.task": "thesis-ml:test_mlp",
                                                               "data.path": columns["data.path"]}


def test_interpolations_resolve_and_hydra_resolvers_stay_as_written(tmp_path):
    run = write_thesis_ml_run(tmp_path, SEED_VQ, config={
        **composed_config("vq"),
        "experiment": {"name": "cmp", "run_dir": "${env.output_root}/runs/run_${now:%Y}_${experiment.name}"},
        "phase1": {**composed_config("vq")["phase1"], "trainer": {
            **composed_config("vq")["phase1"]["trainer"], "lr": "1e-3", "epochs": "${general.trainer.epochs}"}}})
    config, overrides = read_thesis_ml_config(run)
    assert config["experiment"]["run_dir"] == "/data/atlas/users/nterlind/outputs/runs/run_${now:%Y}_cmp"
    assert config["phase1"]["trainer"]["epochs"] == 10 and config["phase1"]["trainer"]["lr"] == 0.001  # typed
    assert overrides == ["phase1/latent_space=vq", "phase1.trainer.seed=42", "loop=ae", "env=local"]


# --- beside thesis-lib's own runs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory):
    """Two seed runs (vq, none) and two real tiny thesis-lib runs (vq, identity)."""
    root = tmp_path_factory.mktemp("mixed")
    data = root / "events.h5"
    make_synthetic_events(data, n_events=600, seed=0, n_tokens=8)
    seed_root = root / "thesis-ml" / "outputs" / "runs"
    seeds = [write_thesis_ml_run(seed_root, SEED_VQ, latent_space="vq", val_loss=[1.3, 1.0, 0.95]),
             write_thesis_ml_run(seed_root, SEED_NONE, latent_space="none", val_loss=[1.2, 0.9, 0.85])]
    lib = []
    for bottleneck in ("vq", "identity"):
        config = load_config({
            "output_root": str(root / "outputs"), "run_name": bottleneck,
            "data": {"path": str(data), "batch_size": 128},
            "model": {"encoder": "mlp", "bottleneck": bottleneck, "hidden_dim": 16, "latent_dim": 8,
                      "vq": {"code_dim": 4, "codebook_size": 16}},
            "trainer": {"epochs": 2, "device": "cpu"}, "report": {"enabled": False}, "telemetry": {"enabled": False}})
        with contextlib.redirect_stdout(io.StringIO()):
            lib.append(Path(fit(config).run_dir))
    return seeds, lib


def test_one_load_gives_one_table_and_per_epoch_frames_for_both_dialects(mixed_runs):
    seeds, lib = mixed_runs
    runs_df, per_epoch, order = _load(*seeds, *lib)
    assert order == [str(r) for r in (*seeds, *lib)] and set(per_epoch) == set(order)
    by_dir = runs_df.set_index("run_dir")
    assert by_dir["dialect"].tolist() == ["thesis-ml", "thesis-ml", "thesis-lib", "thesis-lib"]
    assert by_dir["tokenizer"].tolist() == ["vq", "identity", "vq", "identity"]
    assert by_dir["status"].tolist() == ["COMPLETED"] * 4 and by_dir["task"].nunique() == 1
    seed_rows, lib_rows = by_dir.loc[[str(r) for r in seeds]], by_dir.loc[[str(r) for r in lib]]
    assert lib_rows["params_total"].notna().all() and seed_rows["params_total"].isna().all()
    assert lib_rows["model.hidden_dim"].notna().all() and seed_rows["model.hidden_dim"].isna().all()
    assert seed_rows["loss.recon_best"].isna().all() and lib_rows["loss.recon_best"].notna().all()
    assert seed_rows["throughput_mean"].isna().all() and lib_rows["throughput_mean"].notna().all()
    for run in (*seeds, *lib):
        frame = per_epoch[str(run)]
        assert {"epoch", "split", "t", "loss", "train_loss", "val_loss"} <= set(frame.columns)
        assert frame.loc[frame["split"] == "val", "t"].notna().all()


@pytest.mark.slow
def test_the_sweep_report_compares_tokenizers_over_seed_and_thesis_lib_runs(mixed_runs, tmp_path):
    seeds, lib = mixed_runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = render_sweep_report(run_dirs=[*seeds, *lib], analysis="compare_tokenizers",
                                    output_dir=tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "# Sweep report: `compare_tokenizers`" in markdown and "**4 runs** analysed" in markdown
    assert "COMPLETED 4" in markdown and "thesis-ml" in markdown and "thesis-lib" in markdown
    assert SEED_VQ in markdown and SEED_NONE in markdown
    figures = sorted(p.name for p in (tmp_path / "report" / "training" / "figures").iterdir())
    assert figures == ["figure-pareto_error_vs_compression.png", "figure-throughput_vs_best_val.png",
                       "figure-time_to_threshold.png", "figure-val_mse_vs_time.png", "figure-vq_perplexity_boxplot.png"]
    summary = json.loads((tmp_path / "report" / "training" / "summary.json").read_text())
    # thesis-ml recorded no loss_recon (its rec_tokens is an unmasked MSE), so every run is compared on its loss
    assert summary["summary"]["error_metric"] == "loss"
    by_tokenizer = pd.read_csv(tmp_path / "report" / "training" / "table-by_tokenizer.csv")
    assert sorted(by_tokenizer["dialect"]) == ["thesis-lib", "thesis-lib", "thesis-ml", "thesis-ml"]
    crossing = pd.read_csv(tmp_path / "report" / "training" / "table-time_to_threshold.csv").set_index("run_id")
    assert crossing.loc[SEED_NONE].filter(like="time_to_").notna().all()  # seed runs have wall times (t)


# --- what cannot be read ------------------------------------------------------------------------------

@pytest.mark.parametrize("damage, file", [
    (lambda run: (run / ".hydra" / "config.yaml").write_text("phase1: [unclosed\n"), ".hydra/config.yaml"),
    (lambda run: (run / ".hydra" / "config.yaml").write_text("- a list\n"), ".hydra/config.yaml"),
    (lambda run: (run / ".hydra" / "overrides.yaml").write_text("loop: ae\n"), ".hydra/overrides.yaml"),
    (lambda run: (run / "facts" / "scalars.csv").write_text("epoch;split;loss\n0;train;1.0\n"), "facts/scalars.csv"),
    (lambda run: (run / "facts" / "scalars.csv").unlink(), "facts/scalars.csv"),
    (lambda run: (run / "facts" / "events.jsonl").unlink(), "facts/events.jsonl"),
])
def test_a_malformed_seed_run_is_refused_naming_the_file(tmp_path, damage, file):
    good = write_thesis_ml_run(tmp_path, SEED_NONE, latent_space="none")
    bad = write_thesis_ml_run(tmp_path, SEED_VQ)
    damage(bad)
    with pytest.raises(FactsError, match=f"{bad}.*{file}|{bad / file}"):
        load_thesis_ml_run(bad)
    with pytest.raises(FactsError, match=str(bad / file)):
        load_runs(run_dirs=[good, bad], strict=True)
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        loaded = load_runs(run_dirs=[good, bad])
    assert loaded.order == [str(good)] and str(bad / file) in loaded.skipped_runs[0].reason


def test_a_folder_of_seed_runs_is_found_and_a_row_without_an_epoch_is_skipped_and_named(tmp_path):
    runs = tmp_path / "outputs" / "runs"  # thesis-ml kept every run here; its multirun folders held no run
    first = write_thesis_ml_run(runs, SEED_NONE, latent_space="none")
    write_thesis_ml_run(runs, SEED_VQ)
    append_scalars_csv(str(first), epoch=None, split="val", train_loss=None, val_loss=0.5, metrics={"perplex": 0.0},
                       epoch_time_s=None, throughput=None, max_memory_mib=None)  # written as epoch -1
    with pytest.warns(UserWarning, match=r"scalars.csv: line 8 \(epoch -1 is not a whole number\)"):
        loaded = load_runs(sweep_dir=runs)
    assert loaded.runs_df["run_id"].tolist() == [SEED_NONE, SEED_VQ] and loaded.runs_df["epochs"].tolist() == [3, 3]
    assert [b.line for b in loaded.bad_lines[str(first)]] == [8]


def test_a_thesis_lib_run_is_never_read_as_a_seed_run(tmp_path):
    run = write_thesis_ml_run(tmp_path, SEED_VQ)
    (run / "config.yaml").write_text("model: {}\n")  # config.yaml decides: thesis-lib's own reader reads it
    assert not is_thesis_ml_run(run)
    empty = tmp_path / "empty"
    (empty / "facts").mkdir(parents=True)
    assert not is_thesis_ml_run(empty)
