"""Error injection, part 1: reading a GSM8K reference solution into steps and computations.

Numbers as GSM8K writes them (:func:`number_value`, :func:`format_like`), the arithmetic of a
calculator annotation (:func:`tokenize_expression`, :func:`evaluate`), the computation the
visible text shows (:func:`tokenize_visible`), and :func:`parse_reference`: a solution as
:class:`ReferenceSolution` (steps, annotations, which visible expression each one matches).
:mod:`labelers.evaluation.inject` describes the whole method.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

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
