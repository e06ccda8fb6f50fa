"""data_meta.json's `dataset` section: measured at a run's start, read back as RunReport.dataset, never fatal."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from thesis_lib.data import (
    DataMeta,
    make_loaders,
    make_synthetic_events,
    make_synthetic_sensor_data,
    prepare_spectrograms,
)
from thesis_lib.data.describe import DATASET_SCHEMA, describe_dataset
from thesis_lib.data.normalization import compute_normalization
from thesis_lib.facts import read_events
from thesis_lib.layout import DATA_META_FILE, MODEL_FILE
from thesis_lib.record.env import describe_data_file
from thesis_lib.reports.run_report import load_run_report
from thesis_lib.train import fit

TINY_MLP = {"encoder": "mlp", "hidden_dim": 16, "num_layers": 1, "latent_dim": 8, "token_embed_dim": 4}
# `thesis_lib.train` the attribute is workflow's function; the modules are reached through importlib.
train_loop = importlib.import_module("thesis_lib.train.loop")
train_run = importlib.import_module("thesis_lib.train.run")
MAX_EVENTS = 250  # caps train (420 rows in the file) but not val or test (90 each)


def _config(data: Path, out: Path, *, model=None, data_cfg=None, epochs=1) -> dict:
    return {
        "output_root": str(out), "run_name": "dm",
        "data": {"path": str(data), "batch_size": 64, "eval_batch_size": 50, **(data_cfg or {})},
        "model": {**TINY_MLP, **(model or {})},
        "trainer": {"epochs": epochs, "seed": 0, "device": "cpu"},
        "telemetry": {"enabled": False}, "report": {"enabled": False},
    }


def _fit(cfg: dict):
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(cfg)


def _data_meta(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / DATA_META_FILE).read_text())


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dm_data") / "events.h5"
    make_synthetic_events(path, n_events=600, seed=0, n_tokens=8, anomaly_fraction=0.2)
    return path


@pytest.fixture(scope="module")
def autoencoder_run(events, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dm_runs")
    result = _fit(_config(events, out, data_cfg={"max_events": MAX_EVENTS}))
    assert result.status == "COMPLETED"
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def spectrogram_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dm_spectro")
    sensors = make_synthetic_sensor_data(root / "sensors", n_recordings=12, seed=0, duration_s=3.0)
    data = prepare_spectrograms(sensors, root / "spec.h5", seed=0)
    result = _fit(_config(data, root / "out", model={"task": "classifier", "encoder": "cnn"}))
    assert result.status == "COMPLETED"
    return Path(result.run_dir), data


def _labels(path: Path, split: str, rows: int) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[split]["labels"][:rows])


def _ints_only(value) -> bool:
    """No float or numpy number anywhere where the section holds numbers (bool is not a count either)."""
    if isinstance(value, dict):
        return all(_ints_only(v) for v in value.values())
    if isinstance(value, list):
        return all(_ints_only(v) for v in value)
    return not isinstance(value, float) and (isinstance(value, (str, type(None))) or type(value) is int)


# --- what the run records -------------------------------------------------------------------------

def test_the_run_records_its_dataset_as_measured(autoencoder_run, events):
    meta = _data_meta(autoencoder_run)
    dataset = meta["dataset"]
    assert dataset["schema"] == DATASET_SCHEMA == 1
    assert set(dataset) == {"schema", "file", "format", "splits", "features", "classes", "normalization", "loader"}
    # The model still rebuilds from the same file: the DataMeta keys are untouched.
    rebuilt = DataMeta.from_dict(meta)
    assert rebuilt.split_sizes == {"train": MAX_EVENTS, "val": 90, "test": 90}

    # Identity: the same as describe_data_file now and as on_start recorded it.
    assert dataset["file"] == describe_data_file(str(events))
    assert dataset["file"]["path"] == str(events) and dataset["file"]["resolved"] == str(events.resolve())
    start = next(e for e in read_events(autoencoder_run) if e["moment"] == "on_start")
    assert start["data_file"] == dataset["file"]

    # Splits: the rows the loaders use (after max_events), the file's rows, the loaders' batches.
    loaders, _ = make_loaders(SimpleNamespace(**_config(events, Path("unused"),
                                                                 data_cfg={"max_events": MAX_EVENTS})["data"]),
                                       device="cpu", seed=0)
    with h5py.File(events, "r") as f:
        in_file = {split: int(f[split]["labels"].shape[0]) for split in ("train", "val", "test")}
    assert in_file == {"train": 420, "val": 90, "test": 90}
    assert dataset["splits"] == {split: {"rows": loader.num_rows, "rows_in_file": in_file[split],
                                         "batches": len(loader)}
                                 for split, loader in loaders.items()}
    assert dataset["splits"]["train"] == {"rows": MAX_EVENTS, "rows_in_file": 420, "batches": 4}
    assert {s: v["rows"] for s, v in dataset["splits"].items()} == meta["split_sizes"]

    # Classes: names from the file, counts of the labels the loaders use, per split.
    with h5py.File(events, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["label_names"]]
    classes = dataset["classes"]
    assert classes["names"] == names and classes["n_classes"] == len(names) == 5 and classes["names_from"] == "file"
    for split, info in dataset["splits"].items():
        expected = np.bincount(_labels(events, split, info["rows"]), minlength=len(names)).tolist()
        assert classes["counts"][split] == expected
        assert sum(classes["counts"][split]) == info["rows"]
    assert classes["counts"]["train"][4] == 0 < classes["counts"]["test"][4]  # the anomalies are test-only
    assert "out_of_range" not in classes

    # Features: as the file names them.
    with h5py.File(events, "r") as f:
        attr = {k: [v.decode() if isinstance(v, bytes) else str(v) for v in f.attrs[k]]
                for k in ("cont_features", "globals_features", "token_types")}
        n_tokens = f["train"]["tokens_id"].shape[1]
    assert dataset["features"] == {
        "n_tokens": n_tokens, "token_features": attr["cont_features"], "n_token_features": len(attr["cont_features"]),
        "globals": attr["globals_features"], "n_globals": len(attr["globals_features"]),
        "token_types": attr["token_types"], "vocab_size": len(attr["token_types"]), "names_from": "file"}

    # Normalization: computed over the train rows used, and those are what the saved statistics are.
    norm = dataset["normalization"]
    assert norm["source"] == "computed" and norm["split"] == "train" and norm["rows"] == MAX_EVENTS
    assert norm["applied_to"] == ["train", "val", "test"]
    assert meta["normalization"] == compute_normalization(events, "train", max_rows=MAX_EVENTS).to_dict()
    assert meta["normalization"] != compute_normalization(events, "train").to_dict()

    # Format and loader.
    assert dataset["format"] == {"layout": "tokens", "layout_version": 1}
    assert dataset["loader"] == {"requested": "auto", "mode": {"train": "memory", "val": "memory", "test": "memory"},
                                 "batch_size": 64, "eval_batch_size": 50, "max_events": MAX_EVENTS,
                                 "num_workers": 0, "processes": 1}
    assert _ints_only(dataset)


def test_a_classifier_on_spectrograms_records_kind_attributes_and_class_counts(spectrogram_run):
    run_dir, data = spectrogram_run
    dataset = _data_meta(run_dir)["dataset"]
    with h5py.File(data, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["label_names"]]
        recordings = json.loads(f.attrs["recordings"])
        n_fft = int(f.attrs["n_fft"])
        rows = {split: int(f[split]["labels"].shape[0]) for split in ("train", "val", "test")}
    fmt = dataset["format"]
    assert fmt["layout"] == "tokens" and fmt["kind"] == "spectrogram"
    assert fmt["attributes"]["n_fft"] == n_fft and fmt["attributes"]["recordings"] == recordings
    assert fmt["attributes"]["window"] == "hann" and "kind" not in fmt["attributes"]
    assert dataset["classes"]["names"] == names == ["healthy", "crack", "loose_bolt"]
    for split, n in rows.items():
        assert dataset["splits"][split]["rows"] == dataset["splits"][split]["rows_in_file"] == n
        counts = dataset["classes"]["counts"][split]
        assert counts == np.bincount(_labels(data, split, n), minlength=3).tolist() and sum(counts) == n
        assert all(c > 0 for c in counts)  # stratified by recording: every class in every split
    assert dataset["features"]["token_types"] == ["pad", "frame"]
    assert dataset["features"]["token_features"][0].startswith("accel_x@")
    assert load_run_report(run_dir).dataset == dataset


def test_a_legacy_file_says_its_names_are_the_librarys(tmp_path):
    path = tmp_path / "legacy.h5"
    rng = np.random.default_rng(0)
    labels = {}
    with h5py.File(path, "w") as f:
        for split, n in (("train", 12), ("val", 5), ("test", 4)):
            ids = rng.integers(1, 4, size=(n, 3)).astype(np.float64)
            f[f"X_{split}"] = np.concatenate([ids, rng.normal(size=(n, 2)), rng.normal(size=(n, 12))], axis=1)
            labels[split] = rng.integers(0, 3, size=n)
            f[f"Y_{split}"] = labels[split].astype(np.float64).reshape(n, 1)
    cfg = SimpleNamespace(path=str(path), batch_size=4, loader="stream", max_events=10)
    loaders, meta = make_loaders(cfg, device="cpu", seed=0)
    dataset = describe_dataset(cfg, loaders, meta)
    assert dataset["file"] == {"path": str(path)}  # no identity was taken: only what the config says
    assert dataset["format"] == {"layout": "legacy"}
    assert dataset["features"]["names_from"].startswith("library defaults")
    assert dataset["classes"]["names_from"].startswith("library defaults")
    assert dataset["loader"]["mode"] == {"train": "stream", "val": "stream", "test": "stream"}
    n = max(int(v.max()) for v in labels.values()) + 1
    for split, rows in (("train", 10), ("val", 5), ("test", 4)):
        assert dataset["splits"][split]["rows"] == rows
        assert dataset["classes"]["counts"][split] == np.bincount(labels[split][:rows], minlength=n).tolist()


# --- the report reads it --------------------------------------------------------------------------

def test_the_report_reads_the_section_and_says_when_it_is_absent_or_unreadable(autoencoder_run, tmp_path):
    report = load_run_report(autoencoder_run)
    assert report.dataset == _data_meta(autoencoder_run)["dataset"] and report.dataset
    assert DATA_META_FILE not in report.unreadable

    run = Path(shutil.copytree(autoencoder_run, tmp_path / "run"))
    meta = _data_meta(run)
    (run / DATA_META_FILE).unlink()  # no file: not recorded, and nothing unreadable
    report = load_run_report(run)
    assert report.dataset == {} and DATA_META_FILE not in report.unreadable

    del meta["dataset"]  # a run from before the section
    (run / DATA_META_FILE).write_text(json.dumps(meta))
    report = load_run_report(run)
    assert report.dataset == {} and DATA_META_FILE not in report.unreadable

    (run / DATA_META_FILE).write_text('{"dataset": {"schema": 1,')  # cut short
    report = load_run_report(run)
    assert report.dataset == {} and report.unreadable[DATA_META_FILE].startswith("not valid JSON")
    assert report.status == "COMPLETED"

    (run / DATA_META_FILE).write_text(json.dumps({**meta, "dataset": ["not", "an", "object"]}))
    report = load_run_report(run)
    assert report.dataset == {} and "dataset section holds a JSON list" in report.unreadable[DATA_META_FILE]


# --- never fatal, there before the first epoch ------------------------------------------------------

def _incidents(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["moment"] == "on_incident"]


def test_a_data_meta_that_cannot_be_written_is_an_incident_and_the_run_completes(events, tmp_path, monkeypatch):
    made = []

    def create_run_dir_with_a_folder_in_the_way(output_root, run_name):
        run_dir, run_id = original(output_root, run_name)
        (run_dir / DATA_META_FILE).mkdir()  # the atomic write's rename onto it fails
        made.append(run_dir)
        return run_dir, run_id

    original = train_loop.create_run_dir
    monkeypatch.setattr(train_loop, "create_run_dir", create_run_dir_with_a_folder_in_the_way)
    result = _fit(_config(events, tmp_path / "out"))
    run = Path(result.run_dir)
    assert made and result.status == "COMPLETED" and (run / MODEL_FILE).is_file()
    (incident,) = _incidents(run)
    assert incident["part"] == "data_meta" and incident["path"].endswith(DATA_META_FILE)
    assert incident["error_type"] in ("IsADirectoryError", "OSError") and "Errno" in incident["message"]
    moments = [e["moment"] for e in read_events(run)]
    assert moments.index("on_incident") == moments.index("on_start") + 1  # at the start, not the end
    report = load_run_report(run)
    assert report.status == "COMPLETED" and report.dataset == {} and DATA_META_FILE in report.unreadable
    assert [i["part"] for i in report.incidents] == ["data_meta"]


def test_a_dataset_that_cannot_be_measured_is_an_incident_and_the_model_still_rebuilds(events, tmp_path, monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(train_run, "describe_dataset", unreadable)
    result = _fit(_config(events, tmp_path / "out"))
    run = Path(result.run_dir)
    assert result.status == "COMPLETED"
    (incident,) = _incidents(run)
    assert incident["part"] == "data_meta" and "[Errno 5] Input/output error" in incident["message"]
    meta = _data_meta(run)
    assert "dataset" not in meta and DataMeta.from_dict(meta).n_tokens == 8
    assert load_run_report(run).dataset == {}


def test_a_run_that_fails_in_its_first_epoch_has_the_section(events, tmp_path, monkeypatch):
    def broken_epoch(*args, **kwargs):
        raise RuntimeError("the first step failed")

    monkeypatch.setattr(train_run, "train_epoch", broken_epoch)
    with pytest.raises(RuntimeError, match="the first step failed"):
        _fit(_config(events, tmp_path / "out"))
    (run,) = (tmp_path / "out" / "runs").iterdir()
    dataset = _data_meta(run)["dataset"]
    assert dataset["splits"]["train"]["rows"] == 420 and sum(dataset["classes"]["counts"]["train"]) == 420
    report = load_run_report(run)
    assert report.status == "FAILED" and report.dataset == dataset
