"""The serving graph: raw waveform segments in, class probabilities (or anomaly scores) out.

A run trained on `prepare_spectrograms` output sees z-scored spectrogram tokens plus nine
hand-computed globals. `ServingModel` puts that preprocessing in front of the model, as plain
tensor operations that both TorchScript and ONNX can hold:

    waveform float32 [B, C, S]  (S = the file's segment_samples, channels in the file's order,
                                 at its sample rate)
      -> STFT as one strided conv1d: kernels [2F, 1, n_fft] = periodic Hann window x cos / sin
         of the DFT (F = n_fft // 2 + 1 bins; stride hop_length; no centring padding, like
         torch.stft(center=False)), magnitude sqrt(re^2 + im^2), log1p
      -> tokens [B, T, C*F] frame-major, channel-major features; z-scored with the run's
         data_meta.json normalization (x * (1/std) + (-mean/std), the loader's own affine)
      -> globals in float64 like `condition_indicators` (rms, crest factor, kurtosis per channel,
         0 for a silent channel), then float32 and z-scored
      -> the model: softmax of the classifier's logits [B, n_classes], or the autoencoder's
         anomaly score [B] = per-event masked MSE of the reconstructed tokens, exactly
         `per_event_errors(batch)["mse"]` (the default score of `reports.inference`).

torch.stft is avoided because the ONNX exporter does not translate it in every opset; a
convolution with fixed DFT kernels exports everywhere. `library_outputs` is the reference the
export checks the graph against: the library's own pipeline (`spectrogram_features`, the
normalization's `apply`, the eager model) on the same segments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.normalization import Normalization
from .data.spectrogram import (
    GLOBALS_KINDS,
    STFT_SETTINGS,
    SpectrogramSource,
    globals_feature_names,
    spectrogram_feature_names,
    spectrogram_features,
)
from .errors import ModelError
from .models import losses
from .models.adversarial import GANAutoencoder
from .models.autoencoder import Autoencoder

__all__ = ["SERVING_OUTPUTS", "ServingModel", "WaveformFrontend", "anomaly_score", "build_serving_model", "library_outputs"]

# task -> (output name, what it is)
SERVING_OUTPUTS = {
    "classifier": ("probabilities", "softmax of the classifier's logits, [batch, n_classes]"),
    "autoencoder": ("anomaly_score", ("per-event masked MSE of the reconstructed z-scored spectrogram tokens "
                                      "(per_event_errors()['mse'], reports.inference's default anomaly score), "
                                      "[batch]")),
}


# per_event_errors whose "mse" is Autoencoder.per_event_errors' (the GAN one adds a discriminator score).
_MSE_AS_AUTOENCODER = (Autoencoder.per_event_errors, GANAutoencoder.per_event_errors)


def _dft_kernels(n_fft: int) -> torch.Tensor:
    """Conv1d weights [2F, 1, n_fft]: window * cos(2 pi k n / N) for the F bins, then window * -sin(...)."""
    window = torch.hann_window(n_fft).double()  # the float32 periodic window torch.stft got, widened
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2.0 * math.pi * torch.outer(k, n) / n_fft
    kernels = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    return kernels.float().unsqueeze(1)


def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/std, -mean/std) as float32, computed like `Normalization._affine` (float64, then cast)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return torch.from_numpy((1.0 / std).astype(np.float32)), torch.from_numpy((-mean / std).astype(np.float32))


class WaveformFrontend(nn.Module):
    """Raw segments [B, C, S] -> the model's batch: tokens_id [B, T], tokens_cont [B, T, C*F], globals [B, 3C]."""

    def __init__(self, *, n_channels: int, segment_samples: int, n_fft: int, hop_length: int,
                 normalization: Normalization) -> None:
        super().__init__()
        self.n_channels, self.segment_samples = int(n_channels), int(segment_samples)
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)
        self.n_bins = self.n_fft // 2 + 1
        self.n_frames = 1 + (self.segment_samples - self.n_fft) // self.hop_length
        self.register_buffer("dft", _dft_kernels(self.n_fft))
        for part, (scale, shift) in (("cont", _affine(normalization.cont_mean, normalization.cont_std)),
                                     ("globals", _affine(normalization.globals_mean, normalization.globals_std))):
            self.register_buffer(f"{part}_scale", scale)
            self.register_buffer(f"{part}_shift", shift)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens_id int64 [B, T] all 1, tokens_cont float32 [B, T, C*F] and globals [B, 3C], both z-scored)."""
        c, f, t = self.n_channels, self.n_bins, self.n_frames
        x = waveform.float()
        spec = nn.functional.conv1d(x.reshape(-1, 1, self.segment_samples), self.dft, stride=self.hop_length)
        re, im = spec[:, :f], spec[:, f:]  # [B*C, F, T]
        logmag = torch.log1p(torch.sqrt(re * re + im * im))
        tokens = logmag.reshape(-1, c, f, t).permute(0, 3, 1, 2).reshape(-1, t, c * f)
        tokens = tokens * self.cont_scale + self.cont_shift
        globals_ = self.globals_of(x) * self.globals_scale + self.globals_shift
        ids = torch.ones_like(tokens[:, :, 0], dtype=torch.int64)
        return ids, tokens, globals_

    @staticmethod
    def globals_of(x: torch.Tensor) -> torch.Tensor:
        """`condition_indicators` in torch: [B, 3C] = rms, crest factor, kurtosis per channel, in float64 then float32."""
        x = x.double()
        rms = torch.sqrt(torch.mean(x * x, dim=-1))
        peak = torch.amax(torch.abs(x), dim=-1)
        centred = x - torch.mean(x, dim=-1, keepdim=True)
        var = torch.mean(centred * centred, dim=-1)
        fourth = torch.mean(centred * centred * centred * centred, dim=-1)
        # A silent channel: 0, not 0/0 (the divisor is 1 where the quantity is 0, then masked).
        crest = torch.where(rms > 0, peak / torch.where(rms > 0, rms, torch.ones_like(rms)), torch.zeros_like(rms))
        var2 = var * var
        kurtosis = torch.where(var > 0, fourth / torch.where(var > 0, var2, torch.ones_like(var2)),
                               torch.zeros_like(var))
        return torch.cat([rms, crest, kurtosis], dim=1).float()


class ServingModel(nn.Module):
    """WaveformFrontend, then the run's model, then its output: probabilities [B, K] or anomaly scores [B]."""

    def __init__(self, frontend: WaveformFrontend, model: nn.Module, task: str) -> None:
        super().__init__()
        if task not in SERVING_OUTPUTS:
            raise ModelError(f"serving export: task {task!r}; expected one of {list(SERVING_OUTPUTS)}")
        self.frontend, self.model, self.task = frontend, model, task

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, n_classes] (classifier) or anomaly scores [B] (autoencoder)."""
        ids, tokens, globals_ = self.frontend(waveform)
        return _model_output(self.model, self.task, {"tokens_id": ids, "tokens_cont": tokens, "globals": globals_})


def _model_output(model: Any, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the serving model returns for a normalized batch: the same call in the graph and in the reference."""
    if task == "classifier":
        return torch.softmax(model.predict_logits(batch).float(), dim=-1)
    return anomaly_score(model, batch)


def anomaly_score(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`model.per_event_errors(batch)["mse"]` [B], computed without the parts the score does not use.

    That is the forward pass and the per-event masked MSE of the reconstructed tokens, the very
    functions Autoencoder.per_event_errors calls. The rest of per_event_errors is left out: its
    token cross-entropy does not export to ONNX with a dynamic batch, and its no_grad decorator
    becomes a submodule the exporter cannot decompose.
    """
    outputs = model(batch)
    valid = losses.valid_token_mask(batch["tokens_id"])
    return losses.per_event_masked_mse(outputs["cont"], batch["tokens_cont"], valid).float()


def _check_anomaly_score(model: nn.Module, where: str) -> None:
    """ModelError unless the model's per_event_errors()["mse"] is the Autoencoder's (what anomaly_score computes)."""
    method = getattr(type(model), "per_event_errors", None)
    if method not in _MSE_AS_AUTOENCODER:
        raise ModelError(f"{where}: {type(model).__name__} computes its own per_event_errors, so its anomaly score "
                         "is not the Autoencoder's per-event masked MSE the serving graph computes; serving exports "
                         "support classifiers and autoencoders whose score is (task autoencoder or gan_autoencoder)")


def build_serving_model(model: nn.Module, task: str, meta: Any, source: SpectrogramSource) -> ServingModel:
    """The serving graph of a run's model (eval mode), after checking the run was trained on this source.

    Args:
        model: the run's model (eval mode, on the CPU).
        task: "classifier" or "autoencoder".
        meta: the run's DataMeta (features and the train-split normalization).
        source: the spectrogram file's record (`read_spectrogram_source`).

    Raises:
        ModelError: the run has no normalization, its features are not this file's, or the file
            was made with STFT settings or globals this graph does not implement.
    """
    where = f"serving export ({source.path})"
    if task == "autoencoder":
        _check_anomaly_score(model, where)
    if meta.normalization is None:
        raise ModelError(f"{where}: the run's data_meta.json has no normalization; the graph z-scores with it")
    if dict(source.stft) != STFT_SETTINGS or tuple(source.globals_kinds) != GLOBALS_KINDS:
        raise ModelError(f"{where}: the file records stft={source.stft} and globals {list(source.globals_kinds)}; "
                         f"the serving graph implements stft={STFT_SETTINGS} and globals {list(GLOBALS_KINDS)}")
    expected = {"cont_features": tuple(spectrogram_feature_names(source.channels, source.sample_rate, source.n_fft)),
                "globals_features": tuple(globals_feature_names(source.channels, source.globals_kinds))}
    for key, names in expected.items():
        for who, got in (("the spectrogram file", getattr(source, key)), ("the run's data_meta.json", getattr(meta, key))):
            if tuple(got) != names:
                raise ModelError(f"{where}: {who} lists {key} {_short(got)}; the recorded STFT settings and "
                                 f"channels give {_short(names)}: the run was not trained on this file's layout")
    if meta.n_tokens != source.n_frames:
        raise ModelError(f"{where}: the run has {meta.n_tokens} tokens per example; segments of "
                         f"{source.segment_samples} samples give {source.n_frames} STFT frames")
    frontend = WaveformFrontend(n_channels=len(source.channels), segment_samples=source.segment_samples,
                                n_fft=source.n_fft, hop_length=source.hop_length, normalization=meta.normalization)
    return ServingModel(frontend, model, task).eval()


def library_outputs(model: nn.Module, task: str, normalization: Normalization, source: SpectrogramSource,
                    segments: np.ndarray) -> torch.Tensor:
    """The reference: the library's pipeline on segments [N, C, S] -> features -> loader normalization -> eager model.

    Returns:
        probabilities [N, n_classes] or anomaly scores [N], float32.
    """
    tokens, globals_ = spectrogram_features(segments, source.n_fft, source.hop_length)
    block = {"tokens_id": np.ones(tokens.shape[:2], np.int64), "tokens_cont": tokens, "globals": globals_}
    normalization.apply(block)  # in place, exactly as the loader z-scores a block it read
    batch = {key: torch.from_numpy(value) for key, value in block.items()}
    with torch.no_grad():  # the calls reports.inference makes
        if task == "classifier":
            return torch.softmax(model.predict_logits(batch).float(), dim=-1)
        return model.per_event_errors(batch)["mse"].float()


def _short(names: Sequence[str], most: int = 4) -> str:
    """A list of names, shortened: the first few and how many."""
    names = list(names)
    return str(names) if len(names) <= most else f"{names[:most]}... ({len(names)} in all)"
