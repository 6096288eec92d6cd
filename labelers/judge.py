"""The step judge: an LLM verifier grounded in the tool's result (GroundedPRM).

GroundedPRM labels a step with an LLM that reads the question, the previous steps, the step and
what the tool found, and answers correct/incorrect with a reason. Here that is a fourth step
signal next to the tool, Lean and Monte Carlo:

- :func:`judge_messages` builds the prompt (the tool line is the same text the rationale uses);
- :func:`parse_judge_reply` reads the reply: the *last* ``Verdict: correct`` /
  ``Verdict: incorrect`` line (case-insensitive; ``\\boxed{correct}``, ``\\boxed{+}``/``\\boxed{-}``
  are read too) and the text before it as the reason; without one, the first sentence of the
  form "Step 3 is (not) correct" / "The step is incorrect" / "This step is valid" (small models
  answer so: the embedded 1.5B model wrote it in 47 of 49 replies), the whole reply as reason;
- :func:`judge_steps` judges many steps with ONE batched ``generate`` call.

Statuses (stored in ``steps.judge_status``): ``ok`` (a verdict was read), ``unparsed`` (the reply
has no verdict line: no signal, the raw reply is kept), ``failed`` (the request failed: no
signal, the error is kept as the reply), ``not_run`` (the judge was off). The verdict record
(:class:`JudgeVerdict`, ``JUDGE_NOT_RUN``) lives with the other verdict types in
labelers/verify/base.py, so the rationale reads it without importing the judge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from labelers.policy.base import ChatMessage, GenerationRequest, GenerationResult
from labelers.signals.tool import tool_line
from labelers.verify.base import JUDGE_NOT_RUN as JUDGE_NOT_RUN  # re-exported: callers import it from here
from labelers.verify.base import JudgeVerdict, StepContext, ToolCheck

JUDGE_SYSTEM_PROMPT = (
    "You are a strict math teacher checking one step of a student's solution. "
    "You get the problem, the steps before it, the step to check, and what a calculator tool "
    "found when it checked the step's computations. Decide whether the step is correct: its "
    "computations are right AND its reasoning is valid (the right operation, no dropped terms, "
    "it uses the facts of the problem correctly). Trust the tool's arithmetic when it reports a "
    "result. Answer with one or two sentences of reason, then a last line that is exactly "
    "'Verdict: correct' or 'Verdict: incorrect'."
)

_VERDICT_LINE = re.compile(
    r"verdict\s*[:：]\s*\**\s*(?:\\boxed\{\s*)?(correct|incorrect|right|wrong|\+|-)", re.IGNORECASE
)
_BOXED = re.compile(r"\\boxed\{\s*(correct|incorrect|\+|-)\s*\}", re.IGNORECASE)
_SENTENCE_VERDICT = re.compile(
    r"\b(?:step\s*\d*|this step|the step|it)\s+is\s+(not\s+)?(correct|incorrect|right|wrong|valid|invalid)\b",
    re.IGNORECASE,
)
_MAX_STEP_CHARS = 4000  # a pathological step is cut in the prompt (the row keeps it whole)


def judge_messages(context: StepContext, tool_result: str) -> tuple[ChatMessage, ...]:
    """The chat asking the judge about ``context.step`` (``tool_result``: one line, e.g.
    :func:`labelers.signals.tool.tool_line`, the rationale's tool line)."""
    previous = "\n".join(f"Step {i}: {s.strip()}" for i, s in enumerate(context.previous_steps, 1)) or "(none)"
    step_number = len(context.previous_steps) + 1
    user = (
        f"Problem:\n{context.question.strip()}\n\n"
        f"Previous steps:\n{previous}\n\n"
        f"Step {step_number} (check this one):\n{context.step.strip()[:_MAX_STEP_CHARS]}\n\n"
        f"Tool result: {tool_result}\n\n"
        f"Is step {step_number} correct? Answer in exactly this format:\n"
        f"Reason: <one or two sentences>\nVerdict: correct OR Verdict: incorrect"
    )
    return (ChatMessage("system", JUDGE_SYSTEM_PROMPT), ChatMessage("user", user))


def parse_judge_reply(reply: str) -> JudgeVerdict:
    """The verdict of a judge reply (rules: module doc)."""
    matches = list(_VERDICT_LINE.finditer(reply))
    boxed = list(_BOXED.finditer(reply))
    last = max(matches + boxed, key=lambda m: m.start(), default=None)
    if last is None:
        sentence = _SENTENCE_VERDICT.search(reply)
        if sentence is None:
            return JudgeVerdict(None, "unparsed", reply, None)
        positive = sentence.group(2).lower() in ("correct", "right", "valid")
        correct = positive != bool(sentence.group(1))
        return JudgeVerdict(correct, "ok", reply, " ".join(reply.split())[:500] or None)
    word = last.group(1).lower()
    correct = word in ("correct", "right", "+")
    reason = " ".join(reply[: last.start()].split()).strip() or None
    if reason is not None:
        reason = re.sub(r"(?i)^reason\s*[:：]\s*", "", reason)[:500]
    return JudgeVerdict(correct, "ok", reply, reason)


def judge_request(context: StepContext, tool_result: str, max_tokens: int, temperature: float, seed: int,
                  tag: str = "judge") -> GenerationRequest:
    return GenerationRequest(
        judge_messages(context, tool_result), n=1, max_tokens=max_tokens, temperature=temperature,
        top_p=1.0 if temperature == 0 else 0.95, seed=seed, tag=tag,
    )


def verdict_of(result: GenerationResult) -> JudgeVerdict:
    """The judge verdict carried by one generation result (failed request -> ``failed``)."""
    if not result.ok or not result.completions:
        return JudgeVerdict(None, "failed", result.error or "no completion", None)
    completion = result.completions[0]
    if completion.finish_reason == "error":
        return JudgeVerdict(None, "failed", completion.text or "generation error", None)
    return parse_judge_reply(completion.text)


def tool_result_line(check: ToolCheck | None) -> str:
    """What the judge is told about the tool (the rationale's tool line)."""
    return tool_line(check)


def judge_steps(
    contexts: Sequence[StepContext],
    tools: Sequence[ToolCheck | None],
    generate,  # noqa: ANN001 - Callable[[list[GenerationRequest]], list[GenerationResult]]
    max_tokens: int = 192,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
) -> list[JudgeVerdict]:
    """Judge every step with ONE ``generate`` call (a policy's ``generate``, or a ledger's)."""
    requests = [
        judge_request(context, tool_result_line(tool), max_tokens, temperature, seeds[i] if seeds else 0)
        for i, (context, tool) in enumerate(zip(contexts, tools, strict=True))
    ]
    if not requests:
        return []
    results = generate(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"judge: {len(results)} results for {len(requests)} requests")
    return [verdict_of(result) for result in results]
