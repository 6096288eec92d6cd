"""Verdict records shared by the tool verifier, the Lean verifier, the step judge, the fusion stage
and the rationale: the low module every signal and every reader of signals imports (no cycles)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class ToolVerdict(StrEnum):
    CORRECT = "correct"  # every checkable claim holds
    INCORRECT = "incorrect"  # at least one claim fails
    UNVERIFIABLE = "unverifiable"  # no checkable claim, or the check could not run
    ERROR = "error"  # the verifier itself failed on this step (evidence["error"] has the message)


class LeanState(StrEnum):
    PROVED = "proved"
    DISPROVED = "disproved"  # the negation was proved
    NO_CHECK = "no_check"  # nothing to verify in the step
    FORMALIZATION_FAILED = "formalization_failed"
    LEAN_UNAVAILABLE = "lean_unavailable"
    TIMEOUT = "timeout"
    DISABLED = "disabled"  # Lean verification not asked for in this build


@dataclass(frozen=True)
class StepContext:
    """What a verifier sees of a step: the question, the steps before it, the step."""

    question: str
    previous_steps: tuple[str, ...]
    step: str


@dataclass(frozen=True)
class ToolCheck:
    verdict: ToolVerdict
    kind: str  # "sympy", "python" or "none"
    # Structured, person-readable evidence: checked claims with spans and values, the failing
    # claim, or why nothing could be checked. Stored as JSON in steps.tool_evidence.
    evidence: dict[str, Any] = field(default_factory=dict)

    def evidence_json(self) -> str:
        return json.dumps(self.evidence, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class LeanCheck:
    state: LeanState
    statement: str | None = None
    tactic: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class JudgeVerdict:
    """The judge's answer on one step: ``correct`` True/False/None (no verdict)."""

    correct: bool | None
    status: str  # "ok", "unparsed", "failed", "not_run"
    reply: str | None = None
    reason: str | None = None

    @property
    def verdict(self) -> str | None:
        """``"correct"`` / ``"incorrect"`` / None, as stored in ``steps.judge_verdict``."""
        return None if self.correct is None else ("correct" if self.correct else "incorrect")


JUDGE_NOT_RUN = JudgeVerdict(None, "not_run")


class StepVerifier(Protocol):
    def check_steps(self, steps: Sequence[StepContext]) -> list[ToolCheck]: ...

    def close(self) -> None: ...


class LeanVerifier(Protocol):
    def check_steps(self, steps: Sequence[StepContext]) -> list[LeanCheck]: ...

    def close(self) -> None: ...
