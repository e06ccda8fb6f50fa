"""Model export over real tiny runs: state_dict, TorchScript and ONNX against the eager model, records, errors, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from thesis_lib import build_model, export_model, make_synthetic_events, train
from thesis_lib.cli import main
from thesis_lib.data import EventFile, EventLoader
from thesis_lib.errors import ConfigError, ModelError
from thesis_lib.export import DEFAULT_EXPORT_FORMATS, INPUT_NAMES
from thesis_lib.reports.inference import load_run_model

# torch 2.13 deprecates torch.jit (trace, save, load) in favour of torch.export; the files still load.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

ort = pytest.importorskip("onnxruntime", reason="the [dev] extra installs onnxruntime for the ONNX checks")

TINY = {"hidden_dim": 16, "latent_dim": 8}
MODELS = {
    "ae_mlp": {**TINY, "encoder": "mlp"},
    "ae_transformer_vq": {**TINY, "encoder": "transformer", "num_heads": 2, "num_layers": 1, "bottleneck": "vq",
                          "vq": {"code_dim": 4}},
    "clf_mlp": {**TINY, "encoder": "mlp", "task": "classifier"},
}
AE_OUTPUTS = ["recon_cont", "recon_id_logits", "recon_globals", "latent"]
OTHER_BATCH = 7  # the exports are traced at 2 (the default example batch size)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs (mlp AE, transformer+vq AE, mlp classifier), 1 epoch each on a tiny synthetic file."""
    root = tmp_path_factory.mktemp("export")
    data = make_synthetic_events(root / "events.h5", n_events=400, seed=0, n_tokens=8, anomaly_fraction=0.1)
    base = {"data": {"path": str(data), "batch_size": 64}, "trainer": {"epochs": 1, "device": "cpu"},
            "output_root": str(root / "outputs"), "report": {"enabled": False}, "telemetry": {"enabled": False}}
    dirs = {name: train({**base, "run_name": name, "model": model}).run_dir for name, model in MODELS.items()}
    return {"data": data, **dirs}


@pytest.fixture(scope="module")
def exported(runs):
    """Every format of every run, exported once into <run_dir>/exports."""
    return {name: export_model(runs[name]) for name in MODELS}


def real_batch(run_dir, data, batch_size=OTHER_BATCH):
    """A test-split batch of the run's data, z-scored with the run's own normalization."""
    _, _, meta = load_run_model(run_dir)
    loader = EventLoader(EventFile(data), "test", batch_size=batch_size, normalization=meta.normalization)
    batch = next(iter(loader))
    return [batch[name] for name in INPUT_NAMES]


def outputs_of(model, task, inputs):
    """What an eager model returns, in the documented export order."""
    with torch.no_grad():
        out = model.eval()(dict(zip(INPUT_NAMES, inputs)))
    keys = ["logits"] if task == "classifier" else ["cont", "id_logits", "globals", "z"]
    return [out[k] for k in keys]


@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_and_onnx_match_the_eager_model_at_another_batch_size(runs, exported, name):
    paths, inputs = exported[name], real_batch(runs[name], runs["data"])
    assert inputs[0].shape[0] == OTHER_BATCH
    model, config, meta = load_run_model(runs[name])
    want = outputs_of(model, config.model.task, inputs)

    scripted = torch.jit.load(str(paths["torchscript"]))
    with torch.no_grad():
        got = scripted(*inputs)
    got = [got] if isinstance(got, torch.Tensor) else list(got)  # the classifier returns one tensor
    assert len(got) == len(want)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)

    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert session.get_inputs()[0].shape[0] == "batch"  # a dynamic axis, not the traced size
    expected_names = ["logits"] if name.startswith("clf") else AE_OUTPUTS
    assert [o.name for o in session.get_outputs()] == expected_names
    got = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})
    for w, g in zip(want, got):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)

    fresh = build_model(config.model, meta)
    fresh.load_state_dict(torch.load(paths["state_dict"], weights_only=True))
    for w, g in zip(want, outputs_of(fresh, config.model.task, inputs)):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_export_info_records_every_format(runs, exported):
    paths = exported["ae_transformer_vq"]
    info = json.loads(paths["export_info"].read_text())
    assert paths["export_info"] == runs["ae_transformer_vq"] / "exports" / "export_info.json"
    assert info["run_id"] == runs["ae_transformer_vq"].name and info["task"] == "autoencoder"
    assert info["weights"]["file"] == "model.pt" and info["weights"]["note"] is None
    assert list(info["formats"]) == list(DEFAULT_EXPORT_FORMATS)  # serving is asked for by name
    for fmt, entry in info["formats"].items():
        data = paths[fmt].read_bytes()
        assert entry["file"] == paths[fmt].name
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
        assert entry["inputs"] == [
            {"name": "tokens_id", "shape": ["batch", 8], "dtype": "int64"},
            {"name": "tokens_cont", "shape": ["batch", 8, 4], "dtype": "float32"},
            {"name": "globals", "shape": ["batch", 2], "dtype": "float32"},
        ]
        assert [o["name"] for o in entry["outputs"]] == AE_OUTPUTS
        assert entry["outputs"][0]["shape"] == ["batch", 8, 4] and entry["outputs"][3]["shape"] == ["batch", 8]
        assert entry["torch_version"] == torch.__version__
        assert 0 <= entry["max_abs_diff"] <= 1e-5 and entry["checked_batch_sizes"] == [2, 5]
        assert entry["weights"] == "model.pt"
    assert info["formats"]["state_dict"]["max_abs_diff"] == 0.0
    assert isinstance(info["formats"]["onnx"]["opset"], int) and info["formats"]["onnx"]["opset"] >= 17
    assert info["formats"]["onnx"]["checked_with"].startswith("onnxruntime")
    assert info["formats"]["torchscript"]["opset"] is None
    clf = json.loads(exported["clf_mlp"]["export_info"].read_text())
    assert [o["name"] for o in clf["formats"]["onnx"]["outputs"]] == ["logits"]
    n_classes = json.loads((runs["clf_mlp"] / "data_meta.json").read_text())["n_classes"]
    assert clf["formats"]["onnx"]["outputs"][0]["shape"] == ["batch", n_classes]


def test_model_info_lists_the_exports_and_keeps_the_rest(runs, exported):
    info = json.loads((runs["clf_mlp"] / "model_info.json").read_text())
    assert info["task"] == "classifier" and info["run_id"] == runs["clf_mlp"].name  # training's keys survive
    assert info["exports"]["export_info"] == "exports/export_info.json"
    assert info["exports"]["formats"] == {"state_dict": "exports/model_state_dict.pt",
                                          "torchscript": "exports/model.torchscript.pt", "onnx": "exports/model.onnx"}


def test_unknown_format_lists_the_allowed_ones(runs, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown \['tflite'\]; allowed: state_dict, torchscript, onnx"):
        export_model(runs["ae_mlp"], ["state_dict", "tflite"], output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_without_weights_names_the_files_and_the_run(runs, tmp_path):
    run = shutil.copytree(runs["ae_mlp"], tmp_path / "broken_run")
    (run / "model.pt").unlink()
    (run / "best_val.pt").unlink()
    with pytest.raises(ModelError, match=r"cannot export run .*broken_run: model\.pt or best_val\.pt not found there; "
                                         r"the model is rebuilt from config\.yaml, data_meta\.json and model\.pt "
                                         r"\(else best_val\.pt\)"):
        export_model(run)
    (run / "data_meta.json").unlink()
    with pytest.raises(ModelError, match=r"data_meta\.json, model\.pt or best_val\.pt not found"):
        export_model(run)


def test_a_crashed_run_is_exported_from_best_val_pt_and_says_so(killed_run, tmp_path, caplog):
    run_dir = killed_run["run_dir"]
    with caplog.at_level("WARNING", logger="thesis_lib.export"):
        paths = export_model(run_dir, ["state_dict"], output_dir=tmp_path / "served")
    assert f"{run_dir}: exporting best_val.pt (best epoch " in caplog.text and "model.pt not found" in caplog.text
    info = json.loads(paths["export_info"].read_text())
    best = torch.load(run_dir / "best_val.pt", weights_only=True)
    assert info["weights"] == {"file": "best_val.pt", "path": str(run_dir / "best_val.pt"), "epoch": best["epoch"],
                               "note": "model.pt not found: the run ended before writing it (a crash or a kill), so "
                                       "the best validation epoch's weights come from best_val.pt"}
    assert info["formats"]["state_dict"]["weights"] == "best_val.pt"
    exported = torch.load(paths["state_dict"], weights_only=True)
    assert exported.keys() == best["model"].keys()
    assert all(torch.equal(exported[k], v) for k, v in best["model"].items())


def test_missing_onnx_packages_say_how_to_install(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    with pytest.raises(ModelError, match=r"pip install 'thesis-lib\[onnx\]'"):
        export_model(runs["ae_mlp"], ["onnx"], output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_formats_without_onnx_packages_export_the_other_two(runs, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with caplog.at_level("WARNING", logger="thesis_lib.export"):
        paths = export_model(runs["clf_mlp"], output_dir=tmp_path)
    assert sorted(paths) == ["export_info", "state_dict", "torchscript"]
    assert "pip install 'thesis-lib[onnx]'" in caplog.text


def test_without_onnxruntime_the_onnx_export_is_checked_by_onnx_reference(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    paths = export_model(runs["clf_mlp"], ["onnx"], output_dir=tmp_path)
    entry = json.loads(paths["export_info"].read_text())["formats"]["onnx"]
    assert entry["checked_with"] == "onnx.reference (onnxruntime not installed)" and entry["max_abs_diff"] <= 1e-5


def test_an_export_that_differs_from_eager_is_refused_after_recording_the_others(runs, tmp_path, monkeypatch):
    import thesis_lib.export as export

    real = export._export_torchscript

    def off_by_a_bit(wrapper, example):
        data, extra = real(wrapper, example)
        run = extra["run"]
        return data, {**extra, "run": lambda batch: tuple(t + 1e-3 for t in run(batch))}

    monkeypatch.setattr(export, "_export_torchscript", off_by_a_bit)
    with pytest.raises(ModelError, match=r"torchscript export of .* differs from the eager model by 0\.001"):
        export_model(runs["ae_mlp"], ["state_dict", "torchscript"], output_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export_info.json", "model_state_dict.pt"]
    assert list(json.loads((tmp_path / "export_info.json").read_text())["formats"]) == ["state_dict"]


def test_cli_export_writes_the_formats_asked_for(runs, tmp_path, capsys):
    run = shutil.copytree(runs["ae_transformer_vq"], tmp_path / "run")
    shutil.rmtree(run / "exports", ignore_errors=True)
    out = tmp_path / "exported"
    assert main(["export", str(run), "--format", "state_dict", "--output-dir", str(out)]) == 0
    assert main(["export", str(run), "--format", "torchscript", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"torchscript: {out / 'model.torchscript.pt'}" in printed and f"export_info: {out / 'export_info.json'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["export_info.json", "model.torchscript.pt", "model_state_dict.pt"]
    # A second export into the same folder adds to the record of the first.
    assert list(json.loads((out / "export_info.json").read_text())["formats"]) == ["state_dict", "torchscript"]
    exports = json.loads((run / "model_info.json").read_text())["exports"]["formats"]
    assert exports == {"state_dict": str((out / "model_state_dict.pt").resolve()),
                       "torchscript": str((out / "model.torchscript.pt").resolve())}

    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "thesis-lib export: error: cannot export run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
