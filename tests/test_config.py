"""Config loading: presets, file + flag + --set layering, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_schemas.errors import ConfigError
from flows.config_load import load_build_config, parse_override, preset_names


def test_every_shipped_preset_loads_and_differs():
    names = preset_names()
    assert {"demo", "small", "gsm8k", "math500"} <= set(names)
    configs = {name: load_build_config(preset=name) for name in names}
    assert configs["demo"].problems.limit == 2
    assert configs["demo"].policy.model == "better"
    assert configs["small"].policy.model == "small"
    assert configs["math500"].search.rounds > configs["gsm8k"].search.rounds
    # Each preset changes the rows, so each has its own identity.
    assert len({config.config_hash() for config in configs.values()}) == len(names)


def test_layering_file_then_flags_then_set(tmp_path: Path):
    config_file = tmp_path / "build.toml"
    config_file.write_text('name = "mine"\n[search]\nrounds = 5\nmc_rollouts = 3\n[policy]\nmodel = "small"\n')
    config = load_build_config(
        config_file=config_file,
        preset="demo",
        overrides=["search.rounds=4", "policy.temperature=0.5", "problems.source=own", "lean.tactics=['simp']"],
        flag_values={"policy.model": "better", "problems.limit": None, "seed": 7},
    )
    assert config.name == "mine"  # file over preset
    assert config.search.mc_rollouts == 3  # file over preset
    assert config.search.rounds == 4  # --set over file
    assert config.search.max_depth == load_build_config(preset="demo").search.max_depth  # preset, untouched
    assert config.policy.model == "better"  # flag over file
    assert config.problems.limit == 2  # a flag that was not given (None) keeps the preset value
    assert config.seed == 7
    assert config.policy.temperature == 0.5
    assert config.problems.source == "own"  # bare word read as a string
    assert config.lean.tactics == ("simp",)


def test_override_values_are_typed():
    assert parse_override("search.rounds=4") == ("search.rounds", 4)
    assert parse_override("lean.enabled = true") == ("lean.enabled", True)
    assert parse_override('policy.model="a=b"') == ("policy.model", "a=b")
    assert parse_override("output.root=s3://bucket/prefix") == ("output.root", "s3://bucket/prefix")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.rounds=0"], "config key search.rounds: Input should be greater than or equal to 1"),
        (["search.roundz=3"], "config key search.roundz: unknown key"),
        (["colour=red"], "config key colour: unknown key"),
        (["policy.backend=gpt"], "config key policy.backend: Input should be 'embedded', 'vllm' or 'openai'"),
        (["seed.x=1"], "config key seed is a value, not a section"),
        (["rounds"], "must look like key=value"),
    ],
)
def test_invalid_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_build_config(preset="demo", overrides=overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_toml_names_file_and_line(tmp_path: Path):
    config_file = tmp_path / "broken.toml"
    config_file.write_text("[search]\nrounds = 3\nmc_rollouts = \n")
    with pytest.raises(ConfigError) as caught:
        load_build_config(config_file=config_file)
    assert str(config_file) in str(caught.value)
    assert "line 3" in str(caught.value)


def test_unknown_key_in_file_and_missing_file_and_unknown_preset(tmp_path: Path):
    config_file = tmp_path / "typo.toml"
    config_file.write_text("[serach]\nrounds = 3\n")
    with pytest.raises(ConfigError, match="config key serach: unknown key"):
        load_build_config(config_file=config_file)
    with pytest.raises(ConfigError, match="config file not found"):
        load_build_config(config_file=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="unknown preset 'huge'; known presets: demo"):
        load_build_config(preset="huge")
