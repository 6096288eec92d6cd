"""The step judge as a step signal: an LLM reads the question, the previous steps, the step and
the tool's line, and answers correct/incorrect with a reason (labelers/judge.py, GroundedPRM).
Needs the judge model (the policy unless ``judge.model`` names another); no gold answer. Runs on
the chosen paths when ``config.judge_runs``: every step of every path in ONE generate call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from data_schemas.records import StepRow
from labelers.config import BuildConfig
from labelers.identity import derive_seed
from labelers.judge import judge_steps
from labelers.policy.base import GenerationRequest, GenerationResult
from labelers.signals.base import SignalInputs, SignalNeeds, SignalOutput, SignalPath, short_text
from labelers.verify.base import JUDGE_NOT_RUN, JudgeVerdict


def judge_line(judge: JudgeVerdict) -> str:
    if judge.status == "ok":
        reason = f": {short_text(judge.reason, 160)}" if judge.reason else ""
        return f"Step judge: {judge.verdict}{reason}."
    if judge.status == "unparsed":
        return "Step judge: no verdict in its reply."
    return f"Step judge: failed ({short_text(judge.reply or 'no reply')})."


def _correct(verdict: str | None) -> bool | None:
    return None if verdict is None else verdict == "correct"


class JudgeSignal:
    """Verdict ``incorrect`` = bad step, ``correct`` = good, none (unparsed, failed) = none."""

    name = "judge"
    columns = ("judge_verdict", "judge_reply", "judge_status")
    needs = SignalNeeds(policy="judge")
    failed_stage = "judge"
    missing = JUDGE_NOT_RUN
    enable: Mapping[str, object] = {"judge.enabled": True}

    def runs(self, config: BuildConfig) -> bool:
        return config.judge_runs

    def run(self, paths: Sequence[SignalPath], inputs: SignalInputs) -> SignalOutput:
        """Every step of every path in ONE generate call of the judge policy; its replies are
        charged as tokens to the problem of each step, not as rollouts. Seeds:
        ``derive_seed(build_seed, problem_id, ("judge", *node_path))``."""
        config = inputs.config
        steps = [(path, step) for path in paths for step in path.steps]
        accounts = [path.problem.problem_id for path, _ in steps]

        def generate(requests: list[GenerationRequest]) -> list[GenerationResult]:
            return inputs.ledger.generate(inputs.step_judge, list(zip(accounts, requests, strict=True)), rollouts=False)

        verdicts = judge_steps(
            [step.context for _, step in steps],
            [step.tool_check for _, step in steps],
            generate,
            config.judge.max_tokens,
            config.judge.temperature,
            [derive_seed(config.seed, path.problem.problem_id, ("judge", *step.node_path)) for path, step in steps],
        )
        results: list[list[Any]] = []
        offset = 0
        for path in paths:
            results.append(list(verdicts[offset : offset + len(path.steps)]))
            offset += len(path.steps)
        return SignalOutput(results)

    def row_fields(self, result: JudgeVerdict) -> dict[str, Any]:
        return {"judge_verdict": result.verdict, "judge_reply": result.reply, "judge_status": result.status}

    def from_row(self, row: StepRow) -> JudgeVerdict:
        return JudgeVerdict(_correct(row.judge_verdict), row.judge_status, row.judge_reply)

    def rationale_line(self, result: JudgeVerdict | None) -> str | None:
        """A line only when the judge ran."""
        if result is None or result.status == "not_run":
            return None
        return judge_line(result)

    def step_negative(self, result: JudgeVerdict) -> bool | None:
        return None if result.correct is None else not result.correct

    def stored(self, row: StepRow) -> dict[str, Any]:
        return {"judge": row.judge_verdict}

    def from_stored(self, step: Mapping[str, Any]) -> JudgeVerdict:
        correct = _correct(step["judge"])
        return JudgeVerdict(correct, "not_run" if correct is None else "ok")


JUDGE = JudgeSignal()
