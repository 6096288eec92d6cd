"""GSM8K reference solutions as scripted step sequences, and error injection.

:func:`reference_steps` turns a GSM8K answer (``... <<16-3-4=9>>9 ...\\n#### 18``) into step
texts: one step per line, calculator annotations removed, thousands separators dropped, and the
final answer appended to the last step as ``The final answer is \\boxed{18}.``.

:func:`inject_slip` makes a wrong solution from it: one arithmetic slip in step ``i`` (the
step's last calculator result changed by a small delta), *carried forward*: every later
calculator expression that used a changed value is re-evaluated with the new value, and the
visible numbers follow. So every step after the slip is arithmetically consistent with the
wrong value, the slip step is the only false computation, and the final answer is wrong. A slip
that does not reach the final answer is rejected (``None``): the caller picks another step.
"""

from __future__ import annotations

import ast
import operator
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?|(?<![\w\d])\.\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass(frozen=True)
class SlipSolution:
    """A wrong solution: ``steps`` with the slip at ``error_index``, final answer ``final_answer``."""

    steps: tuple[str, ...]
    error_index: int
    final_answer: str


def _evaluate(expression: str) -> Fraction | None:
    """Exact value of a plain arithmetic expression (+ - * / and parentheses), else None."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError("unsupported")

    try:
        return walk(ast.parse(expression.replace(",", "").replace("x", "*"), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _canonical(number: str) -> str:
    value = _evaluate(number)
    return _format(value) if value is not None else number


def _substitute_numbers(text: str, mapping: Mapping[str, str]) -> str:
    """Every number token of ``text`` whose canonical form is a key of ``mapping`` replaced."""
    return _NUMBER.sub(lambda m: mapping.get(_canonical(m.group(0)), m.group(0)), text)


def _lines(answer: str) -> tuple[list[str], str]:
    body, _, final = answer.partition("####")
    lines = [_THOUSANDS.sub("", line.strip()) for line in body.splitlines() if line.strip()]
    return lines, _THOUSANDS.sub("", final.strip())


def _visible(line: str) -> str:
    return _ANNOTATION.sub("", line).strip()


def _with_answer(step: str, answer: str) -> str:
    joiner = " " if step.rstrip().endswith((".", "!", "?")) else ". "
    return f"{step.rstrip()}{joiner}The final answer is \\boxed{{{answer}}}."


def reference_steps(answer: str) -> tuple[list[str], str]:
    """(steps, gold answer) of a GSM8K reference answer, as the scripted policy writes them."""
    lines, gold = _lines(answer)
    steps = [_visible(line) for line in lines]
    if steps:
        steps[-1] = _with_answer(steps[-1], gold)
    return steps, gold


def slip_candidates(answer: str) -> list[int]:
    """Indices of steps that hold a calculator result (where a slip can be injected)."""
    lines, _ = _lines(answer)
    return [i for i, line in enumerate(lines) if _ANNOTATION.search(line)]


def inject_slip(answer: str, error_index: int, rng: random.Random) -> SlipSolution | None:
    """A wrong solution with one arithmetic slip at ``error_index``, carried forward; None when
    the step has no calculator result or the slip does not change the final answer."""
    lines, gold = _lines(answer)
    if not 0 <= error_index < len(lines):
        return None
    annotations = list(_ANNOTATION.finditer(lines[error_index]))
    if not annotations:
        return None
    last = annotations[-1]
    old = _evaluate(last.group(2))
    if old is None:
        return None
    delta = rng.choice([1, 2, 3, 4, 5, 10, -1, -2, -3])
    new = old + delta
    if new < 0 or new == old:
        new = old + 1
    mapping: dict[str, str] = {_format(old): _format(new)}
    steps = [_visible(line) for line in lines[:error_index]]
    # The slip step: only the visible result right after the last annotation changes.
    slip_line = lines[error_index]
    tail = slip_line[last.end() :]
    tail = _NUMBER.sub(lambda m: _format(new), tail, count=1)
    steps.append(_visible(slip_line[: last.end()] + tail))
    for line in lines[error_index + 1 :]:
        for match in _ANNOTATION.finditer(line):
            expression = _substitute_numbers(match.group(1), mapping)
            value, before = _evaluate(expression), _evaluate(match.group(2))
            if value is not None and before is not None and value != before:
                mapping[_format(before)] = _format(value)
        steps.append(_substitute_numbers(_visible(line), mapping))
    final = mapping.get(_canonical(gold), gold)
    if final == gold or _canonical(final) == _canonical(gold):
        return None
    steps[-1] = _with_answer(steps[-1], final)
    return SlipSolution(tuple(steps), error_index, final)


def first_slip(answer: str, rng: random.Random) -> SlipSolution | None:
    """A slip at a random step whose error reaches the final answer, or None when none does."""
    candidates = slip_candidates(answer)
    rng.shuffle(candidates)
    for index in candidates:
        slip = inject_slip(answer, index, rng)
        if slip is not None:
            return slip
    return None
