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

``on_generate`` (optional) is called after every ``generate`` call (streaming: after every
request the wrapped policy answers) with the completions and completion tokens sampled fresh
(not replayed) and the seconds it took: the progress line of a pass reads it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labelers.policy.base import (
    GenerationRequest,
    GenerationResult,
    Policy,
    ResultHandler,
    StreamingPolicy,
    TokenUsage,
    generate_in_rounds,
)


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

    def generate_streaming(self, requests: Sequence[GenerationRequest], on_result: ResultHandler) -> None:
        """Streaming generation (labelers.policy.base.StreamingPolicy): a request answered before
        is answered at once from memory, one asked while the same request is being generated
        waits for that answer, the rest stream through the wrapped policy (in rounds of
        :meth:`generate` where it cannot stream)."""
        if not isinstance(self.policy, StreamingPolicy):
            generate_in_rounds(self.generate, requests, on_result)
            return
        asked: list[GenerationRequest] = []  # every request asked of this wrapper, by its index
        outer_of_inner: list[int] = []  # index in the wrapped policy's call -> index here
        also_waiting: dict[GenerationRequest, list[int]] = {}  # request being generated -> repeats asked since
        clock = [time.perf_counter()]

        def forward(new_requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
            """Answer what memory holds (and what those answers ask for); returns the rest."""
            to_inner: list[GenerationRequest] = []
            queue = deque(new_requests)  # in the order the caller numbers them
            while queue:
                request = queue.popleft()
                index = len(asked)
                asked.append(request)
                key = self._key(request) if request.seed is not None else None
                if key is not None and key in self._answers:
                    answer = self._answers[key]
                    self.counts.replayed_completions += len(answer.completions)
                    self.counts.replayed_tokens += sum(c.completion_tokens for c in answer.completions)
                    queue.extend(on_result(index, dataclasses.replace(answer, request=request)))
                elif key is not None and key in also_waiting:
                    also_waiting[key].append(index)
                else:
                    if key is not None:
                        also_waiting[key] = []
                    outer_of_inner.append(index)
                    to_inner.append(request)
            return to_inner

        def inner_result(inner_index: int, result: GenerationResult) -> list[GenerationRequest]:
            index = outer_of_inner[inner_index]
            request = asked[index]
            now = time.perf_counter()
            completions = len(result.completions)
            tokens = sum(c.completion_tokens for c in result.completions)
            self.counts.completions += completions
            self.counts.completion_tokens += tokens
            self.counts.seconds += now - clock[0]
            seconds, clock[0] = now - clock[0], now
            repeats: list[int] = []
            if request.seed is not None:
                key = self._key(request)
                repeats = also_waiting.pop(key, [])
                if result.error is None:
                    self._answers[key] = result  # a failed request is asked again
            new_requests = list(on_result(index, dataclasses.replace(result, request=request)))
            for repeat in repeats:
                self.counts.replayed_completions += completions
                self.counts.replayed_tokens += tokens
                new_requests += on_result(repeat, dataclasses.replace(result, request=asked[repeat]))
            if self.on_generate is not None:
                # After on_result: the estimate this answer ended is recorded, so the progress
                # line sees the end in this call (PassProgress times the first one).
                self.on_generate(completions, tokens, seconds)
            return forward(new_requests)

        first = forward(requests)
        if first:
            self.policy.generate_streaming(first, inner_result)

    @property
    def remembered(self) -> int:
        """How many answers the memory holds (a mark for :meth:`answers_since`)."""
        return len(self._answers)

    def answers_since(self, mark: int) -> list[tuple[GenerationRequest, GenerationResult]]:
        """The answers remembered after ``mark`` (:attr:`remembered` then), oldest first."""
        return list(self._answers.items())[mark:]

    def remember(self, answers: Sequence[tuple[GenerationRequest, GenerationResult]]) -> None:
        """Answers an earlier process sampled (an interrupted run's journal): asked again, they
        are replayed."""
        for request, result in answers:
            if result.error is None:
                self._answers.setdefault(self._key(request), result)

    def close(self) -> None:
        self.policy.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else a backend offers (tokenizer, context size) is the wrapped policy's.
        if name.startswith("_") or name in ("policy", "on_generate", "counts"):
            raise AttributeError(name)
        return getattr(self.policy, name)
