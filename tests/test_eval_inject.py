"""Error-injection set: determinism, a known earliest error, a wrong final answer."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from data_schemas.errors import InputError
from labelers.answers import answers_equal, extract_final_answer
from labelers.evaluation.inject import (
    CORRUPTION_KINDS,
    Token,
    apply_corruption,
    build_injection_set,
    candidate_corruptions,
    evaluate,
    format_like,
    parse_reference,
    read_gsm8k,
    tokenize_expression,
)
from labelers.evaluation.processbench import read_set, write_set

DATA = Path(__file__).parent / "data" / "gsm8k_test.jsonl"


@pytest.fixture(scope="module")
def sources():
    return read_gsm8k(DATA)[:300]


@pytest.fixture(scope="module")
def injected(sources):
    records, summary = build_injection_set(sources, 60, 40, seed=7)
    return records, summary


def test_same_seed_same_file_other_seed_other_set(tmp_path, sources):
    head = sources[:120]
    first, _ = build_injection_set(head, 12, 8, seed=3)
    second, _ = build_injection_set(head, 12, 8, seed=3)
    other, _ = build_injection_set(head, 12, 8, seed=4)
    write_set(tmp_path / "a.jsonl", first)
    write_set(tmp_path / "b.jsonl", second)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert first != other


def test_counts_layout_and_kinds(injected):
    records, summary = injected
    assert len(records) == 100
    assert sum(r["label"] >= 0 for r in records) == 60
    assert sum(r["label"] == -1 for r in records) == 40
    assert len({r["id"] for r in records}) == 100
    assert len({r["source_row"] for r in records}) == 100  # disjoint problems
    for record in records:
        assert set(record) >= {"id", "generator", "problem", "steps", "label", "final_answer_correct", "gold_answer",
                               "corruption"}
        assert all(isinstance(step, str) and step for step in record["steps"])
        assert record["final_answer_correct"] == (record["label"] == -1)
    # equal quotas: 20 of each kind
    assert summary.kinds == {kind: 20 for kind in CORRUPTION_KINDS}


def test_injected_final_answer_differs_from_gold_and_correct_ones_equal_it(injected):
    records, _ = injected
    for record in records:
        stated = extract_final_answer(record["steps"][-1])
        assert stated is not None, record["id"]
        if record["label"] >= 0:
            assert not answers_equal(stated, record["gold_answer"]), record
        else:
            assert answers_equal(stated, record["gold_answer"]), record


def test_label_is_the_first_changed_step(injected, sources):
    records, _ = injected
    by_row = {s.source_row: s for s in sources}
    for record in records:
        source = by_row[record["source_row"]]
        reference = parse_reference(source.question, source.answer, source.source_row).render()
        assert len(reference) == len(record["steps"])
        changed = [i for i, (a, b) in enumerate(zip(reference, record["steps"])) if a != b]
        if record["label"] == -1:
            assert changed == []
        else:
            assert changed and changed[0] == record["label"], record
            # the final answer sentence changed too: the error is carried to the end
            assert changed[-1] == len(reference) - 1


def test_slip_states_a_false_equation_and_later_steps_carry_the_value():
    answer = (
        "The first scene has 2 * 54 = <<2*54=108>>108 lines.\n"
        "He memorizes 108 / 4 = <<108/4=27>>27 lines.\n"
        "In all 27 + 48 = <<27+48=75>>75 lines.\n#### 75"
    )
    solution = parse_reference("A scene has 54 lines and Sean has 48 more lines...", answer, 1)
    slips = {c.new_value: c for c in candidate_corruptions(solution)
             if c.kind == "arithmetic_slip" and c.annotation == 0}
    result = apply_corruption(solution, slips[Fraction(110)])
    assert result is not None and result.kind == "arithmetic_slip"
    assert result.label == 0
    assert result.steps == (
        "The first scene has 2 * 54 = 110 lines.",
        "He memorizes 110 / 4 = 27.5 lines.",
        "In all 27.5 + 48 = 75.5 lines. The final answer is \\boxed{75.5}.",
    )
    assert result.final_answer == "75.5"


def test_a_change_that_needs_a_long_decimal_is_refused():
    answer = "He has 2 * 54 = <<2*54=108>>108 lines.\nHe memorizes 108 / 3 = <<108/3=36>>36 lines.\n#### 36"
    solution = parse_reference("A scene has 54 lines ...", answer, 1)
    slips = [c for c in candidate_corruptions(solution) if c.kind == "arithmetic_slip" and c.annotation == 0]
    assert slips and all(apply_corruption(solution, c) is None for c in slips)  # 107/3, 109/3, ...


def test_candidates_that_would_be_ambiguous_are_rejected():
    # 9 is in the question: a later "9" could be the constant, so a change of 9 is refused.
    answer = "She has 4 + 5 = <<4+5=9>>9 eggs.\nShe sells 9 * 9 = <<9*9=81>>81 cents of eggs.\n#### 81"
    solution = parse_reference("Eggs cost 9 cents; she has 4 and gets 5.", answer, 1)
    for candidate in candidate_corruptions(solution):
        if candidate.annotation == 0:
            assert apply_corruption(solution, candidate) is None


def test_wrong_operation_and_dropped_term_keep_arithmetic_right():
    answer = (
        "The hole is 6 * 4 * 3 = <<6*4*3=72>>72 cubic feet.\n"
        "It takes 72 * 3 = <<72*3=216>>216 seconds.\n#### 216"
    )
    solution = parse_reference("A hole 6 by 4 by 3 feet; 3 seconds per cubic foot.", answer, 1)
    results = [apply_corruption(solution, c) for c in candidate_corruptions(solution) if c.annotation == 0]
    by_kind = {r.kind: r for r in results if r is not None}
    assert by_kind["dropped_term"].steps[0] in ("The hole is 6 * 3 = 18 cubic feet.",
                                                "The hole is 6 * 4 = 24 cubic feet.")
    assert by_kind["wrong_operation"].steps[0].startswith("The hole is 6 / 4 * 3 = 4.5") or \
        by_kind["wrong_operation"].steps[0].startswith("The hole is 6 * 4 / 3 = 8")


def test_numbers_keep_their_format():
    assert format_like(Fraction(130500), "130,000") == "130,500"
    assert format_like(Fraction(354), "352.00") == "354.00"
    assert format_like(Fraction(1, 2), ".5") == ".5"
    assert format_like(Fraction(19), "$18") == "$19"
    assert format_like(Fraction(1, 3), "3") is None


def test_expression_evaluation():
    assert evaluate(tokenize_expression("4*60/5")) == 48
    assert evaluate(tokenize_expression("(2+3)*-4")) == -20
    assert evaluate(tokenize_expression("1/0")) is None
    assert tokenize_expression("2^3") is None
    assert evaluate([Token("num", "2"), Token("op", "x"), Token("num", "3")]) == 6


def test_too_few_eligible_problems_is_one_clear_error(sources):
    with pytest.raises(InputError, match="can take a consistent corruption"):
        build_injection_set(sources[:10], 10, 10, seed=0)


def test_bundled_file_is_read_gsm8k_rows_only():
    from data_schemas.problems import bundled_problems_path

    rows = read_gsm8k(bundled_problems_path())
    assert 0 < len(rows) <= 40
    assert all("####" in r.answer for r in rows)


def test_json_list_round_trip(tmp_path, injected):
    records, _ = injected
    write_set(tmp_path / "set.json", records)
    assert json.loads((tmp_path / "set.json").read_text())[0]["id"] == records[0]["id"]
    read = read_set(tmp_path / "set.json")
    assert [r.label for r in read] == [r["label"] for r in records]
    assert read[0].extra["source_row"] == records[0]["source_row"]


def test_math500_slips_change_the_final_computation_and_answer():
    from labelers.evaluation.inject import build_math_injection_set, read_math

    sources = read_math(Path(__file__).parent / "data" / "math500_test.jsonl")
    records, summary = build_math_injection_set(sources, 20, 10, seed=1)
    again, _ = build_math_injection_set(sources, 20, 10, seed=1)
    assert records == again
    assert summary.kinds == {"arithmetic_slip": 20}
    by_row = {s.source_row: s for s in sources}
    from labelers.steps import split_steps

    for record in records:
        reference = split_steps(by_row[record["source_row"]].solution)
        stated = extract_final_answer("\n".join(record["steps"]))
        changed = [i for i, (a, b) in enumerate(zip(reference, record["steps"])) if a != b]
        if record["label"] >= 0:
            assert not answers_equal(stated, record["gold_answer"])
            assert changed[0] == record["label"]
        else:
            assert answers_equal(stated, record["gold_answer"]) and changed == []
