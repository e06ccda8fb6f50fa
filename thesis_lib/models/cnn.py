"""The "cnn" and "resnet" encoders: a spectrogram segment seen as an image [C, F, T] -> [B, latent_dim].

Spectrogram data keeps the event layout (see docs/architecture.md and
thesis_lib.data.prepare_spectrograms): each STFT frame is a token, and a token's continuous
features are the log-magnitudes of all channels, channel-major (feature c * F + f), named
"<channel>@<freq>Hz". These encoders undo that flattening, tokens_cont [B, T, C*F] ->
[B, C, F, T], so sensor channels become image channels and convolutions slide over frequency and
time, as the seed's Keras CNN and ResNet did over their spectrogram images.

C and F come from ``meta.cont_features`` alone and are checked when the encoder is built: a reshape
of wrongly ordered features would train without complaint on a scrambled image. Pooling and
strides are fixed per axis at build time from F and T, halving an axis only while it is at least 2
long, so a tiny spectrogram (F = 5, T = 3) never shrinks to zero. Token ids are ignored (every
frame is a real token), except that frames marked as padding (id 0) are zeroed.

BatchNorm caveat: in training mode a BatchNorm over a 1 x 1 map needs more than one event per
batch; with maps that small, a last training batch of a single event raises torch's error.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models.encoders import check_batch, make_mlp
from thesis_lib.models.registry import register

__all__ = [
    "MIN_CHANNELS",
    "spectrogram_layout",
    "spectrogram_image",
    "halving",
    "CNNEncoder",
    "ResidualBlock",
    "ResNetEncoder",
    "build_cnn_encoder",
    "build_resnet_encoder",
]

# Narrowest conv layer: with hidden_dim // 2**k a deep, narrow config would get 1- or 2-channel maps.
MIN_CHANNELS = 8
# "<channel>@<freq>Hz" with freq as f"{hz:g}" writes it (15.625, 0, 1e+06).
_FEATURE_NAME = re.compile(r"^(?P<channel>.+)@(?P<freq>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)Hz$")


def _layout_error(encoder: str, detail: str) -> ModelError:
    """The ModelError for data that is not laid out as a spectrogram, naming what was found."""
    return ModelError(
        f"the {encoder} encoder needs spectrogram data laid out as thesis_lib.data.prepare_spectrograms writes it "
        f"(cont_features named '<channel>@<freq>Hz', channel-major); {detail}"
    )


def spectrogram_layout(cont_features: Sequence[str] | None, cont_dim: int,
                       encoder: str = "cnn") -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The channels and frequencies of spectrogram features, after checking they reshape to [C, F].

    Args:
        cont_features: the data meta's feature names, one per column of tokens_cont.
        cont_dim: the number of columns of tokens_cont.
        encoder: the encoder name the error message speaks for.

    Returns:
        ``(channels, freqs)``: the C channel names in order of first appearance and the F bin
        frequencies in Hz (each channel has the same list), with C * F == cont_dim.

    Raises:
        ModelError: the names are missing, fewer or more than cont_dim, not "<channel>@<freq>Hz",
            not channel-major, or the channels' frequency lists differ or repeat a frequency; the
            message shows the first offending name and its index.
    """
    names = [str(name) for name in (cont_features or ())]
    if not names:
        raise _layout_error(encoder, "the data meta has no cont_features")
    if len(names) != cont_dim:
        raise _layout_error(encoder, f"the data meta has {len(names)} cont_features for cont_dim={cont_dim}")
    parsed = []
    for index, name in enumerate(names):
        match = _FEATURE_NAME.match(name)
        if match is None:
            raise _layout_error(encoder, f"first offending name: {name!r} (cont_features[{index}])")
        parsed.append((match["channel"], float(match["freq"])))

    channels = tuple(dict.fromkeys(channel for channel, _ in parsed))
    n_freqs = len(names) // len(channels)
    # Every channel must repeat the first one's frequency list: walk the names against
    # channels[i // F] @ freqs[i % F] and report the first that differs.
    freqs = tuple(freq for channel, freq in parsed if channel == channels[0])
    for index, (channel, freq) in enumerate(parsed):
        slot, row = index % n_freqs, index // n_freqs
        if row >= len(channels) or slot >= len(freqs):
            raise _layout_error(encoder, f"first offending name: {names[index]!r} (cont_features[{index}]; "
                                         f"the channels do not all have {len(freqs)} frequencies)")
        if (channel, freq) != (channels[row], freqs[slot]):
            raise _layout_error(encoder, f"first offending name: {names[index]!r} (cont_features[{index}]; "
                                         f"expected {channels[row]}@{freqs[slot]:g}Hz there)")
    repeated = [i for i, freq in enumerate(freqs) if freq in freqs[:i]]
    if repeated:
        raise _layout_error(encoder, f"first offending name: {names[repeated[0]]!r} "
                                     f"(cont_features[{repeated[0]}] repeats a frequency of its channel)")
    return channels, freqs


def spectrogram_image(tokens_cont: torch.Tensor, n_channels: int) -> torch.Tensor:
    """tokens_cont [B, T, C*F] -> image [B, C, F, T]: feature c * F + f of frame t lands at [c, f, t].

    A view and a permute, no copy; the batch axis stays symbolic, so tracing keeps it dynamic.
    """
    return tokens_cont.unflatten(-1, (n_channels, -1)).permute(0, 2, 3, 1)


def halving(size: int) -> int:
    """2 where an axis of `size` can be halved (size >= 2), else 1: the per-axis pool or stride."""
    return 2 if size >= 2 else 1


def _check_dims(encoder: str, n_tokens: int, cont_dim: int, channels: int, freqs: int) -> None:
    """ModelError unless the image dimensions are positive and C * F == cont_dim."""
    if min(n_tokens, channels, freqs) < 1 or channels * freqs != cont_dim:
        raise ModelError(
            f"{encoder} encoder: channels={channels} x freqs={freqs} must equal cont_dim={cont_dim}, "
            f"with n_tokens={n_tokens} frames, all at least 1"
        )


def _image(batch: Mapping[str, torch.Tensor], channels: int) -> torch.Tensor:
    """The batch's spectrogram image [B, C, F, T], padded frames (id 0) zeroed (even a NaN there)."""
    padding = (batch["tokens_id"] == 0).unsqueeze(-1)
    return spectrogram_image(batch["tokens_cont"].masked_fill(padding, 0.0), channels)


class CNNEncoder(nn.Module):
    """Conv blocks over the spectrogram image, global average pooling, globals, MLP -> [B, out_dim].

    Block i is Conv2d 3x3 (same padding) -> BatchNorm2d -> ReLU -> MaxPool2d over the axes still at
    least 2 long -> Dropout, with max(8, hidden_dim // 2**(num_layers-1-i)) channels: the width grows
    to hidden_dim at the last block. The output MLP has one hidden layer of hidden_dim.

    Args:
        n_tokens: frames per segment (T).
        cont_dim: features per frame (C * F).
        globals_dim: segment globals (G).
        channels: sensor channels (C), the image's input channels.
        freqs: frequency bins per channel (F).
        hidden_dim: width of the last conv block and of the output MLP's hidden layer.
        num_layers: number of conv blocks.
        dropout: dropout after each block and in the output MLP.
        out_dim: latent width.

    Raises:
        ModelError: at construction, channels * freqs != cont_dim; in forward, a batch key or shape is wrong.
    """

    def __init__(self, *, n_tokens: int, cont_dim: int, globals_dim: int, channels: int, freqs: int,
                 hidden_dim: int, num_layers: int, dropout: float, out_dim: int) -> None:
        super().__init__()
        _check_dims("cnn", n_tokens, cont_dim, channels, freqs)
        self.dims = (n_tokens, cont_dim, globals_dim)
        self.channels = channels
        blocks: list[nn.Module] = []
        width, height, length = channels, freqs, n_tokens
        for index in range(num_layers):
            out = max(MIN_CHANNELS, hidden_dim // 2 ** (num_layers - 1 - index))
            pool = (halving(height), halving(length))
            layers: list[nn.Module] = [
                # No conv bias: the BatchNorm right after it has its own shift.
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            if pool != (1, 1):
                layers.append(nn.MaxPool2d(pool))
            layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width, height, length = out, height // pool[0], length // pool[1]
        self.blocks = nn.Sequential(*blocks)
        self.out = make_mlp(width + globals_dim, hidden_dim, out_dim, 1, dropout)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Latent [B, out_dim] of a batch dict (tokens_id, tokens_cont, globals)."""
        check_batch(batch, *self.dims)
        pooled = self.blocks(_image(batch, self.channels)).mean(dim=(2, 3))
        return self.out(torch.cat([pooled, batch["globals"].to(pooled.dtype)], dim=-1))


class ResidualBlock(nn.Module):
    """He et al. (2016) basic block: relu(BN(conv3x3(relu(BN(conv3x3(x))))) + skip(x)).

    The first conv carries the stride; the skip is the identity when shape and width are kept, else
    a strided 1x1 conv with BatchNorm (the paper's projection shortcut, option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        if stride == (1, 1) and in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, ceil(H / sh), ceil(W / sw)]."""
        residual = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(residual + self.skip(x))


class ResNetEncoder(nn.Module):
    """A small ResNet over the spectrogram image, global average pooling, globals, MLP -> [B, out_dim].

    A 3x3 stem conv (BatchNorm, ReLU) to w0 = max(8, hidden_dim // 2**(num_layers-1)) channels,
    then `num_layers` basic blocks: the first keeps width and size (as in the CIFAR ResNets, which
    suit small images), each later one doubles the width up to max(8, hidden_dim) and halves F and
    T where they are still at least 2 long. The output MLP has one hidden layer of hidden_dim.

    Args:
        n_tokens: frames per segment (T).
        cont_dim: features per frame (C * F).
        globals_dim: segment globals (G).
        channels: sensor channels (C), the image's input channels.
        freqs: frequency bins per channel (F).
        hidden_dim: width of the last residual block and of the output MLP's hidden layer.
        num_layers: number of residual blocks.
        dropout: dropout in the output MLP.
        out_dim: latent width.

    Raises:
        ModelError: at construction, channels * freqs != cont_dim; in forward, a batch key or shape is wrong.
    """

    def __init__(self, *, n_tokens: int, cont_dim: int, globals_dim: int, channels: int, freqs: int,
                 hidden_dim: int, num_layers: int, dropout: float, out_dim: int) -> None:
        super().__init__()
        _check_dims("resnet", n_tokens, cont_dim, channels, freqs)
        self.dims = (n_tokens, cont_dim, globals_dim)
        self.channels = channels
        widest = max(MIN_CHANNELS, hidden_dim)
        width = max(MIN_CHANNELS, hidden_dim // 2 ** (num_layers - 1))
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        blocks: list[nn.Module] = []
        height, length = freqs, n_tokens
        for index in range(num_layers):
            stride = (1, 1) if index == 0 else (halving(height), halving(length))
            out = width if index == 0 else min(widest, 2 * width)
            blocks.append(ResidualBlock(width, out, stride))
            # A 3x3 conv with padding 1 and stride s gives ceil(size / s).
            width, height, length = out, -(-height // stride[0]), -(-length // stride[1])
        self.blocks = nn.Sequential(*blocks)
        self.out = make_mlp(width + globals_dim, hidden_dim, out_dim, 1, dropout)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Latent [B, out_dim] of a batch dict (tokens_id, tokens_cont, globals)."""
        check_batch(batch, *self.dims)
        pooled = self.blocks(self.stem(_image(batch, self.channels))).mean(dim=(2, 3))
        return self.out(torch.cat([pooled, batch["globals"].to(pooled.dtype)], dim=-1))


def _image_dims(model_cfg: Any, meta: Any, encoder: str) -> dict[str, Any]:
    """Constructor arguments both encoders take, C and F read from meta.cont_features."""
    channels, freqs = spectrogram_layout(getattr(meta, "cont_features", None), meta.cont_dim, encoder)
    return dict(
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        channels=len(channels),
        freqs=len(freqs),
        hidden_dim=model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
        out_dim=model_cfg.latent_dim,
    )


@register("encoder", "cnn")
def build_cnn_encoder(model_cfg: Any, meta: Any) -> CNNEncoder:
    """The "cnn" encoder: conv/BN/ReLU/pool blocks over the spectrogram image -> [B, latent_dim].

    Raises:
        ModelError: meta.cont_features is not a channel-major "<channel>@<freq>Hz" spectrogram layout.
    """
    return CNNEncoder(**_image_dims(model_cfg, meta, "cnn"))


@register("encoder", "resnet")
def build_resnet_encoder(model_cfg: Any, meta: Any) -> ResNetEncoder:
    """The "resnet" encoder: a stem and residual basic blocks over the spectrogram image -> [B, latent_dim].

    Raises:
        ModelError: meta.cont_features is not a channel-major "<channel>@<freq>Hz" spectrogram layout.
    """
    return ResNetEncoder(**_image_dims(model_cfg, meta, "resnet"))
