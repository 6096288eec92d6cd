"""The shared prompt: numbered steps, a final ``\\boxed{}`` answer, continuation from a prefix.

A step prefix is rendered as assistant text ``"Step 1: ...\\nStep 2: ...\\nStep 3:"`` so the
model continues with the content of the next step. An expansion stops at ``STEP_STOP`` (the
start of the following step); a rollout runs to the end of the solution.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from labelers.policy.base import ChatMessage

SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step. "
    "Write each step on its own line, starting with 'Step 1:', 'Step 2:', and so on. "
    "Each step does one small computation and states its result. "
    "In the last step give the final answer as \\boxed{ANSWER}."
)

# Generation of one step ends where the next one would begin.
STEP_STOP: tuple[str, ...] = ("\nStep ", "\n\nStep ")

_STEP_LABEL = re.compile(r"^\s*Step\s+\d+\s*[:.]\s*", re.IGNORECASE)


def solution_messages(question: str) -> tuple[ChatMessage, ...]:
    """Chat messages asking for a numbered step-by-step solution of ``question``."""
    return (ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", question.strip()))


def assistant_prefix(steps: Sequence[str]) -> str:
    """Assistant text holding ``steps`` and the label of the next step, ready to continue."""
    written = "".join(f"Step {i}: {step.strip()}\n" for i, step in enumerate(steps, start=1))
    return f"{written}Step {len(steps) + 1}:"


def clean_step(completion_text: str) -> str:
    """The content of one generated step: label and surrounding whitespace removed."""
    return _STEP_LABEL.sub("", completion_text.strip(), count=1).strip()
