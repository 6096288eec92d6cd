"""Claim checks with sympy, and the worker loop that runs them (in a sandbox when it starts).

:func:`check_claim_sympy` is step 2 of the rules in :mod:`labelers.verify.tool`: it runs in a
worker process of :class:`labelers.verify.pool.ClaimPool`, never in the build process. Its input
is a parsed expression tree (tuples built by :mod:`labelers.verify.claims` from a token
whitelist: numbers, names, a fixed set of functions and operators), not source text; nothing is
``eval``-ed, ``sympify``-ed or parsed by sympy. :func:`serve` is the worker's main loop: JSON
lines in on stdin, JSON lines out on stdout.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from typing import Any

from labelers.verify.claims import free_symbols
from labelers.verify.exact import (
    NUMERIC_DIGITS,
    NUMERIC_EQUAL,
    _either_reading,
    _shown_decimals,
    check_claim_exact,
    compare,
    format_value,
)


def _to_sympy(node: tuple) -> Any:
    import sympy

    kind = node[0]
    if kind == "num":
        return sympy.Rational(node[1])
    if kind == "sym":
        return sympy.Symbol(node[1])
    if kind == "pi":
        return sympy.pi
    if kind == "neg":
        return -_to_sympy(node[1])
    if kind == "pct":
        return _to_sympy(node[1]) / 100
    if kind == "fact":
        return sympy.factorial(_to_sympy(node[1]))
    if kind in ("mod", "residue"):
        return sympy.Mod(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "binom":
        return sympy.binomial(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "deg":
        return _to_sympy(node[1]) * sympy.pi / 180
    if kind == "call":
        return sympy.Function(node[1])(_to_sympy(node[2]))
    if kind == "fn":
        fn = {
            "sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
            "log": sympy.log, "ln": sympy.log, "exp": sympy.exp,
        }[node[1]]
        return fn(_to_sympy(node[2]))
    a, b = _to_sympy(node[1]), _to_sympy(node[2])
    if kind == "add":
        return a + b
    if kind == "sub":
        return a - b
    if kind == "mul":
        return a * b
    if kind == "div":
        return a / b
    if kind == "pow":
        return a**b
    raise ValueError(f"unknown node {kind}")


def check_claim_sympy(
    lhs_tree: tuple,
    rhs_tree: tuple,
    relation: str,
    rounded: bool,
    tolerance: float,
    percent_sides: tuple[str, ...],
    exclamation_sides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check a claim with sympy (runs in a worker process; see the module doc for the rules)."""
    import sympy

    if exclamation_sides:
        return _either_reading(
            check_claim_sympy, lhs_tree, rhs_tree, (relation, rounded, tolerance, percent_sides), exclamation_sides
        )

    fast = check_claim_exact(lhs_tree, rhs_tree, relation, rounded, tolerance, percent_sides)
    if fast is not None and not (fast.get("holds") is None and "too large" in str(fast.get("reason"))):
        return fast
    lhs, rhs = _to_sympy(lhs_tree), _to_sympy(rhs_tree)
    unknowns = sorted(free_symbols(lhs_tree) | free_symbols(rhs_tree))
    if unknowns:
        if relation != "=":
            return {"holds": None, "reason": f"inequality in unknowns {', '.join(unknowns)}"}
        return _identity(lhs, rhs, unknowns)
    lhs_num = lhs.evalf(NUMERIC_DIGITS)
    rhs_num = rhs.evalf(NUMERIC_DIGITS)
    if not (lhs_num.is_real and rhs_num.is_real and lhs_num.is_finite and rhs_num.is_finite):
        if relation == "=" and sympy.simplify(lhs - rhs) == 0:
            return {"holds": True, "method": "simplify", "lhs_value": str(lhs)[:80], "rhs_value": str(rhs)[:80]}
        return {
            "holds": None, "reason": "not a finite real number",
            "lhs_value": str(lhs_num)[:60], "rhs_value": str(rhs_num)[:60],
        }
    lhs_q = Fraction(str(sympy.Float(lhs_num, NUMERIC_DIGITS)))
    rhs_q = Fraction(str(sympy.Float(rhs_num, NUMERIC_DIGITS)))
    equal = abs(lhs_q - rhs_q) <= NUMERIC_EQUAL * max(1, abs(lhs_q), abs(rhs_q))
    holds, method = compare(
        lhs_q,
        rhs_q,
        relation,
        rounded,
        tolerance,
        _shown_decimals(lhs_tree),
        _shown_decimals(rhs_tree),
        percent_sides,
        exactly_equal=equal,
    )
    if method == "exact":
        method = f"numeric ({NUMERIC_DIGITS} digits)"
    return {
        "holds": holds,
        "method": method,
        "lhs_value": f"{float(lhs_q):.10g}" if lhs_q.denominator != 1 else format_value(lhs_q),
        "rhs_value": f"{float(rhs_q):.10g}" if rhs_q.denominator != 1 else format_value(rhs_q),
    }


def _identity(lhs: Any, rhs: Any, unknowns: list[str]) -> dict[str, Any]:
    """Whether ``lhs = rhs`` holds for all values of the unknowns.

    Cheapest first: if ``lhs - rhs`` is non-zero (beyond 1e-20) at a probe point it is an
    equation, not an identity; if it is zero at all three probes, ``expand`` and then
    ``simplify`` are asked to prove ``lhs - rhs == 0``; when they cannot, agreement at three
    points to 30 digits is taken as an identity (method says so).
    """
    import sympy

    difference = lhs - rhs
    if difference == 0:
        return {"holds": True, "method": "identity (same expression)"}
    symbols = sorted(difference.free_symbols, key=str)
    probes = (
        (Fraction(7, 3), Fraction(11, 5), Fraction(13, 7), Fraction(17, 4), Fraction(19, 9)),
        (Fraction(-5, 2), Fraction(37, 11), Fraction(3, 13), Fraction(43, 3), Fraction(-7, 47)),
        (Fraction(5, 17), Fraction(-9, 4), Fraction(29, 8), Fraction(-31, 10), Fraction(2, 3)),
    )
    for probe in probes:
        point = {sym: sympy.Rational(probe[k % len(probe)]) for k, sym in enumerate(symbols)}
        value = difference.subs(point).evalf(30)
        if not value.is_number:
            return {"holds": None, "reason": f"an equation in {', '.join(unknowns)}, not an identity"}
        if value.is_finite and abs(value) > sympy.Float("1e-20"):
            return {"holds": None, "reason": f"an equation in {', '.join(unknowns)}, not an identity"}
    if sympy.expand(difference) == 0:
        return {"holds": True, "method": "identity (expand)"}
    if sympy.simplify(difference) == 0:
        return {"holds": True, "method": "identity (simplify)"}
    return {"holds": True, "method": "identity (numeric, 3 points, 30 digits)"}


def _as_tuples(value: Any) -> Any:
    """JSON arrays back to the tuples the trees are made of."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def serve(memory_mb: int) -> None:
    """Worker loop: a line ``[[task_id, task], ...]`` in, one line ``[task_id, result]`` out per
    claim, in order; an empty line or end of input stops it. ``RLIMIT_AS`` is set after sympy is
    imported: ``memory_mb`` of headroom over what the interpreter and sympy already map."""
    import resource

    check_claim_sympy(("num", "1"), ("num", "1"), "=", False, 0.0, ())  # imports sympy, warms caches
    try:
        with open("/proc/self/status") as handle:
            vm_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        vm_kb = 0
    limit = (vm_kb * 1024) + memory_mb * 1024 * 1024
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    out = sys.stdout
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            return
        for task_id, task in json.loads(line):
            try:
                result = check_claim_sympy(*_as_tuples(task))
            except MemoryError:
                result = {"holds": None, "reason": "memory limit reached while evaluating"}
            except RecursionError:
                result = {"holds": None, "reason": "expression too deep to evaluate"}
            except Exception as exc:  # noqa: BLE001 - sympy raises many types on odd input; each is a reason
                result = {"holds": None, "reason": f"sympy failed: {type(exc).__name__}: {exc}"[:300]}
            out.write(json.dumps([task_id, result], default=str) + "\n")
            out.flush()
