"""Monte Carlo value of a step prefix (Math-Shepherd), with adaptive early stop.

From a prefix s (question + steps 1..i) sample k rollouts to a final answer; with c of them
reaching the gold answer::

    mc_value(s) = c / k          (soft label)
    hard_label(s) = c > 0        (Math-Shepherd hard estimate)

Adaptive k (``mc_early_stop = m``, 0 < m < k): the first chunk samples m rollouts; when all m
agree (all reach gold, or none does) the prefix is decided and sampling stops there, giving the
estimate c/m in {0, 1}. Otherwise the remaining k - m are sampled (total k). The early estimate
is exact for the hard label when all m succeed (c > 0 either way); when all m fail, the full k
could still have found a success: the probability of missing one is (1 - p)^(k - m) for a true
success rate p, the (documented) bias of early stopping toward 0 on hard prefixes.

**Curtailing** (``search.mc_curtail``): the label a consumer reads is ``c / k > t`` (t =
``fuse.mc_threshold``, 0 by default; the first-error search reads ``c > 0``). Once ``c > t * k``
it is positive whatever the undrawn rollouts give, so sampling stops there: rollouts are drawn in
waves of 1, then up to m, then up to k (:func:`wave_plan`), and a prefix leaves after the wave
that decides it. The label is the one all k rollouts would give on the same draws; only the
value changes: c / drawn, biased up (1/1 after a first success), so soft labels want it off.
Expected rollouts of a prefix with success rate p, k = 4, no adaptive stop:
``1 + 3 (1 - p)`` instead of 4 (p = 0.8: 1.6). Negatives cost all k either way.

**Confirmation** (:func:`confirm_process`): an estimate of 0 where a verifier proved the prefix's
last step gets ``n`` more rollouts (seed chunk 3) and is replaced by the pooled estimate. A
zero from k rollouts of a weak policy is the noisiest evidence the fusion acts on: from a
correct prefix with success rate p it happens with probability (1 - p)^k; pooling 2k rollouts
squares that.

A prefix whose last step already gives a final answer needs no rollout: its value is exact,
1/1 when the answer equals gold, 0/1 otherwise (``exact = True``).

Each prefix's estimate is a process (:func:`estimate_process`): it asks for its waves one after
another (chunk 1, then chunk 2 when undecided; curtailed: chunks c1, c2, c3), then for the
confirmation of a zero (chunk 3, curtailed 3 and 3b). :mod:`labelers.search.scheduler` runs the
processes of all prefixes of all problems together. Seeds: ``derive_seed(build_seed, problem_id,
("mc", prefix_hash, chunk))`` -- independent of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from labelers.answers import AnswerJudge, answers_equal, extract_final_answer
from labelers.identity import derive_seed, prefix_hash
from labelers.policy.base import GenerationRequest, GenerationResult
from labelers.policy.prompts import assistant_prefix, solution_messages


@dataclass(frozen=True)
class MCEstimate:
    """c correct rollouts out of ``total`` from one prefix."""

    correct: int
    total: int
    early_stopped: bool = False
    exact: bool = False  # the prefix already ends in a final answer: value known without rollouts
    curtailed: bool = False  # sampling stopped once the label was decided (value c / drawn, biased up)

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def hard_label(self) -> bool:
        return self.correct > 0

    @property
    def rollouts(self) -> int:
        """Rollouts actually sampled (0 for an exact value)."""
        return 0 if self.exact else self.total


@dataclass(frozen=True)
class PrefixJob:
    """One prefix to estimate. ``key`` routes the estimate back to the caller."""

    key: str
    problem_id: str
    question: str
    gold_answer: str
    steps: tuple[str, ...]
    account: str | None = None  # ledger key the rollouts are charged to (default: problem_id)
    confirm_zero: bool = False  # an estimate of 0 gets k more rollouts (:func:`confirm_process`)


@dataclass
class MCSettings:
    """What the estimator needs from the build config."""

    build_seed: int
    rollouts: int = 8
    early_stop: int = 4
    max_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    answer_timeout_s: float = 5.0
    stop_at_answer: bool = True  # a rollout ends with the line that completes its answer
    curtail: bool = False  # stop a prefix once its label is decided (module doc, "Curtailing")
    label_threshold: float = 0.0  # fuse.mc_threshold: the label is c / k > this


@dataclass
class OutcomeJudge:
    """Decides whether a text reaches the gold answer; caches answer comparisons."""

    answer_judge: AnswerJudge | None = None
    timeout_s: float = 5.0
    seconds: float = 0.0  # spent in reaches_gold (the cost profile's answer-check seconds)
    _cache: dict[tuple[str, str], bool] = field(default_factory=dict)

    def final_answer(self, text: str) -> str | None:
        """The final answer ``text`` states (boxed, ####, "the answer is"), no last-number guess."""
        return extract_final_answer(text, allow_fallback=False)

    def equal(self, predicted: str, gold: str) -> bool:
        key = (predicted, gold)
        if key not in self._cache:
            self._cache[key] = answers_equal(predicted, gold, self.timeout_s, judge=self.answer_judge)
        return self._cache[key]

    def reaches_gold(self, text: str, gold: str) -> bool:
        started = time.perf_counter()
        try:
            answer = self.final_answer(text)
            return answer is not None and self.equal(answer, gold)
        finally:
            self.seconds += time.perf_counter() - started


@dataclass
class MCBatch:
    """Estimates by job key; ``errors`` holds the keys whose requests failed, with the message."""

    estimates: dict[str, MCEstimate] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _request(job: PrefixJob, settings: MCSettings, n: int, chunk: int | str) -> GenerationRequest:
    digest = prefix_hash(job.question, job.steps)
    return GenerationRequest(
        messages=solution_messages(job.question),
        assistant_prefix=assistant_prefix(job.steps),
        n=n,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=(),
        stop_at_answer=settings.stop_at_answer,
        seed=derive_seed(settings.build_seed, job.problem_id, ("mc", digest, chunk)),
        tag=f"{job.problem_id}/mc/{digest}/{chunk}",
    )


def wave_plan(rollouts: int, early_stop: int, curtail: bool) -> list[tuple[int, str]]:
    """(rollouts, seed chunk) of each ``generate`` call that estimates a prefix, in order.

    Without curtailing: ``[(m, "1"), (k - m, "2")]`` with adaptive k, else ``[(k, "1")]``.
    Curtailed: one rollout first (most prefixes of a solution the policy can finish are decided
    by it), then up to m, then up to k: ``[(1, "c1"), (m - 1, "c2"), (k - m, "c3")]``.
    """
    k = rollouts
    m = early_stop if 0 < early_stop < k else 0
    if not curtail:
        return [(m, "1"), (k - m, "2")] if m else [(k, "1")]
    sizes = [1] + ([m - 1] if m > 1 else []) + ([k - m] if m else [k - 1])
    return [(size, f"c{wave}") for wave, size in enumerate((s for s in sizes if s > 0), 1)]


class RequestFailed(Exception):
    """A request of an estimate came back with an error (its message): the estimate fails."""


# An estimate as a process: yields the requests it needs one after another (a wave, the next
# wave, confirmation), is sent each one's result, returns the estimate (raises RequestFailed).
EstimateProcess = Generator[GenerationRequest, GenerationResult, MCEstimate]


def _waves(
    job: PrefixJob, drawn: tuple[int, int], plan: Sequence[tuple[int, str]],
    decide: Callable[[int, int], MCEstimate | None], settings: MCSettings, judge: OutcomeJudge,
) -> EstimateProcess:
    """Sample ``job`` wave by wave until ``decide(correct, total)`` gives an estimate; ``drawn``
    holds (correct, total) drawn before the first wave. Undecided after the last wave: the plain
    estimate of what it drew."""
    correct, total = drawn
    for size, chunk in plan:
        result = yield _request(job, settings, size, chunk)
        if result.error is not None:
            raise RequestFailed(result.error)
        correct += sum(judge.reaches_gold(c.text, job.gold_answer) for c in result.completions)
        total += len(result.completions)
        estimate = decide(correct, total)
        if estimate is not None:
            return estimate
    return MCEstimate(correct, total)


def _decided_positive(correct: int, planned: int, settings: MCSettings) -> bool:
    """Curtailing: the label is positive whatever the remaining rollouts give (c > t * k, so also
    c > 0, the first-error search's test)."""
    return settings.curtail and correct > settings.label_threshold * planned


def estimate_process(job: PrefixJob, settings: MCSettings, judge: OutcomeJudge) -> EstimateProcess:
    """The MC estimate of one prefix (module doc): exact when its last step states an answer,
    else waves of rollouts, then confirmation of a zero where the job asks for it."""
    if job.steps and judge.final_answer(job.steps[-1]) is not None:
        return MCEstimate(int(judge.reaches_gold(job.steps[-1], job.gold_answer)), 1, exact=True)
    k = settings.rollouts
    m = settings.early_stop if 0 < settings.early_stop < k else 0

    def decide(correct: int, total: int) -> MCEstimate | None:
        if total >= k:
            return MCEstimate(correct, total)
        if _decided_positive(correct, k, settings):
            return MCEstimate(correct, total, curtailed=True)
        if m and total == m and correct in (0, total):
            return MCEstimate(correct, total, early_stopped=True)
        return None

    estimate = yield from _waves(job, (0, 0), wave_plan(k, m, settings.curtail), decide, settings, judge)
    if job.confirm_zero and estimate.correct == 0:
        estimate = yield from confirm_process(job, estimate, k, settings, judge)
    return estimate


def confirm_process(
    job: PrefixJob, zero: MCEstimate, n: int, settings: MCSettings, judge: OutcomeJudge
) -> EstimateProcess:
    """Up to ``n`` more rollouts from a prefix estimated at ``zero`` (seed chunk 3), pooled with
    the zero's: (correct, total + n) (module doc, "Confirmation"). Curtailed: one rollout first,
    the other n - 1 only when it misses."""
    planned = zero.total + n
    plan = [(1, "3"), (n - 1, "3b")] if settings.curtail and n > 1 else [(n, "3")]

    def decide(correct: int, total: int) -> MCEstimate | None:
        if total >= planned:
            return MCEstimate(correct, total)
        if _decided_positive(correct, planned, settings):
            return MCEstimate(correct, total, curtailed=True)
        return None

    return (yield from _waves(job, (zero.correct, zero.total), plan, decide, settings, judge))
