"""Generative-PRM target text per step (GroundedPRM-style rationale).

Format, one fact per line, the verdict last::

    Tool check (sympy): 16 - 3 - 4 = 9 holds (9 = 9).
    Lean 4: proved by norm_num.
    Monte Carlo: 6 of 8 rollouts from this step reach the correct answer (value 0.75).
    Decision: verified by a checker and supported by the rollouts (rule: verified).
    Verdict: \\boxed{+}

The last line is always ``Verdict: \\boxed{+}`` (good step) or ``Verdict: \\boxed{-}`` (bad
step); :func:`parse_verdict` reads it back. Lines for signals that did not run say so
("Lean 4: not run (disabled).", "Monte Carlo: not estimated."). Each line comes from its signal
(``rationale_line`` of labelers/signals/): a registered signal adds its line here by itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from labelers.fuse import FusedStep
from labelers.signals.base import StepSignal
from labelers.signals.judge import judge_line as judge_line  # re-exported: the line functions live with their signals
from labelers.signals.lean import lean_line as lean_line
from labelers.signals.mc import mc_line as mc_line
from labelers.signals.registry import registered
from labelers.signals.tool import tool_line as tool_line

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
    "mc_relative_drop": (
        "fewer rollouts reach the answer from here than from the step before (relative progress below "
        "the threshold), whatever a checker found in its arithmetic"
    ),
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


def build_rationale(
    signals: Mapping[str, Any], fused: FusedStep, step_signals: Sequence[StepSignal] | None = None
) -> str:
    """The rationale text of one step (format: module doc): one line per registered signal, in
    registry order (tool, Lean, Monte Carlo, then the step judge when it ran), from its result in
    ``signals`` (by name; a missing name = not run), then the decision and the verdict.
    ``step_signals``: the signals whose lines to write (default: the registered ones)."""
    decision = _DECISIONS.get(fused.source, fused.source)
    writers = registered() if step_signals is None else step_signals
    facts = [signal.rationale_line(signals.get(signal.name)) for signal in writers]
    lines = [
        *(line for line in facts if line is not None),
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
