"""A claim side as a Lean term: reading a plain side, its features, and printing it for Lean.

Part of :mod:`labelers.verify.lean_formalize` (its docstring gives the type choice and why):
``_parse_side`` reads a side with Python's ``ast``, ``_scan`` collects what it uses
(``_Features``: the Lean type it needs, its symbols) and refuses what the templates do not
formalize (``_Unsupported``), ``_to_sympy`` evaluates the subterms that decide soundness, and
``_lean_term`` / ``_side_text`` print the side as a Lean term.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import sympy

LeanType = Literal["ℕ", "ℤ", "ℚ", "ℝ"]
_TYPE_ORDER: tuple[LeanType, ...] = ("ℕ", "ℤ", "ℚ", "ℝ")

# Larger exponents are not formalized: norm_num would expand a huge number.
MAX_EXPONENT = 4096
MAX_SIDE_CHARS = 2000

_REAL_FUNCTIONS = {
    "sin": "Real.sin", "cos": "Real.cos", "tan": "Real.tan", "log": "Real.log", "ln": "Real.log", "exp": "Real.exp"
}
_LEAN_KEYWORDS = frozenset(
    """at by calc class def do else end example from fun have if import in instance lemma let
    match namespace open section show structure suffices then theorem universe variable where
    with sorry Type Prop Sort rfl deriving mutual private protected noncomputable partial unsafe
    local attribute macro syntax notation infix prefix postfix elab obtain use exact intro""".split()
)
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}\Z")


# ---------------------------------------------------------------------------------------------
# Reading a plain side


class _Unsupported(ValueError):
    """The claim uses something the templates do not formalize (the message says what)."""


@dataclass
class _Features:
    """What a claim uses; decides the Lean type."""

    real: bool = False
    rational: bool = False
    signed: bool = False
    symbols: list[str] | None = None

    def need(self) -> LeanType:
        if self.real:
            return "ℝ"
        if self.rational:
            return "ℚ"
        if self.signed:
            return "ℤ"
        return "ℕ"


def _parse_side(text: str) -> ast.expr:
    if len(text) > MAX_SIDE_CHARS:
        raise _Unsupported("side too long")
    # "^" is what a caller might write for a power; the plain format uses "**".
    source = text.replace("^", "**").strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise _Unsupported(f"not a plain expression: {text!r}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            # The exact written decimal ("0.1" is 1/10), not the binary float.
            segment = ast.get_source_segment(source, node)
            if segment is None:
                raise _Unsupported("cannot read a decimal literal")
            node.prmforge_exact = Fraction(segment.replace("_", ""))  # type: ignore[attr-defined]
            node.prmforge_written = _written_decimal(segment)  # type: ignore[attr-defined]
    return tree.body


def _written_decimal(segment: str) -> tuple[int, int] | None:
    """``"1.50"`` -> ``(150, 100)``: a decimal as written, unreduced, so the statement shows the
    step's own number; None for exponent notation."""
    match = re.fullmatch(r"(\d*)\.(\d*)", segment.replace("_", ""))
    if not match:
        return None
    whole, decimals = match.groups()
    return int(whole + decimals or "0"), 10 ** len(decimals)


def _literal_value(node: ast.Constant) -> Fraction:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unsupported(f"unsupported literal {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    exact = getattr(node, "prmforge_exact", None)
    if exact is None:
        raise _Unsupported("a decimal literal without its written digits")
    return exact


def _call_name(node: ast.Call) -> str:
    if not isinstance(node.func, ast.Name) or node.keywords:
        raise _Unsupported("unsupported call")
    return node.func.id


def _scan(node: ast.expr, features: _Features, order: list[str]) -> None:
    """Collect the features and the symbols (first-appearance order) of a side."""
    if isinstance(node, ast.Constant):
        if _literal_value(node).denominator != 1:
            features.rational = True
    elif isinstance(node, ast.Name):
        if node.id == "pi":
            features.real = True
        elif node.id in ("E", "I", "oo", "nan", "zoo"):
            raise _Unsupported(f"unsupported constant {node.id}")
        else:
            if not _SYMBOL.match(node.id) or node.id in _LEAN_KEYWORDS or node.id.startswith("prmforge"):
                raise _Unsupported(f"unsupported symbol name {node.id!r}")
            if node.id not in order:
                order.append(node.id)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            features.signed = True
        elif not isinstance(node.op, ast.UAdd):
            raise _Unsupported("unsupported unary operator")
        _scan(node.operand, features, order)
    elif isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Sub):
            features.signed = True
        elif isinstance(node.op, ast.Div):
            features.rational = True
        elif isinstance(node.op, (ast.Pow, ast.BitXor)):
            exponent = _closed_value(node.right)
            if exponent.denominator != 1:
                features.real = True
            elif exponent < 0:
                features.rational = True
        elif not isinstance(node.op, (ast.Add, ast.Mult)):
            raise _Unsupported("unsupported operator")
        _scan(node.left, features, order)
        if not isinstance(node.op, (ast.Pow, ast.BitXor)):
            _scan(node.right, features, order)
    elif isinstance(node, ast.Call):
        name = _call_name(node)
        if name in ("sqrt",) or name in _REAL_FUNCTIONS:
            if len(node.args) != 1:
                raise _Unsupported(f"{name} takes one argument")
            features.real = True
            _scan(node.args[0], features, order)
        elif name == "factorial":
            if len(node.args) != 1:
                raise _Unsupported("factorial takes one argument")
            _natural_argument(node.args[0])
        elif name == "Rational":
            if len(node.args) != 2:
                raise _Unsupported("Rational takes two arguments")
            features.rational = True
            for arg in node.args:
                _scan(arg, features, order)
        else:
            raise _Unsupported(f"unsupported function {name}")
    else:
        raise _Unsupported(f"unsupported syntax {type(node).__name__}")


def _closed_value(node: ast.expr) -> Fraction:
    """The exact value of a symbol-free rational subterm (exponents, factorial arguments)."""
    value = _to_sympy(node, {})
    if value.free_symbols or not value.is_Rational:
        raise _Unsupported("exponent is not a rational constant")
    return Fraction(int(value.p), int(value.q))


def _natural_argument(node: ast.expr) -> int:
    value = _closed_value(node)
    if value.denominator != 1 or value < 0 or value > 1000:
        raise _Unsupported("factorial of something other than a small natural number")
    return int(value)


def _to_sympy(node: ast.expr, bindings: Mapping[str, sympy.Expr]) -> sympy.Expr:
    """Exact sympy value of a side; raises _Unsupported where Lean's total functions would lie
    (division by zero, square root of a negative number, 0 to a negative power)."""
    if isinstance(node, ast.Constant):
        frac = _literal_value(node)
        return sympy.Rational(frac.numerator, frac.denominator)
    if isinstance(node, ast.Name):
        if node.id == "pi":
            return sympy.pi
        return bindings.get(node.id, sympy.Symbol(node.id))
    if isinstance(node, ast.UnaryOp):
        inner = _to_sympy(node.operand, bindings)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left = _to_sympy(node.left, bindings)
        right = _to_sympy(node.right, bindings)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            if right.is_zero:
                raise _Unsupported("division by zero")
            return left / right
        if isinstance(node.op, (ast.Pow, ast.BitXor)):
            if not right.is_Rational:
                raise _Unsupported("exponent is not a rational constant")
            if abs(right) > MAX_EXPONENT:
                raise _Unsupported("exponent too large")
            if right.is_negative and left.is_zero:
                raise _Unsupported("zero to a negative power")
            if right.q != 1 and left.is_negative:
                raise _Unsupported("fractional power of a negative number")
            return left**right
    if isinstance(node, ast.Call):
        name = _call_name(node)
        if name == "sqrt":
            arg = _to_sympy(node.args[0], bindings)
            if arg.is_negative:
                raise _Unsupported("square root of a negative number")
            return sympy.sqrt(arg)
        if name == "factorial":
            return sympy.factorial(_natural_argument(node.args[0]))
        if name == "Rational":
            num, den = (_to_sympy(a, bindings) for a in node.args)
            if den.is_zero:
                raise _Unsupported("division by zero")
            return num / den
        if name in _REAL_FUNCTIONS:
            arg = _to_sympy(node.args[0], bindings)
            if name in ("log", "ln") and (arg.is_zero or arg.is_negative):
                raise _Unsupported("log of a non-positive number")
            return getattr(sympy, "log" if name == "ln" else name)(arg)
    raise _Unsupported(f"unsupported syntax {type(node).__name__}")


# ---------------------------------------------------------------------------------------------
# Printing Lean terms

_ATOM = 1024


def _fraction_term(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"({value.numerator} / {value.denominator})"


def _wrap(text_prec: tuple[str, int], minimum: int) -> str:
    text, prec = text_prec
    return text if prec >= minimum else f"({text})"


def _lean_term(node: ast.expr, names: Mapping[str, str]) -> tuple[str, int]:
    """(Lean text, precedence) of a side. Lean: ``+ -`` 65, ``* /`` 70, ``^`` 75 (right),
    application 1024. A negation is printed at precedence 0 unless it starts a sum, so it is
    parenthesized everywhere else (``2 * (-3)``, ``(-2) ^ 2``)."""
    if isinstance(node, ast.Constant):
        value = _literal_value(node)
        written = getattr(node, "prmforge_written", None)
        if written is not None and value.denominator != 1:
            return f"({written[0]} / {written[1]})", _ATOM
        return _fraction_term(value), _ATOM
    if isinstance(node, ast.Name):
        if node.id == "pi":
            return "Real.pi", _ATOM
        return names[node.id], _ATOM
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.UAdd):
            return _lean_term(node.operand, names)
        return "-" + _wrap(_lean_term(node.operand, names), _ATOM), 0
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.Pow, ast.BitXor)):
            exponent = _closed_value(node.right)
            base = _lean_term(node.left, names)
            if exponent == Fraction(1, 2):
                return f"Real.sqrt {_wrap(base, _ATOM)}", _ATOM - 1
            if exponent.denominator != 1:
                # rpow: a real exponent, written as a rational literal.
                return f"{_wrap(base, 76)} ^ ({exponent.numerator} / {exponent.denominator} : ℝ)", 75
            if exponent < 0:
                return f"1 / {_wrap(base, 76)} ^ {-exponent.numerator}", 70
            return f"{_wrap(base, 76)} ^ {exponent.numerator}", 75
        left = _lean_term(node.left, names)
        right = _lean_term(node.right, names)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            op = "+" if isinstance(node.op, ast.Add) else "-"
            left_text = left[0] if left[1] == 0 else _wrap(left, 65)  # "-3 + 5" reads as (-3) + 5
            return f"{left_text} {op} {_wrap(right, 66)}", 65
        op = "*" if isinstance(node.op, ast.Mult) else "/"
        return f"{_wrap(left, 70)} {op} {_wrap(right, 71)}", 70
    if isinstance(node, ast.Call):
        name = _call_name(node)
        if name == "sqrt":
            return f"Real.sqrt {_wrap(_lean_term(node.args[0], names), _ATOM)}", _ATOM - 1
        if name in _REAL_FUNCTIONS:
            return f"{_REAL_FUNCTIONS[name]} {_wrap(_lean_term(node.args[0], names), _ATOM)}", _ATOM - 1
        if name == "factorial":
            # Nat.factorial of a literal; the surrounding type ascription casts it.
            return f"Nat.factorial {_natural_argument(node.args[0])}", _ATOM - 1
        if name == "Rational":
            num = _wrap(_lean_term(node.args[0], names), 71)
            den = _wrap(_lean_term(node.args[1], names), 71)
            return f"({num} / {den})", _ATOM
    raise _Unsupported(f"unsupported syntax {type(node).__name__}")


def _side_text(node: ast.expr, names: Mapping[str, str]) -> str:
    text, prec = _lean_term(node, names)
    return text


def _rounding_tolerance(rhs: str) -> Fraction:
    """Half a unit in the last written decimal place of the result: "3.33" -> 1/200, "33" -> 1/2."""
    match = re.search(r"\.(\d+)\s*\)?\s*\Z", rhs.strip())
    places = len(match.group(1)) if match else 0
    return Fraction(1, 2 * 10**places)
