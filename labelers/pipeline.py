"""Problems + policy + verifiers -> labeled step rows, tree nodes and problem outcomes.

:func:`label_batch` (one batch = one shard's worth of problems), stages in lock-step across
the batch:

1. **search** -- MCTS over steps (``search.mode = "mcts"``, labelers/search/mcts.py) or ``n``
   independent solutions (``"sample"``). Each round: ONE ``generate`` call with the pending
   requests of every tree, ONE ``check_steps`` call with all new steps (expansion children and
   rollout steps). Rollouts that reach a final answer are materialized as tree nodes, so every
   complete path (root to a terminal node with a final answer) is labeled on tree nodes.
2. **paths** -- up to ``max_paths_per_problem`` complete paths per problem, alternating
   correct / wrong (a mix first), each list in tree order (deterministic).
3. **path signals** (labelers/signals/registry.py, in registry order, each that runs with the
   config; :func:`_run_path_signals`): **Lean** -- all steps of the chosen paths in one
   ``check_steps`` call (when enabled); then the **step judge** (labelers/judge.py, when
   ``config.judge_runs``): all steps of the chosen paths in ONE ``generate`` call of the judge
   policy (the policy itself unless a separate judge model is given); a failed judge request
   leaves that step without a judge verdict. A signal registered later runs here too.
4. **MC** -- with ``search.first_error_search`` (default, OmegaPRM): wrong paths get the
   first-error binary search, all searches of all problems streamed together; correct paths get no
   rollouts, their steps are inferred positive (the path itself is a completion from each of
   its prefixes that reaches gold, so c >= 1), unless ``search.mc_correct_paths`` asks for
   per-step soft values. Without it (Math-Shepherd): per-step MC on every path. Hybrid, with
   ``search.mc_confirm_verified_zero`` (off by default): an estimate of 0 after a verified step is
   confirmed with k more rollouts. Estimates are shared between
   paths with the same prefix (key: problem_id + prefix_hash). The last step of a path that
   gives a final answer has an exact value (1/1 or 0/1) without rollouts.
5. **fuse** -- labelers/fuse.py per step, path consensus (optional filter: non-consensus paths
   are dropped and counted), ``after_first_error`` truncate/negative, rationale per step.

A problem whose requests fail or whose stage raises gets ``status = "failed"`` with
``failed_stage`` and ``error``; the rest of the batch is labeled normally. A problem whose
search found no complete path gets ``status = "skipped"`` with the reason.

:func:`label_given_solutions` labels GIVEN step lists (evaluation): the same stages 3-5 on
paths built from the given steps.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from data_schemas.records import NodeRow, Problem, ProblemOutcome, StepRow
from labelers.answers import AnswerJudge
from labelers.config import BuildConfig
from labelers.fuse import (
    NO_MC,
    FusedStep,
    MCSignal,
    fuse_path,
    path_consensus,
    path_steps,
    rows_to_keep,
    verifier_decision,
)
from labelers.identity import derive_seed
from labelers.policy.base import GenerationRequest, Policy, TokenUsage
from labelers.rationale import build_rationale
from labelers.search.first_error import FirstErrorSearch, expected_probes
from labelers.search.ledger import Ledger
from labelers.search.mcts import Node, SearchSettings, TreeSearch
from labelers.search.montecarlo import MCEstimate, MCSettings, OutcomeJudge, PrefixJob
from labelers.search.scheduler import EstimatePlan, EstimateScheduler, SearchProcess, search_process
from labelers.signals.base import PathStep, SignalInputs, SignalPath, check_isolated, error_text
from labelers.signals.lean import LEAN_DISABLED as LEAN_DISABLED  # re-exported: where callers found it
from labelers.signals.mc import MC
from labelers.signals.registry import path_signals, registered
from labelers.signals.tool import TOOL, TOOL_DISABLED
from labelers.verify.base import LeanVerifier, StepContext, StepVerifier


@dataclass
class BatchResult:
    """Rows of one labeled batch, its token usage and counters.

    Counters (batch totals; per problem in ``problem_counters``): ``paths_complete``,
    ``paths_complete_correct``, ``paths_labeled``, ``paths_consensus``, ``paths_no_consensus``,
    ``paths_dropped_consensus`` (consensus filter), ``mc_prefixes_sampled``,
    ``merged_duplicate_steps``, ``search_iterations``, ``failed_problems``; batch only:
    ``search_rounds``, ``generate_calls``, ``duplicate_problems``.
    """

    steps: list[StepRow]
    nodes: list[NodeRow]
    outcomes: list[ProblemOutcome]
    usage: TokenUsage
    counters: dict[str, int] = field(default_factory=dict)
    # per problem_id: its own counters (paths_complete, paths_labeled, paths_dropped_consensus, ...)
    problem_counters: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Path:
    problem: Problem
    leaf: Node
    nodes: list[Node]  # root excluded, in order
    correct: bool
    final_answer: str | None
    # Per signal name (labelers/signals/registry.py, the tool's checks excepted: they are on the
    # nodes), one result per step; a signal that did not run has no entry.
    results: dict[str, list] = field(default_factory=dict)
    search: FirstErrorSearch | None = None
    mc_horizon: int | None = None  # first disproved step when MC was skipped from there on


@dataclass
class _State:
    problem: Problem
    tree: TreeSearch
    failed: tuple[str, str] | None = None
    skipped: str | None = None
    paths: list[_Path] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed is None and self.tree.failed is None

    def fail(self, stage: str, error: str) -> None:
        if self.failed is None and self.tree.failed is None:
            self.failed = (stage, error)


def search_settings(config: BuildConfig) -> SearchSettings:
    s, p = config.search, config.policy
    return SearchSettings(
        build_seed=config.seed, mode=s.mode, samples=s.samples_per_problem, rounds=s.rounds, max_depth=s.max_depth,
        children=s.children_per_expansion, uct_c=s.uct_c, gamma=s.gamma, stop_after_positive=s.stop_after_positive,
        stop_after_negative=s.stop_after_negative, max_step_tokens=p.max_step_tokens,
        max_solution_tokens=p.max_solution_tokens, temperature=p.temperature, top_p=p.top_p,
        stop_at_answer=p.stop_at_answer,
    )


def mc_settings(config: BuildConfig) -> MCSettings:
    s, p = config.search, config.policy
    return MCSettings(
        build_seed=config.seed, rollouts=s.mc_rollouts, early_stop=s.mc_early_stop,
        max_tokens=p.max_solution_tokens, temperature=p.temperature, top_p=p.top_p,
        stop_at_answer=p.stop_at_answer, curtail=s.mc_curtail, label_threshold=config.fuse.mc_threshold,
    )


# -- signals on chosen paths ------------------------------------------------------------------


def _signal_paths(states: Sequence[_State]) -> tuple[list[_Path], list[SignalPath]]:
    """The chosen paths of the live states, and what a signal sees of each."""
    paths = [path for state in states if state.ok for path in state.paths]
    return paths, [
        SignalPath(path.problem, tuple(
            PathStep(StepContext(path.problem.question, node.steps[:-1], node.step_text), node.path, node.tool_check)
            for node in path.nodes
        ))
        for path in paths
    ]


def _run_path_signals(states: Sequence[_State], inputs: SignalInputs) -> None:
    """Every path signal that runs with this config (Lean, the step judge, ...: registry order) on
    every step of every chosen path of the live states, one batched call each. A problem the
    signal reports failed fails at its ``failed_stage`` and is left out of later signals; a run
    that raises fails every problem that has paths."""
    for signal in path_signals():
        if not signal.runs(inputs.config):
            continue
        paths, seen = _signal_paths(states)
        if not paths:
            continue
        try:
            output = signal.run(seen, inputs)
        except Exception as error:  # noqa: BLE001 - a crashed backend fails the problems it served
            for state in states:
                if state.paths:
                    state.fail(signal.failed_stage, error_text(error))
            continue
        for state in states:
            if state.ok and state.problem.problem_id in output.errors:
                state.fail(signal.failed_stage, output.errors[state.problem.problem_id])
        for path, results in zip(paths, output.results, strict=True):
            if path.problem.problem_id not in output.errors:
                path.results[signal.name] = results


# -- search ----------------------------------------------------------------------------------


def run_tree_searches(
    states: Sequence[_State], policy: Policy, tool: StepVerifier | None, ledger: Ledger
) -> int:
    """Advance every tree in lock-step; returns the number of generate rounds."""
    rounds = 0
    while True:
        tagged: list[tuple[str, GenerationRequest]] = []
        owners: list[_State] = []
        counts: list[int] = []
        for state in states:
            if not state.ok or state.tree.done:
                continue
            try:
                requests = state.tree.requests()
            except Exception as error:  # noqa: BLE001 - the problem fails, not the batch
                state.fail("search", error_text(error))
                continue
            if requests:
                owners.append(state)
                counts.append(len(requests))
                tagged += [(state.problem.problem_id, r) for r in requests]
        if not tagged:
            return rounds
        rounds += 1
        results = ledger.generate(policy, tagged)  # never raises: errors come back per request
        work: dict[str, list[StepContext]] = {}
        offset = 0
        for state, count in zip(owners, counts):
            try:
                work[state.problem.problem_id] = state.tree.absorb(results[offset : offset + count])
            except Exception as error:  # noqa: BLE001
                state.fail("search", error_text(error))
            offset += count
        live = [s for s in owners if s.ok and s.problem.problem_id in work]
        checks, errors = check_isolated(tool, {s.problem.problem_id: work[s.problem.problem_id] for s in live}, ledger,
                                        TOOL_DISABLED)
        for state in live:
            pid = state.problem.problem_id
            if pid in errors:
                state.fail("verify", errors[pid])
                continue
            try:
                state.tree.finish_round(checks[pid])
            except Exception as error:  # noqa: BLE001
                state.fail("search", error_text(error))


def choose_paths(tree: TreeSearch, limit: int) -> list[Node]:
    """Up to ``limit`` complete paths: correct and wrong alternately (a mix first), each list
    in tree order."""
    complete = tree.complete_paths()
    correct = [n for n in complete if n.reached_gold]
    wrong = [n for n in complete if not n.reached_gold]
    chosen: list[Node] = []
    for index in range(max(len(correct), len(wrong))):
        for group in (correct, wrong):
            if index < len(group) and len(chosen) < limit:
                chosen.append(group[index])
    return chosen


def _path_of(problem: Problem, leaf: Node) -> _Path:
    nodes = [n for n in reversed(leaf.ancestors()) if n.parent is not None]
    return _Path(problem, leaf, nodes, bool(leaf.reached_gold), leaf.final_answer)


# -- Monte Carlo -----------------------------------------------------------------------------


def _reported(process: SearchProcess, on_end: Callable[[], None]) -> SearchProcess:
    """``process`` (estimates sent and failures thrown pass through), then ``on_end()``."""
    yield from process
    on_end()


def _paths_estimated(key_lists: Sequence[list[str]], known: dict[str, MCEstimate],
                     on_path_done: Callable[[], None]) -> Callable[[str], None]:
    """A callback for each ended estimate that calls ``on_path_done`` once per path of
    ``key_lists`` (its prefix keys) as the last of its keys ends; a path whose keys are all
    ``known`` already is done at once."""
    waiting: dict[str, list[set[str]]] = {}  # key -> the keys still open of each path waiting on it
    for keys in key_lists:
        left = {key for key in keys if key not in known}
        if not left:
            on_path_done()
        for key in left:
            waiting.setdefault(key, []).append(left)

    def estimated(key: str) -> None:
        for left in waiting.pop(key, ()):
            left.discard(key)
            if not left:
                on_path_done()

    return estimated


def _estimate_paths(
    states: Sequence[_State], config: BuildConfig, policy: Policy, ledger: Ledger, judge: OutcomeJudge,
    account_by_path: bool, on_path_done: Callable[[], None] | None = None,
    on_plan: Callable[[EstimatePlan], None] | None = None,
) -> dict[str, MCEstimate]:
    """MC signals for every path of every live state (stage 4 of the module doc).
    ``on_path_done`` is called once per path as its first-error search ends, as the last of its
    per-step estimates ends, or at once when it needs no rollouts; ``on_plan`` once, before
    sampling, with the estimates this call plans (progress inside a pass)."""
    settings = mc_settings(config)
    known: dict[str, MCEstimate] = {}

    # Hybrid: where MC finds 0 after a verified step, the two disagree and MC's zero would
    # overrule the verifier (rule 3): confirm it with more rollouts first.
    hybrid = config.fuse.rule == "hybrid"
    confirm_verified = hybrid and config.search.mc_confirm_verified_zero
    confirm_every = hybrid and config.search.mc_confirm_every_zero

    def job(state_path: tuple[_State, _Path, int], step_index: int) -> PrefixJob:
        state, path, path_no = state_path
        node = path.nodes[step_index]
        pid = state.problem.problem_id
        account = f"{pid}#{path_no}" if account_by_path else pid
        key = f"{account}:{node.prefix_hash}"
        leans = path.results.get("lean", [])
        lean = leans[step_index] if step_index < len(leans) else None
        confirm_zero = confirm_every or (confirm_verified and verifier_decision(node.tool_check, lean) is True)
        return PrefixJob(key, pid, state.problem.question, state.problem.gold_answer, node.steps, account, confirm_zero)

    per_step: list[tuple[tuple[_State, _Path, int], int]] = []
    per_step_paths: list[list[str]] = []  # the prefix keys of each path estimated step by step
    searches: list[tuple[_State, _Path, int]] = []
    skip_disproved = config.fuse.rule == "hybrid" and config.search.skip_mc_after_disproved
    for state in states:
        if not state.ok:
            continue
        for path_no, path in enumerate(state.paths):
            owner = (state, path, path_no)
            n = len(path.nodes)
            # Hybrid: a disproved step is negative whatever MC says, and the steps after it come
            # after the path's first error, so MC is spent only on the prefixes before it.
            kind = _path_mc(path.correct, config)
            path.mc_horizon = _first_disproved(path) if (skip_disproved and kind != "inferred") else None
            sampled = n if path.mc_horizon is None else path.mc_horizon
            if kind == "inferred":
                if on_path_done is not None:
                    on_path_done()  # no rollouts: its labels are inferred
            elif kind == "search":
                if path.mc_horizon is not None:
                    # The search looks for the first error in steps 0..horizon; the disproved
                    # step stands in for the wrong final answer (assume_last_wrong).
                    path.search = FirstErrorSearch(path.mc_horizon + 1, assume_last_wrong=True)
                else:
                    path.search = FirstErrorSearch(n, assume_last_wrong=path.final_answer is not None)
                searches.append(owner)
            else:
                per_step += [(owner, i) for i in range(sampled)]
                per_step_paths.append([job(owner, i).key for i in range(sampled)])
    # Per-step estimates and every search's probes, sampled together (labelers.search.scheduler).
    on_estimated = None if on_path_done is None else _paths_estimated(per_step_paths, known, on_path_done)
    scheduler = EstimateScheduler(policy, settings, ledger, judge, known, on_estimated)
    if on_plan is not None:
        per_step_keys = frozenset(job(owner, index).key for owner, index in per_step) - known.keys()
        on_plan(EstimatePlan(per_step_keys, known, [owner[1].search for owner in searches]))
    probes = [search_process(owner[1].search, lambda index, owner=owner: job(owner, index)) for owner in searches]
    if on_path_done is not None:
        probes = [_reported(probe, on_path_done) for probe in probes]
    failed_keys = scheduler.run([job(owner, index) for owner, index in per_step], probes).errors
    for state in states:
        if not state.ok:
            continue
        sampled_keys: set[str] = set()
        for path_no, path in enumerate(state.paths):
            keys = [job((state, path, path_no), i).key for i in range(len(path.nodes))]
            bad = [failed_keys[k] for k in keys if k in failed_keys]
            if bad or (path.search is not None and path.search.failed):
                state.fail("mc", bad[0] if bad else str(path.search.failed))
                break
            path.results[MC.name] = _signals(path, keys, known, config)
            sampled_keys.update(k for k in keys if k in known and not known[k].exact)
        state.counters["mc_prefixes_sampled"] += len(sampled_keys)
    return known


def _path_mc(correct: bool, config: BuildConfig) -> Literal["inferred", "search", "per-step"]:
    """The MC a path gets: none for one reaching gold under first-error search (its labels are
    inferred, unless ``search.mc_correct_paths``), a first-error search for a wrong one, else
    per-step estimates."""
    if not config.search.first_error_search:
        return "per-step"
    if correct:
        return "per-step" if config.search.mc_correct_paths else "inferred"
    return "search"


def _first_disproved(path: _Path) -> int | None:
    """Index of the path's first step the tool or Lean disproved (Lean results come first)."""
    leans = path.results.get("lean", [])
    for index, node in enumerate(path.nodes):
        lean = leans[index] if index < len(leans) else None
        if verifier_decision(node.tool_check, lean) is False:
            return index
    return None


def _signals(path: _Path, keys: list[str], known: dict[str, MCEstimate], config: BuildConfig) -> list[MCSignal]:
    n = len(path.nodes)
    # The path's own final answer is an exact value of its full prefix (no rollout needed).
    last_exact = MCEstimate(int(path.correct), 1, exact=True) if path.final_answer is not None else None
    signals: list[MCSignal] = []
    for index, key in enumerate(keys):
        # A sampled value wins wherever one exists (this path's probes, or another path of the
        # tree with the same prefix); otherwise the search's inference, or the path's outcome.
        estimate = known.get(key)
        if estimate is None and index == n - 1:
            estimate = last_exact
        if estimate is None and path.mc_horizon is not None and index >= path.mc_horizon:
            # Not sampled (hybrid skip): a prefix holding a disproved step is taken as wrong.
            signals.append(MCSignal(inferred_label=False))
            continue
        if estimate is not None:
            signals.append(MCSignal(estimate.correct, estimate.total, exact=estimate.exact))
        elif path.search is not None:
            _, positive, _ = path.search.step_signal(index)
            signals.append(MCSignal(inferred_label=positive))
        elif path.correct:
            # The path itself reaches gold from every one of its prefixes: c >= 1.
            signals.append(MCSignal(inferred_label=True))
        else:
            signals.append(NO_MC)
    return signals


# -- rows ------------------------------------------------------------------------------------


def _step_rows(state: _State, config: BuildConfig, build_id: str, model_id: str) -> list[StepRow]:
    rows: list[StepRow] = []
    fuse = config.fuse
    problem = state.problem
    for path in state.paths:
        # Every registered signal's results by name; a signal that did not run holds its
        # ``missing`` result on every step (the tool's checks are on the nodes).
        signals = {s.name: path.results.get(s.name) or [s.missing] * len(path.nodes) for s in registered()}
        signals[TOOL.name] = [n.tool_check or TOOL_DISABLED for n in path.nodes]
        fused = fuse_path(signals, fuse, path.correct)
        consensus, _, _ = path_consensus(signals, fuse)
        state.counters["paths_consensus" if consensus else "paths_no_consensus"] += 1
        if fuse.consensus_filter and not consensus:
            state.counters["paths_dropped_consensus"] += 1
            continue
        keep, first = rows_to_keep([f.label for f in fused], fuse.after_first_error)
        state.counters["paths_labeled"] += 1
        path_id = f"{problem.problem_id}:{path.leaf.node_id}"
        seed = derive_seed(config.seed, problem.problem_id, path.leaf.path)
        steps = path_steps(signals)
        for index in range(keep):
            node, step, results = path.nodes[index], fused[index], steps[index]
            if first >= 0 and index > first and step.label:
                step = FusedStep(-1.0, False, "after_first_error", step.signals_agree)
            columns = {name: value for s in registered() for name, value in s.row_fields(results[s.name]).items()}
            rows.append(
                StepRow(
                    build_id=build_id,
                    problem_id=problem.problem_id,
                    source=problem.source,
                    path_id=path_id,
                    node_id=node.node_id,
                    step_index=index,
                    num_steps=len(path.nodes),
                    step_text=node.step_text,
                    prefix_hash=node.prefix_hash,
                    fused_reward=step.reward,
                    fused_label=step.label,
                    label_source=step.source,
                    signals_agree=step.signals_agree,
                    consensus=consensus,
                    rationale=build_rationale(results, step),
                    is_first_error=index == first,
                    path_final_answer=path.final_answer,
                    path_correct=path.correct if path.final_answer is not None else None,
                    generator_model=model_id,
                    seed=seed,
                    **columns,
                )
            )
    return rows


def _node_rows(state: _State, build_id: str, known: dict[str, MCEstimate]) -> list[NodeRow]:
    problem = state.problem
    # Estimates are keyed "<account>:<prefix_hash>", the account being the problem id or, for
    # given solutions, "<problem_id>#<path>".
    by_prefix: dict[str, MCEstimate] = {}
    for key, estimate in sorted(known.items()):
        account, _, digest = key.rpartition(":")
        if account.split("#", 1)[0] == problem.problem_id:
            by_prefix.setdefault(digest, estimate)
    rows = []
    for node in state.tree.root.iter_nodes():
        estimate = by_prefix.get(node.prefix_hash)
        rows.append(
            NodeRow(
                build_id=build_id,
                problem_id=problem.problem_id,
                source=problem.source,
                node_id=node.node_id,
                parent_id=node.parent.node_id if node.parent is not None else None,
                depth=node.depth,
                step_text=node.step_text,
                prefix_hash=node.prefix_hash,
                visits=node.visits,
                value_sum=node.value_sum,
                q_value=node.q_value,
                is_terminal=node.is_terminal,
                final_answer=node.final_answer,
                reached_gold=node.reached_gold,
                tool_verdict=node.tool_check.verdict.value if node.tool_check is not None else None,
                mc_value=estimate.value if estimate is not None else None,
            )
        )
    return rows


def _outcome(state: _State, build_id: str, steps: list[StepRow], ledger: Ledger,
             accounts: Sequence[str]) -> ProblemOutcome:
    problem = state.problem
    failure = state.failed or state.tree.failed
    usage = [ledger.per_problem[a] for a in accounts if a in ledger.per_problem]
    status = "failed" if failure else "skipped" if state.skipped else "labeled"
    return ProblemOutcome(
        build_id=build_id,
        problem_id=problem.problem_id,
        source=problem.source,
        question=problem.question,
        gold_answer=problem.gold_answer,
        status=status,
        failed_stage=failure[0] if failure else None,
        error=failure[1] if failure else state.skipped,
        num_paths=len({r.path_id for r in steps}),
        num_steps=len(steps),
        num_positive=sum(r.fused_label for r in steps),
        num_negative=sum(not r.fused_label for r in steps),
        rollouts=sum(u.rollouts for u in usage),
        prompt_tokens=sum(u.prompt_tokens for u in usage),
        completion_tokens=sum(u.completion_tokens for u in usage),
        wall_seconds=sum(u.wall_seconds for u in usage) + state.cpu_seconds,
    )


class GoldReach(NamedTuple):
    reached: int  # problems where the gold answer was reached
    problems: int  # problems with step rows


def gold_reach(steps: Sequence[StepRow]) -> GoldReach:
    """Over ``steps``: how many problems have rows, and on how many the gold answer was reached.

    Reached: a labeled path of the problem ends in the gold answer (``path_correct``), or a
    rollout from one of its prefixes does (``mc_correct > 0``, sampled). Elsewhere every MC value
    is 0 and each path's first error sits at the earliest step probed: that is the policy not
    solving the problem, not evidence about its steps (on ProcessBench OlympiadBench the 1.5B
    reached gold from no prefix of 10 wrong solutions, and MC binary scored F1 0.000)."""
    problems: set[str] = set()
    reached: set[str] = set()
    for row in steps:
        problems.add(row.problem_id)
        if row.path_correct or MC.reached_gold(row):
            reached.add(row.problem_id)
    return GoldReach(len(reached), len(problems))


def _label_paths(
    states: list[_State],
    config: BuildConfig,
    policy: Policy,
    lean: LeanVerifier | None,
    ledger: Ledger,
    judge: OutcomeJudge,
    build_id: str,
    account_by_path: bool = False,
    step_judge: Policy | None = None,
    tool: StepVerifier | None = None,
    on_path_done: Callable[[], None] | None = None,
    on_plan: Callable[[EstimatePlan], None] | None = None,
) -> BatchResult:
    """Stages 3-5 (path signals: Lean, step judge; MC; fusion and rows) for the paths already on
    ``states``. ``tool``: the tool verifier (None when off), for a path signal that reads it."""
    inputs = SignalInputs(config, ledger, policy, step_judge or policy, tool, lean)
    _run_path_signals(states, inputs)
    try:
        # The value signal: rules "tool", "lean" and "judge" never read MC, so no rollouts for them.
        known = (_estimate_paths(states, config, policy, ledger, judge, account_by_path, on_path_done, on_plan)
                 if MC.runs(config) else {})
    except Exception as error:  # noqa: BLE001 - a crashed backend fails the problems still in MC
        known = {}
        for state in states:
            if state.paths:
                state.fail(MC.failed_stage, error_text(error))
    steps: list[StepRow] = []
    nodes: list[NodeRow] = []
    outcomes: list[ProblemOutcome] = []
    model_id = policy.model_id
    totals: Counter = Counter()
    problem_counters: dict[str, dict[str, int]] = {}
    for state in states:
        started = time.perf_counter()
        own_steps: list[StepRow] = []
        if state.ok:
            try:
                own_steps = _step_rows(state, config, build_id, model_id)
                nodes += _node_rows(state, build_id, known)
            except Exception as error:  # noqa: BLE001
                own_steps = []
                state.fail("fuse", error_text(error) + " | " + traceback.format_exc(limit=2).splitlines()[-1])
        state.cpu_seconds += time.perf_counter() - started
        steps += own_steps
        pid = state.problem.problem_id
        accounts = [pid] + ([f"{pid}#{i}" for i in range(len(state.paths))] if account_by_path else [])
        outcomes.append(_outcome(state, build_id, own_steps, ledger, accounts))
        state.counters["failed_problems"] += not state.ok
        state.counters["merged_duplicate_steps"] += state.tree.merged_duplicates
        problem_counters[pid] = dict(state.counters)
        totals.update(state.counters)
    ledger.usage.answer_check_seconds += judge.seconds  # the pass's answer checks (cost profile)
    return BatchResult(steps, nodes, outcomes, ledger.usage, dict(totals), problem_counters)


def label_batch(
    problems: Sequence[Problem],
    config: BuildConfig,
    policy: Policy,
    tool: StepVerifier | None,
    lean: LeanVerifier | None,
    build_id: str,
    step_judge: Policy | None = None,
) -> BatchResult:
    """Label a batch of problems (stages: module doc). Never raises for a problem-level
    failure: that problem's outcome has ``status = "failed"``, ``failed_stage`` and ``error``.
    ``step_judge``: a separate judge model's policy (default: ``policy`` judges)."""
    ledger = Ledger()
    settings = search_settings(config)
    use_tool = tool if config.tool.enabled else None
    with AnswerJudge() as answer_judge:
        judge = OutcomeJudge(answer_judge)
        states: list[_State] = []
        seen: set[str] = set()
        duplicates = 0
        for problem in problems:
            # A repeated problem_id would repeat row keys; the loader reports duplicates, the
            # batch labels the first copy and counts the rest (counters["duplicate_problems"]).
            if problem.problem_id in seen:
                duplicates += 1
                continue
            seen.add(problem.problem_id)
            tree = TreeSearch(problem.problem_id, problem.question, problem.gold_answer, settings, judge)
            states.append(_State(problem, tree))
        rounds = run_tree_searches(states, policy, use_tool, ledger)
        for state in states:
            if not state.ok or state.skipped:
                continue
            complete = state.tree.complete_paths()
            state.counters["paths_complete"] += len(complete)
            state.counters["paths_complete_correct"] += sum(bool(n.reached_gold) for n in complete)
            state.counters["search_iterations"] += state.tree.iterations
            chosen = choose_paths(state.tree, config.search.max_paths_per_problem)
            state.paths = [_path_of(state.problem, leaf) for leaf in chosen]
            if not state.paths:
                state.skipped = "no complete solution path within the search budget"
        result = _label_paths(states, config, policy, lean, ledger, judge, build_id, step_judge=step_judge,
                              tool=use_tool)
    result.counters["search_rounds"] = rounds
    result.counters["duplicate_problems"] = duplicates
    result.counters["generate_calls"] = ledger.generate_calls
    return result


def label_given_solutions(
    problems: Sequence[Problem],
    solutions: Sequence[Sequence[Sequence[str]]],
    config: BuildConfig,
    policy: Policy,
    tool: StepVerifier | None,
    lean: LeanVerifier | None,
    build_id: str = "given",
    step_judge: Policy | None = None,
    on_path_done: Callable[[], None] | None = None,
    on_plan: Callable[[EstimatePlan], None] | None = None,
) -> BatchResult:
    """Label given step lists: ``solutions[i]`` holds the solutions (each a list of step
    texts) of ``problems[i]``. Tool checks (one call), Lean (one call), MC (per-step, or
    first-error search on wrong solutions when ``search.first_error_search``; rollouts counted
    per solution and summed into the problem's outcome), fusion by ``fuse.rule``. Every given
    step keeps a row unless ``fuse.after_first_error = "truncate"``. ``on_path_done``: called
    as each solution's first-error search ends, or at once for one that needs no rollouts;
    ``on_plan``: with the prefix estimates the call plans, before MC samples (not called when
    the call runs no MC) -- a caller's progress inside the call."""
    if len(problems) != len(solutions):
        raise ValueError("one list of solutions per problem")
    ledger = Ledger()
    settings = search_settings(config)
    use_tool = tool if config.tool.enabled else None
    with AnswerJudge() as answer_judge:
        judge = OutcomeJudge(answer_judge)
        states: list[_State] = []
        for problem, given in zip(problems, solutions):
            tree = TreeSearch(problem.problem_id, problem.question, problem.gold_answer, settings, judge)
            tree._phase = "done"  # noqa: SLF001 - no search: the paths are given
            state = _State(problem, tree)
            states.append(state)
            for steps in given:
                node = tree.root
                for text in steps:
                    node = _given_child(tree, node, text)
                answer = judge.final_answer("\n".join(steps))
                node.final_answer = node.final_answer or answer
                node.is_terminal = True
                correct = answer is not None and judge.equal(answer, problem.gold_answer)
                node.reached_gold = correct if answer is not None else None
                nodes = [n for n in reversed(node.ancestors()) if n.parent is not None]
                state.paths.append(_Path(problem, node, nodes, correct, answer))
            if not any(p.nodes for p in state.paths):
                state.skipped = "no steps given"
            state.paths = [p for p in state.paths if p.nodes]
        # The tool signal on the given steps (in a build it runs inside the search): one call.
        paths, seen = _signal_paths(states)
        checked = TOOL.run(seen, SignalInputs(config, ledger, policy, step_judge or policy, use_tool, lean))
        for state in states:
            if state.problem.problem_id in checked.errors:
                state.fail(TOOL.failed_stage, checked.errors[state.problem.problem_id])
        for path, checks in zip(paths, checked.results, strict=True):
            for node, check in zip(path.nodes, checks):
                node.tool_check = check
        return _label_paths(states, config, policy, lean, ledger, judge, build_id, account_by_path=True,
                            step_judge=step_judge, tool=use_tool, on_path_done=on_path_done, on_plan=on_plan)


def expected_estimates(problems: Sequence[Problem], solutions: Sequence[Sequence[Sequence[str]]],
                       config: BuildConfig) -> list[float]:
    """The prefix estimates :func:`label_given_solutions` is expected to sample for each problem's
    given solutions, before it runs (a pass's progress: the chunks not begun). Per solution of n
    steps, by :func:`_path_mc` as :func:`_estimate_paths` decides:

    - wrong, first-error search: ``expected_probes(n - 1)`` (``n`` when it states no answer);
    - correct, first-error search: 0 (inferred), unless ``search.mc_correct_paths``;
    - otherwise every prefix but those whose last step states an answer (exact, no rollouts).

    Before the tool runs: a step it disproves can only shorten the hybrid's search."""
    if not MC.runs(config):
        return [0.0] * len(problems)
    expected: list[float] = []
    with AnswerJudge() as answer_judge:
        judge = OutcomeJudge(answer_judge)
        for problem, given in zip(problems, solutions, strict=True):
            total = 0.0
            for steps in given:
                if not steps:
                    continue
                answer = judge.final_answer("\n".join(steps))
                correct = answer is not None and judge.equal(answer, problem.gold_answer)
                kind = _path_mc(correct, config)
                if kind == "search":
                    total += expected_probes(len(steps) - 1 if answer is not None else len(steps))
                elif kind == "per-step":
                    total += sum(judge.final_answer(step) is None for step in steps)
            expected.append(total)
    return expected


def _given_child(tree: TreeSearch, parent: Node, text: str) -> Node:
    """A chain node for a given step; equal prefixes of two given solutions share nodes."""
    existing = parent.child_with_text(text)
    if existing is not None:
        return existing
    steps = (*parent.steps, text)
    from labelers.identity import prefix_hash

    child = Node((*parent.path, len(parent.children)), parent, text, steps, prefix_hash(tree.question, steps), "given")
    parent.children.append(child)
    return child
