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
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from data_schemas.errors import InputError
from data_schemas.jsonl import read_json_objects

CORRUPTION_KINDS: tuple[str, ...] = ("arithmetic_slip", "wrong_operation", "dropped_term")
# Errors where the arithmetic is right and the reasoning is not (only Monte Carlo can see them).
REASONING_KINDS: tuple[str, ...] = ("wrong_operation", "dropped_term")
# Record kinds beyond one carried-forward error (make-set --n-two-errors / --n-right-answer):
TWO_ERRORS = "two_errors"  # a reasoning error, then a later arithmetic slip; label = the first
SLIP_NOT_CARRIED = "slip_not_carried"  # a slip the solution does not use; final answer right
GENERATOR = "gsm8k-reference"
SLIP_DELTAS: tuple[int, ...] = (1, -1, 2, -2, 10, -10)
# Values too common to tell a carried-forward result from a constant of the problem.
COMMON_CONSTANTS: frozenset[Fraction] = frozenset(
    Fraction(v) for v in (*range(0, 13), 24, 30, 31, 52, 60, 100, 365, 1000)
)
MAX_DECIMALS = 4

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# A number as GSM8K writes it: optional "$", thousands separators, decimals, ".5".
_NUMBER = re.compile(r"(?<![\d.,])\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d|,\d{3})")
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<op>[-+*/()]))")
_VISIBLE_OP = re.compile(r"[-+*/x×÷()]")
_VISIBLE_OP_CANON = {"x": "*", "×": "*", "÷": "/"}
_VISIBLE_CHARS = set("0123456789 .,$+-*/x×÷()")


# --------------------------------------------------------------------------------------------
# Numbers and expressions
# --------------------------------------------------------------------------------------------


def number_value(text: str) -> Fraction:
    """Exact value of a number token (``$1,250.50`` -> 1250.5)."""
    return Fraction(text.replace("$", "").replace(",", ""))


def decimal_text(value: Fraction) -> str | None:
    """``value`` as a plain decimal (``2.5``, ``-3``), or None when it needs more than
    ``MAX_DECIMALS`` places (1/3, 0.00001)."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    for places in range(MAX_DECIMALS + 1):
        scaled = value * 10**places
        if scaled.denominator == 1:
            digits = str(scaled.numerator).rjust(places + 1, "0")
            if places == 0:
                return sign + digits
            return f"{sign}{digits[:-places]}.{digits[-places:]}"
    return None


def format_like(value: Fraction, template: str) -> str | None:
    """``value`` written the way ``template`` writes its number: ``$`` prefix, thousands
    separators, no leading zero (``.5``). None when not a short decimal."""
    plain = decimal_text(value)
    if plain is None:
        return None
    sign = "-" if plain.startswith("-") else ""
    plain = plain.lstrip("-")
    whole, _, frac = plain.partition(".")
    body = template.replace("$", "")
    if "," in body:
        whole = f"{int(whole):,}"
    template_places = len(body.partition(".")[2])
    if len(frac) < template_places:
        frac = frac.ljust(template_places, "0")  # "352.00" stays two places
    if body.startswith(".") and whole == "0" and frac:
        whole = ""
    text = whole + (f".{frac}" if frac else "")
    return sign + ("$" if template.startswith("$") else "") + text


@dataclass(frozen=True)
class Token:
    kind: str  # "num" or "op"
    text: str  # as written
    start: int = 0  # span in the string it came from
    end: int = 0

    @property
    def canon(self) -> str:
        """Operator in calculator form (``x`` -> ``*``); numbers as their exact value."""
        if self.kind == "num":
            return str(number_value(self.text))
        return _VISIBLE_OP_CANON.get(self.text, self.text)


def tokenize_expression(expr: str) -> list[Token] | None:
    """Tokens of a calculator expression (numbers, ``+ - * / ( )``), or None when it holds
    anything else."""
    tokens: list[Token] = []
    position = 0
    stripped = expr.rstrip()
    while position < len(stripped):
        match = _EXPR_TOKEN.match(stripped, position)
        if match is None:
            return None
        kind = "num" if match.group("num") is not None else "op"
        text = match.group(kind)
        tokens.append(Token(kind, text, match.start(kind), match.end(kind)))
        position = match.end()
    return tokens or None


def evaluate(tokens: Sequence[Token]) -> Fraction | None:
    """Exact value of a token list (``+ - * /``, parentheses, unary minus); None when it does
    not parse or divides by zero."""
    items = [t.canon if t.kind == "op" else number_value(t.text) for t in tokens]
    position = 0

    def peek() -> object:
        return items[position] if position < len(items) else None

    def expression() -> Fraction:
        nonlocal position
        value = term()
        while peek() in ("+", "-"):
            op = items[position]
            position += 1
            value = value + term() if op == "+" else value - term()
        return value

    def term() -> Fraction:
        nonlocal position
        value = factor()
        while peek() in ("*", "/"):
            op = items[position]
            position += 1
            right = factor()
            if op == "*":
                value = value * right
            else:
                value = value / right  # ZeroDivisionError handled below
        return value

    def factor() -> Fraction:
        nonlocal position
        item = peek()
        if item == "-":
            position += 1
            return -factor()
        if item == "+":
            position += 1
            return factor()
        if item == "(":
            position += 1
            value = expression()
            if peek() != ")":
                raise ValueError("unbalanced parenthesis")
            position += 1
            return value
        if isinstance(item, Fraction):
            position += 1
            return item
        raise ValueError(f"unexpected {item!r}")

    try:
        value = expression()
    except (ValueError, ZeroDivisionError):
        return None
    return value if position == len(items) else None


def tokenize_visible(text: str) -> list[Token] | None:
    """Tokens of a visible expression such as ``80,000 + $50,000`` or ``3 books x 2``: None
    when anything but numbers, operators and spaces is in it."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        if text[position] == " ":
            position += 1
            continue
        number = _NUMBER.match(text, position)
        if number:
            tokens.append(Token("num", number.group(), number.start(), number.end()))
            position = number.end()
            continue
        op = _VISIBLE_OP.match(text, position)
        if op:
            tokens.append(Token("op", op.group(), op.start(), op.end()))
            position = op.end()
            continue
        return None
    return tokens or None


# --------------------------------------------------------------------------------------------
# Parsed reference solutions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """One calculator annotation of a step."""

    step: int
    tokens: tuple[Token, ...]
    stated: Fraction  # the result GSM8K wrote
    # Where the visible text shows the same expression, token for token (span in the step's
    # visible text, and the visible tokens with spans relative to the step text).
    visible_tokens: tuple[Token, ...] | None

    @property
    def operands(self) -> list[Fraction]:
        return [number_value(t.text) for t in self.tokens if t.kind == "num"]


@dataclass(frozen=True)
class ReferenceSolution:
    """A GSM8K solution split into steps, calculator annotations parsed."""

    question: str
    gold_answer: str  # as in the data set, thousands separators removed
    gold_value: Fraction
    visible_steps: tuple[str, ...]  # step texts without annotations (no final-answer sentence)
    annotations: tuple[Annotation, ...]
    source_row: int

    def render(self, visible_steps: Sequence[str] | None = None, answer: str | None = None) -> list[str]:
        """The steps as written into a set: the last one ends with the final-answer sentence."""
        steps = list(visible_steps if visible_steps is not None else self.visible_steps)
        final = answer if answer is not None else self.gold_answer
        last = steps[-1].rstrip()
        if last and last[-1] not in ".!?":
            last += "."
        steps[-1] = f"{last} The final answer is \\boxed{{{final}}}."
        return steps


def _find_visible_expression(before: str, tokens: Sequence[Token]) -> tuple[Token, ...] | None:
    """The visible expression ending at ``before``'s trailing ``=`` that matches ``tokens``."""
    match = re.search(r"=\s*\$?\s*$", before)
    if match is None:
        return None
    left = before[: match.start()]
    run_start = len(left)
    while run_start > 0 and left[run_start - 1] in _VISIBLE_CHARS:
        run_start -= 1
    wanted = [t.canon for t in tokens]
    for start in range(run_start, len(left)):
        if left[start] not in "0123456789.$(":
            continue
        if start > 0 and left[start - 1] in "0123456789.,":
            continue  # never start inside a number
        candidate = tokenize_visible(left[start:])
        if candidate is None:
            continue
        if [t.canon for t in candidate] == wanted:
            return tuple(Token(t.kind, t.text, t.start + start, t.end + start) for t in candidate)
    return None


def parse_reference(question: str, answer: str, source_row: int) -> ReferenceSolution | None:
    """A GSM8K ``answer`` as a :class:`ReferenceSolution`; None when a line holds an annotation
    that is not plain arithmetic, an annotation whose stated result is not its exact value, or
    no ``####`` answer."""
    lines = [line for line in answer.split("\n") if line.strip()]
    if not lines or not lines[-1].lstrip().startswith("####"):
        return None
    gold = lines[-1].lstrip()[4:].strip().replace(",", "")
    try:
        gold_value = Fraction(gold)
    except (ValueError, ZeroDivisionError):
        return None
    visible_steps: list[str] = []
    annotations: list[Annotation] = []
    for step_index, line in enumerate(lines[:-1]):
        visible = ""
        cursor = 0
        for match in _ANNOTATION.finditer(line):
            visible += line[cursor : match.start()]
            cursor = match.end()
            tokens = tokenize_expression(match.group(1))
            if tokens is None:
                return None
            value = evaluate(tokens)
            try:
                stated = number_value(match.group(2).strip())
            except (ValueError, ZeroDivisionError):
                return None
            if value is None or value != stated:
                return None
            annotations.append(
                Annotation(step_index, tuple(tokens), stated, _find_visible_expression(visible, tokens))
            )
        visible += line[cursor:]
        visible_steps.append(visible.strip())
    if not visible_steps:
        return None
    return ReferenceSolution(question, gold, gold_value, tuple(visible_steps), tuple(annotations), source_row)


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
                    edits = [(m.start(), m.end(), format_like(new, m.group()) or "")
                             for m in _NUMBER.finditer(steps[later])
                             if number_value(m.group()) == gold]
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
