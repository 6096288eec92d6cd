"""Token accounting shared by every backend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

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


@dataclass
class CostProfile:
    """Where one labeling pass's time went (printed by ``eval run`` and ``build``, stored in the
    ``--out`` JSON and the manifest). Token counts and seconds come from the pass's
    :class:`TokenUsage`; CPU seconds are this process's and its finished children's user +
    system time over the pass (model load and start-up excluded)."""

    solutions: int
    rollouts: int
    prompt_tokens: int  # prompt tokens requested (once per request)
    evaluated_prompt_tokens: int  # of which the model evaluated (after prefix / prompt-cache reuse)
    generated_tokens: int
    decode_seconds: float
    sampling_seconds: float
    stop_check_seconds: float
    answer_check_seconds: float
    generation_seconds: float  # wall seconds inside generate calls
    wall_seconds: float
    cpu_seconds: float
    decode_steps: int = 0  # llama_decode calls (embedded batched backend; 0 elsewhere)
    sampled_tokens: int = 0  # tokens sampled after them, end-of-generation included
    decode_threads: tuple[int, ...] = ()  # llama.cpp thread counts decoded with (TokenUsage.decode_threads)

    @property
    def sequences_per_decode_step(self) -> float | None:
        """Mean batch fill: sequences sampled per ``llama_decode`` = sampled_tokens / decode_steps."""
        return self.sampled_tokens / self.decode_steps if self.decode_steps else None

    @property
    def cpu_seconds_per_solution(self) -> float | None:
        return self.cpu_seconds / self.solutions if self.solutions else None

    @classmethod
    def of(
        cls, usage: TokenUsage, *, solutions: int, rollouts: int, wall_seconds: float, cpu_seconds: float
    ) -> "CostProfile":
        return cls(solutions, rollouts, usage.prompt_tokens, usage.evaluated_prompt_tokens, usage.completion_tokens,
                   usage.decode_seconds, usage.sampling_seconds, usage.stop_check_seconds, usage.answer_check_seconds,
                   usage.generation_seconds, wall_seconds, cpu_seconds, usage.decode_steps, usage.sampled_tokens,
                   usage.decode_threads)

    def to_json(self) -> dict[str, float | int | list[int] | None]:
        payload: dict[str, float | int | list[int] | None] = dict(asdict(self))
        payload["decode_threads"] = list(self.decode_threads)
        payload["cpu_seconds_per_solution"] = self.cpu_seconds_per_solution
        payload["sequences_per_decode_step"] = self.sequences_per_decode_step
        return payload

    def to_counts(self) -> dict[str, int]:
        """The manifest's form (its counts are integers): tokens and counts, seconds as ``_ms``;
        the thread counts as ``decode_threads_min`` / ``_max`` (absent without embedded decoding)."""
        counts = {}
        if self.decode_threads:
            counts["decode_threads_min"] = min(self.decode_threads)
            counts["decode_threads_max"] = max(self.decode_threads)
        for name, value in asdict(self).items():
            if name == "decode_threads":
                continue
            counts[name.replace("_seconds", "_ms")] = (
                int(round(value * 1000)) if isinstance(value, float) else int(value)
            )
        return counts

    def line(self) -> str:
        per = self.cpu_seconds_per_solution
        fill = self.sequences_per_decode_step
        return (f"{self.solutions} solutions, {self.rollouts} rollouts; prompt tokens {self.prompt_tokens} "
                f"(evaluated {self.evaluated_prompt_tokens}), generated tokens {self.generated_tokens}; "
                f"decode {self.decode_seconds:.1f} s"
                + (f" in {self.decode_steps} steps ({fill:.1f} sequences per step)" if fill is not None else "")
                + f", sampling {self.sampling_seconds:.1f} s, "
                f"stop checks {self.stop_check_seconds:.1f} s, answer checks {self.answer_check_seconds:.1f} s, "
                f"in generate {self.generation_seconds:.1f} s of {self.wall_seconds:.1f} s wall; "
                f"CPU {self.cpu_seconds:.1f} s"
                + (f" = {per:.2f} s per solution" if per is not None else "")
                + (f" (llama.cpp threads: {', '.join(map(str, self.decode_threads))})" if self.decode_threads else ""))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
