"""Every numeric config key has a declared valid range, checked when the config is built.

A value outside it is a ConfigError naming the dotted key, the value and the range, instead of a
run that trains on nonsense or fails deep inside torch. A YAML key given twice is an error too.
"""

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

import pytest

from thesis_lib.config import Config, load_config
from thesis_lib.errors import ConfigError

# Settings a boundary value needs to pass the cross-field rules (sample_steps <= steps).
_COMPANIONS = {"model.diffusion.steps": {"model.diffusion.sample_steps": 1}}


def _numeric_kind(hint: Any) -> str | None:
    """"int", "float", "list" (of numbers) or None for a non-numeric field; Optional[...] unwrapped."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        kinds = {_numeric_kind(a) for a in typing.get_args(hint) if a is not type(None)}
        kinds.discard(None)
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "list" if args and all(_numeric_kind(a) in ("int", "float") for a in args) else None
    if origin is Literal:
        return None
    if hint is bool:  # bool is an int subclass, but not a number in a config
        return None
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    return None


def _item_kind(hint: Any) -> str:
    (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
    return _numeric_kind(item)


def _walk(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type hint) of every field of every dataclass reachable from Config."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        hint = hints[fld.name]
        if dataclasses.is_dataclass(hint):
            yield from _walk(hint, f"{prefix}{fld.name}.")
        else:
            yield f"{prefix}{fld.name}", fld, hint


NUMERIC = [(key, fld, hint, _numeric_kind(hint)) for key, fld, hint in _walk() if _numeric_kind(hint)]
INTS_AND_FLOATS = [(key, kind) for key, _, _, kind in NUMERIC if kind in ("int", "float")]


def _default(fld: dataclasses.Field) -> Any:
    return fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()


def _outside(kind: str, bound: float, inclusive: bool, direction: float) -> Any:
    """The value just past `bound` in `direction` (-inf: below the low bound, +inf: above the high)."""
    if not inclusive:
        return int(bound) if kind == "int" else float(bound)
    if kind == "int":
        return int(bound) + (1 if direction > 0 else -1)
    return math.nextafter(float(bound), direction)


def _inside(kind: str, bound: float, inclusive: bool, direction: float) -> Any:
    """The value just inside `bound`, `direction` pointing out of the range."""
    if inclusive:
        return int(bound) if kind == "int" else float(bound)
    if kind == "int":
        return int(bound) - (1 if direction > 0 else -1)
    return math.nextafter(float(bound), -direction)


def _refused(overrides: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def _bound_cases(kind: str, rng: Any) -> list[tuple[Any, Any]]:
    """(just outside, just inside) per bounded side of `rng`."""
    cases = []
    if rng.low is not None:
        cases.append((_outside(kind, rng.low, rng.low_inclusive, -math.inf), _inside(kind, rng.low, rng.low_inclusive, -math.inf)))
    if rng.high is not None:
        cases.append((_outside(kind, rng.high, rng.high_inclusive, math.inf), _inside(kind, rng.high, rng.high_inclusive, math.inf)))
    return cases


def test_the_walk_sees_the_numeric_fields():
    keys = {key for key, *_ in NUMERIC}
    # The walk itself must work, or the per-field tests below would pass on nothing.
    assert {"data.batch_size", "model.dropout", "model.vq.decay", "model.diffusion.steps", "optim.betas",
            "optim.plateau_factor", "trainer.seed", "telemetry.interval_s", "logging.update_interval_ms"} <= keys
    assert "trainer.test" not in keys and "telemetry.enabled" not in keys  # booleans are not numbers
    assert len(keys) >= 45


def test_every_numeric_field_declares_a_range():
    missing = [key for key, fld, _, _ in NUMERIC if fld.metadata.get("range") is None]
    assert not missing, f"numeric config fields without a declared range: {missing}"


@pytest.mark.parametrize("key,fld,hint,kind", NUMERIC, ids=[key for key, *_ in NUMERIC])
def test_a_value_just_outside_the_range_names_the_key_and_the_value(key, fld, hint, kind):
    rng = fld.metadata.get("range")
    assert rng is not None, f"{key} declares no range"
    default = _default(fld)
    companions = _COMPANIONS.get(key, {})
    if kind == "list":
        assert rng.length is not None, f"{key}: a list field's range names its length"
        assert len(default) == rng.length
        item_kind = _item_kind(hint)
        bounds = _bound_cases(item_kind, rng)
        assert bounds, f"{key}: a list of numbers needs bounds on its items"
        for outside, inside in bounds:
            for i in range(rng.length):
                bad = list(default)
                bad[i] = outside
                message = _refused({key: bad, **companions})
                assert f"{key}[{i}]={outside!r} is out of range: expected " in message, message
                good = list(default)
                good[i] = inside
                assert getattr_dotted(load_config(None, {key: good, **companions}), key) == good
        for wrong in (default[:-1], list(default) + [default[-1]]):
            message = _refused({key: wrong})
            assert f"{key}={wrong!r} has {len(wrong)} value" in message and f"expected {rng.length} values" in message
        return
    bounds = _bound_cases(kind, rng)
    assert bounds, f"{key}: a range with no bound checks nothing"
    for outside, inside in bounds:
        message = _refused({key: outside, **companions})
        assert message.startswith(f"{key}={outside!r} is out of range: expected "), message
        assert key in message.split("expected ", 1)[1], message  # the range is stated on the key
        assert getattr_dotted(load_config(None, {key: inside, **companions}), key) == inside


def getattr_dotted(config: Config, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("key,kind", INTS_AND_FLOATS, ids=[key for key, _ in INTS_AND_FLOATS])
def test_a_bool_is_not_a_number(key, kind):
    message = _refused({key: True})
    assert message == f"{key}=True: expected {kind}, got bool"


def test_a_bool_is_not_a_list_item():
    assert "optim.betas[0]=True: expected float, got bool" in _refused({"optim.betas": [True, 0.999]})


REPORTED_CASES = [
    ("model.dropout=5", "model.dropout=5 is out of range: expected 0 <= model.dropout < 1"),
    ("model.dropout=1", "model.dropout=1 is out of range: expected 0 <= model.dropout < 1"),
    ("optim.plateau_factor=3", "optim.plateau_factor=3 is out of range: expected 0 < optim.plateau_factor < 1"),
    ("optim.plateau_factor=0", "optim.plateau_factor=0 is out of range: expected 0 < optim.plateau_factor < 1"),
    ("model.vq.decay=7", "model.vq.decay=7 is out of range: expected 0 <= model.vq.decay < 1"),
    ("optim.lr=0", "optim.lr=0 is out of range: expected optim.lr > 0"),
    (f"trainer.seed={2**70}", f"trainer.seed={2**70} is out of range: expected 0 <= trainer.seed <= {2**63 - 1}"),
    (f"trainer.seed={2**63}", f"trainer.seed={2**63} is out of range: expected 0 <= trainer.seed <= {2**63 - 1}"),
    ("trainer.seed=-1", f"trainer.seed=-1 is out of range: expected 0 <= trainer.seed <= {2**63 - 1}"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] has 1 value: expected 2 values, each 0 <= optim.betas[i] < 1"),
    ("optim.betas=[0.9, 0.99, 0.999]",
     "optim.betas=[0.9, 0.99, 0.999] has 3 values: expected 2 values, each 0 <= optim.betas[i] < 1"),
    ("optim.betas=[0.9, 1]", "optim.betas[1]=1 is out of range: expected 0 <= optim.betas[1] < 1"),
    ("optim.betas=[-0.1, 0.9]", "optim.betas[0]=-0.1 is out of range: expected 0 <= optim.betas[0] < 1"),
    ("optim.lr=.nan", "optim.lr=nan is not a finite number: expected optim.lr > 0"),
    ("optim.lr=.inf", "optim.lr=inf is not a finite number: expected optim.lr > 0"),
    ("optim.lr=nan", "optim.lr='nan' is not a finite number: expected optim.lr > 0"),
]


@pytest.mark.parametrize("override,message", REPORTED_CASES, ids=[override for override, _ in REPORTED_CASES])
def test_the_reported_cases_through_overrides(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_the_largest_seed_torch_takes_is_accepted():
    assert load_config(None, [f"trainer.seed={2**63 - 1}"]).trainer.seed == 2**63 - 1


def test_a_range_is_checked_in_a_config_file_and_a_config_object(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  vq:\n    decay: 7\n")
    with pytest.raises(ConfigError, match=r"^model\.vq\.decay=7 is out of range: expected 0 <= model\.vq\.decay < 1$"):
        load_config(path)
    config = Config()
    config.model.dropout = 5.0
    with pytest.raises(ConfigError, match=r"^model\.dropout=5\.0 is out of range"):
        load_config(config)
    # The override wins over the file, and its value is checked the same way.
    path.write_text("model:\n  dropout: 0.1\n")
    with pytest.raises(ConfigError, match=r"^model\.dropout=1\.5 is out of range"):
        load_config(path, ["model.dropout=1.5"])


def test_a_range_is_checked_before_the_cross_field_rule():
    # steps=1 is out of range; the sample_steps <= steps rule must not speak first.
    with pytest.raises(ConfigError, match=r"^model\.diffusion\.steps=1 is out of range: expected model\.diffusion\.steps >= 2$"):
        load_config(None, ["model.diffusion.steps=1"])


def _duplicate_message(tmp_path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_a_duplicate_top_level_key_in_a_file_names_the_key_and_the_lines(tmp_path):
    message = _duplicate_message(tmp_path, "trainer:\n  epochs: 2\nmodel:\n  dropout: 0.1\ntrainer:\n  epochs: 3\n")
    assert "cfg.yaml" in message
    assert "duplicate key 'trainer' at line 5 (first at line 1)" in message


def test_a_duplicate_nested_key_in_a_file_names_the_dotted_key_and_the_lines(tmp_path):
    message = _duplicate_message(tmp_path, "model:\n  vq:\n    decay: 0.5\n    beta: 1\n    decay: 0.9\n")
    assert "duplicate key 'model.vq.decay' at line 5 (first at line 3)" in message
    message = _duplicate_message(tmp_path, "run_name: a\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    assert "duplicate key 'optim.lr' at line 4 (first at line 3)" in message


def test_a_duplicate_key_in_override_yaml_names_the_dotted_key_and_the_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.vq={decay: 0.5, beta: 1, decay: 0.6}"])
    assert "duplicate key 'model.vq.decay' at line 1 (first at line 1)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model={latent_dim: 8, vq: {beta: 1}, latent_dim: 16}"])
    assert "duplicate key 'model.latent_dim' at line 1" in str(info.value)


def test_the_same_key_in_different_mappings_is_not_a_duplicate(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("telemetry: &off\n  enabled: false\nreport:\n  <<: *off\n  enabled: true\n"
                    "model:\n  vq: {beta: 0.5}\n  adversarial: {weight: 0.5}\n")
    config = load_config(path)  # a merge key's value may be overridden on purpose
    assert (config.telemetry.enabled, config.report.enabled) == (False, True)
    assert (config.model.vq.beta, config.model.adversarial.weight) == (0.5, 0.5)


@pytest.mark.parametrize("source, message", [
    ({"model.dropout": 0.1, "model": {"dropout": 0.2}},
     "config: model.dropout is given twice (as 'model.dropout' and as 'model'); give each key once"),
    ({"model": {"vq.decay": 0.5, "vq": {"decay": 0.6}}},
     "config: model.vq.decay is given twice (as 'model.vq.decay' and as 'model.vq'); give each key once"),
])
def test_a_key_given_dotted_and_nested_in_one_mapping_is_refused(source, message):
    with pytest.raises(ConfigError) as info:
        load_config(source)
    assert str(info.value) == message


def test_dotted_and_nested_keys_that_do_not_overlap_still_merge():
    cfg = load_config({"model": {"dropout": 0.1}, "model.latent_dim": 4, "model.vq": {"decay": 0.5}})
    assert (cfg.model.dropout, cfg.model.latent_dim, cfg.model.vq.decay) == (0.1, 4, 0.5)
