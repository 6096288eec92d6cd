"""Monte Carlo estimates (Math-Shepherd) with the scripted policy: values, early stop, batching."""

from __future__ import annotations

from labelers.search.ledger import Ledger
from labelers.search.montecarlo import MCEstimate, MCSettings, OutcomeJudge, PrefixJob
from labelers.search.scheduler import confirm_zeros, estimate_prefixes
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem

CORRECT = ("We have 3 * 4 = 12 apples.", "Adding 5 gives 12 + 5 = 17. The final answer is \\boxed{17}.")
WRONG = ("We have 3 * 4 = 13 apples.", "Adding 5 gives 13 + 5 = 18. The final answer is \\boxed{18}.")
QUESTION = "Tom has 3 bags of 4 apples and finds 5 more. How many apples?"


def _policy(p_correct: float = 1.0, recovery_rate: float = 0.0) -> ScriptedPolicy:
    problem = ScriptedProblem(QUESTION, "17", CORRECT, (WRONG,), p_correct=p_correct, recovery_rate=recovery_rate)
    return ScriptedPolicy([problem])


def _job(key: str, steps: tuple[str, ...]) -> PrefixJob:
    return PrefixJob(key, "p1", QUESTION, "17", steps)


def test_clean_and_corrupted_prefixes_and_exact_final() -> None:
    policy = _policy()
    settings = MCSettings(build_seed=7, rollouts=8, early_stop=4)
    ledger = Ledger()
    batch = estimate_prefixes(
        [_job("clean", CORRECT[:1]), _job("wrong", WRONG[:1]), _job("final", CORRECT), _job("final-wrong", WRONG)],
        policy, settings, ledger, OutcomeJudge(),
    )
    clean, wrong = batch.estimates["clean"], batch.estimates["wrong"]
    assert (clean.correct, clean.total, clean.early_stopped) == (4, 4, True)
    assert (wrong.correct, wrong.total, wrong.early_stopped) == (0, 4, True)
    assert batch.estimates["final"].exact and batch.estimates["final"].value == 1.0
    assert batch.estimates["final-wrong"].exact and batch.estimates["final-wrong"].value == 0.0
    # both sampled prefixes decided in chunk 1: one generate call
    assert len(policy.calls) == 1 and [r.n for r in policy.calls[0]] == [4, 4]
    assert ledger.per_problem["p1"].rollouts == 8


def test_undecided_prefix_samples_all_k_in_two_calls() -> None:
    policy = _policy(p_correct=0.5)
    settings = MCSettings(build_seed=3, rollouts=8, early_stop=2)
    keys = [f"k{i}" for i in range(6)]
    jobs = [PrefixJob(key, f"p{i}", QUESTION, "17", CORRECT[:1]) for i, key in enumerate(keys)]
    batch = estimate_prefixes(jobs, policy, settings, Ledger(), OutcomeJudge())
    totals = {batch.estimates[k].total for k in keys}
    assert totals <= {2, 8}
    # seeds depend on (problem, prefix), not on the key: the six differ by problem id
    assert len({r.seed for r in policy.calls[0]}) == 6
    undecided = [k for k in keys if batch.estimates[k].total == 8]
    assert len(policy.calls) == (2 if undecided else 1)
    for key in undecided:
        assert 0 < batch.estimates[key].correct < 8 or not batch.estimates[key].early_stopped


def test_no_early_stop_samples_k_in_one_request() -> None:
    policy = _policy(p_correct=0.5)
    batch = estimate_prefixes([_job("a", CORRECT[:1])], policy, MCSettings(build_seed=1, rollouts=8, early_stop=0),
                              Ledger(), OutcomeJudge())
    estimate = batch.estimates["a"]
    assert estimate.total == 8 and not estimate.early_stopped
    assert [r.n for r in policy.calls[0]] == [8]
    # deterministic: the same request gives the same value
    again = estimate_prefixes([_job("a", CORRECT[:1])], _policy(p_correct=0.5),
                              MCSettings(build_seed=1, rollouts=8, early_stop=0), Ledger(), OutcomeJudge())
    assert again.estimates["a"] == estimate


def test_failed_request_reported_per_key() -> None:
    problem = ScriptedProblem(QUESTION, "17", CORRECT, (WRONG,))
    policy = ScriptedPolicy([problem], fail_when=lambda request: "13" in request.assistant_prefix)
    batch = estimate_prefixes([_job("ok", CORRECT[:1]), _job("bad", WRONG[:1])], policy, MCSettings(build_seed=1),
                              Ledger(), OutcomeJudge())
    assert "ok" in batch.estimates and "bad" in batch.errors
    assert "scripted failure" in batch.errors["bad"]


def test_scripted_policy_respects_stop_n_max_tokens_and_records_calls() -> None:
    from labelers.policy.base import GenerationRequest
    from labelers.policy.prompts import STEP_STOP, assistant_prefix, solution_messages
    from tests.support.scripted_policy import parse_prefix

    assert parse_prefix(assistant_prefix(list(CORRECT[:1]))) == [CORRECT[0]]
    assert parse_prefix(assistant_prefix([])) == []
    policy = _policy()
    step, rollout, short = policy.generate(
        [
            GenerationRequest(solution_messages(QUESTION), assistant_prefix([]), n=2, stop=STEP_STOP, seed=1),
            GenerationRequest(solution_messages(QUESTION), assistant_prefix([]), n=1, seed=1, max_tokens=100),
            GenerationRequest(solution_messages(QUESTION), assistant_prefix([]), n=1, seed=1, max_tokens=3),
        ]
    )
    assert [c.text for c in step.completions] == [" " + CORRECT[0]] * 2
    assert rollout.completions[0].text == f" {CORRECT[0]}\nStep 2: {CORRECT[1]}"
    assert rollout.completions[0].finish_reason == "stop"
    assert short.completions[0].finish_reason == "length" and short.completions[0].completion_tokens == 3
    assert len(policy.calls) == 1 and policy.usage.completions == 4
    assert policy.usage.completion_tokens == sum(c.completion_tokens for r in (step, rollout, short)
                                                 for c in r.completions)
    # a prefix of the wrong solution continues it (wrong answer); an unknown prefix ends wrong
    wrong = policy.generate([GenerationRequest(solution_messages(QUESTION), assistant_prefix([WRONG[0]]), seed=2)])[0]
    assert "\\boxed{18}" in wrong.completions[0].text
    odd = policy.generate([GenerationRequest(solution_messages(QUESTION), assistant_prefix(["something else"]),
                                             seed=2)])[0]
    assert "\\boxed{18}" in odd.completions[0].text  # wrong_answer(): gold + 1
    unknown = policy.generate([GenerationRequest(solution_messages("another question"), "", seed=2)])[0]
    assert unknown.error is not None and not unknown.completions


def test_confirm_zeros_pools_n_more_rollouts_in_one_call() -> None:
    policy = _policy(p_correct=1.0)
    ledger = Ledger()
    zeros = [(_job("a", CORRECT[:1]), MCEstimate(0, 4)), (_job("b", WRONG[:1]), MCEstimate(0, 4, early_stopped=True))]
    batch = confirm_zeros(zeros, 4, policy, MCSettings(build_seed=7), ledger, OutcomeJudge())
    assert batch.estimates == {"a": MCEstimate(4, 8), "b": MCEstimate(0, 8)}
    assert len(policy.calls) == 1 and [r.n for r in policy.calls[0]] == [4, 4]
    assert all(r.tag.endswith("/3") for r in policy.calls[0])  # seed chunk 3: new draws, not chunk 1's again
    assert ledger.per_problem["p1"].rollouts == 8


def test_wave_plan_curtailed_and_not() -> None:
    from labelers.search.montecarlo import wave_plan

    assert wave_plan(4, 0, curtail=False) == [(4, "1")]
    assert wave_plan(8, 4, curtail=False) == [(4, "1"), (4, "2")]
    assert wave_plan(4, 4, curtail=False) == [(4, "1")]  # m >= k: no adaptive stop
    assert wave_plan(4, 0, curtail=True) == [(1, "c1"), (3, "c2")]
    assert wave_plan(8, 4, curtail=True) == [(1, "c1"), (3, "c2"), (4, "c3")]
    assert wave_plan(8, 1, curtail=True) == [(1, "c1"), (7, "c2")]
    assert wave_plan(1, 0, curtail=True) == [(1, "c1")]


def test_curtailed_prefix_stops_at_its_first_success_and_negatives_draw_all_k() -> None:
    policy = _policy(p_correct=1.0)
    ledger = Ledger()
    settings = MCSettings(build_seed=7, rollouts=4, early_stop=0, curtail=True)
    batch = estimate_prefixes([_job("clean", CORRECT[:1]), _job("wrong", WRONG[:1])], policy, settings, ledger,
                              OutcomeJudge())
    assert batch.estimates["clean"] == MCEstimate(1, 1, curtailed=True)
    assert batch.estimates["wrong"] == MCEstimate(0, 4)
    assert [[r.n for r in call] for call in policy.calls] == [[1, 1], [3]]
    assert ledger.per_problem["p1"].rollouts == 5  # instead of 8


def test_curtailing_keeps_the_label_of_all_k_rollouts_in_distribution() -> None:
    """Positive rate of c > 0 from 300 prefixes with success rate 0.3, k = 4: both ~ 1 - 0.7^4 = 0.76;
    curtailed rollouts ~ 1 + 3 * 0.7 = 3.1 per prefix instead of 4."""
    jobs = [PrefixJob(f"j{i}", f"p{i}", QUESTION, "17", CORRECT[:1]) for i in range(300)]
    rates, rollouts = {}, {}
    for curtail in (False, True):
        batch = estimate_prefixes(jobs, _policy(p_correct=0.3), MCSettings(build_seed=2, rollouts=4, early_stop=0,
                                                                           curtail=curtail), Ledger(), OutcomeJudge())
        rates[curtail] = sum(e.hard_label for e in batch.estimates.values()) / len(jobs)
        rollouts[curtail] = sum(e.rollouts for e in batch.estimates.values()) / len(jobs)
    assert abs(rates[True] - rates[False]) < 0.08 and abs(rates[False] - (1 - 0.7 ** 4)) < 0.08
    assert rollouts[False] == 4 and 2.8 < rollouts[True] < 3.4


def test_curtailing_with_a_threshold_waits_for_c_above_t_times_k() -> None:
    """t = 0.5, k = 4: positive needs c > 2 -- three successes, not the first one."""
    policy = _policy(p_correct=1.0)
    settings = MCSettings(build_seed=7, rollouts=4, early_stop=0, curtail=True, label_threshold=0.5)
    estimate = estimate_prefixes([_job("clean", CORRECT[:1])], policy, settings, Ledger(), OutcomeJudge()).estimates
    assert estimate["clean"] == MCEstimate(4, 4)  # waves 1 + 3: c = 1 after the first does not decide


def test_curtailed_value_is_biased_up_documented_failure() -> None:
    """The cost of curtailing, pinned: a prefix of success rate 0.5 whose first rollout succeeds
    gets the value 1/1 (soft labels want curtailing off); its label is right."""
    values = []
    for seed in range(40):
        batch = estimate_prefixes([_job("a", CORRECT[:1])], _policy(p_correct=0.5),
                                  MCSettings(build_seed=seed, rollouts=4, early_stop=0, curtail=True), Ledger(),
                                  OutcomeJudge())
        values.append(batch.estimates["a"].value)
    assert values.count(1.0) >= 15  # ~ half the seeds stop at 1/1
    assert sum(values) / len(values) > 0.6  # the plain estimate averages 0.5


def test_curtailed_confirmation_stops_at_the_first_success() -> None:
    policy = _policy(p_correct=1.0)
    ledger = Ledger()
    zeros = [(_job("a", CORRECT[:1]), MCEstimate(0, 4)), (_job("b", WRONG[:1]), MCEstimate(0, 4))]
    batch = confirm_zeros(zeros, 4, policy, MCSettings(build_seed=7, curtail=True), ledger, OutcomeJudge())
    assert batch.estimates == {"a": MCEstimate(1, 5, curtailed=True), "b": MCEstimate(0, 8)}
    assert [[r.n for r in call] for call in policy.calls] == [[1, 1], [3]]
    assert [r.tag.rsplit("/", 1)[1] for call in policy.calls for r in call] == ["3", "3", "3b"]
