"""Batched generation with per-problem accounting.

Every stage that samples (MCTS expansions and rollouts, MC estimates) hands the requests of all
problems of a round to :meth:`Ledger.generate`, which makes ONE ``policy.generate`` call and
charges each problem its completions, tokens and a share of the call's wall time (in
proportion to the completion tokens it received; requests without tokens share equally).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from labelers.policy.base import GenerationRequest, GenerationResult, Policy, TokenUsage


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

    def generate(self, policy: Policy, tagged: Sequence[tuple[str, GenerationRequest]]) -> list[GenerationResult]:
        """One ``policy.generate`` call for all ``(problem_id, request)`` pairs, in order."""
        if not tagged:
            return []
        started = time.perf_counter()
        results = policy.generate([request for _, request in tagged])
        elapsed = time.perf_counter() - started
        if len(results) != len(tagged):
            raise RuntimeError(f"policy returned {len(results)} results for {len(tagged)} requests")
        self.generate_calls += 1
        self.usage.generation_seconds += elapsed
        total_tokens = sum(c.completion_tokens for r in results for c in r.completions)
        for (problem, _), result in zip(tagged, results):
            tokens = sum(c.completion_tokens for c in result.completions)
            entry = self.per_problem[problem]
            entry.requests += 1
            entry.rollouts += len(result.completions)
            entry.prompt_tokens += result.prompt_tokens
            entry.completion_tokens += tokens
            entry.failed_requests += result.error is not None
            share = tokens / total_tokens if total_tokens else 1 / len(tagged)
            entry.wall_seconds += elapsed * share
            self.usage.requests += 1
            self.usage.completions += len(result.completions)
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += tokens
            self.usage.failed_requests += result.error is not None
        return results

    def charge_time(self, weights: dict[str, float], seconds: float) -> None:
        """Split ``seconds`` of non-generation work (tool/Lean checks) over problems by weight."""
        total = sum(weights.values())
        for problem, weight in weights.items():
            self.per_problem[problem].wall_seconds += seconds * (weight / total if total else 0.0)
