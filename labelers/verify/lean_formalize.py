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

Code: :mod:`labelers.verify.lean_terms` reads a side and prints it as a Lean term; this module
holds the statements (:class:`Formalization`, the templates, the LLM path) and re-exports the
names it had before the split.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import sympy

from labelers.policy.base import ChatMessage
from labelers.verify.base import StepContext
from labelers.verify.lean_terms import (  # noqa: F401 - re-exported: lean_formalize's names before the split
    _ATOM,
    _LEAN_KEYWORDS,
    _REAL_FUNCTIONS,
    _SYMBOL,
    _TYPE_ORDER,
    MAX_EXPONENT,
    MAX_SIDE_CHARS,
    LeanType,
    _call_name,
    _closed_value,
    _Features,
    _fraction_term,
    _lean_term,
    _literal_value,
    _natural_argument,
    _parse_side,
    _rounding_tolerance,
    _scan,
    _side_text,
    _to_sympy,
    _Unsupported,
    _wrap,
    _written_decimal,
)

_RELATIONS = {"=": "=", "!=": "≠", "<": "<", ">": ">", "<=": "≤", ">=": "≥"}


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
