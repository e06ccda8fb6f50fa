"""Sensor CSVs -> spectrogram event files: the synthetic recordings, the reader, the contract, the splits, errors."""

import json
import re
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

from thesis_lib.data import (
    EventFile,
    make_loaders,
    make_synthetic_sensor_data,
    prepare_spectrograms,
    read_sensor_recordings,
    write_events,
)
from thesis_lib.errors import ConfigError, DataError

CHANNELS = ("accel_x", "accel_y", "accel_z")
CLASSES = ("healthy", "crack", "loose_bolt")


@pytest.fixture(scope="module")
def sensor_dir(tmp_path_factory):
    return make_synthetic_sensor_data(tmp_path_factory.mktemp("sensors"), n_recordings=60, seed=0)


@pytest.fixture(scope="module")
def spectro(sensor_dir, tmp_path_factory):
    return prepare_spectrograms(sensor_dir, tmp_path_factory.mktemp("spec") / "spec.h5", seed=0)


def _split_recordings(path):
    with h5py.File(path) as f:
        return json.loads(f.attrs["recordings"])


def _write_csv(path, text):
    path.write_text(text)
    return path


def _tone_csv(path, n=2000, rate=1000.0, channels=("a", "b"), freq=50.0):
    """A clean, valid recording: one sine per channel."""
    t = np.arange(n) / rate
    frame = pd.DataFrame({"time": t, **{c: np.sin(2 * np.pi * freq * (i + 1) * t) for i, c in enumerate(channels)}})
    frame.to_csv(path, index=False)
    return path


def _labels(directory, rows):
    _write_csv(directory / "labels.csv", "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
    return directory


# --- synthetic recordings and the reader -------------------------------------------------------

def test_synthetic_recordings_are_balanced_uniform_and_deterministic(sensor_dir, tmp_path):
    labels = pd.read_csv(sensor_dir / "labels.csv")
    assert list(labels.columns) == ["file", "label"] and len(labels) == 60
    assert labels["label"].value_counts().to_dict() == {c: 20 for c in CLASSES}
    first = pd.read_csv(sensor_dir / labels["file"][0])
    assert list(first.columns) == ["time", *CHANNELS] and len(first) == 8000
    np.testing.assert_allclose(np.diff(first["time"]), 1e-3, rtol=1e-6)

    again = make_synthetic_sensor_data(tmp_path / "again", n_recordings=60, seed=0)
    other = make_synthetic_sensor_data(tmp_path / "other", n_recordings=60, seed=1)
    assert (again / "rec_007.csv").read_bytes() == (sensor_dir / "rec_007.csv").read_bytes()
    assert (other / "rec_007.csv").read_bytes() != (sensor_dir / "rec_007.csv").read_bytes()
    with pytest.raises(ConfigError, match=r"classes=\['healthy', 'dent'\]; expected distinct names from"):
        make_synthetic_sensor_data(tmp_path / "bad", classes=("healthy", "dent"))
    with pytest.raises(ConfigError, match=r"sample_rate=500.0; expected >= 880 Hz"):
        make_synthetic_sensor_data(tmp_path / "bad", sample_rate=500.0)


def test_reader_returns_float32_recordings_in_labels_order(sensor_dir, tmp_path):
    recordings = read_sensor_recordings(sensor_dir)
    assert [r.name for r in recordings] == [f"rec_{i:03d}.csv" for i in range(60)]
    assert [r.label for r in recordings[:4]] == ["healthy", "crack", "loose_bolt", "healthy"]
    rec = recordings[5]
    assert rec.sample_rate == 1000.0 and rec.channels == CHANNELS
    assert rec.data.dtype == np.float32 and rec.data.shape == (3, 8000) and rec.data.flags.c_contiguous
    raw = pd.read_csv(sensor_dir / "rec_005.csv")
    np.testing.assert_allclose(rec.data[1], raw["accel_y"].to_numpy(np.float32))

    # An explicit labels CSV elsewhere, a file listed by a relative path, columns in another order.
    (tmp_path / "data").mkdir()
    _tone_csv(tmp_path / "data" / "one.csv", channels=("a", "b"))
    _tone_csv(tmp_path / "data" / "two.csv", channels=("b", "a"))
    listing = _write_csv(tmp_path / "list.csv", "file,label\ndata/one.csv,x\ndata/two.csv,y\n")
    one, two = read_sensor_recordings(listing)
    assert one.channels == two.channels == ("a", "b") and two.name == "data/two.csv"
    np.testing.assert_allclose(two.data[0], one.data[1], atol=1e-6)  # two.csv's column a is one.csv's b


@pytest.mark.parametrize("content, message", [
    ("time,a\n0,1\n0.001,2\n0.0025,3\n0.003,4\n",
     r"bad\.csv: the time column is not uniformly sampled: steps run from 0\.0005 s to 0\.0015 s"),
    ("time,a\n0,1\n0.001,2\n0.001,3\n",
     r"bad\.csv: the time column is not uniformly sampled"),
    ("a,b\n1,2\n3,4\n", r"bad\.csv: no 'time' column \(found \['a', 'b'\]\)"),
    ("time\n0\n0.001\n", r"bad\.csv: no channel columns besides 'time'"),
    ("time,a,b\n0,1,\n0.001,2,\n", r"bad\.csv: column 'b' is empty"),
    ("time,a\n0,1\n0.001,\n0.002,3\n", r"bad\.csv: column 'a' holds an empty cell at line 3"),
    ("time,a\n0,1\n0.001,abc\n0.002,3\n", r"bad\.csv: column 'a' holds 'abc' at line 3 \(1 such cells\)"),
    ("time,a\n0,1\n0.001,inf\n0.002,3\n",
     r"bad\.csv: column 'a' holds inf at line 3 \(1 such cells\); expected finite"),
    ("time,a\n", r"bad\.csv: no data rows below the header"),
    ("time,a\n0,1\n", r"bad\.csv: 1 sample; expected at least 2"),
    ("", r"bad\.csv: not a readable CSV"),
])
def test_reader_names_the_file_and_the_problem(tmp_path, content, message):
    _write_csv(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=message):
        read_sensor_recordings(_labels(tmp_path, [("bad.csv", "healthy")]))


def test_reader_rejects_bad_labels_missing_files_and_channel_mismatch(tmp_path):
    with pytest.raises(DataError, match=r"no labels\.csv in .*; expected a CSV with columns file,label"):
        read_sensor_recordings(tmp_path)
    _write_csv(tmp_path / "labels.csv", "path,label\na.csv,x\n")
    with pytest.raises(DataError, match=r"labels\.csv: columns \['file'\] missing"):
        read_sensor_recordings(tmp_path)
    with pytest.raises(DataError, match=r"recording 'gone\.csv' not found: .*gone\.csv"):
        read_sensor_recordings(_labels(tmp_path, [("gone.csv", "x")]))
    _tone_csv(tmp_path / "a.csv", channels=("a", "b"))
    with pytest.raises(DataError, match=r"file 'a\.csv' is listed more than once"):
        read_sensor_recordings(_labels(tmp_path, [("a.csv", "x"), ("a.csv", "y")]))
    _tone_csv(tmp_path / "c.csv", channels=("a", "c"))
    with pytest.raises(DataError, match=r"c\.csv: channels \['a', 'c'\] differ from \['a', 'b'\] in .*a\.csv "
                                        r"\(missing \['b'\], extra \['c'\]\)"):
        read_sensor_recordings(_labels(tmp_path, [("a.csv", "x"), ("c.csv", "y")]))


# --- the event file: the shared spectrogram contract -------------------------------------------

def test_file_follows_the_spectrogram_contract(spectro):
    ef = EventFile(spectro)
    n_fft, hop, rate = 64, 32, 1000.0
    frames, bins = 1 + (1000 - n_fft) // hop, n_fft // 2 + 1
    assert (ef.n_tokens, ef.cont_dim, ef.globals_dim) == (frames, 3 * bins, 9) == (30, 99, 9)
    freqs = np.arange(bins) * rate / n_fft
    assert ef.cont_features == tuple(f"{c}@{f:g}Hz" for c in CHANNELS for f in freqs)
    assert ef.cont_features[:3] == ("accel_x@0Hz", "accel_x@15.625Hz", "accel_x@31.25Hz")
    assert ef.cont_features[bins] == "accel_y@0Hz" and ef.cont_features[-1] == "accel_z@500Hz"
    assert ef.globals_features == tuple(f"{k}_{c}" for k in ("rms", "crest", "kurtosis") for c in CHANNELS)
    assert ef.token_types == ("pad", "frame") and ef.label_names == CLASSES
    # 8 one-second segments per recording, 14/3/3 recordings per class.
    assert [ef.num_rows(s) for s in ef.splits] == [8 * 42, 8 * 9, 8 * 9]
    with h5py.File(spectro) as f:
        attrs = dict(f.attrs)
        for split in ef.splits:
            assert (f[split]["tokens_id"][:] == 1).all()
    assert attrs["kind"] == "spectrogram" and attrs["sample_rate"] == 1000.0 and attrs["segment_s"] == 1.0
    assert (attrs["n_fft"], attrs["hop_length"]) == (64, 32) and list(attrs["channels"]) == list(CHANNELS)

    loaders, meta = make_loaders(SimpleNamespace(path=str(spectro), batch_size=64), device="cpu", seed=0)
    batch = next(iter(loaders["train"]))
    assert batch["tokens_cont"].shape == (64, 30, 99) and batch["globals"].shape == (64, 9)
    assert (batch["tokens_id"] == 1).all() and meta.n_classes == 3 and meta.cont_features == ef.cont_features
    # A model recovers C and F from the names alone, as the contract promises.
    prefixes = list(dict.fromkeys(name.split("@")[0] for name in meta.cont_features))
    assert prefixes == list(CHANNELS) and meta.cont_dim // len(prefixes) == bins


def test_tokens_and_globals_match_a_direct_computation(spectro, sensor_dir):
    """Example 0 of train is segment 0 of the first train recording: recompute it with numpy."""
    first = _split_recordings(spectro)["train"][0]
    rec = {r.name: r for r in read_sensor_recordings(sensor_dir)}[first]
    x = rec.data[:, :1000].astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(64) / 64)  # periodic Hann, torch's default
    frames = np.stack([x[:, j * 32:j * 32 + 64] for j in range(30)], axis=1)  # [C, T, n_fft]
    expected = np.log1p(np.abs(np.fft.rfft(frames * window, axis=-1)))  # [C, T, F]
    block = EventFile(spectro).read_block("train", 0, 1)
    tokens = block["tokens_cont"][0]  # [T, C*F]
    for c in range(3):
        np.testing.assert_allclose(tokens[:, c * 33:(c + 1) * 33], expected[c], rtol=1e-4, atol=1e-4)
    rms = np.sqrt((x**2).mean(-1))
    centred = x - x.mean(-1, keepdims=True)
    kurtosis = (centred**4).mean(-1) / (centred**2).mean(-1) ** 2
    np.testing.assert_allclose(block["globals"][0], np.concatenate([rms, np.abs(x).max(-1) / rms, kurtosis]),
                               rtol=1e-4)
    assert block["labels"][0] == CLASSES.index(rec.label)


def test_frequency_axis_shows_the_structural_modes(spectro, sensor_dir, tmp_path):
    ef = EventFile(spectro)
    block = ef.read_block("train", 0, ef.num_rows("train"))
    healthy = block["tokens_cont"][block["labels"] == 0]
    first_mode, far = ef.cont_features.index("accel_x@31.25Hz"), ef.cont_features.index("accel_x@453.125Hz")
    assert healthy[..., first_mode].mean() > healthy[..., far].mean() + 1.0

    # Finer bins (3.9 Hz): the peak between 20 and 50 Hz sits lower for a crack (stiffness loss).
    fine = prepare_spectrograms(sensor_dir, tmp_path / "fine.h5", n_fft=256)
    ef = EventFile(fine)
    block = ef.read_block("train", 0, ef.num_rows("train"))
    freqs = np.array([float(re.fullmatch(r"accel_x@(.+)Hz", n).group(1)) for n in ef.cont_features
                      if n.startswith("accel_x@")])
    band = np.flatnonzero((freqs > 20) & (freqs < 50))
    peak = freqs[band][block["tokens_cont"][:, :, band].mean(axis=1).argmax(axis=1)]
    healthy_peak, crack_peak = peak[block["labels"] == 0].mean(), peak[block["labels"] == 1].mean()
    assert 33 < healthy_peak < 37 and crack_peak < healthy_peak - 1.5


# --- splits --------------------------------------------------------------------------------------

def test_splits_are_by_recording_stratified_and_deterministic(spectro, sensor_dir, tmp_path):
    by_split = _split_recordings(spectro)
    names = [set(v) for v in by_split.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set.union(*names) == {f"rec_{i:03d}.csv" for i in range(60)}
    label_of = dict(pd.read_csv(sensor_dir / "labels.csv").values)
    ef = EventFile(spectro)
    for split, members in by_split.items():
        counts = pd.Series([label_of[m] for m in members]).value_counts().to_dict()
        assert counts == {c: (14 if split == "train" else 3) for c in CLASSES}
        labels = ef.read_block(split, 0, ef.num_rows(split))["labels"]
        assert np.bincount(labels, minlength=3).tolist() == [8 * counts[c] for c in CLASSES]

    again = prepare_spectrograms(sensor_dir, tmp_path / "again.h5", seed=0)
    other = prepare_spectrograms(sensor_dir, tmp_path / "other.h5", seed=1)
    with h5py.File(spectro) as a, h5py.File(again) as b:
        assert {k: str(v) for k, v in a.attrs.items()} == {k: str(v) for k, v in b.attrs.items()}
        for split in ("train", "val", "test"):
            for name in ("tokens_id", "tokens_cont", "globals", "labels"):
                np.testing.assert_array_equal(a[split][name][:], b[split][name][:])
    assert _split_recordings(other) != by_split


def test_small_classes_go_to_train_or_are_split_unstratified(tmp_path):
    # 3 healthy recordings are stratified; crack and loose_bolt have 2 each: all to train, with a warning.
    source = make_synthetic_sensor_data(tmp_path / "seven", n_recordings=7, duration_s=2.0)
    with pytest.warns(UserWarning, match=r"classes \['crack', 'loose_bolt'\] have fewer than 3 recordings"):
        path = prepare_spectrograms(source, tmp_path / "seven.h5")
    split = _split_recordings(path)
    assert {"rec_001.csv", "rec_002.csv", "rec_004.csv", "rec_005.csv"} <= set(split["train"])
    assert [len(split[s]) for s in ("train", "val", "test")] == [5, 1, 1]
    # No class has 3 recordings: an unstratified split still gives every split a recording.
    source = make_synthetic_sensor_data(tmp_path / "four", n_recordings=4, duration_s=2.0, classes=CLASSES[:2])
    split = _split_recordings(prepare_spectrograms(source, tmp_path / "four.h5"))
    assert [len(split[s]) for s in ("train", "val", "test")] == [2, 1, 1]


# --- errors of prepare_spectrograms --------------------------------------------------------------

def test_prepare_rejects_what_cannot_make_a_dataset(tmp_path):
    for name in ("a.csv", "b.csv", "c.csv"):
        _tone_csv(tmp_path / name, n=2000)
    _tone_csv(tmp_path / "short.csv", n=500)
    _tone_csv(tmp_path / "slow.csv", n=2000, rate=500.0)
    out = tmp_path / "out.h5"
    three = [("a.csv", "x"), ("b.csv", "y"), ("c.csv", "x")]
    with pytest.raises(DataError, match=r"segment_s=0\.05 is 50 samples at 1000 Hz, shorter than n_fft=64"):
        prepare_spectrograms(_labels(tmp_path, three), out, segment_s=0.05)
    with pytest.raises(DataError, match=r"recording 'short\.csv' has 500 samples \(0\.5 s\), shorter than one "
                                        r"segment of 1000 samples \(1 s\)"):
        prepare_spectrograms(_labels(tmp_path, three + [("short.csv", "y")]), out)
    with pytest.raises(DataError, match=r"2 recordings; expected at least 3 \(one per split"):
        prepare_spectrograms(_labels(tmp_path, three[:2]), out)
    with pytest.raises(DataError, match=r"recording 'slow\.csv' is sampled at 500 Hz but 'a\.csv' at 1000 Hz"):
        prepare_spectrograms(_labels(tmp_path, three + [("slow.csv", "y")]), out)
    with pytest.raises(DataError, match=r"labels \['y'\] are not in label_names=\['x'\]"):
        prepare_spectrograms(_labels(tmp_path, three), out, label_names=["x"])
    with pytest.raises(ConfigError, match=r"val_fraction=0\.6, test_fraction=0\.5; expected both in \(0, 1\)"):
        prepare_spectrograms(_labels(tmp_path, three), out, val_fraction=0.6, test_fraction=0.5)
    assert not out.exists()
    path = prepare_spectrograms(_labels(tmp_path, three), out, label_names=["y", "x"], segment_s=0.5)
    ef = EventFile(path)
    assert ef.label_names == ("y", "x") and sum(ef.num_rows(s) for s in ef.splits) == 3 * 4


# --- write_events(extra_attrs=...) ---------------------------------------------------------------

def test_write_events_extra_attrs(tmp_path):
    rng = np.random.default_rng(0)
    split = {"tokens_id": np.ones((4, 2), np.int64), "tokens_cont": rng.normal(size=(4, 2, 4)),
             "globals": rng.normal(size=(4, 2)), "labels": np.array([0, 1, 0, 1])}
    extra = {"kind": "demo", "n_fft": 64, "rate": 1e3, "flag": True, "channels": ["a", "b"], "edges": [1, 2, 3]}
    path = write_events(tmp_path / "ev.h5", {"train": split}, extra_attrs=extra)
    with h5py.File(path) as f:
        assert f.attrs["kind"] == "demo" and f.attrs["n_fft"] == 64 and f.attrs["rate"] == 1e3 and f.attrs["flag"]
        assert list(f.attrs["channels"]) == ["a", "b"] and f.attrs["edges"].tolist() == [1, 2, 3]
    assert EventFile(path).n_tokens == 2
    with pytest.raises(DataError, match=r"extra attribute 'label_names' is not allowed"):
        write_events(tmp_path / "bad.h5", {"train": split}, extra_attrs={"label_names": ["x"]})
    with pytest.raises(DataError, match=r"extra attribute 'meta' has type dict; expected .*JSON string"):
        write_events(tmp_path / "bad.h5", {"train": split}, extra_attrs={"meta": {"a": 1}})
    assert not (tmp_path / "bad.h5").exists()


# --- end to end ----------------------------------------------------------------------------------

def test_mlp_classifier_learns_the_conditions(spectro, tmp_path):
    from thesis_lib import train

    result = train({
        "output_root": str(tmp_path / "outputs"), "run_name": "spectro",
        "data": {"path": str(spectro), "batch_size": 32},
        "model": {"task": "classifier", "encoder": "mlp", "hidden_dim": 64, "num_layers": 1, "latent_dim": 32},
        "trainer": {"epochs": 3, "seed": 0},
        "report": {"enabled": False}, "telemetry": {"enabled": False},
    })
    assert result.status == "COMPLETED"
    assert result.test_metrics["metric_accuracy"] > 0.8  # chance is 1/3
