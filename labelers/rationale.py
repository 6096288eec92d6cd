"""Generative-PRM target text per step (GroundedPRM-style rationale).

Format, one fact per line, the verdict last::

    Tool check (sympy): 16 - 3 - 4 = 9 holds (9 = 9).
    Lean 4: proved by norm_num.
    Monte Carlo: 6 of 8 rollouts from this step reach the correct answer (value 0.75).
    Decision: verified by a checker and supported by the rollouts (rule: verified).
    Verdict: \\boxed{+}

The last line is always ``Verdict: \\boxed{+}`` (good step) or ``Verdict: \\boxed{-}`` (bad
step); :func:`parse_verdict` reads it back. Lines for signals that did not run say so
("Lean 4: not run (disabled).", "Monte Carlo: not estimated.").
"""

from __future__ import annotations

import json
import re
from typing import Any

from labelers.fuse import FusedStep, MCSignal
from labelers.verify.base import JudgeVerdict, LeanCheck, LeanState, ToolCheck, ToolVerdict

VERDICT_RE = re.compile(r"^Verdict: \\boxed\{([+-])\}\s*$")

_DECISIONS = {
    "verifier_disproved": "a checker disproved the step",
    "verified": "verified by a checker and not contradicted by the rollouts",
    "mc_over_verified": "the computation checks out but no rollout from here reaches the answer",
    "zero_before_disproved": (
        "no rollout from here reaches the answer, but none from an earlier step was seen to either, "
        "and a later step is disproved: that step is taken as the first error; nothing measured supports "
        "this step (low confidence)"
    ),
    "mc": "no checker could decide; the rollouts decide",
    "path_outcome": "no signal; the path's final answer decides",
    "tool_incorrect": "the tool found a false claim",
    "tool_correct": "the tool confirmed every claim",
    "tool_unverifiable": "nothing the tool could check",
    "lean_disproved": "Lean proved the negation",
    "lean_proved": "Lean proved the step",
    "lean_no_verdict": "Lean gave no verdict",
    "after_first_error": "the step comes after the path's first error",
    "judge_incorrect": "the step judge found the step incorrect",
    "judge_correct": "the step judge found the step correct",
    "judge_no_verdict": "the step judge gave no verdict",
    "judge_disproved": "no checker decided; the step judge found the step incorrect",
    "judge_verified": "no checker decided; the step judge found it correct and the rollouts do not contradict it",
    "mc_over_judge": "the step judge found it correct but no rollout from here reaches the answer",
    "judge_tiebreak": "neither a checker nor the rollouts decided; the step judge breaks the tie",
}


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _claim_line(claim: dict[str, Any]) -> str:
    text = claim.get("text") or " ".join(str(claim.get(k, "")) for k in ("lhs", "relation", "rhs")).strip()
    holds = claim.get("holds", claim.get("ok"))
    status = "holds" if holds is True else "fails" if holds is False else "not decided"
    values = [str(claim[k]) for k in ("lhs_value", "rhs_value") if claim.get(k) is not None]
    detail = f" ({' vs '.join(values)})" if values else ""
    return f"{_short(text)} {status}{detail}"


def tool_line(tool: ToolCheck | None) -> str:
    if tool is None:
        return "Tool check: not run."
    evidence = tool.evidence or {}
    claims = [c for c in evidence.get("claims", []) if isinstance(c, dict)]
    if tool.verdict == ToolVerdict.ERROR:
        return f"Tool check: failed ({_short(evidence.get('error') or 'verifier error')})."
    if tool.verdict == ToolVerdict.UNVERIFIABLE:
        reason = evidence.get("reason") or evidence.get("error") or "no checkable claim"
        return f"Tool check: unverifiable ({_short(reason)})."
    if tool.verdict == ToolVerdict.INCORRECT:
        failing = evidence.get("failing") or next((c for c in claims if c.get("holds") is False), None)
        if isinstance(failing, dict):
            return f"Tool check ({tool.kind}): {_claim_line(failing)}."
        return f"Tool check ({tool.kind}): a claim fails."
    if claims:
        return f"Tool check ({tool.kind}): " + "; ".join(_claim_line(c) for c in claims[:4]) + "."
    return f"Tool check ({tool.kind}): every claim holds."


def lean_line(lean: LeanCheck | None) -> str:
    if lean is None or lean.state == LeanState.DISABLED:
        return "Lean 4: not run (disabled)."
    if lean.state == LeanState.PROVED:
        return f"Lean 4: proved{' by ' + lean.tactic if lean.tactic else ''}."
    if lean.state == LeanState.DISPROVED:
        return f"Lean 4: the negation was proved{' by ' + lean.tactic if lean.tactic else ''}."
    return f"Lean 4: {lean.state.value.replace('_', ' ')}."


def mc_line(mc: MCSignal) -> str:
    if mc.exact:
        outcome = "is" if mc.correct else "is not"
        return (
            f"Monte Carlo: the step gives the final answer, which {outcome} the correct answer "
            f"(value {mc.value:.3g})."
        )
    if mc.total:
        return (
            f"Monte Carlo: {mc.correct} of {mc.total} rollouts from this step reach the correct answer "
            f"(value {mc.value:.3g})."
        )
    if mc.inferred_label is not None:
        side = "before" if mc.inferred_label else "at or after"
        return (
            f"Monte Carlo: inferred {'positive' if mc.inferred_label else 'negative'} by first-error search "
            f"(step {side} the first error)."
        )
    return "Monte Carlo: not estimated."


def judge_line(judge: JudgeVerdict) -> str:
    if judge.status == "ok":
        reason = f": {_short(judge.reason, 160)}" if judge.reason else ""
        return f"Step judge: {judge.verdict}{reason}."
    if judge.status == "unparsed":
        return "Step judge: no verdict in its reply."
    return f"Step judge: failed ({_short(judge.reply or 'no reply')})."


def build_rationale(
    tool: ToolCheck | None, lean: LeanCheck | None, mc: MCSignal, fused: FusedStep, judge: JudgeVerdict | None = None
) -> str:
    """The rationale text of one step (format: module doc); a ``Step judge:`` line follows the
    Monte Carlo line when the judge ran."""
    decision = _DECISIONS.get(fused.source, fused.source)
    judged = [judge_line(judge)] if judge is not None and judge.status != "not_run" else []
    lines = [
        tool_line(tool),
        lean_line(lean),
        mc_line(mc),
        *judged,
        f"Decision: {decision} (rule: {fused.source}).",
        f"Verdict: \\boxed{{{'+' if fused.label else '-'}}}",
    ]
    return "\n".join(lines)


def parse_verdict(rationale: str) -> bool | None:
    """The verdict of a rationale's last line: True for ``\\boxed{+}``, False for ``\\boxed{-}``,
    None when the last line is not a verdict line."""
    lines = [line for line in rationale.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = VERDICT_RE.match(lines[-1].strip())
    if match is None:
        return None
    return match.group(1) == "+"
