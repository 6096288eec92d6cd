"""Lean statements from claims: golden set (GSM8K + MATH-500, with corrupted steps), types that
never let Lean's truncating ``ℕ``/``/ 0``/``sqrt`` prove a wrong claim, the LLM reply parser.

The golden file is produced by tests/data/make_lean_golden.py and reviewed by hand; this test
recomputes every statement from the stored claims and compares exactly. A second check reads
each closed statement back with a small evaluator of Lean's arithmetic semantics (truncating ℕ
subtraction and division included) and asserts it has the same truth value as the claim has under
sympy: a printer bug or a wrong type choice would flip one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sympy
from sympy.parsing.sympy_parser import parse_expr, rationalize, standard_transformations

from labelers.verify.base import StepContext
from labelers.verify.claims import Claim
from labelers.verify.lean_formalize import (
    NO_CHECK,
    formalization_messages,
    formalize_claim,
    parse_formalization_reply,
    split_signature,
    step_formalizations,
    theorem_name,
)

GOLDEN = Path(__file__).parent / "data" / "lean_golden.jsonl"


def _records() -> list[dict]:
    return [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]


def _claim(d: dict) -> Claim:
    return Claim(
        text=d["text"],
        span=tuple(d["span"]),
        lhs=d["lhs"],
        rhs=d["rhs"],
        relation=d["relation"],
        rounded=d["rounded"],
        origin=d.get("origin", "text"),
        percent_sides=tuple(d.get("percent_sides", ())),
        substitution=tuple(tuple(p) for p in d.get("substitution", ())),
    )


def _expected(claims: list[Claim]) -> list[dict]:
    out = []
    for r in step_formalizations(claims):
        if r.formalization is not None:
            out.append({"claim": r.claim_index, "statement": r.formalization.statement,
                        "negatable": r.formalization.negatable})
        else:
            out.append({"claim": r.claim_index, "skipped" if r.skipped else "failed": r.reason})
    return out


def test_golden_set_size_and_mix() -> None:
    records = _records()
    steps = {(r["source"], r["corrupted"]): 0 for r in records}
    for r in records:
        steps[(r["source"], r["corrupted"])] += 1
    assert steps[("gsm8k", False)] >= 200
    assert steps[("math500", False)] >= 50
    assert steps[("gsm8k", True)] >= 50 and steps[("math500", True)] >= 15
    statements = [e["statement"] for r in records for e in r["expected"] if "statement" in e]
    assert len(statements) >= 300
    types = {t for s in statements for t in ("ℕ", "ℤ", "ℚ", "ℝ") if f": {t})" in s}
    assert types == {"ℕ", "ℤ", "ℚ", "ℝ"}


def test_golden_statements_are_recomputed_exactly() -> None:
    mismatches = []
    for r in _records():
        got = _expected([_claim(c) for c in r["claims"]])
        if got != r["expected"]:
            mismatches.append((r["source"], r["problem_index"], r["step_index"], r["corrupted"], got, r["expected"]))
    assert not mismatches, mismatches[:3]


# ---------------------------------------------------------------------------------------------
# Lean arithmetic semantics, read back from the statement text


_TOKEN = re.compile(
    r"\s*(Real\.(?:sqrt|pi|sin|cos|tan|log|exp)|Nat\.factorial|[A-Za-z_][A-Za-z0-9_]*|\d+"
    r"|≤|≥|≠|∧|∨|¬|[-+*/^()=<>:]|ℕ|ℤ|ℚ|ℝ)"
)


class _LeanEval:
    """Evaluates the propositions the templates print, with Lean's semantics per type:
    ℕ subtraction truncates at 0 and ℕ division floors; ℚ/ℝ are exact (sympy)."""

    def __init__(self, text: str, values: dict[str, sympy.Expr]) -> None:
        self.tokens = _TOKEN.findall(text)
        assert "".join(self.tokens) == re.sub(r"\s+", "", text), text
        self.pos = 0
        self.values = values
        self.type = "ℚ"

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.tokens[self.pos]
        if expected is not None:
            assert tok == expected, (tok, expected, self.tokens)
        self.pos += 1
        return tok

    def prop(self) -> bool:
        value = self.conj()
        while self.peek() == "∨":
            self.take()
            value = self.conj() or value
        return value

    def conj(self) -> bool:
        value = self.atom_prop()
        while self.peek() == "∧":
            self.take()
            value = self.atom_prop() and value
        return value

    def atom_prop(self) -> bool:
        if self.peek() == "¬":
            self.take()
            self.take("(")
            value = self.prop()
            self.take(")")
            return not value
        start = self.pos
        try:
            return self.relation()
        except (AssertionError, IndexError):
            self.pos = start
            self.take("(")
            value = self.prop()
            self.take(")")
            return value

    def relation(self) -> bool:
        left = self.expr()
        op = self.take()
        assert op in ("=", "≠", "<", ">", "≤", "≥")
        right = self.expr()
        diff = sympy.nsimplify(left - right) if not (left - right).is_Rational else left - right
        if not diff.is_Rational:
            diff = sympy.N(left - right, 60)
            zero = abs(diff) < sympy.Float("1e-45")
            sign = 0 if zero else (1 if diff > 0 else -1)
        else:
            sign = 0 if diff == 0 else (1 if diff > 0 else -1)
        return {"=": sign == 0, "≠": sign != 0, "<": sign < 0, ">": sign > 0, "≤": sign <= 0, "≥": sign >= 0}[op]

    def expr(self) -> sympy.Expr:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            if op == "+":
                value = value + right
            elif self.type == "ℕ":
                value = sympy.Max(value - right, 0)  # truncated subtraction
            else:
                value = value - right
        return value

    def term(self) -> sympy.Expr:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.unary()
            if op == "*":
                value = value * right
            elif self.type == "ℕ":
                value = sympy.Integer(0) if right == 0 else sympy.floor(value / right)
            elif self.type == "ℤ":
                raise AssertionError("the templates never divide in ℤ")
            else:
                value = sympy.Integer(0) if right == 0 else value / right  # Lean: x / 0 = 0
        return value

    def unary(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            assert self.type != "ℕ", "no negation in ℕ"
            return -self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.app()
        if self.peek() == "^":
            self.take()
            if self.peek() == "(":  # rpow: (p / q : ℝ)
                self.take("(")
                p = int(self.take())
                self.take("/")
                q = int(self.take())
                self.take(":")
                self.take("ℝ")
                self.take(")")
                return base ** sympy.Rational(p, q)
            exponent = self.power() if self.peek() != "(" else self.app()
            return base**exponent
        return base

    def app(self) -> sympy.Expr:
        tok = self.take()
        if tok == "Real.sqrt":
            arg = self.app()
            return sympy.Integer(0) if arg.is_negative else sympy.sqrt(arg)
        if tok in ("Real.sin", "Real.cos", "Real.tan", "Real.log", "Real.exp"):
            return getattr(sympy, tok.split(".")[1])(self.app())
        if tok == "Nat.factorial":
            return sympy.factorial(int(self.take()))
        if tok == "Real.pi":
            return sympy.pi
        if tok.isdigit():
            return sympy.Integer(int(tok))
        if tok == "(":
            inner = self.expr()
            if self.peek() == ":":
                self.take(":")
                self.type = self.take()
            self.take(")")
            return inner
        if tok in self.values:
            return self.values[tok]
        raise AssertionError(f"unexpected token {tok}")


def lean_truth(statement: str) -> bool | None:
    """Truth of a printed theorem under Lean semantics; None when it has free symbols."""
    head = statement.split(" ", 2)[2]
    binders, proposition = split_signature(head) if not head.startswith(":") else ("", head[1:].strip())
    values: dict[str, sympy.Expr] = {}
    for name, value in re.findall(r"\(h_(\w+) : \w+ = ([^()]*(?:\([^()]*\)[^()]*)*)\)", binders):
        ev = _LeanEval(value, {})
        ev.type = re.search(r": (ℕ|ℤ|ℚ|ℝ)\)", binders).group(1)
        values[name] = ev.expr()
    declared = re.findall(r"\(([\w ]+) : (?:ℕ|ℤ|ℚ|ℝ)\)", binders)
    names = [n for group in declared for n in group.split()]
    if any(n not in values for n in names):
        return None
    evaluator = _LeanEval(proposition, values)
    result = evaluator.prop()
    assert evaluator.pos == len(evaluator.tokens)
    return result


_T = standard_transformations + (rationalize,)


def claim_truth(claim: Claim) -> bool | None:
    """Truth of a claim under ordinary mathematics (sympy), None when symbolic."""

    def val(s: str) -> sympy.Expr:
        return parse_expr(s, transformations=_T)

    sides = [(val(claim.lhs), val(claim.rhs))]
    for side in claim.percent_sides:
        text = claim.lhs if side == "lhs" else claim.rhs
        bare = val(text) * 100
        sides.append((bare, sides[0][1]) if side == "lhs" else (sides[0][0], bare))
    if any(lhs.free_symbols or rhs.free_symbols for lhs, rhs in sides):
        return None
    outcomes = []
    decimals = re.fullmatch(r"\s*\(?\s*\d*\.(\d+)\s*\)?\s*", claim.rhs)
    for index, (left, right) in enumerate(sides):
        diff = sympy.N(left - right, 60)
        zero = abs(diff) < sympy.Float("1e-45")
        # Implicit rounding (docs/lean.md): a result with d decimals that the exact value only
        # reaches after rounding to d places.
        implicit = (
            index == 0
            and claim.relation == "="
            and decimals is not None
            and not (left * 10 ** len(decimals.group(1))).is_integer
            and bool(abs(left - right) <= sympy.Rational(1, 2 * 10 ** len(decimals.group(1))))
        )
        if implicit:
            outcomes.append(True)
            continue
        if claim.rounded and claim.relation == "=":
            decimals = re.search(r"\.(\d+)\s*\)?\s*$", claim.rhs)
            tol = sympy.Rational(1, 2 * 10 ** (len(decimals.group(1)) if decimals else 0))
            outcomes.append(bool(abs(left - right) <= tol))
            continue
        sign = 0 if zero else (1 if diff > 0 else -1)
        outcomes.append({"=": sign == 0, "!=": sign != 0, "<": sign < 0, ">": sign > 0, "<=": sign <= 0,
                         ">=": sign >= 0}[claim.relation])
    return any(outcomes)


def test_golden_statements_mean_what_the_claims_say_under_lean_semantics() -> None:
    checked = corrupted_false = 0
    for r in _records():
        claims = [_claim(c) for c in r["claims"]]
        for e in r["expected"]:
            if "statement" not in e:
                continue
            truth = lean_truth(e["statement"])
            if truth is None:
                continue
            claim = claims[e["claim"]]
            expected = claim_truth(claim)
            assert truth == expected, (e["statement"], claim)
            checked += 1
            if r["corrupted"] and not truth:
                corrupted_false += 1
    assert checked >= 280
    assert corrupted_false >= 60  # corrupted results really are false statements


# ---------------------------------------------------------------------------------------------
# Type choice and soundness guards


def _c(lhs: str, rhs: str, relation: str = "=", **kw) -> Claim:
    return Claim(text=f"{lhs} {relation} {rhs}", span=(0, 1), lhs=lhs, rhs=rhs, relation=relation, **kw)


@pytest.mark.parametrize(
    ("lhs", "rhs", "relation", "statement_tail"),
    [
        ("16 - 3 - 4", "9", "=", ": (16 - 3 - 4 : ℤ) = 9"),
        ("3 - 5", "0", "=", ": (3 - 5 : ℤ) = 0"),  # ℕ would make this true
        ("7/2", "3", "=", ": (7 / 2 : ℚ) = 3"),  # ℕ division would make this true
        ("3*3", "9", "=", ": (3 * 3 : ℕ) = 9"),
        ("80000*1.5", "120000", "=", ": (80000 * (15 / 10) : ℚ) = 120000"),
        ("2**10", "1024", "=", ": (2 ^ 10 : ℕ) = 1024"),
        ("2**-2", "0.25", "=", ": (1 / 2 ^ 2 : ℚ) = (25 / 100)"),
        ("2**(3-1)", "4", "=", ": (2 ^ 2 : ℕ) = 4"),  # exponent evaluated: no ℕ subtraction left
        ("sqrt(117)", "3*sqrt(13)", "=", ": (Real.sqrt 117 : ℝ) = 3 * Real.sqrt 13"),
        ("27**(1/3)", "3", "=", ": (27 ^ (1 / 3 : ℝ) : ℝ) = 3"),
        ("2*-3", "-6", "=", ": (2 * (-3) : ℤ) = -6"),
        ("-3 + 5", "2", "=", ": (-3 + 5 : ℤ) = 2"),
        ("(-2)**2", "4", "=", ": ((-2) ^ 2 : ℤ) = 4"),
        ("1 - (2 - 3)", "2", "=", ": (1 - (2 - 3) : ℤ) = 2"),
        ("12/4/3", "1", "=", ": (12 / 4 / 3 : ℚ) = 1"),
        ("12/(4/3)", "9", "=", ": (12 / (4 / 3) : ℚ) = 9"),
        ("factorial(5)", "120", "=", ": (Nat.factorial 5 : ℕ) = 120"),
        ("2*pi*3", "6*pi", "=", ": (2 * Real.pi * 3 : ℝ) = 6 * Real.pi"),
        ("3", "5", "<", ": (3 : ℕ) < 5"),
        ("10", "2*5", ">=", ": (10 : ℕ) ≥ 2 * 5"),
        ("7", "8", "!=", ": (7 : ℕ) ≠ 8"),
        ("0.1 + 0.2", "0.3", "=", ": ((1 / 10) + (2 / 10) : ℚ) = (3 / 10)"),
    ],
)
def test_template_types_and_printing(lhs: str, rhs: str, relation: str, statement_tail: str) -> None:
    result = formalize_claim(_c(lhs, rhs, relation))
    assert result.formalization is not None, result.reason
    assert result.formalization.statement.endswith(statement_tail)
    assert result.formalization.statement == f"theorem {result.formalization.name} {statement_tail}"


@pytest.mark.parametrize(
    ("lhs", "rhs", "reason"),
    [
        ("5/0", "0", "division by zero"),
        ("5/(2-2)", "0", "division by zero"),
        ("sqrt(-4)", "0", "square root of a negative number"),
        ("sqrt(1-5)", "0", "square root of a negative number"),
        ("0**-1", "0", "zero to a negative power"),
        ("2**100000", "0", "exponent too large"),
        ("2**x", "8", "exponent is not a rational constant"),
        ("E", "2.718", "unsupported constant E"),
        ("gcd(4, 6)", "2", "unsupported function gcd"),
        ("__import__('os')", "0", "unsupported"),
    ],
)
def test_claims_lean_would_misread_are_not_formalized(lhs: str, rhs: str, reason: str) -> None:
    result = formalize_claim(_c(lhs, rhs))
    assert result.formalization is None
    assert reason in (result.reason or "")


def test_rounded_claim_uses_half_a_unit_of_the_last_written_place() -> None:
    f = formalize_claim(_c("10/3", "3.33", rounded=True)).formalization
    assert f is not None
    assert f.proposition == "(10 / 3 : ℚ) ≥ (333 / 100) - (1 / 200) ∧ (10 / 3 : ℚ) ≤ (333 / 100) + (1 / 200)"
    g = formalize_claim(_c("100/7", "14", rounded=True)).formalization
    assert g is not None and g.proposition.endswith("≤ 14 + (1 / 2)")
    assert lean_truth(f.statement) is True and lean_truth(g.statement) is True
    h = formalize_claim(_c("10/3", "3.4", rounded=True)).formalization
    assert h is not None and lean_truth(h.statement) is False


def test_percentage_side_may_be_read_as_the_bare_number() -> None:
    f = formalize_claim(_c("20/100*100", "(20/100)", percent_sides=("rhs",))).formalization
    assert f is not None
    assert f.proposition == "((20 / 100 * 100 : ℚ) = 20 / 100) ∨ ((20 / 100 * 100 : ℚ) = 20)"
    assert lean_truth(f.statement) is True


def test_substituted_claim_binds_symbols_as_theorem_arguments() -> None:
    symbolic = Claim(text="2x + 1 = 11", span=(10, 21), lhs="2*x + 1", rhs="11", relation="=")
    substituted = Claim(
        text="2x + 1 = 11", span=(10, 21), lhs="2*(5) + 1", rhs="11", relation="=", origin="substitution",
        substitution=(("x", "5"),)
    )
    binding = Claim(text="x = 5", span=(0, 5), lhs="x", rhs="5", relation="=")
    results = step_formalizations([binding, symbolic, substituted])
    assert [r.skipped for r in results] == [True, False]
    f = results[1].formalization
    assert f is not None and f.negatable
    assert f.statement == f"theorem {f.name} (x : ℕ) (h_x : x = 5) : (2 * x + 1 : ℕ) = 11"
    negative = formalize_claim(substituted, {"x": "-3"}, symbolic).formalization
    assert negative is not None and "(x : ℤ) (h_x : x = -3)" in negative.statement


def test_free_symbols_give_a_non_negatable_identity_over_reals() -> None:
    f = formalize_claim(_c("(x + 1)**2", "x**2 + 2*x + 1")).formalization
    assert f is not None and not f.negatable
    assert f.statement.endswith("(x : ℝ) : ((x + 1) ^ 2 : ℝ) = x ^ 2 + 2 * x + 1")
    assert f.negated_signature == "(x : ℝ) : ¬ (((x + 1) ^ 2 : ℝ) = x ^ 2 + 2 * x + 1)"


def test_names_are_hashes_of_the_signature() -> None:
    a = formalize_claim(_c("3*3", "9")).formalization
    b = formalize_claim(_c("3 * 3", "9")).formalization
    c = formalize_claim(_c("3*3", "10")).formalization
    assert a is not None and b is not None and c is not None
    assert a.name == b.name == theorem_name(a.signature)
    assert a.name != c.name and re.fullmatch(r"prmforge_[0-9a-f]{12}", a.name)


# ---------------------------------------------------------------------------------------------
# LLM path


def test_formalization_prompt_holds_problem_previous_steps_and_step() -> None:
    messages = formalization_messages(StepContext("What is 2+3?", ("Add them.",), "2 + 3 = 5"))
    user = messages[-1].content
    assert "What is 2+3?" in user and "Step 1: Add them." in user and "2 + 3 = 5" in user
    assert "sorry" in user and NO_CHECK in user


def test_reply_with_one_sorry_theorem_is_accepted_and_renamed() -> None:
    reply = "Here it is:\n```lean\ntheorem step3 (x : ℝ) (h₀ : x = 2) :\n    x + 1 = 3 := by\n  sorry\n```"
    parsed = parse_formalization_reply(reply, "x + 1 = 3")
    f = parsed.formalization
    assert f is not None and f.origin == "llm" and f.negatable
    assert f.binders == "(x : ℝ) (h₀ : x = 2)" and f.proposition == "x + 1 = 3"
    assert f.name.startswith("prmforge_") and "step3" not in f.statement


def test_no_check_reply() -> None:
    parsed = parse_formalization_reply("NO_CHECK", "Let us think.")
    assert parsed.no_check and parsed.formalization is None


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("theorem a : 1 = 1 := by sorry\ntheorem b : 2 = 2 := by sorry", "more than one"),
        ("theorem a : (by exact 1) = 1 := by sorry", "'by'"),
        ("theorem a : 1 = 1 /- := by sorry", "'/-'"),
        ('theorem a : "x" = "x" := sorry', "'\"'"),
        ("theorem a : prmforge_0123 = 1 := sorry", "'prmforge'"),
        ("theorem a (x : ℕ) := sorry", "shape"),
        ("I think the answer is 5.", "no `theorem"),
    ],
)
def test_unsafe_or_malformed_replies_are_rejected(reply: str, reason: str) -> None:
    parsed = parse_formalization_reply(reply, "claim")
    assert parsed.formalization is None and not parsed.no_check
    assert reason in (parsed.reason or "")


def test_split_signature_finds_the_top_level_colon() -> None:
    assert split_signature("(x : ℝ) (h : x = 2) : x + 1 = 3") == ("(x : ℝ) (h : x = 2)", "x + 1 = 3")
    assert split_signature(": (2 : ℚ) = 2") == ("", "(2 : ℚ) = 2")
    assert split_signature("(x : ℝ)") is None


def test_a_correctly_rounded_decimal_result_is_read_as_rounded() -> None:
    rounded = formalize_claim(_c("10/3", "3.33")).formalization
    assert rounded is not None and " ∧ " in rounded.proposition and lean_truth(rounded.statement) is True
    wrong = formalize_claim(_c("10/3", "3.34")).formalization
    assert (wrong is not None and wrong.proposition == "(10 / 3 : ℚ) = (334 / 100)"
            and lean_truth(wrong.statement) is False)
    exact = formalize_claim(_c("1/4", "0.25")).formalization
    assert exact is not None and exact.proposition == "(1 / 4 : ℚ) = (25 / 100)"
    integer = formalize_claim(_c("10/3", "3")).formalization  # no decimals written: no rounding read
    assert integer is not None and integer.proposition == "(10 / 3 : ℚ) = 3"
