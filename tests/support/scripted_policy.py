"""A deterministic scripted :class:`~labelers.policy.base.Policy` for algorithm tests.

The policy knows, per question, a correct step sequence and wrong solutions (each a full step
sequence that diverges from the correct one at some step, e.g. a GSM8K slip from
:mod:`tests.support.gsm8k_slips`). It continues any ``assistant_prefix`` (``Step 1: ...\\nStep
2:``) as follows, drawing every choice from ``random.Random(f"{request.seed}:{i}")`` for the
i-th of the ``n`` completions (so results depend only on the request, never on the batch):

- **clean prefix** (equal to the first d correct steps):
  - a *step request* (``stop`` contains ``"\\nStep "``: an MCTS expansion) continues with the
    step of a wrong solution that diverges exactly at d with probability ``step_error_rate``,
    else with the correct step d;
  - a *rollout* (no step stop) reaches the gold answer (the remaining correct steps) with
    probability ``p_correct``; otherwise it continues a wrong solution diverging at or after d
    (or, when there is none, ends with a wrong final answer);
- **prefix of a wrong solution** (after its divergence): continues that wrong solution, so the
  rollout reaches its wrong final answer, except with probability ``recovery_rate`` where it
  "recovers" and finishes with the remaining correct steps (gold answer);
- **unknown prefix**: one step ``This gives the final answer \\boxed{<wrong>}.``.

The continuation text is rendered in the prompt format (``" content\\nStep d+2: ..."``), then
cut at the first ``stop`` string (finish ``"stop"``) and at ``max_tokens`` whitespace tokens
(finish ``"length"``). Tokens are whitespace-separated words. Every ``generate`` call is
recorded in ``calls`` (tests assert lock-step batching: one call per round), and requests for
questions in ``fail_questions`` (or matching ``fail_when``) return an error result.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from labelers.identity import normalize_text
from labelers.policy.base import Completion, GenerationRequest, GenerationResult, TokenUsage

_STEP_LABEL = re.compile(r"(?:^|\n)\s*Step\s+\d+\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class ScriptedProblem:
    """What the scripted policy knows about one question."""

    question: str
    gold_answer: str
    correct_steps: tuple[str, ...]
    wrong_solutions: tuple[tuple[str, ...], ...] = ()
    p_correct: float = 1.0  # a rollout from a clean prefix reaches the gold answer
    step_error_rate: float = 0.0  # an expansion from a clean prefix takes a diverging wrong step
    recovery_rate: float = 0.0  # a rollout from a wrong prefix still reaches the gold answer

    def divergence(self, wrong: Sequence[str]) -> int:
        """Index of the first step where ``wrong`` differs from the correct steps."""
        for index, step in enumerate(wrong):
            if index >= len(self.correct_steps) or normalize_text(step) != normalize_text(self.correct_steps[index]):
                return index
        return len(wrong)

    def wrong_answer(self) -> str:
        """A deterministic final answer different from gold, for off-script continuations."""
        try:
            return str(int(float(self.gold_answer)) + 1)
        except ValueError:
            return f"{self.gold_answer}+1"


def parse_prefix(prefix: str) -> list[str]:
    """The completed steps of an assistant prefix ``Step 1: a\\nStep 2: b\\nStep 3:`` -> [a, b]."""
    if not prefix.strip():
        return []
    pieces = _STEP_LABEL.split(prefix)
    # pieces[0] is text before "Step 1:"; the last piece is the (empty) open step.
    return [piece.strip() for piece in pieces[1:-1]]


def _tokens(text: str) -> int:
    return len(text.split())


@dataclass
class ScriptedPolicy:
    """Deterministic scripted policy (see the module docstring)."""

    problems: Iterable[ScriptedProblem]
    model_id: str = "scripted-policy"
    fail_questions: Iterable[str] = ()
    fail_when: Callable[[GenerationRequest], bool] | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    calls: list[tuple[GenerationRequest, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.problems = tuple(self.problems)
        self._by_question = {normalize_text(p.question): p for p in self.problems}
        self._failing = {normalize_text(q) for q in self.fail_questions}

    # -- Policy protocol ---------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append(tuple(requests))
        results = [self._one(request) for request in requests]
        for result in results:
            self.usage.requests += 1
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completions += len(result.completions)
            self.usage.completion_tokens += sum(c.completion_tokens for c in result.completions)
            self.usage.failed_requests += result.error is not None
        return results

    def close(self) -> None:
        return None

    # -- helpers for tests -------------------------------------------------------------------
    @property
    def requests(self) -> list[GenerationRequest]:
        """Every request ever sent, in order."""
        return [request for call in self.calls for request in call]

    def completions_for(self, question: str) -> int:
        """Completions sampled for ``question`` so far."""
        key = normalize_text(question)
        return sum(r.n for r in self.requests if normalize_text(_question(r)) == key)

    # -- generation --------------------------------------------------------------------------
    def _one(self, request: GenerationRequest) -> GenerationResult:
        question = _question(request)
        prompt_tokens = sum(_tokens(m.content) for m in request.messages) + _tokens(request.assistant_prefix)
        key = normalize_text(question)
        if key in self._failing or (self.fail_when is not None and self.fail_when(request)):
            return GenerationResult(request, (), prompt_tokens, error="scripted failure for this request")
        problem = self._by_question.get(key)
        if problem is None:
            return GenerationResult(request, (), prompt_tokens, error="scripted policy: unknown question")
        prefix = parse_prefix(request.assistant_prefix)
        step_mode = any("Step" in stop for stop in request.stop)
        completions = []
        for index in range(request.n):
            rng = random.Random(f"{request.seed}:{index}:{request.assistant_prefix}")
            steps = self._continuation(problem, prefix, step_mode, rng)
            completions.append(self._render(steps, len(prefix), request))
        return GenerationResult(request, tuple(completions), prompt_tokens)

    def _continuation(
        self, problem: ScriptedProblem, prefix: list[str], step_mode: bool, rng: random.Random
    ) -> list[str]:
        depth = len(prefix)
        norm = [normalize_text(s) for s in prefix]
        correct = problem.correct_steps
        if depth <= len(correct) and norm == [normalize_text(s) for s in correct[:depth]]:
            if depth == len(correct):
                return []
            if step_mode:
                diverging = [w for w in problem.wrong_solutions if problem.divergence(w) == depth]
                if diverging and rng.random() < problem.step_error_rate:
                    return list(rng.choice(diverging)[depth:])
                return list(correct[depth:])
            if rng.random() < problem.p_correct:
                return list(correct[depth:])
            later = [w for w in problem.wrong_solutions if len(w) > depth and problem.divergence(w) >= depth]
            if later:
                return list(rng.choice(later)[depth:])
            return [f"This gives the final answer \\boxed{{{problem.wrong_answer()}}}."]
        for wrong in problem.wrong_solutions:
            if len(wrong) >= depth and [normalize_text(s) for s in wrong[:depth]] == norm:
                if not step_mode and rng.random() < problem.recovery_rate and depth < len(correct):
                    return list(correct[depth:])
                return list(wrong[depth:])
        return [f"This gives the final answer \\boxed{{{problem.wrong_answer()}}}."]

    @staticmethod
    def _render(steps: list[str], depth: int, request: GenerationRequest) -> Completion:
        if not steps:
            return Completion("", "stop", 0)
        text = " " + steps[0]
        for offset, step in enumerate(steps[1:], start=2):
            text += f"\nStep {depth + offset}: {step}"
        finish = "stop"
        cuts = [text.find(stop) for stop in request.stop if stop and text.find(stop) >= 0]
        if cuts:
            text = text[: min(cuts)]
        words = text.split(" ")
        if _tokens(text) > request.max_tokens:
            kept, count = [], 0
            for word in words:
                count += bool(word.strip())
                if count > request.max_tokens:
                    break
                kept.append(word)
            text, finish = " ".join(kept), "length"
        return Completion(text, finish, max(1, _tokens(text)))


def _question(request: GenerationRequest) -> str:
    users = [m.content for m in request.messages if m.role == "user"]
    return users[-1] if users else ""


def gsm8k_scripted_problems(
    rows: Iterable[dict],
    *,
    seed: int = 0,
    p_correct: float = 1.0,
    step_error_rate: float = 0.0,
    recovery_rate: float = 0.0,
    wrong_per_problem: int = 2,
) -> list[ScriptedProblem]:
    """Scripted problems from GSM8K rows (``question``, ``answer``): the reference steps plus up
    to ``wrong_per_problem`` slip solutions (tests/support/gsm8k_slips.py), seeded."""
    from tests.support.gsm8k_slips import inject_slip, reference_steps, slip_candidates

    problems = []
    for row_index, row in enumerate(rows):
        steps, gold = reference_steps(row["answer"])
        rng = random.Random(f"{seed}:{row_index}")
        wrong: list[tuple[str, ...]] = []
        for index in slip_candidates(row["answer"]):
            slip = inject_slip(row["answer"], index, rng)
            if slip is not None and slip.steps not in wrong:
                wrong.append(slip.steps)
            if len(wrong) >= wrong_per_problem:
                break
        problems.append(
            ScriptedProblem(row["question"], gold, tuple(steps), tuple(wrong), p_correct, step_error_rate,
                            recovery_rate)
        )
    return problems
