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

Code: :mod:`labelers.verify.exact` (step 1, and the pre-filter for claims in unknowns),
:mod:`labelers.verify.symbolic` with :mod:`labelers.verify.pool` (step 2), and
:mod:`labelers.verify.code_blocks` (step 3); this module holds :class:`ToolStepVerifier`, which runs
them over a batch of steps and decides each step's verdict, and re-exports the names other code
imports from ``labelers.verify.tool``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labelers.config import ToolConfig
from labelers.verify.base import StepContext, ToolCheck, ToolVerdict
from labelers.verify.claims import Claim, Extraction, extract, to_plain
from labelers.verify.code_blocks import (  # noqa: F401 - re-exported: labelers.verify.tool's names before the split
    _CLAIMED_NUMBER,
    _code_not_run,
    _code_tasks,
    _CodeTask,
    _compare_code,
    _printed_value,
)
from labelers.verify.exact import (  # noqa: F401 - re-exported
    _HUNDRED_PERCENT,
    _PROBES,
    MAX_EXACT_BITS,
    MAX_EXACT_EXPONENT,
    MAX_EXACT_FACTORIAL,
    NUMERIC_DIGITS,
    NUMERIC_EQUAL,
    _bare_percent,
    _bits,
    _either_reading,
    _exact_root,
    _fraction_literal,
    _hundred_percent_as_number,
    _NeedsSympy,
    _prefilter,
    _shown_decimals,
    _Undefined,
    check_claim_exact,
    compare,
    eval_exact,
    format_value,
    settle_other_readings,
    without_final_factorial,
)
from labelers.verify.pool import ClaimPool
from labelers.verify.sandbox import SandboxResult, probe_isolation, run_python

log = logging.getLogger("prmforge.tool")

MAX_EVIDENCE_CLAIMS = 12


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
