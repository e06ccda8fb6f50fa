"""The thesis-lib command line: train with a YAML config and overrides, errors, make-data, runs."""

import subprocess
import sys

import pytest

from thesis_lib import load_runs
from thesis_lib.cli import main
from thesis_lib.data import make_synthetic_events


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return make_synthetic_events(tmp_path_factory.mktemp("cli") / "events.h5", n_events=800, seed=0, n_tokens=8)


def test_train_with_yaml_and_overrides(events, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"output_root: {tmp_path / 'outputs'}\nrun_name: cli\ndata:\n  path: {events}\n  batch_size: 128\n"
        "model:\n  hidden_dim: 32\n  latent_dim: 8\ntrainer:\n  epochs: 1\n"
    )
    assert main(["train", "--config", str(cfg), "model.bottleneck=vq", "model.vq.code_dim=4", "trainer.seed=2"]) == 0
    runs_df, _, _ = load_runs(sweep_dir=str(tmp_path / "outputs"))
    assert runs_df.iloc[0]["tokenizer"] == "vq" and runs_df.iloc[0]["seed"] == 2
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "outputs" / "runs" / "*")]) == 0
    assert "COMPLETED" in capsys.readouterr().out


def test_bad_override_exits_2_with_the_message(capsys):
    assert main(["train", "model.bottleneck=vqq"]) == 2
    err = capsys.readouterr().err
    assert "thesis-lib train: error: model.bottleneck='vqq' — did you mean 'vq'? allowed: identity, linear, vq" in err


def test_missing_data_file_names_it(tmp_path, capsys):
    assert main(["train", f"data.path={tmp_path / 'missing.h5'}"]) == 2
    assert "missing.h5" in capsys.readouterr().err


def test_entry_point_is_installed(tmp_path):
    out = subprocess.run([sys.executable, "-m", "thesis_lib.cli", "make-data", str(tmp_path / "e.h5"), "--n-events", "300"],
                         capture_output=True, text=True, check=True)
    assert "wrote 300 synthetic events" in out.stdout and (tmp_path / "e.h5").is_file()


def test_sensor_data_to_spectrograms_to_a_cnn_classifier(tmp_path, capsys):
    sensors, spectra = tmp_path / "sensors", tmp_path / "spectro.h5"
    assert main(["make-sensor-data", str(sensors), "--n-recordings", "9", "--seed", "1"]) == 0
    assert main(["spectrograms", str(sensors), str(spectra), "--n-fft", "32", "--segment-s", "0.5"]) == 0
    assert main(["train", f"data.path={spectra}", "model.task=classifier", "model.encoder=cnn", "model.hidden_dim=16",
                 "trainer.epochs=1", "report.enabled=false", f"output_root={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert "wrote 9 synthetic sensor recordings" in out and "COMPLETED" in out
    assert main(["spectrograms", str(sensors / "missing"), str(spectra)]) == 2
    assert "missing" in capsys.readouterr().err
