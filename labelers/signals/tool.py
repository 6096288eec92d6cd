"""The tool verifier as a step signal: sympy / sandboxed Python checks of a step's claims
(labelers/verify/tool.py). It needs the tool toolchain, no policy, no gold answer.

In a build it runs inside the search (every step MCTS creates is checked in the round that
creates it, and the check is kept on the node); :meth:`ToolSignal.run` checks given paths
(labelers/pipeline.py ``label_given_solutions``, eval sets) in one ``check_steps`` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from data_schemas.records import StepRow
from labelers.config import BuildConfig
from labelers.signals.base import SignalInputs, SignalNeeds, SignalOutput, SignalPath, check_paths, short_text
from labelers.verify.base import ToolCheck, ToolVerdict

TOOL_DISABLED = ToolCheck(ToolVerdict.UNVERIFIABLE, "none", {"reason": "tool verification disabled"})


def _claim_line(claim: dict[str, Any]) -> str:
    text = claim.get("text") or " ".join(str(claim.get(k, "")) for k in ("lhs", "relation", "rhs")).strip()
    holds = claim.get("holds", claim.get("ok"))
    status = "holds" if holds is True else "fails" if holds is False else "not decided"
    values = [str(claim[k]) for k in ("lhs_value", "rhs_value") if claim.get(k) is not None]
    detail = f" ({' vs '.join(values)})" if values else ""
    return f"{short_text(text)} {status}{detail}"


def tool_line(tool: ToolCheck | None) -> str:
    """The rationale's tool line (the step judge is told the same line)."""
    if tool is None:
        return "Tool check: not run."
    evidence = tool.evidence or {}
    claims = [c for c in evidence.get("claims", []) if isinstance(c, dict)]
    if tool.verdict == ToolVerdict.ERROR:
        return f"Tool check: failed ({short_text(evidence.get('error') or 'verifier error')})."
    if tool.verdict == ToolVerdict.UNVERIFIABLE:
        reason = evidence.get("reason") or evidence.get("error") or "no checkable claim"
        return f"Tool check: unverifiable ({short_text(reason)})."
    if tool.verdict == ToolVerdict.INCORRECT:
        failing = evidence.get("failing") or next((c for c in claims if c.get("holds") is False), None)
        if isinstance(failing, dict):
            return f"Tool check ({tool.kind}): {_claim_line(failing)}."
        return f"Tool check ({tool.kind}): a claim fails."
    if claims:
        return f"Tool check ({tool.kind}): " + "; ".join(_claim_line(c) for c in claims[:4]) + "."
    return f"Tool check ({tool.kind}): every claim holds."


class ToolSignal:
    """Verdict ``incorrect`` = bad step, ``correct`` = good, ``unverifiable`` / ``error`` = none."""

    name = "tool"
    columns = ("tool_verdict", "tool_kind", "tool_evidence")
    needs = SignalNeeds(toolchain="tool")
    failed_stage = "verify"
    missing = TOOL_DISABLED
    enable: Mapping[str, object] = {"tool.enabled": True}

    def runs(self, config: BuildConfig) -> bool:
        return config.tool.enabled

    def run(self, paths: Sequence[SignalPath], inputs: SignalInputs) -> SignalOutput:
        verifier = inputs.tool if self.runs(inputs.config) else None
        return check_paths(verifier, paths, inputs.ledger, TOOL_DISABLED)

    def row_fields(self, result: ToolCheck) -> dict[str, Any]:
        return {"tool_verdict": result.verdict.value, "tool_kind": result.kind, "tool_evidence": result.evidence_json()}

    def from_row(self, row: StepRow) -> ToolCheck:
        return ToolCheck(ToolVerdict(row.tool_verdict), row.tool_kind, {})

    def rationale_line(self, result: ToolCheck | None) -> str | None:
        return tool_line(result)

    def step_negative(self, result: ToolCheck) -> bool | None:
        if result.verdict == ToolVerdict.INCORRECT:
            return True
        return False if result.verdict == ToolVerdict.CORRECT else None

    def stored(self, row: StepRow) -> dict[str, Any]:
        return {"tool": row.tool_verdict}

    def from_stored(self, step: Mapping[str, Any]) -> ToolCheck:
        return ToolCheck(ToolVerdict(step["tool"]), "none", {})


TOOL = ToolSignal()
