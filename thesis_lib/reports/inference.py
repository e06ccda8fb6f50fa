"""Inference over finished runs: reload each model from its run directory, score the evaluation split.

Autoencoders get per-event masked reconstruction errors (MSE, MAE) on clean events, their
summary (mean, std, p50, p95, p99), the AUROC of clean events against corrupted copies of the
same events for every corruption strategy (``thesis_lib.data.corruption``), and the AUROC of
each class against the rest (``auroc_anomaly_class`` for the synthetic ``bsm_resonance`` class).
The anomaly score is the per-event MSE by default; ``anomaly_score="total"`` uses the per-event
training objective instead (MSE + tokens_weight * token CE + globals_beta * globals MSE), which
also sees corruptions the continuous features cannot show (scrambled globals, swapped ids). Classifiers get accuracy, one-vs-rest AUROC per class from the softmax
and the confusion matrix.

Everything comes from the run directory: ``config.yaml`` and ``data_meta.json`` rebuild the
model, ``model.pt`` (the best epoch's state_dict; ``best_val.pt`` for a run that crashed or was
killed before writing it, said in the run's ``weights``) is loaded with ``weights_only=True``,
and the evaluation split is z-scored with the run's own train-split normalization from
``data_meta.json``, never recomputed. The data file is the run's own (a relative path is found
from the directory the run was launched in first), and it is checked against the identity the
run recorded at its start (size, mtime, a hash of its first and last MiB): a different file is
a warning naming both paths and what differs. A run that cannot be evaluated is recorded in
``errors`` with the reason and the others go on.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from ..config import Config
from ..data.corruption import CORRUPTIONS, corrupt
from ..data.h5 import SPLITS, EventFile
from ..data.loader import DataMeta, EventLoader
from ..data.synthetic import ANOMALY_PROCESS
from ..devices import resolve_device
from ..errors import ConfigError, DataError, ReportError, ThesisLibError
from ..facts.reader import read_events
from ..facts.run_model import load_run_model, load_run_model_and_weights
from ..layout import DATA_META_FILE, ENV_FILE, EVENTS_FILE
from ..record.env import describe_data_file
from ..record.writer import to_plain

__all__ = ["DEFAULT_CORRUPTIONS", "InferenceResult", "auroc", "score_summary", "load_run_model",
           "resolve_data_path", "check_data_file", "run_inference"]

log = logging.getLogger(__name__)

DEFAULT_CORRUPTIONS: tuple[str, ...] = tuple(CORRUPTIONS)
# How a run is scored, by what its model can do: reconstruction errors (per_event_errors: the
# autoencoder and diffusion_autoencoder tasks) or class scores (predict_logits: the classifier).
TASKS = ("autoencoder", "classifier")
ANOMALY_SCORES = ("mse", "total")
_PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the binary `labels` (sklearn's roc_auc_score).

    Args:
        scores: one score per event, higher = more anomalous / more positive.
        labels: 0/1 (or bool) per event, 1 = positive.

    Returns:
        The AUROC in [0, 1]; ties count one half.

    Raises:
        DataError: lengths differ, a score is not finite, or only one class is present.
    """
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).astype(bool).ravel()
    if len(s) != len(y):
        raise DataError(f"auroc: {len(s)} scores but {len(y)} labels; expected one label per score")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise DataError(f"auroc: {bad} of {len(s)} scores are NaN or infinite; expected finite scores")
    positives = int(y.sum())
    if positives in (0, len(y)):
        raise DataError(f"auroc needs both classes; all {len(y)} labels are {int(positives > 0)}")
    return float(roc_auc_score(y, s))


def score_summary(values: np.ndarray) -> dict[str, float | None]:
    """mean, std, p50, p95, p99 of the finite values (all None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "std": None, **{k: None for k in _PERCENTILES}}
    return {"mean": float(v.mean()), "std": float(v.std()),
            **{k: float(np.percentile(v, q)) for k, q in _PERCENTILES.items()}}


def resolve_data_path(run_dir: str | Path, config: Config, data_path: str | Path | None = None) -> Path:
    """The event file a run was trained on.

    Tried in order: `data_path` when given (and nothing else); else config data.path as given
    when absolute; a relative one first relative to the `cwd` the run recorded in env.json (the
    directory it was launched from, where it found the file), then relative to the current
    directory.

    Raises:
        DataError: no candidate is a file; the message names the run and every path tried.
    """
    run_dir = Path(run_dir)
    if data_path is not None:
        candidates, note = [Path(data_path)], "the data_path given"
    else:
        given = Path(config.data.path)
        candidates = [given if given.is_absolute() else Path(os.path.abspath(given))]
        note = f"config data.path={config.data.path!r}"
        cwd = _recorded_cwd(run_dir)
        if not given.is_absolute() and cwd:
            candidates.insert(0, Path(cwd) / given)
            note += f" relative to the run's launch directory {cwd} ({ENV_FILE} cwd), then to the current directory"
        elif not given.is_absolute():
            note += f" relative to the current directory; {ENV_FILE} records no launch directory (cwd) to try first"
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{run_dir}: data file not found; tried {', '.join(str(c) for c in candidates)} ({note}); "
                    "pass data_path= to point at the file")


def check_data_file(run_dir: str | Path, path: str | Path) -> str | None:
    """Compare the data file about to be used with the one the run recorded at its start.

    The run's last on_start event holds `data_file` (see `record.env.describe_data_file`): the
    path, size, mtime_ns and a sha256 of the file's first and last MiB. Runs from before it
    was recorded are not checked.

    Returns:
        None when they agree (or nothing was recorded); else a message naming both paths and
        what differs (size, modification time, content sample).
    """
    recorded = _recorded_data_file(Path(run_dir))
    if recorded is None:
        return None
    now = describe_data_file(path) or {}
    differs = []
    if recorded.get("size") != now.get("size"):
        differs.append(f"size {recorded.get('size')} -> {now.get('size')} bytes")
    if recorded.get("sample_sha256") and now.get("sample_sha256") and recorded["sample_sha256"] != now["sample_sha256"]:
        differs.append("content of its first/last MiB (sha256 "
                       f"{recorded['sample_sha256'][:12]} -> {now['sample_sha256'][:12]})")
    if recorded.get("mtime_ns") != now.get("mtime_ns"):
        differs.append(f"modification time {_ns_time(recorded.get('mtime_ns'))} -> {_ns_time(now.get('mtime_ns'))}")
    if not differs:
        return None
    was = recorded.get("resolved") or recorded.get("path")
    return (f"{run_dir}: the data file {path} (resolved {now.get('resolved', path)}) differs from the one the run "
            f"was trained on ({was}, recorded at its start in {EVENTS_FILE}): {'; '.join(differs)}; its scores may "
            "not be comparable with the run's own test metrics")


def _recorded_data_file(run_dir: Path) -> dict | None:
    """`data_file` of the run's last on_start event, or None (not recorded, no readable events)."""
    try:
        events = read_events(run_dir, bad_lines=[])
    except (ThesisLibError, OSError):
        return None
    starts = [e for e in events if e.get("moment") == "on_start"]
    recorded = starts[-1].get("data_file") if starts else None
    return recorded if isinstance(recorded, dict) else None


def _ns_time(ns: Any) -> str:
    """A nanosecond mtime as local ISO time (seconds), or "?"."""
    if not isinstance(ns, int):
        return "?"
    return _dt.datetime.fromtimestamp(ns / 1e9).isoformat(timespec="seconds")


def _recorded_cwd(run_dir: Path) -> str | None:
    """The working directory the run was launched from (env.json `cwd`), if recorded."""
    try:
        cwd = json.loads((run_dir / ENV_FILE).read_text()).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return cwd if isinstance(cwd, str) and cwd else None


@dataclass
class InferenceResult:
    """What run_inference found: per-run metrics, per-run errors, the options, per-event scores.

    `models`, `errors` and `options` are plain data (`to_dict()` is summary.json-ready: NaN and
    inf become null); `per_event_scores` maps run_id to a DataFrame with one row per event.
    """

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    per_event_scores: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def by_task(self) -> dict[str, list[str]]:
        """run_ids grouped by task, in evaluation order."""
        groups: dict[str, list[str]] = {}
        for run_id, metrics in self.models.items():
            groups.setdefault(metrics["task"], []).append(run_id)
        return groups

    def to_dict(self) -> dict[str, Any]:
        """{"models", "by_task", "errors", "options"} as strict-JSON-ready plain data."""
        data = {"models": self.models, "by_task": self.by_task, "errors": self.errors, "options": self.options}
        return to_plain(data, where="inference summary", nonfinite_to_none=True)


def run_inference(run_dirs: str | Path | Iterable[str | Path], *, dataset_split: str = "test",
                  batch_size: int = 512, autocast: bool = True, max_samples: int = 0,
                  corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
                  corruption_params: Mapping[str, Mapping[str, Any]] | None = None,
                  persist_raw_scores: bool = False, output_dir: str | Path | None = None,
                  device: str | torch.device = "auto", seed: int = 0,
                  data_path: str | Path | None = None, anomaly_score: str = "mse") -> InferenceResult:
    """Evaluate every run's best model on one split of its data.

    Args:
        run_dirs: run directories (one path or several); tasks may be mixed.
        dataset_split: "test", "val" or "train".
        batch_size: events per forward pass.
        autocast: bf16 autocast on CUDA (ignored on the CPU).
        max_samples: evaluate only the first max_samples events of the split (0: all).
        corruptions: names from thesis_lib.data.corruption.CORRUPTIONS scored for autoencoders.
        corruption_params: per-corruption keyword parameters, e.g. {"additive_noise": {"sigma": 1.0}}.
        persist_raw_scores: write `<output_dir>/raw_scores_<run_id>.csv`, one row per event.
        output_dir: where raw scores go (required with persist_raw_scores).
        device: "auto" (cuda when visible), "cpu", "cuda" or "cuda:N".
        seed: seeds the corruptions, so every run is scored on the same corrupted events.
        data_path: use this event file for every run instead of each run's own data.path.
        anomaly_score: the autoencoder score behind every AUROC: "mse" (per-event masked MSE of
            the continuous features) or "total" (MSE + tokens_weight * token CE + globals_beta *
            globals MSE, the per-event training objective without the commitment term).

    Returns:
        An InferenceResult. Autoencoder metrics: task, n_events, mse, mae and total summaries
        (mean, std, p50, p95, p99), tokens_ce_mean, globals_mse_mean, auroc (mean over
        corruptions), auroc_by_corruption, corrupted_score_mean, changed_fraction (events the
        corruption altered; unaltered copies are not counted as positives), auroc_class,
        auroc_anomaly_class, notes. Classifier metrics: task, n_events, accuracy, auroc (mean
        over classes), auroc_class, confusion_matrix, class_names, notes. Per-event columns
        (per_event_scores and the raw-score files): run_id, event, label, then mse, mae,
        tokens_ce, globals_mse, total, and <score>_<corruption> and changed_<corruption> per
        corruption (autoencoders) or pred and prob_<k> per class (classifiers). Every run's
        metrics also say what was scored: run_dir, data_path, split, weights ("model.pt", or
        "best_val.pt" for a run that ended before writing model.pt, with weights_note saying
        so) and data_warning (None, or the message of a data file that is not the one the run
        recorded at its start, also issued as a UserWarning); both notes are in `notes` too.

    Raises:
        ConfigError: an option is out of range, or persist_raw_scores without output_dir.
        DataError: an unknown corruption name or a parameter it does not take.
        ReportError: no run directory was given.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ReportError("run_inference: no run directories given")
    params = {name: dict(p) for name, p in (corruption_params or {}).items()}
    _check_options(dataset_split, batch_size, max_samples, corruptions, params, anomaly_score, persist_raw_scores,
                   output_dir)
    dev = resolve_device(device, "inference device")
    options = {"dataset_split": dataset_split, "batch_size": batch_size, "autocast": bool(autocast),
               "autocast_active": bool(autocast) and dev.type == "cuda", "max_samples": max_samples,
               "corruptions": list(corruptions), "corruption_params": params, "persist_raw_scores": persist_raw_scores,
               "device": str(dev), "seed": seed, "data_path": str(data_path) if data_path is not None else None,
               "anomaly_score": anomaly_score}
    result = InferenceResult(options=options)
    data = _SplitCache()
    for run_dir in dirs:
        try:
            run_id, metrics, frame = _evaluate_run(run_dir, data, dev, result, options, data_path)
        except Exception as exc:  # one bad run must not sink the report: record it, go on
            result.errors[str(run_dir)] = str(exc) if isinstance(exc, ThesisLibError) else f"{type(exc).__name__}: {exc}"
            log.warning("inference skipped %s: %s", run_dir, result.errors[str(run_dir)])
            continue
        result.models[run_id], result.per_event_scores[run_id] = metrics, frame
        if persist_raw_scores:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            frame.to_csv(out / f"raw_scores_{run_id}.csv", index=False)
    return result


def _check_options(split: str, batch_size: int, max_samples: int, corruptions: Sequence[str],
                   params: dict, anomaly_score: str, persist: bool, output_dir: Any) -> None:
    """ConfigError / DataError for inference options that cannot work, before any run is loaded."""
    if split not in SPLITS:
        raise ConfigError(f"inference dataset_split={split!r}; allowed: {', '.join(SPLITS)}")
    if anomaly_score not in ANOMALY_SCORES:
        raise ConfigError(f"inference anomaly_score={anomaly_score!r}; allowed: {', '.join(ANOMALY_SCORES)}")
    if int(batch_size) < 1 or int(max_samples) < 0:
        raise ConfigError(f"inference batch_size={batch_size}, max_samples={max_samples}; "
                          "expected batch_size >= 1 and max_samples >= 0 (0: all)")
    if isinstance(corruptions, str):
        raise ConfigError(f"inference corruptions={corruptions!r}; expected a list of names")
    # A one-event trial batch: unknown names and bad parameters fail here, not once per run.
    trial = {"tokens_id": torch.ones(1, 2, dtype=torch.long), "tokens_cont": torch.zeros(1, 2, 1),
             "globals": torch.zeros(1, 1)}
    for name in dict.fromkeys(list(corruptions) + list(params)):
        corrupt(trial, name, generator=torch.Generator(), **params.get(name, {}))
    if persist and output_dir is None:
        raise ConfigError("inference persist_raw_scores=True needs output_dir (where raw_scores_<run_id>.csv go)")


class _SplitCache:
    """The last evaluation loader, reused while consecutive runs share file, split and normalization."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.loader: EventLoader | None = None

    def get(self, path: Path, meta: DataMeta, split: str, batch_size: int, max_samples: int, run_dir: Path) -> EventLoader:
        """An unshuffled CPU loader of `split`, z-scored with the run's normalization."""
        key = (str(path.resolve()), split, meta.normalization, batch_size, max_samples)
        if key != self.key:
            ef = EventFile(path)
            found = (ef.n_tokens, ef.cont_dim, ef.globals_dim)
            if found != (meta.n_tokens, meta.cont_dim, meta.globals_dim):
                raise DataError(f"{run_dir}: {path} has (tokens, cont features, globals) = {found}; the run was "
                                f"trained on {(meta.n_tokens, meta.cont_dim, meta.globals_dim)} ({DATA_META_FILE})")
            # CPU: corruptions draw from a CPU generator; batches move to the model's device after.
            self.loader = EventLoader(ef, split, batch_size=batch_size, shuffle=False, normalization=meta.normalization,
                                      device="cpu", max_rows=max_samples)
            self.key = key
        return self.loader


def _evaluate_run(run_dir: Path, data: _SplitCache, dev: torch.device, result: InferenceResult,
                  options: dict, data_path: Any) -> tuple[str, dict, pd.DataFrame]:
    """Load, score and summarise one run: (run_id, metrics, per-event frame)."""
    model, config, meta, weights = load_run_model_and_weights(run_dir, device=dev)
    if weights.note is not None:
        log.warning("inference of %s uses %s", run_dir, weights.describe())
    task = ("autoencoder" if hasattr(model, "per_event_errors") else
            "classifier" if hasattr(model, "predict_logits") else None)
    if task is None:
        raise ReportError(f"{run_dir}: task {config.model.task!r} has no inference here: its model has neither "
                          "per_event_errors (reconstruction scores) nor predict_logits (class scores)")
    path = resolve_data_path(run_dir, config, data_path)
    mismatch = check_data_file(run_dir, path)
    if mismatch is not None:
        warnings.warn(mismatch, UserWarning, stacklevel=3)
    loader = data.get(path, meta, options["dataset_split"], options["batch_size"], options["max_samples"], run_dir)
    run_id = run_dir.name if run_dir.name not in result.models else f"{run_dir.parent.name}/{run_dir.name}"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if options["autocast_active"] else nullcontext()
    class_names = list(meta.label_names)
    if task == "autoencoder":
        columns = _autoencoder_scores(model, loader, dev, amp, options)
        metrics = _autoencoder_metrics(columns, options["corruptions"], class_names, options["anomaly_score"])
    else:
        columns = _classifier_scores(model, loader, dev, amp, len(class_names))
        metrics = _classifier_metrics(columns, class_names)
    m = config.model
    info = {"task": task, "model_task": m.task, "run_dir": str(run_dir), "data_path": str(path), "split": options["dataset_split"],
            "encoder": m.encoder, "bottleneck": m.bottleneck, "latent_dim": m.latent_dim, "seed": config.trainer.seed,
            "weights": weights.file, "weights_note": weights.note, "data_warning": mismatch}
    metrics["notes"] = [note for note in (weights.note, mismatch) if note is not None] + list(metrics["notes"])
    frame = pd.DataFrame({"run_id": run_id, "event": np.arange(len(columns["label"])), **columns})
    return run_id, {**info, **metrics}, frame


def _on(batch: Mapping[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    """The batch on the model's device."""
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def _total(errors: Mapping[str, torch.Tensor], model) -> torch.Tensor:
    """Per-event training objective: mse + tokens_weight * tokens_ce + globals_beta * globals_mse."""
    return errors["mse"] + model.tokens_weight * errors["tokens_ce"] + model.globals_beta * errors["globals_mse"]


@torch.inference_mode()
def _autoencoder_scores(model, loader: EventLoader, dev: torch.device, amp, options: dict) -> dict[str, np.ndarray]:
    """Per-event columns: label, mse, mae, tokens_ce, globals_mse, total, <score>_<c> and changed_<c>."""
    names, params, score = options["corruptions"], options["corruption_params"], options["anomaly_score"]
    # One generator per corruption, seeded by (seed, corruption): every run sees the same corrupted events.
    generators = {n: torch.Generator().manual_seed(int(options["seed"]) * 1000 + i) for i, n in enumerate(names)}
    parts: dict[str, list] = defaultdict(list)
    for batch in loader:
        parts["label"].append(batch["labels"].numpy())
        with amp:
            errors = model.per_event_errors(_on(batch, dev))
        errors["total"] = _total(errors, model)
        # .cpu() reads each batch's scores back (a sync point; inference only, not the training path)
        for key in ("mse", "mae", "tokens_ce", "globals_mse", "total"):
            parts[key].append(errors[key].float().cpu().numpy())
        for name in names:
            bad = corrupt(batch, name, generator=generators[name], **params.get(name, {}))
            with amp:
                bad_errors = model.per_event_errors(_on(bad, dev))
            bad_score = bad_errors["mse"] if score == "mse" else _total(bad_errors, model)
            parts[f"{score}_{name}"].append(bad_score.float().cpu().numpy())
            parts[f"changed_{name}"].append(_changed_events(batch, bad).numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _changed_events(clean: Mapping[str, torch.Tensor], bad: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Bool [B]: the corrupted copy differs from the clean event in ids, features or globals."""
    b = clean["tokens_id"].shape[0]
    return ((clean["tokens_id"] != bad["tokens_id"]).reshape(b, -1).any(1)
            | (clean["tokens_cont"] != bad["tokens_cont"]).reshape(b, -1).any(1)
            | (clean["globals"] != bad["globals"]).reshape(b, -1).any(1))


@torch.inference_mode()
def _classifier_scores(model, loader: EventLoader, dev: torch.device, amp, n_classes: int) -> dict[str, np.ndarray]:
    """Per-event columns: label, pred, prob_<k> for every class index k."""
    labels, probs = [], []
    for batch in loader:
        labels.append(batch["labels"].numpy())
        with amp:
            logits = model.predict_logits(_on(batch, dev))
        probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    p = np.concatenate(probs)
    return {"label": np.concatenate(labels), "pred": p.argmax(axis=1), **{f"prob_{k}": p[:, k] for k in range(n_classes)}}


def _class_name(names: Sequence[str], index: int) -> str:
    """The name of class `index` (class_<index> beyond the file's names)."""
    return names[index] if 0 <= index < len(names) else f"class_{index}"


def _one_vs_rest(scores_of: Any, labels: np.ndarray, names: Sequence[str], notes: list[str],
                 n_scored: int | None = None) -> dict[str, float | None]:
    """AUROC of each class present against the rest (classes below n_scored only); scores_of(k) -> scores."""
    present = np.unique(labels)
    if len(present) < 2:
        notes.append(f"class AUROC skipped: the split holds only class {present.tolist()}")
        return {}
    kept = [int(k) for k in present if n_scored is None or k < n_scored]
    return {_class_name(names, k): _try_auroc(scores_of(k), labels == k, notes, _class_name(names, k)) for k in kept}


def _try_auroc(scores: np.ndarray, labels: np.ndarray, notes: list[str], what: str) -> float | None:
    """auroc(), or None with a note saying why (e.g. NaN scores of a diverged model)."""
    try:
        return auroc(scores, labels)
    except DataError as exc:
        notes.append(f"AUROC {what}: {exc}")
        return None


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values, None when there are none."""
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _autoencoder_metrics(c: dict[str, np.ndarray], corruptions: Sequence[str], names: Sequence[str],
                         score: str) -> dict:
    """Summary, corruption AUROCs and class-vs-rest AUROCs from the per-event columns."""
    clean, labels = c[score], c["label"]
    by_corruption, corrupted_mean, changed, notes = {}, {}, {}, []
    for name in corruptions:
        hit = c[f"changed_{name}"]
        changed[name] = float(hit.mean()) if len(hit) else 0.0
        corrupted_mean[name] = score_summary(c[f"{score}_{name}"])["mean"]
        # A corrupted copy identical to its clean event is no anomaly: only changed copies are positives.
        positives = c[f"{score}_{name}"][hit]
        by_corruption[name] = _try_auroc(np.concatenate([clean, positives]),
                                         np.concatenate([np.zeros(len(clean)), np.ones(len(positives))]), notes, name)
    by_class = _one_vs_rest(lambda k: clean, labels, names, notes)
    return {"n_events": int(len(clean)), "anomaly_score": score, "mse": score_summary(c["mse"]),
            "mae": score_summary(c["mae"]), "total": score_summary(c["total"]),
            "tokens_ce_mean": score_summary(c["tokens_ce"])["mean"],
            "globals_mse_mean": score_summary(c["globals_mse"])["mean"],
            "auroc": _mean_or_none(by_corruption.values()), "auroc_by_corruption": by_corruption,
            "corrupted_score_mean": corrupted_mean, "changed_fraction": changed,
            "auroc_class": by_class, "auroc_anomaly_class": by_class.get(ANOMALY_PROCESS), "notes": notes}


def _classifier_metrics(c: dict[str, np.ndarray], names: Sequence[str]) -> dict:
    """Accuracy, one-vs-rest AUROC per class (softmax probability) and the confusion matrix."""
    labels, pred = c["label"], c["pred"]
    k, notes = len(names), []
    by_class = _one_vs_rest(lambda j: c[f"prob_{j}"], labels, names, notes, n_scored=k)
    return {"n_events": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "auroc": _mean_or_none(by_class.values()), "auroc_class": by_class,
            "confusion_matrix": confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
            "class_names": [_class_name(names, j) for j in range(k)], "notes": notes}
