"""A sweep's points: the grid x seeds expansion, point names, and the hashes that identify them.

A point is the base config plus one value per grid key plus one seed (`trainer.seed`). Every
point's config is built with `load_config` here, before anything runs, so a bad grid key or
value fails the whole sweep at once with the ConfigError text and the point's name.

Two hashes make re-running a sweep safe: the *spec hash* (resolved base + grid + seeds) says
whether an existing sweep directory holds this same sweep, and each point's *config hash* (its
resolved config without the keys the sweep itself sets: output_root, run_name,
trainer.resume_from) finds the run that already trained it.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from ..config import Config, load_config, load_yaml
from ..errors import ConfigError
from ..record.schema import config_hash

__all__ = [
    "SweepPoint",
    "expand_grid",
    "point_name",
    "point_config_hash",
    "spec_hash",
    "resolve_base",
    "parse_grid_arg",
    "parse_seeds_arg",
]

# Keys the sweep sets on every point; the grid may not sweep them and the hashes ignore them.
SWEEP_OWNED_KEYS = ("output_root", "run_name", "trainer.resume_from")


@dataclass
class SweepPoint:
    """One run of a sweep: its name, the grid values and seed it adds to the base, its resolved config."""

    name: str
    overrides: dict  # dotted key -> value, in grid order (the seed is not among them)
    seed: int
    config: dict  # the resolved config (output_root and run_name are set when the sweep runs)
    config_hash: str = field(default="")


def resolve_base(base: Union[Config, Mapping, str, Path, None],
                 overrides: Union[Sequence[str], Mapping, None] = None) -> dict:
    """The base config plus its overrides, resolved with `load_config` (defaults filled in), as a plain dict.

    Raises:
        ConfigError: the base config itself is invalid (the message says so).
    """
    try:
        return load_config(base, overrides).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"sweep base config: {exc}") from None


def expand_grid(
    base: Union[Config, Mapping, str, Path, None],
    grid: Optional[Mapping[str, Sequence]],
    seeds: Optional[Sequence[int]] = None,
) -> list[SweepPoint]:
    """Every (grid values x seed) combination as a validated SweepPoint, in a stable order.

    The order is the cartesian product in grid-key order with the seed varying fastest, so
    the seeds of one grid point run side by side.

    Args:
        base: the base config (dict, Config, YAML path or None for the defaults).
        grid: dotted key -> list of values; empty or None sweeps the seeds alone.
        seeds: values of trainer.seed; None keeps the base config's seed (one run per grid point).

    Returns:
        The points, each with its resolved config and config hash.

    Raises:
        ConfigError: a grid value list that is empty or not a list, a key the sweep owns
            (output_root, run_name, trainer.resume_from, or trainer.seed when seeds are given),
            an empty seed list or a non-integer seed, two points with the same name, or a point
            whose config does not validate (the message names the point).
    """
    base_dict = resolve_base(base)
    grid = _check_grid(grid, seeds_given=seeds is not None)
    seeds = _check_seeds(seeds, default=base_dict["trainer"]["seed"])
    keys = list(grid)
    points: list[SweepPoint] = []
    seen: dict[str, dict] = {}
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, values))
        for seed in seeds:
            name = point_name(overrides, seed)
            if name in seen:
                raise ConfigError(
                    f"sweep grid gives two points the same name {name!r} ({seen[name]} and {overrides}); "
                    "make the values distinct"
                )
            seen[name] = overrides
            try:
                config = load_config(base_dict, {**overrides, "trainer.seed": seed, "run_name": name}).to_dict()
            except ConfigError as exc:
                raise ConfigError(f"sweep point {name}: {exc}") from None
            points.append(SweepPoint(name, overrides, seed, config, point_config_hash(config)))
    return points


def point_name(overrides: Mapping[str, Any], seed: int) -> str:
    """`bottleneck=vq,latent_dim=16,seed=1`: the last part of each key, or the whole key where two would clash."""
    short = [key.rsplit(".", 1)[-1] for key in overrides]
    labels = [s if short.count(s) == 1 and s != "seed" else key for s, key in zip(short, overrides)]
    parts = [f"{label}={_format_value(value)}" for label, value in zip(labels, overrides.values())]
    return ",".join(parts + [f"seed={seed}"])


def point_config_hash(config: Mapping) -> str:
    """The config hash that identifies a point's run: the resolved config without the sweep-owned keys."""
    return config_hash(_without_owned_keys(config))


def spec_hash(base: Mapping, grid: Mapping[str, Sequence], seeds: Sequence[int]) -> str:
    """The fingerprint of a whole sweep: resolved base (without sweep-owned keys), grid and seeds."""
    return config_hash({"base": _without_owned_keys(base), "grid": {k: list(v) for k, v in grid.items()},
                        "seeds": list(seeds)})


def _without_owned_keys(config: Mapping) -> dict:
    stripped = copy.deepcopy(dict(config))
    for dotted in SWEEP_OWNED_KEYS:
        node = stripped
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return stripped


def _check_grid(grid: Optional[Mapping[str, Sequence]], *, seeds_given: bool) -> dict[str, list]:
    """The grid as dotted key -> list, or a ConfigError that names the bad key."""
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"sweep grid must be a mapping of dotted key -> list of values, got {type(grid).__name__}")
    checked: dict[str, list] = {}
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep grid key {key!r} is not a dotted config key (e.g. model.bottleneck)")
        owned = SWEEP_OWNED_KEYS + (("trainer.seed",) if seeds_given else ())
        if key in owned:
            hint = " (use seeds=[...])" if key == "trainer.seed" else " (the sweep sets it for every point)"
            raise ConfigError(f"sweep grid key {key!r} cannot be swept{hint}")
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ConfigError(f"sweep grid key {key!r}: expected a list of values, got {values!r}")
        if len(values) == 0:
            raise ConfigError(f"sweep grid key {key!r} has an empty list of values; give at least one value")
        checked[key] = list(values)
    return checked


def _check_seeds(seeds: Optional[Sequence[int]], *, default: int) -> list[int]:
    if seeds is None:
        return [default]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise ConfigError(f"sweep seeds must be a list of integers, got {seeds!r}")
    if len(seeds) == 0:
        raise ConfigError("sweep seeds is an empty list; give at least one seed (or None to keep the base config's)")
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool)]
    if bad:
        raise ConfigError(f"sweep seeds must be integers; got {bad} in {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep seeds {list(seeds)} repeat a seed; each seed must appear once")
    return list(seeds)


def _format_value(value: Any) -> str:
    """A grid value as it appears in a point name: plain for scalars, compact JSON for lists and dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def parse_grid_arg(text: str) -> tuple[str, list]:
    """`model.latent_dim=16,32` -> ("model.latent_dim", [16, 32]); values parsed as YAML.

    A value list written as one YAML list is taken whole, for values that hold commas:
    `model.freeze=[[encoder],[]]`.

    Raises:
        ConfigError: no `=`, an empty key, or a value that is not valid YAML.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--grid {text!r} is not of the form key=value1,value2 (e.g. model.bottleneck=identity,vq)")
    if not raw.strip():
        return key.strip(), []
    try:
        whole = load_yaml(raw, key.strip()) if raw.lstrip().startswith("[") else None
    except yaml.YAMLError:
        whole = None  # e.g. `[a],[b]`: not one list, so split at the commas below
    if isinstance(whole, list):
        return key.strip(), whole
    try:
        return key.strip(), [load_yaml(part, key.strip()) for part in raw.split(",")]
    except yaml.YAMLError as exc:
        raise ConfigError(f"--grid {text!r}: a value is not valid YAML ({exc})") from None


def parse_seeds_arg(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3") from None
