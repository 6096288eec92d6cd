"""Error injection: GSM8K reference solutions with a known earliest wrong step.

A GSM8K reference solution is a few lines, each doing one computation with a calculator
annotation ``<<expr=result>>`` next to the visible text::

    Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.
    She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.
    #### 18

Each line becomes one step (annotations removed, the last step ends with
``The final answer is \\boxed{18}.``). A corruption changes ONE computation of one step whose
visible text shows the computation (the visible expression matches the annotation token by
token) and carries the changed value forward: every later annotation that uses a changed value
is recomputed, every later mention of a changed value in the text is rewritten in its original
format (``130,000``, ``$18``, ``.5``), and so is the final answer. The steps before the
corrupted one are byte-identical to the untouched rendering, so the corrupted step is the
earliest wrong step by construction; the final answer differs from the gold answer
(candidates where it would not are rejected).

Corruption kinds (docs/evaluation.md has examples):

- ``arithmetic_slip``: the result of the computation is off (``+-1``, ``+-2``, ``+-10``);
  the expression stays, so the step states a false equation.
- ``wrong_operation``: one binary operator is swapped (``+ <-> -``, ``* <-> /``) and the result
  is recomputed: the arithmetic is right, the reasoning is not.
- ``dropped_term``: one term of a sum of three or more terms (or one multiplied factor of a
  product of three or more factors, never a divisor) is left out and the result recomputed.

A candidate is rejected (another one is tried) when carrying the value forward would be
ambiguous: the changed value also occurs in the question, in an earlier step, as an operand of
a computation up to its own step, as the unchanged result of another computation, or is a
common constant (``COMMON_CONSTANTS``: 0-12, 24, 30, 52, 60, 100, ...); or when a new value is
negative (the old one was not) or not a decimal with at most four places. The result is
deterministic: every choice draws from ``random.Random(seed)``.

Code: :mod:`labelers.evaluation.inject_parse` (numbers, expressions, parsed reference solutions),
:mod:`labelers.evaluation.inject_corrupt` (the corruption kinds, carrying a value forward, the
two-error and right-answer records); this module reads the sources and builds the sets (GSM8K:
:func:`build_injection_set`; MATH-500: :func:`build_math_injection_set`) and re-exports the names
other code imports from ``labelers.evaluation.inject``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from data_schemas.errors import InputError
from data_schemas.jsonl import read_json_objects
from labelers.evaluation.inject_corrupt import (  # noqa: F401 - re-exported: inject's names before the split
    COMMON_CONSTANTS,
    CORRUPTION_KINDS,
    REASONING_KINDS,
    SLIP_DELTAS,
    SLIP_NOT_CARRIED,
    TWO_ERRORS,
    Corruption,
    InjectedError,
    InjectedSolution,
    _binary_operator_positions,
    _replace_spans,
    _top_level_groups,
    apply_corruption,
    apply_uncarried_slip,
    candidate_corruptions,
    two_error_candidates,
    uncarried_slip_candidates,
)
from labelers.evaluation.inject_parse import (  # noqa: F401 - re-exported
    _ANNOTATION,
    _EXPR_TOKEN,
    _NUMBER,
    _VISIBLE_CHARS,
    _VISIBLE_OP,
    _VISIBLE_OP_CANON,
    MAX_DECIMALS,
    Annotation,
    ReferenceSolution,
    Token,
    _find_visible_expression,
    decimal_text,
    evaluate,
    format_like,
    number_value,
    parse_reference,
    tokenize_expression,
    tokenize_visible,
)

GENERATOR = "gsm8k-reference"


# --------------------------------------------------------------------------------------------
# Building a set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSolution:
    question: str
    answer: str  # GSM8K answer text with annotations and the #### line
    source_row: int


def read_gsm8k(path: Path) -> list[SourceSolution]:
    """GSM8K JSONL rows (``question``, ``answer``); also accepts prmforge problem rows with
    ``reference_solution`` holding the GSM8K answer text. Rows with a ``source`` other than
    gsm8k (the bundled file mixes in MATH-500) are passed over."""
    rows: list[SourceSolution] = []
    for line_number, row in read_json_objects(path):
        if row.get("source") not in (None, "gsm8k"):
            continue
        question = row.get("question")
        answer = row.get("answer")
        if not isinstance(answer, str) or "####" not in answer:
            answer = row.get("reference_solution", answer)
        if not isinstance(question, str) or not isinstance(answer, str):
            raise InputError(
                f"{path}:{line_number}: a GSM8K row needs 'question' and 'answer' "
                "(the reference solution with <<calculator>> annotations)"
            )
        rows.append(SourceSolution(question, answer, line_number))
    return rows


@dataclass
class InjectionSummary:
    source_rows: int = 0
    parsed: int = 0
    eligible: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    errors_in_last_step: int = 0  # injected errors in the final step (the answer step)


def build_injection_set(
    sources: Sequence[SourceSolution],
    n_error: int,
    n_correct: int,
    seed: int,
    source_name: str = "gsm8k",
    n_two_errors: int = 0,
    n_right_answer: int = 0,
) -> tuple[list[dict], InjectionSummary]:
    """ProcessBench-layout records: ``n_error`` corrupted and ``n_correct`` untouched reference
    solutions of disjoint problems, shuffled, with ids ``<source>-<n>``.

    Kinds rotate over :data:`CORRUPTION_KINDS`; a problem without a valid candidate of the
    wanted kind gets one of another kind. ``n_two_errors`` more solutions carry a reasoning error
    and a later slip (:data:`TWO_ERRORS`), ``n_right_answer`` more a slip that is not carried
    forward, so their final answer is right (:data:`SLIP_NOT_CARRIED`); both are drawn after the
    one-error solutions, from problems not used yet, so a set without them is the same as before.
    Every record lists its errors in ``corruption_errors`` (step, kind, detail). Raises
    InputError when fewer eligible problems than asked exist.
    """
    counts = (n_error, n_correct, n_two_errors, n_right_answer)
    if min(counts) < 0 or sum(counts) == 0:
        raise InputError(
            "ask for at least one solution (--n-error/--n-correct/--n-two-errors/--n-right-answer >= 0, not all 0)"
        )
    rng = random.Random(seed)
    summary = InjectionSummary(source_rows=len(sources))
    eligible: list[tuple[ReferenceSolution, dict[str, list[InjectedSolution]]]] = []
    for source in sources:
        parsed = parse_reference(source.question, source.answer, source.source_row)
        if parsed is None:
            continue
        summary.parsed += 1
        by_kind: dict[str, list[InjectedSolution]] = {}
        for candidate in candidate_corruptions(parsed):
            injected = apply_corruption(parsed, candidate)
            if injected is not None:
                by_kind.setdefault(injected.kind, []).append(injected)
        if by_kind:
            eligible.append((parsed, by_kind))
    summary.eligible = len(eligible)
    if len(eligible) < n_error + n_correct + n_two_errors + n_right_answer:
        raise InputError(
            f"only {len(eligible)} of {len(sources)} reference solutions can take a consistent "
            f"corruption; asked for {n_error} + {n_correct} + {n_two_errors} + {n_right_answer}"
        )
    rng.shuffle(eligible)
    # Kinds get equal quotas; the scarcest kind picks its problems first, what a kind cannot
    # fill goes to the others.
    quotas = {kind: n_error // len(CORRUPTION_KINDS) + (i < n_error % len(CORRUPTION_KINDS))
              for i, kind in enumerate(CORRUPTION_KINDS)}
    availability = {kind: sum(kind in by_kind for _, by_kind in eligible) for kind in CORRUPTION_KINDS}
    chosen: dict[int, str] = {}  # index into eligible -> kind
    for kind in sorted(CORRUPTION_KINDS, key=lambda k: (availability[k], k)):
        for index, (_, by_kind) in enumerate(eligible):
            if quotas[kind] == 0:
                break
            if index not in chosen and kind in by_kind:
                chosen[index] = kind
                quotas[kind] -= 1
    leftover = sum(quotas.values())
    for index in range(len(eligible)):
        if leftover == 0:
            break
        if index not in chosen:
            chosen[index] = sorted(eligible[index][1])[0]
            leftover -= 1
    records: list[dict] = []
    for index in sorted(chosen):
        solution, by_kind = eligible[index]
        pool = by_kind[chosen[index]]
        # The step first, uniformly among the steps that can take this kind, then a candidate in
        # it: late steps have more candidates (fewer later mentions to clash with), and drawing
        # candidates directly would pile the errors onto the last step.
        steps_with = sorted({candidate.label for candidate in pool})
        step = steps_with[rng.randrange(len(steps_with))]
        in_step = [candidate for candidate in pool if candidate.label == step]
        injected = in_step[rng.randrange(len(in_step))]
        summary.kinds[injected.kind] = summary.kinds.get(injected.kind, 0) + 1
        summary.errors_in_last_step += injected.label == len(injected.steps) - 1
        records.append(_injected_record(solution, injected))
    # the new kinds: problems not chosen yet, in the shuffled order, that can take one
    for kind, wanted, make in ((TWO_ERRORS, n_two_errors, two_error_candidates),
                               (SLIP_NOT_CARRIED, n_right_answer, uncarried_slip_candidates)):
        for index, (solution, _) in enumerate(eligible):
            if wanted == 0:
                break
            if index in chosen:
                continue
            pool = make(solution)
            if not pool:
                continue
            chosen[index] = kind
            wanted -= 1
            steps_with = sorted({candidate.label for candidate in pool})
            step = steps_with[rng.randrange(len(steps_with))]
            in_step = [candidate for candidate in pool if candidate.label == step]
            injected = in_step[rng.randrange(len(in_step))]
            summary.kinds[kind] = summary.kinds.get(kind, 0) + 1
            summary.errors_in_last_step += injected.label == len(injected.steps) - 1
            records.append(_injected_record(solution, injected))
        if wanted:
            raise InputError(
                f"only {summary.kinds.get(kind, 0)} problems left can take a {kind} solution; asked for "
                f"{summary.kinds.get(kind, 0) + wanted}"
            )
    unused = [solution for index, (solution, _) in enumerate(eligible) if index not in chosen]
    if len(unused) < n_correct:
        raise InputError(f"only {len(unused)} problems are left for {n_correct} correct solutions")
    for solution in unused[:n_correct]:
        records.append(
            {
                "generator": GENERATOR,
                "problem": solution.question,
                "steps": solution.render(),
                "label": -1,
                "final_answer_correct": True,
                "gold_answer": solution.gold_answer,
                "corruption": None,
                "corruption_detail": None,
                "corruption_errors": [],
                "source_row": solution.source_row,
            }
        )
    rng.shuffle(records)
    width = len(str(len(records) - 1))
    return [{"id": f"{source_name}-{i:0{width}d}", **record} for i, record in enumerate(records)], summary


def _injected_record(solution: ReferenceSolution, injected: InjectedSolution) -> dict:
    return {
        "generator": GENERATOR,
        "problem": solution.question,
        "steps": list(injected.steps),
        "label": injected.label,
        "final_answer_correct": injected.kind == SLIP_NOT_CARRIED,
        "gold_answer": solution.gold_answer,
        "corruption": injected.kind,
        "corruption_detail": injected.detail,
        "corruption_errors": [error.to_json() for error in injected.errors],
        "source_row": solution.source_row,
    }


# --------------------------------------------------------------------------------------------
# MATH-500: arithmetic slips in the computation that gives the final answer
# --------------------------------------------------------------------------------------------
#
# MATH solutions are LaTeX prose without calculator annotations, so a change cannot be traced
# through every later computation. What can be done reliably: a solution whose final answer is a
# non-negative integer N, stated as the result of a checkable claim ``<arithmetic> = N`` (found
# by the tool verifier's claim extractor) in step j, where N occurs nowhere before that claim
# (not in the question, not in an earlier step, not earlier in step j) and is no common
# constant. The slip writes N + delta at that claim and at every later mention of N (the boxed
# answer included); step j is the earliest wrong step. Only ``arithmetic_slip``.


@dataclass(frozen=True)
class MathSource:
    question: str
    solution: str
    answer: str
    source_row: int


def read_math(path: Path) -> list[MathSource]:
    """MATH-format JSONL rows (``problem``, ``solution``, ``answer``); rows of the bundled file
    with another ``source`` than math500 are passed over."""
    rows: list[MathSource] = []
    for line_number, row in read_json_objects(path):
        if row.get("source") not in (None, "math500", "math"):
            continue
        question = row.get("problem", row.get("question"))
        solution = row.get("solution", row.get("reference_solution"))
        answer = row.get("answer", row.get("gold_answer"))
        if not all(isinstance(v, str) for v in (question, solution, answer)):
            raise InputError(f"{path}:{line_number}: a MATH row needs 'problem', 'solution' and 'answer'")
        rows.append(MathSource(question, solution, answer.strip(), line_number))
    return rows


def _math_candidates(source: MathSource) -> tuple[list[str], list[InjectedSolution]] | None:
    """The solution's steps and its valid slips; None when it has no usable final computation."""
    from labelers.steps import split_steps
    from labelers.verify.claims import extract_claims

    if not re.fullmatch(r"\d+", source.answer) or f"\\boxed{{{source.answer}}}" not in source.solution:
        return None
    gold = Fraction(source.answer)
    if gold in COMMON_CONSTANTS or any(number_value(m.group()) == gold for m in _NUMBER.finditer(source.question)):
        return None
    steps = split_steps(source.solution)
    for index, step in enumerate(steps):
        mentions = [m for m in _NUMBER.finditer(step) if number_value(m.group()) == gold]
        if not mentions:
            continue
        for claim in extract_claims(step):
            tokens = tokenize_expression(claim.lhs)
            if claim.relation != "=" or claim.rhs.strip() != source.answer or tokens is None:
                continue
            if evaluate(tokens) != gold:
                continue
            first = mentions[0]
            if not claim.span[0] <= first.start() < claim.span[1]:
                continue  # N is mentioned before the claim computes it
            injected = []
            for delta in SLIP_DELTAS:
                new = gold + delta
                if new < 0:
                    continue
                changed = list(steps)
                for later in range(index, len(steps)):
                    edits = [
                        (m.start(), m.end(), format_like(new, m.group()) or "")
                        for m in _NUMBER.finditer(steps[later])
                        if number_value(m.group()) == gold
                    ]
                    changed[later] = _replace_spans(steps[later], edits)
                detail = f"step {index}: result {source.answer} of '{claim.text}' written as {decimal_text(new)}"
                injected.append(
                    InjectedSolution(tuple(changed), index, decimal_text(new) or "", "arithmetic_slip", detail)
                )
            return steps, injected
        return None  # the first mention of N is not a checkable computation of it
    return None


def build_math_injection_set(
    sources: Sequence[MathSource], n_error: int, n_correct: int, seed: int, source_name: str = "math500"
) -> tuple[list[dict], InjectionSummary]:
    """ProcessBench-layout records from MATH solutions (see the section comment above)."""
    if n_error < 0 or n_correct < 0 or n_error + n_correct == 0:
        raise InputError("ask for at least one solution (--n-error/--n-correct >= 0, not both 0)")
    rng = random.Random(seed)
    summary = InjectionSummary(source_rows=len(sources))
    eligible = []
    for source in sources:
        found = _math_candidates(source)
        if found is not None and found[1]:
            eligible.append((source, *found))
    summary.parsed = summary.eligible = len(eligible)
    if len(eligible) < n_error + n_correct:
        raise InputError(
            f"only {len(eligible)} of {len(sources)} MATH solutions end in a checkable computation of an "
            f"integer answer that can take a slip; asked for {n_error} + {n_correct}"
        )
    rng.shuffle(eligible)
    records = []
    for position, (source, steps, injected) in enumerate(eligible[: n_error + n_correct]):
        if position < n_error:
            choice = injected[rng.randrange(len(injected))]
            summary.kinds[choice.kind] = summary.kinds.get(choice.kind, 0) + 1
            record = {"steps": list(choice.steps), "label": choice.label, "final_answer_correct": False,
                      "corruption": choice.kind, "corruption_detail": choice.detail}
        else:
            record = {"steps": list(steps), "label": -1, "final_answer_correct": True, "corruption": None,
                      "corruption_detail": None}
        records.append({"generator": "math500-reference", "problem": source.question, "gold_answer": source.answer,
                        "source_row": source.source_row, **record})
    rng.shuffle(records)
    width = len(str(len(records) - 1))
    return [{"id": f"{source_name}-{i:0{width}d}", **record} for i, record in enumerate(records)], summary
