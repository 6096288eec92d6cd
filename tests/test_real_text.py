"""The real-text corpus (tests/data/real_text/corpus.jsonl): model-written steps with labels.

The tool must not call correct steps incorrect: at most 1% of the expected-correct steps it
decides, and every such step is read and explained here. Real errors it finds in model-written
steps are golden cases: they must stay caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelers.config import ToolConfig
from labelers.evaluation.realtext import (
    math_shepherd_steps,
    measure_false_alarms,
    prm800k_steps,
    read_corpus,
    read_reviewed,
)
from labelers.verify.base import ToolVerdict
from labelers.verify.tool import ToolStepVerifier

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "real_text" / "corpus.jsonl"

# Expected-correct steps (rated 0/+1, MC "+", or in a solution reaching the gold answer) that the
# tool judges incorrect, each read by a person (kind and note in the review file).
REVIEWED = read_reviewed(DATA / "real_text" / "reviewed.json")

# Real arithmetic errors in model-written steps (Math-Shepherd "-" steps): id -> (claim, values).
GOLDEN_ERRORS: dict[str, tuple[str, str, str]] = {
    "math_shepherd/1/0": ("20*40", "800", "8000"),  # 20 x 40 = 8000 black seeds
    "math_shepherd/1/1": ("20*40", "800", "8000"),
    "math_shepherd/3/3": ("2 + 1095", "1097", "1100"),  # $2.00 + $1095 = $1100
    "math_shepherd/4/1": ("13*8/13", "8", "6"),  # 13 x 8 / 13 = 6
    "math_shepherd/5/0": ("10 + 8 + 4", "22", "220"),  # ten $20 + eight $10 + four $5 = $220
}


@pytest.fixture(scope="module")
def tool():
    with ToolStepVerifier(ToolConfig(workers=1)) as verifier:
        yield verifier


@pytest.fixture(scope="module")
def report(tool):
    return measure_false_alarms(read_corpus(CORPUS), tool)


def test_corpus_is_the_samples_plus_model_solutions():
    """The committed rows from the PRM800K / Math-Shepherd samples are what the regeneration
    script makes from them (tests/data/make_real_text_corpus.py)."""
    committed = read_corpus(CORPUS)
    regenerated = sorted(prm800k_steps(DATA / "prm800k_sample.jsonl")
                         + math_shepherd_steps(DATA / "math_shepherd_sample.jsonl"), key=lambda s: s.id)
    assert [s for s in committed if s.source != "embedded"] == regenerated
    assert {s.source for s in committed} <= {"prm800k", "math_shepherd", "embedded"}
    for step in committed:
        assert step.step.strip() and step.label_kind in ("human", "mc", "answer")
        assert (step.label is None) == (step.label_kind == "answer")


def test_false_alarms_are_at_most_one_percent_and_each_is_explained(report):
    flagged = {alarm.step.id: alarm for alarm in report.false_alarms}
    corpus_reviews = {k for k in REVIEWED if k.split("/", 1)[0] in ("prm800k", "math_shepherd", "embedded")}
    assert set(flagged) == corpus_reviews, {k: (v.step.step[:120], v.failing) for k, v in flagged.items()}
    assert report.checked >= 40
    assert report.wrong_rate(REVIEWED) <= 0.01
    # today every flag on model-written text is a real slip the labels missed
    assert {REVIEWED[k]["kind"] for k in flagged} == {"real_error"}


def test_real_errors_in_correct_solutions_are_golden(tool):
    by_id = {s.id: s for s in read_corpus(CORPUS)}
    real = [k for k in REVIEWED if k in by_id and REVIEWED[k]["kind"] == "real_error"]
    assert real
    for step_id, check in zip(real, tool.check_steps([by_id[k].context() for k in real]), strict=True):
        assert check.verdict == ToolVerdict.INCORRECT, step_id
        assert check.evidence["failing"]["text"] in REVIEWED[step_id]["note"], step_id


def test_golden_errors_stay_caught(report, tool):
    by_id = {s.id: s for s in read_corpus(CORPUS)}
    checks = tool.check_steps([by_id[i].context() for i in GOLDEN_ERRORS])
    for (step_id, (lhs, lhs_value, rhs_value)), check in zip(GOLDEN_ERRORS.items(), checks, strict=True):
        assert check.verdict == ToolVerdict.INCORRECT, step_id
        failing = check.evidence["failing"]
        assert (failing["lhs"], failing["lhs_value"], failing["rhs_value"]) == (lhs, lhs_value, rhs_value), step_id
    assert {s.id for s in report.caught} >= set(GOLDEN_ERRORS)


def test_rows_are_json_lines_with_context():
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert isinstance(row["previous_steps"], list) and row["problem"]
