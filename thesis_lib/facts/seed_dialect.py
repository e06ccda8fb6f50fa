"""Reading run directories written by thesis-ml (the seed project) as thesis-lib facts.

thesis-ml (github.com/NielsterLinden/Thesis; read at commit 1c2e91f973b105dde1e465b339e15e0ef8686e01,
src/thesis_ml/facts/{writers,builders,readers}.py) ran its loops under Hydra and left:

```
run_<YYYYmmdd-HHMMSS>_<name>[_job<N>]/
  .hydra/config.yaml      the composed config, as Hydra saved it (interpolations unresolved)
  .hydra/overrides.yaml   the command line's overrides, one `key=value` string a line
  cfg.yaml                older runs instead: the composed config saved by the loop itself
  facts/events.jsonl      build_event_payload records: its own schema_version 1, moment, run_dir, epoch, step,
                          split, train_loss, val_loss, metrics, epoch_time_s, total_time_s, throughput, meta
                          {timestamp, run_id (a fresh uuid4 in every event), git_commit, hostname, cuda_info,
                          seed}, histories {key: [...]} and the same lists again as history_<key>; no status
  facts/scalars.csv       epoch,split,train_loss,val_loss,epoch_time_s,throughput,max_memory_mib[,metric_<k>...]
```

A directory is read in this dialect when it has no config.yaml and has .hydra/config.yaml or cfg.yaml.
The result has the shape of a thesis-lib run (`runs_df` columns, a per-epoch frame like `read_scalars`'),
with `dialect` "thesis-ml" (thesis-lib's own runs: "thesis-lib"):

* run_id is the directory's name (the events' meta.run_id is a new uuid in every event, so names nothing);
* status is COMPLETED when an on_train_end follows the last on_start, else CRASHED with the reason
  (thesis-ml records no exception, stop reason or pid, so a crash and a run still going read alike);
* `t` of an epoch's rows is its on_epoch_end meta.timestamp minus on_start's: the wall clock read when
  the epoch's validation ended, as thesis-lib's `t`; missing where an event has no timestamp;
* config keys map onto thesis-lib's columns (`config_columns`; the table is in docs/architecture.md,
  "Runs from thesis-ml (the seed)"); overrides that map nowhere become `thesis_ml.<key>` columns;
* a value thesis-ml did not record stays missing, and a number it recorded under another definition
  keeps a name of its own: `throughput` (train samples over train + validation seconds) is
  `thesis_ml_throughput`, the validation `rec_tokens` history (an unmasked MSE) is `rec_tokens`, never
  thesis-lib's `throughput` or `loss_recon`. The 0.0 perplexity thesis-ml wrote for runs without a VQ
  bottleneck is a placeholder, not a measurement, and is dropped.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import FactsError
from ..layout import CONFIG_FILE, EVENTS_FILE, SCALARS_FILE
from ..record.schema import config_hash
from .reader import BadLine, _column, _parse_csv, _parse_events, _typed, _with_loss_aliases

__all__ = [
    "DIALECT",
    "HYDRA_CONFIG",
    "HYDRA_OVERRIDES",
    "LEGACY_CONFIG",
    "NATIVE_DIALECT",
    "ThesisMlRun",
    "config_columns",
    "is_thesis_ml_run",
    "load_thesis_ml_run",
    "read_thesis_ml_config",
]

DIALECT = "thesis-ml"
NATIVE_DIALECT = "thesis-lib"
HYDRA_DIR = ".hydra"
HYDRA_CONFIG = f"{HYDRA_DIR}/{CONFIG_FILE}"
HYDRA_OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
LEGACY_CONFIG = "cfg.yaml"
# The columns thesis-ml's append_scalars_csv writes first, in order; metric_<name> columns follow.
SEED_SCALAR_COLUMNS = ("epoch", "split", "train_loss", "val_loss", "epoch_time_s", "throughput", "max_memory_mib")

# thesis-ml's `loop` (its dispatcher key) -> thesis-lib's model.task; and, for the classifier loops, the encoder.
_LOOP_TASKS = {"ae": "autoencoder", "gan_ae": "gan_autoencoder", "diffusion_ae": "diffusion_autoencoder",
               "transformer_classifier": "classifier", "mlp_classifier": "classifier", "bdt_classifier": "classifier"}
# Where each kind of loop read its trainer settings: phase1.trainer (older runs: a top-level trainer).
_TRAINER_SECTIONS = {"autoencoder": ("phase1.trainer", "trainer"), "classifier": ("classifier.trainer",)}
# thesis-ml trainer key -> thesis-lib config column.
_TRAINER_KEYS = {"seed": "trainer.seed", "epochs": "trainer.epochs", "lr": "optim.lr",
                 "weight_decay": "optim.weight_decay", "grad_clip": "optim.grad_clip", "batch_size": "data.batch_size"}
# Override groups that say where a run wrote and how it logged, not what it trained.
_NOT_GRID_OVERRIDES = ("env", "logging", "hydra")
_OVERRIDE_PREFIX = "thesis_ml."  # runs_df columns of the overrides no thesis-lib column maps
_INTERPOLATION = re.compile(r"\$\{([^${}]+)\}")


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that, as OmegaConf's loader does, reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class ThesisMlRun:
    """One thesis-ml run read as thesis-lib facts.

    Attributes:
        identity: the first runs_df columns: run_dir, run_id, status, stop_reason, task, encoder,
            tokenizer, seed, latent_dim.
        details: the columns after the per-epoch summary: total_time_s, params_total, params_trainable,
            config_hash, test.<metric>, dialect, the mapped config columns and thesis_ml.<override> ones.
        per_epoch: one row per (epoch, split), the columns of `read_scalars` that thesis-ml measured.
        bad_lines: the events.jsonl and scalars.csv lines skipped.
        config: the composed config as thesis-ml saved it, interpolations resolved where they can be.
    """

    identity: dict
    details: dict
    per_epoch: pd.DataFrame
    bad_lines: list
    config: dict


def is_thesis_ml_run(run_dir: str | Path) -> bool:
    """Whether a directory is a thesis-ml run: no config.yaml, and .hydra/config.yaml or cfg.yaml."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        return False
    return (run_dir / HYDRA_CONFIG).exists() or (run_dir / LEGACY_CONFIG).exists()


def read_thesis_ml_config(run_dir: str | Path) -> tuple[dict, list[str]]:
    """A thesis-ml run's composed config and its overrides.

    Args:
        run_dir: the run directory.

    Returns:
        (config, overrides): .hydra/config.yaml (else cfg.yaml) as a nested dict with `${a.b}`
        interpolations resolved where the path exists (Hydra's own resolvers, `${now:...}`, stay as
        written); the `key=value` strings of .hydra/overrides.yaml ([] without one).

    Raises:
        FactsError: neither config file exists, or one is not YAML or not a mapping (naming the file).
        OSError: a file exists but cannot be read.
    """
    run_dir = Path(run_dir)
    path = run_dir / HYDRA_CONFIG
    if not path.exists():
        path = run_dir / LEGACY_CONFIG
    if not path.exists():
        raise FactsError(f"{run_dir}: neither {HYDRA_CONFIG} nor {LEGACY_CONFIG} exists (a thesis-ml run keeps its "
                         "composed config in one of them)")
    config = _load_yaml(path)
    if not isinstance(config, dict):
        raise FactsError(f"{path} holds a {type(config).__name__}; expected thesis-ml's composed config (a mapping)")
    overrides: list[str] = []
    overrides_path = run_dir / HYDRA_OVERRIDES
    if overrides_path.exists():
        listed = _load_yaml(overrides_path)
        if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
            raise FactsError(f"{overrides_path} holds {type(listed).__name__}; expected Hydra's list of "
                             "'key=value' override strings")
        overrides = listed
    return _resolve(config, config), overrides


def config_columns(config: dict, overrides: Sequence[str] = ()) -> dict:
    """thesis-lib's config columns for a thesis-ml config, each from the key thesis-ml read it from.

    Only what the config holds is returned: a column without a source is absent, never a default.
    The loop decides which sections count: the phase1.* parts only for the autoencoder loops (every
    thesis-ml config composes them), classifier.trainer for the classifier loops.

    Args:
        config: the composed config (`read_thesis_ml_config`).
        overrides: the run's `key=value` overrides; those no column maps become `thesis_ml.<key>`.

    Returns:
        {dotted thesis-lib column: value} (model.task, model.encoder, model.bottleneck, model.decoder,
        model.latent_dim, model.vq.codebook_size, model.vq.beta, model.globals_beta, trainer.seed,
        trainer.epochs, optim.lr, optim.weight_decay, optim.grad_clip, data.batch_size, data.path)
        plus the thesis_ml.<key> columns.
    """
    loop = _first(config, "loop", "phase1.trainer.loop", "trainer.loop")
    task = _LOOP_TASKS.get(loop, f"{DIALECT}:{loop}") if isinstance(loop, str) else None
    columns: dict[str, Any] = {"model.task": task}
    used: set[str] = {"loop", "phase1.trainer.loop", "trainer.loop"}
    if task in ("autoencoder", "gan_autoencoder", "diffusion_autoencoder"):
        # phase1.latent_space; the oldest configs named the same group phase1.tokenizer
        bottleneck_path = next((p for p in ("phase1.latent_space", "phase1.tokenizer") if _get(config, p) is not None),
                               "phase1.latent_space")
        bottleneck = _part_name(_get(config, bottleneck_path), "bottlenecks")
        columns["model.encoder"] = _part_name(_get(config, "phase1.encoder"), "encoders")
        columns["model.bottleneck"] = bottleneck
        columns["model.decoder"] = _part_name(_get(config, "phase1.decoder"), "decoders")
        columns["model.latent_dim"] = _first(config, f"{bottleneck_path}.latent_dim", "phase1.model.latent_dim",
                                             "model.latent_dim")
        if bottleneck == "vq":
            columns["model.vq.codebook_size"] = _first(config, f"{bottleneck_path}.codebook_size",
                                                       "phase1.model.codebook_size", "model.codebook_size")
            columns["model.vq.beta"] = _first(config, f"{bottleneck_path}.beta", "phase1.model.beta")
        columns["model.globals_beta"] = _first(config, "phase1.decoder.globals_beta", "phase1.model.globals_beta")
        used |= {"phase1/encoder", "phase1/decoder", "phase1/latent_space", "phase1/tokenizer", "phase1.encoder",
                 "phase1.decoder", "phase1.latent_space", "phase1.tokenizer", "phase1.decoder.globals_beta",
                 *(f"{bottleneck_path}.{key}" for key in ("latent_dim", "codebook_size", "beta"))}
        sections = _TRAINER_SECTIONS["autoencoder"]
    elif task == "classifier":
        columns["model.encoder"] = loop.split("_", 1)[0]
        sections = _TRAINER_SECTIONS["classifier"]
    else:
        sections = ()
    # The first section holding trainer settings (older runs kept only `loop` under phase1.trainer).
    section = next((s for s in sections if isinstance(_get(config, s), dict)
                    and any(key in _get(config, s) for key in _TRAINER_KEYS)), None)
    if section is not None:
        for key, column in _TRAINER_KEYS.items():
            columns[column] = _get(config, f"{section}.{key}")
            used.add(f"{section}.{key}")
    columns["data.path"] = _get(config, "data.path")
    used.add("data.path")
    columns = {column: value for column, value in columns.items() if value is not None}
    columns.update(_override_columns(config, overrides, used))
    return columns


def load_thesis_ml_run(run_dir: str | Path) -> ThesisMlRun:
    """Read one thesis-ml run directory as a thesis-lib run (see the module doc for what maps where).

    Args:
        run_dir: a directory for which `is_thesis_ml_run` holds.

    Returns:
        The ThesisMlRun.

    Raises:
        FactsError: the config, events.jsonl or scalars.csv is missing or unreadable, or scalars.csv
            has no header with thesis-ml's epoch, split, train_loss and val_loss; the message names
            the file.
        OSError: a file exists but cannot be read.
    """
    run_dir = Path(run_dir)
    config, overrides = read_thesis_ml_config(run_dir)
    events, bad = _parse_events(run_dir / EVENTS_FILE)
    start_index = max((i for i, e in enumerate(events) if e.get("moment") == "on_start"), default=-1)
    since_start = events[start_index + 1:]
    columns = config_columns(config, overrides)
    frame, scalars_bad = _read_seed_scalars(run_dir / SCALARS_FILE, since_start, events[start_index] if start_index >= 0
                                            else None, columns.get("model.bottleneck"))
    status, stop_reason, end = _status(events, start_index)
    test = next((e for e in reversed(since_start) if e.get("moment") == "on_test_end"), None)
    identity = {
        "run_dir": str(run_dir),
        "run_id": run_dir.name,
        "status": status,
        "stop_reason": stop_reason,
        "task": columns.get("model.task"),
        "encoder": columns.get("model.encoder"),
        "tokenizer": columns.get("model.bottleneck"),
        "seed": columns.get("trainer.seed"),
        "latent_dim": columns.get("model.latent_dim"),
    }
    origin = _timestamp(events[start_index]) if start_index >= 0 else None
    last = _timestamp(events[-1]) if events else None
    total = end.get("total_time_s") if end is not None else None
    if total is None and end is None and origin is not None and last is not None:
        total = last - origin  # as thesis-lib's own runs without an end: the last event's time since start
    details = {
        "total_time_s": total,
        "params_total": None,
        "params_trainable": None,
        "config_hash": config_hash(config),
    }
    metrics = test.get("metrics") if test is not None else None
    for name, value in (metrics.items() if isinstance(metrics, dict) else ()):
        details["test.loss" if name == "test_loss" else f"test.{name}"] = value
    details["dialect"] = DIALECT
    details.update(columns)
    return ThesisMlRun(identity, details, frame, bad + scalars_bad, config)


def _read_seed_scalars(path: Path, events: list[dict], start: dict | None,
                       bottleneck: str | None) -> tuple[pd.DataFrame, list[BadLine]]:
    """thesis-ml's scalars.csv as a thesis-lib per-epoch frame (module doc), and the lines skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FactsError(f"{path} is missing (thesis-ml writes one row per epoch and split there)") from None
    raw, bad = _parse_csv(path, data, required=SEED_SCALAR_COLUMNS[:4], fallback=None, text_columns=("split",))
    split = raw["split"].to_numpy(dtype=object)
    loss = np.where(split == "train", _column(raw, "train_loss"),
                    np.where(split == "val", _column(raw, "val_loss"), np.nan))
    epochs = raw["epoch"].to_numpy()
    times = _epoch_times(events, start)
    frame = pd.DataFrame({"epoch": epochs, "split": raw["split"], "step": np.nan,
                          "t": [times.get(int(e), np.nan) for e in epochs], "loss": loss})
    for name in raw.columns:
        if name.startswith("metric_") and not (name == "metric_perplex" and bottleneck not in (None, "vq")):
            frame[name] = raw[name]
    for name, renamed in (("epoch_time_s", "epoch_time_s"), ("throughput", "thesis_ml_throughput"),
                          ("max_memory_mib", "max_memory_mib")):
        if name in raw.columns:
            frame[renamed] = raw[name]
    recon = _val_history(events, "rec_tokens")
    if recon:
        frame["rec_tokens"] = [recon.get(int(e), np.nan) if s == "val" else np.nan
                               for e, s in zip(epochs, split, strict=True)]
    frame = frame.drop_duplicates(subset=["epoch", "split"], keep="last").reset_index(drop=True)
    return _with_loss_aliases(_typed(frame, ("split",))), bad


def _status(events: list[dict], start_index: int) -> tuple[str, str | None, dict | None]:
    """(status, stop_reason, the on_train_end event or None) of a thesis-ml run."""
    since_start = events[start_index + 1:]
    end = next((e for e in reversed(since_start) if e.get("moment") == "on_train_end"), None)
    if end is not None:
        return "COMPLETED", None, end
    epochs = [e.get("epoch") for e in since_start if e.get("moment") == "on_epoch_end"]
    if epochs:
        where = f"its last event is on_epoch_end of epoch {epochs[-1]}"
    elif start_index >= 0:
        where = "it ended before its first epoch ended"
    else:
        where = "events.jsonl has no on_start either"
    reason = (f"no on_train_end event: {where}; thesis-ml records neither an exception nor its pid, "
              "so the cause is unknown (a run still going reads the same)")
    return "CRASHED", reason, None


def _epoch_times(events: list[dict], start: dict | None) -> dict[int, float]:
    """{epoch: seconds from on_start's meta.timestamp to that epoch's on_epoch_end's}; epochs without one left out."""
    origin = _timestamp(start) if start is not None else None
    if origin is None:
        return {}
    times = {}
    for event in events:
        epoch = event.get("epoch")
        when = _timestamp(event) if event.get("moment") == "on_epoch_end" and isinstance(epoch, int) else None
        if when is not None:
            times[epoch] = when - origin
    return times


def _val_history(events: list[dict], key: str) -> dict[int, float]:
    """{epoch: value} of a validation history: each on_epoch_end's histories[key][epoch] (or history_<key>)."""
    values = {}
    for event in events:
        epoch = event.get("epoch")
        if event.get("moment") != "on_epoch_end" or not isinstance(epoch, int):
            continue
        histories = event.get("histories")
        history = histories.get(key) if isinstance(histories, dict) else event.get(f"history_{key}")
        if isinstance(history, list) and 0 <= epoch < len(history) and isinstance(history[epoch], (int, float)):
            values[epoch] = float(history[epoch])
    return values


def _timestamp(event: dict) -> float | None:
    """An event's meta.timestamp as POSIX seconds, or None when it has none that parses."""
    meta = event.get("meta")
    stamp = meta.get("timestamp") if isinstance(meta, dict) else None
    if not isinstance(stamp, str):
        return None
    try:
        when = _dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None:  # datetime.now(UTC).isoformat() always carries +00:00; take a bare one as UTC too
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def _override_columns(config: dict, overrides: Sequence[str], used: set[str]) -> dict:
    """thesis_ml.<key> columns for the overrides no thesis-lib column maps: the composed value where it is a scalar."""
    columns = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or key in used or key.split("/", 1)[0].split(".", 1)[0] in _NOT_GRID_OVERRIDES:
            continue
        composed = _get(config, key) if "/" not in key else None
        scalar = composed is not None and not isinstance(composed, (dict, list))
        columns[f"{_OVERRIDE_PREFIX}{key}"] = composed if scalar else value
    return columns


def _part_name(section: Any, kind: str) -> str | None:
    """A part's name: the module its `_target_` names after `<kind>` (...bottlenecks.vq.VQBottleneck: vq), or `name`."""
    if not isinstance(section, dict):
        return None
    target = section.get("_target_")
    if isinstance(target, str):
        parts = target.split(".")
        if kind in parts[:-2]:
            return parts[parts.index(kind) + 1]
    name = section.get("name")
    return name if isinstance(name, str) else None


def _first(config: dict, *paths: str) -> Any:
    """The value at the first dotted path that holds one (None if none does)."""
    return next((value for value in (_get(config, p) for p in paths) if value is not None), None)


def _get(config: Any, path: str) -> Any:
    """The value at a dotted path, or None."""
    for key in path.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def _resolve(value: Any, root: dict, seen: tuple = ()) -> Any:
    """OmegaConf's `${a.b}` interpolations replaced by the values they name (whole-string ones keep the type)."""
    if isinstance(value, dict):
        return {key: _resolve(item, root, seen) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, root, seen) for item in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(path: str) -> Any:
        if path in seen or ":" in path:  # a cycle, or a resolver (${now:...}, ${oc.env:...}) only Hydra can run
            return None
        found = _get(root, path.strip())
        return _resolve(found, root, (*seen, path)) if found is not None else None

    def as_text(match: re.Match) -> str:
        found = lookup(match.group(1))
        return match.group(0) if found is None or isinstance(found, (dict, list)) else str(found)

    whole = _INTERPOLATION.fullmatch(value)
    if whole:
        found = lookup(whole.group(1))
        return value if found is None else found
    return _INTERPOLATION.sub(as_text, value)


def _load_yaml(path: Path) -> Any:
    """A YAML file's content; FactsError naming the file when it is not YAML."""
    try:
        return yaml.load(path.read_bytes(), Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise FactsError(f"{path} is not valid YAML: {exc}") from None
