"""The exact fast path of the tool verifier: claims evaluated as exact rationals, in process.

Step 1 of the rules in :mod:`labelers.verify.tool` (docs/verification.md gives them in full):
:func:`eval_exact` evaluates a parsed side as a :class:`fractions.Fraction` within the size guards
(:data:`MAX_EXACT_EXPONENT`, :data:`MAX_EXACT_BITS`, :data:`MAX_EXACT_FACTORIAL`) or raises for
what needs sympy; :func:`compare` decides a relation (rounding, shown decimals, percentages);
:func:`check_claim_exact` checks one claim, :func:`settle_other_readings` a claim's other readings,
and ``_prefilter`` settles claims in unknowns without sympy. :mod:`labelers.verify.symbolic` (the
sympy workers) shares the comparison (``NUMERIC_DIGITS``, ``NUMERIC_EQUAL``, :func:`compare`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from labelers.verify.claims import Claim, free_symbols, substitute

MAX_EXACT_EXPONENT = 10_000
MAX_EXACT_BITS = 100_000
MAX_EXACT_FACTORIAL = 2_000
NUMERIC_DIGITS = 50
NUMERIC_EQUAL = Fraction(1, 10**40)


class _NeedsSympy(Exception):
    """The exact fast path cannot settle this side (irrational, symbolic, or too large)."""


class _Undefined(Exception):
    """The expression has no value (division by zero, factorial of a negative number)."""


def _bits(q: Fraction) -> int:
    return q.numerator.bit_length() + q.denominator.bit_length()


def eval_exact(node: tuple) -> Fraction:
    """The exact rational value of a parsed side, or raise _NeedsSympy / _Undefined.

    Never computes a number over MAX_EXACT_BITS bits: powers and factorials are size-checked
    before they are evaluated.
    """
    kind = node[0]
    if kind == "num":
        return Fraction(node[1])
    if kind == "neg":
        return -eval_exact(node[1])
    if kind == "pct":
        return eval_exact(node[1]) / 100
    if kind in ("add", "sub", "mul", "div"):
        a = eval_exact(node[1])
        b = eval_exact(node[2])
        if kind == "add":
            out = a + b
        elif kind == "sub":
            out = a - b
        elif kind == "mul":
            out = a * b
        else:
            if b == 0:
                raise _Undefined("division by zero")
            out = a / b
        if _bits(out) > MAX_EXACT_BITS:
            raise _NeedsSympy("result too large for the exact path")
        return out
    if kind == "pow":
        base = eval_exact(node[1])
        exponent = eval_exact(node[2])
        if exponent.denominator != 1:
            root = _exact_root(base, exponent)
            if root is None:
                raise _NeedsSympy("non-integer power")
            return root
        e = exponent.numerator
        if abs(e) > MAX_EXACT_EXPONENT or max(1, _bits(base)) * abs(e) > MAX_EXACT_BITS:
            raise _NeedsSympy("power too large for the exact path")
        if base == 0 and e < 0:
            raise _Undefined("division by zero")
        return base**e
    if kind == "fact":
        value = eval_exact(node[1])
        if value.denominator != 1:
            raise _NeedsSympy("factorial of a non-integer")
        if value < 0:
            raise _Undefined("factorial of a negative number")
        if value > MAX_EXACT_FACTORIAL:
            raise _NeedsSympy("factorial too large for the exact path")
        return Fraction(math.factorial(value.numerator))
    if kind == "mod":
        value, modulus = eval_exact(node[1]), eval_exact(node[2])
        if modulus == 0:
            raise _Undefined("modulo zero")
        return value % modulus  # Python's floor rule: -7 mod 3 = 2, as in number theory
    if kind == "residue":
        # a congruence's side: the residue modulo an integer n; a fraction a/b with b coprime
        # to n is a * b^-1 (mod n), so 17^-1 ≡ 44 (mod 83) holds
        value, modulus = eval_exact(node[1]), eval_exact(node[2])
        if modulus.denominator != 1 or modulus == 0:
            raise _Undefined("a congruence modulo something other than a non-zero integer")
        n = abs(modulus.numerator)
        if math.gcd(value.denominator, n) != 1:
            raise _Undefined("a fraction whose denominator is not invertible modulo n")
        return Fraction(value.numerator * pow(value.denominator, -1, n) % n)
    if kind == "binom":
        n, k = eval_exact(node[1]), eval_exact(node[2])
        if n.denominator != 1 or k.denominator != 1 or n < 0:
            raise _NeedsSympy("binomial of a non-natural number")
        if k < 0 or k > n:
            return Fraction(0)
        smaller = min(k, n - k)
        if smaller * max(1, n.numerator.bit_length()) > MAX_EXACT_BITS:
            raise _NeedsSympy("binomial too large for the exact path")
        return Fraction(math.comb(n.numerator, k.numerator))
    if kind == "fn" and node[1] == "sqrt":
        value = eval_exact(node[2])
        root = _exact_root(value, Fraction(1, 2))
        if root is None:
            raise _NeedsSympy("irrational square root")
        return root
    raise _NeedsSympy(f"needs sympy ({kind})")


def _exact_root(base: Fraction, exponent: Fraction) -> Fraction | None:
    """base**exponent when it is rational and small (perfect powers), else None."""
    if base < 0 or exponent.denominator > 12 or abs(exponent.numerator) > 100 or _bits(base) > 4_000:
        return None
    n = exponent.denominator

    def iroot(k: int) -> int | None:
        r = round(k ** (1.0 / n)) if k < 2**1000 else None
        if r is None:
            return None
        for cand in (r - 1, r, r + 1):
            if cand >= 0 and cand**n == k:
                return cand
        return None

    num, den = iroot(base.numerator), iroot(base.denominator)
    if num is None or den is None:
        return None
    root = Fraction(num, den)
    if root == 0 and exponent < 0:
        return None
    return root**exponent.numerator


def _shown_decimals(node: tuple) -> int | None:
    """Decimals written in a literal side (``3.33`` -> 2, ``12`` -> 0); None if not a literal."""
    if node[0] == "neg":
        return _shown_decimals(node[1])
    if node[0] == "num":
        literal = node[1]
        return len(literal.split(".", 1)[1]) if "." in literal else 0
    if node[0] == "pct":
        inner = _shown_decimals(node[1])
        return None if inner is None else inner + 2  # 33.3% is 0.333
    return None


_HUNDRED_PERCENT = ("pct", ("num", "100"))


def _hundred_percent_as_number(node: tuple) -> tuple:
    """``x * 100%`` read as ``x * 100`` ("multiply by 100% to get a percentage")."""
    if node == _HUNDRED_PERCENT:
        return ("num", "100")
    if node[0] in ("num", "sym", "pi"):
        return node
    if node[0] in ("fn", "call"):
        return (node[0], node[1], _hundred_percent_as_number(node[2]))
    return (node[0],) + tuple(_hundred_percent_as_number(c) for c in node[1:])


def _bare_percent(node: tuple) -> tuple:
    return node[1] if node[0] == "pct" else node


def format_value(q: Fraction | float | None) -> str | None:
    """A short, readable value: integers, fractions with a decimal, or an order of magnitude.

    Never converts a huge integer to text (CPython refuses more than 4300 digits) and never
    overflows a float.
    """
    if q is None:
        return None
    if isinstance(q, float):
        return f"{q:.10g}"
    if q.denominator == 1 and q.numerator.bit_length() <= 96:
        return str(q.numerator)
    if q.denominator != 1 and _bits(q) < 128:
        return f"{q.numerator}/{q.denominator} (≈{float(q):.10g})"
    try:
        return f"≈{float(q):.10g}"
    except OverflowError:
        digits = int((q.numerator.bit_length() - q.denominator.bit_length()) * 0.30103)
        return f"{'-' if q < 0 else ''}about 10^{digits}"


def compare(
    lhs_value: Fraction,
    rhs_value: Fraction,
    relation: str,
    rounded: bool,
    tolerance: float,
    lhs_decimals: int | None,
    rhs_decimals: int | None,
    percent_sides: tuple[str, ...] = (),
    exactly_equal: bool | None = None,
) -> tuple[bool, str]:
    """Whether ``lhs relation rhs`` holds, and by which rule ("exact", "rounded", ...).

    ``exactly_equal`` overrides ``lhs_value == rhs_value`` (the sympy path decides equality at
    50 digits and passes truncated values here).
    """
    equal = (lhs_value == rhs_value) if exactly_equal is None else exactly_equal
    if relation == "<":
        return (lhs_value < rhs_value and not equal), "exact"
    if relation == ">":
        return (lhs_value > rhs_value and not equal), "exact"
    if relation == "<=":
        return (lhs_value <= rhs_value or equal), "exact"
    if relation == ">=":
        return (lhs_value >= rhs_value or equal), "exact"
    if relation == "!=":
        return (not equal), "exact"
    if equal:
        return True, "exact"
    # A lone percentage may also stand for the bare number ("20/100*100 = 20%").
    if "rhs" in percent_sides and lhs_value == rhs_value * 100:
        return True, "percent as number"
    if "lhs" in percent_sides and lhs_value * 100 == rhs_value:
        return True, "percent as number"
    diff = abs(lhs_value - rhs_value)
    if rounded:
        scale = max(abs(lhs_value), abs(rhs_value))
        if diff <= Fraction(tolerance) * scale:
            return True, f"rounded (relative tolerance {tolerance:g})"
        for shown in (rhs_decimals, lhs_decimals):
            if shown is not None and diff <= Fraction(1, 2 * 10**shown) * Fraction(1_000_001, 1_000_000):
                return True, f"rounded to {shown} decimals"
    if rhs_decimals is not None and rhs_decimals >= 1:
        step = Fraction(1, 10**rhs_decimals)
        scaled = lhs_value / step
        if scaled.denominator != 1:
            # the shown decimal is the left side rounded half-up or truncated to those places
            truncated = Fraction(math.trunc(scaled)) * step
            rounded_half_up = Fraction(math.floor(scaled + Fraction(1, 2))) * step
            sign = -1 if scaled < 0 else 1
            rounded_away = sign * Fraction(math.floor(abs(scaled) + Fraction(1, 2))) * step
            if rhs_value in (truncated, rounded_half_up, rounded_away):
                return True, f"decimal shown to {rhs_decimals} places"
    return False, "exact"


def without_final_factorial(node: tuple) -> tuple:
    """The side read with its last ``!`` as an exclamation mark: ``120 = 5!`` -> ``5``.

    The ``!`` that ended the side is the factorial on the tree's right spine (it was the last
    token, so everything above it is a binary operator or a negation with it on the right)."""
    kind = node[0]
    if kind == "fact":
        return node[1]
    if kind in ("add", "sub", "mul", "div", "pow", "mod", "residue"):
        return (kind, node[1], without_final_factorial(node[2]))
    if kind == "neg":
        return ("neg", without_final_factorial(node[1]))
    return node


def _either_reading(
    check: Any, lhs_tree: tuple, rhs_tree: tuple, args: tuple, exclamation_sides: tuple[str, ...]
) -> Any:
    """``check`` on the factorial reading; when that fails, also on the exclamation reading of
    ``exclamation_sides`` (``120 = 5!`` and ``2 + 3 = 5!`` both hold; ``120 = 6!`` fails both)."""
    result = check(lhs_tree, rhs_tree, *args)
    if not exclamation_sides or result is None or result.get("holds") is not False:
        return result
    lhs_alt = without_final_factorial(lhs_tree) if "lhs" in exclamation_sides else lhs_tree
    rhs_alt = without_final_factorial(rhs_tree) if "rhs" in exclamation_sides else rhs_tree
    alternative = check(lhs_alt, rhs_alt, *args)
    if alternative is not None and alternative.get("holds") is True:
        alternative["method"] = f"'!' read as an exclamation mark; {alternative.get('method', 'exact')}"
        return alternative
    return result


def settle_other_readings(
    result: dict[str, Any],
    claim: Claim,
    readings: Sequence[tuple[str, tuple | None, tuple | None]],
    tolerance: float,
) -> dict[str, Any]:
    """A claim false as read first but with other readings (``Extraction.readings``: a mixed
    number that may be a product, brackets that may take the integer part, a bare log that may be
    base 10, a quotient with a remainder, a congruence) counts false only when every other reading
    is settled and false: the first reading that holds makes it hold; one that cannot be settled
    on the exact path (or cannot be written out) leaves it unchecked."""
    if result.get("holds") is not False or not readings:
        return result
    for name, lhs_tree, rhs_tree in readings:
        if lhs_tree is None or rhs_tree is None:
            return {"holds": None, "reason": f"false as written, but may hold with {name} (not checked)"}
        other = check_claim_exact(
            lhs_tree, rhs_tree, claim.relation, claim.rounded, tolerance, claim.percent_sides, claim.exclamation_sides
        )
        if other is None or other.get("holds") is None:
            return {"holds": None, "reason": f"false as written; {name} could not be checked"}
        if other["holds"] is True:
            other["method"] = f"{name}; {other.get('method', 'exact')}"
            return other
    return result


def check_claim_exact(
    lhs_tree: tuple,
    rhs_tree: tuple,
    relation: str,
    rounded: bool,
    tolerance: float,
    percent_sides: tuple[str, ...],
    exclamation_sides: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """The fast path: a result dict, or None when the claim needs the sympy workers."""
    if exclamation_sides:
        return _either_reading(
            check_claim_exact, lhs_tree, rhs_tree, (relation, rounded, tolerance, percent_sides), exclamation_sides
        )
    try:
        lhs_value = eval_exact(lhs_tree)
        rhs_value = eval_exact(rhs_tree)
    except _NeedsSympy:
        return None
    except _Undefined as exc:
        return {"holds": None, "reason": f"undefined: {exc}"}
    holds, method = compare(
        lhs_value,
        rhs_value,
        relation,
        rounded,
        tolerance,
        _shown_decimals(lhs_tree),
        _shown_decimals(rhs_tree),
        percent_sides,
    )
    if not holds and relation == "=":
        # "32 / 96 * 100% = 33.333" (or "= 33.333%"): 100% used to turn a ratio into a percentage.
        lhs_alt = _hundred_percent_as_number(lhs_tree)
        rhs_alt = _hundred_percent_as_number(rhs_tree)
        if (lhs_alt, rhs_alt) != (lhs_tree, rhs_tree):
            if "lhs" in percent_sides:
                lhs_alt = _bare_percent(lhs_alt)
            if "rhs" in percent_sides:
                rhs_alt = _bare_percent(rhs_alt)
            try:
                alt = compare(
                    eval_exact(lhs_alt),
                    eval_exact(rhs_alt),
                    relation,
                    rounded,
                    tolerance,
                    _shown_decimals(lhs_alt),
                    _shown_decimals(rhs_alt),
                )
            except (_NeedsSympy, _Undefined):
                alt = (False, method)
            if alt[0]:
                holds, method = True, f"100% read as 100; {alt[1]}"
    return {
        "holds": holds,
        "method": method,
        "lhs_value": format_value(lhs_value),
        "rhs_value": format_value(rhs_value),
    }


# Fixed probe points for the cheap identity test (deterministic; unlikely roots of a step's
# polynomial). Symbol number k gets _PROBES[p][k % len] at probe p.
_PROBES = (
    tuple(Fraction(n, d) for n, d in ((7, 3), (11, 5), (13, 7), (17, 4), (19, 9), (23, 6), (29, 8), (31, 10))),
    tuple(Fraction(n, d) for n, d in ((-5, 2), (37, 11), (-41, 13), (43, 3), (-47, 7), (53, 5), (-59, 9), (61, 4))),
)


def _prefilter(claim: Claim, lhs_tree: tuple, rhs_tree: tuple) -> dict[str, Any] | None:
    """Claims with unknowns settled without sympy: definitions, relations in unknowns, and
    equations that differ at an exact rational probe point (so cannot be identities).

    A claim ``lhs = rhs`` in unknowns is an identity only if ``lhs - rhs`` vanishes everywhere;
    if it is non-zero at one point it is an equation (a condition on the unknowns), not a claim
    the step makes about numbers. Claims equal at both probe points go to sympy's simplify.
    """
    names = free_symbols(lhs_tree) | free_symbols(rhs_tree)
    if not names:
        return None
    if lhs_tree == rhs_tree and claim.relation in ("=", "<=", ">="):
        return {"holds": True, "method": "same expression on both sides"}
    if lhs_tree[0] == "sym" or rhs_tree[0] == "sym":
        sym = lhs_tree[1] if lhs_tree[0] == "sym" else rhs_tree[1]
        return {"holds": None, "reason": f"defines {sym}"}
    listed = ", ".join(sorted(names))
    if claim.relation != "=":
        return {"holds": None, "reason": f"inequality in unknowns {listed}"}
    if any(name.endswith("()") for name in names):
        return {"holds": None, "reason": f"an equation in {listed}, not an identity"}
    ordered = sorted(names)
    for probe in _PROBES:
        point = {name: ("num", _fraction_literal(probe[k % len(probe)])) for k, name in enumerate(ordered)}
        try:
            left = eval_exact(substitute(lhs_tree, point))
            right = eval_exact(substitute(rhs_tree, point))
        except (_NeedsSympy, _Undefined):
            return None
        if left != right:
            return {"holds": None, "reason": f"an equation in {listed}, not an identity"}
    return None


def _fraction_literal(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"
