"""Sensor recordings as CSV files: a synthetic vibration generator and a checked reader.

A recording is one CSV with a `time` column (seconds, uniformly sampled) and one column per
channel; a `labels.csv` beside the recordings lists them (columns `file,label`, files relative
to it). `spectrogram.prepare_spectrograms` turns such a directory into an event file.

The synthetic recordings are a structure under ambient (random) excitation, the way
accelerometers on a bridge or a machine frame see it:

- healthy: three structural modes (about 35, 90 and 160 Hz, jittered by up to 3 % per
  recording), each the response of a damped resonator (damping ratio 1-3 %) to broadband
  random force, seen by every channel with its own participation factor, plus sensor noise.
- crack: the same modes 5-10 % lower (a crack removes stiffness; each mode drops by its own
  share) and a 2x harmonic of the first mode, because a breathing crack opens and closes with
  the motion and so responds nonlinearly.
- loose_bolt: healthy modes plus periodic impacts (3-7 per second, slightly irregular): short
  bursts ringing at 250-400 Hz that decay with a time constant of 4-12 ms.

Amplitudes, gains, damping and noise are drawn per recording, so a class is recognised by its
spectral shape and its impulsiveness, not by its loudness.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

__all__ = ["SYNTHETIC_CLASSES", "SensorRecording", "make_synthetic_sensor_data", "read_sensor_recordings"]

SYNTHETIC_CLASSES = ("healthy", "crack", "loose_bolt")
_MODES_HZ = np.array([35.0, 90.0, 160.0])
_BURST_HZ = (250.0, 400.0)
# Uniformity tolerance of a recording's time column: steps may differ from their mean by this much.
_MAX_TIME_JITTER = 1e-3


@dataclass(eq=False)
class SensorRecording:
    """One recording: `data` float32 [C, n_samples] with `channels` in that order, `label` its class.

    `name` is the file as labels.csv lists it (unique within a dataset); `path` where it was read,
    and that file's identity when it was read: `sha256` of its bytes, `size_bytes`, `mtime_ns`
    (None for a recording built in memory).
    """

    name: str
    label: str
    sample_rate: float
    channels: tuple[str, ...]
    data: np.ndarray
    path: Path | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    mtime_ns: int | None = None

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[1])


def _modal_responses(rng: np.random.Generator, freqs: np.ndarray, n: int, sample_rate: float) -> tuple:
    """Unit-rms responses q [R, M, n] of damped modes at freqs [R, M] to white force, and their spectra."""
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    force = np.fft.rfft(rng.standard_normal((freqs.shape[0], n)), axis=-1)
    zeta = rng.uniform(0.01, 0.03, freqs.shape)
    fn = freqs[..., None]
    # Receptance of a single-degree-of-freedom oscillator, in Hz units (constant factors drop out below).
    spectra = force[:, None, :] / (fn**2 - f**2 + 2j * zeta[..., None] * fn * f)
    q = np.fft.irfft(spectra, n=n, axis=-1)
    scale = 1.0 / np.sqrt(np.mean(q**2, axis=-1, keepdims=True))
    return q * scale, spectra * scale


def _second_harmonic(spectrum: np.ndarray, n: int) -> np.ndarray:
    """Unit-rms Re(z^2) of the analytic signal z of a narrowband signal: its content moved to 2f."""
    one_sided = np.zeros(spectrum.shape[:-1] + (n,), complex)
    half = spectrum.shape[-1]
    one_sided[..., :half] = spectrum
    one_sided[..., 1:(n + 1) // 2] *= 2.0  # positive frequencies doubled, DC and Nyquist kept
    z = np.fft.ifft(one_sided, axis=-1)
    h = np.real(z * z)
    return h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True))


def _impacts(rng: np.random.Generator, n_rec: int, n: int, sample_rate: float) -> np.ndarray:
    """Trains of decaying high-frequency bursts [R, n], peak about 1, at 3-7 impacts a second."""
    rate = rng.uniform(3.0, 7.0, n_rec)
    k = int(np.ceil(n / sample_rate * 7.0)) + 1
    times = rng.uniform(0, 1.0 / rate)[:, None] + np.arange(k) / rate[:, None]
    times = times + rng.normal(0.0, 0.05, (n_rec, k)) / rate[:, None]  # a loose joint is not a metronome
    index = np.round(times * sample_rate).astype(np.int64)
    valid = (index >= 0) & (index < n)
    train = np.zeros((n_rec, n))
    rows = np.broadcast_to(np.arange(n_rec)[:, None], index.shape)
    np.add.at(train, (rows[valid], index[valid]), rng.uniform(0.6, 1.4, (n_rec, k))[valid])
    tau = rng.uniform(0.004, 0.012, n_rec)[:, None]
    t = np.arange(int(np.ceil(0.06 * sample_rate))) / sample_rate
    kernel = np.exp(-t / tau) * np.sin(2 * np.pi * rng.uniform(*_BURST_HZ, n_rec)[:, None] * t)
    size = n + kernel.shape[1]
    return np.fft.irfft(np.fft.rfft(train, size) * np.fft.rfft(kernel, size), size)[:, :n]


def _participation(n_channels: int) -> np.ndarray:
    """Fixed [C, M] weights: each mode's shape sampled where the channel's sensor sits, floored."""
    c = np.arange(1, n_channels + 1)[:, None]
    m = np.arange(1, len(_MODES_HZ) + 1)[None, :]
    return np.maximum(np.abs(np.sin(np.pi * m * c / (n_channels + 1.5))), 0.3)


def _check_synthetic_args(n_recordings: int, sample_rate: float, duration_s: float, channels: tuple,
                          classes: tuple) -> None:
    """ConfigError for arguments the generator cannot honour."""
    if n_recordings < 1 or duration_s <= 0:
        raise ConfigError(f"n_recordings={n_recordings}, duration_s={duration_s}; expected >= 1 and > 0")
    if sample_rate < 2.2 * _BURST_HZ[1]:
        raise ConfigError(f"sample_rate={sample_rate}; expected >= {2.2 * _BURST_HZ[1]:g} Hz: the synthetic "
                          f"impacts ring at up to {_BURST_HZ[1]:g} Hz")
    if not channels or len(set(channels)) != len(channels) or any(c == "time" or "@" in c for c in channels):
        raise ConfigError(f"channels={list(channels)}; expected distinct names other than 'time', without '@'")
    unknown = [c for c in classes if c not in SYNTHETIC_CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ConfigError(f"classes={list(classes)}; expected distinct names from {list(SYNTHETIC_CLASSES)}")


def make_synthetic_sensor_data(out_dir: str | os.PathLike, n_recordings: int = 60, seed: int = 0, *,
                               sample_rate: float = 1000.0, duration_s: float = 8.0,
                               channels: Sequence[str] = ("accel_x", "accel_y", "accel_z"),
                               classes: Sequence[str] = SYNTHETIC_CLASSES) -> Path:
    """Write synthetic vibration recordings (module docstring) as CSVs plus labels.csv.

    Args:
        out_dir: directory to write into (created); rec_000.csv, ... and labels.csv are overwritten.
        n_recordings: recordings in all; classes take turns, so counts differ by at most one.
        seed: the same seed gives the same files.
        sample_rate: samples per second (at least 880: the impacts ring at up to 400 Hz).
        duration_s: length of each recording.
        channels: column names after `time`.
        classes: which conditions, in this order (rec_000 is classes[0], rec_001 classes[1], ...).

    Returns:
        out_dir as a Path.

    Raises:
        ConfigError: a count, rate, channel or class name is out of range.
    """
    channels, classes = tuple(str(c) for c in channels), tuple(str(c) for c in classes)
    _check_synthetic_args(n_recordings, sample_rate, duration_s, channels, classes)
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sample_rate))
    labels = np.array([classes[i % len(classes)] for i in range(n_recordings)])
    crack, loose = labels == "crack", labels == "loose_bolt"
    freqs = _MODES_HZ * rng.uniform(0.97, 1.03, (n_recordings, len(_MODES_HZ)))
    drop = rng.uniform(0.05, 0.10, (n_recordings, 1)) * rng.uniform(0.8, 1.2, freqs.shape)
    freqs = np.where(crack[:, None], freqs * (1.0 - drop), freqs)
    q, spectra = _modal_responses(rng, freqs, n, sample_rate)
    amplitude = rng.uniform(0.5, 1.5, freqs.shape)
    shapes = _participation(len(channels))[None] * rng.uniform(0.8, 1.2, (n_recordings, len(channels), freqs.shape[1]))
    signal = np.einsum("rcm,rm,rmn->rcn", shapes, amplitude, q)
    if crack.any():
        strength = rng.uniform(0.3, 0.6, crack.sum())[:, None, None] * amplitude[crack, 0, None, None]
        signal[crack] += strength * shapes[crack, :, :1] * _second_harmonic(spectra[crack, 0], n)[:, None, :]
    if loose.any():
        peak = rng.uniform(4.0, 9.0, (loose.sum(), len(channels), 1))
        signal[loose] += peak * _impacts(rng, int(loose.sum()), n, sample_rate)[:, None, :]
    gain = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (n_recordings, 1, 1)))
    noise = rng.uniform(0.05, 0.15, (n_recordings, 1, 1)) * rng.standard_normal(signal.shape)
    signal = (gain * (signal + noise)).astype(np.float32)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    time = np.arange(n) / sample_rate
    width = max(3, len(str(n_recordings - 1)))
    names = [f"rec_{i:0{width}d}.csv" for i in range(n_recordings)]
    # One %-format over the whole table: several times faster than DataFrame.to_csv here.
    # Time keeps 9 decimals so that the reader's uniformity check sees the true step.
    line = "%.9f" + ",%.6g" * len(channels) + "\n"
    header = ",".join(("time",) + channels) + "\n"
    for name, rec in zip(names, signal):
        table = np.column_stack([time, rec.T.astype(np.float64)])
        (out / name).write_text(header + (line * n) % tuple(table.ravel().tolist()))
    (out / "labels.csv").write_text("file,label\n" + "".join(f"{f},{lab}\n" for f, lab in zip(names, labels)))
    return out


def _labels_table(source: Path) -> tuple[Path, pd.DataFrame]:
    """The labels CSV for a directory or a CSV path, checked: columns file,label, no blanks or repeats."""
    labels_path = source / "labels.csv" if source.is_dir() else source
    if not labels_path.is_file():
        where = f"no labels.csv in {source}" if source.is_dir() else f"labels file not found: {source}"
        raise DataError(f"{where}; expected a CSV with columns file,label (files relative to it)")
    try:
        table = pd.read_csv(labels_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise DataError(f"{labels_path}: not a readable CSV ({exc}); expected columns file,label") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("file", "label") if c not in table.columns]
    if missing:
        raise DataError(f"{labels_path}: columns {missing} missing (found {list(table.columns)}); "
                        f"expected columns file,label")
    table = table[["file", "label"]].apply(lambda col: col.str.strip())
    if table.empty:
        raise DataError(f"{labels_path}: lists no recordings; expected one row per recording (file,label)")
    blank = table.index[(table["file"] == "") | (table["label"] == "")]
    if len(blank):
        raise DataError(f"{labels_path}: line {blank[0] + 2} has an empty file or label; expected both")
    repeated = table["file"][table["file"].duplicated()]
    if len(repeated):
        raise DataError(f"{labels_path}: file {repeated.iloc[0]!r} is listed more than once; "
                        f"expected each recording once (a repeat would land in two splits)")
    return labels_path, table


def _numeric_column(path: Path, name: str, column: pd.Series) -> np.ndarray:
    """The column as float64, or DataError naming the first empty, non-numeric or non-finite cell."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    empty = column.isna().to_numpy()
    if empty.all():
        raise DataError(f"{path}: column {name!r} is empty; expected a number in every row")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        row = int(bad[0])
        value = column.iloc[row]
        found = "an empty cell" if empty[row] else repr(value) if isinstance(value, str) else f"{float(value):g}"
        raise DataError(f"{path}: column {name!r} holds {found} at line {row + 2} ({len(bad)} such cells); "
                        f"expected finite numbers")
    return values


def _sample_rate(path: Path, time: np.ndarray) -> float:
    """Samples per second from a time column, or DataError when it is not uniformly increasing."""
    if len(time) < 2:
        raise DataError(f"{path}: {len(time)} sample; expected at least 2 to tell the sample rate")
    step = (time[-1] - time[0]) / (len(time) - 1)
    steps = np.diff(time)
    jitter = float(np.max(np.abs(steps - step)) / step) if step > 0 else np.inf
    if not jitter < _MAX_TIME_JITTER:
        worst = int(np.argmax(np.abs(steps - step)))
        raise DataError(f"{path}: the time column is not uniformly sampled: steps run from {steps.min():.6g} s "
                        f"to {steps.max():.6g} s (mean {step:.6g} s; worst at line {worst + 3}, relative jitter "
                        f"{jitter:.3g}); expected increasing times with a constant step (relative jitter "
                        f"< {_MAX_TIME_JITTER:g}): resample the recording first")
    rate = 1.0 / step
    # Times printed in decimal lose their last digits: 999.9999997 Hz was meant as 1000 Hz.
    return float(round(rate)) if abs(rate - round(rate)) <= 1e-6 * rate else rate


def _read_recording(path: Path, name: str, label: str) -> SensorRecording:
    """One recording CSV, every column checked."""
    if not path.is_file():
        raise DataError(f"recording {name!r} not found: {path} (listed in labels.csv)")
    stat = path.stat()
    raw = path.read_bytes()  # read once: hashed for the file's identity, then parsed
    try:
        frame = pd.read_csv(io.BytesIO(raw), skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); expected columns time,<channel>,...") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if "time" not in frame.columns:
        raise DataError(f"{path}: no 'time' column (found {list(frame.columns)}); expected time in seconds "
                        f"and one column per channel")
    channels = tuple(c for c in frame.columns if c != "time")
    unnamed = [i + 1 for i, c in enumerate(frame.columns) if c.startswith("Unnamed:") or c == ""]
    if unnamed:
        raise DataError(f"{path}: column(s) {unnamed} have no name in the header; expected time,<channel>,...")
    if not channels:
        raise DataError(f"{path}: no channel columns besides 'time'; expected at least one")
    if frame.empty:
        raise DataError(f"{path}: no data rows below the header; expected samples")
    time = _numeric_column(path, "time", frame["time"])
    data = np.stack([_numeric_column(path, c, frame[c]) for c in channels]).astype(np.float32)
    return SensorRecording(name=name, label=label, sample_rate=_sample_rate(path, time), channels=channels,
                           data=data, path=path, sha256=hashlib.sha256(raw).hexdigest(), size_bytes=stat.st_size,
                           mtime_ns=stat.st_mtime_ns)


def read_sensor_recordings(source: str | os.PathLike) -> list[SensorRecording]:
    """Every recording a labels CSV lists, checked and read, in its order.

    Args:
        source: a directory holding labels.csv, or the labels CSV itself (columns file,label;
            relative file paths are taken from its directory).

    Returns:
        SensorRecordings with data float32 [C, n_samples]; all share the first recording's
        channel order (a file may order its columns differently).

    Raises:
        DataError: the labels CSV is missing or malformed, or a recording is missing, unreadable,
            lacks a time or channel column, holds an empty, non-numeric or non-finite value,
            is not uniformly sampled, or has other channels than the first recording; the
            message names the file and what was found.
    """
    labels_path, table = _labels_table(Path(source))
    recordings: list[SensorRecording] = []
    for name, label in zip(table["file"], table["label"]):
        path = Path(name) if Path(name).is_absolute() else labels_path.parent / name
        rec = _read_recording(path, name, label)
        if recordings and rec.channels != recordings[0].channels:
            first = recordings[0]
            if set(rec.channels) != set(first.channels):
                raise DataError(f"{path}: channels {list(rec.channels)} differ from {list(first.channels)} in "
                                f"{first.path} (missing {sorted(set(first.channels) - set(rec.channels))}, extra "
                                f"{sorted(set(rec.channels) - set(first.channels))}); expected the same channels "
                                f"in every recording")
            order = [rec.channels.index(c) for c in first.channels]
            rec.data, rec.channels = np.ascontiguousarray(rec.data[order]), first.channels
        recordings.append(rec)
    return recordings
