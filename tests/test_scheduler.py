"""Estimates and first-error searches driven together (labelers.search.scheduler), in rounds of
``generate`` and streamed, and the streaming paths of the ledger and the replay wrapper."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from labelers.evaluation.replay import ReplayPolicy
from labelers.policy.base import GenerationRequest, GenerationResult, ResultHandler, StreamingPolicy
from labelers.policy.prompts import solution_messages
from labelers.search.first_error import FirstErrorSearch, ceil_log2
from labelers.search.ledger import Ledger
from labelers.search.montecarlo import MCSettings, OutcomeJudge, PrefixJob
from labelers.search.scheduler import EstimateScheduler, search_process
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem

STEPS = 7
ERRORS = (0, 3, 6, 2)  # first wrong step of each problem's wrong solution


def _problem(number: int, error: int, **rates: float) -> ScriptedProblem:
    gold = 10 * number + STEPS
    correct = tuple(f"Line {i}: x{number} grows to {10 * number + i + 1}." for i in range(STEPS - 1)) + (
        f"So the final answer is \\boxed{{{gold}}}.",)
    wrong = correct[:error] + tuple(f"Line {i}: x{number} drops to {i}." for i in range(error, STEPS - 1)) + (
        f"So the final answer is \\boxed{{{gold + 1}}}.",)
    if error == STEPS - 1:
        wrong = correct[:-1] + (f"So the final answer is \\boxed{{{gold + 1}}}.",)
    return ScriptedProblem(f"Problem {number}: how far does x{number} grow?", str(gold), correct, (wrong,), **rates)


@dataclass
class StreamingScripted:
    """The scripted policy answering one request at a time, newest requests first (so answers come
    back out of order, as a decoder's finish), taking new requests while it answers: the boundary
    a streaming backend presents."""

    inner: ScriptedPolicy
    fail_after: int | None = None  # raise after this many answers (a backend crash mid-stream)
    streams: int = 0
    answered: list[GenerationRequest] = field(default_factory=list)
    most_waiting: int = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def usage(self):
        return self.inner.usage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return self.inner.generate(requests)

    def generate_streaming(self, requests: Sequence[GenerationRequest], on_result: ResultHandler) -> None:
        self.streams += 1
        waiting = deque(enumerate(requests))
        count = len(requests)
        while waiting:
            self.most_waiting = max(self.most_waiting, len(waiting))
            if self.fail_after is not None and len(self.answered) >= self.fail_after:
                raise RuntimeError("backend crashed")
            index, request = waiting.pop()
            [result] = self.inner.generate([request])
            self.answered.append(request)
            for added in on_result(index, result):
                waiting.append((count, added))
                count += 1

    def close(self) -> None:
        return None


def _run_searches(policy, problems: Sequence[ScriptedProblem], settings: MCSettings,
                  confirm: bool = False) -> tuple[list[FirstErrorSearch], Ledger, dict]:
    ledger = Ledger()
    searches = [FirstErrorSearch(STEPS) for _ in problems]

    def job_for(number: int, index: int) -> PrefixJob:
        problem = problems[number]
        steps = problem.wrong_solutions[0][: index + 1]
        return PrefixJob(f"{number}:{index}", f"p{number}", problem.question, problem.gold_answer, steps,
                         confirm_zero=confirm)

    scheduler = EstimateScheduler(policy, settings, ledger, OutcomeJudge())
    scheduler.run(searches=[search_process(s, lambda i, n=n: job_for(n, i)) for n, s in enumerate(searches)])
    return searches, ledger, scheduler.known


def _asked(requests: Sequence[GenerationRequest]) -> Counter:
    return Counter((r.tag, r.n, r.seed) for r in requests)


def test_searches_find_each_first_error_in_rounds_of_one_call() -> None:
    problems = [_problem(n, e) for n, e in enumerate(ERRORS)]
    policy = ScriptedPolicy(problems)
    searches, ledger, _ = _run_searches(policy, problems, MCSettings(build_seed=3, rollouts=4, early_stop=0))
    assert [s.first_error for s in searches] == list(ERRORS)
    # one wave per probe: every round is one call holding the probe of every search
    assert len(policy.calls) == ledger.generate_calls == ceil_log2(STEPS)
    assert len(policy.calls[0]) == len(ERRORS)


def test_streamed_searches_ask_and_find_what_rounds_do_in_one_call() -> None:
    """Waves (k = 4, m = 2), confirmation of zeros, a policy that misses and recovers: streamed,
    answers out of order, the same requests are asked (seeds come from the prefix, not the
    batch), the same estimates made, the same first errors found -- in one streaming call."""
    settings = MCSettings(build_seed=5, rollouts=4, early_stop=2)
    problems = [_problem(n, e, p_correct=0.6, recovery_rate=0.2) for n, e in enumerate(ERRORS)]
    in_rounds = ScriptedPolicy(problems)
    searches, ledger, known = _run_searches(in_rounds, problems, settings, confirm=True)
    streaming = StreamingScripted(ScriptedPolicy(problems))
    assert isinstance(streaming, StreamingPolicy)
    streamed, streamed_ledger, streamed_known = _run_searches(streaming, problems, settings, confirm=True)
    assert [s.failed for s in streamed] == [None] * len(ERRORS)
    assert [s.first_error for s in streamed] == [s.first_error for s in searches]
    assert streamed_known == known
    assert _asked(streaming.answered) == _asked(in_rounds.requests)
    assert streaming.streams == streamed_ledger.generate_calls == 1 and ledger.generate_calls > 1
    assert streamed_ledger.per_problem["p1"].rollouts == ledger.per_problem["p1"].rollouts
    assert any(r.tag.endswith("/3") for r in streaming.answered)  # a zero was confirmed


def test_a_prefix_probed_by_two_searches_is_sampled_once() -> None:
    problem = _problem(0, 3)
    policy = StreamingScripted(ScriptedPolicy([problem]))
    ledger = Ledger()
    searches = [FirstErrorSearch(STEPS), FirstErrorSearch(STEPS)]

    def job_for(index: int) -> PrefixJob:  # both searches walk the same solution, same account
        steps = problem.wrong_solutions[0][: index + 1]
        return PrefixJob(f"p0:{index}", "p0", problem.question, problem.gold_answer, steps)

    EstimateScheduler(policy, MCSettings(build_seed=1, rollouts=4, early_stop=0), ledger, OutcomeJudge()).run(
        searches=[search_process(s, job_for) for s in searches])
    assert [s.first_error for s in searches] == [3, 3]
    assert max(_asked(policy.answered).values()) == 1
    assert ledger.per_problem["p0"].rollouts == 4 * ceil_log2(STEPS)


def test_a_failed_request_fails_only_the_searches_waiting_on_it() -> None:
    problems = [_problem(0, 3), _problem(1, 2)]
    policy = StreamingScripted(ScriptedPolicy(problems, fail_when=lambda r: "Problem 0" in r.messages[-1].content))
    searches, _, _ = _run_searches(policy, problems, MCSettings(build_seed=1, rollouts=4, early_stop=0))
    assert searches[0].failed == "scripted failure for this request"
    assert searches[1].failed is None and searches[1].first_error == 2


def test_a_backend_crash_mid_stream_leaves_the_rest_to_rounds_and_loses_nothing() -> None:
    problems = [_problem(n, e) for n, e in enumerate(ERRORS)]
    settings = MCSettings(build_seed=3, rollouts=4, early_stop=0)
    crashing = StreamingScripted(ScriptedPolicy(problems), fail_after=5)
    searches, ledger, _ = _run_searches(crashing, problems, settings)
    assert [s.first_error for s in searches] == list(ERRORS)
    assert len(crashing.answered) == 5 and len(crashing.inner.calls) > 5  # the rest went in rounds
    clean, clean_ledger, _ = _run_searches(ScriptedPolicy(problems), problems, settings)
    assert ledger.usage.completions == clean_ledger.usage.completions


def test_an_error_in_the_caller_is_raised_not_taken_for_a_backend_crash() -> None:
    problem = _problem(0, 3)
    request = GenerationRequest(solution_messages(problem.question), n=1, seed=1)

    def respond(handle: str, result: GenerationResult):
        raise KeyError("bug in the caller")

    with pytest.raises(KeyError, match="bug in the caller"):
        Ledger().stream(StreamingScripted(ScriptedPolicy([problem])), [("p0", request, "h")], respond)


def test_replay_streams_answers_from_memory_and_asks_a_repeat_once() -> None:
    problem = _problem(0, 3, p_correct=0.5)
    inner = StreamingScripted(ScriptedPolicy([problem]))
    sampled: list[int] = []
    replay = ReplayPolicy(inner, on_generate=lambda completions, tokens, seconds: sampled.append(completions))
    requests = [GenerationRequest(solution_messages(problem.question), n=2, seed=seed, max_tokens=64)
                for seed in (1, 2, 1)]  # the third repeats the first
    follow_up = GenerationRequest(solution_messages(problem.question), n=3, seed=9, max_tokens=64)

    def run() -> dict[int, GenerationResult]:
        results: dict[int, GenerationResult] = {}

        def on_result(index: int, result: GenerationResult) -> list[GenerationRequest]:
            results[index] = result
            return [follow_up] if index == 0 else []

        replay.generate_streaming(requests, on_result)
        return results

    first = run()
    assert sorted(first) == [0, 1, 2, 3] and first[3].request == follow_up
    assert first[2].completions == first[0].completions  # the repeat got the first one's answer
    assert len(inner.answered) == 3 and sampled == [2, 2, 3]
    again = run()
    assert len(inner.answered) == 3  # all from memory: the wrapped policy was not asked
    assert {i: r.completions for i, r in again.items()} == {i: r.completions for i, r in first.items()}
    assert replay.counts.replayed_completions == 2 + (2 + 2 + 2 + 3)
