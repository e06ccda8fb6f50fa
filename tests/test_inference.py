"""Inference over real tiny runs: model reload, metrics, AUROC, bad runs, raw scores, figures."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from thesis_lib import make_synthetic_events, train
from thesis_lib.data import EventFile, EventLoader
from thesis_lib.errors import ConfigError, DataError, ReportError
from thesis_lib.facts import read_events
from thesis_lib.reports.inference import (
    DEFAULT_CORRUPTIONS,
    auroc,
    load_run_model,
    resolve_data_path,
    run_inference,
)
from thesis_lib.reports.inference_plots import (
    FIGURE_FILES,
    plot_auroc_comparison,
    plot_inference_figures,
    plot_model_comparison_bars,
)

TINY_MODEL = {"encoder": "mlp", "hidden_dim": 16, "latent_dim": 8}
N_TEST = 120  # 800 events -> 560 / 120 / 120


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One autoencoder (vq) and one classifier run, trained for 2 epochs on a tiny synthetic file."""
    root = tmp_path_factory.mktemp("inference")
    data = root / "data" / "events.h5"
    data.parent.mkdir()
    make_synthetic_events(data, n_events=800, seed=0, n_tokens=8, anomaly_fraction=0.1)
    base = {"data": {"path": str(data), "batch_size": 64}, "trainer": {"epochs": 2, "device": "cpu"},
            "output_root": str(root / "outputs"), "report": {"enabled": False}, "telemetry": {"enabled": False}}
    ae = train({**base, "run_name": "ae", "model": {**TINY_MODEL, "bottleneck": "vq", "vq": {"code_dim": 4}}})
    clf = train({**base, "run_name": "clf", "model": {**TINY_MODEL, "task": "classifier"}})
    return {"root": root, "data": data, "ae": ae.run_dir, "clf": clf.run_dir}


def copy_run(run_dir, dest):
    """A copy of a run directory to break on purpose."""
    return shutil.copytree(run_dir, dest)


def test_auroc_matches_sklearn_and_a_hand_computed_case():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts one half
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=200), rng.integers(0, 2, 200)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(DataError, match="auroc needs both classes; all 3 labels are 1"):
        auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(DataError, match="1 of 2 scores are NaN or infinite"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(DataError, match="3 scores but 2 labels"):
        auroc([0.1, 0.2, 0.3], [0, 1])


def _test_loss(model, config, meta, data):
    """The sample-weighted mean test loss the training loop reports (same batches, same normalization)."""
    loader = EventLoader(EventFile(data), "test", batch_size=config.data.batch_size, normalization=meta.normalization)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            n = len(batch["labels"])
            total += model.loss_and_metrics(batch)["loss"].item() * n
            count += n
    return total / count


def test_load_run_model_reproduces_the_runs_recorded_test_loss(runs):
    for key in ("ae", "clf"):
        model, config, meta = load_run_model(runs[key])
        assert not model.training
        assert meta.n_tokens == 8 and meta.label_names[-1] == "bsm_resonance"
        recorded = [e for e in read_events(runs[key]) if e["moment"] == "on_test_end"][0]["metrics"]["loss"]
        assert _test_loss(model, config, meta, runs["data"]) == pytest.approx(recorded, rel=1e-5)
    assert config.model.task == "classifier"
    # A freshly initialised model does not reproduce it: the weights really came from model.pt.
    fresh, _, _ = load_run_model(runs["ae"])
    torch.manual_seed(123)
    for p in fresh.parameters():
        torch.nn.init.normal_(p)
    assert _test_loss(fresh, config, meta, runs["data"]) != pytest.approx(recorded, rel=1e-3)


def test_run_inference_summarises_both_tasks(runs):
    result = run_inference([runs["ae"], runs["clf"]], batch_size=64, device="cpu")
    assert result.errors == {}
    ae_id, clf_id = runs["ae"].name, runs["clf"].name
    assert result.by_task == {"autoencoder": [ae_id], "classifier": [clf_id]}
    ae = result.models[ae_id]
    assert ae["task"] == "autoencoder" and ae["n_events"] == N_TEST and ae["bottleneck"] == "vq"
    for score in ("mse", "mae", "total"):
        s = ae[score]
        assert set(s) == {"mean", "std", "p50", "p95", "p99"}
        assert 0 < s["p50"] <= s["p95"] <= s["p99"] and s["mean"] > 0 and s["std"] > 0
    assert list(ae["auroc_by_corruption"]) == list(DEFAULT_CORRUPTIONS)
    assert all(0 <= v <= 1 for v in ae["auroc_by_corruption"].values())
    assert ae["auroc"] == pytest.approx(np.mean(list(ae["auroc_by_corruption"].values())))
    assert ae["changed_fraction"]["additive_noise"] == 1.0
    # The 600 GeV resonance is far from the Standard-Model events even after 2 epochs.
    assert ae["auroc_anomaly_class"] == ae["auroc_class"]["bsm_resonance"] and ae["auroc_anomaly_class"] > 0.8
    frame = result.per_event_scores[ae_id]
    assert len(frame) == N_TEST
    is_z = frame["label"] == 3
    assert ae["auroc_class"]["z_ll"] == pytest.approx(roc_auc_score(is_z, frame["mse"]))
    noisy = frame["mse_additive_noise"]
    assert ae["auroc_by_corruption"]["additive_noise"] == pytest.approx(
        roc_auc_score(np.r_[np.zeros(N_TEST), np.ones(N_TEST)], np.r_[frame["mse"], noisy]))
    # Copies a corruption left identical (single-type events under swapped_id_cont) are not positives.
    hit = frame["changed_swapped_id_cont"].to_numpy()
    assert 0 < hit.sum() < N_TEST and ae["changed_fraction"]["swapped_id_cont"] == pytest.approx(hit.mean())
    assert ae["auroc_by_corruption"]["swapped_id_cont"] == pytest.approx(roc_auc_score(
        np.r_[np.zeros(N_TEST), np.ones(hit.sum())], np.r_[frame["mse"], frame["mse_swapped_id_cont"][hit]]))

    clf = result.models[clf_id]
    labels = EventFile(runs["data"]).read_block("test", 0, N_TEST)["labels"]
    matrix = np.array(clf["confusion_matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == N_TEST
    assert matrix.sum(axis=1).tolist() == np.bincount(labels, minlength=5).tolist()
    assert clf["accuracy"] == pytest.approx(np.trace(matrix) / N_TEST)
    recorded = [e for e in read_events(runs["clf"]) if e["moment"] == "on_test_end"][0]["metrics"]
    assert clf["accuracy"] == pytest.approx(recorded["metric_accuracy"], abs=1e-6)
    assert set(clf["auroc_class"]) == set(clf["class_names"])
    assert clf["auroc"] == pytest.approx(np.mean(list(clf["auroc_class"].values())))
    json.dumps(result.to_dict(), allow_nan=False)  # summary.json-ready: strict JSON


def test_run_inference_is_reproducible_and_honours_options(runs):
    first = run_inference(runs["ae"], batch_size=64, device="cpu", seed=3, max_samples=50)
    second = run_inference([runs["ae"]], batch_size=64, device="cpu", seed=3, max_samples=50,
                           anomaly_score="total", corruptions=("dropped_tokens",))
    a, b = first.models[runs["ae"].name], second.models[runs["ae"].name]
    assert a["n_events"] == 50 and b["n_events"] == 50
    assert first.options["max_samples"] == 50 and first.options["autocast_active"] is False
    again = run_inference(runs["ae"], batch_size=64, device="cpu", seed=3, max_samples=50)
    assert again.models[runs["ae"].name]["auroc_by_corruption"] == a["auroc_by_corruption"]
    assert list(b["auroc_by_corruption"]) == ["dropped_tokens"] and b["anomaly_score"] == "total"
    assert "total_dropped_tokens" in second.per_event_scores[runs["ae"].name]
    with pytest.raises(DataError, match="unknown corruption 'noise'"):
        run_inference(runs["ae"], corruptions=("noise",))
    with pytest.raises(ConfigError, match="dataset_split='tset'; allowed: train, val, test"):
        run_inference(runs["ae"], dataset_split="tset")
    with pytest.raises(ConfigError, match="persist_raw_scores=True needs output_dir"):
        run_inference(runs["ae"], persist_raw_scores=True)


def test_a_run_whose_checkpoint_will_not_load_is_recorded_and_others_go_on(runs, tmp_path):
    garbage = copy_run(runs["ae"], tmp_path / "garbage_run")
    (garbage / "model.pt").write_bytes(b"this is not a checkpoint")
    mismatch = copy_run(runs["ae"], tmp_path / "mismatch_run")
    state = torch.load(mismatch / "model.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("decoder")}, mismatch / "model.pt")
    missing = copy_run(runs["ae"], tmp_path / "missing_run")
    (missing / "model.pt").unlink()
    (missing / "best_val.pt").unlink()

    result = run_inference([garbage, runs["clf"], mismatch, missing], batch_size=64, device="cpu")
    assert list(result.models) == [runs["clf"].name]
    assert set(result.errors) == {str(garbage), str(mismatch), str(missing)}
    assert result.errors[str(garbage)].startswith(f"{garbage}: model.pt could not be loaded")
    assert "does not match the model config.yaml describes (autoencoder mlp/vq" in result.errors[str(mismatch)]
    assert "Missing key(s)" in result.errors[str(mismatch)]
    assert result.errors[str(missing)] == (f"{missing}: neither model.pt nor best_val.pt found; the run saved no "
                                           "weights (it failed or was stopped before its first validation)")
    with pytest.raises(ReportError, match="model.pt could not be loaded"):
        load_run_model(garbage)
    figures = plot_inference_figures(result, tmp_path / "figures")  # the report covers what it can
    assert all(path.stat().st_size > 0 for path in figures.values())


def _set_data_path(run_dir, path, cwd):
    """Point a run's config at `path` and its env.json at launch directory `cwd`."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["path"] = path
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    env = json.loads((run_dir / "env.json").read_text())
    env["cwd"] = str(cwd)
    (run_dir / "env.json").write_text(json.dumps(env))


def test_data_path_is_resolved_against_the_runs_cwd_and_a_missing_file_names_both_paths(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # today's directory has no data/: only the run's launch directory can supply it
    relative = copy_run(runs["ae"], tmp_path / "relative_run")
    _set_data_path(relative, "data/events.h5", runs["root"])
    result = run_inference(relative, batch_size=64, device="cpu", max_samples=20)
    assert result.errors == {}
    assert result.models["relative_run"]["data_path"] == str(runs["root"] / "data" / "events.h5")

    lost = copy_run(runs["ae"], tmp_path / "lost_run")
    _set_data_path(lost, "nowhere/events.h5", tmp_path / "launch")
    _, config, _ = load_run_model(lost)
    with pytest.raises(DataError) as info:
        resolve_data_path(lost, config)
    message = str(info.value)
    assert (f"{lost}: data file not found; tried {tmp_path / 'launch' / 'nowhere' / 'events.h5'}, "
            f"{tmp_path / 'nowhere' / 'events.h5'} "
            f"(config data.path='nowhere/events.h5' relative to the run's launch directory {tmp_path / 'launch'}") in message
    result = run_inference([lost], device="cpu")
    assert result.models == {} and "data file not found" in result.errors[str(lost)]
    rescued = run_inference([lost], device="cpu", data_path=runs["data"], max_samples=20)
    assert rescued.models["lost_run"]["n_events"] == 20


def test_a_relative_data_path_is_found_from_the_runs_launch_directory_before_todays(runs, tmp_path, monkeypatch):
    # Today's directory holds another data/events.h5 (what `thesis-lib demo` leaves in a checkout).
    today = tmp_path / "today"
    make_synthetic_events(today / "data" / "events.h5", n_events=300, seed=5, n_tokens=6)
    monkeypatch.chdir(today)
    run = copy_run(runs["ae"], tmp_path / "relative_run")
    _set_data_path(run, "data/events.h5", runs["root"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own file: no data warning either
        result = run_inference(run, batch_size=64, device="cpu", max_samples=20)
    assert result.errors == {}
    metrics = result.models["relative_run"]
    assert metrics["data_path"] == str(runs["root"] / "data" / "events.h5") and metrics["data_warning"] is None


def test_a_data_file_other_than_the_one_trained_on_is_a_warning_naming_both_paths_and_what_differs(runs, tmp_path):
    other = make_synthetic_events(tmp_path / "regenerated.h5", n_events=800, seed=1, n_tokens=8, anomaly_fraction=0.1)
    with pytest.warns(UserWarning) as caught:
        result = run_inference(runs["ae"], batch_size=64, device="cpu", max_samples=20, data_path=other)
    message = str(caught[0].message)
    assert message.startswith(f"{runs['ae']}: the data file {other} (resolved {other.resolve()}) differs from the one "
                              f"the run was trained on ({runs['data'].resolve()}, recorded at its start in "
                              "facts/events.jsonl): ")
    assert "content of its first/last MiB" in message and "modification time" in message
    assert result.models[runs["ae"].name]["data_warning"] == message
    assert message in result.models[runs["ae"].name]["notes"]


def test_a_crashed_run_is_scored_from_best_val_pt_and_says_so(killed_run):
    run_dir = killed_run["run_dir"]
    result = run_inference(run_dir, batch_size=64, device="cpu", max_samples=30, corruptions=("additive_noise",))
    assert result.errors == {}
    metrics = result.models[run_dir.name]
    assert metrics["weights"] == "best_val.pt" and metrics["n_events"] == 30
    assert metrics["weights_note"] == ("model.pt not found: the run ended before writing it (a crash or a kill), so "
                                       "the best validation epoch's weights come from best_val.pt")
    assert metrics["weights_note"] in metrics["notes"]
    model, _, _ = load_run_model(run_dir)
    saved = torch.load(run_dir / "best_val.pt", weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_persist_raw_scores_writes_one_row_per_event(runs, tmp_path):
    result = run_inference([runs["ae"], runs["clf"]], batch_size=64, device="cpu", persist_raw_scores=True,
                           output_dir=tmp_path / "raw")
    labels = EventFile(runs["data"]).read_block("test", 0, N_TEST)["labels"]
    ae = pd.read_csv(tmp_path / "raw" / f"raw_scores_{runs['ae'].name}.csv")
    assert len(ae) == N_TEST and ae["event"].tolist() == list(range(N_TEST))
    assert ae["label"].tolist() == labels.tolist() and set(ae["run_id"]) == {runs["ae"].name}
    for column in ("mse", "mae", "tokens_ce", "globals_mse", *(f"mse_{c}" for c in DEFAULT_CORRUPTIONS)):
        assert column in ae and ae[column].notna().all(), column
    assert ae["mse"].mean() == pytest.approx(result.models[runs["ae"].name]["mse"]["mean"], rel=1e-5)
    clf = pd.read_csv(tmp_path / "raw" / f"raw_scores_{runs['clf'].name}.csv")
    assert len(clf) == N_TEST
    probs = clf[[f"prob_{k}" for k in range(5)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == clf["pred"]).all()


def test_figures_are_written_from_a_result_and_from_its_json(runs, tmp_path):
    result = run_inference([runs["ae"], runs["clf"]], batch_size=64, device="cpu")
    written = plot_inference_figures(result, tmp_path / "figures")
    assert {p.name for p in written.values()} == set(FIGURE_FILES.values())
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(json.dumps(result.to_dict()))
    assert plot_model_comparison_bars(summary, tmp_path / "bars.png").stat().st_size > 0
    assert plot_auroc_comparison(summary, tmp_path / "auroc.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="unknown inference figures \\['roc'\\]"):
        plot_inference_figures(result, tmp_path, which=["roc"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_a_cuda_device_without_a_gpu_names_the_inference_device_key(runs):
    with pytest.raises(ConfigError, match=r"inference device='cuda' but no CUDA device is visible; use 'auto' or 'cpu'"):
        run_inference(runs["ae"], device="cuda")
