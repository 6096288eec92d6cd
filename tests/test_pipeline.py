"""label_batch / label_given_solutions end to end: scripted policy, the real answer checker,
step splitter and tool verifier."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from data_schemas.records import Problem, to_table
from data_schemas.schemas import NODES, OUTCOMES, STEPS
from labelers.config import BuildConfig, ToolConfig
from labelers.identity import problem_id
from labelers.pipeline import label_batch, label_given_solutions
from labelers.rationale import parse_verdict
from labelers.verify.base import StepContext
from labelers.verify.tool import ToolStepVerifier
from tests.conftest import TEST_DATA
from tests.support.gsm8k_slips import first_slip, reference_steps
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem, gsm8k_scripted_problems


@pytest.fixture(scope="module")
def tool():
    with ToolStepVerifier(ToolConfig(workers=1)) as verifier:
        yield verifier


@pytest.fixture(scope="module")
def gsm8k_rows() -> list[dict]:
    with (TEST_DATA / "gsm8k_test.jsonl").open() as handle:
        return [json.loads(line) for _, line in zip(range(12), handle)]


def _problems(scripted: list[ScriptedProblem]) -> list[Problem]:
    return [Problem(problem_id(p.question, "gsm8k"), "gsm8k", p.question, p.gold_answer) for p in scripted]


def _scripted(rows, **kwargs) -> list[ScriptedProblem]:
    defaults = dict(seed=1, p_correct=0.7, step_error_rate=0.4, recovery_rate=0.1)
    defaults.update(kwargs)
    return gsm8k_scripted_problems(rows, **defaults)


CONFIG = BuildConfig(seed=11).with_overrides({"search.rounds": 6, "search.mc_rollouts": 6, "search.mc_early_stop": 3})


def _strip_time(outcomes):
    return [dataclasses.replace(o, wall_seconds=0.0) for o in outcomes]


def test_rows_are_complete_and_schema_valid(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:4])
    policy = ScriptedPolicy(scripted)
    result = label_batch(_problems(scripted), CONFIG, policy, tool, None, "build-1")
    assert to_table(result.steps, STEPS).num_rows == len(result.steps) > 0
    assert to_table(result.nodes, NODES).num_rows == len(result.nodes)
    assert to_table(result.outcomes, OUTCOMES).num_rows == 4
    assert all(o.status == "labeled" and o.num_steps > 0 and o.rollouts > 0 for o in result.outcomes)
    node_ids = {(n.problem_id, n.node_id) for n in result.nodes}
    paths: dict[str, list] = {}
    for row in result.steps:
        assert (row.problem_id, row.node_id) in node_ids
        assert parse_verdict(row.rationale) is row.fused_label
        assert -1.0 <= row.fused_reward <= 1.0
        assert row.generator_model == "scripted-policy"
        paths.setdefault(row.path_id, []).append(row)
    for rows in paths.values():
        assert [r.step_index for r in rows] == list(range(len(rows)))
        assert sum(r.is_first_error for r in rows) <= 1
        # truncate (default): nothing after the first error
        firsts = [r.step_index for r in rows if r.is_first_error]
        if firsts:
            assert rows[-1].step_index == firsts[0] and not rows[-1].fused_label
    outcome_steps = {o.problem_id: o.num_steps for o in result.outcomes}
    for pid, count in outcome_steps.items():
        assert count == sum(r.problem_id == pid for r in result.steps)
    assert result.usage.completions == sum(o.rollouts for o in result.outcomes)
    assert result.counters["generate_calls"] == len(policy.calls)


def test_same_seed_gives_identical_rows(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:3])
    first = label_batch(_problems(scripted), CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    second = label_batch(_problems(scripted), CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    assert first.steps == second.steps and first.nodes == second.nodes
    assert _strip_time(first.outcomes) == _strip_time(second.outcomes)
    other_seed = label_batch(_problems(scripted), CONFIG.with_overrides({"seed": 12}), ScriptedPolicy(scripted), tool,
                             None, "b")
    assert [r.seed for r in other_seed.steps] != [r.seed for r in first.steps]


def test_batch_composition_does_not_change_a_problems_rows(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:3])
    problems = _problems(scripted)
    alone = label_batch([problems[1]], CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    mixed = label_batch([problems[2], problems[1], problems[0]], CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    pid = problems[1].problem_id
    assert [r for r in mixed.steps if r.problem_id == pid] == alone.steps
    assert [n for n in mixed.nodes if n.problem_id == pid] == alone.nodes


def test_failing_requests_fail_only_their_problem(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:4])
    problems = _problems(scripted)
    # problem 1 fails every request (search); problem 2 only its MC rollouts
    policy = ScriptedPolicy(
        scripted,
        fail_questions=[scripted[1].question],
        fail_when=lambda request: "/mc/" in request.tag and request.tag.startswith(problems[2].problem_id),
    )
    result = label_batch(problems, CONFIG, policy, tool, None, "b")
    by_id = {o.problem_id: o for o in result.outcomes}
    assert by_id[problems[1].problem_id].status == "failed"
    assert by_id[problems[1].problem_id].failed_stage == "search"
    assert "scripted failure" in by_id[problems[1].problem_id].error
    assert by_id[problems[2].problem_id].status == "failed"
    assert by_id[problems[2].problem_id].failed_stage == "mc"
    for index in (0, 3):
        assert by_id[problems[index].problem_id].status == "labeled"
        assert any(r.problem_id == problems[index].problem_id for r in result.steps)
    failed = {problems[1].problem_id, problems[2].problem_id}
    assert not any(r.problem_id in failed for r in result.steps)
    assert not any(n.problem_id in failed for n in result.nodes)
    assert result.counters["failed_problems"] == 2
    # the rest of the batch equals a batch without the failing problems
    clean = label_batch([problems[0], problems[3]], CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    assert clean.steps == result.steps


def test_one_generate_call_per_round_across_problems(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:5])
    problems = _problems(scripted)
    policy = ScriptedPolicy(scripted)
    result = label_batch(problems, CONFIG, policy, tool, None, "b")
    rounds = result.counters["search_rounds"]
    search_calls = policy.calls[:rounds]
    # round 1: the root expansion of every tree, in one call
    assert sorted(r.tag for r in search_calls[0]) == sorted(f"{p.problem_id}/expand/r" for p in problems)
    for call in search_calls:
        assert all("/mc/" not in r.tag for r in call)
        owners = [r.tag.split("/")[0] for r in call]
        kinds = {r.tag.split("/")[1] for r in call}
        assert kinds <= {"expand", "rollout"}
        # at most one expansion per tree per round
        assert (len([r for r in call if "/expand/" in r.tag])
                == len({o for o, r in zip(owners, call) if "/expand/" in r.tag}))
    assert any(len({r.tag.split("/")[0] for r in call}) > 1 for call in search_calls[1:])
    # MC rounds follow, also batched across problems
    mc_calls = policy.calls[rounds:]
    assert mc_calls and all(all("/mc/" in r.tag for r in call) for call in mc_calls)
    assert len({r.tag.split("/")[0] for r in mc_calls[0]}) > 1


def test_wrong_paths_get_the_first_error_by_binary_search(gsm8k_rows, tool) -> None:
    # rollouts from clean prefixes always reach gold, from wrong ones never: MC is exact
    scripted = _scripted(gsm8k_rows[2:6], p_correct=1.0, step_error_rate=0.5, recovery_rate=0.0)
    result = label_batch(_problems(scripted), CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    by_question = {p.problem_id: s for p, s in zip(_problems(scripted), scripted)}
    wrong_paths = 0
    for path_id in {r.path_id for r in result.steps}:
        rows = sorted((r for r in result.steps if r.path_id == path_id), key=lambda r: r.step_index)
        if rows[0].path_correct:
            assert all(r.fused_label for r in rows)
            continue
        wrong_paths += 1
        script = by_question[rows[0].problem_id]
        steps = [r.step_text for r in rows]
        wrong = next(w for w in script.wrong_solutions if list(w[: len(steps)]) == steps)
        error = script.divergence(wrong)
        assert [r.step_index for r in rows if r.is_first_error] == [error]
        assert rows[-1].step_index == error  # truncated after the first error
        assert rows[error].hard_label is False and rows[error].tool_verdict == "incorrect"
        assert rows[error].label_source == "verifier_disproved" and rows[error].consensus
        for row in rows[:error]:
            assert row.hard_label is True
            assert row.mc_inferred == (row.mc_total is None)
    assert wrong_paths > 0


def test_after_first_error_negative_keeps_rows(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[2:5], p_correct=1.0, step_error_rate=0.5)
    config = CONFIG.with_overrides({"fuse.after_first_error": "negative"})
    result = label_batch(_problems(scripted), config, ScriptedPolicy(scripted), tool, None, "b")
    after = 0
    for path_id in {r.path_id for r in result.steps}:
        rows = sorted((r for r in result.steps if r.path_id == path_id), key=lambda r: r.step_index)
        assert len(rows) == rows[0].num_steps
        first = next((r.step_index for r in rows if r.is_first_error), None)
        if first is not None:
            later = rows[first + 1 :]
            after += len(later)
            assert all(not r.fused_label and r.fused_reward < 0 for r in later)
            # inferred MC negatives after the error; a step MC alone would call good is forced
            assert all(r.label_source in ("mc_over_verified", "mc", "verifier_disproved", "after_first_error")
                       for r in later)
    assert after > 0


def test_consensus_filter_drops_and_counts(gsm8k_rows, tool) -> None:
    # Wrong prefixes always recover: MC never reaches 0, the tool flags the slip -> no consensus.
    scripted = _scripted(gsm8k_rows[2:5], p_correct=1.0, step_error_rate=0.5, recovery_rate=1.0)
    problems = _problems(scripted)
    kept = label_batch(problems, CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    disagreeing = kept.counters["paths_no_consensus"]
    assert disagreeing > 0
    assert {r.path_id for r in kept.steps if not r.consensus}
    filtered = label_batch(problems, CONFIG.with_overrides({"fuse.consensus_filter": True}), ScriptedPolicy(scripted),
                           tool, None, "b")
    assert filtered.counters["paths_dropped_consensus"] == disagreeing
    assert all(r.consensus for r in filtered.steps)
    assert len({r.path_id for r in filtered.steps}) == len({r.path_id for r in kept.steps}) - disagreeing
    dropped = sum(c.get("paths_dropped_consensus", 0) for c in filtered.problem_counters.values())
    assert dropped == disagreeing
    assert sum(o.num_paths for o in filtered.outcomes) == len({r.path_id for r in filtered.steps})


def test_sample_mode(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:3], p_correct=0.5)
    config = CONFIG.with_overrides({"search.mode": "sample", "search.samples_per_problem": 4})
    policy = ScriptedPolicy(scripted)
    result = label_batch(_problems(scripted), config, policy, tool, None, "b")
    assert result.counters["search_rounds"] == 1
    assert [r.n for r in policy.calls[0]] == [4, 4, 4]
    assert all(o.status == "labeled" for o in result.outcomes)
    assert to_table(result.steps, STEPS).num_rows > 0


def test_label_given_solutions_binary_search_is_cheaper(gsm8k_rows, tool) -> None:
    # Problems whose reference steps the tool does not flag: this test is about MC, not the tool
    # (e.g. "200 GB * 40% = 80 GB" is read as the claim "40% = 80" at the time of writing).
    rows = [
        row for row in gsm8k_rows
        if all(c.verdict.value != "incorrect" for c in tool.check_steps(
            [StepContext(row["question"], (), s) for s in reference_steps(row["answer"])[0]]))
    ][:8]
    assert len(rows) >= 6
    scripted = _scripted(rows, p_correct=1.0)
    problems = _problems(scripted)
    solutions, errors = [], []
    for index, row in enumerate(rows):
        slip = first_slip(row["answer"], random.Random(index))
        steps, _ = reference_steps(row["answer"])
        if index % 2 and slip is not None:
            solutions.append([list(slip.steps)])
            errors.append(slip.error_index)
        else:
            solutions.append([steps])
            errors.append(-1)

    def run(binary: bool, rule: str, skip: bool = True):
        config = CONFIG.with_overrides(
            {"search.first_error_search": binary, "fuse.rule": rule, "fuse.after_first_error": "negative",
             "search.mc_early_stop": 0, "search.skip_mc_after_disproved": skip}
        )
        return label_given_solutions(problems, solutions, config, ScriptedPolicy(scripted),
                                     tool if rule == "hybrid" else None, None)

    results = {(binary, rule): run(binary, rule) for binary in (False, True) for rule in ("mc", "hybrid")}
    # Hybrid without skipping MC after a disproved step: same labels, more rollouts.
    for binary in (False, True):
        results[(binary, "hybrid-no-skip")] = run(binary, "hybrid", skip=False)
        skipped = sum(o.rollouts for o in results[(binary, "hybrid")].outcomes)
        assert skipped < sum(o.rollouts for o in results[(binary, "hybrid-no-skip")].outcomes)
    for result in results.values():
        for problem, error in zip(problems, errors):
            steps = sorted((r for r in result.steps if r.problem_id == problem.problem_id), key=lambda r: r.step_index)
            predicted = next((r.step_index for r in steps if not r.fused_label), -1)
            assert predicted == error
    per_step = sum(o.rollouts for o in results[(False, "mc")].outcomes)
    binary = sum(o.rollouts for o in results[(True, "mc")].outcomes)
    assert 0 < binary < per_step


def test_hybrid_confirms_an_mc_zero_after_a_verified_step(gsm8k_rows, tool) -> None:
    """A weak policy (a clean prefix reaches gold 1 time in 4): k-rollout zeros after steps the
    tool verified are re-sampled with k more, and fewer of them overrule the verifier."""
    rows = gsm8k_rows[:8]
    scripted = _scripted(rows, p_correct=0.25, step_error_rate=0.0, recovery_rate=0.0)
    solutions = [[reference_steps(row["answer"])[0]] for row in rows]
    k = 6

    def run(confirm: bool):
        config = CONFIG.with_overrides({
            "search.first_error_search": False, "search.mc_early_stop": 0, "search.mc_rollouts": k,
            "search.mc_confirm_verified_zero": confirm,
        })
        return label_given_solutions(_problems(scripted), solutions, config, ScriptedPolicy(scripted), tool, None)

    overruled = {}
    for confirm in (False, True):
        result = run(confirm)
        zeros = [r for r in result.steps
                 if r.tool_verdict == "correct" and r.mc_correct == 0 and r.mc_total and r.mc_total > 1]
        assert zeros and all(r.mc_total == (2 * k if confirm else k) for r in zeros)
        # elsewhere (no zero, or no verified step) nothing more was sampled
        others = [r for r in result.steps if r.mc_total and r.mc_total > 1 and r not in zeros]
        assert all(r.mc_total == k or (r.tool_verdict == "correct" and r.mc_total == 2 * k) for r in others)
        overruled[confirm] = sum(r.label_source == "mc_over_verified" for r in result.steps)
    assert overruled[True] < overruled[False]


def test_hybrid_confirms_every_zero_only_when_asked(gsm8k_rows, tool) -> None:
    """search.mc_confirm_every_zero: a zero after a step no verifier decided gets k more rollouts
    too (off: only zeros after verified steps do). The step here is one the scripted policy cannot
    continue, so the zero is true and stays 0 of 2k: the cost of the rule on real errors."""
    rows = gsm8k_rows[:4]
    scripted = _scripted(rows, p_correct=1.0, step_error_rate=0.0, recovery_rate=0.0)
    solutions = [["Let us read the question again carefully."] for _ in rows]
    k = 4
    for every in (False, True):
        config = CONFIG.with_overrides({"search.first_error_search": False, "search.mc_early_stop": 0,
                                        "search.mc_rollouts": k, "search.mc_confirm_every_zero": every})
        result = label_given_solutions(_problems(scripted), solutions, config, ScriptedPolicy(scripted), tool, None)
        assert len(result.steps) == len(rows)
        assert all(r.tool_verdict != "correct" for r in result.steps)
        assert [(r.mc_correct, r.mc_total) for r in result.steps] == [(0, 2 * k if every else k)] * len(rows)


def test_hybrid_lets_a_zero_at_step_0_yield_to_a_later_disproved_step(gsm8k_rows, tool) -> None:
    """A policy that never reaches gold (too hard for it): binary search finds its first zero at
    step 0 of every wrong solution. With a slip the tool disproves later, that zero is no measured
    drop, and the slip is the first error (fuse.zero_without_drop_yields); switched off, step 0 is."""
    rows, solutions, errors = [], [], []
    for index, row in enumerate(gsm8k_rows):
        slip = first_slip(row["answer"], random.Random(index))
        if slip is None or slip.error_index == 0:
            continue
        checks = tool.check_steps([StepContext(row["question"], tuple(slip.steps[:i]), s)
                                   for i, s in enumerate(slip.steps)])
        verdicts = [check.verdict.value for check in checks]
        if "incorrect" not in verdicts or verdicts.index("incorrect") != slip.error_index:
            continue  # this test is about MC zeros before a disproof, not the tool
        rows.append(row)
        solutions.append([list(slip.steps)])
        errors.append(slip.error_index)
    assert len(rows) >= 3
    scripted = _scripted(rows, p_correct=0.0, step_error_rate=0.0, recovery_rate=0.0)

    def first_errors(yields: bool) -> list[int]:
        config = CONFIG.with_overrides({"search.mc_early_stop": 0, "fuse.after_first_error": "negative",
                                        "fuse.zero_without_drop_yields": yields})
        result = label_given_solutions(_problems(scripted), solutions, config, ScriptedPolicy(scripted), tool, None)
        firsts = []
        for problem in _problems(scripted):
            steps = sorted((r for r in result.steps if r.problem_id == problem.problem_id), key=lambda r: r.step_index)
            assert steps[0].mc_total and steps[0].mc_correct == 0  # the search's zero at step 0
            firsts.append(next(r.step_index for r in steps if not r.fused_label))
            if yields:
                assert {r.label_source for r in steps[: firsts[-1]]} == {"zero_before_disproved"}
        return firsts

    assert first_errors(True) == errors
    assert first_errors(False) == [0] * len(errors)


class _CrashingPolicy(ScriptedPolicy):
    """Raises from generate() whenever a batch holds a request of the poisoned question."""

    poisoned: str = ""

    def generate(self, requests):
        if any(self.poisoned in m.content for r in requests for m in r.messages):
            raise RuntimeError("backend crashed")
        return super().generate(requests)


def test_a_raising_backend_fails_only_the_problem_that_crashes_it(gsm8k_rows, tool) -> None:
    scripted = _scripted(gsm8k_rows[:3])
    problems = _problems(scripted)
    policy = _CrashingPolicy(scripted)
    policy.poisoned = scripted[1].question
    result = label_batch(problems, CONFIG, policy, tool, None, "b")
    by_id = {o.problem_id: o for o in result.outcomes}
    assert by_id[problems[1].problem_id].status == "failed"
    assert by_id[problems[1].problem_id].failed_stage == "search"
    assert "backend crashed" in by_id[problems[1].problem_id].error
    clean = label_batch([problems[0], problems[2]], CONFIG, ScriptedPolicy(scripted), tool, None, "b")
    assert result.steps == clean.steps


def test_gold_reach_names_the_problems_the_policy_never_solved(gsm8k_rows, tool) -> None:
    """A problem no path and no rollout solves gets MC labels from zeros only (first error at the
    earliest step probed): the build summary counts it apart (flows.progress.gold_reach_line)."""
    from labelers.pipeline import gold_reach

    able = _scripted(gsm8k_rows[:2], p_correct=0.9, step_error_rate=0.3)
    unable = _scripted(gsm8k_rows[2:4], p_correct=0.0, step_error_rate=1.0, recovery_rate=0.0)
    result = label_batch(_problems(able + unable), CONFIG, ScriptedPolicy(able + unable), tool, None, "build-1")
    assert all(o.status == "labeled" for o in result.outcomes)
    assert gold_reach(result.steps) == (2, 4)
    unable_ids = {p.problem_id for p in _problems(unable)}
    unable_rows = [row for row in result.steps if row.problem_id in unable_ids]
    assert unable_rows and not any(row.mc_correct for row in unable_rows)
    # A rollout that reached gold counts only when sampled, not when inferred.
    row = unable_rows[0]
    assert gold_reach([dataclasses.replace(row, mc_correct=1, mc_total=4, mc_inferred=True)]) == (0, 1)
    assert gold_reach([dataclasses.replace(row, mc_correct=1, mc_total=4, mc_inferred=False)]) == (1, 1)
    assert gold_reach([dataclasses.replace(row, path_correct=True)]) == (1, 1)
