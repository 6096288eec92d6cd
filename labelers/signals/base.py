"""The step-signal protocol: what a signal declares and how the labeling core runs it.

A step signal says something about each step of a solution path: the tool verifier (sympy,
sandboxed Python), Lean 4, the LLM step judge, and Monte Carlo rollouts (the *value* signal).
Each one declares

- ``name``: the key of its result in the per-step mapping fusion and the rationale read
  (``fuse_step({"tool": check, "lean": state, "mc": value, "judge": verdict}, ...)``);
- ``columns``: the ``StepRow`` columns it fills (:meth:`StepSignal.row_fields` returns exactly
  those keys), so its result travels into the shards;
- ``needs``: a policy (which one), the gold answer, a toolchain;
- how it runs on a batch of paths (:meth:`PathSignal.run`: one batched call for all paths of all
  problems of a batch), what a step it did not run on holds (``missing``), its rationale line,
  its verdict when scored alone (``step_negative``), and its part of the stored signals an eval
  run writes (``stored`` / ``from_stored``, re-fused offline by ``eval rescore``).

Tool, Lean and the judge are :class:`PathSignal`\\ s. Monte Carlo declares the same things but its
estimates come from the search stage (labelers/search/montecarlo.py, first_error.py, driven by
labelers/pipeline.py): which prefixes it samples depends on the other signals' results (no rollouts
after a disproved step, more after a verified zero) and on the path's outcome. The tool also runs
inside the search (every new step is checked as MCTS creates it); its :meth:`run` labels given
solutions and eval sets.

Adding a signal: a module that implements :class:`PathSignal`, its entry in
``labelers/signals/registry.py``, its columns in data_schemas (records.py, schemas.py). The
pipeline runs it after Lean on every chosen path, the rationale prints its line, ``eval run``
can score it alone (``--labels NAME``) from the same labeling pass as the judge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from data_schemas.records import Problem, StepRow
from labelers.config import BuildConfig
from labelers.policy.base import Policy
from labelers.search.ledger import Ledger
from labelers.verify.base import LeanVerifier, StepContext, StepVerifier, ToolCheck


@dataclass(frozen=True)
class SignalNeeds:
    """What a signal needs to run.

    ``policy``: ``"policy"`` samples from the policy model, ``"judge"`` from the judge model (the
    policy itself unless ``judge.model`` names another), None samples nothing. ``gold_answer``:
    it reads the problem's gold answer (eval refuses records without one). ``toolchain``: the
    verifier it calls, ``"tool"`` (sympy, sandboxed Python) or ``"lean"`` (a Lean 4 toolchain)."""

    policy: str | None = None
    gold_answer: bool = False
    toolchain: str | None = None


@dataclass(frozen=True)
class PathStep:
    """One step of a path as a signal sees it."""

    context: StepContext
    node_path: tuple[int, ...]  # child indices from the root: seeds derive from it
    tool_check: ToolCheck | None  # the tool's verdict from the search (the judge is told it)


@dataclass(frozen=True)
class SignalPath:
    """A path to label: its problem (question, gold answer; its id is the account charged and the
    key of a failure) and its steps in order."""

    problem: Problem
    steps: tuple[PathStep, ...]


@dataclass(frozen=True)
class SignalInputs:
    """Everything a signal may use (it takes what its ``needs`` say). The ledger charges every
    generate call and verifier second to the problems it served."""

    config: BuildConfig
    ledger: Ledger
    policy: Policy
    step_judge: Policy  # the judge model's policy, or the policy when no separate judge is set
    tool: StepVerifier | None
    lean: LeanVerifier | None


@dataclass
class SignalOutput:
    """What a run returns: per path (in the order given) one result per step, and the problems
    whose work failed (problem_id -> error; those problems fail at the signal's ``failed_stage``
    and their entries in ``results`` are empty)."""

    results: list[list[Any]]
    errors: dict[str, str] = field(default_factory=dict)


class StepSignal(Protocol):
    """A signal's declaration (module doc). Results are the signal's own records (``ToolCheck``,
    ``LeanCheck``, ``JudgeVerdict``, ``MCSignal``)."""

    name: str
    columns: tuple[str, ...]  # StepRow columns it fills: exactly the keys of row_fields
    needs: SignalNeeds
    failed_stage: str  # ProblemOutcome.failed_stage when its run fails a problem
    missing: Any  # the result of a step it did not run on (what the rows then hold)
    enable: Mapping[str, object]  # config overrides that make it run (eval turns it on so)

    def runs(self, config: BuildConfig) -> bool:
        """Whether it runs in a build with ``config``."""
        ...

    def row_fields(self, result: Any) -> dict[str, Any]:
        """Its StepRow columns for one step's result."""
        ...

    def from_row(self, row: StepRow) -> Any:
        """The result back from a step row (as far as the row keeps it)."""
        ...

    def rationale_line(self, result: Any | None) -> str | None:
        """Its line of the step's rationale (None: no line); ``result`` None = not run."""
        ...

    def step_negative(self, result: Any) -> bool | None:
        """Scored alone: True = the step is bad, False = good, None = no verdict."""
        ...

    def stored(self, row: StepRow) -> dict[str, Any]:
        """What fusion reads of it, as plain JSON (keys of the stored step, eval run --out)."""
        ...

    def from_stored(self, step: Mapping[str, Any]) -> Any:
        """The result fusion reads, back from :meth:`stored`'s keys (a signal added later reads
        them with ``.get``: runs stored before it existed lack them)."""
        ...


class PathSignal(StepSignal, Protocol):
    """A signal the labeling core runs on the chosen paths of a batch."""

    def run(self, paths: Sequence[SignalPath], inputs: SignalInputs) -> SignalOutput:
        """Results of every step of every path, in one batched call where the signal batches.
        May raise: every problem in ``paths`` then fails at ``failed_stage``."""
        ...


def short_text(value: Any, limit: int = 80) -> str:
    """``value`` as text (JSON when not a string), cut to ``limit`` characters with "..."."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" or type(error).__name__


def check_isolated(
    verifier: StepVerifier | LeanVerifier | None,
    work: dict[str, list[StepContext]],
    ledger: Ledger,
    default: Any,
) -> tuple[dict[str, list], dict[str, str]]:
    """Checks of every problem's contexts in ONE ``check_steps`` call (``default`` per step when
    there is no verifier); when that call raises, each problem is retried alone so one bad problem
    fails only itself. The call's time is charged to the problems by number of steps."""
    if verifier is None:
        return {key: [default] * len(items) for key, items in work.items()}, {}
    keys = [key for key, items in work.items() if items]
    flat = [context for key in keys for context in work[key]]
    checks: dict[str, list] = {key: [] for key in work}
    errors: dict[str, str] = {}
    if not flat:
        return checks, errors
    started = time.perf_counter()
    try:
        results = list(verifier.check_steps(flat))
        if len(results) != len(flat):
            raise RuntimeError(f"verifier returned {len(results)} checks for {len(flat)} steps")
        offset = 0
        for key in keys:
            checks[key] = results[offset : offset + len(work[key])]
            offset += len(work[key])
    except Exception:  # noqa: BLE001 - isolate the failing problem(s) below
        for key in keys:
            try:
                checks[key] = list(verifier.check_steps(work[key]))
            except Exception as error:  # noqa: BLE001 - recorded as the problem's failure
                errors[key] = error_text(error)
    ledger.charge_time({key: len(work[key]) for key in keys}, time.perf_counter() - started)
    return checks, errors


def check_paths(
    verifier: StepVerifier | LeanVerifier | None, paths: Sequence[SignalPath], ledger: Ledger, default: Any
) -> SignalOutput:
    """:func:`check_isolated` over paths: one call with every step of every path (grouped by
    problem, in the order given), results split back per path."""
    work: dict[str, list[StepContext]] = {}
    for path in paths:
        work.setdefault(path.problem.problem_id, []).extend(step.context for step in path.steps)
    checks, errors = check_isolated(verifier, work, ledger, default)
    offsets: dict[str, int] = {}
    results: list[list[Any]] = []
    for path in paths:
        pid = path.problem.problem_id
        if pid in errors:
            results.append([])
            continue
        start = offsets.get(pid, 0)
        results.append(list(checks[pid][start : start + len(path.steps)]))
        offsets[pid] = start + len(path.steps)
    return SignalOutput(results, errors)
