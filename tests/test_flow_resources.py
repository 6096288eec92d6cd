"""The per-process resource holder: one model per process, loaded once, generate serialized."""

from __future__ import annotations

import threading
import time

import pytest

from flows.resources import ResourceHolder, prewarm, resolve_policy_factory
from labelers.config import BuildConfig
from labelers.policy.base import TokenUsage
from data_schemas.errors import ConfigError


def test_prewarm_loads_once_and_leaves_errors_to_the_task():
    made = []
    config = BuildConfig().with_overrides({"tool.enabled": False})
    holder = ResourceHolder()
    prewarm(holder, config, lambda pc: made.append(pc) or _Policy()).join(5)
    first = holder.resources(config, lambda pc: made.append(pc) or _Policy())
    assert len(made) == 1 and first.policy.model_id == "p"

    def broken(pc):
        raise ConnectionError("down")

    failing = ResourceHolder()
    prewarm(failing, config, broken).join(5)  # no exception escapes the thread
    with pytest.raises(ConnectionError):
        failing.resources(config, broken)


class _Policy:
    model_id = "p"
    usage = TokenUsage()

    def generate(self, requests):
        return []

    def close(self):
        return None


class _SlowPolicy(_Policy):
    """Records overlapping generate calls (llama.cpp must never see two at once)."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self._count = threading.Lock()

    def generate(self, requests):
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.02)
        with self._count:
            self.active -= 1
        return []


def test_threads_share_one_policy_and_never_generate_at_once():
    made: list[_SlowPolicy] = []

    def factory(pc):
        made.append(_SlowPolicy())
        return made[-1]

    holder = ResourceHolder()
    config = BuildConfig().with_overrides({"tool.enabled": False})

    def task() -> None:
        holder.resources(config, factory).policy.generate([])

    threads = [threading.Thread(target=task) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1  # loaded once for all six tasks
    assert made[0].max_active == 1
    # A different model gets its own engine; close_all forgets everything.
    holder.resources(config.with_overrides({"policy.model": "small"}), factory)
    assert len(made) == 2
    holder.close_all()
    holder.resources(config, factory)
    assert len(made) == 3


def test_policy_factory_spec_errors_are_one_line():
    assert resolve_policy_factory("flows.resources:resolve_policy_factory") is resolve_policy_factory
    with pytest.raises(ConfigError, match="must look like 'package.module:function'"):
        resolve_policy_factory("nocolon")
    with pytest.raises(ConfigError, match="cannot be imported"):
        resolve_policy_factory("flows.nope:make")


# ---------------------------------------------------------------------------------------------
# The judge model of a build (issue 22: `build` ignored judge.model; `eval run` honoured it).

SEPARATE_JUDGE = "separate-judge-model"
SEPARATE_JUDGE_REPLY = "Reason: checked by the separate judge model.\nVerdict: incorrect"


def judge_model_factory(policy_config):
    """The scripted build policy, except for the judge model: a scripted judge with its own reply."""
    from tests.support.scripted_judge import ScriptedJudge
    from tests.test_flow_build import scripted_policy_factory

    if policy_config.model == SEPARATE_JUDGE:
        return ScriptedJudge(lambda step, tool: SEPARATE_JUDGE_REPLY, model_id=SEPARATE_JUDGE)
    return scripted_policy_factory(policy_config)


def test_build_with_judge_model_judges_with_that_model(tmp_path):
    import duckdb

    from flows.build import run_build
    from tests.test_flow_build import small_config

    config = small_config(tmp_path, "judge.enabled=true", f'judge.model="{SEPARATE_JUDGE}"', "problems.limit=2")
    summary = run_build(config, policy_factory="tests.test_flow_resources:judge_model_factory")
    assert summary.status == "complete" and summary.steps > 0
    pattern = str(tmp_path / "builds" / summary.build_id / "steps" / "**" / "*.parquet")
    judged = duckdb.sql(f"SELECT judge_status, judge_verdict, judge_reply FROM read_parquet('{pattern}')").fetchall()
    # Every step was judged by the separate model (the policy model never answers the judge prompt).
    assert judged and set(judged) == {("ok", "incorrect", SEPARATE_JUDGE_REPLY)}


def test_holder_gives_the_judge_its_own_policy_from_the_same_factory():
    made = []

    def factory(policy_config):
        made.append(policy_config)
        return _Policy()

    holder = ResourceHolder()
    plain = BuildConfig().with_overrides({"tool.enabled": False, "judge.enabled": True})
    assert holder.resources(plain, factory).judge is None  # no judge.model: the policy judges
    separate = plain.with_overrides({"judge.model": "j", "judge.backend": "openai", "judge.base_url": "http://x/v1"})
    held = holder.resources(separate, factory)
    assert held.judge is not None and held.judge is not held.policy
    assert [(c.model, c.backend, c.base_url) for c in made] == [("better", "embedded", None), ("j", "openai", "http://x/v1")]
    assert holder.resources(separate, factory).judge is held.judge  # held, not made again
    holder.close_all()
