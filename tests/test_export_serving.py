"""Serving export: raw waveform segments -> TorchScript / ONNX with STFT, globals and normalization in the graph.

One tiny sensor dataset (9 two-channel recordings of 2 s, half-second segments), a CNN classifier
and an MLP autoencoder trained 2 epochs each on its spectrograms, each exported once as serving
models; the tests compare those files with the library's pipeline reached another way (the file's
own rows through the loader), and check the errors for missing recordings and old files.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from thesis_lib import export_model, train
from thesis_lib.cli import main
from thesis_lib.data import (
    EventFile,
    EventLoader,
    make_synthetic_sensor_data,
    prepare_spectrograms,
    write_events,
)
from thesis_lib.data.spectrogram import read_spectrogram_source
from thesis_lib.errors import DataError, ModelError
from thesis_lib.export import DEFAULT_EXPORT_FORMATS, EXPORT_FORMATS
from thesis_lib.reports.inference import load_run_model, run_inference

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
ort = pytest.importorskip("onnxruntime", reason="the [dev] extra installs onnxruntime for the ONNX checks")

CHANNELS = ("acc_a", "acc_b")
SEGMENT = 500  # samples: 0.5 s at 1000 Hz
TOL = 1e-4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Recordings, their spectrogram file, a classifier and an autoencoder run, each exported as serving."""
    root = tmp_path_factory.mktemp("serving")
    sensors = make_synthetic_sensor_data(root / "sensors", n_recordings=9, seed=0, duration_s=2.0, channels=CHANNELS)
    spec = prepare_spectrograms(sensors, root / "spec.h5", segment_s=0.5, n_fft=32, seed=0)
    base = {"data": {"path": str(spec), "batch_size": 16}, "trainer": {"epochs": 2, "seed": 0, "device": "cpu"},
            "output_root": str(root / "outputs"), "report": {"enabled": False}, "telemetry": {"enabled": False}}
    clf = train({**base, "run_name": "clf", "model": {"task": "classifier", "encoder": "cnn", "hidden_dim": 16,
                                                      "latent_dim": 8}}, dashboard=None).run_dir
    ae = train({**base, "run_name": "ae", "model": {"encoder": "mlp", "hidden_dim": 16, "latent_dim": 8}},
               dashboard=None).run_dir
    clf_paths = export_model(clf, ["serving"])
    assert main(["export", str(ae), "--format", "serving"]) == 0  # the CLI path, into <run>/exports
    return {"root": root, "sensors": sensors, "spec": spec, "classifier": clf, "autoencoder": ae,
            "clf_paths": clf_paths}


def library_reference(run_dir, spec, task):
    """What the library gives for the test split: the file's rows, the run's normalization, the eager model."""
    model, _, meta = load_run_model(run_dir)
    loader = EventLoader(EventFile(spec), "test", batch_size=1000, normalization=meta.normalization)
    batch = next(iter(loader))
    with torch.no_grad():
        if task == "classifier":
            return torch.softmax(model.predict_logits(batch), dim=-1).numpy()
        return model.per_event_errors(batch)["mse"].numpy()


def exported_outputs(exports_dir, segments):
    """(TorchScript output, onnxruntime output) of the serving files on raw segments."""
    scripted = torch.jit.load(str(exports_dir / "serving.torchscript.pt"))
    with torch.no_grad():
        ts = scripted(torch.from_numpy(segments)).numpy()
    session = ort.InferenceSession(str(exports_dir / "serving.onnx"), providers=["CPUExecutionProvider"])
    return ts, session.run(None, {"waveform": segments})[0]


@pytest.mark.parametrize("task", ["classifier", "autoencoder"])
def test_serving_models_match_the_library_pipeline_on_raw_test_segments(served, task):
    run_dir = served[task]
    segments, labels = read_spectrogram_source(served["spec"]).read_segments("test")
    assert segments.shape == (12, 2, SEGMENT) and segments.dtype == np.float32  # 3 test recordings x 4 segments
    np.testing.assert_array_equal(labels, EventFile(served["spec"]).read_block("test", 0, 12)["labels"])
    want = library_reference(run_dir, served["spec"], task)
    ts, onnx = exported_outputs(run_dir / "exports", segments)
    for got in (ts, onnx):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        if task == "classifier":
            assert (got.argmax(1) == want.argmax(1)).all()
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # The batch axis is dynamic: one segment, and an odd number.
    for rows in (segments[:1], segments[:5]):
        ts_rows, onnx_rows = exported_outputs(run_dir / "exports", np.ascontiguousarray(rows))
        np.testing.assert_allclose(onnx_rows, want[:len(rows)], rtol=0, atol=TOL)
        np.testing.assert_allclose(ts_rows, want[:len(rows)], rtol=0, atol=TOL)

    entry = json.loads((run_dir / "exports" / "export_info.json").read_text())["formats"]["serving"]
    check = entry["check"]
    assert check["n_segments"] == 12 and check["split"] == "test" and check["atol"] == TOL
    assert check["file_rows_max_abs_diff"] == {"tokens_cont": 0.0, "globals": 0.0}
    assert 0 <= check["torchscript"]["max_abs_diff"] <= TOL and 0 <= check["onnx"]["max_abs_diff"] <= TOL
    assert entry["inputs"] == [{"name": "waveform", "shape": ["batch", 2, SEGMENT], "dtype": "float32",
                                "meaning": entry["inputs"][0]["meaning"]}]
    assert "acc_a" in entry["inputs"][0]["meaning"] and "1000 Hz" in entry["inputs"][0]["meaning"]
    for fmt, name in (("torchscript", "serving.torchscript.pt"), ("onnx", "serving.onnx")):
        data = (run_dir / "exports" / name).read_bytes()
        assert entry["files"][fmt]["file"] == name and entry["files"][fmt]["sha256"] == hashlib.sha256(data).hexdigest()
    if task == "classifier":
        assert entry["outputs"][0]["name"] == "probabilities" and entry["outputs"][0]["shape"] == ["batch", 3]
        assert entry["class_names"] == ["healthy", "crack", "loose_bolt"]
        assert check["torchscript"]["same_predictions"] and check["onnx"]["same_predictions"]
    else:
        assert entry["outputs"][0]["name"] == "anomaly_score" and entry["outputs"][0]["shape"] == ["batch"]
    exports = json.loads((run_dir / "model_info.json").read_text())["exports"]["formats"]
    assert exports["serving"] == ["exports/serving.torchscript.pt", "exports/serving.onnx"]


def test_a_csv_read_by_hand_is_scored_like_the_reports_score_it(served):
    """The autoencoder's served score is the anomaly score reports.inference computes (per-event MSE)."""
    source = read_spectrogram_source(served["spec"])
    first = source.recordings("test")[0]
    frame = pd.read_csv(served["sensors"] / first["name"])  # plain pandas, nothing of the library
    waveform = frame[list(CHANNELS)].to_numpy(np.float32).T[:, :4 * SEGMENT].reshape(2, 4, SEGMENT).transpose(1, 0, 2)
    _, onnx = exported_outputs(served["autoencoder"] / "exports", np.ascontiguousarray(waveform))
    scores = run_inference(served["autoencoder"], corruptions=[], device="cpu").per_event_scores
    (table,) = scores.values()
    np.testing.assert_allclose(onnx, table["mse"].to_numpy()[:4], rtol=0, atol=TOL)


def test_the_spectrogram_file_records_its_sources(served):
    source = read_spectrogram_source(served["spec"])
    assert (source.sample_rate, source.n_fft, source.hop_length, source.segment_samples) == (1000.0, 32, 16, SEGMENT)
    assert source.channels == CHANNELS and source.globals_kinds == ("rms", "crest", "kurtosis")
    assert source.stft["window"] == "hann" and source.stft["center"] is False
    assert source.labels_file == str((served["sensors"] / "labels.csv").resolve())
    for rec in source.sources:
        path = served["sensors"] / rec["name"]
        assert rec["path"] == str(path.resolve()) and rec["size_bytes"] == path.stat().st_size
        assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and rec["n_samples"] == 2000
    with h5py.File(served["spec"]) as f:
        by_split = json.loads(f.attrs["recordings"])
    for split, rows in source.split_segments.items():
        assert [source.sources[i]["name"] for i, _ in rows] == by_split[split]
        assert sum(n for _, n in rows) == EventFile(served["spec"]).num_rows(split)


def test_missing_recordings_name_the_directory_and_the_file(served, tmp_path):
    source = read_spectrogram_source(served["spec"])
    gone = served["sensors"] / source.recordings("test")[1]["name"]
    moved = shutil.copytree(served["sensors"], tmp_path / "moved")
    hidden = gone.rename(gone.with_suffix(".away"))
    try:
        with pytest.raises(DataError, match=rf"the recordings of split 'test' are gone from {served['sensors']}: "
                                            rf"{gone.name} not found; .*recordings_dir="):
            export_model(served["classifier"], ["serving"], output_dir=tmp_path / "out")
        assert not (tmp_path / "out").exists()
        # Recordings moved elsewhere: recordings_dir= reads them there, and they are the same segments.
        again, labels = source.read_segments("test", recordings_dir=moved)
    finally:
        hidden.rename(gone)
    want, want_labels = source.read_segments("test")
    np.testing.assert_array_equal(again, want)
    np.testing.assert_array_equal(labels, want_labels)


def test_a_spectrogram_file_from_before_the_source_record_is_refused(served, tmp_path):
    old = shutil.copy(served["spec"], tmp_path / "old.h5")
    with h5py.File(old, "a") as f:
        for key in ("sources_version", "segment_samples", "stft", "globals_kinds", "sources", "segments", "labels_file"):
            del f.attrs[key]
    with pytest.raises(DataError, match=r"old\.h5: this spectrogram file predates recording its sources .*re-run "
                                        r"prepare_spectrograms"):
        export_model(served["classifier"], ["serving"], output_dir=tmp_path / "out", data_path=old)
    assert not (tmp_path / "out").exists()
    # A file that is no spectrogram at all says so.
    split = {"tokens_id": np.ones((3, 2), np.int64), "tokens_cont": np.zeros((3, 2, 4)), "globals": np.zeros((3, 2)),
             "labels": np.zeros(3, np.int64)}
    events = write_events(tmp_path / "events.h5", {"train": split})
    with pytest.raises(DataError, match=r"events\.h5: not a spectrogram file \(root attribute kind=None\)"):
        read_spectrogram_source(events)


def test_a_graph_that_departs_from_the_library_is_refused(served, tmp_path, monkeypatch):
    """Break the normalization inside the graph: the check on the test recordings refuses both files."""
    from thesis_lib import serving

    real = serving._affine
    monkeypatch.setattr(serving, "_affine", lambda mean, std: tuple(t * 1.001 for t in real(mean, std)))
    with pytest.raises(ModelError, match=r"serving torchscript export of .* differs from the library's pipeline by "
                                         r".* \(max abs over 12 test segments, allowed 0\.0001\)"):
        export_model(served["classifier"], ["serving"], output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "serving.onnx").exists()
    assert not (tmp_path / "out" / "serving.torchscript.pt").exists()


def test_a_later_export_into_the_folder_keeps_the_serving_record(served, tmp_path):
    run = shutil.copytree(served["classifier"], tmp_path / "run")
    record = run / "exports" / "export_info.json"  # made the copy's own (a record of another run is dropped)
    record.write_text(json.dumps({**json.loads(record.read_text()), "run_dir": str(run.resolve())}))
    paths = export_model(run, ["state_dict"])
    info = json.loads(paths["export_info"].read_text())
    assert list(info["formats"]) == ["serving", "state_dict"]
    exports = json.loads((run / "model_info.json").read_text())["exports"]["formats"]
    assert exports == {"serving": ["exports/serving.torchscript.pt", "exports/serving.onnx"],
                       "state_dict": "exports/model_state_dict.pt"}
    # A serving file gone: its record goes with it.
    (run / "exports" / "serving.onnx").unlink()
    paths = export_model(run, ["state_dict"])
    assert list(json.loads(paths["export_info"].read_text())["formats"]) == ["state_dict"]


def test_serving_is_a_format_but_not_a_default_one():
    assert "serving" in EXPORT_FORMATS and "serving" not in DEFAULT_EXPORT_FORMATS
