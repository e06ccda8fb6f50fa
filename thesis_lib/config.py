"""Run configuration: dataclasses built from dicts, YAML files and dotted overrides.

Validation happens here, when the config is built, so a typo fails before any data is read:
an unknown key or value names the key, the bad value, the allowed ones and the nearest match.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

import yaml

from .errors import ConfigError, did_you_mean

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "VQConfig",
    "DiffusionConfig",
    "AdversarialConfig",
    "OptimConfig",
    "TrainerConfig",
    "ProfileConfig",
    "TelemetryConfig",
    "ReportConfig",
    "LoggingConfig",
    "TrackingConfig",
    "load_config",
    "config_origin",
    "note_launch",
    "MODEL_PART_NAMES",
    "FIGURE_FAMILIES",
]


# The names a config may choose for each kind of model part. The config owns them, so it
# validates a config without importing torch or the models; thesis_lib.models registers one
# builder per name (a test checks that none is missing), and a builder registered under a name
# of its own (a part written outside the library) adds that name here (`allow_model_part`).
MODEL_PART_NAMES: dict[str, list[str]] = {
    "encoder": ["cnn", "gnn", "mlp", "resnet", "transformer"],
    "bottleneck": ["identity", "linear", "vq"],
    "decoder": ["gnn", "mlp"],
    "task": ["autoencoder", "classifier", "diffusion_autoencoder", "gan_autoencoder"],
}

# What logging.figures accepts: the training-time figure families of thesis_lib.monitoring. The
# general families come first (any autoencoder run draws them), then the two of one task each, so
# error messages name the general ones first.
FIGURE_FAMILIES: tuple[str, ...] = ("losses", "metrics", "latency", "lr", "recon", "codebook", "adversarial", "diffusion")

# What tracking.backends accepts: the experiment trackers thesis_lib.tracking mirrors a run to.
TRACKING_BACKENDS: tuple[str, ...] = ("tensorboard", "mlflow", "wandb")
# tracking.wandb_mode: "online" streams to the W&B server; "offline" keeps the run in its directory for `wandb sync`.
WANDB_MODES: tuple[str, ...] = ("online", "offline")


def allow_model_part(kind: str, name: str) -> None:
    """Let configs choose `name` for `kind` (called by `thesis_lib.models.registry.register`).

    Raises:
        ConfigError: `kind` is not one of MODEL_PART_NAMES' kinds.
    """
    if kind not in MODEL_PART_NAMES:
        raise ConfigError(f"unknown model part kind {kind!r}; allowed kinds: {', '.join(MODEL_PART_NAMES)}")
    if name not in MODEL_PART_NAMES[kind]:
        MODEL_PART_NAMES[kind].append(name)


def _registry(kind: str) -> dict:
    """Field metadata: the allowed values are MODEL_PART_NAMES[kind]."""
    return {"registry": kind}


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric config field (declared once, in the field's metadata).

    `low`/`high` are the bounds (None: unbounded on that side), each inclusive or exclusive; a
    float value must also be finite. `length` is for a list field: the exact number of items,
    each of which must lie in the bounds. `None` as a value (an optional field) is not checked.
    """

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    length: int | None = None

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low if self.low_inclusive else value <= self.low):
            return False
        return self.high is None or (value <= self.high if self.high_inclusive else value < self.high)

    def describe(self, key: str) -> str:
        """The range as a condition on `key`: `key >= 1`, `0 <= key < 1`, `key > 0`."""
        low_op = "<=" if self.low_inclusive else "<"
        high_op = "<=" if self.high_inclusive else "<"
        if self.low is not None and self.high is not None:
            return f"{self.low} {low_op} {key} {high_op} {self.high}"
        if self.low is not None:
            return f"{key} {'>=' if self.low_inclusive else '>'} {self.low}"
        if self.high is not None:
            return f"{key} {high_op} {self.high}"
        return f"{key} finite"


def _at_least(minimum: float) -> dict:
    """Field metadata: the value must be >= minimum."""
    return {"range": Range(low=minimum)}


def _above(minimum: float) -> dict:
    """Field metadata: the value must be > minimum."""
    return {"range": Range(low=minimum, low_inclusive=False)}


def _between(low: float, high: float, *, low_inclusive: bool = True, high_inclusive: bool) -> dict:
    """Field metadata: low <= value <= high, either bound exclusive on request."""
    return {"range": Range(low=low, high=high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)}


def _items(length: int, low: float, high: float, *, high_inclusive: bool) -> dict:
    """Field metadata of a list: exactly `length` items, each low <= item <= high (or < high)."""
    return {"range": Range(low=low, high=high, high_inclusive=high_inclusive, length=length)}


# torch.manual_seed takes [-2**63, 2**64 - 1]; the run facts store the seed as a signed 64-bit int.
MAX_SEED = 2**63 - 1


@dataclass
class DataConfig:
    path: str = "data/events.h5"
    batch_size: int = field(default=512, metadata=_at_least(1))
    eval_batch_size: int = field(default=0, metadata=_at_least(0))  # 0: same as batch_size
    loader: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_mb: float = field(default=2048.0, metadata=_at_least(0))  # hold a split in RAM below this
    device_budget_mb: float = field(default=4096.0, metadata=_at_least(0))  # ... and on the GPU below this
    block_rows: int = field(default=0, metadata=_at_least(0))  # 0: aligned to the file's chunking
    num_workers: int = field(default=0, metadata=_at_least(0))
    max_events: int = field(default=0, metadata=_at_least(0))  # 0: all; caps each split for quick runs


@dataclass
class VQConfig:
    codebook_size: int = field(default=256, metadata=_at_least(2))
    code_dim: int = field(default=8, metadata=_at_least(1))
    beta: float = field(default=0.25, metadata=_at_least(0))  # commitment weight
    decay: float = field(default=0.99, metadata=_between(0, 1, high_inclusive=False))  # EMA decay of the codebook; 1: frozen
    eps: float = field(default=1e-5, metadata=_above(0))  # Laplace smoothing of the usage counts; 0 divides by zero
    dead_code_threshold: float = field(default=0.01, metadata=_at_least(0))  # EMA usage below this: revive


@dataclass
class DiffusionConfig:
    """The diffusion_autoencoder's denoising process (thesis_lib/models/diffusion.py)."""

    steps: int = field(default=100, metadata=_at_least(2))  # timesteps of the cosine noise schedule
    sample_steps: int = field(default=10, metadata=_at_least(1))  # DDIM steps of forward()'s reconstruction
    eval_timesteps: int = field(default=4, metadata=_at_least(1))  # fixed t values of eval losses and scores
    denoiser_hidden: int = field(default=0, metadata=_at_least(0))  # 0: model.hidden_dim

    def __post_init__(self) -> None:
        # A cross-field rule: the per-field minimums are checked before this runs.
        if self.sample_steps > self.steps:
            raise ConfigError(
                f"model.diffusion.sample_steps={self.sample_steps} must be <= model.diffusion.steps={self.steps}: "
                "DDIM samples on a subsequence of the schedule's timesteps"
            )


@dataclass
class AdversarialConfig:
    """The gan_autoencoder's discriminator game (thesis_lib/models/adversarial.py)."""

    weight: float = field(default=0.1, metadata=_at_least(0))  # of D's loss in the total; 0: no game
    # Gradient reversal scale: how hard the autoencoder plays against D; 0: D only watches. 1.0 (the
    # textbook minimax) oscillated on the synthetic events (val loss_recon 1.16, 1.22, 0.97 ...);
    # 0.1 tracked the plain autoencoder's curve (1.15, 1.04, 0.92 ...) with D still ahead.
    grl_lambda: float = field(default=0.1, metadata=_at_least(0))
    disc_hidden: int = field(default=0, metadata=_at_least(0))  # 0: model.hidden_dim


@dataclass
class ModelConfig:
    task: str = field(default="autoencoder", metadata=_registry("task"))
    encoder: str = field(default="mlp", metadata=_registry("encoder"))
    bottleneck: str = field(default="identity", metadata=_registry("bottleneck"))
    decoder: str = field(default="mlp", metadata=_registry("decoder"))
    latent_dim: int = field(default=32, metadata=_at_least(1))
    hidden_dim: int = field(default=128, metadata=_at_least(1))
    num_layers: int = field(default=2, metadata=_at_least(1))
    num_heads: int = field(default=4, metadata=_at_least(1))
    token_embed_dim: int = field(default=16, metadata=_at_least(1))
    dropout: float = field(default=0.0, metadata=_between(0, 1, high_inclusive=False))  # 1 zeroes every activation
    globals_beta: float = field(default=0.1, metadata=_at_least(0))  # weight of the globals head's loss
    tokens_weight: float = field(default=1.0, metadata=_at_least(0))  # weight of the token-type loss
    freeze: list[str] = field(default_factory=list)  # dotted submodule names, e.g. ["encoder"]
    vq: VQConfig = field(default_factory=VQConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = field(default=1e-3, metadata=_above(0))
    weight_decay: float = field(default=0.0, metadata=_at_least(0))
    momentum: float = field(default=0.9, metadata=_between(0, 1, high_inclusive=False))  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_items(2, 0, 1, high_inclusive=False))
    grad_clip: float = field(default=0.0, metadata=_at_least(0))  # max grad norm; 0: off
    scheduler: Literal["none", "plateau"] = "none"
    plateau_factor: float = field(default=0.5, metadata=_between(0, 1, low_inclusive=False, high_inclusive=False))
    plateau_patience: int = field(default=2, metadata=_at_least(0))


# trainer.resume_from="auto": continue the newest unfinished run of this run_name and config under
# output_root, else start a new one (thesis_lib.facts.resume; thesis_lib.train resolves it).
AUTO_RESUME = "auto"


@dataclass
class ProfileConfig:
    """trainer.profile: torch.profiler over a window of one epoch's training batches (thesis_lib/train/profiling.py).

    The window counts the epoch's batches from its first: `wait_steps` untraced, `warmup_steps`
    traced and thrown away (the profiler settles), then `active_steps` kept, one profiler step per
    batch whatever trainer.sync_every_n_steps is. Written to <run_dir>/profile/: trace.json (Chrome
    trace), top_ops.txt / top_ops.csv, profile.json. Off: the run builds no profiler at all.
    """

    enabled: bool = False
    epoch: int = field(default=0, metadata=_at_least(0))  # the epoch whose first batches are traced (from 0)
    wait_steps: int = field(default=1, metadata=_at_least(0))  # batches skipped first (the loader warming up)
    warmup_steps: int = field(default=1, metadata=_at_least(0))  # traced but not kept: the profiler's own start-up
    active_steps: int = field(default=5, metadata=_at_least(1))  # batches kept in the trace and the tables
    record_shapes: bool = False  # input shapes per op (bigger trace; the tables group by op name either way)
    profile_memory: bool = True  # memory allocated and freed per op
    with_stack: bool = False  # Python source locations per op (much bigger trace)

    @property
    def window_batches(self) -> int:
        """Batches from the epoch's start to the window's last traced one."""
        return self.wait_steps + self.warmup_steps + self.active_steps


@dataclass
class TrainerConfig:
    epochs: int = field(default=10, metadata=_at_least(1))
    seed: int = field(default=0, metadata=_between(0, MAX_SEED, high_inclusive=True))
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum_steps: int = field(default=1, metadata=_at_least(1))
    early_stopping_patience: int = field(default=0, metadata=_at_least(0))  # 0: off
    early_stopping_min_delta: float = field(default=0.0, metadata=_at_least(0))
    sync_every_n_steps: int = field(default=50, metadata=_at_least(1))  # how often the host reads metrics
    max_steps_per_epoch: int = field(default=0, metadata=_at_least(0))  # 0: the whole split
    resume_from: Union[str, None] = None  # a run directory or its last.pt, or AUTO_RESUME ("auto")
    test: bool = True  # evaluate the best weights on the test split at the end
    profile: ProfileConfig = field(default_factory=ProfileConfig)  # torch.profiler over a few steps; off by default


@dataclass
class TelemetryConfig:
    enabled: bool = True
    # NVML refreshes its readings about every 100 ms: faster polling only repeats values.
    interval_s: float = field(default=0.5, metadata=_at_least(0.1))
    energy_interval_s: float = field(default=1.0, metadata=_at_least(0.1))  # the energy counter read is slow (~4 ms)


@dataclass
class ReportConfig:
    enabled: bool = True  # render report/ (report.md, telemetry.png, report.html) when a run ends; fail-soft
    pdf: bool = False  # also write report/report.pdf through Chromium (needs `apt-get install chromium`)


@dataclass
class LoggingConfig:
    print_every_n_steps: int = field(default=0, metadata=_at_least(0))  # 0: one line per epoch
    update_interval_ms: int = field(default=250, metadata=_at_least(10))  # dashboards redraw at most this often
    # Training-time figure families drawn into <run_dir>/figures/ (thesis_lib.monitoring); empty: off.
    figures: list[str] = field(default_factory=list)
    figures_every_n_epochs: int = field(default=1, metadata=_at_least(1))


@dataclass
class TrackingConfig:
    # Experiment trackers the run is mirrored to live (thesis_lib.tracking); empty: none, nothing imported.
    # `thesis-lib sync <run_dir> --to tensorboard` pushes a finished run from its facts alone.
    backends: list[str] = field(default_factory=list)
    # "": <run_dir>/tensorboard/; else a shared log directory that gets <tensorboard_dir>/<run_id>/
    # (relative to the working directory), so `tensorboard --logdir <tensorboard_dir>` shows every run.
    tensorboard_dir: str = ""
    # "": a local store under output_root (sqlite:///<output_root>/mlflow.db, artifacts in
    # <output_root>/mlartifacts/); else any MLflow tracking URI (http://host:5000, databricks, ...).
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "thesis-lib"  # created when missing
    wandb_project: str = "thesis-lib"
    wandb_entity: str = ""  # "": the account's default entity
    wandb_mode: str = "offline"  # "offline": kept in the run directory for `wandb sync`; "online": streamed
    wandb_dir: str = ""  # "": the run directory (its wandb/ holds W&B's files); else a shared directory


@dataclass
class Config:
    output_root: str = "outputs"
    run_name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        """The resolved config as plain, YAML-safe data (what `config.yaml` holds)."""
        return dataclasses.asdict(self)


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def load_config(
    source: Union[Config, Mapping, str, Path, None] = None,
    overrides: Union[Sequence[str], Mapping, None] = None,
) -> Config:
    """Build a validated Config.

    Args:
        source: a Config, a (nested) dict, a path to a YAML file, or None for the defaults.
        overrides: dotted `key=value` strings (values parsed as YAML) or a dict, nested or with
            dotted keys; applied on top of `source`.

    Returns:
        The validated Config.

    Raises:
        ConfigError: an unknown key or value, a wrong type, or an unreadable YAML file; the
            message names the key, the bad value and what is allowed.
    """
    if source is None:
        base: dict = {}
    elif isinstance(source, Config):
        base = source.to_dict()
    elif isinstance(source, Mapping):
        base = _expand_dotted(source, where="config")
    elif isinstance(source, (str, Path)):
        base = _read_yaml(Path(source))
    else:
        raise ConfigError(f"config must be a dict, a Config or a YAML path, got {type(source).__name__}")
    pairs = parse_overrides(overrides)
    for key, value in pairs:
        _set_dotted(base, key, value)
    cfg = _build(Config, base, prefix="")
    cfg._origin = _origin_of(source, overrides, pairs)  # not a field: config.yaml never holds it
    return cfg


def config_origin(cfg: Config) -> dict:
    """How `cfg` was made, recorded in the run's env.json and on_start (`launch`), never in config.yaml.

    Returns:
        {"config_source": {"kind": "yaml", "path", "resolved"} | {"kind": "dict" | "Config" |
        "default"}, "overrides": [each dotted string as given; a mapping as one dict of dotted
        keys], plus what `note_launch` added}. `load_config(a_config, more)` keeps a_config's
        origin and appends `more`; a Config not made by `load_config` reads {"kind": "Config"}.
    """
    origin = getattr(cfg, "_origin", None)
    if not isinstance(origin, dict):
        return {"config_source": {"kind": "Config"}, "overrides": []}
    return {**origin, "config_source": dict(origin["config_source"]), "overrides": list(origin["overrides"])}


def note_launch(cfg: Config, **launch: Any) -> Config:
    """Add how the run is launched (e.g. a sweep's executor, directory and point) to `cfg`'s origin; returns cfg."""
    cfg._origin = {**config_origin(cfg), **launch}
    return cfg


def _origin_of(source: Any, overrides: Any, pairs: list) -> dict:
    """The origin `load_config(source, overrides)` gives its Config (see `config_origin`)."""
    if isinstance(source, Config):
        origin = config_origin(source)
    elif isinstance(source, (str, Path)):
        origin = {"config_source": {"kind": "yaml", "path": str(source), "resolved": os.path.realpath(source)},
                  "overrides": []}
    else:
        origin = {"config_source": {"kind": "default" if source is None else "dict"}, "overrides": []}
    if isinstance(overrides, str):
        origin["overrides"].append(overrides)
    elif isinstance(overrides, Mapping):
        if pairs:
            origin["overrides"].append(dict(pairs))
    elif overrides is not None:
        origin["overrides"].extend(overrides)
    return origin


def parse_overrides(overrides: Union[Sequence[str], Mapping, None]) -> list[tuple[str, Any]]:
    """Turn `["model.bottleneck=vq", ...]` or a dict into (dotted key, value) pairs."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return list(flatten_dict(dict(overrides), keep_empty_dicts=False).items())
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.bottleneck=vq)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = load_yaml(raw, prefix=key) if raw.strip() else ""
        except DuplicateKeyError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from None
        pairs.append((key, value))
    return pairs


def flatten_dict(data: Mapping, prefix: str = "", *, keep_empty_dicts: bool = True) -> dict:
    """`{"model": {"vq": {"beta": 1}}}` -> `{"model.vq.beta": 1}`."""
    flat: dict = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and (value or not keep_empty_dicts):
            flat.update(flatten_dict(value, f"{dotted}.", keep_empty_dicts=keep_empty_dicts))
        else:
            flat[dotted] = value
    return flat


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data).__name__}")
    return _expand_dotted(data, where=str(path))


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping holds a key twice (yaml.safe_load would silently keep the last value)."""

    def __init__(self, key: str, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(
            f"duplicate key '{key}' at line {line} (first at line {first_line}); "
            "YAML would keep only the last value: give each key once"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, at any nesting level."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._key_paths = _mapping_paths(node, getattr(self, "key_prefix", ""))
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            where = self._key_paths.get(id(node), "")
            first_lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base constructor refuses an unhashable key
                line = key_node.start_mark.line + 1
                if key in first_lines:
                    raise DuplicateKeyError(f"{where}.{key}" if where else str(key), line, first_lines[key])
                first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _mapping_paths(root: yaml.Node, prefix: str) -> dict[int, str]:
    """id(mapping node) -> its dotted key path ("" at the top, or `prefix`), for error messages."""
    paths: dict[int, str] = {}
    stack = [(root, prefix)]
    while stack:  # depth first in document order, so an anchored node is named where it is defined
        node, path = stack.pop()
        if id(node) in paths:
            continue  # an alias of a node already named
        children: list = []
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                children.append((value_node, f"{path}.{name}" if path else name))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        else:
            continue
        paths[id(node)] = path
        stack.extend(reversed(children))
    return paths


def load_yaml(text: str, prefix: str = "") -> Any:
    """yaml.safe_load, but a key given twice in one mapping raises DuplicateKeyError.

    Args:
        text: the YAML document.
        prefix: the dotted key the document sits under (an override's key), named in errors.

    Raises:
        DuplicateKeyError: naming the dotted key and the line (1-based) of both occurrences.
        yaml.YAMLError: the text is not valid YAML.
    """
    loader = _UniqueKeyLoader(text)
    loader.key_prefix = prefix
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _expand_dotted(data: Mapping, where: str, prefix: str = "") -> dict:
    """Deep-copy a mapping, expanding dotted keys so `{"model.latent_dim": 8}` nests.

    One mapping that sets a key twice, once dotted and once nested (`{"model.dropout": 0.1,
    "model": {"dropout": 0.2}}`), is refused like a duplicate YAML key: which one was meant?
    """
    result: dict = {}
    given: dict[str, str] = {}  # each leaf's dotted path -> the key that set it
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: config keys must be strings, got {key!r}")
        if isinstance(value, Mapping):
            value = _expand_dotted(value, where, prefix=f"{prefix}{key}.")
        for leaf in _leaf_paths(key, value):
            clash = next((path for path in given if path == leaf or path.startswith(leaf + ".")
                          or leaf.startswith(path + ".")), None)
            if clash is not None:
                raise ConfigError(f"{where}: {prefix}{leaf} is given twice (as {prefix + given[clash]!r} and as "
                                  f"{prefix + key!r}); give each key once")
        given.update({leaf: key for leaf in _leaf_paths(key, value)})
        _set_dotted(result, key, value)
    return result


def _leaf_paths(key: str, value: Any) -> list[str]:
    """The dotted paths of the leaves `key: value` sets (a non-empty mapping is not itself a leaf)."""
    if isinstance(value, Mapping) and value:
        return [path for sub, inner in value.items() for path in _leaf_paths(f"{key}.{sub}", inner)]
    return [key]


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None or not isinstance(child, Mapping) else dict(child)
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), dict):
        for key, sub in value.items():
            _set_dotted(node[last], key, sub)
    else:
        node[last] = value


def _suggest(bad: str, allowed: Sequence[str]) -> str:
    match = did_you_mean(bad, allowed)
    return f" — did you mean {match!r}?" if match else ""


def _build(cls: type, data: Any, prefix: str):
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            allowed = list(fields)
            section = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"unknown config key '{prefix}{key}'{_suggest(key, allowed)} "
                f"allowed keys in {section}: {', '.join(allowed)}"
            )
    kwargs = {}
    for name, fld in fields.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            # An absent section is built from {} so its defaults pass the same checks.
            kwargs[name] = _build(hint, data.get(name, {}), prefix=f"{key}.")
        elif name in data:
            kwargs[name] = _check_value(key, data[name], hint, fld.metadata)
    _check_ranges(cls, kwargs, data, prefix)  # before cls(): a __post_init__ rule sees in-range values
    config = cls(**kwargs)
    _check_registry_defaults(config, prefix)
    if cls is LoggingConfig:
        check_figure_families(config.figures, f"{prefix}figures")
    if cls is TrackingConfig:
        check_tracking_backends(config.backends, f"{prefix}backends")
        if config.wandb_mode not in WANDB_MODES:
            raise ConfigError(f"{prefix}wandb_mode={config.wandb_mode!r} is not a W&B mode; allowed: {', '.join(WANDB_MODES)}")
    if cls is TrainerConfig and not _DEVICE_PATTERN.match(config.device):
        raise ConfigError(
            f"{prefix}device={config.device!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps"
        )
    if cls is TrainerConfig:
        _check_profile_window(config, prefix)
    return config


def _check_profile_window(trainer: TrainerConfig, prefix: str) -> None:
    """trainer.profile's window must lie inside the run: its epoch is run, its batches fit max_steps_per_epoch."""
    profile, key = trainer.profile, f"{prefix}profile"
    if not profile.enabled:
        return
    if profile.epoch >= trainer.epochs:
        raise ConfigError(f"{key}.epoch={profile.epoch} is not an epoch of this run: {prefix}epochs={trainer.epochs} "
                          f"runs epochs 0..{trainer.epochs - 1}")
    if trainer.max_steps_per_epoch and profile.window_batches > trainer.max_steps_per_epoch:
        raise ConfigError(
            f"{key} needs {profile.window_batches} batches (wait_steps {profile.wait_steps} + warmup_steps "
            f"{profile.warmup_steps} + active_steps {profile.active_steps}) but {prefix}max_steps_per_epoch="
            f"{trainer.max_steps_per_epoch} ends each epoch before that; shorten the window or raise the cap"
        )


def _check_registry_defaults(config: Any, prefix: str) -> None:
    """Validate registry-backed defaults too: a part removed from the registry must not pass silently."""
    for fld in dataclasses.fields(config):
        if "registry" in fld.metadata:
            _check_choice(f"{prefix}{fld.name}", getattr(config, fld.name), _registered(fld.metadata["registry"]))


def _registered(kind: str) -> tuple[str, ...]:
    return tuple(sorted(MODEL_PART_NAMES[kind]))


def check_figure_families(families: Iterable[str], key: str = "logging.figures") -> tuple[str, ...]:
    """Validate a list of figure-family names.

    Args:
        families: the names a config lists, e.g. ["losses", "recon"]; any of FIGURE_FAMILIES.
        key: the config key named in error messages.

    Returns:
        The names as a tuple, in the order given.

    Raises:
        ConfigError: a name is not a string or not a family (the message names the key, the bad
            value, the nearest family and the allowed ones), or a name is listed twice.
    """
    return _check_names(families, key, FIGURE_FAMILIES, "figure family")


def check_tracking_backends(backends: Iterable[str], key: str = "tracking.backends") -> tuple[str, ...]:
    """Validate tracking.backends: each one of TRACKING_BACKENDS, none twice.

    Raises:
        ConfigError: the message names the key, the bad value, the nearest backend and the allowed ones.
    """
    return _check_names(backends, key, TRACKING_BACKENDS, "tracking backend")


def _check_names(values: Iterable[str], key: str, allowed: Sequence[str], noun: str) -> tuple[str, ...]:
    """A config list of names, each one of `allowed` and none twice, as a tuple in the order given;
    ConfigError naming the key, the bad value, the nearest allowed name and all of them."""
    if isinstance(values, (str, bytes)):
        raise ConfigError(f"{key}={values!r}: expected a list of {noun} names, e.g. [{values!r}]")
    listed = ", ".join(allowed)
    names: list[str] = []
    for name in values:
        if not isinstance(name, str):
            raise ConfigError(f"{key}: {name!r} is not a {noun} name (a string); allowed: {listed}")
        if name not in allowed:
            match = did_you_mean(name, allowed)
            hint = f" — did you mean {match!r}?" if match else f" is not a {noun};"
            raise ConfigError(f"{key}: {name!r}{hint} allowed: {listed}")
        if name in names:
            raise ConfigError(f"{key}: {name!r} is listed twice; list each {noun} once")
        names.append(name)
    return tuple(names)


def _check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r}{_suggest(str(value), [str(a) for a in allowed])} "
            f"allowed: {', '.join(str(a) for a in allowed)}"
        )


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return f"list of {_type_name(item)}"
    return getattr(hint, "__name__", str(hint))


def _check_value(key: str, value: Any, hint: Any, metadata: Mapping) -> Any:
    checked = _coerce(key, value, hint)
    if "registry" in metadata:
        _check_choice(key, checked, _registered(metadata["registry"]))
    return checked


def _check_ranges(cls: type, values: Mapping, raw: Mapping, prefix: str) -> None:
    """The range pass of one dataclass: every field that declares a Range, given or default.

    `values` are the coerced given values, `raw` the values as written (named in the message).
    """
    for fld in dataclasses.fields(cls):
        rng = fld.metadata.get("range")
        if rng is None:
            continue
        if fld.name in values:
            value, written = values[fld.name], raw[fld.name]
        else:
            value = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
            written = value
        check_range(f"{prefix}{fld.name}", value, rng, written)


def check_range(key: str, value: Any, rng: Range, written: Any = None) -> None:
    """Raise ConfigError unless `value` lies in `rng`; the message names the key, the value and the range.

    Args:
        key: the dotted config key, e.g. "model.dropout".
        value: the coerced value (a number, a list of numbers for a Range with a length, or None).
        rng: the field's Range.
        written: the value as written in the config (default: `value`), named in the message.

    Raises:
        ConfigError: e.g. "model.dropout=5 is out of range: expected 0 <= model.dropout < 1".
    """
    written = value if written is None else written
    if value is None:
        return
    if rng.length is not None:
        if len(value) != rng.length:
            raise ConfigError(
                f"{key}={written!r} has {len(value)} value{'s' if len(value) != 1 else ''}: "
                f"expected {rng.length} values, each {rng.describe(f'{key}[i]')}"
            )
        items = list(written) if isinstance(written, Sequence) and len(written) == len(value) else value
        for i, (item, item_written) in enumerate(zip(value, items)):
            check_range(f"{key}[{i}]", item, dataclasses.replace(rng, length=None), item_written)
        return
    if rng.contains(value):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={written!r} is not a finite number: expected {rng.describe(key)}")
    raise ConfigError(f"{key}={written!r} is out of range: expected {rng.describe(key)}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        _check_choice(key, value, allowed)
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}")
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}")
        return [_coerce(f"{key}[{i}]", item, item_hint) for i, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        # bool is an int subclass; `epochs: true` is a mistake, not 1.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `3e-4` (no dot) as a string; as a float field's value it means 0.0003.
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a new field type without a rule here is a programming error
        raise TypeError(f"config field {key} has unsupported type {hint!r}")
    raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}")
