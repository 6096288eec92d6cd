"""The documented failure cases of the fusion rules, on the injected kinds that can show them
(issue 23, item 6): a rule that is wrong there fails a test.

Each test describes what the labeling core does today, with the scripted policy as the only
fake (a policy that solves every clean prefix and never recovers from a wrong one), and names
the failure. Tests of a rule are parameterized on its config flag rather than on the default,
so they keep describing both settings when a default changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data_schemas.records import Problem
from labelers.config import BuildConfig, ToolConfig
from labelers.evaluation.inject import (
    InjectedSolution,
    parse_reference,
    read_gsm8k,
    two_error_candidates,
    uncarried_slip_candidates,
)
from labelers.identity import problem_id
from labelers.pipeline import label_given_solutions
from labelers.verify.base import StepContext, ToolVerdict
from labelers.verify.tool import ToolStepVerifier
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem

DATA = Path(__file__).parent / "data" / "gsm8k_test.jsonl"
CONFIG = BuildConfig(seed=11).with_overrides(
    {"search.mc_rollouts": 4, "search.mc_early_stop": 0, "fuse.after_first_error": "negative"}
)


@pytest.fixture(scope="module")
def tool():
    with ToolStepVerifier(ToolConfig(workers=1)) as verifier:
        yield verifier


def _first_flag(tool: ToolStepVerifier, question: str, steps: tuple[str, ...]) -> int:
    checks = tool.check_steps([StepContext(question, tuple(steps[:i]), s) for i, s in enumerate(steps)])
    return next((i for i, c in enumerate(checks) if c.verdict == ToolVerdict.INCORRECT), -1)


def _cases(tool: ToolStepVerifier, make, keep, wanted: int = 3) -> list[tuple[ScriptedProblem, InjectedSolution]]:
    """Scripted problems with one injected solution each (the first candidate ``keep`` accepts),
    where the tool's first flag is the injected slip: the tests are about fusion, not the tool."""
    cases = []
    for source in read_gsm8k(DATA)[:120]:
        reference = parse_reference(source.question, source.answer, source.source_row)
        if reference is None:
            continue
        chosen = next((c for c in make(reference) if keep(c)), None)
        if chosen is None or _first_flag(tool, reference.question, chosen.steps) != chosen.errors[-1].step:
            continue
        scripted = ScriptedProblem(
            reference.question, reference.gold_answer, tuple(reference.render()), (chosen.steps,),
            p_correct=1.0, step_error_rate=0.0, recovery_rate=0.0,
        )
        cases.append((scripted, chosen))
        if len(cases) == wanted:
            break
    assert len(cases) == wanted
    return cases


def _first_negatives(cases, overrides: dict) -> list[int]:
    """The first step whose fused label is negative, per case (-1: none)."""
    config = CONFIG.with_overrides(overrides)
    scripted = [problem for problem, _ in cases]
    problems = [Problem(problem_id(p.question, "gsm8k"), "gsm8k", p.question, p.gold_answer) for p in scripted]
    with ToolStepVerifier(ToolConfig(workers=1)) as tool:
        result = label_given_solutions(problems, [[list(s.steps)] for _, s in cases], config,
                                       ScriptedPolicy(scripted), tool, None)
    firsts = []
    for problem in problems:
        rows = sorted((r for r in result.steps if r.problem_id == problem.problem_id), key=lambda r: r.step_index)
        firsts.append(next((r.step_index for r in rows if r.fused_label is False), -1))
    return firsts


@pytest.fixture(scope="module")
def early_reasoning_then_slip(tool):
    """Two-error solutions whose reasoning error (arithmetic right) is step 0 and whose later
    slip the tool disproves."""
    return _cases(tool, two_error_candidates, lambda c: c.label == 0)


@pytest.mark.parametrize("yields", [True, False])
def test_path_rule_moves_an_early_reasoning_error_to_the_later_slip(early_reasoning_then_slip, yields):
    """Documented failure of ``fuse.zero_without_drop_yields`` (docs/evaluation.md): MC measures
    the drop at step 0 (zero there; the question before it is never sampled), the tool disproves
    the slip later; with the rule on, the zero "yields" and the first error lands on the slip.
    With the rule off, MC's zero at step 0 is the first error, which is right here."""
    labels = [solution.label for _, solution in early_reasoning_then_slip]
    slips = [solution.errors[1].step for _, solution in early_reasoning_then_slip]
    assert labels == [0] * len(labels) and all(s > 0 for s in slips)
    overrides = {"fuse.rule": "hybrid", "fuse.zero_without_drop_yields": yields}
    firsts = _first_negatives(early_reasoning_then_slip, overrides)
    if yields:
        assert firsts == slips  # wrong: the earliest error is step 0
    else:
        assert firsts == labels


@pytest.mark.parametrize("rule", ["mc", "hybrid"])
def test_reaching_gold_is_not_correct_mc_misses_a_slip_the_answer_survives(tool, rule):
    """A slip that is not carried forward leaves the final answer right. MC (binary search runs
    only on solutions with a wrong final answer; every rollout from a prefix reaches gold here)
    calls the solution correct: a documented failure of "reaches gold = correct". The hybrid
    takes the tool's disproof and finds the slip."""
    cases = _cases(tool, uncarried_slip_candidates, lambda c: True)
    labels = [solution.label for _, solution in cases]
    firsts = _first_negatives(cases, {"fuse.rule": rule})
    if rule == "mc":
        assert firsts == [-1] * len(cases)  # wrong: each solution has an error at its label
    else:
        assert firsts == labels


def test_confirmation_resamples_only_zeros_so_a_found_reasoning_error_can_turn_positive(tool):
    """Documented failure of ``search.mc_confirm_verified_zero`` (issue 23): a reasoning error
    keeps its arithmetic right, so the tool verifies the step, and a zero there is re-sampled
    while a positive never is. With a policy that recovers from a wrong prefix a quarter of the
    time, confirmation can only move the first error later (never earlier), and on these
    solutions it moves one that MC had found onto the later slip."""
    cases = _cases(tool, two_error_candidates, lambda c: c.label >= 1, wanted=12)
    cases = [(ScriptedProblem(p.question, p.gold_answer, p.correct_steps, p.wrong_solutions, 1.0, 0.0, 0.25), s)
             for p, s in cases]
    labels = [solution.label for _, solution in cases]
    firsts = {confirm: _first_negatives(cases, {"fuse.rule": "hybrid", "search.mc_confirm_verified_zero": confirm})
              for confirm in (False, True)}
    assert all(on >= off for on, off in zip(firsts[True], firsts[False]))
    lost = [i for i, (on, off) in enumerate(zip(firsts[True], firsts[False])) if off == labels[i] != on]
    assert lost, (labels, firsts)
