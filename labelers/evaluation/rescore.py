"""Score fusion variants offline from stored ``eval run --out`` results: no rollout is sampled.

``eval run --out`` stores, per labeling-core signal, the signals fusion read on every solution
(:func:`labelers.evaluation.runner.stored_signals`). A fusion variant that changes only how
those signals are combined (the path rule, the judge's role, thresholds) is scored exactly by
re-fusing them (:func:`labelers.evaluation.runner.fuse_stored`). Two kinds of variant are
re-fusions of different passes:

- *hybrid without confirmation* = the MC pass's signals fused with rule ``hybrid``: that pass
  samples neither the confirmation rollouts nor with the tool's help; skipping rollouts after a
  disproved step changes no label (a disproved step is bad whatever MC says), only the cost;
- *hybrid as run* and its path-rule variants = the hybrid pass's signals.

A variant that samples differently (symmetric confirmation, extra rollouts on uncertain steps)
cannot be scored this way: it needs a run.

Costs of a variant are those of the pass its signals come from (rollouts and wall seconds per
solution; passes of one run replay each other's identical requests, so wall seconds of a later
pass are lower than alone: labelers/evaluation/replay.py).

Consensus (Qwen2.5-Math-PRM's filter): a solution is kept when the MC pass's first error equals
the other signal's (tool or judge; -1 = none on both counts as agreement); its label is that
shared first error. Reported with the share of solutions kept: a filter that keeps only the easy
cases scores well on what it keeps and says nothing about the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data_schemas.errors import InputError
from labelers.config import FuseConfig
from labelers.evaluation.processbench import BenchRecord, Prediction, Score, score
from labelers.evaluation.runner import fuse_stored


@dataclass(frozen=True)
class VariantRow:
    """One line of the variant table."""

    name: str
    score: Score
    solutions: int  # solutions scored
    rollouts_per_solution: float | None
    seconds_per_solution: float | None
    note: str = ""
    kept: int | None = None  # consensus: solutions kept


def stored_results(payloads: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Stored results by key ``signal`` or ``signal:mode`` (``mc:binary``, ``answer:last``); a
    hybrid run with confirmation off (``config`` of the payload) is ``hybrid:MODE:noconfirm``, one
    that confirms every zero ``hybrid:MODE:everyzero``. A later payload's result of the same key
    replaces an earlier one."""
    found: dict[str, Mapping[str, Any]] = {}
    for payload in payloads:
        search = payload.get("config", {}).get("search", {})
        confirm = search.get("mc_confirm_verified_zero", True)
        every_zero = search.get("mc_confirm_every_zero", False)
        for result in payload.get("results", []):
            mode = result.get("mc_mode")
            key = f"{result['signal']}:{mode}" if mode else result["signal"]
            if result["signal"] == "hybrid" and every_zero:
                key += ":everyzero"
            elif result["signal"] == "hybrid" and not confirm:
                key += ":noconfirm"
            found[key] = result
    return found


def predictions_of(result: Mapping[str, Any]) -> dict[str, Prediction]:
    return {rid: Prediction(rid, tuple(negative)) for rid, negative in result["predictions"].items()}


def refused(result: Mapping[str, Any], rule: str, fuse_config: FuseConfig) -> dict[str, Prediction]:
    """Predictions of ``result``'s stored signals re-fused under ``rule`` / ``fuse_config``."""
    if not result.get("signals"):
        raise InputError(
            f"stored result of {result['signal']} has no 'signals' (written by an older prmforge): rerun eval run")
    return {
        rid: Prediction(rid, tuple(not label for label in fuse_stored(stored, rule, fuse_config)))
        for rid, stored in result["signals"].items()
    }


def _costs(result: Mapping[str, Any], scored: int) -> tuple[float | None, float | None]:
    """Rollouts and wall seconds per solution of the pass ``result`` comes from: its totals over the
    solutions it labeled, which are more than the ``scored`` ones when the set is a subset of the run's."""
    cost = result.get("cost", {})
    labeled = (cost.get("profile") or {}).get("solutions") or len(result.get("predictions") or {}) or scored
    if not labeled:
        return None, None
    return cost.get("rollouts", 0) / labeled, cost.get("wall_seconds", 0.0) / labeled


def consensus_predictions(mc: Mapping[str, Prediction], other: Mapping[str, Prediction]) -> dict[str, Prediction]:
    """Solutions where MC's first error equals ``other``'s (module doc), with MC's prediction."""
    return {rid: p for rid, p in mc.items() if rid in other and p.first_error == other[rid].first_error}


def variant_rows(
    records: Sequence[BenchRecord], payloads: Sequence[Mapping[str, Any]], fuse_config: FuseConfig | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[VariantRow]:
    """The variant table of the issue's measurement: the stored signals as run, then the hybrid's
    re-fusions (path rule off, confirmation off, both off), ``extra`` re-fusions of the hybrid
    pass (name -> fuse overrides), a per-step MC pass's hybrid and ``extra`` re-fusions (rules
    ``mc`` and ``hybrid``: relative progress reads per-step values) and consensus filters. Rows
    whose signals were not stored are left out (the caller says what was not run)."""
    base = fuse_config or FuseConfig()
    results = stored_results(payloads)
    rows: list[VariantRow] = []
    n = len(records)

    def add(name: str, predictions: Mapping[str, Prediction], source: Mapping[str, Any], note: str = "") -> None:
        rollouts, seconds = _costs(source, n)
        rows.append(VariantRow(name, score(records, predictions), n, rollouts, seconds, note))

    for key, name in (("answer:last", "answer-aware: last step"), ("answer:first", "answer-aware: step 0"),
                      ("tool", "tool"), ("judge", "judge"), ("mc:binary", "MC binary"), ("mc:per-step", "MC per-step")):
        if key in results:
            add(name, predictions_of(results[key]), results[key])
    hybrid, mc = results.get("hybrid:binary"), results.get("mc:binary")
    no_confirm = results.get("hybrid:binary:noconfirm")
    no_path_rule = base.model_copy(update={"zero_without_drop_yields": False})
    if hybrid is not None:
        add("hybrid as run", predictions_of(hybrid), hybrid, "confirmation on")
        if hybrid.get("signals"):
            add("hybrid, no path rule", refused(hybrid, "hybrid", no_path_rule), hybrid, "re-fused")
            for name, overrides in (extra or {}).items():
                add(name, refused(hybrid, "hybrid", base.model_copy(update=dict(overrides))), hybrid, "re-fused")
    every_zero = results.get("hybrid:binary:everyzero")
    if every_zero is not None:
        add("hybrid, every zero confirmed", predictions_of(every_zero), every_zero, "as run")
    if no_confirm is not None:
        add("hybrid, no confirmation", predictions_of(no_confirm), no_confirm, "as run")
    elif mc is not None and mc.get("signals"):
        add("hybrid, no confirmation", refused(mc, "hybrid", base), mc, "re-fused from the MC pass")
    source = no_confirm if no_confirm is not None and no_confirm.get("signals") else mc
    if source is not None and source.get("signals"):
        add("hybrid, no confirmation, no path rule", refused(source, "hybrid", no_path_rule), source, "re-fused")
        if hybrid is None:
            for name, overrides in (extra or {}).items():
                add(f"{name} (no confirmation)", refused(source, "hybrid", base.model_copy(update=dict(overrides))),
                    source, "re-fused")
    per_step = results.get("mc:per-step")
    if per_step is not None and per_step.get("signals"):
        # a per-step pass samples every prefix whatever the tool says: its hybrid re-fusion is exact
        add("hybrid per-step, no confirmation", refused(per_step, "hybrid", base), per_step,
            "re-fused from the MC pass")
        for name, overrides in (extra or {}).items():
            variant = base.model_copy(update=dict(overrides))
            add(f"MC per-step, {name}", refused(per_step, "mc", variant), per_step, "re-fused")
            add(f"hybrid per-step, {name}", refused(per_step, "hybrid", variant), per_step, "re-fused")
    if mc is not None and mc.get("signals"):
        mc_predictions = predictions_of(mc)
        for key in ("tool", "judge"):
            if key in results:
                kept = consensus_predictions(mc_predictions, predictions_of(results[key]))
                subset = [r for r in records if r.id in kept]
                rollouts, seconds = _costs(mc, n)
                rows.append(VariantRow(f"consensus MC = {key}", score(subset, kept), len(subset), rollouts, seconds,
                                       f"kept {len(subset)} of {n}", kept=len(subset)))
    return rows

