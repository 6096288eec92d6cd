"""Token accounting shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence

from labelers.policy.base import GenerationResult, TokenUsage


def record_usage(usage: TokenUsage, results: Sequence[GenerationResult], seconds: float) -> None:
    """Add one ``generate`` call to ``usage``: its requests, completions, prompt tokens (once per
    request), completion tokens (every completion), failures and wall time."""
    usage.requests += len(results)
    usage.failed_requests += sum(1 for r in results if not r.ok)
    usage.completions += sum(len(r.completions) for r in results)
    usage.prompt_tokens += sum(r.prompt_tokens for r in results)
    usage.completion_tokens += sum(c.completion_tokens for r in results for c in r.completions)
    usage.generation_seconds += seconds
