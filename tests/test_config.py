"""Config building, overrides and the error messages a researcher sees on a typo."""

import pytest

from thesis_lib.config import Config, load_config, parse_overrides
from thesis_lib.errors import ConfigError


def test_defaults_and_nested_dict():
    cfg = load_config({"model": {"bottleneck": "vq", "vq": {"beta": 0.5}}, "trainer": {"epochs": 3}})
    assert isinstance(cfg, Config)
    assert cfg.model.bottleneck == "vq"
    assert cfg.model.vq.beta == 0.5
    assert cfg.model.vq.codebook_size == 256  # untouched default
    assert cfg.trainer.epochs == 3
    assert cfg.output_root == "outputs"


def test_dotted_overrides_parse_values_as_yaml():
    cfg = load_config(None, ["model.bottleneck=vq", "trainer.seed=2", "optim.lr=3e-4", "model.freeze=[encoder]", "trainer.resume_from=null"])
    assert cfg.model.bottleneck == "vq"
    assert cfg.trainer.seed == 2
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.freeze == ["encoder"]
    assert cfg.trainer.resume_from is None


def test_dict_overrides_with_dotted_keys_merge_into_config():
    cfg = load_config({"model": {"latent_dim": 8, "encoder": "transformer"}}, {"model.latent_dim": 16})
    assert cfg.model.latent_dim == 16
    assert cfg.model.encoder == "transformer"


def test_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  encoder: transformer\ntrainer:\n  epochs: 2\n")
    cfg = load_config(path, ["trainer.epochs=4"])
    assert cfg.model.encoder == "transformer"
    assert cfg.trainer.epochs == 4


def test_round_trip_through_to_dict():
    cfg = load_config({"model": {"bottleneck": "linear"}})
    again = load_config(cfg.to_dict())
    assert again == cfg


def test_bad_registry_value_names_key_nearest_match_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.bottleneck=vqq"])
    assert str(err.value) == "model.bottleneck='vqq' — did you mean 'vq'? allowed: identity, linear, vq"


def test_bad_literal_value():
    with pytest.raises(ConfigError, match=r"trainer.precision='bf61' — did you mean 'bf16'\? allowed: fp32, bf16, fp16"):
        load_config({"trainer": {"precision": "bf61"}})


def test_unknown_key_names_nearest_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config({"model": {"bottlenek": "vq"}})
    message = str(err.value)
    assert "unknown config key 'model.bottlenek'" in message
    assert "did you mean 'bottleneck'" in message
    assert "allowed keys in model:" in message and "latent_dim" in message


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown config key 'trainr' — did you mean 'trainer'"):
        load_config(None, ["trainr.epochs=3"])


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError, match=r"trainer.epochs='ten': expected int, got str"):
        load_config({"trainer": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"trainer.epochs=True: expected int, got bool"):
        load_config({"trainer": {"epochs": True}})
    with pytest.raises(ConfigError, match=r"model.freeze='encoder': expected list of str, got str"):
        load_config({"model": {"freeze": "encoder"}})


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="model must be a mapping of ModelConfig fields"):
        load_config({"model": "vq"})


def test_minimums_and_device_pattern():
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0 is out of range: expected data\.batch_size >= 1$"):
        load_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"trainer.device='gpu' is not a device"):
        load_config(None, ["trainer.device=gpu"])


def test_int_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'model.bottleneck' is not of the form key=value"):
        parse_overrides(["model.bottleneck"])
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top, got list"):
        load_config(bad)
