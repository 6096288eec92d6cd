"""The per-process resource holder: one model per process, loaded once, generate serialized."""

from __future__ import annotations

import threading
import time

import pytest

from data_schemas.errors import ConfigError
from flows.resources import ResourceHolder, prewarm, resolve_policy_factory
from labelers.config import BuildConfig
from labelers.policy.base import TokenUsage


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
    # base_url is a setting of the openai backend only
    assert [(c.model, c.backend, getattr(c, "base_url", None)) for c in made] == [
        ("better", "embedded", None), ("j", "openai", "http://x/v1"),
    ]
    assert holder.resources(separate, factory).judge is held.judge  # held, not made again
    idle = separate.with_overrides({"judge.enabled": False, "judge.model": "idle-judge"})
    assert holder.resources(idle, factory).judge is None  # a judge that does not run loads no model
    assert [c.model for c in made] == ["better", "j"]
    holder.close_all()


# ---------------------------------------------------------------------------------------------
# Bounded memory (issue 25 item 5): engines keyed by what needs a new model; LRU with leases.


class _ClosablePolicy(_Policy):
    def __init__(self, model: str) -> None:
        self.model_id = model
        self.usage = TokenUsage(requests=1)
        self.closed = False

    def close(self):
        self.closed = True


def _recording_factory(made: list):
    def factory(policy_config):
        made.append(_ClosablePolicy(policy_config.model))
        return made[-1]

    return factory


def test_sampling_settings_share_one_engine_and_engine_settings_do_not():
    made: list[_ClosablePolicy] = []
    factory = _recording_factory(made)
    holder = ResourceHolder()
    base = BuildConfig().with_overrides({"tool.enabled": False})
    first = holder.resources(base, factory).policy
    for index, (temperature, top_p, step_tokens) in enumerate([(0.2, 0.9, 64), (1.0, 1.0, 300), (0.0, 0.5, 8)]):
        sampled = base.with_overrides({
            "policy.temperature": temperature, "policy.top_p": top_p,
            "policy.max_step_tokens": step_tokens, "policy.max_solution_tokens": 100 + index,
        })
        assert holder.resources(sampled, factory).policy is first
    assert len(made) == 1
    engine_changes = (
        {"policy.n_ctx": 2048}, {"policy.n_threads": 1}, {"policy.kv_cells": 1024}, {"policy.model": "small"},
    )
    for engine_change in engine_changes:
        holder.resources(base.with_overrides(engine_change), factory)
    assert len(made) == 1 + 4


def test_every_policy_field_is_either_engine_or_sampling():
    """A policy setting is a sampling setting (labelers.config.PolicySampling, shared by every backend,
    travelling with each request) or an engine setting of its backend's model (what make_policy reads,
    what the holder keys by): a new shared field must be declared sampling in
    labelers/policy/factory.py, or the holder would hand out an engine made with another value."""
    from labelers.config import NOT_READ, POLICY_MODELS, PolicySampling
    from labelers.policy.factory import ENGINE_FIELDS, SAMPLING_FIELDS

    assert set(PolicySampling.model_fields) == set(SAMPLING_FIELDS)
    assert set(ENGINE_FIELDS) == set(POLICY_MODELS)
    for backend, model in POLICY_MODELS.items():
        assert model().backend == backend
        unread = {name for name, field in model.model_fields.items() if field.json_schema_extra == NOT_READ}
        assert set(model.model_fields) == {"backend", *SAMPLING_FIELDS, *ENGINE_FIELDS[backend], *unread}
        assert "model" in ENGINE_FIELDS[backend]


def test_least_recently_used_engine_is_closed_beyond_the_bound():
    made: list[_ClosablePolicy] = []
    factory = _recording_factory(made)
    holder = ResourceHolder()
    config = BuildConfig().with_overrides({"tool.enabled": False, "flow.max_held_models": 2})
    a = holder.resources(config.with_overrides({"policy.model": "a"}), factory).policy
    holder.resources(config.with_overrides({"policy.model": "b"}), factory)
    holder.resources(config.with_overrides({"policy.model": "a"}), factory)  # a is now the most recent
    holder.resources(config.with_overrides({"policy.model": "c"}), factory)  # evicts b, not a
    assert [(p.model_id, p.closed) for p in made] == [("a", False), ("b", True), ("c", False)]
    assert holder.held_policies() == 2
    assert holder.resources(config.with_overrides({"policy.model": "a"}), factory).policy is a
    # An evicted engine's token usage still counts in the process total (live progress).
    assert holder.usage().requests == 3
    holder.close_all()
    assert all(p.closed for p in made) and holder.held_policies() == 0


def test_a_leased_engine_is_not_closed_and_the_judge_never_evicts_its_policy():
    made: list[_ClosablePolicy] = []
    factory = _recording_factory(made)
    holder = ResourceHolder()
    config = BuildConfig().with_overrides({"tool.enabled": False, "flow.max_held_models": 1})
    with holder.lease(config.with_overrides({"policy.model": "a"}), factory) as held_a:
        other = holder.resources(config.with_overrides({"policy.model": "b"}), factory).policy
        assert not made[0].closed and held_a.policy.inner is made[0]  # a batch in flight keeps its engine
    assert other.inner is made[1]
    holder.resources(config.with_overrides({"policy.model": "c"}), factory)  # a is free now: evicted
    assert [(p.model_id, p.closed) for p in made] == [("a", True), ("b", True), ("c", False)]
    # Policy and a separate judge are both needed at once, even with a bound of 1.
    judged = config.with_overrides({"policy.model": "p", "judge.enabled": True, "judge.model": "j"})
    held = holder.resources(judged, factory)
    assert held.policy.model_id == "p" and held.judge.model_id == "j"
    assert not held.policy.inner.closed and not held.judge.inner.closed


def test_an_evicted_engine_closes_the_lean_verifier_that_formalizes_with_it(monkeypatch):
    import labelers.verify.lean as lean_module

    verifiers = []

    class _Lean:
        def __init__(self, policy):
            self.policy, self.closed = policy, False

        def check_steps(self, steps):
            return []

        def close(self):
            self.closed = True

    def fake_make(config, policy, default_cache_dir=None):
        verifiers.append(_Lean(policy))
        return verifiers[-1]

    monkeypatch.setattr(lean_module, "make_lean_verifier", fake_make)
    made: list[_ClosablePolicy] = []
    factory = _recording_factory(made)
    holder = ResourceHolder()
    config = BuildConfig().with_overrides({"tool.enabled": False, "lean.enabled": True, "flow.max_held_models": 1})
    held = holder.resources(config.with_overrides({"policy.model": "a"}), factory)
    assert held.lean.inner.policy is held.policy
    holder.resources(config.with_overrides({"policy.model": "b"}), factory)
    assert made[0].closed and verifiers[0].closed and not verifiers[1].closed


def test_builtin_backends_key_by_the_fields_their_engine_reads():
    from flows.resources import policy_key
    from labelers.config import EmbeddedPolicyConfig, OpenAIPolicyConfig

    embedded = EmbeddedPolicyConfig(model="small")
    # Sampling settings mean nothing to the engine; the KV cache size does. (An HTTP timeout is
    # no setting of an in-process model at all: the per-backend models leave it out.)
    unrelated = {"temperature": 0.1, "max_solution_tokens": 64}
    assert policy_key(embedded) == policy_key(embedded.model_copy(update=unrelated))
    assert policy_key(embedded) != policy_key(embedded.model_copy(update={"kv_cells": 4096}))
    served = OpenAIPolicyConfig(model="m", base_url="http://h/v1")
    assert policy_key(served) != policy_key(served.model_copy(update={"request_timeout_s": 5.0}))
    assert policy_key(served) == policy_key(served.model_copy(update={"n_ctx": 8192, "top_p": 0.5}))


def test_eval_and_build_get_the_same_policy_and_judge_from_one_holder():
    """eval run's view (for_config) and a build's resources come from the same code path."""
    made: list[_ClosablePolicy] = []
    factory = _recording_factory(made)
    holder = ResourceHolder()
    config = BuildConfig().with_overrides({"tool.enabled": False, "judge.enabled": True, "judge.model": "j"})
    view = holder.for_config(config, factory)
    assert [p.model_id for p in made] == []  # nothing is made before a signal asks
    judge = view.step_judge()
    assert [p.model_id for p in made] == ["j"]  # the judge alone: no policy model loaded for it
    build = holder.resources(config, factory)
    assert build.judge is judge and build.policy is view.policy()
    view.close()
    assert all(p.closed for p in made)


def test_the_locked_policy_streams_where_its_policy_streams_and_runs_rounds_elsewhere():
    from flows.resources import LockedPolicy
    from labelers.evaluation.replay import ReplayPolicy
    from labelers.policy.base import GenerationRequest, GenerationResult, StreamingPolicy

    def answer(request):
        return GenerationResult(request, (), 1)

    class Plain(_Policy):
        def __init__(self):
            self.calls = []

        def generate(self, requests):
            self.calls.append(f"generate {len(requests)}")
            return [answer(r) for r in requests]

    class Streaming(Plain):
        def generate_streaming(self, requests, on_result):
            self.calls.append("stream")
            queue = list(requests)
            index = 0
            while queue:
                request = queue.pop(0)
                queue += on_result(index, answer(request))
                index += 1

    first = [GenerationRequest(messages=(), n=1, seed=i) for i in range(2)]
    follow_up = GenerationRequest(messages=(), n=1, seed=9)
    for inner, expected in ((Streaming(), ["stream"]), (Plain(), ["generate 2", "generate 1"])):
        locked = LockedPolicy(inner)
        assert isinstance(locked, StreamingPolicy)  # what ReplayPolicy and the ledger ask before streaming
        answered: list[int] = []

        def on_result(index, result, answered=answered):
            answered.append(result.request.seed)
            return [follow_up] if result.request.seed == 0 else []

        ReplayPolicy(locked).generate_streaming(first, on_result)
        assert inner.calls == expected and sorted(answered) == [0, 1, 9]
        assert locked.live_sampled_tokens() == 0  # no live counter: finished calls' tokens


def test_live_tokens_add_runs_in_progress_and_keep_closed_engines():
    class Counting(_Policy):
        def __init__(self, in_flight: int):
            self.usage = TokenUsage(completion_tokens=10)
            self.in_flight = in_flight

        def live_sampled_tokens(self):
            return self.usage.completion_tokens + self.in_flight

    made: list[Counting] = []

    def factory(pc):
        made.append(Counting(in_flight=5 * (len(made) + 1)))
        return made[-1]

    holder = ResourceHolder()
    config = BuildConfig().with_overrides({"tool.enabled": False})
    holder.resources(config, factory)
    assert holder.live_tokens() == 15  # usage (10) + the run in progress (5)
    assert holder.usage().completion_tokens == 10
    holder.resources(config.with_overrides({"policy.model": "small"}), factory)
    assert holder.live_tokens() == 15 + 20
    holder.close_all()
    assert holder.live_tokens() == 35  # closed engines keep their count
