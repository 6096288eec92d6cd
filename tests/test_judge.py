"""The step judge (labelers/judge.py): prompt, parsing, batching, storage, fusion, rationale, and
the eval signal, with a scripted judge (tests/support/scripted_judge.py) in place of a model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from labelers.config import BuildConfig, FuseConfig, JudgeConfig
from labelers.evaluation import runner
from labelers.fuse import NO_MC, MCSignal, fuse_step
from labelers.judge import JUDGE_NOT_RUN, judge_messages, judge_steps, parse_judge_reply
from labelers.policy.base import GenerationResult
from labelers.verify.base import JudgeVerdict, StepContext, ToolCheck, ToolVerdict
from tests.support.scripted_judge import ScriptedJudge
from tests.support.step_signals import signals
from tests.test_eval_run import _config, injected_set, scripted_for


@pytest.fixture(scope="module")
def small_set():
    """6 solutions with an injected error, 4 correct (as tests/test_eval_run.py's)."""
    return injected_set(6, 4, seed=11)


@pytest.mark.parametrize(
    ("reply", "correct", "status"),
    [
        ("The product 3*4 is 12, as stated.\nVerdict: correct", True, "ok"),
        ("It adds instead of multiplying.\nVerdict: Incorrect", False, "ok"),
        ("Reason: wrong operation.\n**Verdict:** incorrect", False, "ok"),  # markdown bold
        ("Reason: wrong operation.\nVerdict: **incorrect**", False, "ok"),
        ("Verdict: correct\nOn second thought the sum is off.\nVerdict: incorrect", False, "ok"),
        ("The step is fine. \\boxed{+}", True, "ok"),
        ("Verdict: wrong", False, "ok"),
        ("I am not sure what the step means.", None, "unparsed"),
        ("", None, "unparsed"),
    ],
)
def test_parse_judge_reply(reply, correct, status):
    verdict = parse_judge_reply(reply)
    assert (verdict.correct, verdict.status, verdict.reply) == (correct, status, reply)


def test_reason_is_the_text_before_the_verdict():
    verdict = parse_judge_reply("Reason: 12 + 5 is 17, not 18.\nVerdict: incorrect")
    assert verdict.reason == "12 + 5 is 17, not 18." and verdict.verdict == "incorrect"


def test_prompt_has_question_previous_steps_step_and_tool_result():
    context = StepContext("How many apples?", ("He has 3 bags.", "Each has 4."), "So 3 + 4 = 7 apples.")
    system, user = judge_messages(context, "Tool check (sympy): 3 + 4 = 7 holds (7 vs 7).")
    assert "Verdict: correct" in system.content and "reasoning" in system.content
    text = user.content
    for part in ("How many apples?", "Step 1: He has 3 bags.", "Step 2: Each has 4.",
                 "Step 3 (check this one):\nSo 3 + 4 = 7 apples.", "Tool result: Tool check (sympy): 3 + 4 = 7 holds"):
        assert part in text


def test_judge_steps_is_one_generate_call_and_keeps_failures():
    calls = []

    def generate(requests):
        calls.append(len(requests))
        out = []
        for i, request in enumerate(requests):
            if i == 1:
                out.append(GenerationResult(request, (), 5, error="backend timeout"))
            else:
                judge = ScriptedJudge(lambda step, tool: "ok\nVerdict: correct")
                out += judge.generate([request])
        return out

    contexts = [StepContext("q", (), f"step {i}") for i in range(3)]
    verdicts = judge_steps(contexts, [None] * 3, generate, seeds=[1, 2, 3])
    assert calls == [3]
    assert [v.status for v in verdicts] == ["ok", "failed", "ok"]
    assert verdicts[1].reply == "backend timeout" and verdicts[1].correct is None


def _verdict(correct: bool | None) -> JudgeVerdict:
    """The judge's result as fusion reads it (a verdict, or none: an unparsed reply)."""
    return JudgeVerdict(correct, "ok" if correct is not None else "unparsed")


def test_fusion_with_the_judge():
    unverifiable = ToolCheck(ToolVerdict.UNVERIFIABLE, "none", {})
    incorrect = ToolCheck(ToolVerdict.INCORRECT, "sympy", {})
    correct_tool = ToolCheck(ToolVerdict.CORRECT, "sympy", {})
    mc_good = MCSignal(3, 4)
    off = FuseConfig(rule="hybrid")
    as_verifier = FuseConfig(rule="hybrid", judge="verifier")
    tiebreak = FuseConfig(rule="hybrid", judge="tiebreak")
    def source(tool, mc, judged, config, path_correct=True) -> str:
        return fuse_step(signals(tool, None, mc, _verdict(judged)), config, path_correct).source

    # off: the judge changes nothing
    assert source(unverifiable, mc_good, False, off) == "mc"
    # verifier: below the tool, in place of a missing verifier decision
    assert source(unverifiable, mc_good, False, as_verifier) == "judge_disproved"
    assert source(correct_tool, mc_good, False, as_verifier) == "verified"
    assert source(incorrect, mc_good, True, as_verifier) == "verifier_disproved"
    assert source(unverifiable, MCSignal(0, 4), True, as_verifier, False) == "mc_over_judge"
    # tiebreak: only where neither a verifier nor MC decides
    assert source(unverifiable, mc_good, False, tiebreak) == "mc"
    assert source(unverifiable, NO_MC, False, tiebreak) == "judge_tiebreak"
    assert source(unverifiable, NO_MC, None, tiebreak) == "path_outcome"
    # the judge's own rule
    judge_rule = FuseConfig(rule="judge")
    assert [source(None, NO_MC, j, judge_rule) for j in (True, False, None)] == [
        "judge_correct", "judge_incorrect", "judge_no_verdict"]


def test_config_hash_unchanged_without_the_judge():
    plain = BuildConfig()
    assert plain.config_hash() == BuildConfig(judge=JudgeConfig(max_tokens=99)).config_hash()
    assert plain.config_hash() != plain.with_overrides({"judge.enabled": True}).config_hash()
    assert plain.with_overrides({"fuse.judge": "verifier"}).judge_runs


def _oracle(references):
    """Incorrect when the step is not one of the reference steps (sees reasoning errors)."""
    good = {s.strip() for steps in references.values() for s in steps}

    def decide(step: str, tool_result: str) -> str:
        if step.strip() in good:
            return f"The step follows from the problem. ({tool_result[:20]})\nVerdict: correct"
        return "The step uses the wrong quantity.\nVerdict: incorrect"

    return decide


def test_pipeline_stores_and_fuses_the_judge(small_set):
    from labelers import pipeline

    records, references = small_set
    config = _config(**{"fuse.judge": "verifier", "fuse.after_first_error": "negative"})
    policy = scripted_for(records, references)
    judge = ScriptedJudge(_oracle(references))
    problems = runner._given_problems(records)
    result = pipeline.label_given_solutions(problems, [[list(r.steps)] for r in records], config, policy, None, None,
                                            step_judge=judge)
    assert judge.judge_calls == [sum(len(r.steps) for r in records)]  # one batched call, every step
    rows = result.steps
    assert rows and all(r.judge_status == "ok" and r.judge_reply for r in rows)
    by_record = {p.problem_id: r for p, r in zip(problems, records)}
    for row in rows:
        record = by_record[row.problem_id]
        wrong = record.label >= 0 and row.step_index == record.label
        assert "Step judge: " + row.judge_verdict in row.rationale
        if record.label >= 0 and row.step_index > record.label:
            continue  # later steps carry the injected error's consequences
        assert row.judge_verdict == ("incorrect" if wrong else "correct")
        if wrong:
            assert row.label_source == "judge_disproved" and not row.fused_label  # no tool: the judge decides


def test_judge_not_run_by_default(small_set):
    from labelers import pipeline

    records, references = small_set
    problems = runner._given_problems(records[:2])
    result = pipeline.label_given_solutions(problems, [[list(r.steps)] for r in records[:2]], _config(),
                                            scripted_for(records, references), None, None)
    assert {(r.judge_status, r.judge_verdict, r.judge_reply) for r in result.steps} == {("not_run", None, None)}
    assert all("Step judge" not in r.rationale for r in result.steps)
    assert JUDGE_NOT_RUN.verdict is None


def test_shared_run_equals_separate_runs(small_set):
    from labelers.verify.tool import ToolStepVerifier

    records, references = small_set
    config = _config()
    with ToolStepVerifier(config.tool) as tool:
        separate = runner.run_mc(records, "hybrid", config, scripted_for(records, references), tool, None, "binary", 4)
        separate_mc = runner.run_mc(records, "mc", config, scripted_for(records, references), None, None, "binary", 4)
        judge = ScriptedJudge(_oracle(references), fallback=scripted_for(records, references))
        mc, hybrid, judged = runner.run_shared(records, ["mc", "hybrid", "judge"], config, judge, tool, None, "binary",
                                               4, chunk_size=len(records))  # one labeling call: one judge call
    assert hybrid.predictions == separate.predictions and mc.predictions == separate_mc.predictions
    # mc and the judge share one pass; the hybrid, which samples with the tool's help, has its own
    assert (hybrid.rollouts, mc.rollouts) == (separate.rollouts, separate_mc.rollouts)
    score = runner.evaluate(records, judged).score
    assert (score.acc_err, score.acc_cor) == (1.0, 1.0)
    assert judge.judge_calls == [sum(len(r.steps) for r in records)]


@pytest.mark.parametrize("mc_mode", ["per-step", "binary"])
def test_mc_alone_does_not_see_the_tool(mc_mode):
    """The shared pass runs under rule hybrid, which skips rollouts after a tool-disproved step;
    the ``mc`` signal must still be MC alone: the same rollouts and labels as without a tool."""
    from labelers.verify.tool import ToolStepVerifier
    from tests.test_eval_run import injected_set

    records, references = injected_set(3, 1, seed=25)  # an arithmetic slip in step 1 of 4
    config = _config()
    with ToolStepVerifier(config.tool) as tool:
        with_tool = runner.run_mc(records, "mc", config, scripted_for(records, references), tool, None, mc_mode, 4)
        # confirmation off: it adds rollouts of its own; this compares the skip alone
        no_confirm = config.with_overrides({"search.mc_confirm_verified_zero": False})
        hybrid = runner.run_mc(records, "hybrid", no_confirm, scripted_for(records, references), tool, None, mc_mode, 4)
    without_tool = runner.run_mc(records, "mc", config, scripted_for(records, references), None, None, mc_mode, 4)
    assert with_tool.predictions == without_tool.predictions
    assert with_tool.rollouts == without_tool.rollouts
    assert hybrid.rollouts < with_tool.rollouts  # the hybrid alone skips after the disproved slip


def test_cli_several_labels_share_a_pass_and_set_overrides(tmp_path, monkeypatch, small_set):
    records, references = small_set
    bench = tmp_path / "set.json"
    bench.write_text(json.dumps([r.to_json() for r in records]))
    made = []

    def fake_policy(config, **_):
        made.append(config.model)
        return ScriptedJudge(_oracle(references), fallback=scripted_for(records, references))

    monkeypatch.setattr("labelers.policy.factory.make_policy", fake_policy)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["eval", "run", "--input", str(bench), "--labels", "tool,mc:binary",
                                      "--labels", "judge", "--labels", "hybrid:binary", "--k", "2",
                                      "--set", "tool.workers=1", "--set", "fuse.judge=verifier", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())["results"]
    assert [r["signal"] for r in payload] == ["tool", "mc", "judge", "hybrid"]
    assert made == ["better"]  # one policy for rollouts and judge (judge.model unset)
    assert payload[1]["cost"]["rollouts"] > 0 and payload[3]["cost"]["rollouts"] > 0
    assert payload[2]["score"]["f1"] == 1.0
    assert "cost shared" in result.output  # mc and the judge
    # progress on stderr: one binary pass for mc, the hybrid (no confirmation: fused from MC's
    # rollouts) and the judge
    assert "labeling pass 1 of 1 (binary: mc, hybrid, judge) over 10 solutions" in result.stderr
    assert "labeling pass 1 of 1 done in" in result.stderr


def test_cli_set_is_overrides_and_the_old_spelling_is_one_line(tmp_path):
    bench = tmp_path / "set.json"
    bench.write_text(json.dumps([{"id": "a", "problem": "p", "steps": ["1 + 1 = 2"], "label": -1}]))
    old = CliRunner().invoke(app, ["eval", "run", "--set", str(bench), "--labels", "tool"])
    assert old.exit_code != 0
    bad = CliRunner().invoke(app, ["eval", "run", "--input", str(bench), "--labels", "tool", "--set", str(bench)])
    assert bad.exit_code != 0 and "the set file is --input" in str(bad.exception)


def test_f1_interval_is_seeded_and_brackets_the_point():
    from labelers.evaluation.processbench import f1_interval, f1_score

    errors = [True] * 45 + [False] * 15
    corrects = [True] * 54 + [False] * 6
    low, high = f1_interval(errors, corrects)
    point = f1_score(45 / 60, 54 / 60)
    assert low < point < high and 0 < high - low < 0.3
    assert f1_interval(errors, corrects) == (low, high)
    assert f1_interval([True] * 5, [True] * 5) == (1.0, 1.0)
    assert f1_interval([], corrects) is None


@pytest.mark.parametrize(
    ("reply", "correct"),
    [
        ("Step 2 is correct. The tool's result confirms the calculations.", True),  # embedded 1.5B, verbatim
        ("Step 3 is incorrect because it adds instead of multiplying.", False),
        ("The step is not correct: the 5 is dropped.", False),
        ("This step is valid since 3 * 4 = 12.", True),
        ("Step 1 is correct. On reflection... Verdict: incorrect", False),  # a verdict line wins
    ],
)
def test_sentence_verdicts_of_small_models(reply, correct):
    verdict = parse_judge_reply(reply)
    assert (verdict.correct, verdict.status) == (correct, "ok")


def test_label_batch_with_the_policy_as_judge_is_schema_valid():
    """A build (MCTS, MC, fusion) with judge.enabled: the policy itself judges, rows carry the
    judge columns and still convert to the steps schema."""
    from data_schemas.records import Problem, to_table
    from data_schemas.schemas import STEPS
    from labelers.identity import problem_id
    from labelers.pipeline import label_batch
    from tests.conftest import TEST_DATA
    from tests.support.scripted_policy import ScriptedPolicy, gsm8k_scripted_problems

    rows = [json.loads(line) for _, line in zip(range(3), (TEST_DATA / "gsm8k_test.jsonl").open())]
    scripted = gsm8k_scripted_problems(rows, seed=1, p_correct=0.7, step_error_rate=0.4, recovery_rate=0.1)
    problems = [Problem(problem_id(p.question, "gsm8k"), "gsm8k", p.question, p.gold_answer) for p in scripted]
    policy = ScriptedJudge(lambda step, tool: "Reason: fine.\nVerdict: correct", fallback=ScriptedPolicy(scripted))
    config = BuildConfig(seed=3).with_overrides({"search.rounds": 4, "search.mc_rollouts": 3, "judge.enabled": True,
                                                 "fuse.judge": "tiebreak"})
    result = label_batch(problems, config, policy, None, None, "b")
    assert result.steps and to_table(result.steps, STEPS).num_rows == len(result.steps)
    assert {r.judge_status for r in result.steps} == {"ok"} and {r.judge_verdict for r in result.steps} == {"correct"}
    assert len(policy.judge_calls) == 1  # one batched judge call for the whole batch
    assert all(o.rollouts >= 0 for o in result.outcomes)
