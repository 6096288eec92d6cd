"""Check a step's claims with exact arithmetic, sympy and sandboxed Python.

:class:`ToolStepVerifier` (the ``StepVerifier`` of the pipeline) judges each step:

- ``correct``: every checkable claim holds; ``incorrect``: at least one fails (the evidence names
  the first failing claim with both values); ``unverifiable``: nothing could be checked (no claim,
  only equations in unknowns, or every check ran out of time/memory), with the reasons.

How a claim is checked (docs/verification.md gives the full rules):

1. **Exact fast path, in process**: both sides are evaluated as exact rationals
   (:class:`fractions.Fraction`; decimals are exact, ``0.1`` is ``1/10``) when they use only
   numbers, ``+ - * / **`` with integer exponents, ``%``, ``!`` and square roots of perfect
   squares. Size guards (exponent at most :data:`MAX_EXACT_EXPONENT`, results at most
   :data:`MAX_EXACT_BITS` bits, factorial argument at most :data:`MAX_EXACT_FACTORIAL`) stop before
   anything large is computed; such claims go to step 2, where the limits apply.
2. **sympy in a worker process** (:func:`labelers.verify.symbolic.check_claim_sympy` in a
   :class:`labelers.verify.pool.ClaimPool` worker, sandboxed where bubblewrap starts), with a per-claim
   wall-time limit and a memory limit: numeric sides are compared at 50 significant digits
   (``|lhs - rhs| <= 1e-40 * max(1, |lhs|, |rhs|)`` counts as equal); sides with unknowns hold
   when ``simplify(lhs - rhs) == 0`` (an identity); otherwise they are an equation, which is not
   a checkable claim.
3. **Code** in a step (a ```` ```python ```` block) runs in :func:`labelers.verify.sandbox.run_python`;
   the last printed line (or the trailing expression's value) is compared with the first number
   the step states after the block.

Rounding: a claim marked ``rounded`` (``≈``, ``~``, "about", "rounded", ...) holds when
``|lhs - rhs| <= rounding_tolerance * max(|lhs|, |rhs|)`` or when the exact side rounds to the
shown decimals (``|lhs - rhs| <= 0.5 * 10**-d``, ``d`` = decimals written). Without a rounding
word, a right side written as a decimal with ``d >= 1`` places also holds when the left side has
more decimals than that and the right side is the left side rounded half-up or truncated to ``d``
places (``10/3 = 3.33``, ``2/3 = 0.67``; not ``10/3 = 3.4``), since steps write such results
without saying so.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from labelers.config import ToolConfig
from labelers.verify.base import StepContext, ToolCheck, ToolVerdict
from labelers.verify.claims import (
    Claim,
    Extraction,
    ParseError,
    extract,
    free_symbols,
    parse_plain,
    substitute,
    to_plain,
)
from labelers.verify.pool import ClaimPool
from labelers.verify.sandbox import SandboxResult, probe_isolation, run_python

log = logging.getLogger("prmforge.tool")

MAX_EXACT_EXPONENT = 10_000
MAX_EXACT_BITS = 100_000
MAX_EXACT_FACTORIAL = 2_000
MAX_EVIDENCE_CLAIMS = 12
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


# ---------------------------------------------------------------------------------------------
# Program-of-thought code blocks


_CLAIMED_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"


@dataclass(frozen=True)
class _CodeTask:
    step_index: int
    span: tuple[int, int]
    code: str
    claimed: str | None


def _code_tasks(step_index: int, text: str, extraction: Extraction) -> list[_CodeTask]:
    import re

    tasks = []
    for start, end in extraction.code_blocks:
        block = text[start:end]
        header, _, body = block[3:].partition("\n")
        language = header.strip().lower()
        if language not in ("python", "py", "python3", ""):
            continue
        if language == "" and not body:
            continue
        if language in ("output", "text"):
            continue
        code = body[: body.rfind("```")] if body.rstrip().endswith("```") else body
        after = text[end:]
        # The claimed value: an ```output block's content, else the first number after the block.
        claimed = None
        out = re.match(r"\s*```(?:output|text)?\s*\n(.*?)```", after, re.DOTALL)
        source = out.group(1) if out else after
        match = re.search(_CLAIMED_NUMBER, source)
        if match:
            claimed = match.group(0).replace(",", "")
        tasks.append(_CodeTask(step_index, (start, end), code, claimed))
    return tasks


def _printed_value(result: SandboxResult) -> str | None:
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if lines:
        return lines[-1][:200]
    return result.result


def _code_not_run(task: _CodeTask, reason: str) -> dict[str, Any]:
    return {"kind": "python", "span": list(task.span), "text": f"```python block ({len(task.code)} chars)",
            "status": "unavailable", "claimed": task.claimed, "holds": None, "reason": reason[:300]}


def _compare_code(task: _CodeTask, run: SandboxResult, tolerance: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "python",
        "span": list(task.span),
        "text": f"```python block ({len(task.code)} chars)",
        "status": run.status,
        "claimed": task.claimed,
    }
    if run.status != "ok":
        entry.update(holds=None, reason=f"code {run.status}: {run.error}"[:300])
        return entry
    printed = _printed_value(run)
    entry["printed"] = printed
    if printed is None or task.claimed is None:
        entry.update(holds=None, reason="no printed value" if printed is None else "no claimed value after the code")
        return entry
    try:
        printed_q = eval_exact(parse_plain(printed.replace(",", "").rstrip(".")))
        claimed_tree = parse_plain(task.claimed)
        claimed_q = eval_exact(claimed_tree)
    except (ParseError, _NeedsSympy, _Undefined, ValueError, ZeroDivisionError):
        entry.update(holds=None, reason="printed value is not a plain number")
        return entry
    # Floats printed by a program carry noise: equal within 1e-9 relative, or to the decimals shown.
    noise = Fraction(1, 10**9) * max(1, abs(printed_q))
    holds, method = compare(printed_q, claimed_q, "=", True, 0.0, None, _shown_decimals(claimed_tree))
    if not holds and abs(printed_q - claimed_q) <= noise:
        holds, method = True, "float noise (1e-9 relative)"
    entry.update(holds=holds, method=method, lhs_value=format_value(printed_q), rhs_value=format_value(claimed_q))
    return entry


# ---------------------------------------------------------------------------------------------
# The verifier


def _claim_entry(claim: Claim, result: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "sympy",
        "text": claim.text[:200],
        "span": list(claim.span),
        "relation": claim.relation,
        "lhs": claim.lhs[:200],
        "rhs": claim.rhs[:200],
        "origin": claim.origin,
    }
    if claim.rounded:
        entry["rounded"] = True
    if claim.substitution:
        entry["substitution"] = [list(pair) for pair in claim.substitution]
    if claim.derived:
        entry["derived"] = True
    entry.update({k: v for k, v in result.items() if v is not None or k == "holds"})
    return entry


class ToolStepVerifier:
    """Judges steps with the exact fast path, a sympy worker pool and the Python sandbox.

    Usable as a context manager; :meth:`close` shuts the worker processes down.
    """

    def __init__(self, config: ToolConfig | None = None) -> None:
        self.config = config or ToolConfig()
        self.workers = self.config.workers or os.cpu_count() or 1
        self._pool = ClaimPool(
            workers=self.workers,
            claim_timeout_s=self.config.claim_timeout_s,
            memory_mb=self.config.worker_memory_mb,
            chunk_size=self.config.chunk_size,
        )
        self._code_unavailable: str | None = None  # "" once the sandbox is known to start

    def code_unavailable_reason(self) -> str | None:
        """Why code checks are off here (None when they run): asked once, on the first code block.

        With ``code_isolation = "bubblewrap"`` a machine where bwrap cannot start gets no code
        checks (one warning), never a silent weaker sandbox.
        """
        if self._code_unavailable is None:
            if self.config.code_isolation == "bubblewrap":
                support = probe_isolation()
                self._code_unavailable = "" if support.available else f"code checks are off: {support.reason}"
                if self._code_unavailable:
                    log.warning("%s (prmforge doctor explains; tool.code_isolation can opt into a weaker mode)",
                                self._code_unavailable)
            else:
                self._code_unavailable = ""
        return self._code_unavailable or None

    def _run_code(self, code: str) -> SandboxResult:
        return run_python(
            code, self.config.sandbox_timeout_s, self.config.sandbox_memory_mb, isolation=self.config.code_isolation
        )

    def __enter__(self) -> ToolStepVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def check_text(self, step: str) -> ToolCheck:
        """Judge one step given as text (no question or earlier steps are needed)."""
        return self.check_steps([StepContext(question="", previous_steps=(), step=step)])[0]

    def check_steps(self, steps: Sequence[StepContext]) -> list[ToolCheck]:
        """One ToolCheck per step, in order. Never raises for anything a step contains: an
        exception while checking a step (a bug, or input nobody foresaw) becomes that step's
        ``error`` verdict with the message; the other steps are checked as usual."""
        tolerance = self.config.rounding_tolerance
        errors: dict[int, str] = {}
        extractions: list[Extraction | None] = []
        for index, context in enumerate(steps):
            try:
                extractions.append(extract(context.step))
            except Exception as exc:  # noqa: BLE001 - recorded as the step's error verdict
                extractions.append(None)
                errors[index] = _error_message("reading the step's claims", exc)
        entries: list[list[dict[str, Any]]] = [[] for _ in steps]
        pool_tasks: list[tuple] = []
        pool_slots: list[tuple[int, Claim]] = []
        code_tasks: list[_CodeTask] = []
        for index, (context, extraction) in enumerate(zip(steps, extractions, strict=True)):
            if extraction is None:
                continue
            try:
                step_pool: list[tuple[tuple, Claim]] = []
                other_readings = dict(zip(extraction.claims, extraction.readings, strict=True))
                for claim, (lhs_tree, rhs_tree) in zip(extraction.claims, extraction.sides, strict=True):
                    result = _prefilter(claim, lhs_tree, rhs_tree)
                    if result is None:
                        result = check_claim_exact(
                            lhs_tree, rhs_tree, claim.relation, claim.rounded, tolerance, claim.percent_sides,
                            claim.exclamation_sides,
                        )
                    if result is None:
                        task = (lhs_tree, rhs_tree, claim.relation, claim.rounded, tolerance, claim.percent_sides,
                                claim.exclamation_sides)
                        step_pool.append((task, claim))
                        continue
                    result = settle_other_readings(result, claim, other_readings.get(claim, ()), tolerance)
                    entries[index].append(_claim_entry(claim, result))
                step_code = _code_tasks(index, context.step, extraction) if self.config.run_code else []
            except Exception as exc:  # noqa: BLE001
                errors[index] = _error_message("checking a claim", exc)
                continue
            pool_tasks += [task for task, _ in step_pool]
            pool_slots += [(index, claim, other_readings.get(claim, ())) for _, claim in step_pool]
            code_tasks += step_code
        code_results: list[SandboxResult | None] = []
        code_off = self.code_unavailable_reason() if code_tasks else None
        if code_off:
            for task in code_tasks:
                entries[task.step_index].append(_code_not_run(task, code_off))
            code_tasks = []
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(code_tasks) or 1))) as executor:
            futures = [executor.submit(self._run_code, t.code) for t in code_tasks]
            try:
                pool_results = self._pool.run(pool_tasks)
            except Exception as exc:  # noqa: BLE001 - the worker pool itself failed
                message = _error_message("the sympy workers", exc)
                pool_results = [{"holds": None, "reason": message} for _ in pool_tasks]
                for index, _, _ in pool_slots:
                    errors.setdefault(index, message)
            for (index, claim, readings), result in zip(pool_slots, pool_results, strict=True):
                result = settle_other_readings(result, claim, readings, tolerance)
                entries[index].append(_claim_entry(claim, result))
            for task, future in zip(code_tasks, futures, strict=True):
                try:
                    code_results.append(future.result())
                except Exception as exc:  # noqa: BLE001
                    code_results.append(None)
                    errors.setdefault(task.step_index, _error_message("running the step's code", exc))
        for task, run in zip(code_tasks, code_results, strict=True):
            if run is None or task.step_index in errors:
                continue
            try:
                entries[task.step_index].append(_compare_code(task, run, tolerance))
            except Exception as exc:  # noqa: BLE001
                errors[task.step_index] = _error_message("comparing the code's output", exc)
        checks: list[ToolCheck] = []
        for index, (entry_list, extraction) in enumerate(zip(entries, extractions, strict=True)):
            if index not in errors and extraction is not None:
                try:
                    checks.append(_verdict(entry_list, extraction))
                    continue
                except Exception as exc:  # noqa: BLE001
                    errors[index] = _error_message("deciding the verdict", exc)
            checks.append(ToolCheck(ToolVerdict.ERROR, "none", {"error": errors[index]}))
        return checks


def _error_message(stage: str, exc: BaseException) -> str:
    """One line naming where checking failed and the exception (stored in the evidence)."""
    return f"tool verifier failed while {stage}: {type(exc).__name__}: {exc}"[:400]


def _verdict(entries: list[dict[str, Any]], extraction: Extraction) -> ToolCheck:
    entries.sort(key=lambda e: tuple(e["span"]))
    if extraction.denies:
        # "1 = sqrt(9) + 4, which is not true": the step itself says a relation fails. A false
        # "≠" is not such a relation: it is the step's own denial, and wrong ("2 ≠ 2").
        for e in entries:
            if e.get("holds") is False and e["kind"] == "sympy" and e.get("relation") != "!=":
                e["holds"] = None
                e["reason"] = "the step says a relation is false"
    for e in entries:
        if e.get("holds") is False and e.get("derived"):
            # "4a = 4(a-3) => 0 = -12": a contradiction derived from an equation in unknowns
            # shows the equation has no solution; it is not a computation the step gets wrong
            e["holds"] = None
            e["reason"] = "a contradiction derived from an equation in unknowns"
    checked = [e for e in entries if e.get("holds") is not None]
    failing = [e for e in checked if e["holds"] is False]
    unchecked = [
        {"text": e["text"], "span": e["span"], "reason": e.get("reason", "not checkable")}
        for e in entries
        if e.get("holds") is None
    ]
    unchecked += [{"text": r.text[:200], "span": list(r.span), "reason": r.reason} for r in extraction.rejected[:5]]
    evidence: dict[str, Any] = {}
    if checked:
        evidence["claims"] = checked[:MAX_EVIDENCE_CLAIMS]
        if len(checked) > MAX_EVIDENCE_CLAIMS:
            evidence["claims_not_listed"] = len(checked) - MAX_EVIDENCE_CLAIMS
    if unchecked:
        evidence["unchecked"] = unchecked[:MAX_EVIDENCE_CLAIMS]
    if failing:
        first = failing[0]
        evidence["failing"] = {
            k: first.get(k) for k in ("text", "span", "relation", "lhs", "rhs", "lhs_value", "rhs_value", "kind")
        }
        return ToolCheck(ToolVerdict.INCORRECT, first["kind"], evidence)
    if checked:
        kind = "python" if any(e["kind"] == "python" for e in checked) else "sympy"
        return ToolCheck(ToolVerdict.CORRECT, kind, evidence)
    if not entries and not extraction.rejected:
        evidence["reason"] = "no checkable claim in the step"
        kind = "none"
    else:
        reasons = sorted({u["reason"] for u in unchecked})
        evidence["reason"] = "no claim could be checked: " + "; ".join(reasons)[:400]
        ran_code = any(e["kind"] == "python" for e in entries)
        kind = "python" if ran_code else ("sympy" if entries else "none")
    return ToolCheck(ToolVerdict.UNVERIFIABLE, kind, evidence)


__all__ = ["ToolStepVerifier", "check_claim_exact", "compare", "eval_exact", "to_plain"]
