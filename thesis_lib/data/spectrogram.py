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

The file records its sources (root attributes, `sources_version` 1): the STFT settings
(`stft`, `segment_samples`, `globals_kinds`), every recording with its path and identity
(`sources`: name, label, path, sha256, size, mtime, samples, and a sha256 of the decoded data)
and which segments of which recording are the rows of each split (`segments`), so that
`read_spectrogram_source` can re-read any split from the recordings themselves (the serving
export checks its graph on them). Files written before this lack them and say so there.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import ConfigError, DataError
from .h5 import SPLITS, _decode_strings, write_events
from .sensors import SensorRecording, _read_recording, read_sensor_recordings

__all__ = [
    "GLOBALS_KINDS",
    "SPECTROGRAM_TOKEN_TYPES",
    "STFT_SETTINGS",
    "SpectrogramSource",
    "condition_indicators",
    "globals_feature_names",
    "prepare_spectrograms",
    "read_spectrogram_source",
    "spectrogram_feature_names",
    "spectrogram_features",
]

SPECTROGRAM_TOKEN_TYPES = ("pad", "frame")
# The globals, in file order: every channel's rms, then every channel's crest factor, then kurtosis.
GLOBALS_KINDS = ("rms", "crest", "kurtosis")
# What the file says about the STFT: torch.stft with these settings, then log1p of the magnitude.
STFT_SETTINGS = {"window": "hann", "periodic": True, "center": False, "onesided": True, "normalized": False,
         "magnitude": "abs", "compression": "log1p", "token_layout": "frame-major tokens [T, C*F], channel-major "
                                                                      "features (feature c*F + f)"}
SOURCES_VERSION = 1
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


def spectrogram_features(segments: np.ndarray, n_fft: int, hop_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The un-normalized example features of segments [N, C, S], exactly as prepare_spectrograms writes them.

    Returns:
        (tokens_cont float32 [N, T, C*F]: log1p|STFT| frame-major with channel-major features,
        globals float32 [N, 3*C]: `condition_indicators`).
    """
    spec = _log_spectrograms(segments, n_fft, hop_length)  # [N, C, F, T]
    n, c, f, t = spec.shape
    tokens = np.ascontiguousarray(spec.transpose(0, 3, 1, 2).reshape(n, t, c * f))
    return tokens, condition_indicators(segments)


def spectrogram_feature_names(channels: Sequence[str], sample_rate: float, n_fft: int) -> list[str]:
    """Token feature names, channel-major: f"{channel}@{frequency:g}Hz" for every channel, then every bin."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    return [f"{ch}@{fr:g}Hz" for ch in channels for fr in freqs]


def globals_feature_names(channels: Sequence[str], kinds: Sequence[str] = GLOBALS_KINDS) -> list[str]:
    """Global names, kind-major: f"{kind}_{channel}" (all rms, then all crest factors, then all kurtoses)."""
    return [f"{kind}_{ch}" for kind in kinds for ch in channels]


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


def _data_sha256(data: np.ndarray) -> str:
    """sha256 of a recording's decoded samples (float32, C order): its identity whatever the CSV formatting."""
    return hashlib.sha256(np.ascontiguousarray(data, dtype=np.float32).tobytes()).hexdigest()


def _source_attrs(recordings: Sequence[SensorRecording], chosen: Mapping[str, np.ndarray], owner: np.ndarray,
                  labels_file: Path | None, segment_samples: int) -> dict[str, object]:
    """The root attributes recording where the file came from (module docstring)."""
    sources = [{"name": r.name, "label": r.label, "path": str(r.path.resolve()) if r.path is not None else None,
                "sha256": r.sha256, "size_bytes": r.size_bytes, "mtime_ns": r.mtime_ns, "n_samples": r.n_samples,
                "data_sha256": _data_sha256(r.data)} for r in recordings]
    counts = np.bincount(owner, minlength=len(recordings))
    # Rows of a split: its recordings in index order, each with all its whole segments in time order.
    segments = {s: [[int(i), int(counts[i])] for i in members] for s, members in chosen.items()}
    return {"sources_version": SOURCES_VERSION, "segment_samples": int(segment_samples),
            "stft": json.dumps(STFT_SETTINGS), "globals_kinds": list(GLOBALS_KINDS),
            "labels_file": str(labels_file.resolve()) if labels_file is not None else "",
            "sources": json.dumps(sources), "segments": json.dumps(segments)}


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
        hop_length, segment_s, channels, recordings (JSON {split: [recording names]}) and the
        record of its sources (module docstring; read back by `read_spectrogram_source`).

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
    labels_file = None
    if isinstance(source, (str, os.PathLike)):
        labels_file = Path(source) / "labels.csv" if Path(source).is_dir() else Path(source)
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
    tokens, globals_ = spectrogram_features(segments, n_fft, hop_length)
    t = tokens.shape[1]
    splits: dict[str, Mapping[str, np.ndarray]] = {}
    for split, members in chosen.items():
        rows = np.flatnonzero(np.isin(owner, members))
        splits[split] = {"tokens_id": np.ones((len(rows), t), np.int32), "tokens_cont": tokens[rows],
                         "globals": globals_[rows], "labels": labels[owner[rows]]}
    attrs = {"kind": "spectrogram", "sample_rate": float(rate), "n_fft": int(n_fft), "hop_length": hop_length,
             "segment_s": float(segment_s), "window": "hann", "magnitude": "log1p", "channels": list(channels),
             "recordings": json.dumps({s: [recordings[i].name for i in m] for s, m in chosen.items()}),
             **_source_attrs(recordings, chosen, owner, labels_file, segment_samples)}
    return write_events(
        out_path, splits,
        cont_features=spectrogram_feature_names(channels, rate, n_fft),
        globals_features=globals_feature_names(channels),
        token_types=SPECTROGRAM_TOKEN_TYPES, label_names=names, chunk_rows=chunk_rows, extra_attrs=attrs)


@dataclass(frozen=True)
class SpectrogramSource:
    """What a spectrogram file records about its making: settings, recordings, and the rows of each split.

    `sources` holds one dict per recording (name, label, path, sha256, size_bytes, mtime_ns,
    n_samples, data_sha256); `split_segments[split]` lists [recording index, whole segments] in
    row order (segment j of a recording is samples j*S .. (j+1)*S of every channel).
    """

    path: Path
    sample_rate: float
    n_fft: int
    hop_length: int
    segment_samples: int
    channels: tuple[str, ...]
    globals_kinds: tuple[str, ...]
    stft: dict
    label_names: tuple[str, ...]
    cont_features: tuple[str, ...]
    globals_features: tuple[str, ...]
    labels_file: str
    sources: tuple[dict, ...]
    split_segments: dict[str, list] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Tokens per example: STFT frames of one segment (no centring padding)."""
        return 1 + (self.segment_samples - self.n_fft) // self.hop_length

    def recordings(self, split: str) -> list[dict]:
        """The source dicts of the recordings of `split`, in row order."""
        return [self.sources[i] for i, _ in self.split_segments.get(split, [])]

    def read_segments(self, split: str, recordings_dir: str | os.PathLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Re-read the recordings of `split` and cut them into exactly the file's rows of that split.

        Args:
            split: "train", "val" or "test".
            recordings_dir: read each recording as recordings_dir / its name (as labels.csv listed
                it) instead of the path recorded (recordings moved since).

        Returns:
            (segments float32 [N, C, S] in the split's row order, labels int64 [N]).

        Raises:
            DataError: the split is not recorded; a recording has no recorded path (prepared from
                memory) or is gone (the message names its directory and the missing files); it
                cannot be read; or its samples differ from those the file was prepared from.
        """
        if split not in self.split_segments:
            raise DataError(f"{self.path}: split {split!r} is not recorded; recorded: {list(self.split_segments)}")
        members = self.recordings(split)
        paths = [self._recording_path(rec, recordings_dir) for rec in members]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            where = Path(recordings_dir) if recordings_dir is not None else missing[0].parent
            more = f" (and {len(missing) - 1} more of its {len(paths)} recordings)" if len(missing) > 1 else ""
            raise DataError(f"the recordings of split {split!r} are gone from {where}: {missing[0].name} not found"
                            f"{more}; {self.path} was prepared from them (labels file {self.labels_file or '?'}); "
                            "put them back, or pass recordings_dir= (thesis-lib export --recordings-dir) to read "
                            "them from where they are now")
        blocks, labels = [], []
        for (index, count), rec, path in zip(self.split_segments[split], members, paths):
            data = self._read_checked(rec, path)
            s = self.segment_samples
            if data.shape[1] < count * s:
                raise DataError(f"{path}: {data.shape[1]} samples, fewer than the {count} segments of {s} samples "
                                f"that {self.path} cut from it")
            blocks.append(data[:, :count * s].reshape(len(self.channels), count, s).transpose(1, 0, 2))
            labels.append(np.full(count, self.label_names.index(rec["label"]), np.int64))
        return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32), np.concatenate(labels)

    def _recording_path(self, rec: Mapping, recordings_dir: str | os.PathLike | None) -> Path:
        """Where to read recording `rec` from; DataError for one prepared from memory without a directory."""
        if recordings_dir is not None:
            return Path(recordings_dir) / rec["name"]
        if not rec.get("path"):
            raise DataError(f"{self.path}: recording {rec['name']!r} was prepared from memory, so no file path "
                            "was recorded; pass recordings_dir= (thesis-lib export --recordings-dir) to name the "
                            "folder that holds it as a CSV")
        return Path(rec["path"])

    def _read_checked(self, rec: Mapping, path: Path) -> np.ndarray:
        """The recording's samples [C, n] in the file's channel order, checked against the recorded identity."""
        got = _read_recording(path, rec["name"], rec["label"])
        if set(got.channels) != set(self.channels):
            raise DataError(f"{path}: channels {list(got.channels)}; {self.path} was prepared from "
                            f"{list(self.channels)}")
        data = np.ascontiguousarray(got.data[[got.channels.index(c) for c in self.channels]])
        if abs(got.sample_rate - self.sample_rate) > _RATE_TOLERANCE * self.sample_rate:
            raise DataError(f"{path}: sampled at {got.sample_rate:g} Hz; {self.path} was prepared at "
                            f"{self.sample_rate:g} Hz")
        recorded = rec.get("data_sha256")
        if recorded and _data_sha256(data) != recorded:
            raise DataError(f"{path}: its samples differ from those {self.path} was prepared from (sha256 of the "
                            f"samples {recorded[:12]} then, {_data_sha256(data)[:12]} now; file sha256 "
                            f"{str(rec.get('sha256'))[:12]} then, {str(got.sha256)[:12]} now); re-run "
                            "prepare_spectrograms on the recordings as they are now")
        return data


_SOURCE_ATTRS = ("sources_version", "segment_samples", "stft", "globals_kinds", "sources", "segments")


def read_spectrogram_source(path: str | os.PathLike) -> SpectrogramSource:
    """The settings, recordings and split rows a spectrogram file (prepare_spectrograms) records.

    Raises:
        DataError: the file is missing or not a spectrogram file, or it predates recording its
            sources (the message says to re-run prepare_spectrograms), or a newer version wrote it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"spectrogram file not found: {path}")
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    kind = attrs.get("kind")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind != "spectrogram":
        raise DataError(f"{path}: not a spectrogram file (root attribute kind={kind!r}); the serving export "
                        "takes raw waveforms, so it needs a run trained on prepare_spectrograms output")
    missing = [a for a in _SOURCE_ATTRS if a not in attrs]
    if missing:
        raise DataError(f"{path}: this spectrogram file predates recording its sources (no {', '.join(missing)}): "
                        "it does not say which recordings, segments and STFT settings made it; re-run "
                        "prepare_spectrograms on the recordings to write a file that records them (the same "
                        "recordings, settings and seed give the same rows, so a run trained on this file can be "
                        "exported against the new one with data_path= / thesis-lib export --data-path)")
    version = int(attrs["sources_version"])
    if version > SOURCES_VERSION:
        raise DataError(f"{path}: sources_version {version} is newer than this thesis-lib reads "
                        f"({SOURCES_VERSION}); upgrade thesis-lib")
    return SpectrogramSource(
        path=path, sample_rate=float(attrs["sample_rate"]), n_fft=int(attrs["n_fft"]),
        hop_length=int(attrs["hop_length"]), segment_samples=int(attrs["segment_samples"]),
        channels=_decode_strings(attrs["channels"]), globals_kinds=_decode_strings(attrs["globals_kinds"]),
        stft=json.loads(attrs["stft"]), label_names=_decode_strings(attrs["label_names"]),
        cont_features=_decode_strings(attrs["cont_features"]),
        globals_features=_decode_strings(attrs["globals_features"]),
        labels_file=str(attrs.get("labels_file", "")), sources=tuple(json.loads(attrs["sources"])),
        split_segments=json.loads(attrs["segments"]))
