"""Tests for thesis_lib.models.cnn: the spectrogram image view, layout checks, the cnn/resnet encoders, training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from thesis_lib.data import DataMeta
from thesis_lib.errors import ModelError
from thesis_lib.models import Autoencoder, Classifier, build_model, registry
from thesis_lib.models.cnn import CNNEncoder, ResNetEncoder
from thesis_lib.models.cnn import spectrogram_image, spectrogram_layout

ENCODERS = ("cnn", "resnet")
CHANNELS = ("accel_x", "accel_y")


def feature_names(channels=CHANNELS, n_freqs=5, step=15.625):
    """cont_features as the spectrogram contract writes them: f"{channel}@{hz:g}Hz", channel-major."""
    return tuple(f"{channel}@{f * step:g}Hz" for channel in channels for f in range(n_freqs))


def spectro_meta(n_freqs=5, n_frames=3, channels=CHANNELS, cont_features=None):
    """A DataMeta for spectrogram data: T frames as tokens, C*F features, 3*C globals, 3 classes."""
    names = feature_names(channels, n_freqs) if cont_features is None else tuple(cont_features)
    return DataMeta(
        path="spectro.h5", layout="events_v1", n_tokens=n_frames, cont_dim=len(names), globals_dim=3 * len(channels),
        n_token_types=2, n_classes=3, cont_features=names,
        globals_features=tuple(f"{kind}_{c}" for kind in ("rms", "crest", "kurtosis") for c in channels),
        token_types=("pad", "frame"), label_names=("healthy", "crack", "loose_bolt"), normalization=None,
    )


def model_cfg(**overrides):
    """A tiny model config namespace with ModelConfig's attributes, the encoder set to cnn."""
    vq = SimpleNamespace(codebook_size=16, code_dim=4, beta=0.25, decay=0.99, eps=1e-5, dead_code_threshold=0.01)
    values = dict(
        task="classifier", encoder="cnn", bottleneck="identity", decoder="mlp", latent_dim=8, hidden_dim=16,
        num_layers=3, num_heads=2, token_embed_dim=4, dropout=0.0, globals_beta=0.1, tokens_weight=1.0, freeze=[],
    )
    values.update(overrides)
    return SimpleNamespace(**values, vq=vq)


def spectro_batch(meta, batch_size=6, seed=0):
    """A batch as the loader yields spectrogram data: every frame a real token (id 1)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "tokens_id": torch.ones(batch_size, meta.n_tokens, dtype=torch.long),
        "tokens_cont": torch.randn(batch_size, meta.n_tokens, meta.cont_dim, generator=gen),
        "globals": torch.randn(batch_size, meta.globals_dim, generator=gen),
        "labels": torch.randint(0, meta.n_classes, (batch_size,), generator=gen),
    }


def build_encoder(name, meta, seed=0, **overrides):
    """The registered encoder `name` for `meta` (training mode)."""
    torch.manual_seed(seed)
    return registry.get("encoder", name)(model_cfg(**overrides), meta)


def first_conv(encoder):
    """The conv that reads the spectrogram image."""
    return encoder.stem[0] if isinstance(encoder, ResNetEncoder) else encoder.blocks[0][0]


# ---------------------------------------------------------------- the image view and the layout check


def test_both_encoders_are_registered_and_exported():
    assert {"cnn", "resnet"} <= set(registry.names("encoder"))
    assert isinstance(build_encoder("cnn", spectro_meta()), CNNEncoder)
    assert isinstance(build_encoder("resnet", spectro_meta()), ResNetEncoder)


def test_spectrogram_image_puts_feature_c_times_f_plus_f_of_frame_t_at_c_f_t():
    batch_size, frames, channels, freqs = 2, 4, 3, 5
    b, t, c, f = torch.meshgrid(*(torch.arange(n) for n in (batch_size, frames, channels, freqs)), indexing="ij")
    # Each value spells out where it came from: 1000 b + 100 t + 10 c + f, stored at [b, t, c * F + f].
    tokens_cont = (1000 * b + 100 * t + 10 * c + f).reshape(batch_size, frames, channels * freqs).float()
    assert tokens_cont[1, 2, 2 * freqs + 3] == 1000 + 200 + 20 + 3

    image = spectrogram_image(tokens_cont, channels)
    assert image.shape == (batch_size, channels, freqs, frames)
    for bi, ci, fi, ti in [(0, 0, 0, 0), (1, 2, 3, 2), (0, 1, 4, 3), (1, 0, 2, 1)]:
        assert image[bi, ci, fi, ti] == tokens_cont[bi, ti, ci * freqs + fi] == 1000 * bi + 100 * ti + 10 * ci + fi


@pytest.mark.parametrize("name", ENCODERS)
def test_the_encoder_convolves_the_channel_frequency_time_image(name):
    meta = spectro_meta(n_freqs=5, n_frames=4)
    encoder = build_encoder(name, meta).eval()
    seen = []
    first_conv(encoder).register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    batch = spectro_batch(meta, batch_size=2)
    encoder(batch)
    image = seen[0]
    assert first_conv(encoder).in_channels == 2
    assert image.shape == (2, 2, 5, 4)
    for c in range(2):
        for f in range(5):
            torch.testing.assert_close(image[:, c, f, :], batch["tokens_cont"][:, :, c * 5 + f], rtol=0, atol=0)


def test_layout_reads_channels_and_frequencies_from_the_names():
    names = ("mic@left@0Hz", "mic@left@1e+06Hz", "mic@right@0Hz", "mic@right@1e+06Hz")
    assert spectrogram_layout(names, 4) == (("mic@left", "mic@right"), (0.0, 1e6))
    channels, freqs = spectrogram_layout(feature_names(("x", "y", "z"), 4), 12)
    assert channels == ("x", "y", "z") and freqs == (0.0, 15.625, 31.25, 46.875)


@pytest.mark.parametrize("name", ENCODERS)
def test_wrong_feature_names_give_the_layout_error_with_the_first_offending_name(name):
    meta = spectro_meta(cont_features=("accel_x@0Hz", "accel_x@15.625Hz", "E", "pT"))
    with pytest.raises(ModelError) as info:
        build_model(model_cfg(encoder=name), meta)
    assert str(info.value) == (
        f"the {name} encoder needs spectrogram data laid out as thesis_lib.data.prepare_spectrograms writes it "
        "(cont_features named '<channel>@<freq>Hz', channel-major); first offending name: 'E' (cont_features[2])"
    )


@pytest.mark.parametrize("names, offending", [
    (("x@0", "x@1Hz"), "'x@0'"),
    (("x_0Hz", "x@1Hz"), "'x_0Hz'"),
    (("x@lowHz", "x@1Hz"), "'x@lowHz'"),
    (("x@0Hz", "y@0Hz", "x@1Hz", "y@1Hz"), r"'y@0Hz' \(cont_features\[1\]; expected x@1Hz there\)"),  # frequency-major
    (("x@0Hz", "x@1Hz", "y@0Hz", "y@2Hz"), r"'y@2Hz' \(cont_features\[3\]; expected y@1Hz there\)"),
    (("x@0Hz", "x@1Hz", "y@0Hz", "y@1Hz", "y@2Hz", "z@0Hz"), r"'y@2Hz' \(cont_features\[4\]; expected z@0Hz there\)"),
    (("x@0Hz", "x@0Hz", "y@0Hz", "y@0Hz"), r"'x@0Hz' \(cont_features\[1\] repeats a frequency"),
])
def test_layout_check_refuses_names_that_do_not_reshape_to_channel_frequency(names, offending):
    with pytest.raises(ModelError, match=r"the resnet encoder needs spectrogram data .*first offending name: " + offending):
        spectrogram_layout(names, len(names), "resnet")


def test_layout_check_refuses_missing_or_miscounted_names():
    with pytest.raises(ModelError, match=r"cnn encoder needs spectrogram data .*the data meta has no cont_features"):
        build_model(model_cfg(), SimpleNamespace(n_tokens=6, cont_dim=4, globals_dim=3, n_token_types=5, n_classes=3))
    with pytest.raises(ModelError, match=r"the data meta has 2 cont_features for cont_dim=3"):
        spectrogram_layout(("x@0Hz", "x@1Hz"), 3)
    with pytest.raises(ModelError, match=r"resnet encoder: channels=2 x freqs=4 must equal cont_dim=10"):
        ResNetEncoder(n_tokens=3, cont_dim=10, globals_dim=6, channels=2, freqs=4, hidden_dim=16, num_layers=2,
                      dropout=0.0, out_dim=8)


# ---------------------------------------------------------------- shapes, pooling plan, padding


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("n_freqs, n_frames", [(5, 3), (1, 1), (2, 1), (1, 7), (7, 9), (33, 16)])
def test_output_shape_for_tiny_odd_and_larger_spectrograms(name, n_freqs, n_frames):
    meta = spectro_meta(n_freqs=n_freqs, n_frames=n_frames)
    encoder = build_encoder(name, meta, num_layers=4)
    batch = spectro_batch(meta, batch_size=3)
    for mode in (True, False):
        out = encoder.train(mode)(batch)
        assert out.shape == (3, 8) and torch.isfinite(out).all()


def test_cnn_pools_only_the_axes_still_two_long_and_widens_to_hidden_dim():
    encoder = build_encoder("cnn", spectro_meta(n_freqs=5, n_frames=3), hidden_dim=32, num_layers=3)
    pools = [next((m.kernel_size for m in block if isinstance(m, nn.MaxPool2d)), None) for block in encoder.blocks]
    assert pools == [(2, 2), (2, 1), None]  # F: 5 -> 2 -> 1 -> 1, T: 3 -> 1 -> 1 -> 1
    assert [block[0].out_channels for block in encoder.blocks] == [8, 16, 32]
    narrow = build_encoder("cnn", spectro_meta(), hidden_dim=16, num_layers=3)
    assert [block[0].out_channels for block in narrow.blocks] == [8, 8, 16]


def test_resnet_strides_where_the_map_allows_and_projects_only_when_shape_changes():
    meta = spectro_meta(n_freqs=5, n_frames=2)
    encoder = build_encoder("resnet", meta, hidden_dim=32, num_layers=5)
    assert encoder.stem[0].out_channels == 8  # 32 // 2**4 = 2, raised to the 8-channel floor
    assert [block.conv1.stride for block in encoder.blocks] == [(1, 1), (2, 2), (2, 1), (2, 1), (1, 1)]
    assert [block.conv2.out_channels for block in encoder.blocks] == [8, 16, 32, 32, 32]
    assert [isinstance(block.skip, nn.Identity) for block in encoder.blocks] == [True, False, False, False, True]
    seen = []
    for block in encoder.blocks:
        block.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape[2:])))
    encoder.eval()(spectro_batch(meta, batch_size=2))
    assert seen == [(5, 2), (3, 1), (2, 1), (1, 1), (1, 1)]  # ceil(size / 2) while the axis is at least 2


@pytest.mark.parametrize("name", ENCODERS)
def test_padded_frames_are_zeroed_even_when_they_hold_nan(name):
    meta = spectro_meta(n_freqs=6, n_frames=5)
    encoder = build_encoder(name, meta).eval()
    batch = spectro_batch(meta, batch_size=3)
    batch["tokens_id"][1, 3:] = 0
    zeroed = dict(batch, tokens_cont=batch["tokens_cont"].clone())
    zeroed["tokens_cont"][1, 3:] = 0.0
    batch["tokens_cont"][1, 3:] = float("nan")
    torch.testing.assert_close(encoder(batch), encoder(zeroed))


@pytest.mark.parametrize("name", ENCODERS)
def test_a_batch_of_the_wrong_shape_names_the_key(name):
    meta = spectro_meta()
    encoder = build_encoder(name, meta)
    batch = spectro_batch(meta)
    batch["tokens_cont"] = batch["tokens_cont"][..., :-1]
    with pytest.raises(ModelError, match=r"batch\['tokens_cont'\] has shape \[6, 3, 9\]; the model was built for \[B, 3, 10\]"):
        encoder(batch)


# ---------------------------------------------------------------- as a model body, gradients, training


@pytest.mark.parametrize("name", ENCODERS)
def test_build_model_classifier_and_autoencoder(name):
    meta = spectro_meta(n_freqs=9, n_frames=4)
    batch = spectro_batch(meta, batch_size=5)
    classifier = build_model(model_cfg(encoder=name), meta)
    assert isinstance(classifier, Classifier) and classifier.predict_logits(batch).shape == (5, 3)
    values = classifier.loss_and_metrics(batch)
    assert list(values) == ["loss", "metric_accuracy"] and all(torch.isfinite(v) for v in values.values())

    autoencoder = build_model(model_cfg(task="autoencoder", encoder=name), meta)
    assert isinstance(autoencoder, Autoencoder)
    out = autoencoder(batch)
    assert out["cont"].shape == (5, 4, 18) and out["z"].shape == (5, 8)
    assert torch.isfinite(autoencoder.loss_and_metrics(batch)["loss"])
    # The classifier's body is the same encoder: an autoencoder's encoder weights load into it.
    classifier.encoder.load_state_dict(autoencoder.encoder.state_dict())


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter(name):
    meta = spectro_meta(n_freqs=7, n_frames=6)
    model = build_model(model_cfg(encoder=name), meta)
    model.loss_and_metrics(spectro_batch(meta, batch_size=8))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def separable_batch(meta, n_freqs, batch_size, seed):
    """Class k has extra energy in frequency band k (of 3) on every channel; the globals are noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch_size) % 3
    channels = meta.cont_dim // n_freqs
    image = torch.randn(batch_size, channels, n_freqs, meta.n_tokens, generator=gen) * 0.5
    band = n_freqs // 3
    for k in range(3):
        image[labels == k, :, k * band:(k + 1) * band, :] += 1.5
    tokens_cont = image.permute(0, 3, 1, 2).reshape(batch_size, meta.n_tokens, meta.cont_dim)  # the contract's layout
    return {
        "tokens_id": torch.ones(batch_size, meta.n_tokens, dtype=torch.long),
        "tokens_cont": tokens_cont,
        "globals": torch.randn(batch_size, meta.globals_dim, generator=gen),
        "labels": labels,
    }


@pytest.mark.parametrize("name", ENCODERS)
def test_a_few_adam_steps_learn_energy_bands(name):
    meta = spectro_meta(n_freqs=12, n_frames=6)
    torch.manual_seed(0)
    model = build_model(model_cfg(encoder=name, num_layers=2), meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    held_out = separable_batch(meta, 12, 30, seed=99)
    with torch.no_grad():
        before = model.eval().loss_and_metrics(held_out)["loss"]
    model.train()
    for step in range(30):
        loss = model.loss_and_metrics(separable_batch(meta, 12, 24, seed=step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.eval().loss_and_metrics(held_out)
    assert float(after["loss"]) < 0.5 * float(before)
    assert float(after["metric_accuracy"]) >= 0.9


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # check_batch's shape check, frozen into the trace
@pytest.mark.parametrize("name", ENCODERS)
def test_traces_with_a_dynamic_batch_axis_like_export_model(name):
    from thesis_lib.export import ExportWrapper

    meta = spectro_meta(n_freqs=5, n_frames=3)
    model = build_model(model_cfg(encoder=name), meta).eval()
    wrapper = ExportWrapper(model, ["logits"])
    example = [spectro_batch(meta, batch_size=2)[k] for k in ("tokens_id", "tokens_cont", "globals")]
    traced = torch.jit.trace(wrapper, tuple(example), check_trace=False)
    other = spectro_batch(meta, batch_size=7, seed=1)
    inputs = [other[k] for k in ("tokens_id", "tokens_cont", "globals")]
    with torch.no_grad():
        torch.testing.assert_close(traced(*inputs), wrapper(*inputs))
