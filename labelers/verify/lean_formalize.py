"""Step claims as Lean 4 statements: deterministic templates and the LLM path (Safe).

A :class:`~labelers.verify.claims.Claim` (``lhs relation rhs``, plain sympy-parseable sides) becomes
one Lean 4 + Mathlib proposition. The sides are read with Python's ``ast`` (the plain syntax is a
subset of Python's expression syntax; unlike ``sympy.parse_expr(evaluate=False)`` it keeps the
order of the terms, so ``16 - 3 - 4`` stays ``16 - 3 - 4``) and printed as Lean terms; sympy
evaluates the subterms that decide soundness (divisors, square-root arguments, exponents).

Type choice (the point is that Lean's truncating operations never make a false claim provable):

- ``ℝ`` when the claim uses ``sqrt``, ``pi``, a fractional power or an analytic function, and for
  claims over free (unbound) symbols;
- ``ℚ`` when it divides, has a decimal or percentage, a negative power, or is rounded;
- ``ℤ`` when it subtracts or negates (ℕ subtraction truncates: ``(3 - 5 : ℕ) = 0``);
- ``ℕ`` otherwise (only ``+ * ^`` on naturals, where ℕ is exact).

A literal division by zero, a square root of a negative number or a zero base with a negative
exponent is not formalized at all: Lean defines ``x / 0 = 0`` and ``Real.sqrt (-4) = 0``, so such a
statement could be proved while the step is wrong.

Symbols: a claim the step derived by substituting values (``Claim.substitution``, "x = 5 solves
2x + 1 = 11") becomes ``theorem t (x : ℚ) (hx : x = 5) : 2 * x + 1 = 11``; a claim in unbound
symbols becomes a theorem with the symbols as arguments (a universally quantified identity, e.g.
``(x + 1) ^ 2 = x ^ 2 + 2 * x + 1``). Only its proof is meaningful: an equation such as
``2 * x + 3 = 7`` is not an identity, so its negation is never tried (``negatable=False``).

Theorem names are ``prmforge_`` + 12 hex of the blake2b hash of the signature: the same statement
gets the same name in every batch, and identical statements are checked once.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal, Protocol

import sympy

from labelers.policy.base import ChatMessage
from labelers.verify.base import StepContext

LeanType = Literal["ℕ", "ℤ", "ℚ", "ℝ"]
_TYPE_ORDER: tuple[LeanType, ...] = ("ℕ", "ℤ", "ℚ", "ℝ")

# Larger exponents are not formalized: norm_num would expand a huge number.
MAX_EXPONENT = 4096
MAX_SIDE_CHARS = 2000

_RELATIONS = {"=": "=", "!=": "≠", "<": "<", ">": ">", "<=": "≤", ">=": "≥"}
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


class ClaimLike(Protocol):
    """What the templates read of a claim (``labelers.verify.claims.Claim`` has these fields)."""

    text: str
    lhs: str
    rhs: str
    relation: str
    rounded: bool


@dataclass(frozen=True)
class Formalization:
    """One Lean statement: ``theorem name binders : proposition``.

    ``negatable``: whether proving ``¬ proposition`` (under the same binders) refutes the claim;
    false for identities over free symbols, whose negation is not what the step denies.
    ``origin``: ``"template"`` or ``"llm"``.
    """

    name: str
    binders: str
    proposition: str
    negatable: bool
    origin: str
    claim_text: str

    @property
    def signature(self) -> str:
        return f"{self.binders} : {self.proposition}" if self.binders else f": {self.proposition}"

    @property
    def statement(self) -> str:
        """The theorem head, e.g. ``theorem prmforge_0123abcd4567 : (16 - 3 - 4 : ℤ) = 9``."""
        return f"theorem {self.name} {self.signature}"

    @property
    def negated_signature(self) -> str:
        negated = f"¬ ({self.proposition})"
        return f"{self.binders} : {negated}" if self.binders else f": {negated}"


@dataclass(frozen=True)
class TemplateResult:
    """A claim's formalization, or why there is none (``formalization`` is then None)."""

    formalization: Formalization | None
    reason: str | None = None
    skipped: bool = False  # the claim binds a symbol ("x = 5"): nothing to check, not a failure
    claim_index: int | None = None  # position of the claim in the step's claim list


def theorem_name(signature: str) -> str:
    """``prmforge_`` + blake2b-96 of the signature: stable across batches and runs."""
    return "prmforge_" + hashlib.blake2b(signature.encode(), digest_size=6).hexdigest()


def make_formalization(
    binders: str, proposition: str, *, negatable: bool, origin: str, claim_text: str
) -> Formalization:
    signature = f"{binders} : {proposition}" if binders else f": {proposition}"
    return Formalization(
        name=theorem_name(signature),
        binders=binders,
        proposition=proposition,
        negatable=negatable,
        origin=origin,
        claim_text=claim_text,
    )


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


# ---------------------------------------------------------------------------------------------
# Templates


def _implicitly_rounded(values: tuple[sympy.Expr, sympy.Expr], rhs_text: str, free: list[str]) -> bool:
    """A result written with d decimals that is the exact value rounded to d places
    (``10/3 = 3.33``, GSM8K style) is read as rounded, so a correctly rounded step is not refuted;
    a wrongly rounded one (``3.34``) still is."""
    if free:
        return False
    left, right = values
    match = re.fullmatch(r"\s*\(?\s*(\d*\.(\d+))\s*\)?\s*", rhs_text)
    if not match or not (left.is_Rational or left.is_number) or not right.is_Rational:
        return False
    places = len(match.group(2))
    if left == right:
        return False
    scaled = left * 10**places
    if scaled.is_Rational and scaled.q == 1:
        return False  # the exact value has no more decimals than written: no rounding happened
    try:
        return bool(abs(left - right) <= sympy.Rational(1, 2 * 10**places))
    except TypeError:  # sympy cannot decide the comparison
        return False


def _is_binding(lhs: ast.expr, rhs: ast.expr) -> bool:
    """``x = 5`` (or ``5 = x``): the step names a value; there is nothing to prove."""
    for sym_side, value_side in ((lhs, rhs), (rhs, lhs)):
        if isinstance(sym_side, ast.Name) and sym_side.id != "pi":
            order: list[str] = []
            _scan(value_side, _Features(), order)
            if not order:
                return True
    return False


def formalize_claim(
    claim: ClaimLike,
    bindings: Mapping[str, str] | None = None,
    symbolic: ClaimLike | None = None,
) -> TemplateResult:
    """The Lean statement of one claim, or the reason there is none.

    ``bindings`` (symbol -> plain value) become theorem arguments with hypotheses; ``symbolic``
    is the claim before substitution (for ``Claim.substitution`` claims), printed with the
    symbols instead of their values.
    """
    try:
        return _formalize(claim, dict(bindings or {}), symbolic)
    except _Unsupported as exc:
        return TemplateResult(None, reason=str(exc))
    except (RecursionError, ValueError, TypeError, ZeroDivisionError) as exc:
        return TemplateResult(None, reason=f"cannot read the claim: {exc}")


def _formalize(claim: ClaimLike, bindings: dict[str, str], symbolic: ClaimLike | None) -> TemplateResult:
    relation = claim.relation
    if relation not in _RELATIONS:
        raise _Unsupported(f"unsupported relation {relation!r}")
    source = symbolic if symbolic is not None else claim
    lhs = _parse_side(source.lhs)
    rhs = _parse_side(source.rhs)
    alternatives: list[tuple[ast.expr, ast.expr]] = [(lhs, rhs)]
    # A lone percentage may also be read as the bare number ("0.2 = 20%", "... = 20%").
    for side in getattr(claim, "percent_sides", ()) if symbolic is None else ():
        bare = _bare_percent(claim.lhs if side == "lhs" else claim.rhs)
        if bare is not None:
            alternatives.append((bare, rhs) if side == "lhs" else (lhs, bare))
    features = _Features()
    order: list[str] = []
    for left, right in alternatives:
        _scan(left, features, order)
        _scan(right, features, order)
    if relation == "=" and not claim.rounded and not bindings and _is_binding(lhs, rhs):
        return TemplateResult(None, reason="the claim names a value (nothing to prove)", skipped=True)
    value_nodes: dict[str, ast.expr] = {}
    for name in order:
        if name in bindings:
            value_nodes[name] = _parse_side(bindings[name])
            value_order: list[str] = []
            _scan(value_nodes[name], features, value_order)
            if value_order:
                raise _Unsupported(f"the value of {name} is not a constant")
    free = [n for n in order if n not in bindings]
    if free:
        features.real = True  # an identity in free symbols: the most general number type
    # Soundness guards: evaluate every side with the bound values substituted.
    values = {n: _to_sympy(v, {}) for n, v in value_nodes.items()}
    exact = [(_to_sympy(left, values), _to_sympy(right, values)) for left, right in alternatives]

    rounded = relation == "=" and (claim.rounded or _implicitly_rounded(exact[0], source.rhs, free))
    if rounded:
        features.rational = True
    lean_type = features.need()

    names = {n: n for n in order}
    props = []
    for left, right in alternatives:
        lhs_text = f"({_side_text(left, names)} : {lean_type})"
        rhs_text = _side_text(right, names)
        if rounded:
            tol = _rounding_tolerance(source.rhs if right is rhs else _side_source(right))
            tol_text = _fraction_term(tol)
            # rhs is the left operand of "-"/"+": no parentheses needed at any precedence.
            props.append(f"{lhs_text} ≥ {rhs_text} - {tol_text} ∧ {lhs_text} ≤ {rhs_text} + {tol_text}")
        else:
            props.append(f"{lhs_text} {_RELATIONS[relation]} {rhs_text}")
    proposition = props[0] if len(props) == 1 else " ∨ ".join(f"({p})" for p in props)

    binder_parts = []
    if order:
        binder_parts.append(f"({' '.join(order)} : {lean_type})")
    for name in order:
        if name in bindings:
            binder_parts.append(f"(h_{name} : {name} = {_side_text(value_nodes[name], names)})")
    binders = " ".join(binder_parts)
    return TemplateResult(
        make_formalization(binders, proposition, negatable=not free, origin="template", claim_text=claim.text)
    )


def _side_source(node: ast.expr) -> str:
    return ast.unparse(node)


def _bare_percent(side: str) -> ast.expr | None:
    """``(20/100)`` -> ``20``: the other reading of a side that is a lone percentage."""
    node = _parse_side(side)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        right = node.right
        if isinstance(right, ast.Constant) and right.value == 100:
            return node.left
    return None


def step_formalizations(claims: Sequence[ClaimLike]) -> list[TemplateResult]:
    """Templates for a step's claims, in claim order, one result per claim that needs a check.

    A substituted claim (``Claim.substitution`` set) is formalized from the symbolic claim with
    the same span, with the substituted values as hypotheses; that symbolic claim is then not
    formalized a second time on its own. Claims that only name a value come back ``skipped``.
    """
    substituted_spans = {
        (getattr(c, "span", None), c.relation) for c in claims if getattr(c, "substitution", ())
    }
    results: list[TemplateResult] = []
    seen: set[str] = set()
    for index, claim in enumerate(claims):
        substitution = tuple(getattr(claim, "substitution", ()) or ())
        if substitution:
            symbolic = next(
                (
                    c
                    for c in claims
                    if not getattr(c, "substitution", ())
                    and getattr(c, "span", None) == getattr(claim, "span", None)
                    and c.relation == claim.relation
                ),
                None,
            )
            result = formalize_claim(claim, dict(substitution), symbolic) if symbolic else formalize_claim(claim)
        elif (getattr(claim, "span", None), claim.relation) in substituted_spans:
            continue  # covered by its substituted form
        else:
            result = formalize_claim(claim)
        key = result.formalization.name if result.formalization else f"{claim.text}|{result.reason}"
        if key in seen:
            continue
        seen.add(key)
        results.append(replace(result, claim_index=index))
    return results


# ---------------------------------------------------------------------------------------------
# LLM formalization (Safe)

NO_CHECK = "NO_CHECK"

FORMALIZE_SYSTEM = (
    "You translate one step of a math solution into Lean 4 with Mathlib. "
    "Write one Lean 4 theorem whose statement is exactly what the step claims, with `sorry` as its proof. "
    "Make every quantity the step uses a theorem argument and give its value as a hypothesis. "
    f"If the step makes no mathematical claim that can be checked, answer {NO_CHECK}."
)

_CODE_FENCE = re.compile(r"```(?:lean4?|Lean)?\s*\n(.*?)```", re.DOTALL)
_THEOREM = re.compile(r"\b(?:theorem|lemma)\s+[^\s:({\[]+\s*(.*?)\s*:=\s*(?:by\s+)?sorry\b", re.DOTALL)
# Anything that could run code at elaboration time, open a comment or string that swallows the
# rest of the batch file, or reach another declaration of the batch.
_FORBIDDEN = re.compile(
    r"#|--|/-|-/|\"|«|»|\bby\b|\bdo\b|:=|\brun_|\bimport\b|\bopen\b|\bset_option\b|\bIO\b|\bunsafe\b"
    r"|\bsorry\b|\bdecreasing_by\b|\btermination_by\b|\bwhere\b|\bmacro\b|\belab\b|\bsyntax\b"
    r"|\bnotation\b|\binstance\b|\battribute\b|\bprmforge|\bnative_decide\b|\bimplemented_by\b|\bextern\b"
)
MAX_SIGNATURE_CHARS = 1500


def formalization_messages(step: StepContext) -> tuple[ChatMessage, ...]:
    """The Safe-style request: the problem, the steps so far, and the step to formalize."""
    previous = "\n".join(f"Step {i}: {s.strip()}" for i, s in enumerate(step.previous_steps, start=1))
    user = (
        f"Problem:\n{step.question.strip()}\n\n"
        + (f"Previous steps:\n{previous}\n\n" if previous else "")
        + f"Step to formalize:\n{step.step.strip()}\n\n"
        "Write a Lean 4 theorem with `sorry` for the claim of this step, in a ```lean block, "
        f"or answer {NO_CHECK}."
    )
    return (ChatMessage("system", FORMALIZE_SYSTEM), ChatMessage("user", user))


@dataclass(frozen=True)
class LlmFormalization:
    """The parsed reply: a formalization, "no check", or why the reply was not usable."""

    formalization: Formalization | None
    no_check: bool = False
    reason: str | None = None


def split_signature(signature: str) -> tuple[str, str] | None:
    """(binders, type) of ``(x : ℝ) (h : x = 2) : x + 1 = 3``: the first ``:`` outside brackets."""
    depth = 0
    for index, char in enumerate(signature):
        if char in "([{⦃⟨":
            depth += 1
        elif char in ")]}⦄⟩":
            depth -= 1
            if depth < 0:
                return None
        elif char == ":" and depth == 0:
            binders, body = signature[:index].strip(), signature[index + 1 :].strip()
            return (binders, body) if body else None
    return None


def parse_formalization_reply(reply: str, claim_text: str) -> LlmFormalization:
    """Read the model's reply; only a single ``theorem ... := sorry`` with a plain signature is
    accepted (Lean then has to elaborate it with exactly that one ``sorry``)."""
    fenced = _CODE_FENCE.findall(reply)
    code = fenced[0] if fenced else reply
    matches = _THEOREM.findall(code)
    if not matches:
        if NO_CHECK in reply:
            return LlmFormalization(None, no_check=True)
        return LlmFormalization(None, reason="the reply holds no `theorem ... := sorry`")
    if len(matches) > 1:
        return LlmFormalization(None, reason="the reply holds more than one theorem")
    signature = " ".join(matches[0].split())
    if len(signature) > MAX_SIGNATURE_CHARS:
        return LlmFormalization(None, reason="the statement is too long")
    bad = _FORBIDDEN.search(signature)
    if bad:
        return LlmFormalization(None, reason=f"the statement uses {bad.group(0)!r}, which is not allowed")
    parts = split_signature(signature)
    if parts is None:
        return LlmFormalization(None, reason="the statement has no `binders : type` shape")
    binders, proposition = parts
    return LlmFormalization(
        make_formalization(binders, proposition, negatable=True, origin="llm", claim_text=claim_text)
    )


def unique(items: Iterable[Formalization]) -> list[Formalization]:
    """Formalizations with distinct names, first occurrence kept."""
    out: dict[str, Formalization] = {}
    for item in items:
        out.setdefault(item.name, item)
    return list(out.values())
