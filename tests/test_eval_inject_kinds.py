"""Injected kinds that can show a rule's cost (issue 23, item 6): two errors in one solution
(a reasoning error, then a later slip; the label is the first) and a slip the solution does not
use (the final answer is right despite the error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_schemas.errors import InputError
from flows.cli import app
from labelers.answers import answers_equal, extract_final_answer
from labelers.config import ToolConfig
from labelers.evaluation.inject import (
    CORRUPTION_KINDS,
    REASONING_KINDS,
    SLIP_NOT_CARRIED,
    TWO_ERRORS,
    build_injection_set,
    parse_reference,
    read_gsm8k,
)
from labelers.evaluation.processbench import read_set
from labelers.verify.base import StepContext, ToolVerdict
from labelers.verify.tool import ToolStepVerifier

DATA = Path(__file__).parent / "data" / "gsm8k_test.jsonl"


@pytest.fixture(scope="module")
def sources():
    return read_gsm8k(DATA)[:200]


@pytest.fixture(scope="module")
def mixed(sources):
    return build_injection_set(sources, 9, 6, seed=5, n_two_errors=10, n_right_answer=10)


@pytest.fixture(scope="module")
def tool():
    with ToolStepVerifier(ToolConfig(workers=1)) as verifier:
        yield verifier


def _reference(sources, record) -> list[str]:
    source = next(s for s in sources if s.source_row == record["source_row"])
    parsed = parse_reference(source.question, source.answer, source.source_row)
    assert parsed is not None
    return parsed.render()


def _first_flag(tool: ToolStepVerifier, record: dict) -> int:
    steps = record["steps"]
    checks = tool.check_steps([StepContext(record["problem"], tuple(steps[:i]), s) for i, s in enumerate(steps)])
    return next((i for i, c in enumerate(checks) if c.verdict == ToolVerdict.INCORRECT), -1)


def test_the_mix_is_what_was_asked_and_recorded_per_record(mixed):
    records, summary = mixed
    kinds = [r["corruption"] for r in records]
    assert kinds.count(TWO_ERRORS) == 10 and kinds.count(SLIP_NOT_CARRIED) == 10
    assert sum(k in CORRUPTION_KINDS for k in kinds) == 9 and kinds.count(None) == 6
    assert summary.kinds[TWO_ERRORS] == 10 and summary.kinds[SLIP_NOT_CARRIED] == 10
    assert len({r["source_row"] for r in records}) == len(records) == 35  # disjoint problems
    for record in records:
        errors = record["corruption_errors"]
        if record["corruption"] is None:
            assert errors == [] and record["label"] == -1
        else:
            assert errors[0]["step"] == record["label"]  # the first error listed is the label
            expected = 2 if record["corruption"] == TWO_ERRORS else 1
            assert len(errors) == expected, record


def test_same_seed_same_set_and_none_asked_none_written(sources):
    head = sources[:120]
    first, _ = build_injection_set(head, 4, 4, seed=2, n_two_errors=3, n_right_answer=3)
    again, _ = build_injection_set(head, 4, 4, seed=2, n_two_errors=3, n_right_answer=3)
    assert first == again
    plain, _ = build_injection_set(head, 4, 4, seed=2)
    assert {r["corruption"] for r in plain} <= {None, *CORRUPTION_KINDS}


def test_two_errors_a_reasoning_error_first_then_a_later_slip_the_tool_sees(mixed, sources, tool):
    records, _ = mixed
    two = [r for r in records if r["corruption"] == TWO_ERRORS]
    for record in two:
        first, slip = record["corruption_errors"]
        assert first["kind"] in REASONING_KINDS and slip["kind"] == "arithmetic_slip"
        assert slip["step"] > first["step"] == record["label"]
        reference = _reference(sources, record)
        assert record["steps"][: record["label"]] == reference[: record["label"]]
        assert record["steps"][record["label"]] != reference[record["label"]]
        assert record["steps"][slip["step"]] != reference[slip["step"]]
        assert not record["final_answer_correct"]
        assert not answers_equal(extract_final_answer(record["steps"][-1]) or "", record["gold_answer"])
    # the reasoning error keeps its arithmetic right, the slip states a false equation: the tool's
    # first flag is the slip, after the label (what a rule trusting the tool gets wrong)
    flags = [_first_flag(tool, record) for record in two]
    slips = [record["corruption_errors"][1]["step"] for record in two]
    assert sum(f == s for f, s in zip(flags, slips)) >= len(two) - 1, (flags, slips)
    assert all(f == -1 or f > record["label"] for f, record in zip(flags, two))


def test_right_answer_despite_an_error(mixed, sources, tool):
    records, _ = mixed
    right = [r for r in records if r["corruption"] == SLIP_NOT_CARRIED]
    for record in right:
        reference = _reference(sources, record)
        changed = [i for i, (a, b) in enumerate(zip(reference, record["steps"])) if a != b]
        assert changed == [record["label"]]  # only the slip's step differs: nothing carried forward
        assert record["final_answer_correct"] is True
        assert answers_equal(extract_final_answer(record["steps"][-1]) or "", record["gold_answer"])
        assert record["label"] < len(record["steps"]) - 1 or "The final answer" in record["steps"][-1]
    assert sum(_first_flag(tool, record) == record["label"] for record in right) >= len(right) - 1


def test_too_few_problems_for_the_new_kinds_is_one_clear_error(sources):
    with pytest.raises(InputError, match="two_errors|reference solutions"):
        build_injection_set(sources[:30], 2, 2, seed=0, n_two_errors=200)
    with pytest.raises(InputError, match="at least one"):
        build_injection_set(sources[:30], 0, 0, seed=0)


def test_cli_writes_the_new_kinds_and_refuses_them_for_math500(tmp_path):
    runner = CliRunner()
    out = tmp_path / "set.jsonl"
    result = runner.invoke(app, ["eval", "make-set", "--out", str(out), "--input", str(DATA), "--n-error", "2",
                                 "--n-correct", "2", "--n-two-errors", "2", "--n-right-answer", "2"])
    assert result.exit_code == 0, result.output
    assert "2 with two errors" in result.output and "2 with a right final answer" in result.output
    records = read_set(out)
    assert sorted(r.corruption or "" for r in records).count(TWO_ERRORS) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("corruption_errors" in row for row in rows)
    refused = runner.invoke(app, ["eval", "make-set", "--out", str(tmp_path / "m.jsonl"), "--source", "math500",
                                  "--n-two-errors", "1"])
    assert refused.exit_code != 0
    assert isinstance(refused.exception, InputError) and "--source gsm8k" in str(refused.exception)
