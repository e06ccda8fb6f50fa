"""Exporting a finished run's model: a plain state_dict, TorchScript and ONNX, each checked against eager.

Everything comes from the run directory alone (config.yaml + data_meta.json + model.pt, rebuilt by
``facts.run_model.load_run_model_and_weights``), on the CPU; a run that ended before writing
model.pt (a crash, a kill) is exported from best_val.pt, said in a warning and in
``export_info.json`` ("weights"). TorchScript and ONNX take positional tensors
``(tokens_id int64 [B, T], tokens_cont float32 [B, T, C], globals float32 [B, G])``, z-scored
with the run's normalization from data_meta.json exactly as the training loader did, and return:

    autoencoder: (recon_cont [B, T, C], recon_id_logits [B, T, V], recon_globals [B, G], latent [B, D])
    classifier:  logits [B, n_classes]  (one tensor, not a tuple)

``latent`` is the encoder output before the bottleneck. The batch axis is dynamic in both. Every
format is reloaded and compared with the eager model, at the example batch size and at a second
size, before its file is written; the largest difference is recorded in ``export_info.json``.

The "serving" format (runs trained on ``prepare_spectrograms`` output only; not in the default
set) writes serving.torchscript.pt and serving.onnx: the graph of ``thesis_lib.serving``, which
takes raw waveform segments ``waveform float32 [B, C, S]`` at the recorded sample rate and returns
``probabilities [B, n_classes]`` (classifier) or ``anomaly_score [B]`` (autoencoder), with the
STFT, log1p, the globals and the normalization inside. It is checked on the test split's own
recordings, re-read from the paths the spectrogram file records: the library's pipeline
(recordings -> spectrogram features -> normalization -> eager model) against the reloaded
TorchScript and the ONNX model under onnxruntime, same predicted classes and outputs within
``serving_atol``; the result is recorded under "serving" in ``export_info.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic_files import atomic_write_bytes, atomic_write_text, check_inside
from .errors import ConfigError, DataError, ModelError, ThesisLibError
from .layout import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    DATA_META_FILE,
    ENV_FILE,
    EXPORT_INFO_FILE,
    EXPORTS_DIR,
    MODEL_FILE,
    MODEL_INFO_FILE,
    ONNX_EXPORT,
    SERVING_ONNX_EXPORT,
    SERVING_TORCHSCRIPT_EXPORT,
    STATE_DICT_EXPORT,
    TORCHSCRIPT_EXPORT,
)
from .models import build_model
from .run_lock import hold_run_lock
from .version import __version__

__all__ = ["DEFAULT_EXPORT_FORMATS", "EXPORT_FORMATS", "export_model"]

log = logging.getLogger(__name__)

EXPORT_FORMATS: tuple[str, ...] = ("state_dict", "torchscript", "onnx", "serving")
# What formats=None exports: "serving" needs a spectrogram run and its recordings, so it is asked for by name.
DEFAULT_EXPORT_FORMATS: tuple[str, ...] = ("state_dict", "torchscript", "onnx")
EXPORT_FILES = {"state_dict": STATE_DICT_EXPORT, "torchscript": TORCHSCRIPT_EXPORT, "onnx": ONNX_EXPORT,
                "serving": SERVING_ONNX_EXPORT}
SERVING_FILES = {"torchscript": SERVING_TORCHSCRIPT_EXPORT, "onnx": SERVING_ONNX_EXPORT}
SERVING_INPUT = "waveform"
SERVING_ATOL = 1e-4
SERVING_CHECK_BATCH = 64  # test segments per call in the serving check (the last call is smaller)
REQUIRED_FILES = (CONFIG_FILE, DATA_META_FILE)
WEIGHTS_FILES = (MODEL_FILE, BEST_CHECKPOINT)  # the first that exists holds the weights
INPUT_NAMES: tuple[str, ...] = ("tokens_id", "tokens_cont", "globals")
BATCH_AXIS = "batch"
ATOL = 1e-5
# forward() key -> exported output name; names differ from the inputs (ONNX needs unique names).
_OUTPUTS = {
    "autoencoder": (("cont", "recon_cont"), ("id_logits", "recon_id_logits"), ("globals", "recon_globals"),
                    ("z", "latent")),
    "classifier": (("logits", "logits"),),
}
_ONNX_HINT = "pip install 'thesis-lib[onnx]'"


class ExportWrapper(nn.Module):
    """The model behind positional tensors: (tokens_id, tokens_cont, globals) -> plain tensors.

    Which outputs, in what order, is decided from the keys the model's forward returns
    ("logits" -> classifier; "cont", "id_logits", "globals", "z" -> autoencoder).
    """

    def __init__(self, model: nn.Module, forward_keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.forward_keys = tuple(forward_keys)

    def forward(self, tokens_id: torch.Tensor, tokens_cont: torch.Tensor, globals: torch.Tensor):
        """The picked outputs of model(batch dict): one tensor, or a tuple when there are several."""
        outputs = self.model({"tokens_id": tokens_id, "tokens_cont": tokens_cont, "globals": globals})
        picked = tuple(outputs[key] for key in self.forward_keys)
        return picked[0] if len(picked) == 1 else picked


def export_model(run_dir: str | Path, formats: Sequence[str] | None = None, *,
                 output_dir: str | Path | None = None, example_batch_size: int = 2,
                 opset: int | None = None, atol: float = ATOL, data_path: str | Path | None = None,
                 recordings_dir: str | Path | None = None, serving_atol: float = SERVING_ATOL) -> dict[str, Path]:
    """Export a run's best model (model.pt, else best_val.pt) to the given formats, each verified against eager.

    Args:
        run_dir: the run directory (config.yaml, data_meta.json and model.pt are read; a run
            without model.pt, one that crashed or was killed, is exported from best_val.pt,
            with a logged warning).
        formats: any of "state_dict" (model_state_dict.pt), "torchscript" (model.torchscript.pt,
            traced; load with torch.jit.load), "onnx" (model.onnx; needs the [onnx] extra) and
            "serving" (serving.torchscript.pt and serving.onnx taking raw waveforms; a run trained
            on prepare_spectrograms output; needs the [onnx] extra; module docstring).
            None: the first three, or the first two with a logged note when the onnx packages are missing.
        output_dir: where the files go (default: <run_dir>/exports).
        example_batch_size: rows of the synthetic example batch used for tracing and checks (>= 2:
            torch.export would fix a batch axis of size 1 as a constant).
        opset: ONNX opset version (default: torch's own).
        atol: the largest max-abs difference from the eager model an export may show.
        data_path: serving: the spectrogram file (default: the run's data.path, relative ones
            tried from the run's launch directory first, then from the current one).
        recordings_dir: serving: read the test recordings from this folder (by the names
            labels.csv gave them) instead of the paths the spectrogram file records.
        serving_atol: serving: the largest max-abs difference of probabilities (or scores) from the
            library's pipeline the serving models may show.

    Returns:
        {format: path of its file, ..., "export_info": path of export_info.json}. export_info.json
        records per format the file, sha256, size, inputs and outputs (names, shapes with the
        dynamic "batch" axis, dtypes), torch version, opset, the max abs difference vs eager and
        the weights file exported, and at the top "weights": {file (model.pt or best_val.pt),
        path, epoch, note}; model_info.json (when the run has one) gains an "exports" entry
        listing the files. Serving gives two paths, "serving_torchscript" and "serving_onnx"; its
        entry holds both files ("files"), the waveform input and output specs, the preprocessing
        settings and "check": the test recordings, segment count, atol and per file the max abs
        difference from the library's pipeline (and, for a classifier, whether the predicted
        classes are the same).

    Raises:
        ConfigError: an unknown format name (the message lists the allowed ones), or
            example_batch_size < 2.
        UnsafePathError: the exports folder (or a file in it) inside the run directory is a
            symbolic link; nothing is written.
        ModelError: a file the rebuild needs is missing (named, with the run), the model cannot be
            rebuilt or traced, the onnx packages are missing, or an export's outputs differ from
            the eager model's by more than `atol` (the message names the format). Formats that
            succeeded before the failure are written and recorded first.
        DataError: serving: the spectrogram file is missing, is not one, or predates recording its
            sources (re-run prepare_spectrograms), or the test recordings are gone (the message
            names the directory and the missing file) or changed; raised before anything is written.
    """
    run_dir = Path(run_dir)
    wanted = _check_formats(formats if formats is not None else _available_formats())
    if "serving" in wanted and not 0 < float(serving_atol) < 1:
        raise ConfigError(f"export serving_atol={serving_atol}; expected a tolerance in (0, 1)")
    if int(example_batch_size) < 2:
        raise ConfigError(f"export example_batch_size={example_batch_size}; expected >= 2 (a batch axis of size 1 "
                          "would be exported as a constant)")
    model, config, meta, weights = _load_run(run_dir, wanted)
    if weights.note is not None:
        log.warning("%s: exporting %s", run_dir, weights.describe())
    # Serving: the source record and the test recordings are read before anything is written.
    serving = (_serving_inputs(run_dir, config, data_path, recordings_dir) if "serving" in wanted else None)
    out_dir = Path(output_dir) if output_dir is not None else run_dir / EXPORTS_DIR
    # Inside the run directory (the default exports/) no folder or file on the way may be a link.
    inside = run_dir if _is_within(out_dir, run_dir) else None
    if inside is not None:
        check_inside(inside, out_dir)
    # Into the run directory under its writer lock: not while another process writes the run.
    lock = (hold_run_lock(run_dir, "exporting the model", heartbeat_every_s=None) if inside is not None
            else contextlib.nullcontext())
    with lock:
        out_dir.mkdir(parents=True, exist_ok=True)

        sizes = (int(example_batch_size), int(example_batch_size) + 3)
        batches = (_example_batch(meta, sizes[0], seed=0), _example_batch(meta, sizes[1], seed=1))
        kind, keys = _forward_keys(model, batches[0], run_dir)
        wrapper = ExportWrapper(model, keys).eval()
        names = [name for _, name in _OUTPUTS[kind]]
        with torch.no_grad():
            expected = [_as_tuple(wrapper(*batch)) for batch in batches]
        if serving is not None:  # checked before any file is written
            serving.update(model=_serving_model(model, kind, meta, serving["source"]),
                           normalization=meta.normalization, weights=weights.file)
        exporters: dict[str, Callable[[], tuple[bytes, dict[str, Any]]]] = {
            "state_dict": lambda: _export_state_dict(model, config, meta, keys),
            "torchscript": lambda: _export_torchscript(wrapper, batches[0]),
            "onnx": lambda: _export_onnx(wrapper, batches[0], names, opset),
        }
        specs = {"inputs": _specs(INPUT_NAMES, batches[0]), "outputs": _specs(names, expected[0])}
        info = {"run_id": run_dir.name, "run_dir": str(run_dir.resolve()), "task": config.model.task,
                "thesis_lib": __version__, "created": _now(), "example_batch_size": sizes[0], "atol": atol,
                "dynamic_axis": f"{BATCH_AXIS} (axis 0 of every input and output)",
                "normalization": "inputs are z-scored with data_meta.json 'normalization' (padding tokens zero)",
                "weights": weights.to_dict(), "formats": _earlier_exports(out_dir, run_dir)}
        written: dict[str, Path] = {}
        try:
            for fmt in wanted:
                if fmt == "serving":
                    info["formats"]["serving"] = _export_serving(serving, kind, out_dir, inside, opset,
                                                                 serving_atol, written, run_dir)
                    continue
                data, extra = exporters[fmt]()
                try:
                    diff = max(_max_abs_diff(want, extra["run"](batch)) for want, batch in zip(expected, batches))
                except Exception as exc:  # e.g. a runtime refusing a batch size the export fixed
                    raise ModelError(f"{fmt} export of {run_dir}: the reloaded model failed on the check batches "
                                     f"(sizes {sizes[0]} and {sizes[1]}): {type(exc).__name__}: "
                                     f"{str(exc)[:300]}") from exc
                if not diff <= atol:  # also catches NaN
                    raise ModelError(f"{fmt} export of {run_dir} differs from the eager model by {diff:.3g} "
                                     f"(max abs, allowed {atol}); nothing was written for {fmt}")
                written[fmt] = atomic_write_bytes(out_dir / EXPORT_FILES[fmt], data, inside=inside)
                info["formats"][fmt] = {
                    "file": EXPORT_FILES[fmt], "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
                    **specs, "torch_version": torch.__version__, "opset": extra.get("opset"), "max_abs_diff": diff,
                    "checked_with": extra["checked_with"], "checked_batch_sizes": list(sizes), "load": extra["load"],
                    "weights": weights.file}
        finally:
            # Also on failure: the formats written so far are recorded before the error propagates.
            if written:
                written["export_info"] = atomic_write_text(out_dir / EXPORT_INFO_FILE, json.dumps(info, indent=2),
                                                           inside=inside)
                _record_in_model_info(run_dir, out_dir, info["formats"], written["export_info"])
        return written


def _load_run(run_dir: Path, wanted: Sequence[str]) -> tuple[nn.Module, Any, Any, Any]:
    """(model in eval mode on the CPU, Config, DataMeta, RunWeights) of the run; ModelError naming what is missing."""
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if not any((run_dir / name).is_file() for name in WEIGHTS_FILES):
        missing.append(" or ".join(WEIGHTS_FILES))
    if missing:
        raise ModelError(f"cannot export run {run_dir}: {', '.join(missing)} not found there; the model is rebuilt "
                         f"from {', '.join(REQUIRED_FILES)} and {' (else '.join(WEIGHTS_FILES)}) (a run that failed "
                         "before its first validation saved no weights)")
    if "onnx" in wanted or "serving" in wanted:
        _require_onnx()
    # Imported here: the model registry and the facts readers (pandas) load only when a model is exported.
    from .facts.run_model import load_run_model_and_weights

    try:
        return load_run_model_and_weights(run_dir, device="cpu")
    except ThesisLibError as exc:
        raise ModelError(f"cannot export: {exc}") from exc


def _check_formats(formats: Sequence[str]) -> list[str]:
    """The formats asked for, deduplicated; ConfigError listing the allowed ones for an unknown name."""
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"export formats {list(formats)!r}: unknown {unknown!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    return list(dict.fromkeys(formats))


def _available_formats() -> list[str]:
    """Every default format whose packages are installed (onnx needs the [onnx] extra)."""
    try:
        _require_onnx()
    except ModelError as exc:
        log.warning("exporting state_dict and torchscript only: %s", exc)
        return [f for f in DEFAULT_EXPORT_FORMATS if f != "onnx"]
    return list(DEFAULT_EXPORT_FORMATS)


def _require_onnx() -> None:
    """ModelError with the install command when torch.onnx.export's packages (onnx, onnxscript) are missing."""
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError as exc:
            raise ModelError(f"the onnx export needs the {package!r} package, which is not installed: "
                             f"{_ONNX_HINT}") from exc


def _example_batch(meta: Any, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic batch shaped like the run's data: row i has i % (T + 1) real tokens (row 0 none)."""
    gen = torch.Generator().manual_seed(seed)
    t, c, g = meta.n_tokens, meta.cont_dim, meta.globals_dim
    n_real = (torch.arange(batch_size) % (t + 1)).unsqueeze(1)
    real = torch.arange(t).unsqueeze(0) < n_real
    ids = torch.randint(1, max(meta.n_token_types, 2), (batch_size, t), generator=gen) * real
    cont = torch.randn(batch_size, t, c, generator=gen) * real.unsqueeze(-1)
    return ids.long(), cont, torch.randn(batch_size, g, generator=gen)


def _forward_keys(model: nn.Module, example: Sequence[torch.Tensor], run_dir: Path) -> tuple[str, tuple[str, ...]]:
    """(kind, forward()'s keys to export), decided from what forward returns on the example batch."""
    with torch.no_grad():
        outputs = model(dict(zip(INPUT_NAMES, example)))
    if not isinstance(outputs, Mapping):
        raise ModelError(f"{run_dir}: the model's forward returned a {type(outputs).__name__}; expected a dict")
    for task in ("classifier", "autoencoder"):
        keys = tuple(key for key, _ in _OUTPUTS[task])
        if all(key in outputs for key in keys):
            return task, keys
    raise ModelError(f"{run_dir}: cannot tell which outputs to export from forward's keys {sorted(outputs)}; "
                     f"expected {[k for k, _ in _OUTPUTS['classifier']]} or {[k for k, _ in _OUTPUTS['autoencoder']]}")


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _max_abs_diff(expected: Sequence[torch.Tensor], got: Sequence[Any]) -> float:
    """Largest |expected - got| over all outputs; inf when the output counts or shapes differ."""
    if len(expected) != len(got):
        return float("inf")
    worst = 0.0
    for want, have in zip(expected, got):
        have = torch.as_tensor(np.asarray(have))
        if tuple(have.shape) != tuple(want.shape):
            return float("inf")
        worst = max(worst, float((want.double() - have.double()).abs().max()) if want.numel() else 0.0)
    return worst


def _export_state_dict(model: nn.Module, config: Any, meta: Any, keys: Sequence[str]) -> tuple[bytes, dict]:
    """torch.save of the state_dict, checked by loading it into a freshly built model."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    data = buffer.getvalue()
    fresh = build_model(config.model, meta)
    fresh.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    reloaded = ExportWrapper(fresh, keys).eval()
    return data, {"run": lambda batch: _run_torch(reloaded, batch), "checked_with": "build_model + load_state_dict",
                  "load": "build_model(config.model, meta).load_state_dict(torch.load(path, weights_only=True))"}


def _export_torchscript(wrapper: ExportWrapper, example: Sequence[torch.Tensor]) -> tuple[bytes, dict]:
    """torch.jit.trace of the wrapper, saved to bytes and reloaded with torch.jit.load for the check."""
    with torch.no_grad(), warnings.catch_warnings():
        # The encoders' Python shape checks freeze into the trace; the check at a second batch size guards that.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 deprecates torch.jit for torch.export; TorchScript is still what C++ and older servers load.
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        try:
            traced = torch.jit.trace(wrapper, tuple(example), check_trace=False)
        except Exception as exc:  # tracing raises many types for unsupported code
            raise ModelError(f"torchscript export: torch.jit.trace failed ({type(exc).__name__}: {exc})") from exc
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return data, {"run": lambda batch: _run_torch(loaded, batch), "checked_with": "torch.jit.load",
                  "load": "torch.jit.load(path)(tokens_id, tokens_cont, globals)"}


def _export_onnx(wrapper: nn.Module, example: Sequence[torch.Tensor], names: Sequence[str],
                 opset: int | None, input_names: Sequence[str] = INPUT_NAMES) -> tuple[bytes, dict]:
    """torch.onnx.export (dynamo) with a dynamic batch axis, checked with onnxruntime (or onnx's reference runtime)."""
    import onnx

    batch = torch.export.Dim(BATCH_AXIS)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # torch.onnx logs a warning per missing torchvision op
    try:
        with warnings.catch_warnings():
            # The exporter warns about torch internals (deprecations, axis renames); whether the
            # export is right is decided by the numerical check against eager, not by these.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, tuple(example), input_names=list(input_names), output_names=list(names),
                                        opset_version=opset, dynamo=True, verbose=False,
                                        dynamic_shapes={name: {0: batch} for name in input_names})
        data = program.model_proto.SerializeToString()
    except Exception as exc:  # the exporter raises many types (export, translation, protobuf size)
        raise ModelError(f"onnx export: torch.onnx.export failed ({type(exc).__name__}: {str(exc)[:500]})") from exc
    finally:
        quiet.setLevel(level)
    proto = onnx.load_from_string(data)
    opset_found = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    run, checked_with = _onnx_runner(data, proto, input_names)
    return data, {"run": run, "checked_with": checked_with, "opset": opset_found,
                  "load": "onnxruntime.InferenceSession(path).run(None, {'tokens_id': ..., 'tokens_cont': ..., 'globals': ...})"}


def _onnx_runner(data: bytes, proto: Any, input_names: Sequence[str] = INPUT_NAMES) -> tuple[Callable, str]:
    """A function batch -> outputs running the ONNX model, and what runs it (onnxruntime when installed)."""
    try:
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        session, checked_with = ReferenceEvaluator(proto), "onnx.reference (onnxruntime not installed)"
    else:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        checked_with = f"onnxruntime {onnxruntime.__version__}"
    return (lambda batch: session.run(None, {n: t.numpy() for n, t in zip(input_names, batch)})), checked_with


def _spectrogram_path(run_dir: Path, config: Any, data_path: str | Path | None) -> Path:
    """The run's spectrogram file: `data_path`, else data.path (relative: from the run's launch directory, then here)."""
    if data_path is not None:
        candidates = [Path(data_path)]
    else:
        given = Path(config.data.path)
        candidates = [given if given.is_absolute() else Path(os.path.abspath(given))]
        cwd = (_read_json(run_dir / ENV_FILE) or {}).get("cwd")
        if not given.is_absolute() and isinstance(cwd, str) and cwd:
            candidates.insert(0, Path(cwd) / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"serving export of {run_dir}: the spectrogram file was not found; tried "
                    f"{', '.join(str(c) for c in dict.fromkeys(candidates))} (config data.path={config.data.path!r}); "
                    "pass data_path= (thesis-lib export --data-path) to point at it")


def _serving_inputs(run_dir: Path, config: Any, data_path: str | Path | None,
                    recordings_dir: str | Path | None) -> dict[str, Any]:
    """{source, segments, labels} of the run's test split, re-read from its recordings; DataError when they cannot be."""
    from .data.spectrogram import read_spectrogram_source

    source = read_spectrogram_source(_spectrogram_path(run_dir, config, data_path))
    segments, labels = source.read_segments("test", recordings_dir)
    if len(segments) == 0:
        raise DataError(f"{source.path}: the test split has no segments; the serving check runs on them")
    return {"source": source, "segments": segments, "labels": labels,
            "recordings_dir": str(recordings_dir) if recordings_dir is not None else None}


def _serving_model(model: nn.Module, kind: str, meta: Any, source: Any) -> nn.Module:
    """The serving graph of the run's model (thesis_lib.serving)."""
    from .serving import build_serving_model

    with torch.no_grad():
        return build_serving_model(model, kind, meta, source)


def _export_serving(serving: dict[str, Any], kind: str, out_dir: Path, inside: Path | None, opset: int | None,
                    tol: float, written: dict[str, Path], run_dir: Path) -> dict[str, Any]:
    """Trace and export the serving graph, check both files on the test recordings, write them; the info entry.

    The check runs the library's pipeline (thesis_lib.serving.library_outputs) and each reloaded
    export on the same raw segments, SERVING_CHECK_BATCH at a time; ModelError when a maximum
    difference exceeds `tol` or a predicted class differs (a tie within `tol` aside).
    """
    from .data.h5 import EventFile
    from .serving import SERVING_OUTPUTS, library_outputs

    graph, source, segments = serving["model"], serving["source"], serving["segments"]
    output_name, output_doc = SERVING_OUTPUTS[kind]
    chunks = [torch.from_numpy(segments[i:i + SERVING_CHECK_BATCH]) for i in range(0, len(segments), SERVING_CHECK_BATCH)]
    example = torch.from_numpy(segments[np.arange(2) % len(segments)])  # >= 2 rows: a batch axis of 1 would be fixed
    reference = torch.cat([library_outputs(graph.model, kind, serving["normalization"], source, c.numpy())
                           for c in chunks])
    file_diff = _file_rows_diff(EventFile(source.path), source, segments)

    results: dict[str, Any] = {}
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for fmt in ("torchscript", "onnx"):
        try:
            data, extra = (_export_torchscript(graph, (example,)) if fmt == "torchscript"
                           else _export_onnx(graph, (example,), [output_name], opset, input_names=[SERVING_INPUT]))
        except ModelError as exc:
            raise ModelError(f"serving {exc}") from exc
        try:
            got = torch.cat([torch.as_tensor(np.asarray(extra["run"]((c,))[0])) for c in chunks])
        except Exception as exc:  # a runtime refusing a batch size the export fixed, a bad graph
            raise ModelError(f"serving {fmt} export of {run_dir}: the reloaded model failed on the test segments: "
                             f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        results[fmt] = _compare_serving(reference, got, kind, tol, f"serving {fmt} export of {run_dir}")
        files[fmt] = (data, extra)
    # Both checked: write both (a half-written serving export would serve one runtime and not the other).
    entry_files: dict[str, Any] = {}
    load = {"torchscript": f"torch.jit.load(path)({SERVING_INPUT}) -> {output_name}",
            "onnx": f"onnxruntime.InferenceSession(path).run(None, {{'{SERVING_INPUT}': x}})[0] -> {output_name}"}
    for fmt, (data, extra) in files.items():
        written[f"serving_{fmt}"] = atomic_write_bytes(out_dir / SERVING_FILES[fmt], data, inside=inside)
        entry_files[fmt] = {"file": SERVING_FILES[fmt], "sha256": hashlib.sha256(data).hexdigest(),
                            "size_bytes": len(data), "opset": extra.get("opset"), "checked_with": extra["checked_with"],
                            "load": load[fmt]}
    c, s = len(source.channels), source.segment_samples
    shape = [BATCH_AXIS, len(source.label_names)] if kind == "classifier" else [BATCH_AXIS]
    return {
        "file": SERVING_FILES["onnx"], "files": entry_files, "torch_version": torch.__version__,
        "inputs": [{"name": SERVING_INPUT, "shape": [BATCH_AXIS, c, s], "dtype": "float32",
                    "meaning": f"raw waveform segments: {c} channels {list(source.channels)} in this order, {s} "
                               f"samples at {source.sample_rate:g} Hz ({s / source.sample_rate:g} s), as recorded"}],
        "outputs": [{"name": output_name, "shape": shape, "dtype": "float32", "meaning": output_doc}],
        "class_names": list(source.label_names) if kind == "classifier" else None,
        "preprocessing": {"sample_rate": source.sample_rate, "channels": list(source.channels), "segment_samples": s,
                          "n_fft": source.n_fft, "hop_length": source.hop_length, "stft": dict(source.stft),
                          "stft_in_graph": "conv1d with fixed DFT kernels (window x cos/sin), stride hop_length",
                          "globals": list(source.globals_features),
                          "normalization": "data_meta.json 'normalization' (train split), inside the graph"},
        "check": {"split": "test", "spectrogram_file": str(source.path), "recordings": [r["name"] for r in
                                                                                         source.recordings("test")],
                  "recordings_dir": serving["recordings_dir"], "n_segments": len(segments),
                  "batch_size": SERVING_CHECK_BATCH, "atol": tol,
                  "reference": "library pipeline: spectrogram_features -> Normalization.apply -> eager model",
                  "file_rows_max_abs_diff": file_diff, **{fmt: r for fmt, r in results.items()}},
        "weights": serving["weights"],
    }


def _file_rows_diff(event_file: Any, source: Any, segments: np.ndarray) -> dict[str, float]:
    """Max |recomputed - stored| of the test rows' features: the re-read recordings give the file's rows."""
    from .data.spectrogram import spectrogram_features

    n = event_file.num_rows("test")
    if n != len(segments):
        raise DataError(f"{source.path}: the test split has {n} rows but its recorded segments number "
                        f"{len(segments)}; the file and its source record disagree: re-run prepare_spectrograms")
    block = event_file.read_block("test", 0, n)
    tokens, globals_ = spectrogram_features(segments, source.n_fft, source.hop_length)
    return {"tokens_cont": float(np.max(np.abs(tokens - block["tokens_cont"]))),
            "globals": float(np.max(np.abs(globals_ - block["globals"])))}


def _compare_serving(reference: torch.Tensor, got: torch.Tensor, kind: str, tol: float, what: str) -> dict[str, Any]:
    """{max_abs_diff, same_predictions, ties}; ModelError when the outputs differ by more than tol or a class flips."""
    if tuple(got.shape) != tuple(reference.shape):
        raise ModelError(f"{what}: output shape {tuple(got.shape)}; the library's pipeline gives "
                         f"{tuple(reference.shape)}")
    diff = float((got.double() - reference.double()).abs().max())
    if not diff <= tol:  # also catches NaN
        raise ModelError(f"{what} differs from the library's pipeline by {diff:.3g} (max abs over "
                         f"{len(reference)} test segments, allowed {tol}); nothing was written for serving")
    result: dict[str, Any] = {"max_abs_diff": diff}
    if kind == "classifier":
        flips = got.argmax(dim=1) != reference.argmax(dim=1)
        top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
        tie = (top2[:, 0] - top2[:, -1]) <= 2 * tol  # a near-tie may flip within the tolerance
        if bool((flips & ~tie).any()):
            raise ModelError(f"{what}: {int((flips & ~tie).sum())} of {len(reference)} test segments get another "
                             "class than from the library's pipeline")
        result.update(same_predictions=not bool(flips.any()), predictions_differing_at_ties=int(flips.sum()))
    return result


def _run_torch(module: Callable, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return _as_tuple(module(*batch))


def _specs(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """[{name, shape (axis 0 = "batch"), dtype}] for export_info.json."""
    return [{"name": n, "shape": [BATCH_AXIS, *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(names, tensors)]


def _earlier_exports(out_dir: Path, run_dir: Path) -> dict[str, dict]:
    """Format entries of an earlier export_info.json of the same run in out_dir whose files still exist."""
    earlier = _read_json(out_dir / EXPORT_INFO_FILE) or {}
    if earlier.get("run_dir") != str(run_dir.resolve()) or not isinstance(earlier.get("formats"), dict):
        return {}
    return {fmt: entry for fmt, entry in earlier["formats"].items()
            if fmt in EXPORT_FILES and isinstance(entry, dict)
            and all((out_dir / str(name)).is_file() for name in _entry_files(entry))}


def _entry_files(entry: Mapping[str, Any]) -> list[str]:
    """The file names an export_info.json format entry holds ("files" for serving's two, else "file")."""
    files = entry.get("files")
    if isinstance(files, Mapping):
        return [str(f.get("file")) if isinstance(f, Mapping) else str(f) for f in files.values()]
    return [str(entry.get("file"))]


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable (logged)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _record_in_model_info(run_dir: Path, out_dir: Path, formats_info: Mapping[str, Mapping], info_path: Path) -> None:
    """Add an "exports" entry to the run's model_info.json (read, modify, atomic write); skipped if it has none."""
    path = run_dir / MODEL_INFO_FILE
    model_info = _read_json(path)
    if model_info is None:
        log.warning("%s: no readable %s; the exports are listed in %s only", run_dir, MODEL_INFO_FILE, info_path)
        return

    def shown(p: Path) -> str:
        p = p.resolve()
        return str(p.relative_to(run_dir.resolve())) if p.is_relative_to(run_dir.resolve()) else str(p)

    model_info["exports"] = {"export_info": shown(info_path),
                             "formats": {fmt: (shown(out_dir / entry["file"]) if "files" not in entry
                                               else [shown(out_dir / name) for name in _entry_files(entry)])
                                         for fmt, entry in formats_info.items()},
                             "updated": _now()}
    atomic_write_text(path, json.dumps(model_info, indent=2), inside=run_dir)


def _is_within(path: Path, root: Path) -> bool:
    """Whether `path` lies lexically inside `root` (or is it)."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
