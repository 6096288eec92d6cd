"""A policy wrapper for evaluation runs: replays identical requests, counts what a pass samples.

Every sampling request of the labeling core carries its own seed, derived from the build seed,
the problem and the prefix (``derive_seed(seed, problem_id, ("mc", prefix_hash, chunk))``), never
from the batch it travels in; the same request therefore asks for the same completions. One
``eval run`` labels the same records in several passes (MC alone, then the hybrid with its
confirmation rollouts, then per-step MC): the first ``k`` rollouts of a prefix are the same
request in each of them. :class:`ReplayPolicy` answers a request it has already answered from
memory, so a later pass pays only for the rollouts it adds (confirmation, prefixes the other
pass never probed).

What a signal costs stays what it would cost alone: replayed completions still reach the
labeling core's ledger as completions (rollouts and tokens are counted per signal as before);
only the wall time is saved, and :attr:`ReplayPolicy.replayed` says how much was replayed.

``on_generate`` (optional) is called after every ``generate`` call with the completions and
completion tokens sampled fresh (not replayed) and the seconds it took: the progress line of a
pass reads it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labelers.policy.base import GenerationRequest, GenerationResult, Policy, TokenUsage


@dataclass
class SampledCounts:
    """Completions and completion tokens a wrapped policy sampled fresh, and those it replayed."""

    completions: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    replayed_completions: int = 0
    replayed_tokens: int = 0


@dataclass
class ReplayPolicy:
    """``policy`` with a memory of answered requests (module doc). Not thread-safe, like the
    policies it wraps."""

    policy: Policy
    on_generate: Callable[[int, int, float], None] | None = None
    counts: SampledCounts = field(default_factory=SampledCounts)
    _answers: dict[GenerationRequest, GenerationResult] = field(default_factory=dict, repr=False)

    @property
    def model_id(self) -> str:
        return self.policy.model_id

    @property
    def usage(self) -> TokenUsage:
        return self.policy.usage

    @staticmethod
    def _key(request: GenerationRequest) -> GenerationRequest:
        # The tag routes the result back to its caller and the cache scope names the pass whose
        # prompts the engine may reuse; neither changes what is sampled.
        return dataclasses.replace(request, tag="", cache_scope="")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; only requests never answered (or answered with an
        error) reach the wrapped policy, in one call."""
        started = time.perf_counter()
        # Unseeded requests ask for fresh samples each time: never replayed, never merged.
        keys = [self._key(request) if request.seed is not None else None for request in requests]
        to_sample: list[int] = []
        first_asked: dict[GenerationRequest, int] = {}
        for index, key in enumerate(keys):
            if key is None or (key not in self._answers and key not in first_asked):
                to_sample.append(index)
                if key is not None:
                    first_asked[key] = index
        sampled = list(self.policy.generate([requests[index] for index in to_sample])) if to_sample else []
        by_index = dict(zip(to_sample, sampled, strict=True))
        new_answers = [by_index[index] for index in to_sample]
        results: list[GenerationResult] = []
        for index, (request, key) in enumerate(zip(requests, keys)):
            if index in by_index:
                answer = by_index[index]
            else:
                answer = self._answers[key] if key in self._answers else by_index[first_asked[key]]
                self.counts.replayed_completions += len(answer.completions)
                self.counts.replayed_tokens += sum(c.completion_tokens for c in answer.completions)
            results.append(dataclasses.replace(answer, request=request))
        for key, index in first_asked.items():
            if by_index[index].error is None:
                self._answers[key] = by_index[index]  # a failed request is asked again
        completions = sum(len(a.completions) for a in new_answers)
        tokens = sum(c.completion_tokens for a in new_answers for c in a.completions)
        seconds = time.perf_counter() - started
        self.counts.completions += completions
        self.counts.completion_tokens += tokens
        self.counts.seconds += seconds
        if self.on_generate is not None:
            self.on_generate(completions, tokens, seconds)
        return results

    def close(self) -> None:
        self.policy.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else a backend offers (tokenizer, context size) is the wrapped policy's.
        if name.startswith("_") or name in ("policy", "on_generate", "counts"):
            raise AttributeError(name)
        return getattr(self.policy, name)
