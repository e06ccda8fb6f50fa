"""Sensor recordings -> fixed-length segments -> log-magnitude spectrograms, written in event layout 1.

One example is one segment of one recording with all its channels. Its STFT frames are the
tokens (every token real: id 1 of token_types ("pad", "frame")), and a token's features are
log1p(|STFT|) channel-major (feature c * F + f, named f"{channel}@{freq:g}Hz"), so a model
recovers C and F from the feature names alone and reshapes [T, C*F] into an image [C, F, T].
The globals are time-domain condition indicators per channel: all rms, then all crest factors
(peak / rms), then all kurtoses (fourth standardized moment about the mean, 3 for Gaussian).
The loader's per-feature z-score then normalizes each (channel, frequency) bin on its own.

Splits are by recording, never by segment: segments of one recording are strongly correlated,
so a recording in two splits would leak. Classes with at least 3 recordings are stratified
(each split gets at least one of their recordings); see `_split_recordings` for smaller ones.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .h5 import SPLITS, write_events
from .sensors import SensorRecording, read_sensor_recordings

__all__ = ["SPECTROGRAM_TOKEN_TYPES", "condition_indicators", "prepare_spectrograms"]

SPECTROGRAM_TOKEN_TYPES = ("pad", "frame")
# Recordings whose rates differ by more than this cannot share frequency bins.
_RATE_TOLERANCE = 1e-3


def condition_indicators(segments: np.ndarray) -> np.ndarray:
    """Globals [N, 3*C] of segments [N, C, S]: rms per channel, then crest factor, then kurtosis.

    A silent channel (rms 0) gets crest factor and kurtosis 0 rather than a division by zero.
    """
    x = segments.astype(np.float64, copy=False)
    rms = np.sqrt(np.mean(x**2, axis=-1))
    peak = np.max(np.abs(x), axis=-1)
    centred = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(centred**2, axis=-1)
    fourth = np.mean(centred**4, axis=-1)
    crest = np.divide(peak, rms, out=np.zeros_like(rms), where=rms > 0)
    kurtosis = np.divide(fourth, var**2, out=np.zeros_like(var), where=var > 0)
    return np.concatenate([rms, crest, kurtosis], axis=1).astype(np.float32)


def _log_spectrograms(segments: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """log1p|STFT| of segments [N, C, S] as [N, C, F, T], one torch.stft call over all N*C rows."""
    n, c, s = segments.shape
    rows = torch.from_numpy(np.ascontiguousarray(segments, dtype=np.float32)).reshape(n * c, s)
    spec = torch.stft(rows, n_fft=n_fft, hop_length=hop_length, window=torch.hann_window(n_fft),
                      center=False, return_complex=True)
    return torch.log1p(spec.abs()).reshape(n, c, spec.shape[-2], spec.shape[-1]).numpy()


def _check_settings(segment_s: float, n_fft: int, hop_length: int, val_fraction: float,
                    test_fraction: float) -> None:
    """ConfigError for settings no data could satisfy."""
    if segment_s <= 0 or n_fft < 2 or hop_length < 1:
        raise ConfigError(f"segment_s={segment_s}, n_fft={n_fft}, hop_length={hop_length}; expected "
                          f"segment_s > 0, n_fft >= 2, hop_length >= 1")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction={val_fraction}, test_fraction={test_fraction}; expected both in "
                          f"(0, 1) with a sum below 1 (the rest is train)")


def _common_rate(recordings: Sequence[SensorRecording]) -> float:
    """The one sample rate all recordings share, or DataError naming two that differ."""
    first = recordings[0]
    for rec in recordings[1:]:
        if abs(rec.sample_rate - first.sample_rate) > _RATE_TOLERANCE * first.sample_rate:
            raise DataError(f"recording {rec.name!r} is sampled at {rec.sample_rate:g} Hz but {first.name!r} at "
                            f"{first.sample_rate:g} Hz; expected one rate (resample first): the spectrogram "
                            f"bins must mean the same frequencies in every example")
        if rec.channels != first.channels:
            raise DataError(f"recording {rec.name!r} has channels {list(rec.channels)} but {first.name!r} has "
                            f"{list(first.channels)}; expected the same channels in the same order")
    return first.sample_rate


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) recordings out of n >= 3, each at least 1."""
    n_val, n_test = max(1, round(val_fraction * n)), max(1, round(test_fraction * n))
    while n_val + n_test > n - 1:  # train keeps at least one: shrink the larger held-out part
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def _split_recordings(labels: np.ndarray, n_classes: int, val_fraction: float, test_fraction: float,
                      rng: np.random.Generator, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Recording indices per split, stratified by label, each split sorted.

    A class with at least 3 recordings puts at least one in every split. A class with fewer
    cannot, so all its recordings go to train (with a warning): the model still sees it, but
    val and test cannot measure it. If no class has 3 recordings, the recordings are split
    without stratification instead, so that every split still has one.
    """
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    counts = np.bincount(labels, minlength=n_classes)
    small = [i for i in range(n_classes) if 0 < counts[i] < 3]
    if not np.any(counts >= 3):
        groups = [rng.permutation(len(labels))]
    else:
        groups = [rng.permutation(np.flatnonzero(labels == i)) for i in range(n_classes) if counts[i] >= 3]
        if small:
            warnings.warn(f"classes {[class_names[i] for i in small]} have fewer than 3 recordings, so they "
                          f"cannot be in every split: their recordings all go to train", stacklevel=3)
            parts["train"].append(np.flatnonzero(np.isin(labels, small)))
    for group in groups:
        n_train, n_val, _ = _split_counts(len(group), val_fraction, test_fraction)
        for split, chunk in zip(SPLITS, np.split(group, [n_train, n_train + n_val])):
            parts[split].append(chunk)
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _segments(recordings: Sequence[SensorRecording], segment_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """All whole segments [N, C, S] in recording order (the remainder of each is dropped), and their recording."""
    blocks, owners = [], []
    for index, rec in enumerate(recordings):
        count = rec.n_samples // segment_samples
        cut = rec.data[:, :count * segment_samples].reshape(len(rec.channels), count, segment_samples)
        blocks.append(cut.transpose(1, 0, 2))
        owners.append(np.full(count, index))
    return np.concatenate(blocks), np.concatenate(owners)


def prepare_spectrograms(source: str | os.PathLike | Sequence[SensorRecording], out_path: str | os.PathLike, *,
                         segment_s: float = 1.0, n_fft: int = 64, hop_length: int | None = None,
                         val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                         chunk_rows: int = 1024, label_names: Sequence[str] | None = None) -> Path:
    """Cut recordings into segments, compute their spectrograms and write an event file (module docstring).

    Args:
        source: a directory with labels.csv, a labels CSV (see `read_sensor_recordings`), or
            SensorRecordings already read.
        out_path: the .h5 file to write.
        segment_s: segment length in seconds; each recording gives floor(duration / segment_s)
            non-overlapping segments, its remainder is dropped.
        n_fft: STFT window (Hann) and FFT length: F = n_fft // 2 + 1 frequency bins.
        hop_length: STFT hop; default n_fft // 2. No centring padding: T = 1 + (S - n_fft) // hop.
        val_fraction, test_fraction: shares of each class's recordings held out (at least one
            each when the class has 3 recordings or more).
        seed: the same seed, settings and recordings give the same file.
        chunk_rows: HDF5 chunk length along N.
        label_names: class order (label i is label_names[i]); default: order of first appearance.

    Returns:
        The path written. Its root attributes also hold kind="spectrogram", sample_rate, n_fft,
        hop_length, segment_s, channels and recordings (JSON {split: [recording names]}).

    Raises:
        ConfigError: a setting is out of range.
        DataError: reading failed (see `read_sensor_recordings`); a segment is shorter than
            n_fft; a recording is shorter than one segment; recordings differ in sample rate or
            channels; a label is not in label_names; fewer than 3 recordings (one per split);
            or a channel name holds '@' (it separates channel and frequency in feature names).
    """
    hop_length = n_fft // 2 if hop_length is None else int(hop_length)
    _check_settings(segment_s, n_fft, hop_length, val_fraction, test_fraction)
    recordings = (read_sensor_recordings(source) if isinstance(source, (str, os.PathLike))
                  else list(source))
    if len(recordings) < len(SPLITS):
        raise DataError(f"{len(recordings)} recordings; expected at least {len(SPLITS)} (one per split "
                        f"{list(SPLITS)}), since splits are made by recording")
    rate = _common_rate(recordings)
    channels = recordings[0].channels
    if any("@" in c for c in channels):
        raise DataError(f"channel names {list(channels)}: '@' separates channel and frequency in the feature "
                        f"names; rename the channel")
    segment_samples = int(round(segment_s * rate))
    if segment_samples < n_fft:
        raise DataError(f"segment_s={segment_s} is {segment_samples} samples at {rate:g} Hz, shorter than "
                        f"n_fft={n_fft}; expected a longer segment or a smaller n_fft")
    for rec in recordings:
        if rec.n_samples < segment_samples:
            raise DataError(f"recording {rec.name!r} has {rec.n_samples} samples ({rec.n_samples / rate:g} s), "
                            f"shorter than one segment of {segment_samples} samples ({segment_s:g} s)")
    names = tuple(label_names) if label_names is not None else tuple(dict.fromkeys(r.label for r in recordings))
    unknown = sorted({r.label for r in recordings} - set(names))
    if unknown:
        raise DataError(f"labels {unknown} are not in label_names={list(names)}")
    labels = np.array([names.index(r.label) for r in recordings])
    chosen = _split_recordings(labels, len(names), val_fraction, test_fraction, np.random.default_rng(seed), names)

    segments, owner = _segments(recordings, segment_samples)
    spec = _log_spectrograms(segments, n_fft, hop_length)  # [N, C, F, T]
    n, c, f, t = spec.shape
    tokens = spec.transpose(0, 3, 1, 2).reshape(n, t, c * f)  # frame-major tokens, channel-major features
    globals_ = condition_indicators(segments)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    splits: dict[str, Mapping[str, np.ndarray]] = {}
    for split, members in chosen.items():
        rows = np.flatnonzero(np.isin(owner, members))
        splits[split] = {"tokens_id": np.ones((len(rows), t), np.int32), "tokens_cont": tokens[rows],
                         "globals": globals_[rows], "labels": labels[owner[rows]]}
    attrs = {"kind": "spectrogram", "sample_rate": float(rate), "n_fft": int(n_fft), "hop_length": hop_length,
             "segment_s": float(segment_s), "window": "hann", "magnitude": "log1p", "channels": list(channels),
             "recordings": json.dumps({s: [recordings[i].name for i in m] for s, m in chosen.items()})}
    return write_events(
        out_path, splits,
        cont_features=[f"{ch}@{fr:g}Hz" for ch in channels for fr in freqs],
        globals_features=[f"{kind}_{ch}" for kind in ("rms", "crest", "kurtosis") for ch in channels],
        token_types=SPECTROGRAM_TOKEN_TYPES, label_names=names, chunk_rows=chunk_rows, extra_attrs=attrs)
