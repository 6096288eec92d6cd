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

**Spare probes** (``search.spare_probes``). A search's probes depend on one another, so near the
end of a pass, when few searches are left, the decoder runs a handful of sequences per step while
each search waits for its probe: the pass ends on a chain of narrow steps that cost nearly what
full ones cost on a CPU. While the decoder reports idle slots (``policy.idle_sequences``: ids and
KV cells no live or waiting job holds), a search's probe is sampled together with the probes that
may follow it, one for each answer (:meth:`FirstErrorSearch.following_probes`); whichever way the
probe reads, the next one is then already under way or done, and the search can advance two
levels per probe. Both branches or none: which one the search takes is not known. A spare estimate
is kept apart and joins ``known`` only when its search asks for it, so the searches record the
same probes and the rows the same estimates as without spares; the branch not taken costs its
rollouts (``unused_spare_rollouts``). A spare's later waves are asked only on idle slots too.

The labels do not depend on the schedule: every request's seed comes from (build seed, problem,
prefix, chunk), never from the batch, so a batch-invariant backend gives the same estimates in
any order; the embedded decoder's texts can differ in rare rows with the batch they were decoded
in, as with any change of batch (docs/generation.md).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
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
    wave_plan,
)


@dataclass(frozen=True)
class Probe:
    """A search's next prefix to estimate, and the prefixes of the probes that may follow it
    (one for each answer: :meth:`FirstErrorSearch.following_probes`)."""

    job: PrefixJob
    following: tuple[PrefixJob, ...] = ()


# A first-error search as a process: yields each probe, is sent its estimate (or thrown
# RequestFailed).
SearchProcess = Generator[Probe, MCEstimate, None]


def search_process(search: FirstErrorSearch, job_for: Callable[[int], PrefixJob]) -> SearchProcess:
    """Probe after probe until ``search`` is done; a failed estimate ends it (``search.failed``)."""
    while (probe := search.next_probe()) is not None:
        following = tuple(job_for(index) for index in search.following_probes())
        try:
            estimate = yield Probe(job_for(probe), following)
        except RequestFailed as failure:
            search.failed = str(failure)
            return
        search.record(probe, estimate)


@dataclass
class _Estimating:
    """A prefix being estimated, and the searches waiting for its estimate. ``spare``: started on
    idle decoder slots before any search asked for it (module doc, "Spare probes")."""

    job: PrefixJob
    process: EstimateProcess
    searches: list[SearchProcess] = field(default_factory=list)
    spare: bool = False
    spare_drawn: int = 0  # rollouts drawn while it was a spare


class EstimateScheduler:
    """Runs estimate and search processes together (module doc).

    ``known`` (job key -> estimate) holds estimates made earlier, taken without sampling; every
    estimate this scheduler makes for a caller or a search is added to it. :attr:`batch` holds
    this scheduler's own estimates and the keys whose requests failed. ``on_estimated(key)`` is
    called as each such estimate ends, made or failed (progress inside a pass).

    ``spare_probes``: while the policy reports idle decoder slots (``idle_sequences``, the
    embedded batched decoder), a search's next probe is sampled together with the two probes
    that may follow it (module doc, "Spare probes"). A spare estimate joins ``known`` only when
    its search asks for it, so the labels are those of the search without spares;
    :attr:`spare_rollouts` and :attr:`unused_spare_rollouts` say what the spares cost.
    """

    def __init__(self, policy: Policy, settings: MCSettings, ledger: Ledger, judge: OutcomeJudge,
                 known: dict[str, MCEstimate] | None = None,
                 on_estimated: Callable[[str], None] | None = None, spare_probes: bool = False) -> None:
        self.policy = policy
        self.settings = settings
        self.ledger = ledger
        self.judge = judge
        self.known = {} if known is None else known
        self.on_estimated = on_estimated
        self.batch = MCBatch()
        self._running: dict[str, _Estimating] = {}
        idle = getattr(policy, "idle_sequences", None) if spare_probes else None
        self._idle_sequences: Callable[[int], int] | None = idle if callable(idle) else None
        self._first_wave = wave_plan(settings.rollouts, settings.early_stop, settings.curtail)[0][0]
        self._asked_now = 0  # completions asked in the current answer, not yet handed to the policy
        self._spare_done: dict[str, MCEstimate] = {}  # spare estimates no search has asked for (yet)
        # Probes being sampled whose following probes have no spare yet: (probe key, following), oldest first.
        self._unspared: list[tuple[str, tuple[PrefixJob, ...]]] = []
        self.spare_rollouts = 0  # rollouts sampled for spare estimates, used or not
        self._spare_rollouts_used = 0

    @property
    def unused_spare_rollouts(self) -> int:
        """Rollouts of spare estimates that no search asked for (the price of the spares)."""
        return self.spare_rollouts - self._spare_rollouts_used

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
            asked += self._probe(first, search)
        self.ledger.stream(self.policy, asked, self._answer)
        return self.batch

    def run_processes(self, processes: Sequence[tuple[PrefixJob, EstimateProcess]]) -> MCBatch:
        """Run estimate processes built by the caller (e.g. confirmation of given zeros)."""
        asked: list[Asked[_Estimating]] = []
        for job, process in processes:
            asked += self._start(job, process, None)
        self.ledger.stream(self.policy, asked, self._answer)
        return self.batch

    def _answer(self, running: _Estimating, result: GenerationResult) -> list[Asked[_Estimating]]:
        """The ledger's responder: one result in, what it leads to out."""
        self._asked_now = 0
        asked = self._advance(running, result)
        return asked + self._spares()

    def _probe(self, probe: Probe, search: SearchProcess) -> list[Asked[_Estimating]]:
        """``search``'s next probe, and spare estimates of the probes that may follow it while it
        is sampled (none when its estimate was at hand: the search has moved on already)."""
        asked = self._ask(probe.job, search)
        if self._idle_sequences is not None and probe.following and probe.job.key in self._running:
            self._unspared.append((probe.job.key, probe.following))
        return asked

    def _ask(self, job: PrefixJob, search: SearchProcess | None) -> list[Asked[_Estimating]]:
        """``job``'s estimate, for ``search`` (None: for the caller): taken, waited for or started."""
        if job.key in self._spare_done:  # sampled on spare slots before anyone asked: taken now
            estimate = self.known[job.key] = self.batch.estimates[job.key] = self._spare_done.pop(job.key)
            self._spare_rollouts_used += estimate.rollouts
            if self.on_estimated is not None:
                self.on_estimated(job.key)
        if job.key in self.known or job.key in self.batch.errors:
            return [] if search is None else self._resume(search, job.key)
        running = self._running.get(job.key)
        if running is not None:
            if running.spare:  # a spare being sampled is now asked for: an estimate like any other
                running.spare = False
                self._spare_rollouts_used += running.spare_drawn
            if search is not None:
                running.searches.append(search)
            return []
        return self._start(job, estimate_process(job, self.settings, self.judge), search)

    def _spares(self) -> list[Asked[_Estimating]]:
        """Spare estimates of the probes that may follow those being sampled, oldest probe first,
        while the decoder has idle slots for the first wave of both branches (both or none: which
        one a search takes is not known yet). Tried after every answer: slots idle up as the
        batch thins out."""
        asked: list[Asked[_Estimating]] = []
        still: list[tuple[str, tuple[PrefixJob, ...]]] = []
        for probe_key, following in self._unspared:
            if probe_key not in self._running:
                continue  # estimated: its search has moved on
            new = [job for job in following if not (job.key in self.known or job.key in self.batch.errors
                                                    or job.key in self._running or job.key in self._spare_done)]
            if new and self._idle() < len(new) * self._first_wave:
                still.append((probe_key, following))
                continue
            for job in new:
                asked += self._start(job, estimate_process(job, self.settings, self.judge), None, spare=True)
        self._unspared = still
        return asked

    def _idle(self) -> int:
        assert self._idle_sequences is not None
        return self._idle_sequences(self.settings.max_tokens) - self._asked_now

    def _start(self, job: PrefixJob, process: EstimateProcess, search: SearchProcess | None,
               spare: bool = False) -> list[Asked[_Estimating]]:
        running = _Estimating(job, process, [] if search is None else [search], spare=spare)
        self._running[job.key] = running
        return self._advance(running, None)

    def _advance(self, running: _Estimating, result: GenerationResult | None) -> list[Asked[_Estimating]]:
        """Send ``result`` to an estimate; what it asks next, or what its searches ask once it is done."""
        key = running.job.key
        if result is not None and running.spare:
            running.spare_drawn += len(result.completions)
            self.spare_rollouts += len(result.completions)
        try:
            request = running.process.send(result)  # type: ignore[arg-type]  # None starts it
        except StopIteration as stop:
            if running.spare:
                self._spare_done[key] = stop.value
            else:
                self.known[key] = self.batch.estimates[key] = stop.value
        except RequestFailed as failure:
            if not running.spare:  # a spare that fails is forgotten: asked later, it starts again
                self.batch.errors[key] = str(failure)
        else:
            if running.spare and result is not None and self._idle() < request.n:
                # A spare's next wave (undecided first wave, confirmation) only on idle slots
                # too; otherwise it is dropped, and started again should a search ask for it.
                del self._running[key]
                return []
            self._asked_now += request.n
            return [(running.job.account or running.job.problem_id, request, running)]
        del self._running[key]
        if running.spare:
            return []
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
                probe = search.throw(RequestFailed(self.batch.errors[key]))
            else:
                probe = search.send(self.known[key])
        except StopIteration:
            return []
        return self._probe(probe, search)


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
