"""Label a ProcessBench-format set with one signal and score it.

Signals:

- ``tool``: the tool verifier (sympy / sandboxed Python) on every step; a step is called bad
  when its verdict is ``incorrect``; ``unverifiable`` gives no verdict (not an error).
- ``lean``: the Lean verifier; ``disproved`` = bad, ``proved`` = good, anything else no verdict.
  Without a Lean toolchain every step is ``lean_unavailable`` and the run says so.
- ``mc``: Monte Carlo labels (Math-Shepherd): the configured policy samples ``k`` rollouts
  from each step prefix (``per-step``) or only from the prefixes an OmegaPRM binary search
  probes (``binary``); fused with rule ``mc``.
- ``hybrid``: tool verdicts and MC fused with rule ``hybrid`` (labelers/fuse.py), the judge
  included as ``fuse.judge`` says;
- ``judge``: the step judge (labelers/judge.py, GroundedPRM's tool-grounded LLM verifier) alone:
  ``incorrect`` = bad, ``correct`` = good, no verdict = none. Needs no gold answer.
- ``prm``: a PRM trained by ``prmforge train`` (labelers/training.py): a step is bad when its
  P(good) is below a threshold (0.5 by default). Needs the ``[train]`` extra.
- ``answer``: the answer-aware baselines, no model: when the solution's final answer is not the
  gold answer, the error is the last step (``answer:last``) or step 0 (``answer:first``); a
  solution reaching gold has no error. What any signal that reads the gold answer must beat.

Signals of one run share their work (:func:`run_shared`): per MC mode, ONE pass of the labeling
core computes tool verdicts, the judge (when asked) and the rollouts, and every signal's labels
are fused from those same signals, so ``tool,mc:binary,judge,hybrid:binary`` costs the rollouts
of one binary run.

``mc`` and ``hybrid`` go through the labeling core's given-solutions function
(:func:`labelers.pipeline.label_given_solutions`), so the evaluation measures exactly the code
that builds data sets. They need each record's ``gold_answer`` (rollouts are judged against
it); ProcessBench files have none, so there only ``tool`` and ``lean`` run.

The predicted earliest error of a solution is its first step labeled bad (-1 when none).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from data_schemas.errors import InputError, PrmforgeError
from labelers.config import BuildConfig
from labelers.evaluation.journal import DEFAULT_CHUNK, ChunkJournal, LabeledChunk, chunk_key
from labelers.evaluation.processbench import BenchRecord, Prediction, Score, score
from labelers.evaluation.replay import ReplayPolicy
from labelers.policy.base import Policy, TokenUsage
from labelers.policy.usage import CostProfile, cpu_seconds
from labelers.search.scheduler import EstimatePlan
from labelers.signals.lean import LEAN
from labelers.signals.mc import MC
from labelers.signals.registry import path_signals, registered, signal_named
from labelers.signals.tool import TOOL
from labelers.verify.base import LeanState, LeanVerifier, StepContext, StepVerifier, ToolVerdict

HYBRID = "hybrid"
# Eval signals that are not step signals: the hybrid fusion and two references (a trained PRM, the
# answer baselines).
OTHER_SIGNALS: tuple[str, ...] = (HYBRID, "prm", "answer")
# Signals that sample MC rollouts: they take an MC mode and share one labeling pass per mode.
VALUE_SIGNALS: tuple[str, ...] = (MC.name, HYBRID)
# Step signals scored on their own verifier call, without a labeling pass (run_tool, run_lean).
ALONE_SIGNALS: tuple[str, ...] = (TOOL.name, LEAN.name)
MC_MODES: tuple[str, ...] = ("per-step", "binary")
ANSWER_MODES: tuple[str, ...] = ("last", "first")


def eval_signals() -> tuple[str, ...]:
    """What ``eval run --labels`` takes: every registered step signal (labelers/signals/registry.py),
    then :data:`OTHER_SIGNALS`."""
    return (*(s.name for s in registered()), *OTHER_SIGNALS)


def pass_signals() -> tuple[str, ...]:
    """Step signals the labeling pass runs on the given steps (the judge, and any new path signal):
    they join the first pass of the value signals, or get one of their own without rollouts."""
    return tuple(s.name for s in path_signals() if s.name not in ALONE_SIGNALS)


def gold_signals() -> frozenset[str]:
    """Signals that judge rollouts or final answers against the gold answer."""
    return frozenset({s.name for s in registered() if s.needs.gold_answer} | {HYBRID, "answer"})


@dataclass
class SignalRun:
    """What one signal said about a set, and what it cost."""

    signal: str
    predictions: dict[str, Prediction]
    failures: dict[str, str] = field(default_factory=dict)  # record id -> error (no prediction)
    rollouts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    labeled_steps: int = 0  # steps of the solutions that got a prediction
    estimated_steps: int = 0  # steps whose prefix got sampled rollouts (MC)
    wall_seconds: float = 0.0
    model_id: str | None = None
    mc_mode: str | None = None
    k: int | None = None
    notes: list[str] = field(default_factory=list)
    profile: CostProfile | None = None  # the labeling pass's cost profile (MC / hybrid / judge)
    # Per record: the signals fusion read (stored_signals), so another fusion can be scored
    # offline (fuse_stored) without sampling again. Labeling-core signals only.
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rollouts_per_step(self) -> float | None:
        return self.rollouts / self.labeled_steps if self.labeled_steps else None


@dataclass
class SignalResult:
    run: SignalRun
    score: Score

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "signal": run.signal,
            "model_id": run.model_id,
            "mc_mode": run.mc_mode,
            "k": run.k,
            "score": self.score.to_json(),
            "cost": {
                "rollouts": run.rollouts,
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
                "labeled_steps": run.labeled_steps,
                "estimated_steps": run.estimated_steps,
                "rollouts_per_labeled_step": run.rollouts_per_step,
                "wall_seconds": run.wall_seconds,
                "profile": run.profile.to_json() if run.profile is not None else None,
            },
            "failures": dict(sorted(run.failures.items())),
            "notes": run.notes,
            # Per solution: each step's verdict (true = bad, null = none), to see where signals differ.
            "predictions": {pid: list(p.step_negative) for pid, p in sorted(run.predictions.items())},
            **({"signals": dict(sorted(run.signals.items()))} if run.signals else {}),
        }


def contexts(record: BenchRecord) -> list[StepContext]:
    return [StepContext(record.problem, tuple(record.steps[:i]), step) for i, step in enumerate(record.steps)]


def run_tool(records: Sequence[BenchRecord], tool: StepVerifier) -> SignalRun:
    """Tool verdicts of every step of every record, in one ``check_steps`` batch."""
    started = time.perf_counter()
    flat: list[StepContext] = []
    for record in records:
        flat += contexts(record)
    checks = tool.check_steps(flat)
    if len(checks) != len(flat):
        raise PrmforgeError(f"tool verifier returned {len(checks)} checks for {len(flat)} steps")
    run = SignalRun("tool", {})
    position = 0
    unverifiable = 0
    failed: list[str] = []
    for record in records:
        verdicts = checks[position : position + len(record.steps)]
        position += len(record.steps)
        negative: list[bool | None] = []
        for check in verdicts:
            negative.append(TOOL.step_negative(check))
            if negative[-1] is None:
                unverifiable += 1
                if check.verdict == ToolVerdict.ERROR:
                    failed.append(f"{record.id}: {check.evidence.get('error')}")
        run.predictions[record.id] = Prediction(record.id, tuple(negative))
        run.labeled_steps += len(record.steps)
    run.notes.append(f"{unverifiable} of {len(flat)} steps unverifiable by the tool")
    if failed:
        run.notes.append(f"{len(failed)} step(s) got verdict 'error' (no label; first: {failed[0]})")
    run.wall_seconds = time.perf_counter() - started
    return run


def run_lean(records: Sequence[BenchRecord], lean: LeanVerifier) -> SignalRun:
    """Lean states of every step; refuses when Lean could check none of them."""
    started = time.perf_counter()
    flat: list[StepContext] = []
    for record in records:
        flat += contexts(record)
    checks = lean.check_steps(flat)
    if flat and all(c.state in (LeanState.LEAN_UNAVAILABLE, LeanState.DISABLED) for c in checks):
        message = next((c.message for c in checks if c.message), "no Lean toolchain")
        raise PrmforgeError(f"--labels lean: Lean is not available here ({message}); see docs/lean.md")
    run = SignalRun("lean", {})
    position = 0
    for record in records:
        states = checks[position : position + len(record.steps)]
        position += len(record.steps)
        run.predictions[record.id] = Prediction(record.id, tuple(LEAN.step_negative(c) for c in states))
        run.labeled_steps += len(record.steps)
    run.wall_seconds = time.perf_counter() - started
    return run


def run_prm(records: Sequence[BenchRecord], scorer: Any, threshold: float = 0.5) -> SignalRun:
    """Step scores of a trained PRM (``scorer.step_scores(problem, steps)`` = P(good) per step);
    a step is bad when its score is below ``threshold``. A record the scorer cannot take (cut by
    its max_length, ...) is kept in ``failures``."""
    if not 0 < threshold < 1:
        raise InputError(f"--threshold must be between 0 and 1, got {threshold}")
    started = time.perf_counter()
    run = SignalRun("prm", {}, model_id=getattr(scorer, "model_dir", None))
    scores: list[float] = []
    for record in records:
        try:
            step_scores = scorer.step_scores(record.problem, record.steps)
        except PrmforgeError as error:
            run.failures[record.id] = str(error)
            continue
        scores += step_scores
        run.predictions[record.id] = Prediction(record.id, tuple(score < threshold for score in step_scores))
        run.labeled_steps += len(record.steps)
    if scores:
        run.notes.append(
            f"threshold {threshold}: step P(good) min {min(scores):.3f}, mean {sum(scores) / len(scores):.3f}, "
            f"max {max(scores):.3f}"
        )
    run.wall_seconds = time.perf_counter() - started
    return run


def run_answer(records: Sequence[BenchRecord], mode: str) -> SignalRun:
    """Answer-aware baseline ``mode`` (``last`` / ``first``, module doc): the final answer is the
    one the labeling core reads (boxed, ``####``, "the answer is"; none stated = not gold)."""
    from labelers.answers import AnswerJudge
    from labelers.search.montecarlo import OutcomeJudge

    if mode not in ANSWER_MODES:
        raise InputError(f"--labels answer takes a mode ({', '.join(ANSWER_MODES)}), got {mode!r}")
    require_gold(records, f"answer:{mode}")
    started = time.perf_counter()
    run = SignalRun("answer", {}, mc_mode=mode)
    with AnswerJudge() as answer_judge:
        judge = OutcomeJudge(answer_judge)
        for record in records:
            reaches = judge.reaches_gold("\n".join(record.steps), str(record.gold_answer))
            negative = [False] * len(record.steps)
            if not reaches:
                negative[-1 if mode == "last" else 0] = True
            run.predictions[record.id] = Prediction(record.id, tuple(negative))
            run.labeled_steps += len(record.steps)
    run.wall_seconds = time.perf_counter() - started
    return run


def require_gold(records: Sequence[BenchRecord], signal: str) -> None:
    missing = [r.id for r in records if not r.gold_answer]
    if missing:
        raise InputError(
            f"--labels {signal} needs a gold answer per record (rollouts are judged against it); "
            f"{len(missing)} record(s) have no gold answer (first: {missing[0]!r}); eval run joins them where it "
            "can (docs/evaluation.md), --gold FILE gives your own"
        )


def mc_config(config: BuildConfig, signal: str, mc_mode: str, k: int | None) -> BuildConfig:
    """The build config a given-solutions MC run uses: fusion rule = the signal, ``k`` rollouts
    per estimated prefix, every step keeps a label (no truncation), and

    - ``per-step`` (Math-Shepherd): rollouts from every prefix of every solution;
    - ``binary`` (OmegaPRM): first-error binary search on solutions whose final answer is wrong;
      a solution that reaches the gold answer is inferred all-positive without rollouts (it is
      itself a rollout reaching gold from each of its prefixes)."""
    if mc_mode not in MC_MODES:
        raise InputError(f"--mc-mode must be one of {', '.join(MC_MODES)}, got {mc_mode!r}")
    overrides: dict[str, object] = {
        "fuse.rule": signal,
        "fuse.after_first_error": "negative",
        "search.first_error_search": mc_mode == "binary",
        "search.mc_correct_paths": mc_mode == "per-step",
    }
    if k is not None:
        overrides["search.mc_rollouts"] = k
        if config.search.mc_early_stop >= k:
            overrides["search.mc_early_stop"] = 0
    return config.with_overrides(overrides)


def run_mc(
    records: Sequence[BenchRecord],
    signal: str,
    config: BuildConfig,
    policy: Policy,
    tool: StepVerifier | None,
    lean: LeanVerifier | None,
    mc_mode: str = "per-step",
    k: int | None = None,
) -> SignalRun:
    """MC (``signal="mc"``) or hybrid labels through the labeling core's given-solutions
    function (one signal of :func:`run_shared`); per-record failures are kept in ``failures``
    (they score as misses)."""
    return run_shared(records, [signal], config, policy, tool, lean, mc_mode, k)[0]


def _given_problems(records: Sequence[BenchRecord]) -> list[Any]:
    from data_schemas.records import Problem
    from labelers.identity import problem_id

    return [
        Problem(problem_id(r.problem + "\x1f" + r.id, "eval"), "eval", r.problem, str(r.gold_answer or ""))
        for r in records
    ]


def stored_signals(rows: Sequence[Any]) -> dict[str, Any]:
    """What fusion reads from one path's step rows (in step order), as plain JSON: the path's
    outcome and, per step, each registered signal's part (labelers/signals/: ``tool`` verdict,
    ``lean`` state, MC evidence ``mc_correct`` / ``mc_total`` / ``mc_inferred`` (sampled c of n, or
    the label the first-error search inferred), ``judge`` verdict). ``eval run --out`` stores it, so
    another fusion config re-scores a run offline (:func:`fuse_stored`)."""
    return {
        "path_correct": rows[0].path_correct if rows else None,
        "steps": [{key: value for signal in registered() for key, value in signal.stored(r).items()} for r in rows],
    }


def fuse_stored(stored: dict[str, Any], rule: str, fuse_config: Any) -> list[bool]:
    """The labels (True = good) of one path under ``rule`` and ``fuse_config``, from
    :func:`stored_signals` (the same fusion the labeling core applies, path rule included;
    rollouts are rule-independent, so this equals a run with that rule -- except a rule that
    changes what is sampled, such as confirmation)."""
    from labelers.fuse import fuse_path

    steps = stored["steps"]
    signals = {signal.name: [signal.from_stored(step) for step in steps] for signal in registered()}
    config = fuse_config.model_copy(update={"rule": rule})
    return [step.label for step in fuse_path(signals, config, stored["path_correct"])]


def _counting_solutions(on_solutions: Callable[[int, int], None] | None, start: int,
                        records: Sequence[BenchRecord]) -> Callable[[], None] | None:
    """Progress inside a chunk: a chunk of 32 solutions is one streamed call of many minutes on a
    CPU, so a solution counts as done when its first-error search ends (per-step: its last
    estimate), or at once when it needs no rollouts (``start`` + solutions done so far; the
    chunk's end sets the exact count)."""
    if on_solutions is None:
        return None
    done = 0

    def solution_done() -> None:
        nonlocal done
        done += 1
        on_solutions(start + done, len(records))

    return solution_done


class PlanWatch(Protocol):
    """Who hears what a labeling pass plans to sample (a progress line's ETA)."""

    def expected(self, per_solution: Sequence[float]) -> None:
        """Before the pass samples: the prefix estimates each solution is expected to take
        (labelers.pipeline.expected_estimates)."""
        ...

    def planned(self, plan: EstimatePlan, first: int, end: int) -> None:
        """A chunk of the pass's solutions ``first..end-1`` begins to sample ``plan``."""
        ...


def _chunk_plan(plans: PlanWatch, first: int, end: int) -> Callable[[EstimatePlan], None]:
    """The pipeline's ``on_plan`` for the chunk of records ``first..end-1``."""
    return lambda plan: plans.planned(plan, first, end)


def hybrid_has_own_pass(signals: Sequence[str], config: BuildConfig) -> bool:
    """Whether :func:`run_shared` labels ``hybrid`` in a pass of its own: when ``mc`` is asked
    too and the hybrid samples with the tool's help (it confirms MC zeros after verified steps)."""
    confirms = config.search.mc_confirm_verified_zero or config.search.mc_confirm_every_zero
    return "mc" in signals and "hybrid" in signals and confirms


def run_shared(
    records: Sequence[BenchRecord],
    signals: Sequence[str],
    config: BuildConfig,
    policy: Policy,
    tool: StepVerifier | None,
    lean: LeanVerifier | None,
    mc_mode: str = "per-step",
    k: int | None = None,
    step_judge: Policy | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    on_solutions: Callable[[int, int], None] | None = None,
    journal: ChunkJournal | None = None,
    plans: PlanWatch | None = None,
) -> list[SignalRun]:
    """``mc`` / ``hybrid`` / ``judge`` (any of :func:`pass_signals`) labels of the same records from
    ONE pass of the labeling core (rollouts in ``mc_mode`` only when ``mc`` or ``hybrid`` is asked;
    a path signal only when it is asked or the config runs it anyway, as ``fuse.judge`` does the
    judge); one :class:`SignalRun` per signal, in order. Every run reports the whole pass's cost
    (shared, noted).

    The records are labeled ``chunk_size`` at a time; ``on_solutions(done, total)`` is called
    after each chunk (progress); ``plans`` hears the prefix estimates each record is expected to
    take, then each chunk's plan as it begins to sample (the ETA). With a ``journal`` each
    labeled chunk is kept on disk and a chunk it already holds is not labeled again
    (labelers/evaluation/journal.py)."""
    from labelers import pipeline

    unknown = [s for s in signals if s not in (*VALUE_SIGNALS, *pass_signals())]
    if unknown:
        raise InputError(f"run_shared: {unknown[0]!r} is not a labeling-core signal")
    needs_mc = any(s in VALUE_SIGNALS for s in signals)
    scored_alone = pass_signals()
    stepwise = [signal_named(s) for s in signals if s in scored_alone]  # scored from their own columns
    if needs_mc:
        require_gold(records, next(s for s in signals if s in VALUE_SIGNALS))
        run_config = mc_config(config, HYBRID, mc_mode, k)
    else:
        # A rule that reads no MC, so the pass samples no rollouts (the labels are not scored).
        run_config = config.with_overrides({"fuse.rule": "judge", "fuse.after_first_error": "negative"})
    for signal in stepwise:
        run_config = run_config.with_overrides(dict(signal.enable))
    if MC.name in signals:
        # The pass runs under rule hybrid, which skips rollouts from and after a step the tool
        # disproved and confirms MC zeros after verified steps; MC alone must not see the tool.
        # Without the confirmation the hybrid's labels would be the same either way (a disproved
        # step is bad whatever MC says; only the cost is that of the unskipped run); with it the
        # hybrid samples differently, so it gets a pass of its own.
        if hybrid_has_own_pass(signals, config):
            rest = [s for s in signals if s != "hybrid"]
            runs = run_shared(records, rest, config, policy, tool, lean, mc_mode, k, step_judge, chunk_size,
                              on_solutions, journal, plans)
            [hybrid] = run_shared(records, ["hybrid"], config, policy, tool, lean, mc_mode, k, step_judge, chunk_size,
                                  on_solutions, journal, plans)
            by_signal = {run.signal: run for run in [*runs, hybrid]}
            return [by_signal[s] for s in signals]
        run_config = run_config.with_overrides({"search.skip_mc_after_disproved": False,
                                                "search.mc_confirm_verified_zero": False,
                                                "search.mc_confirm_every_zero": False})
    started = time.perf_counter()
    cpu_started = cpu_seconds()
    problems = _given_problems(records)
    use_tool = tool if (needs_mc or stepwise) else None
    by_problem: dict[str, list[Any]] = {}
    outcomes: dict[str, Any] = {}
    usage = TokenUsage()
    earlier_wall = earlier_cpu = 0.0  # of chunks an interrupted run labeled (journal)
    config_hash = run_config.config_hash()
    # A chunk's own CPU clock is kept only for the journal (a resumed run adds it to its costs).
    chunk_clock: Callable[[], float] = cpu_seconds if journal is not None else (lambda: 0.0)
    # The journal keeps what each chunk sampled, so a resumed run's later passes replay it too.
    replay = policy if journal is not None and isinstance(policy, ReplayPolicy) else None
    # In chunks, so a pass over a real set can say how far it is: every request carries its own
    # seed (never the batch's), so the labels are the same as from one call over all records.
    if on_solutions is not None and records:
        # 0 done: a pass that follows another in the same watch (the hybrid's own pass after MC's)
        # shows its restart at once, not the finished pass's "N/N, eta 0 s" until its first chunk.
        on_solutions(0, len(records))
    if plans is not None and needs_mc:
        plans.expected(pipeline.expected_estimates(problems, [[list(r.steps)] for r in records], run_config))
    for start in range(0, len(records), chunk_size):
        end = min(start + chunk_size, len(records))
        chunk = slice(start, end)
        key = chunk_key(signals, mc_mode, config_hash, records[chunk])
        labeled = journal.get(key) if journal is not None else None
        if labeled is None:
            chunk_started, chunk_cpu = time.perf_counter(), chunk_clock()
            mark = replay.remembered if replay is not None else 0
            result = pipeline.label_given_solutions(
                problems[chunk], [[list(r.steps)] for r in records[chunk]], run_config, policy, use_tool, lean,
                build_id="eval", step_judge=step_judge,
                on_path_done=_counting_solutions(on_solutions, start, records),
                on_plan=None if plans is None else _chunk_plan(plans, start, end),
            )
            labeled = LabeledChunk(result.steps, result.outcomes, result.usage, time.perf_counter() - chunk_started,
                                   chunk_clock() - chunk_cpu, replay.answers_since(mark) if replay is not None else [])
            if journal is not None:
                journal.put(key, labeled)
        else:
            earlier_wall += labeled.wall_seconds
            earlier_cpu += labeled.cpu_seconds
            if plans is not None:  # nothing left to sample there: its expectation no longer counts
                plans.planned(EstimatePlan(frozenset(), {}, ()), start, end)
            if replay is not None:
                replay.remember(labeled.answers)  # a later pass of this run replays them
        for row in labeled.rows:
            by_problem.setdefault(row.problem_id, []).append(row)
        outcomes.update((o.problem_id, o) for o in labeled.outcomes)
        usage.add(labeled.usage)
        if on_solutions is not None:
            on_solutions(end, len(records))
    seconds = time.perf_counter() - started + earlier_wall
    profile = CostProfile.of(usage, solutions=len(records), rollouts=sum(o.rollouts for o in outcomes.values()),
                             wall_seconds=seconds, cpu_seconds=cpu_seconds() - cpu_started + earlier_cpu)
    judge_model = getattr(step_judge or policy, "model_id", None)
    runs = []
    for signal in signals:
        own = next((s for s in stepwise if s.name == signal), None)  # None: a value signal (fused labels)
        model_id = judge_model if own is not None and own.needs.policy == "judge" else getattr(policy, "model_id", None)
        run = SignalRun(signal, {}, model_id=model_id, mc_mode=mc_mode if own is None else None,
                        k=run_config.search.mc_rollouts if own is None else None)
        statuses: Counter = Counter()
        sampled_solutions = reached_solutions = 0  # solutions the pass drew rollouts for / one reached gold
        for record, problem in zip(records, problems):
            outcome = outcomes.get(problem.problem_id)
            if outcome is not None:
                run.rollouts += outcome.rollouts
                run.prompt_tokens += outcome.prompt_tokens
                run.completion_tokens += outcome.completion_tokens
            if outcome is None or outcome.status != "labeled":
                failure = "no outcome" if outcome is None else f"{outcome.failed_stage}: {outcome.error}"
                run.failures[record.id] = failure
                continue
            rows = sorted(by_problem.get(problem.problem_id, []), key=lambda r: r.step_index)
            negative: list[bool | None] = [None] * len(record.steps)
            signals_read = stored_signals(rows)
            labels = None if own is not None else fuse_stored(signals_read, signal, run_config.fuse)
            for position, row in enumerate(rows):
                if row.step_index >= len(negative):
                    continue
                if own is not None:
                    result = own.from_row(row)
                    statuses[getattr(result, "status", None)] += 1
                    negative[row.step_index] = own.step_negative(result)
                else:
                    negative[row.step_index] = not labels[position]
                if row.mc_total is not None and not row.mc_inferred:
                    run.estimated_steps += 1
            run.predictions[record.id] = Prediction(record.id, tuple(negative))
            run.signals[record.id] = signals_read
            run.labeled_steps += len(record.steps)
            if own is None and outcome.rollouts:
                sampled_solutions += 1
                # The last step's estimate is exact when it states an answer (its own answer against
                # gold, no rollout): only the earlier prefixes' estimates say whether a rollout did.
                reached_solutions += any(MC.reached_gold(row) for row in rows if row.step_index < len(record.steps) - 1)
        run.wall_seconds = seconds
        run.profile = profile
        if own is not None and hasattr(own.missing, "status"):  # a model's replies (the judge's): how many parsed
            run.notes.append(f"{signal} replies: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
        if sampled_solutions:
            run.notes.append(reach_note(reached_solutions, sampled_solutions))
        if len(signals) > 1:
            run.notes.append(f"cost shared with {', '.join(s for s in signals if s != signal)} (one labeling pass)")
        runs.append(run)
    return runs


def reach_note(reached: int, sampled: int) -> str:
    """How many of the solutions the pass drew rollouts for had a prefix from which a rollout
    reached the gold answer. In the others every prefix read 0, so MC put the first error at the
    earliest step it probed (step 0 when it probed it): the policy's failure to finish the problem,
    not evidence about the solution. On the dev half with the embedded 1.5B: GSM8K 16 of 22
    (MC binary F1 0.710), OlympiadBench 1 of 13 (F1 0.000; docs/evaluation.md)."""
    note = f"rollouts reached the gold answer from a prefix of {reached} of the {sampled} solutions sampled"
    if reached < sampled:
        note += (f"; in the other {sampled - reached} every prefix read 0 and MC put the first error at the earliest "
                 "step it probed: the policy not finishing the problem, no evidence about the solution (a policy "
                 "that solves these problems: --model, --backend)")
    return note


def evaluate(records: Sequence[BenchRecord], run: SignalRun) -> SignalResult:
    return SignalResult(run, score(records, run.predictions))


class EvalResources(Protocol):
    """What the signals of an eval run are made from (flows/commands/evaluate.py wraps the resource
    holder builds use); each is made on first use."""

    def policy(self) -> Policy: ...

    def step_judge(self) -> Policy | None: ...  # a separate judge model, or None: the policy judges

    def tool(self) -> StepVerifier: ...

    def lean(self) -> LeanVerifier: ...

    def prm(self) -> Any: ...


class PassWatch(PlanWatch, Protocol):
    """How a caller shows the labeling passes (the CLI: lines on stderr and a progress line fed by
    the policies and the passes' plans)."""

    def say(self, line: str) -> None: ...

    def open_pass(self, label: str, solutions: int, completions: str = "rollouts") -> None:
        """A pass begins (before its models are made: its clock includes loading them).
        ``completions`` names what its generate calls return: rollouts, or the judge's replies."""
        ...

    def start_pass(self) -> Callable[[int, int], None]:
        """Its policies exist now; returns the per-chunk callback ``(done, total)``."""
        ...

    def close_pass(self) -> None: ...


def _run_alone(signal: str, mode: str | None, records: Sequence[BenchRecord], resources: EvalResources,
               threshold: float) -> SignalRun:
    """A signal scored without a labeling pass: the tool and Lean on their verifier, the PRM, the
    answer baselines."""
    if signal == TOOL.name:
        return run_tool(records, resources.tool())
    if signal == LEAN.name:
        return run_lean(records, resources.lean())
    if signal == "prm":
        return run_prm(records, resources.prm(), threshold)
    return run_answer(records, mode or "last")


def run_signals(records: Sequence[BenchRecord], signals: Sequence[tuple[str, str | None]], config: BuildConfig,
                default_mode: str, k: int | None, resources: EvalResources, watch: PassWatch,
                threshold: float = 0.5, chunk: int = DEFAULT_CHUNK,
                journal: ChunkJournal | None = None) -> list[SignalResult]:
    """Results of ``signals`` (name, mode) on ``records``, in the order asked.

    Passes: the value signals (``mc``, ``hybrid``) share one labeling pass per MC mode (mode:
    theirs, else ``default_mode``), in the order the modes are first asked; the pass signals
    (:func:`pass_signals`: the judge, ...) join the first of them, or get one pass of their own
    without rollouts when no value signal is asked; :func:`run_shared` splits off a pass of the
    hybrid's own when it samples with the tool's help and ``mc`` is asked too. The tool, Lean,
    ``prm`` and ``answer`` run on their own (:func:`_run_alone`)."""
    for signal, _ in signals:
        if signal in gold_signals():
            require_gold(records, signal)
    runs: dict[tuple[str, str | None], SignalRun] = {}
    modes: list[str] = []
    for signal, mode in signals:
        if signal in VALUE_SIGNALS and (mode or default_mode) not in modes:
            modes.append(mode or default_mode)
    stepwise = [signal for signal, _ in signals if signal in pass_signals()]
    for index, mode in enumerate(modes):
        group = [(s, m) for s, m in signals if s in VALUE_SIGNALS and (m or default_mode) == mode]
        names = [s for s, _ in group] + (stepwise if index == 0 else [])
        # A pass over a real set takes minutes to an hour on a CPU: say what runs, and for how long.
        own = hybrid_has_own_pass(names, config)
        shown = ", ".join(n for n in names if not (own and n == HYBRID)) + ("; then hybrid on its own" if own else "")
        watch.say(f"labeling pass {index + 1} of {len(modes)} ({mode}: {shown}) over {len(records)} solutions ...")
        started = time.perf_counter()
        shared = _watched_pass(records, names, config, resources, watch, f"pass {index + 1} of {len(modes)} ({mode})",
                               chunk, mc_mode=mode, k=k, journal=journal)
        watch.say(f"labeling pass {index + 1} of {len(modes)} done in {time.perf_counter() - started:.0f} s")
        for (signal, asked_mode), run in zip(group, shared, strict=False):
            runs[(signal, asked_mode)] = run
        if index == 0:
            runs.update(((signal, None), run) for signal, run in zip(stepwise, shared[len(group):], strict=True))
    if stepwise and not modes:
        steps = sum(len(r.steps) for r in records)
        judge_only = stepwise == ["judge"]
        doing = "judging" if judge_only else f"labeling ({', '.join(stepwise)})"
        watch.say(f"{doing} the {steps} steps of {len(records)} solutions ...")
        shared = _watched_pass(records, stepwise, config, resources, watch, " + ".join(stepwise), chunk,
                               journal=journal, completions="replies" if judge_only else "completions")
        runs.update(((signal, None), run) for signal, run in zip(stepwise, shared, strict=True))
    results = []
    for signal, mode in signals:
        run = runs.get((signal, mode)) or _run_alone(signal, mode, records, resources, threshold)
        results.append(evaluate(records, run))
    return results


def _watched_pass(records: Sequence[BenchRecord], names: Sequence[str], config: BuildConfig, resources: EvalResources,
                  watch: PassWatch, label: str, chunk: int, mc_mode: str = "per-step",
                  k: int | None = None, journal: ChunkJournal | None = None,
                  completions: str = "rollouts") -> list[SignalRun]:
    """One :func:`run_shared` pass, shown by ``watch``."""
    watch.open_pass(label, len(records), completions)
    policy, step_judge = resources.policy(), resources.step_judge()
    on_solutions = watch.start_pass()
    try:
        return run_shared(records, names, config, policy, resources.tool(), None, mc_mode=mc_mode, k=k,
                          step_judge=step_judge, on_solutions=on_solutions, chunk_size=chunk, journal=journal,
                          plans=watch)
    finally:
        watch.close_pass()
