"""The policy section as one model per backend, hash marks on the fields, and pinned identities
(issue 22 item 5): existing builds and datasets keep their config_hash and labeling_hash."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from data_schemas.errors import ConfigError
from flows.config_load import config_from_parts, load_build_config
from labelers.config import (
    BUILD_ONLY,
    NOT_HASHED,
    POLICY_MODELS,
    BuildConfig,
    EmbeddedPolicyConfig,
    JudgeConfig,
    OpenAIPolicyConfig,
    VllmPolicyConfig,
    hash_exclusions,
    policy_config,
)

# (config_hash, labeling_hash) at commit 14a993e, before the per-backend models and the field
# marks: a change here relabels every dataset built with that config. Never update these to make
# a test pass; a deliberate identity change needs its own decision (docs/operations.md).
# The one so far: search.mc_confirm_verified_zero's default true -> false (2026-12-06, issue 23):
# these identities hold for configs that set the old value (OLD_DEFAULTS); CURRENT pins the rest.
OLD_DEFAULTS = ["search.mc_confirm_verified_zero=true"]
OPENAI = ["policy.backend=openai", "policy.base_url=http://h/v1"]
PINNED: dict[str, tuple[str | None, list[str], str, str]] = {
    "default": (None, [], "e2e52b37a524e4cb", "0529c6ac9fa09074"),
    "demo": ("demo", [], "f91087532e42fad8", "66114669d94a42f8"),
    "gsm8k": ("gsm8k", [], "079d534ae59ed479", "903e36ffeb9505c9"),
    "math500": ("math500", [], "5acb4af601487538", "2cd221045137cf55"),
    "small": ("small", [], "8f6805847e92ec03", "cce19c8dc6cd4b95"),
    "default+openai": (
        None, ["policy.backend=openai", 'policy.base_url="http://h/v1"', 'policy.model="m"'],
        "1105b178a070493b", "0529c6ac9fa09074",
    ),
    "gsm8k+vllm": (
        "gsm8k",
        ["policy.backend=vllm", 'policy.model="Qwen/Qwen2.5-0.5B-Instruct"', "policy.gpu_memory_utilization=0.5"],
        "5c8874e1f8f669b6", "903e36ffeb9505c9",
    ),
    "math500+vllm": ("math500", ["policy.backend=vllm", 'policy.model="q"'], "69cf0f2230ad4252", "2cd221045137cf55"),
    "default+judge": (None, ["judge.enabled=true"], "c04dd9a4b477ae67", "46ab0b4ce62e63d7"),
    "default+judge-model": (
        None, ["judge.enabled=true", 'judge.model="j"', "judge.backend=openai", 'judge.base_url="http://x/v1"'],
        "9086768716068e9a", "385e2fd2eafe1ed0",
    ),
    # presets under another backend (the presets' n_ctx: kept, unread, by the openai model)
    "math500+openai": ("math500", OPENAI, "28aca6c33fa9c3a4", "2cd221045137cf55"),
    "demo+openai": ("demo", OPENAI, "6359eb4952449551", "66114669d94a42f8"),
    "small+openai": ("small", OPENAI, "70076ca43c7a8ff7", "cce19c8dc6cd4b95"),
    "gsm8k+openai": ("gsm8k", OPENAI, "bcab49475b0deb5d", "903e36ffeb9505c9"),
    "demo+vllm": ("demo", ["policy.backend=vllm"], "0bb5c68737896035", "66114669d94a42f8"),
    "small+vllm": ("small", ["policy.backend=vllm"], "3cbb942b95babfcb", "cce19c8dc6cd4b95"),
    "small+fuse-judge": ("small", ["fuse.judge=tiebreak", 'judge.model="j"'], "e50b8453097406ae", "888416fc4e352a31"),
}


# (config_hash, labeling_hash) of the same configs at today's defaults (confirmation off).
CURRENT: dict[str, tuple[str, str]] = {
    "default": ("6816dd167e01b71e", "04385b8bd0b95e44"),
    "default+judge": ("c5a0238d21e2fed5", "7fcb77de790e2c9e"),
    "default+judge-model": ("4f8a38b1d9cc43e1", "4e30ffc44819c409"),
    "default+openai": ("deb5428b6bf2d39e", "04385b8bd0b95e44"),
    "demo": ("99f0d7d47a6179c7", "2abdcc981be63eb1"),
    "demo+openai": ("bd1314f1fdc703fc", "2abdcc981be63eb1"),
    "demo+vllm": ("b2e18387fd83dcd8", "2abdcc981be63eb1"),
    "gsm8k": ("83bf95aadc89004d", "0c299885f60ae4bd"),
    "gsm8k+openai": ("1f1a5bc20504dd2c", "0c299885f60ae4bd"),
    "gsm8k+vllm": ("4268fb25e3b63938", "0c299885f60ae4bd"),
    "math500": ("0809cf91d80d004f", "6a1b6fb9a9c276e2"),
    "math500+openai": ("98a8538537df0df0", "6a1b6fb9a9c276e2"),
    "math500+vllm": ("0f3f8f5053d50b07", "6a1b6fb9a9c276e2"),
    "small": ("e290bfdaf09ee853", "1ae647045d98efed"),
    "small+fuse-judge": ("ec133c9c55c15620", "16dbc0f3eb25cd78"),
    "small+openai": ("fc29c2e44c3842cd", "1ae647045d98efed"),
    "small+vllm": ("b0fe6e4175fca918", "1ae647045d98efed"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_identities_are_those_of_the_flat_config(name):
    preset, overrides, config_hash, labeling_hash = PINNED[name]
    config = config_from_parts(preset, None, overrides + OLD_DEFAULTS)
    assert (config.config_hash(), config.labeling_hash()) == (config_hash, labeling_hash)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_todays_defaults_have_identities_of_their_own(name):
    preset, overrides, *old = PINNED[name]
    config = config_from_parts(preset, None, overrides)
    assert (config.config_hash(), config.labeling_hash()) == CURRENT[name]
    assert config.labeling_hash() != old[1]  # confirmation off labels otherwise: relabeled


def test_every_preset_is_pinned():
    from flows.config_load import preset_names

    assert set(preset_names()) <= set(PINNED)


def test_hash_marks_give_the_exclusions_the_hashes_had_as_lists():
    assert hash_exclusions(BuildConfig, "build") == {
        "name": True, "output": {"root": True, "dataset": True, "claim_lease_s": True}, "flow": True,
    }
    labels = hash_exclusions(BuildConfig, "labels")
    assert labels == {
        "name": True, "problems": True, "output": True, "flow": True,
        "tool": {"workers": True, "chunk_size": True},
        "lean": {"project": True, "cache_dir": True, "batch_size": True},
        "judge": {"base_url": True},
    }
    transport = set()
    for model in POLICY_MODELS.values():
        transport |= set(hash_exclusions(model, "labels"))
        assert hash_exclusions(model, "build") == {}
    assert transport == {
        "backend", "model", "base_url", "api_key", "max_concurrency", "request_timeout_s", "max_retries",
        "n_threads", "gpu_memory_utilization",
    }
    assert BUILD_ONLY != NOT_HASHED


def test_a_key_means_the_same_in_every_backend():
    """Keys two backends share have one default and one hash mark (the flat payload relies on it)."""
    seen: dict[str, tuple[object, object]] = {}
    for model in POLICY_MODELS.values():
        for name, field in model.model_fields.items():
            if name == "backend":
                continue
            marks = (field.default, (field.json_schema_extra or {}).get("hash"))  # type: ignore[union-attr]
            assert seen.setdefault(name, marks) == marks, name


def test_the_backend_picks_the_model_and_defaults_to_embedded():
    assert type(BuildConfig().policy) is EmbeddedPolicyConfig
    assert type(BuildConfig.model_validate({"policy": {"n_ctx": 2048}}).policy) is EmbeddedPolicyConfig
    assert type(policy_config(backend="vllm")) is VllmPolicyConfig
    served = BuildConfig.model_validate({"policy": {"backend": "openai", "base_url": "http://h/v1"}}).policy
    assert type(served) is OpenAIPolicyConfig and served.base_url == "http://h/v1"
    assert not hasattr(served, "decode")


def test_errors_name_the_key_without_the_union_tag():
    with pytest.raises(ConfigError, match=r"config key policy\.n_ctx: Input should be greater than or equal to 512"):
        config_from_parts(None, None, ["policy.n_ctx=2"])
    expected = r"config key policy\.backend: Input should be 'embedded', 'vllm' or 'openai'"
    with pytest.raises(ConfigError, match=expected):
        config_from_parts(None, None, ["policy.backend=gpt"])
    with pytest.raises(ConfigError, match=r"config key policy\.nctx: unknown key"):
        config_from_parts(None, None, ["policy.nctx=2048"])


def test_another_backend_drops_the_preset_settings_it_lacks(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        config = load_build_config(preset="math500", flag_values={"policy.backend": "openai"})
    assert type(config.policy) is OpenAIPolicyConfig and config.policy.max_step_tokens == 256
    assert config.policy.n_ctx == 8192  # accepted, not read: the build keeps its identity
    assert "dropped" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        # a preset's key the backend lacks goes silently (no shipped preset has one; demo's table here)
        config = config_from_parts("demo", {"policy": {"backend": "vllm"}}, [])
    assert "dropped" not in caplog.text and type(config.policy) is VllmPolicyConfig
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        config = load_build_config(preset="math500", flag_values={"policy.backend": "openai"},
                                   overrides=["policy.decode=batched"])
    assert caplog.records[-1].getMessage() == "policy settings decode dropped: not settings of the openai backend"
    caplog.clear()
    given = tmp_path / "c.toml"
    given.write_text('[policy]\nbackend = "openai"\nbase_url = "http://h/v1"\ndecode = "sequential"\n')
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        config = load_build_config(given, preset="math500")
    assert type(config.policy) is OpenAIPolicyConfig
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert lines == ["policy settings decode dropped: not settings of the openai backend"]


def test_with_overrides_switches_backend_and_names_what_was_set(caplog):
    config = BuildConfig().with_overrides({"policy.n_ctx": 2048, "policy.temperature": 0.5})
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        served = config.with_overrides({"policy.backend": "openai", "policy.base_url": "http://h/v1"})
    assert type(served.policy) is OpenAIPolicyConfig and served.policy.temperature == 0.5
    assert caplog.records == [] and served.policy.n_ctx == 2048
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        vllm = config.with_overrides({"policy.decode": "sequential"}).with_overrides({"policy.backend": "vllm"})
    assert [r.getMessage() for r in caplog.records] == [
        "policy settings decode dropped: not settings of the vllm backend"
    ]
    assert vllm.policy.n_ctx == 2048
    back = vllm.with_overrides({"policy.backend": "embedded"})
    assert type(back.policy) is EmbeddedPolicyConfig and back.policy.decode == "batched"
    assert back.policy.temperature == 0.5
    with pytest.raises(ValidationError):
        config.with_overrides({"policy.backend": "openai", "policy.nonsense": 1})


def test_judge_shorthand_and_own_policy():
    base = BuildConfig().with_overrides({"policy.n_ctx": 2048, "judge.enabled": True})
    assert base.judge.policy_config(base.policy) is None
    same_backend = base.with_overrides({"judge.model": "j"})
    derived = same_backend.judge.policy_config(same_backend.policy)
    assert derived == base.policy.model_copy(update={"model": "j"})
    served = base.with_overrides({"judge.model": "j", "judge.backend": "openai", "judge.base_url": "http://x/v1"})
    derived = served.judge.policy_config(served.policy)
    assert type(derived) is OpenAIPolicyConfig and (derived.model, derived.base_url) == ("j", "http://x/v1")
    assert derived.temperature == base.policy.temperature
    own = base.with_overrides({"judge.policy": {"backend": "vllm", "model": "big", "temperature": 0.0}})
    assert own.judge.policy_config(own.policy) == VllmPolicyConfig(model="big", temperature=0.0)
    # a judge.policy is a new identity; judge.model with the same settings keeps its old one
    assert own.config_hash() != served.config_hash()
    assert "policy" not in served._hash_payload("build")["judge"]
    with pytest.raises(ValidationError, match="name the judge model twice"):
        JudgeConfig(model="j", policy=EmbeddedPolicyConfig())
    # judge.policy hashes like the policy: where it is served does not change labels
    moved = own.with_overrides({"judge.policy.backend": "openai", "judge.policy.base_url": "http://y/v1"})
    moved_again = moved.with_overrides({"judge.policy.base_url": "http://z/v1"})
    assert moved.labeling_hash() == moved_again.labeling_hash() and moved.config_hash() != moved_again.config_hash()


def test_a_flat_policy_of_an_old_manifest_loads_quietly_with_its_hashes(caplog):
    """Manifests written before the split hold every key of every backend (resume reads them)."""
    flat = {"policy": {**EmbeddedPolicyConfig().model_dump(), **OpenAIPolicyConfig().model_dump(),
                       **VllmPolicyConfig().model_dump(), "backend": "openai", "base_url": "http://h/v1"}}
    with caplog.at_level(logging.WARNING, logger="labelers.config"):
        config = BuildConfig.model_validate(flat)
        assert caplog.records == []
        assert type(config.policy) is OpenAIPolicyConfig
        BuildConfig.model_validate({"policy": {**flat["policy"], "kv_cells": 1024}})
    assert [r.getMessage() for r in caplog.records] == [
        "policy settings kv_cells dropped: not settings of the openai backend"
    ]
    plain = BuildConfig().with_overrides({"policy.backend": "openai", "policy.base_url": "http://h/v1"})
    assert config.config_hash() == plain.config_hash()


def test_a_key_added_later_counts_only_when_set():
    """search.mc_curtail came after datasets were built: at the value that gives their rows it
    leaves the identities alone; set to the other value it relabels."""
    config = config_from_parts(None, None, OLD_DEFAULTS)
    pinned = PINNED["default"][2:]
    assert (config.config_hash(), config.labeling_hash()) == pinned
    flipped = config.with_overrides({"search.mc_curtail": not config.search.mc_curtail})
    assert flipped.config_hash() != pinned[0] and flipped.labeling_hash() != pinned[1]
