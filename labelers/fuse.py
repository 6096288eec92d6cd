"""Fusion: tool verdict + Lean state + Monte Carlo estimate (+ step judge) -> step reward, label, flags.

The signals come as a mapping of signal name to result (labelers/signals/: one step's
``{"tool": ToolCheck, "lean": LeanCheck, "mc": MCSignal, "judge": JudgeVerdict}``, or per step
sequences for a path); the rules below read them by name.

Signals of one step:

- verifier decision ``d``: *disproved* when the tool says ``incorrect`` or Lean ``disproved``;
  *verified* when the tool says ``correct`` or Lean ``proved`` (and nothing disproves it);
  otherwise none;
- MC label ``m``: ``mc_value > mc_threshold`` when sampled; the hard label inferred by the
  first-error search when inferred; none when MC was not estimated.

Rules (``FuseConfig.rule``), reward in [-1, 1], ``label_source`` naming the branch:

hybrid (default)
  1. disproved                           -> label -, reward -1,            ``verifier_disproved``
  2. verified, MC > 0 or not estimated   -> label +, reward 0.5 + 0.5 * mc_value
                                            (1 without a sampled value),   ``verified``
  3. verified, MC = 0                    -> label -, reward -0.5,          ``mc_over_verified``
  4. unverifiable, MC known              -> label m, reward mc_value when +,
                                            -(1 - mc_value) when -,        ``mc``
                                            (inferred: +0.5 / -0.5)
  5. no signal at all                    -> label = path answer correct,   ``path_outcome``
                                            reward 0
mc
  MC label with the same reward as hybrid 4; no MC -> ``path_outcome``.
tool
  incorrect -> -, -1 (``tool_incorrect``); correct -> +, +1 (``tool_correct``);
  unverifiable -> +, 0 (``tool_unverifiable``: only a disproved step counts as an error).
lean
  disproved -> -, -1 (``lean_disproved``); proved -> +, +1 (``lean_proved``); other -> +, 0
  (``lean_no_verdict``).
judge
  the step judge (labelers/judge.py) alone: incorrect -> -, -1 (``judge_incorrect``); correct ->
  +, +1 (``judge_correct``); no verdict -> +, 0 (``judge_no_verdict``).

The judge in the hybrid rule (``FuseConfig.judge``; ``j`` = the judge's verdict):

- ``off``: not used (the verdict is still stored and named in the rationale);
- ``verifier``: when tool and Lean give no decision, ``j`` takes their place, ranked below
  them: incorrect -> -, reward -1 (``judge_disproved``); correct -> rule 2/3 with ``j`` as the
  verification (``judge_verified`` / ``mc_over_judge``);
- ``tiebreak``: ``j`` decides only where neither a verifier nor MC does (instead of
  ``path_outcome``): label ``j``, reward +-0.5 (``judge_tiebreak``).

Path rule of the hybrid (``FuseConfig.zero_without_drop_yields``, :func:`fuse_path`): an MC
negative is evidence of an error at its step only as a *drop*: the prefix before it reached the
answer and this one does not. Binary search always measures that drop except at step 0, whose
predecessor is the question, never sampled; with a weak policy a zero at step 0 often means "this
problem is too hard for the policy", not "step 0 is wrong". So on a path with a disproved step d,
MC negatives before d that no measured positive precedes (``mc``, ``mc_over_verified``) yield:
label +, reward 0.5 when verified and 0 otherwise, ``zero_before_disproved``; d stays the first
error. The first MC negative after a measured positive stands, as does everything after it.
No evidence is no label: such a step's + rests on nothing measured (only on the absence of a
measured drop), so it is marked low-confidence -- ``signals_agree`` false, which ``export
--min-confidence`` cuts, and the soft export gives it its hard label (1.0), not the MC zero it
overruled, so soft and hard exports agree. It is + only so that d stays the path's first error.

Relative progress (GenPRM's estimate, ``FuseConfig.mc_relative_progress`` = epsilon, off by
default; :func:`fuse_path`): where step t is + by MC (rule ``mc``, hybrid rule 4) or verified by a
checker with MC > 0 (hybrid rule 2: a checker sees arithmetic, not reasoning, as in rule 3), and
both v_t = MC(t) and v_{t-1} = MC(t-1) were sampled with v_{t-1} > 0::

    P_t = v_t / v_{t-1};   P_t < epsilon  ->  label -, reward -(1 - v_t),  ``mc_relative_drop``

A drop in the share of rollouts that reach the answer is then evidence of an error even when
some rollouts still recover. Step 0 has no sampled predecessor (the question is never sampled),
nor has a step after an inferred or exact one, so the rule reads nothing there. Its cost is the
noise of a share of k: at k = 4 a correct step after v = 1 reads 3/4 once in a few draws, so
epsilon = 0.8 calls that step an error (tests/test_fuse.py pins it). A relative drop is a measured
drop, so the path rule never lets it yield.

``signals_agree`` is false when the verifier decision and the MC label are both known and
differ, or when the tool and Lean contradict each other (one verifies, the other disproves).

Path consensus (Qwen PRM study: keep samples where MC and a judge agree on the error position):
``mc_first_error`` = first step whose MC label is negative (-1 if none), ``verifier_first_error``
= first disproved step (-1 if none); ``consensus = mc_first_error == verifier_first_error``. An
all-correct path (both -1) is in consensus; a path where MC was never estimated has
``mc_first_error = -1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labelers.config import FuseConfig
from labelers.verify.base import JudgeVerdict, LeanCheck, LeanState, ToolCheck, ToolVerdict


@dataclass(frozen=True)
class MCSignal:
    """The MC evidence of one step: a sampled value, or a label inferred by first-error search."""

    correct: int | None = None
    total: int | None = None
    inferred_label: bool | None = None  # set when inferred (no sample of its own)
    exact: bool = False  # the step gives the final answer: value 1/1 or 0/1 without rollouts

    @property
    def value(self) -> float | None:
        return self.correct / self.total if self.total else None

    @property
    def inferred(self) -> bool:
        return self.total is None and self.inferred_label is not None

    @property
    def hard_label(self) -> bool | None:
        """Math-Shepherd hard label (c > 0), or the inferred label, or None."""
        if self.total:
            return (self.correct or 0) > 0
        return self.inferred_label

    def label(self, threshold: float) -> bool | None:
        """MC label with a threshold on the soft value (inferred labels pass through)."""
        value = self.value
        if value is not None:
            return value > threshold
        return self.inferred_label


NO_MC = MCSignal()


@dataclass(frozen=True)
class FusedStep:
    reward: float
    label: bool
    source: str
    signals_agree: bool


def verifier_decision(tool: ToolCheck | None, lean: LeanCheck | None) -> bool | None:
    """True = verified, False = disproved, None = no verifier decision."""
    tool_says = tool.verdict if tool is not None else None
    lean_says = lean.state if lean is not None else None
    if tool_says == ToolVerdict.INCORRECT or lean_says == LeanState.DISPROVED:
        return False
    if tool_says == ToolVerdict.CORRECT or lean_says == LeanState.PROVED:
        return True
    return None


def _verifiers_conflict(tool: ToolCheck | None, lean: LeanCheck | None) -> bool:
    if tool is None or lean is None:
        return False
    return (tool.verdict == ToolVerdict.CORRECT and lean.state == LeanState.DISPROVED) or (
        tool.verdict == ToolVerdict.INCORRECT and lean.state == LeanState.PROVED
    )


def _mc_reward(mc: MCSignal, label: bool) -> float:
    value = mc.value
    if value is None:
        return 0.5 if label else -0.5
    return value if label else -(1.0 - value)


StepSignals = Mapping[str, Any]
"""One step's signal results by name: ``"tool"`` ToolCheck, ``"lean"`` LeanCheck, ``"mc"`` MCSignal,
``"judge"`` JudgeVerdict (labelers/signals/registry.py); a missing name or None = did not run."""

PathSignals = Mapping[str, Sequence[Any]]
"""A path's signal results by name, one per step in step order (names as in :data:`StepSignals`)."""


def _judge_correct(verdict: JudgeVerdict | None) -> bool | None:
    return None if verdict is None else verdict.correct


def fuse_step(signals: StepSignals, config: FuseConfig, path_correct: bool | None = None) -> FusedStep:
    """Fused reward, label, rule branch and agreement flag of one step (rules: module doc), from
    its signal results by name: tool, lean, mc (none: :data:`NO_MC`) and judge (the step judge's
    verdict; its ``correct`` True / False / None is what fusion reads)."""
    tool: ToolCheck | None = signals.get("tool")
    lean: LeanCheck | None = signals.get("lean")
    mc: MCSignal = signals.get("mc") or NO_MC
    judge = _judge_correct(signals.get("judge"))
    decision = verifier_decision(tool, lean)
    mc_label = mc.label(config.mc_threshold)
    agree = not _verifiers_conflict(tool, lean) and (decision is None or mc_label is None or decision == mc_label)
    rule = config.rule
    if rule == "tool":
        verdict = tool.verdict if tool is not None else ToolVerdict.UNVERIFIABLE
        if verdict == ToolVerdict.INCORRECT:
            return FusedStep(-1.0, False, "tool_incorrect", agree)
        if verdict == ToolVerdict.CORRECT:
            return FusedStep(1.0, True, "tool_correct", agree)
        return FusedStep(0.0, True, "tool_unverifiable", agree)
    if rule == "lean":
        state = lean.state if lean is not None else LeanState.DISABLED
        if state == LeanState.DISPROVED:
            return FusedStep(-1.0, False, "lean_disproved", agree)
        if state == LeanState.PROVED:
            return FusedStep(1.0, True, "lean_proved", agree)
        return FusedStep(0.0, True, "lean_no_verdict", agree)
    if rule == "judge":
        if judge is False:
            return FusedStep(-1.0, False, "judge_incorrect", agree)
        if judge is True:
            return FusedStep(1.0, True, "judge_correct", agree)
        return FusedStep(0.0, True, "judge_no_verdict", agree)
    if rule == "hybrid":
        by_judge = decision is None and judge is not None and config.judge == "verifier"
        if by_judge:
            decision = judge
        if decision is False:
            return FusedStep(-1.0, False, "judge_disproved" if by_judge else "verifier_disproved", agree)
        if decision is True:
            hard = mc.hard_label
            if hard is None or hard:
                value = mc.value
                return FusedStep(1.0 if value is None else 0.5 + 0.5 * value, True,
                                 "judge_verified" if by_judge else "verified", agree)
            return FusedStep(-0.5, False, "mc_over_judge" if by_judge else "mc_over_verified", agree)
    # rule "mc", and hybrid without a verifier decision
    if mc_label is not None:
        return FusedStep(_mc_reward(mc, mc_label), mc_label, "mc", agree)
    if rule == "hybrid" and config.judge == "tiebreak" and judge is not None:
        return FusedStep(0.5 if judge else -0.5, judge, "judge_tiebreak", agree)
    return FusedStep(0.0, path_correct is not False, "path_outcome", agree)


_YIELDING_SOURCES = frozenset({"mc", "mc_over_verified"})


def path_steps(signals: PathSignals) -> list[dict[str, Any]]:
    """The per-step mappings of a path's signals: step i holds each name's i-th result; a path has
    as many steps as its shortest sequence."""
    length = min((len(values) for values in signals.values()), default=0)
    return [{name: values[index] for name, values in signals.items()} for index in range(length)]


def fuse_path(signals: PathSignals, config: FuseConfig, path_correct: bool | None = None) -> list[FusedStep]:
    """Fused steps of one path: :func:`fuse_step` per step, then the hybrid's path rule (module
    doc): before the first disproved step, MC negatives with no measured positive before them
    yield to the disproof."""
    steps = path_steps(signals)
    fused = [fuse_step(step, config, path_correct) for step in steps]
    if config.mc_relative_progress is not None and config.rule in ("mc", "hybrid"):
        _relative_drops(steps, fused, config.mc_relative_progress)
    if config.rule != "hybrid" or not config.zero_without_drop_yields:
        return fused
    for index in range(max(first_disproved(signals), 0)):
        step, mc = fused[index], steps[index].get("mc") or NO_MC
        if step.label:
            if mc.total and mc.label(config.mc_threshold):
                break  # a measured positive: a later zero is a measured drop and stands
            continue
        if step.source not in _YIELDING_SOURCES:
            break  # negative for another reason (judge): not MC's to yield
        reward = 0.5 if step.source == "mc_over_verified" else 0.0
        fused[index] = FusedStep(reward, True, "zero_before_disproved", False)  # no evidence: low confidence
    return fused


# MC-backed positives a relative drop overrules: a checker's "verified" is about arithmetic, and a
# reasoning error with right arithmetic is what only MC sees (as with rule 3, ``mc_over_verified``).
_DROP_SOURCES = frozenset({"mc", "verified"})


def _relative_drops(steps: Sequence[dict[str, Any]], fused: list[FusedStep], epsilon: float) -> None:
    """GenPRM's relative progress (module doc): an MC + whose sampled value is below ``epsilon``
    times the previous step's sampled value becomes -, in place."""
    previous: float | None = None
    for index, step in enumerate(steps):
        mc = step.get("mc") or NO_MC
        value = None if mc.exact else mc.value  # an exact 0/1 or 1/1 is the path's answer, not a share
        current = fused[index]
        if (current.label and current.source in _DROP_SOURCES and value is not None and previous
                and value < epsilon * previous):
            # overruling a checker's "verified" is a disagreement, as in mc_over_verified
            agree = current.signals_agree and current.source == "mc"
            fused[index] = FusedStep(-(1.0 - value), False, "mc_relative_drop", agree)
        previous = value


def first_negative(labels: Sequence[bool | None]) -> int:
    """Index of the first ``False`` in ``labels``, or -1 when there is none."""
    for index, label in enumerate(labels):
        if label is False:
            return index
    return -1


def first_disproved(signals: PathSignals) -> int:
    """Index of a path's first step the tool or Lean disproved, or -1 when there is none."""
    return first_negative([verifier_decision(step.get("tool"), step.get("lean")) for step in path_steps(signals)])


def path_consensus(signals: PathSignals, config: FuseConfig) -> tuple[bool, int, int]:
    """(consensus, mc_first_error, verifier_first_error) of a path (definitions: module doc)."""
    steps = path_steps(signals)
    mc_first = first_negative([(step.get("mc") or NO_MC).label(config.mc_threshold) for step in steps])
    verifier_first = first_disproved(signals)
    return mc_first == verifier_first, mc_first, verifier_first


def rows_to_keep(labels: Sequence[bool], after_first_error: str) -> tuple[int, int]:
    """(number of steps kept, first error index or -1) for ``after_first_error``:
    ``truncate`` keeps steps up to and including the first negative one; ``negative`` keeps all
    (the caller labels the steps after the first error negative)."""
    first = first_negative(labels)
    if first >= 0 and after_first_error == "truncate":
        return first + 1, first
    return len(labels), first
