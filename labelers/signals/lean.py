"""Lean 4 as a step signal: formalize a step and prove it or its negation (labelers/verify/lean.py).
Needs a Lean 4 toolchain; no policy, no gold answer. Runs on the chosen paths when ``lean.enabled``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from data_schemas.records import StepRow
from labelers.config import BuildConfig
from labelers.signals.base import SignalInputs, SignalNeeds, SignalOutput, SignalPath, check_paths
from labelers.verify.base import LeanCheck, LeanState

LEAN_DISABLED = LeanCheck(LeanState.DISABLED)


def lean_line(lean: LeanCheck | None) -> str:
    if lean is None or lean.state == LeanState.DISABLED:
        return "Lean 4: not run (disabled)."
    if lean.state == LeanState.PROVED:
        return f"Lean 4: proved{' by ' + lean.tactic if lean.tactic else ''}."
    if lean.state == LeanState.DISPROVED:
        return f"Lean 4: the negation was proved{' by ' + lean.tactic if lean.tactic else ''}."
    return f"Lean 4: {lean.state.value.replace('_', ' ')}."


class LeanSignal:
    """State ``disproved`` = bad step, ``proved`` = good, anything else = none."""

    name = "lean"
    columns = ("lean_state", "lean_statement", "lean_message")
    needs = SignalNeeds(toolchain="lean")
    failed_stage = "verify"
    missing = LEAN_DISABLED
    enable: Mapping[str, object] = {"lean.enabled": True}

    def runs(self, config: BuildConfig) -> bool:
        return config.lean.enabled

    def run(self, paths: Sequence[SignalPath], inputs: SignalInputs) -> SignalOutput:
        """One ``check_steps`` call for every step of every path; a problem whose steps make the
        call raise is retried alone and fails alone."""
        verifier = inputs.lean if self.runs(inputs.config) else None
        return check_paths(verifier, paths, inputs.ledger, LEAN_DISABLED)

    def row_fields(self, result: LeanCheck) -> dict[str, Any]:
        return {"lean_state": result.state.value, "lean_statement": result.statement,
                "lean_message": result.message or result.tactic}

    def from_row(self, row: StepRow) -> LeanCheck:
        return LeanCheck(LeanState(row.lean_state), row.lean_statement, None, row.lean_message)

    def rationale_line(self, result: LeanCheck | None) -> str | None:
        return lean_line(result)

    def step_negative(self, result: LeanCheck) -> bool | None:
        if result.state == LeanState.DISPROVED:
            return True
        return False if result.state == LeanState.PROVED else None

    def stored(self, row: StepRow) -> dict[str, Any]:
        return {"lean": row.lean_state}

    def from_stored(self, step: Mapping[str, Any]) -> LeanCheck:
        return LeanCheck(LeanState(step["lean"]))


LEAN = LeanSignal()
