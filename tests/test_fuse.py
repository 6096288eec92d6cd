"""Fusion truth table, consensus and rationale format."""

from __future__ import annotations

import pytest

from labelers.config import FuseConfig
from labelers.fuse import NO_MC, MCSignal, first_negative, fuse_path, fuse_step, path_consensus, rows_to_keep
from labelers.rationale import build_rationale, parse_verdict
from labelers.verify.base import JUDGE_NOT_RUN, JudgeVerdict, LeanCheck, LeanState, ToolCheck, ToolVerdict
from tests.support.step_signals import signals

CORRECT = ToolCheck(ToolVerdict.CORRECT, "sympy",
                    {"claims": [{"text": "3*4 = 12", "holds": True, "lhs_value": "12", "rhs_value": "12"}]})
INCORRECT = ToolCheck(ToolVerdict.INCORRECT, "sympy",
                      {"claims": [{"text": "3*4 = 13", "holds": False, "lhs_value": "12", "rhs_value": "13"}]})
UNVERIFIABLE = ToolCheck(ToolVerdict.UNVERIFIABLE, "none", {"reason": "no checkable claim"})
PROVED = LeanCheck(LeanState.PROVED, "theorem t : 3*4 = 12 := by sorry", "norm_num")
DISPROVED = LeanCheck(LeanState.DISPROVED, "theorem t : 3*4 = 13 := by sorry", "norm_num")
LEAN_OFF = LeanCheck(LeanState.DISABLED)
MC_HIGH = MCSignal(6, 8)
MC_LOW = MCSignal(1, 8)
MC_ZERO = MCSignal(0, 8)
INFERRED_POS = MCSignal(inferred_label=True)
INFERRED_NEG = MCSignal(inferred_label=False)

HYBRID = FuseConfig()


@pytest.mark.parametrize(
    ("tool", "lean", "mc", "path_correct", "expected"),
    [
        # branch 1: a disproved step is negative whatever MC says
        (INCORRECT, LEAN_OFF, MC_HIGH, True, (-1.0, False, "verifier_disproved", False)),
        (INCORRECT, LEAN_OFF, MC_ZERO, False, (-1.0, False, "verifier_disproved", True)),
        (UNVERIFIABLE, DISPROVED, MC_HIGH, True, (-1.0, False, "verifier_disproved", False)),
        (CORRECT, DISPROVED, MC_HIGH, True, (-1.0, False, "verifier_disproved", False)),  # tool vs Lean
        # branch 2: verified with MC > 0 or no MC
        (CORRECT, LEAN_OFF, MC_HIGH, True, (0.875, True, "verified", True)),
        (CORRECT, LEAN_OFF, MC_LOW, False, (0.5625, True, "verified", True)),
        (CORRECT, LEAN_OFF, NO_MC, False, (1.0, True, "verified", True)),
        (UNVERIFIABLE, PROVED, INFERRED_POS, True, (1.0, True, "verified", True)),
        # branch 3: verified but no rollout reaches the answer
        (CORRECT, LEAN_OFF, MC_ZERO, False, (-0.5, False, "mc_over_verified", False)),
        (CORRECT, LEAN_OFF, INFERRED_NEG, False, (-0.5, False, "mc_over_verified", False)),
        # branch 4: unverifiable takes the MC label
        (UNVERIFIABLE, LEAN_OFF, MC_HIGH, False, (0.75, True, "mc", True)),
        (UNVERIFIABLE, LEAN_OFF, MC_ZERO, True, (-1.0, False, "mc", True)),
        (None, None, INFERRED_POS, False, (0.5, True, "mc", True)),
        (UNVERIFIABLE, LEAN_OFF, INFERRED_NEG, True, (-0.5, False, "mc", True)),
        # branch 5: nothing at all
        (UNVERIFIABLE, LEAN_OFF, NO_MC, True, (0.0, True, "path_outcome", True)),
        (None, None, NO_MC, False, (0.0, False, "path_outcome", True)),
    ],
)
def test_hybrid_truth_table(tool, lean, mc, path_correct, expected) -> None:
    fused = fuse_step(signals(tool, lean, mc), HYBRID, path_correct)
    assert (fused.reward, fused.label, fused.source, fused.signals_agree) == pytest.approx(expected)
    assert -1.0 <= fused.reward <= 1.0
    assert (fused.reward > 0) == fused.label or fused.reward == 0.0


def test_mc_threshold_applies_to_unverifiable_only() -> None:
    config = FuseConfig(mc_threshold=0.25)
    assert fuse_step(signals(UNVERIFIABLE, LEAN_OFF, MC_LOW), config).label is False  # 0.125 <= 0.25
    assert fuse_step(signals(CORRECT, LEAN_OFF, MC_LOW), config).label is True  # verified: MC > 0 suffices


@pytest.mark.parametrize(
    ("rule", "tool", "lean", "mc", "expected"),
    [
        ("mc", INCORRECT, LEAN_OFF, MC_HIGH, (0.75, True, "mc")),
        ("mc", CORRECT, LEAN_OFF, MC_ZERO, (-1.0, False, "mc")),
        ("mc", CORRECT, LEAN_OFF, NO_MC, (0.0, True, "path_outcome")),
        ("tool", INCORRECT, LEAN_OFF, MC_HIGH, (-1.0, False, "tool_incorrect")),
        ("tool", CORRECT, LEAN_OFF, MC_ZERO, (1.0, True, "tool_correct")),
        ("tool", UNVERIFIABLE, LEAN_OFF, MC_ZERO, (0.0, True, "tool_unverifiable")),
        ("tool", None, None, MC_ZERO, (0.0, True, "tool_unverifiable")),
        ("lean", INCORRECT, DISPROVED, MC_HIGH, (-1.0, False, "lean_disproved")),
        ("lean", INCORRECT, PROVED, MC_HIGH, (1.0, True, "lean_proved")),
        ("lean", CORRECT, LeanCheck(LeanState.FORMALIZATION_FAILED), MC_ZERO, (0.0, True, "lean_no_verdict")),
    ],
)
def test_single_signal_rules(rule, tool, lean, mc, expected) -> None:
    fused = fuse_step(signals(tool, lean, mc), FuseConfig(rule=rule), True)
    assert (fused.reward, fused.label, fused.source) == pytest.approx(expected)


# A binary search whose first zero is at step 0 (every probe 0), on a path whose step 3 the tool
# disproves: the zero at step 0 has no measured positive before it.
ZERO_AT_START = [MC_ZERO, INFERRED_NEG, MC_ZERO, INFERRED_NEG, INFERRED_NEG]
TOOLS_SLIP_AT_3 = [CORRECT, UNVERIFIABLE, CORRECT, INCORRECT, CORRECT]
SLIP_PATH = signals(TOOLS_SLIP_AT_3, [None] * 5, ZERO_AT_START)


def _sources(fused) -> list[str]:
    return [step.source for step in fused]


def test_zero_without_a_measured_drop_yields_to_a_later_disproof() -> None:
    fused = fuse_path(SLIP_PATH, HYBRID, False)
    assert first_negative([step.label for step in fused]) == 3
    assert _sources(fused) == ["zero_before_disproved"] * 3 + ["verifier_disproved", "mc_over_verified"]
    assert [step.reward for step in fused[:3]] == [0.5, 0.0, 0.5]  # verified 0.5, unverifiable 0
    # What fuse_step alone says (and the rule switched off): step 0 is the first error.
    plain = [fuse_step(signals(t, None, m), HYBRID, False) for t, m in zip(TOOLS_SLIP_AT_3, ZERO_AT_START)]
    off = fuse_path(SLIP_PATH, FuseConfig(zero_without_drop_yields=False), False)
    assert _sources(off) == _sources(plain) and first_negative([s.label for s in off]) == 0


def test_no_evidence_is_no_label_yielded_steps_are_low_confidence() -> None:
    """A yielded zero's + rests on nothing measured: signals_agree is false (export
    --min-confidence cuts there) and the soft export gives the hard label, not the zero."""
    from data_schemas.export import LabeledPath, apply_min_confidence, soft_values

    fused = fuse_path(SLIP_PATH, HYBRID, False)
    assert [step.signals_agree for step in fused[:3]] == [False, False, False]
    # the unverifiable step agreed with MC before the rule flipped it; the rule made it disagree
    assert fuse_step(signals(UNVERIFIABLE, None, INFERRED_NEG), HYBRID, False).signals_agree is True
    path = LabeledPath(
        build_id="b", problem_id="p", path_id="x", source="given", question="q", gold_answer="1",
        steps=[f"s{i}" for i in range(5)], labels=[step.label for step in fused], rationales=[""] * 5,
        consensus=False, final_answer="2", generator_model="m", finished_at=None,
        mc_values=[0.0, None, 0.0, None, None], mc_totals=[8, None, 8, None, None],
        signals_agree=[step.signals_agree for step in fused], label_sources=[step.source for step in fused],
        num_steps=5,
    )
    values, fallback = soft_values(path)
    assert values[:3] == [1.0, 1.0, 1.0] and [label for label in path.labels[:3]] == [True] * 3  # soft = hard
    assert fallback >= 3
    assert apply_min_confidence(path, 1) is None  # cut before step 0: nothing confident is left


def test_a_measured_drop_stands_before_a_disproof() -> None:
    # step 0 measured positive, step 1 zero: a drop, so step 1 is the first error.
    mcs = [MC_HIGH, MC_ZERO, INFERRED_NEG, INFERRED_NEG, INFERRED_NEG]
    fused = fuse_path(signals(TOOLS_SLIP_AT_3, [None] * 5, mcs), HYBRID, False)
    assert first_negative([step.label for step in fused]) == 1
    assert "zero_before_disproved" not in _sources(fused)
    # an inferred positive is not a measurement: the zero after it still yields
    mcs = [INFERRED_POS, MC_ZERO, INFERRED_NEG, INFERRED_NEG, INFERRED_NEG]
    assert first_negative([s.label for s in fuse_path(signals(TOOLS_SLIP_AT_3, [None] * 5, mcs), HYBRID, False)]) == 3


@pytest.mark.parametrize(
    ("tools", "config"),
    [
        ([CORRECT, UNVERIFIABLE, CORRECT, CORRECT, CORRECT], HYBRID),  # nothing disproved: MC decides
        (TOOLS_SLIP_AT_3, FuseConfig(rule="mc")),  # MC alone never sees the tool
        ([INCORRECT, UNVERIFIABLE, CORRECT, CORRECT, CORRECT], HYBRID),  # disproved at 0: nothing before
    ],
)
def test_path_rule_leaves_other_paths_alone(tools, config) -> None:
    fused = fuse_path(signals(tools, [None] * 5, ZERO_AT_START), config, False)
    plain = [fuse_step(signals(t, None, m), config, False) for t, m in zip(tools, ZERO_AT_START)]
    assert _sources(fused) == _sources(plain)
    assert first_negative([step.label for step in fused]) == 0


def test_a_judge_negative_does_not_yield() -> None:
    config = FuseConfig(judge="verifier")
    tools = [UNVERIFIABLE, CORRECT, INCORRECT]
    judges = [JudgeVerdict(False, "ok"), JUDGE_NOT_RUN, JUDGE_NOT_RUN]
    fused = fuse_path(signals(tools, [None] * 3, [MC_ZERO, INFERRED_NEG, INFERRED_NEG], judges), config, False)
    assert _sources(fused)[0] == "judge_disproved"


def test_rationale_of_a_yielded_zero() -> None:
    fused = fuse_path(SLIP_PATH, HYBRID, False)
    text = build_rationale(signals(CORRECT, LEAN_OFF, MC_ZERO), fused[0])
    assert "0 of 8 rollouts" in text and "later step is disproved" in text
    assert parse_verdict(text) is True


def test_path_consensus_defined_for_correct_and_wrong_paths() -> None:
    config = FuseConfig()
    # wrong path: MC and tool both put the first error at step 2
    path = signals([CORRECT, UNVERIFIABLE, INCORRECT, CORRECT], [None] * 4, [MC_HIGH, MC_LOW, MC_ZERO, INFERRED_NEG])
    agree = path_consensus(path, config)
    assert agree == (True, 2, 2)
    # tool flags step 1, MC step 2
    path = signals([CORRECT, INCORRECT, CORRECT], [None] * 3, [MC_HIGH, MC_LOW, MC_ZERO])
    assert path_consensus(path, config) == (False, 2, 1)
    # all-correct path: both -1
    path = signals([CORRECT, UNVERIFIABLE], [None, None], [INFERRED_POS, MC_HIGH])
    assert path_consensus(path, config) == (True, -1, -1)
    # MC never estimated counts as no MC error
    assert path_consensus(signals([CORRECT, INCORRECT], [None, None], [NO_MC, NO_MC]), config) == (False, -1, 1)


def test_rows_to_keep_after_first_error() -> None:
    labels = [True, True, False, True, False]
    assert rows_to_keep(labels, "truncate") == (3, 2)
    assert rows_to_keep(labels, "negative") == (5, 2)
    assert rows_to_keep([True, True], "truncate") == (2, -1)


@pytest.mark.parametrize("tool", [CORRECT, INCORRECT, UNVERIFIABLE, None])
@pytest.mark.parametrize("mc", [MC_HIGH, MC_ZERO, INFERRED_POS, NO_MC])
def test_rationale_ends_in_parseable_verdict(tool, mc) -> None:
    fused = fuse_step(signals(tool, LEAN_OFF, mc), HYBRID, True)
    text = build_rationale(signals(tool, LEAN_OFF, mc), fused)
    assert parse_verdict(text) is fused.label
    assert text.splitlines()[-1] in ("Verdict: \\boxed{+}", "Verdict: \\boxed{-}")
    assert f"rule: {fused.source}" in text


def test_rationale_states_its_grounds() -> None:
    fused = fuse_step(signals(INCORRECT, DISPROVED, MC_ZERO), HYBRID, False)
    text = build_rationale(signals(INCORRECT, DISPROVED, MC_ZERO), fused)
    assert "3*4 = 13 fails (12 vs 13)" in text
    assert "negation was proved by norm_num" in text
    assert "0 of 8 rollouts" in text
    assert parse_verdict(text) is False


def test_parse_verdict_rejects_other_text() -> None:
    assert parse_verdict("") is None
    assert parse_verdict("Verdict: \\boxed{+}\nmore text") is None
    assert parse_verdict("Verdict: +") is None
    assert parse_verdict("blah\nVerdict: \\boxed{-}  ") is False


# ---------------------------------------------------------------------------------------------
# Documented failure cases of the hybrid's rules (docs/algorithms.md, "Fusion"). Each test
# states the truth on a case where a rule is wrong by design; the rule's setting that is wrong
# there is marked xfail(strict=True), so a change that makes it right (or the other setting
# wrong) fails the suite and the documentation must follow.
# ---------------------------------------------------------------------------------------------

# A real reasoning error at step 0 (the policy could solve the problem, so the zero at step 0 IS
# a drop from the unsampled question) and a later slip the tool disproves at step 3.
@pytest.mark.parametrize("yields", [
    pytest.param(True, marks=pytest.mark.xfail(strict=True, reason="path rule: moves the first error to the slip")),
    False,
])
def test_early_reasoning_error_before_a_disproved_slip(yields: bool) -> None:
    fused = fuse_path(SLIP_PATH, FuseConfig(zero_without_drop_yields=yields), False)
    assert first_negative([step.label for step in fused]) == 0


# The same signals on a problem too hard for the policy: step 0 is right, the slip at 3 is the
# first error. Without the path rule the zero at step 0 is taken as the error.
@pytest.mark.parametrize("yields", [
    True,
    pytest.param(False, marks=pytest.mark.xfail(strict=True,
                                                reason="no path rule: a zero at step 0 on a hard problem")),
])
def test_problem_beyond_the_policy_with_a_disproved_slip(yields: bool) -> None:
    fused = fuse_path(SLIP_PATH, FuseConfig(zero_without_drop_yields=yields), False)
    assert first_negative([step.label for step in fused]) == 3


def _wrong_operation_cases(count: int):
    """Solutions whose first error (step 1) is a wrong operation with right arithmetic: the tool
    verifies it; only MC can see it. Rollouts from the wrong prefix recover 1 time in 10."""
    from tests.support.scripted_policy import ScriptedProblem

    cases = []
    for i in range(count):
        a, b, c = 3 + i, 4 + i % 5, 1 + i % 3
        question = f"Tom buys {a} bags with {b} apples each and eats {c} apples. How many apples are left?"
        good = (f"Tom buys {a} bags.", f"Each bag has {b} apples, so {a} * {b} = {a * b} apples.",
                f"He eats {c}, so {a * b} - {c} = {a * b - c}.", f"The answer is \\boxed{{{a * b - c}}}.")
        bad = (f"Tom buys {a} bags.", f"Each bag has {b} apples, so {a} + {b} = {a + b} apples.",
               f"He eats {c}, so {a + b} - {c} = {a + b - c}.", f"The answer is \\boxed{{{a + b - c}}}.")
        cases.append((ScriptedProblem(question, str(a * b - c), good, (bad,), p_correct=1.0, recovery_rate=0.1), bad))
    return cases


def test_confirmation_turns_measured_zeros_at_verified_wrong_steps_positive() -> None:
    """Confirmation re-samples only zeros after verified steps, never positives: at a wrong
    operation with right arithmetic it can only move the label toward +. On 16 such solutions
    (k = 4, binary search) it finds fewer first errors, with more rollouts."""
    from data_schemas.records import Problem
    from labelers.config import BuildConfig
    from labelers.identity import problem_id
    from labelers.pipeline import label_given_solutions
    from labelers.verify.tool import ToolStepVerifier
    from tests.support.scripted_policy import ScriptedPolicy

    cases = _wrong_operation_cases(16)
    problems = [Problem(problem_id(p.question, "t"), "t", p.question, p.gold_answer) for p, _ in cases]
    config = BuildConfig(seed=3).with_overrides({"tool.workers": 1, "search.mc_early_stop": 0, "search.mc_rollouts": 4,
                                                 "fuse.after_first_error": "negative"})
    found, rollouts = {}, {}
    with ToolStepVerifier(config.tool) as tool:
        for confirm in (False, True):
            run_config = config.with_overrides({"search.mc_confirm_verified_zero": confirm})
            result = label_given_solutions(problems, [[list(bad)] for _, bad in cases], run_config,
                                           ScriptedPolicy([p for p, _ in cases]), tool, None)
            firsts = []
            for problem in problems:
                rows = sorted((r for r in result.steps if r.problem_id == problem.problem_id),
                              key=lambda r: r.step_index)
                assert rows[1].tool_verdict == "correct"  # the tool cannot see this error
                firsts.append(next((r.step_index for r in rows if not r.fused_label), -1))
            found[confirm] = sum(first == 1 for first in firsts)
            rollouts[confirm] = sum(o.rollouts for o in result.outcomes)
    assert found[True] < found[False] and rollouts[True] > rollouts[False]


# -- relative progress (GenPRM; FuseConfig.mc_relative_progress) -----------------------------------

def _per_step(values: list[tuple[int, int]], tools=None) -> dict:
    mcs = [MCSignal(c, n) for c, n in values]
    return signals(tools or [UNVERIFIABLE] * len(mcs), [None] * len(mcs), mcs)


def test_relative_progress_flags_a_drop_that_some_rollouts_survive() -> None:
    """3/4 -> 1/4: MC > 0 at step 2, so MC alone calls it +; a relative drop of 1/3 < 0.5 makes
    it the first error, its reward -(1 - 1/4), and the step after it follows the usual MC label."""
    path = _per_step([(3, 4), (3, 4), (1, 4), (1, 4)])
    plain = fuse_path(path, FuseConfig(rule="mc"), False)
    assert first_negative([s.label for s in plain]) == -1
    for rule in ("mc", "hybrid"):
        fused = fuse_path(path, FuseConfig(rule=rule, mc_relative_progress=0.5), False)
        assert _sources(fused) == ["mc", "mc", "mc_relative_drop", "mc"]
        assert first_negative([s.label for s in fused]) == 2 and fused[2].reward == -0.75


def test_relative_progress_reads_sampled_neighbours_only() -> None:
    """Step 0 (no sampled predecessor), a step after an inferred label (binary search), a step
    after a zero, and a checker's decision are left as they are."""
    config = FuseConfig(rule="hybrid", mc_relative_progress=0.9)
    mcs = [MCSignal(1, 4), INFERRED_POS, MCSignal(1, 4), MCSignal(0, 4), MCSignal(1, 4)]
    fused = fuse_path(signals([UNVERIFIABLE] * 5, [None] * 5, mcs), config, False)
    assert "mc_relative_drop" not in _sources(fused)
    disproved = fuse_path(_per_step([(4, 4), (1, 4)], [UNVERIFIABLE, INCORRECT]), config, False)
    assert _sources(disproved) == ["mc", "verifier_disproved"]  # a disproof stays a disproof
    # a checker verifies arithmetic, not reasoning: the drop overrules "verified" as a zero does
    verified = fuse_path(_per_step([(4, 4), (1, 4)], [UNVERIFIABLE, CORRECT]), config, False)
    assert _sources(verified) == ["mc", "mc_relative_drop"]
    assert verified[1].signals_agree is False  # the checker said correct: low confidence, as mc_over_verified
    unverified = fuse_path(_per_step([(4, 4), (1, 4)]), config, False)
    assert unverified[1].signals_agree is True  # MC alone decided, nothing disagrees
    assert fuse_path(_per_step([(4, 4), (1, 4)]), FuseConfig(rule="tool", mc_relative_progress=0.9),
                     False)[1].label is True


def test_relative_progress_failure_case_noise_of_a_share_of_four() -> None:
    """Its documented cost: at k = 4 a correct step after 4/4 reads 3/4 by chance, and epsilon =
    0.8 calls it the first error; a loose epsilon (0.5) does not."""
    path = _per_step([(4, 4), (3, 4), (3, 4)])
    strict = fuse_path(path, FuseConfig(rule="mc", mc_relative_progress=0.8), True)
    assert first_negative([s.label for s in strict]) == 1
    loose = fuse_path(path, FuseConfig(rule="mc", mc_relative_progress=0.5), True)
    assert first_negative([s.label for s in loose]) == -1


def test_a_relative_drop_stands_before_a_disproof_and_is_low_in_the_soft_export() -> None:
    from data_schemas.export import LabeledPath, soft_values

    tools = [UNVERIFIABLE, UNVERIFIABLE, INCORRECT]
    path_signals = _per_step([(4, 4), (1, 4), (0, 4)], tools)
    fused = fuse_path(path_signals, FuseConfig(mc_relative_progress=0.5), False)
    assert _sources(fused) == ["mc", "mc_relative_drop", "verifier_disproved"]  # a measured drop stands
    path = LabeledPath(
        build_id="b", problem_id="p", path_id="x", source="given", question="q", gold_answer="1",
        steps=["s0", "s1", "s2"], labels=[s.label for s in fused], rationales=[""] * 3, consensus=False,
        final_answer="2", generator_model="m", finished_at=None, mc_values=[1.0, 0.25, 0.0], mc_totals=[4, 4, 4],
        signals_agree=[s.signals_agree for s in fused], label_sources=[s.source for s in fused], num_steps=3,
    )
    assert soft_values(path)[0][:2] == [1.0, 0.0]  # the hard label, not the share 0.25
    text = build_rationale(signals(UNVERIFIABLE, LEAN_OFF, MCSignal(1, 4)), fused[1])
    assert "relative progress" in text and parse_verdict(text) is False


def test_relative_progress_leaves_the_identity_of_configs_without_it() -> None:
    from labelers.config import BuildConfig

    config = BuildConfig()
    assert config.with_overrides({"fuse.mc_relative_progress": None}).labeling_hash() == config.labeling_hash()
    assert config.with_overrides({"fuse.mc_relative_progress": 0.8}).labeling_hash() != config.labeling_hash()
