"""Batched generation with per-problem accounting.

Every stage that samples (MCTS expansions and rollouts, MC estimates) hands the requests of all
problems of a round to :meth:`Ledger.generate`, which makes ONE ``policy.generate`` call and
charges each problem its completions, tokens and a share of the call's wall time (in
proportion to the completion tokens it received; requests without tokens share equally).
:meth:`Ledger.stream` does the same for requests that ask for more requests as they are
answered (MC estimates and first-error searches): one streaming call where the policy can take
requests while it decodes, rounds of ``generate`` elsewhere.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from labelers.policy.base import GenerationRequest, GenerationResult, Policy, StreamingPolicy, TokenUsage

H = TypeVar("H")
# Ledger.stream: what a caller asks (the problem charged, the request, the caller's handle for
# routing the answer back), and its answer to a result: what it asks next.
Asked = tuple[str, GenerationRequest, H]
Responder = Callable[[H, GenerationResult], Sequence[Asked[H]]]


@dataclass
class ProblemUsage:
    """What one problem cost: completions sampled, tokens, wall seconds charged to it."""

    rollouts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_seconds: float = 0.0
    requests: int = 0
    failed_requests: int = 0


@dataclass
class Ledger:
    """Per-problem usage and the batch's total :class:`TokenUsage`."""

    per_problem: dict[str, ProblemUsage] = field(default_factory=lambda: defaultdict(ProblemUsage))
    usage: TokenUsage = field(default_factory=TokenUsage)
    generate_calls: int = 0
    # Names this labeling pass on its requests (GenerationRequest.cache_scope): a backend may keep
    # the prompts of one call for the next calls of the same pass (embedded prompt cache).
    scope: str = field(default_factory=lambda: uuid.uuid4().hex)

    def generate(
        self, policy: Policy, tagged: Sequence[tuple[str, GenerationRequest]], rollouts: bool = True
    ) -> list[GenerationResult]:
        """One ``policy.generate`` call for all ``(problem_id, request)`` pairs, in order.

        ``rollouts=False``: the completions are not rollouts (the step judge's replies): their
        tokens and time are charged, the rollout count is not.

        Never raises: when the call itself raises (a backend crash, not a per-request error),
        each problem's requests are retried in a call of their own, and a problem whose call
        raises again gets error results -- so one problem cannot fail the batch.
        """
        if not tagged:
            return []
        tagged = [(problem, self._scoped(request)) for problem, request in tagged]
        before = _backend_cost(getattr(policy, "usage", None))
        started = time.perf_counter()
        try:
            results = list(policy.generate([request for _, request in tagged]))
            if len(results) != len(tagged):
                raise RuntimeError(f"policy returned {len(results)} results for {len(tagged)} requests")
        except Exception:  # noqa: BLE001 - isolate the failing problem(s)
            results = self._per_problem(policy, tagged)
        self._add_backend_cost(before, getattr(policy, "usage", None))
        self._charge([problem for problem, _ in tagged], results, time.perf_counter() - started, rollouts)
        return results

    def stream(self, policy: Policy, items: Sequence[Asked[H]], respond: Responder[H]) -> None:
        """Answer every ``(problem_id, request, handle)`` item, and the items ``respond(handle,
        result)`` asks for in answer to each result, until none is left.

        A :class:`~labelers.policy.base.StreamingPolicy` answers them in one streaming call, so
        what an answer asks for joins the running batch; any other policy in rounds of
        :meth:`generate` (everything asked so far that has no answer, in one call). Charged like
        :meth:`generate` (one call); never raises for the backend: when the streaming call
        raises, what it left unanswered goes on in rounds, where a failing problem is isolated.
        """
        pending = list(items)
        if pending and isinstance(policy, StreamingPolicy):
            pending = self._stream_once(policy, pending, respond)
        while pending:
            results = self.generate(policy, [(problem, request) for problem, request, _ in pending])
            pending = [asked for (_, _, handle), result in zip(pending, results) for asked in respond(handle, result)]

    def _stream_once(self, policy: StreamingPolicy, items: list[Asked[H]], respond: Responder[H]) -> list[Asked[H]]:
        """One ``generate_streaming`` call; returns the items it did not answer (it raised)."""
        asked = [(problem, self._scoped(request), handle) for problem, request, handle in items]
        unanswered = dict(enumerate(asked))
        answered: list[tuple[str, GenerationResult]] = []
        respond_error: list[BaseException] = []

        def on_result(index: int, result: GenerationResult) -> list[GenerationRequest]:
            problem, _, handle = unanswered.pop(index)
            answered.append((problem, result))
            try:
                more = [(p, self._scoped(r), h) for p, r, h in respond(handle, result)]
            except BaseException as error:  # our own bug, not the backend's: re-raised below
                respond_error.append(error)
                raise
            for entry in more:
                unanswered[len(asked)] = entry
                asked.append(entry)
            return [request for _, request, _ in more]

        before = _backend_cost(policy.usage)
        started = time.perf_counter()
        try:
            policy.generate_streaming([request for _, request, _ in asked], on_result)
        except Exception:  # noqa: BLE001 - the unanswered items go on in rounds (isolated)
            if respond_error:
                raise respond_error[0] from None
        self._add_backend_cost(before, policy.usage)
        self._charge([problem for problem, _ in answered], [result for _, result in answered],
                     time.perf_counter() - started, rollouts=True)
        return list(unanswered.values())

    def _scoped(self, request: GenerationRequest) -> GenerationRequest:
        return request if request.cache_scope else replace(request, cache_scope=self.scope)

    def _charge(self, problems: Sequence[str], results: Sequence[GenerationResult], elapsed: float,
                rollouts: bool) -> None:
        """One call's completions, tokens and wall time (shared by completion tokens) per problem."""
        self.generate_calls += 1
        self.usage.generation_seconds += elapsed
        total_tokens = sum(c.completion_tokens for r in results for c in r.completions)
        for problem, result in zip(problems, results):
            tokens = sum(c.completion_tokens for c in result.completions)
            entry = self.per_problem[problem]
            entry.requests += 1
            entry.rollouts += len(result.completions) if rollouts else 0
            entry.prompt_tokens += result.prompt_tokens
            entry.completion_tokens += tokens
            entry.failed_requests += result.error is not None
            share = tokens / total_tokens if total_tokens else 1 / len(results)
            entry.wall_seconds += elapsed * share
            self.usage.requests += 1
            self.usage.completions += len(result.completions)
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += tokens
            self.usage.failed_requests += result.error is not None

    def _add_backend_cost(self, before: dict[str, float], usage: TokenUsage | None) -> None:
        """The backend's own counters over the call (prompt tokens evaluated, decode, sampling
        and stop-check seconds, decode steps and sampled tokens): what a pass cost where the
        backend measures it."""
        for name, value in _backend_cost(usage).items():
            setattr(self.usage, name, getattr(self.usage, name) + value - before.get(name, 0))
        if isinstance(usage, TokenUsage) and usage.decode_threads:
            self.usage.add(TokenUsage(decode_threads=usage.decode_threads))

    @staticmethod
    def _per_problem(policy: Policy, tagged: Sequence[tuple[str, GenerationRequest]]) -> list[GenerationResult]:
        groups: dict[str, list[int]] = {}
        for index, (problem, _) in enumerate(tagged):
            groups.setdefault(problem, []).append(index)
        results: list[GenerationResult | None] = [None] * len(tagged)
        for indices in groups.values():
            requests = [tagged[i][1] for i in indices]
            try:
                own = list(policy.generate(requests))
                if len(own) != len(requests):
                    raise RuntimeError(f"policy returned {len(own)} results for {len(requests)} requests")
            except Exception as error:  # noqa: BLE001 - becomes this problem's request errors
                message = f"{type(error).__name__}: {error}"
                own = [GenerationResult(request, (), 0, error=message) for request in requests]
            for index, result in zip(indices, own):
                results[index] = result
        return [r for r in results if r is not None]

    def charge_time(self, weights: dict[str, float], seconds: float) -> None:
        """Split ``seconds`` of non-generation work (tool/Lean checks) over problems by weight."""
        total = sum(weights.values())
        for problem, weight in weights.items():
            self.per_problem[problem].wall_seconds += seconds * (weight / total if total else 0.0)


_BACKEND_COST = ("evaluated_prompt_tokens", "decode_seconds", "sampling_seconds", "stop_check_seconds", "decode_steps",
                 "sampled_tokens")


def _backend_cost(usage: TokenUsage | None) -> dict[str, float]:
    if not isinstance(usage, TokenUsage):
        return {}
    return {name: getattr(usage, name) for name in _BACKEND_COST}
