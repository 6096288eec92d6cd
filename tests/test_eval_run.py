"""eval run / compare: tool labels end to end through the CLI, MC and hybrid labels through the
labeling core with the scripted policy (tests/support/scripted_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_schemas.errors import InputError
from flows.cli import app
from labelers.config import BuildConfig
from labelers.evaluation import runner
from labelers.evaluation.inject import build_injection_set, parse_reference, read_gsm8k
from labelers.evaluation.processbench import record_from_json
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem

DATA = Path(__file__).parent / "data" / "gsm8k_test.jsonl"


def injected_set(n_error: int, n_correct: int, seed: int):
    """Records of an error-injection set from the first 100 bundled GSM8K rows, and each record's
    reference steps (what the scripted policy knows)."""
    sources = read_gsm8k(DATA)[:100]
    rows, _ = build_injection_set(sources, n_error, n_correct, seed=seed)
    by_row = {s.source_row: s for s in sources}
    records = [record_from_json(row, row["id"]) for row in rows]
    references = {}
    for row in rows:
        source = by_row[row["source_row"]]
        references[row["id"]] = parse_reference(source.question, source.answer, source.source_row).render()
    return records, references


@pytest.fixture(scope="module")
def small_set():
    return injected_set(6, 4, seed=11)


def scripted_for(records, references, recovery_rate: float = 0.0) -> ScriptedPolicy:
    """A policy that knows each problem's reference steps and the injected wrong solution:
    rollouts from a clean prefix reach gold, rollouts from a wrong prefix keep the error."""
    problems = []
    for record in records:
        wrong = (tuple(record.steps),) if record.label >= 0 else ()
        problems.append(ScriptedProblem(record.problem, record.gold_answer, tuple(references[record.id]), wrong,
                                        p_correct=1.0, recovery_rate=recovery_rate))
    return ScriptedPolicy(problems)


def _config(**overrides) -> BuildConfig:
    return BuildConfig(seed=5).with_overrides({"tool.workers": 1, "search.mc_early_stop": 0, **overrides})


def test_mc_per_step_and_binary_find_every_injected_error(small_set):
    records, references = small_set
    config = _config()
    per_step = runner.evaluate(
        records, runner.run_mc(records, "mc", config, scripted_for(records, references), None, None, "per-step", 4)
    )
    binary = runner.evaluate(
        records, runner.run_mc(records, "mc", config, scripted_for(records, references), None, None, "binary", 4)
    )
    for result in (per_step, binary):
        assert result.run.failures == {}
        assert (result.score.acc_err, result.score.acc_cor, result.score.f1) == (1.0, 1.0, 1.0)
        assert result.score.step_recall == 1.0 and result.score.step_precision == 1.0
    # per-step: k rollouts from every prefix except the last (its final answer is exact)
    expected = sum(4 * (len(r.steps) - 1) for r in records)
    assert per_step.run.rollouts == expected
    assert per_step.run.rollouts_per_step == pytest.approx(expected / sum(len(r.steps) for r in records))
    assert 0 < binary.run.rollouts < per_step.run.rollouts
    assert per_step.run.completion_tokens > 0 and per_step.run.model_id == "scripted-policy"


def test_hybrid_takes_tool_verdicts_and_mc(small_set):
    records, references = small_set
    from labelers.verify.tool import ToolStepVerifier

    config = _config()
    with ToolStepVerifier(config.tool) as tool:
        result = runner.evaluate(records, runner.run_mc(records, "hybrid", config, scripted_for(records, references),
                                                        tool, None, "binary", 4))
    assert result.run.failures == {}
    assert result.score.acc_err == 1.0


def test_mc_with_recovering_rollouts_misses_errors_honestly(small_set):
    # Rollouts from a wrong prefix reach gold 90% of the time: MC > 0 after the error, so per-step
    # MC calls the erroneous step good and misses errors (acc_err < 1) -- the known MC noise.
    records, references = small_set
    result = runner.evaluate(records, runner.run_mc(records, "mc", _config(), scripted_for(records, references, 0.9),
                                                    None, None, "per-step", 4))
    assert result.score.n_error_before_last >= 1
    assert result.score.acc_err_before_last == 0.0  # every error before the answer step is missed
    assert result.score.acc_err < 1.0
    assert result.score.acc_cor == 1.0


def test_mc_needs_gold_answers():
    record = record_from_json({"id": "pb-0", "problem": "p", "steps": ["a"], "label": -1}, "x")
    with pytest.raises(InputError, match="gold answer"):
        runner.run_mc([record], "mc", _config(), ScriptedPolicy([]), None, None)


def test_failed_problem_is_a_recorded_miss(small_set):
    records, references = small_set
    policy = scripted_for(records, references)
    policy = ScriptedPolicy(policy.problems, fail_questions=[records[0].problem])
    result = runner.evaluate(records, runner.run_mc(records, "mc", _config(), policy, None, None, "per-step", 2))
    assert list(result.run.failures) == [records[0].id]
    assert result.score.missing == 1


def test_cli_make_set_run_tool_and_compare(tmp_path, monkeypatch, small_set):
    cli = CliRunner()
    source = tmp_path / "gsm8k_head.jsonl"
    source.write_text("".join(DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:80]), encoding="utf-8")
    set_file = tmp_path / "set.jsonl"
    made = cli.invoke(app, ["eval", "make-set", "--out", str(set_file), "--input", str(source), "--n-error", "9",
                            "--n-correct", "6", "--seed", "2"])
    assert made.exit_code == 0, made.output
    assert "wrote 15 solutions" in made.output
    again = tmp_path / "again.jsonl"
    cli.invoke(app, ["eval", "make-set", "--out", str(again), "--input", str(source),
                     "--n-error", "9", "--n-correct", "6", "--seed", "2"])
    assert set_file.read_bytes() == again.read_bytes()

    out = tmp_path / "tool.json"
    ran = cli.invoke(app, ["eval", "run", "--input", str(set_file), "--labels", "tool", "--set", "tool.workers=1",
                           "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    payload = json.loads(out.read_text())
    score = payload["results"][0]["score"]
    assert (score["n_error"], score["n_correct"]) == (9, 6)
    assert payload["results"][0]["cost"]["rollouts"] == 0
    assert 0 <= score["f1"] <= 1 and score["acc_err"] > 0  # slips are caught by the tool
    predictions = payload["results"][0]["predictions"]  # per solution, per step: where signals differ
    assert len(predictions) == 15 and any(True in steps for steps in predictions.values())

    # compare with MC through a scripted policy in place of the configured backend
    records, references = small_set
    bench = tmp_path / "small.json"
    bench.write_text(json.dumps([r.to_json() for r in records]))
    monkeypatch.setattr("labelers.policy.factory.make_policy", lambda config, **_: scripted_for(records, references))
    compared_out = tmp_path / "compare.json"
    compared = cli.invoke(app, ["eval", "compare", "--input", str(bench), "--labels", "tool,mc:per-step,mc:binary",
                                "--k", "2", "--set", "tool.workers=1", "--out", str(compared_out)])
    assert compared.exit_code == 0, compared.output
    results = json.loads(compared_out.read_text())["results"]
    assert [(r["signal"], r["mc_mode"]) for r in results] == [("tool", None), ("mc", "per-step"), ("mc", "binary")]
    assert results[1]["score"]["f1"] == 1.0
    assert results[2]["cost"]["rollouts"] < results[1]["cost"]["rollouts"]
    for column in ("signal", "acc_err", "F1", "rollouts"):
        assert column in compared.output


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    from flows.cli import main  # noqa: F401 - the CLI entry turns PrmforgeError into "error: ..."

    pb = tmp_path / "pb.json"
    pb.write_text(json.dumps([{"id": "a", "problem": "p", "steps": ["x"], "label": -1}]))
    completed = subprocess.run([sys.executable, "-m", "flows.cli", "eval", "run", "--input", str(pb), "--labels", "mc"],
                               capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert completed.returncode == 2
    # the gold coverage line, then the error in one line
    assert completed.stderr.splitlines()[0].startswith("gold answers: 0 of 1 solutions")
    assert completed.stderr.splitlines()[1].startswith("error: --labels mc needs gold answers and none of the 1")
    assert len(completed.stderr.splitlines()) == 2 and "Traceback" not in completed.stderr
    bad = CliRunner().invoke(app, ["eval", "run", "--input", str(pb), "--labels", "magic"])
    assert bad.exit_code != 0


def test_lean_signal_without_toolchain_says_so(tmp_path, small_set):
    import shutil

    if shutil.which("lake") or shutil.which("lean"):
        pytest.skip("a Lean toolchain is installed here: the unavailable path cannot be exercised")
    records, _ = small_set
    pb = tmp_path / "set.json"
    pb.write_text(json.dumps([r.to_json() for r in records[:2]]))
    result = CliRunner().invoke(app, ["eval", "run", "--input", str(pb), "--labels", "lean"])
    assert result.exit_code != 0
    assert "Lean is not available" in str(result.exception)


def test_mc_says_for_how_many_sampled_solutions_a_rollout_reached_gold(small_set):
    # A policy that cannot finish the problems reads 0 from every prefix and puts each first error
    # at the earliest probe: the note says so (OlympiadBench dev with the 1.5B: 1 of 13). One that
    # can reaches gold from the clean prefix before each injected error -- except before an error
    # at step 0, where no clean prefix with a step exists.
    records, references = small_set
    erroneous = [r for r in records if r.label >= 0]
    at_step_0 = sum(r.label == 0 for r in erroneous)
    able = runner.run_mc(records, "mc", _config(), scripted_for(records, references), None, None, "binary", 4)
    unable_policy = ScriptedPolicy([
        ScriptedProblem(r.problem, r.gold_answer, tuple(references[r.id]), (tuple(r.steps),) if r.label >= 0 else (),
                        p_correct=0.0) for r in records])
    unable = runner.run_mc(records, "mc", _config(), unable_policy, None, None, "binary", 4)
    [able_note] = [note for note in able.notes if note.startswith("rollouts reached")]
    [unable_note] = [note for note in unable.notes if note.startswith("rollouts reached")]
    assert able_note.startswith(f"rollouts reached the gold answer from a prefix of {len(erroneous) - at_step_0} of "
                                f"the {len(erroneous)} solutions sampled")
    assert ("in the other" in able_note) == (at_step_0 > 0)
    assert unable_note.startswith(f"rollouts reached the gold answer from a prefix of 0 of the {len(erroneous)} "
                                  f"solutions sampled; in the other {len(erroneous)} every prefix read 0")
    assert all(runner.evaluate(records, unable).run.predictions[r.id].first_error == 0 for r in erroneous)
