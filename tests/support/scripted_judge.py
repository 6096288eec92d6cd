"""A scripted step judge for plumbing tests: a :class:`~labelers.policy.base.Policy` that answers
the judge prompt of labelers/judge.py with a reply chosen by ``decide(step, tool_result)`` and
passes every other request (expansions, rollouts) to ``fallback`` in the same call order.

It is an oracle, like the scripted policy: it proves that prompts, batching, parsing, storage and
fusion are wired, never that a real model judges well."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from labelers.policy.base import Completion, GenerationRequest, GenerationResult, Policy, TokenUsage

_STEP = re.compile(r"\(check this one\):\n(.*?)\n\nTool result: (.*?)\n\nIs step", re.DOTALL)


def judged_step(request: GenerationRequest) -> tuple[str, str] | None:
    """(step, tool result line) of a judge request, or None for any other request."""
    if not request.tag.startswith("judge"):
        return None
    user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    match = _STEP.search(user)
    return (match.group(1), match.group(2)) if match else ("", "")


@dataclass
class ScriptedJudge:
    decide: Callable[[str, str], str]  # (step, tool result line) -> the reply text
    fallback: Policy | None = None
    model_id: str = "scripted-judge"
    usage: TokenUsage = field(default_factory=TokenUsage)
    judge_calls: list[int] = field(default_factory=list)  # judge requests per generate call

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        others = [i for i, r in enumerate(requests) if judged_step(r) is None]
        judged = [i for i in range(len(requests)) if i not in set(others)]
        if judged:
            self.judge_calls.append(len(judged))
        for index in judged:
            step, tool_result = judged_step(requests[index])  # type: ignore[misc]
            reply = self.decide(step, tool_result)
            results[index] = GenerationResult(requests[index], (Completion(reply, "stop", len(reply.split())),), 10)
        if others:
            if self.fallback is None:
                raise RuntimeError("scripted judge: a non-judge request and no fallback policy")
            for index, result in zip(others, self.fallback.generate([requests[i] for i in others]), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
