"""Error injection, part 2: the corruption kinds and carrying a changed value forward.

:func:`candidate_corruptions` lists the changes a parsed solution allows (``CORRUPTION_KINDS``),
:func:`apply_corruption` applies one and carries the new value through the later steps (or
rejects it as ambiguous), :func:`two_error_candidates` and :func:`uncarried_slip_candidates` make
the two-error and right-answer records. :mod:`labelers.evaluation.inject` describes the method.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from labelers.evaluation.inject_parse import (
    _NUMBER,
    ReferenceSolution,
    Token,
    decimal_text,
    evaluate,
    format_like,
    number_value,
)

CORRUPTION_KINDS: tuple[str, ...] = ("arithmetic_slip", "wrong_operation", "dropped_term")
# Errors where the arithmetic is right and the reasoning is not (only Monte Carlo can see them).
REASONING_KINDS: tuple[str, ...] = ("wrong_operation", "dropped_term")
# Record kinds beyond one carried-forward error (make-set --n-two-errors / --n-right-answer):
TWO_ERRORS = "two_errors"  # a reasoning error, then a later arithmetic slip; label = the first
SLIP_NOT_CARRIED = "slip_not_carried"  # a slip the solution does not use; final answer right
SLIP_DELTAS: tuple[int, ...] = (1, -1, 2, -2, 10, -10)
# Values too common to tell a carried-forward result from a constant of the problem.
COMMON_CONSTANTS: frozenset[Fraction] = frozenset(
    Fraction(v) for v in (*range(0, 13), 24, 30, 31, 52, 60, 100, 365, 1000)
)


# --------------------------------------------------------------------------------------------
# Corruption
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One candidate change to one annotation."""

    kind: str
    annotation: int  # index into ReferenceSolution.annotations
    new_tokens: tuple[Token, ...]  # the changed annotation expression (same as before for slips)
    new_value: Fraction
    # Visible edit: token index range [first, last] of the visible expression replaced by text.
    visible_edit: tuple[int, int, str] | None
    detail: str


@dataclass(frozen=True)
class InjectedError:
    """One error written into a solution (a record's ``corruption_errors`` entry)."""

    step: int
    kind: str  # one of CORRUPTION_KINDS
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"step": self.step, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class InjectedSolution:
    steps: tuple[str, ...]
    label: int  # earliest wrong step
    final_answer: str
    kind: str
    detail: str
    errors: tuple[InjectedError, ...] = ()  # every error written, in step order


def _binary_operator_positions(tokens: Sequence[Token]) -> list[int]:
    positions = []
    for index, token in enumerate(tokens):
        if token.kind != "op" or token.canon not in "+-*/":
            continue
        previous = tokens[index - 1] if index > 0 else None
        if previous is not None and (previous.kind == "num" or previous.canon == ")"):
            positions.append(index)
    return positions


def _top_level_groups(tokens: Sequence[Token], operators: str) -> list[tuple[int, int]] | None:
    """Token ranges [start, end) of the depth-0 operands joined by ``operators``; None when
    an operator of the other precedence also sits at depth 0 (never drop part of a mixed
    expression)."""
    binary = set(_binary_operator_positions(tokens))
    groups: list[tuple[int, int]] = []
    depth = 0
    start = 0
    for index, token in enumerate(tokens):
        if token.canon == "(":
            depth += 1
        elif token.canon == ")":
            depth -= 1
        elif depth == 0 and index in binary:
            if token.canon in operators:
                groups.append((start, index))
                start = index
            elif operators == "*/" and token.canon in "+-":
                return None
    groups.append((start, len(tokens)))
    return groups


def candidate_corruptions(solution: ReferenceSolution) -> list[Corruption]:
    """Every slip, operator swap and dropped term of every visible computation, before the
    consistency checks of :func:`apply_corruption`."""
    candidates: list[Corruption] = []
    swaps = {"+": "-", "-": "+", "*": "/", "/": "*"}
    for index, annotation in enumerate(solution.annotations):
        if annotation.visible_tokens is None:
            continue
        tokens = annotation.tokens
        visible = annotation.visible_tokens
        for delta in SLIP_DELTAS:
            candidates.append(
                Corruption(
                    "arithmetic_slip", index, tokens, annotation.stated + delta, None,
                    f"result {decimal_text(annotation.stated)} written as {decimal_text(annotation.stated + delta)}",
                )
            )
        for position in _binary_operator_positions(tokens):
            new_op = swaps[tokens[position].canon]
            new_tokens = list(tokens)
            new_tokens[position] = Token("op", new_op)
            value = evaluate(new_tokens)
            if value is None:
                continue
            old_visible = visible[position].text
            shown = new_op if old_visible in "+-*/" else {"*": "x", "/": "/", "+": "+", "-": "-"}[new_op]
            candidates.append(
                Corruption(
                    "wrong_operation", index, tuple(new_tokens), value, (position, position, shown),
                    f"operator {tokens[position].canon} replaced by {new_op}",
                )
            )
        for operators in ("+-", "*/"):
            groups = _top_level_groups(tokens, operators)
            if groups is None or len(groups) < 3:
                continue
            for start, end in groups[1:]:
                if tokens[start].canon == "/":
                    continue  # leaving out a divisor is not "a dropped term"
                new_tokens = list(tokens[:start]) + list(tokens[end:])
                value = evaluate(new_tokens)
                if value is None:
                    continue
                dropped = "".join(t.text for t in tokens[start:end])
                candidates.append(
                    Corruption("dropped_term", index, tuple(new_tokens), value, (start, end - 1, ""),
                               f"term '{dropped}' left out")
                )
    return candidates


def _replace_spans(text: str, edits: Iterable[tuple[int, int, str]]) -> str:
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def apply_corruption(
    solution: ReferenceSolution, corruption: Corruption, slip: Corruption | None = None
) -> InjectedSolution | None:
    """The corrupted solution, the changed value carried forward; None when the change cannot
    be carried forward unambiguously or leaves the final answer unchanged.

    ``slip`` (an ``arithmetic_slip`` candidate of an annotation in a later step): a second error.
    Its computation, with the first error's values carried into its operands, gets a result off
    by the slip's delta, carried forward too (kind ``two_errors``; the label stays the first)."""
    target = solution.annotations[corruption.annotation]
    origin_step = target.step
    if corruption.new_value == target.stated:
        return None
    slip_delta = Fraction(0)
    if slip is not None:
        slip_target = solution.annotations[slip.annotation]
        slip_delta = slip.new_value - slip_target.stated
        if slip.kind != "arithmetic_slip" or slip_target.step <= origin_step or slip_delta == 0:
            return None
    question_numbers = {number_value(m.group()) for m in _NUMBER.finditer(solution.question)}
    # mapping old value -> (new value, step where the change happens, annotation index)
    changes: dict[Fraction, tuple[Fraction, int, int]] = {
        target.stated: (corruption.new_value, origin_step, corruption.annotation)
    }
    unchanged_results: list[tuple[Fraction, int]] = []
    for later_index in range(corruption.annotation + 1, len(solution.annotations)):
        later = solution.annotations[later_index]
        new_operands = [changes[v][0] if v in changes else v for v in later.operands]
        slipped = slip is not None and later_index == slip.annotation
        if new_operands == later.operands and not slipped:
            unchanged_results.append((later.stated, later.step))
            continue
        operand_iter = iter(new_operands)
        new_tokens = [Token("num", str(next(operand_iter))) if t.kind == "num" else t for t in later.tokens]
        value = evaluate(new_tokens)
        if value is None:
            return None
        if slipped:
            slip_written = (value, value + slip_delta)
            value += slip_delta
        if value == later.stated:
            unchanged_results.append((later.stated, later.step))
            continue
        if later.stated in changes and changes[later.stated][0] != value:
            return None
        changes.setdefault(later.stated, (value, later.step, later_index))

    for old, (new, step, origin_annotation) in changes.items():
        if old in question_numbers or old in COMMON_CONSTANTS:
            return None
        if new < 0 <= old or decimal_text(new) is None:
            return None
        for earlier_step in range(step):
            if any(number_value(m.group()) == old for m in _NUMBER.finditer(solution.visible_steps[earlier_step])):
                return None
        # an operand equal to the old value up to where it is computed is a constant, not it
        for annotation in solution.annotations[: origin_annotation + 1]:
            if old in annotation.operands:
                return None
    if any(value in changes for value, _ in unchanged_results):
        return None
    if solution.gold_value not in changes:
        return None  # the change does not reach the final answer

    steps = list(solution.visible_steps)
    for step_index in range(origin_step, len(steps)):
        active = {old: new for old, (new, step, _) in changes.items() if step <= step_index}
        text = steps[step_index]
        edits: list[tuple[int, int, str]] = []
        protected: tuple[int, int] | None = None
        if step_index == origin_step:
            visible = target.visible_tokens
            assert visible is not None  # candidates only target visible computations
            protected = (visible[0].start, visible[-1].end)
            if corruption.visible_edit is not None:
                first, last, replacement = corruption.visible_edit
                start = visible[first].start
                end = visible[last].end
                if replacement == "":
                    # drop the term together with the space before its operator
                    while start > 0 and text[start - 1] == " ":
                        start -= 1
                edits.append((start, end, replacement))
        for match in _NUMBER.finditer(text):
            if protected and protected[0] <= match.start() < protected[1]:
                continue
            value = number_value(match.group())
            if value in active:
                written = format_like(active[value], match.group())
                if written is None:
                    return None
                edits.append((match.start(), match.end(), written))
        steps[step_index] = _replace_spans(text, edits)
    final_value = changes[solution.gold_value][0]
    final = decimal_text(final_value)
    assert final is not None
    rendered = solution.render(steps, final)
    reference = solution.render()
    if rendered[:origin_step] != reference[:origin_step] or rendered[origin_step] == reference[origin_step]:
        return None
    errors = [InjectedError(origin_step, corruption.kind, corruption.detail)]
    if slip is not None:
        right, written = slip_written
        slip_step = solution.annotations[slip.annotation].step
        if rendered[slip_step] == reference[slip_step]:
            return None
        errors.append(
            InjectedError(slip_step, slip.kind, f"result {decimal_text(right)} written as {decimal_text(written)}")
        )
    detail = "; ".join(f"step {e.step}: {e.detail}" for e in errors)
    detail += f"; final answer {solution.gold_answer} -> {final}"
    kind = TWO_ERRORS if slip is not None else corruption.kind
    return InjectedSolution(tuple(rendered), origin_step, final, kind, detail, tuple(errors))


def apply_uncarried_slip(solution: ReferenceSolution, corruption: Corruption) -> InjectedSolution | None:
    """An arithmetic slip the solution does not use: the step's result is written wrong, every
    later step (and the final answer) keeps the right value (kind ``slip_not_carried``; the
    final answer equals gold, the slip's step is the earliest error). None for a slip in the
    computation of the final answer itself, or when the result is not written right after its
    expression."""
    if corruption.kind != "arithmetic_slip":
        return None
    target = solution.annotations[corruption.annotation]
    visible = target.visible_tokens
    if visible is None or target.stated == solution.gold_value or corruption.new_value < 0 <= target.stated:
        return None
    step = target.step
    text = solution.visible_steps[step]
    result = _NUMBER.search(text, visible[-1].end)
    if result is None or text[visible[-1].end : result.start()].strip(" =$"):
        return None
    if number_value(result.group()) != target.stated:
        return None
    written = format_like(corruption.new_value, result.group())
    if written is None:
        return None
    steps = list(solution.visible_steps)
    steps[step] = _replace_spans(text, [(result.start(), result.end(), written)])
    rendered = solution.render(steps)
    error = InjectedError(step, corruption.kind, corruption.detail)
    detail = f"step {step}: {corruption.detail}, not carried forward; final answer {solution.gold_answer} (right)"
    return InjectedSolution(tuple(rendered), step, solution.gold_answer, SLIP_NOT_CARRIED, detail, (error,))


def two_error_candidates(solution: ReferenceSolution) -> list[InjectedSolution]:
    """Every consistent pair (a reasoning error — ``wrong_operation`` or ``dropped_term``, the
    arithmetic right — then an arithmetic slip in a later step) of one reference solution."""
    candidates = candidate_corruptions(solution)
    reasoning = [c for c in candidates if c.kind in REASONING_KINDS]
    slips = [c for c in candidates if c.kind == "arithmetic_slip"]
    out: list[InjectedSolution] = []
    for first in reasoning:
        first_step = solution.annotations[first.annotation].step
        for slip in slips:
            if solution.annotations[slip.annotation].step <= first_step:
                continue
            injected = apply_corruption(solution, first, slip)
            if injected is not None:
                out.append(injected)
    return out


def uncarried_slip_candidates(solution: ReferenceSolution) -> list[InjectedSolution]:
    """Every slip of one reference solution that can be written without being carried forward."""
    out = []
    for candidate in candidate_corruptions(solution):
        injected = apply_uncarried_slip(solution, candidate)
        if injected is not None:
            out.append(injected)
    return out
