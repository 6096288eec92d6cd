"""Monte Carlo estimates and first-error searches, sampled as their answers come in.

A labeling pass asks for many MC estimates and runs first-error searches whose next probe
depends on the last estimate. Both are processes (generators):

- an estimate (:func:`~labelers.search.montecarlo.estimate_process`) yields the requests it
  needs one after another (its waves, then confirmation) and is sent each one's result;
- a search (:func:`search_process`) yields the prefix job of its next probe and is sent that
  prefix's estimate.

:class:`EstimateScheduler` drives all of a pass's processes over one
:meth:`~labelers.search.ledger.Ledger.stream`. With a streaming policy (the embedded batched
decoder) the request an answer leads to joins the running batch at once, so the batch stays full
instead of draining to the slowest rollout of every wave of every round; any other policy gets
rounds of one ``generate`` call, each holding whatever all processes ask at that moment (a search
whose probe was decided in one wave asks its next probe beside other searches' second waves).

A prefix is estimated once per scheduler: a probe of a prefix already estimated (another path of
the tree, the per-step estimates of a correct path) takes that estimate without sampling, a probe
of one being estimated waits for it. A failed request fails its estimate and every search
waiting on it (``FirstErrorSearch.failed`` holds the message).

The labels do not depend on the schedule: every request's seed comes from (build seed, problem,
prefix, chunk), never from the batch, so a batch-invariant backend gives the same estimates in
any order; the embedded decoder's texts can differ in rare rows with the batch they were decoded
in, as with any change of batch (docs/generation.md).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field

from labelers.policy.base import GenerationResult, Policy
from labelers.search.first_error import FirstErrorSearch
from labelers.search.ledger import Asked, Ledger
from labelers.search.montecarlo import (
    EstimateProcess,
    MCBatch,
    MCEstimate,
    MCSettings,
    OutcomeJudge,
    PrefixJob,
    RequestFailed,
    confirm_process,
    estimate_process,
)

# A first-error search as a process: yields the prefix job of each probe, is sent its estimate
# (or thrown RequestFailed).
SearchProcess = Generator[PrefixJob, MCEstimate, None]


def search_process(search: FirstErrorSearch, job_for: Callable[[int], PrefixJob]) -> SearchProcess:
    """Probe after probe until ``search`` is done; a failed estimate ends it (``search.failed``)."""
    while (probe := search.next_probe()) is not None:
        try:
            estimate = yield job_for(probe)
        except RequestFailed as failure:
            search.failed = str(failure)
            return
        search.record(probe, estimate)


@dataclass(frozen=True)
class EstimatePlan:
    """The prefix estimates one labeling call plans, read while it runs (the progress line's
    ETA: a streamed call's searches advance together and end together, so solutions done say
    little about the time left until the end).

    A unit is one sampled prefix estimate: a per-step job (``per_step_keys``, those not
    ``known`` when the call began) or a search's probe. :meth:`ended` counts the per-step
    estimates in ``known`` and the probes the searches recorded; :meth:`planned` adds each
    search's expected remaining probes (:meth:`FirstErrorSearch.expected_probes_left`), so it
    moves as searches narrow down and equals :meth:`ended` once the call is over (a failed
    per-step estimate stays planned). An exact estimate (a full path's own answer, no rollouts)
    leaves both as it ends. Read from another thread without a lock: sizes and membership of
    containers the scheduler only adds to, good enough for an estimate of time."""

    per_step_keys: frozenset[str]
    known: Mapping[str, MCEstimate]
    searches: Sequence[FirstErrorSearch]

    def _per_step_ended(self) -> tuple[int, int]:
        """(sampled, exact) per-step estimates ended so far."""
        ended = [estimate for key in self.per_step_keys if (estimate := self.known.get(key)) is not None]
        exact = sum(estimate.exact for estimate in ended)
        return len(ended) - exact, exact

    def ended(self) -> int:
        return self._per_step_ended()[0] + sum(len(s.probes) for s in self.searches)

    def planned(self) -> float:
        searched = sum(len(s.probes) + s.expected_probes_left() for s in self.searches)
        return len(self.per_step_keys) - self._per_step_ended()[1] + searched


@dataclass
class _Estimating:
    """A prefix being estimated, and the searches waiting for its estimate."""

    job: PrefixJob
    process: EstimateProcess
    searches: list[SearchProcess] = field(default_factory=list)


class EstimateScheduler:
    """Runs estimate and search processes together (module doc).

    ``known`` (job key -> estimate) holds estimates made earlier, taken without sampling; every
    estimate this scheduler makes is added to it. :attr:`batch` holds this scheduler's own
    estimates and the keys whose requests failed. ``on_estimated(key)`` is called as each
    estimate this scheduler makes ends, made or failed (progress inside a pass).
    """

    def __init__(self, policy: Policy, settings: MCSettings, ledger: Ledger, judge: OutcomeJudge,
                 known: dict[str, MCEstimate] | None = None,
                 on_estimated: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self.settings = settings
        self.ledger = ledger
        self.judge = judge
        self.known = {} if known is None else known
        self.on_estimated = on_estimated
        self.batch = MCBatch()
        self._running: dict[str, _Estimating] = {}

    def run(self, jobs: Sequence[PrefixJob] = (), searches: Sequence[SearchProcess] = ()) -> MCBatch:
        """Estimate ``jobs`` and run ``searches`` to their end, all sampled together."""
        asked: list[Asked[_Estimating]] = []
        for job in jobs:
            asked += self._ask(job, None)
        for search in searches:
            try:
                first = next(search)
            except StopIteration:
                continue  # nothing to probe (one step, wrong final answer)
            asked += self._ask(first, search)
        self.ledger.stream(self.policy, asked, self._advance)
        return self.batch

    def run_processes(self, processes: Sequence[tuple[PrefixJob, EstimateProcess]]) -> MCBatch:
        """Run estimate processes built by the caller (e.g. confirmation of given zeros)."""
        asked: list[Asked[_Estimating]] = []
        for job, process in processes:
            asked += self._start(job, process, None)
        self.ledger.stream(self.policy, asked, self._advance)
        return self.batch

    def _ask(self, job: PrefixJob, search: SearchProcess | None) -> list[Asked[_Estimating]]:
        """``job``'s estimate, for ``search`` (None: for the caller): taken, waited for or started."""
        if job.key in self.known or job.key in self.batch.errors:
            return [] if search is None else self._resume(search, job.key)
        running = self._running.get(job.key)
        if running is not None:
            if search is not None:
                running.searches.append(search)
            return []
        return self._start(job, estimate_process(job, self.settings, self.judge), search)

    def _start(self, job: PrefixJob, process: EstimateProcess,
               search: SearchProcess | None) -> list[Asked[_Estimating]]:
        running = _Estimating(job, process, [] if search is None else [search])
        self._running[job.key] = running
        return self._advance(running, None)

    def _advance(self, running: _Estimating, result: GenerationResult | None) -> list[Asked[_Estimating]]:
        """Send ``result`` to an estimate; what it asks next, or what its searches ask once it is done."""
        key = running.job.key
        try:
            request = running.process.send(result)  # type: ignore[arg-type]  # None starts it
        except StopIteration as stop:
            self.known[key] = self.batch.estimates[key] = stop.value
        except RequestFailed as failure:
            self.batch.errors[key] = str(failure)
        else:
            return [(running.job.account or running.job.problem_id, request, running)]
        del self._running[key]
        if self.on_estimated is not None:
            self.on_estimated(key)
        asked: list[Asked[_Estimating]] = []
        for search in running.searches:
            asked += self._resume(search, key)
        return asked

    def _resume(self, search: SearchProcess, key: str) -> list[Asked[_Estimating]]:
        """Give ``search`` the estimate (or the failure) of ``key``; start its next probe."""
        try:
            if key in self.batch.errors:
                job = search.throw(RequestFailed(self.batch.errors[key]))
            else:
                job = search.send(self.known[key])
        except StopIteration:
            return []
        return self._ask(job, search)


def estimate_prefixes(
    jobs: Sequence[PrefixJob], policy: Policy, settings: MCSettings, ledger: Ledger, judge: OutcomeJudge
) -> MCBatch:
    """MC estimates of all ``jobs``, sampled together."""
    return EstimateScheduler(policy, settings, ledger, judge).run(jobs)


def confirm_zeros(
    zeros: Sequence[tuple[PrefixJob, MCEstimate]], n: int, policy: Policy, settings: MCSettings, ledger: Ledger,
    judge: OutcomeJudge,
) -> MCBatch:
    """:func:`~labelers.search.montecarlo.confirm_process` for every ``(job, zero)``, sampled together."""
    scheduler = EstimateScheduler(policy, settings, ledger, judge)
    return scheduler.run_processes([(job, confirm_process(job, zero, n, settings, judge)) for job, zero in zeros])
