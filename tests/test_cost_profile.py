"""The per-pass cost profile (labelers/policy/usage.py), the answer stop rule's post-cut for
backends that cannot stop while decoding, and the Ledger's pass scope."""

from __future__ import annotations

import json

from labelers.answers import answer_end, extract_final_answer
from labelers.evaluation import runner
from labelers.evaluation.journal import LabeledChunk
from labelers.policy.base import ChatMessage, Completion, GenerationRequest, GenerationResult, TokenUsage, cut_at_answer
from labelers.policy.usage import CostProfile
from labelers.search.ledger import Ledger
from tests.test_eval_run import _config, injected_set, scripted_for


def test_the_eval_pass_reports_its_cost_profile(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # os.times() ticks in 10 ms steps and this scripted pass takes a few ms: the clock is
    # scripted so the test checks what the pass does with it (end - start), never a tick's luck.
    readings = iter([100.0, 102.5])
    monkeypatch.setattr(runner, "cpu_seconds", lambda: next(readings))
    records, references = injected_set(3, 2, seed=7)
    [run] = runner.run_shared(records, ["hybrid"], _config(), scripted_for(records, references), None, None,
                              "binary", 4)
    profile = run.profile
    assert profile is not None
    assert profile.solutions == len(records) and profile.rollouts == run.rollouts > 0
    assert profile.generated_tokens == run.completion_tokens and profile.prompt_tokens == run.prompt_tokens
    assert profile.answer_check_seconds > 0  # the rollouts were checked against gold
    assert profile.cpu_seconds == 2.5 and profile.cpu_seconds_per_solution == 2.5 / len(records)
    payload = runner.evaluate(records, run).to_json()["cost"]["profile"]
    assert (payload["rollouts"] == run.rollouts
            and payload["cpu_seconds_per_solution"] == profile.cpu_seconds_per_solution)
    assert "per solution" in profile.line()


def test_manifest_counts_are_integers_with_seconds_in_ms() -> None:
    usage = TokenUsage(prompt_tokens=10, completion_tokens=5, decode_seconds=1.25, answer_check_seconds=0.5)
    counts = CostProfile.of(usage, solutions=2, rollouts=3, wall_seconds=2.0, cpu_seconds=3.5).to_counts()
    assert counts["decode_ms"] == 1250 and counts["answer_check_ms"] == 500 and counts["cpu_ms"] == 3500
    assert counts["generated_tokens"] == 5 and all(isinstance(v, int) for v in counts.values())


def test_the_profile_shows_how_full_the_decode_steps_were() -> None:
    filled = CostProfile.of(TokenUsage(completion_tokens=90, decode_steps=40, sampled_tokens=100), solutions=1,
                            rollouts=4, wall_seconds=1.0, cpu_seconds=2.0)
    assert filled.sequences_per_decode_step == 2.5 and "in 40 steps (2.5 sequences per step)" in filled.line()
    assert filled.to_json()["sequences_per_decode_step"] == 2.5
    remote = CostProfile.of(TokenUsage(completion_tokens=90), solutions=1, rollouts=4, wall_seconds=1.0,
                            cpu_seconds=2.0)  # an HTTP backend counts no decode steps
    assert remote.sequences_per_decode_step is None and "steps" not in remote.line()


def test_the_profile_names_the_decode_thread_counts_and_a_resumed_pass_keeps_them() -> None:
    # CPU seconds per token depend on the thread count, which by default follows the machine's
    # load: a cost figure says which counts decoded it, a journaled chunk keeps its own count,
    # and a pass whose chunks used different counts lists both instead of summing them.
    policy = _Recording()
    policy.usage.decode_threads = (2,)
    ledger = Ledger()
    request = GenerationRequest((ChatMessage("user", "q"),))
    ledger.generate(policy, [("p1", request)])
    ledger.generate(policy, [("p1", request)])
    assert ledger.usage.decode_threads == (2,)
    chunk = LabeledChunk([], [], ledger.usage, 1.0, 1.0)
    journaled = LabeledChunk.from_json(json.loads(json.dumps(chunk.to_json()))).usage
    assert journaled.decode_threads == (2,) and journaled.decode_seconds == 1.0
    total = TokenUsage()
    total.add(TokenUsage(decode_threads=(1,), decode_seconds=0.25))
    total.add(journaled)
    assert total.decode_threads == (1, 2) and total.decode_seconds == 1.25
    profile = CostProfile.of(total, solutions=1, rollouts=2, wall_seconds=1.0, cpu_seconds=2.0)
    assert "(llama.cpp threads: 1, 2)" in profile.line() and profile.to_json()["decode_threads"] == [1, 2]
    counts = profile.to_counts()
    assert counts["decode_threads_min"] == 1 and counts["decode_threads_max"] == 2
    remote = CostProfile.of(TokenUsage(completion_tokens=9), solutions=1, rollouts=1, wall_seconds=1.0,
                            cpu_seconds=1.0)  # an HTTP backend: no llama.cpp threads to name
    assert "threads" not in remote.line() and not any("threads" in key for key in remote.to_counts())


def test_backends_that_cannot_stop_cut_the_text_where_the_embedded_decoder_stops() -> None:
    text = "Step 3: 36 - 5 = 31.\nStep 4: So the answer is \\boxed{31}.\nStep 5: Check: \\boxed{30}\n"
    request = GenerationRequest((ChatMessage("user", "q"),), stop_at_answer=True)
    cut = cut_at_answer(request, Completion(text, "length", 40))
    assert cut.text == text[: answer_end(text)] and cut.finish_reason == "stop" and cut.completion_tokens == 40
    assert extract_final_answer(cut.text) == "31"
    plain = GenerationRequest((ChatMessage("user", "q"),))
    assert cut_at_answer(plain, Completion(text, "length", 40)).text == text


class _Recording:
    model_id = "recording"

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.scopes: list[set[str]] = []

    def generate(self, requests):
        self.scopes.append({r.cache_scope for r in requests})
        self.usage.decode_seconds += 0.5
        return [GenerationResult(r, (Completion("x", "stop", 1),), 3) for r in requests]

    def close(self) -> None:
        pass


def test_a_ledger_names_its_pass_on_every_request_and_takes_the_backend_cost() -> None:
    policy = _Recording()
    ledger, other = Ledger(), Ledger()
    request = GenerationRequest((ChatMessage("user", "q"),))
    ledger.generate(policy, [("p1", request), ("p2", request)])
    ledger.generate(policy, [("p1", request)])
    other.generate(policy, [("p1", request)])
    assert policy.scopes == [{ledger.scope}, {ledger.scope}, {other.scope}] and ledger.scope != other.scope
    assert ledger.usage.decode_seconds == 1.0 and other.usage.decode_seconds == 0.5
