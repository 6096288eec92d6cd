"""Monte Carlo as the value signal: from a step's prefix, k rollouts to a final answer; the share
that reaches the gold answer is its value (Math-Shepherd), or first-error binary search infers it
(OmegaPRM). Needs the policy and the gold answer.

Its estimates come from the search stage (labelers/search/montecarlo.py and first_error.py, driven
by labelers/pipeline.py), not from a :meth:`run` of its own: which prefixes get rollouts depends on
the other signals (none after a step the tool or Lean disproved, more after a verified zero) and
on the path's outcome, and estimates are shared across the paths of a tree. It runs when fusion
reads it (rules ``hybrid`` and ``mc``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_schemas.records import StepRow
from labelers.config import BuildConfig
from labelers.fuse import NO_MC, MCSignal
from labelers.signals.base import SignalNeeds


def mc_line(mc: MCSignal) -> str:
    if mc.exact:
        outcome = "is" if mc.correct else "is not"
        return (f"Monte Carlo: the step gives the final answer, which {outcome} the correct answer "
                f"(value {mc.value:.3g}).")
    if mc.total:
        return (
            f"Monte Carlo: {mc.correct} of {mc.total} rollouts from this step reach the correct answer "
            f"(value {mc.value:.3g})."
        )
    if mc.inferred_label is not None:
        side = "before" if mc.inferred_label else "at or after"
        label = "positive" if mc.inferred_label else "negative"
        return f"Monte Carlo: inferred {label} by first-error search (step {side} the first error)."
    return "Monte Carlo: not estimated."


class MCValueSignal:
    """Hard label c > 0 (or the inferred label): none = no verdict. Alone it is fused by rule
    ``mc`` (labelers/fuse.py), which adds the threshold and the path-outcome fallback."""

    name = "mc"
    columns = ("mc_correct", "mc_total", "mc_value", "mc_inferred", "hard_label")
    needs = SignalNeeds(policy="policy", gold_answer=True)
    failed_stage = "mc"
    missing = NO_MC
    enable: Mapping[str, object] = {}  # it runs whenever the fusion rule reads it

    def runs(self, config: BuildConfig) -> bool:
        return config.fuse.rule in ("hybrid", "mc")  # rules "tool", "lean", "judge": no rollouts

    def row_fields(self, result: MCSignal) -> dict[str, Any]:
        sampled = result.total is not None
        return {
            "mc_correct": result.correct if sampled else None,
            "mc_total": result.total if sampled else None,
            "mc_value": result.value if sampled else None,
            "mc_inferred": result.inferred,
            "hard_label": result.hard_label,
        }

    def reached_gold(self, row: StepRow) -> bool:
        """A rollout sampled from the row's prefix reached the gold answer (an inferred label is
        no rollout; ``mc_correct`` is null where nothing was sampled)."""
        return bool(row.mc_correct) and not row.mc_inferred

    def from_row(self, row: StepRow) -> MCSignal:
        return MCSignal(row.mc_correct, row.mc_total, row.hard_label if row.mc_inferred else None)

    def rationale_line(self, result: MCSignal | None) -> str | None:
        return mc_line(result if result is not None else NO_MC)

    def step_negative(self, result: MCSignal) -> bool | None:
        hard = result.hard_label
        return None if hard is None else not hard

    def stored(self, row: StepRow) -> dict[str, Any]:
        return {"mc_correct": row.mc_correct, "mc_total": row.mc_total,
                "mc_inferred": row.hard_label if row.mc_inferred else None}

    def from_stored(self, step: Mapping[str, Any]) -> MCSignal:
        return MCSignal(step["mc_correct"], step["mc_total"], step["mc_inferred"])


MC = MCValueSignal()
