"""Real-text corpus: model-written solution steps with labels, and the tool's false-alarm rate.

A corpus row is one step in its context (:class:`CorpusStep`): the question, the steps before
it, the step, its label and where the label comes from:

- ``human``: PRM800K ratings (+1 good, 0 neutral, -1 bad) given by people to model-written
  steps (GPT-4 generations);
- ``mc``: Math-Shepherd labels (+ / -), Monte Carlo estimates on model-written steps;
- ``answer``: no step label; ``reaches_gold`` says whether the solution's final answer equals
  the gold answer (the embedded model's own solutions).

A step is *expected correct* when a person rated it 0 or +1, when Math-Shepherd labels it +, or
(with no step label) when its solution reaches the gold answer. The **false-alarm rate** is

    false_alarms / checked,  checked = expected-correct steps the tool judged correct or incorrect,
                             false_alarms = those it judged incorrect.

Every flagged step is listed with the failing claim so a person can read it; the verdicts of
that reading are kept in a review file (tests/data/real_text/reviewed.json): ``real_error`` (a
real slip in a step rated correct or in a solution that still reaches gold: people and MC miss
slips; kept as a golden case), ``false_as_written`` (loose notation: the relation written is
false, the writer meant something else), ``reader_error`` (the tool read something the step does
not say). The **wrongly flagged** rate counts reader errors and flags nobody reviewed yet:

    wrongly_flagged / checked,  wrongly_flagged = flagged steps not reviewed as real_error or
                                                  false_as_written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_schemas.errors import InputError
from labelers.verify.base import StepContext, StepVerifier, ToolCheck, ToolVerdict


@dataclass(frozen=True)
class CorpusStep:
    id: str  # "<source>/<record>/<step>[/<completion>]"
    source: str  # "prm800k", "math_shepherd", "embedded"
    generator: str  # who wrote the step (model name when known)
    problem: str
    previous_steps: tuple[str, ...]
    step: str
    label: int | None  # +1 / 0 / -1, or None without a step label
    label_kind: str  # "human", "mc" or "answer"
    reaches_gold: bool | None = None
    gold_answer: str | None = None

    @property
    def expected_correct(self) -> bool:
        if self.label is not None:
            return self.label >= 0
        return bool(self.reaches_gold)

    def context(self) -> StepContext:
        return StepContext(self.problem, self.previous_steps, self.step)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["previous_steps"] = list(self.previous_steps)
        return row


def corpus_step_from_json(row: dict[str, Any], where: str) -> CorpusStep:
    try:
        return CorpusStep(
            id=str(row["id"]), source=str(row["source"]), generator=str(row.get("generator") or ""),
            problem=str(row["problem"]), previous_steps=tuple(str(s) for s in row.get("previous_steps") or ()),
            step=str(row["step"]), label=row.get("label"), label_kind=str(row["label_kind"]),
            reaches_gold=row.get("reaches_gold"), gold_answer=row.get("gold_answer"),
        )
    except (KeyError, TypeError) as error:
        raise InputError(f"{where}: not a corpus step ({error})") from None


def read_corpus(path: Path) -> list[CorpusStep]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            rows.append(corpus_step_from_json(json.loads(line), f"{path}:{number}"))
    return rows


def write_corpus(path: Path, steps: Iterable[CorpusStep]) -> int:
    lines = [json.dumps(s.to_json(), ensure_ascii=False, sort_keys=True) for s in steps]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def prm800k_steps(path: Path) -> list[CorpusStep]:
    """Every rated completion of every step of PRM800K records; the context is the chosen
    completions (or the human completion) of the steps before it."""
    out: list[CorpusStep] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        record = json.loads(line)
        question = record["question"]
        previous: list[str] = []
        for index, step in enumerate(record["label"]["steps"]):
            completions = step.get("completions") or []
            for k, completion in enumerate(completions):
                if completion.get("rating") is None:
                    continue
                out.append(CorpusStep(
                    id=f"prm800k/{number}/{index}/{k}", source="prm800k", generator="gpt-4 (PRM800K)",
                    problem=question["problem"], previous_steps=tuple(previous), step=completion["text"],
                    label=int(completion["rating"]), label_kind="human",
                    gold_answer=question.get("ground_truth_answer"),
                ))
            chosen = step.get("chosen_completion")
            if chosen is not None and chosen < len(completions):
                previous.append(completions[chosen]["text"])
            elif step.get("human_completion"):
                previous.append(step["human_completion"]["text"])
            else:
                break  # the path ends here (no chosen continuation)
    return out


_MS_STEP = re.compile(r"(?:^|\s)Step \d+: ")


def math_shepherd_steps(path: Path) -> list[CorpusStep]:
    """Math-Shepherd records: ``label`` holds the question, then ``Step n: ... +|-`` per step."""
    out: list[CorpusStep] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        labeled = json.loads(line)["label"]
        parts = _MS_STEP.split(labeled)
        question, steps = parts[0].strip(), [p.strip() for p in parts[1:]]
        previous: list[str] = []
        for index, part in enumerate(steps):
            if part[-1:] not in "+-":
                continue
            text = part[:-1].strip()
            out.append(CorpusStep(
                id=f"math_shepherd/{number}/{index}", source="math_shepherd", generator="Math-Shepherd policy",
                problem=question, previous_steps=tuple(previous), step=text,
                label=1 if part.endswith("+") else -1, label_kind="mc",
                reaches_gold=steps[-1].endswith("+"),
            ))
            previous.append(text)
    return out


@dataclass
class FalseAlarm:
    step: CorpusStep
    failing: dict[str, Any]


@dataclass
class FalseAlarmReport:
    steps: int = 0
    expected_correct: int = 0
    checked: int = 0  # expected-correct steps with a tool decision (correct / incorrect)
    false_alarms: list[FalseAlarm] = field(default_factory=list)
    verdicts: Counter = field(default_factory=Counter)  # (expected_correct, verdict) -> steps
    caught: list[CorpusStep] = field(default_factory=list)  # expected-wrong steps judged incorrect
    by_source: dict[str, Counter] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        """Flagged expected-correct steps / checked ones (every flag, reviewed or not)."""
        return len(self.false_alarms) / self.checked if self.checked else None

    def wrongly_flagged(self, reviewed: dict[str, dict[str, str]]) -> list[FalseAlarm]:
        """Flags that are reader errors or not reviewed yet (module doc)."""
        excused = ("real_error", "false_as_written")
        return [a for a in self.false_alarms if reviewed.get(a.step.id, {}).get("kind") not in excused]

    def wrong_rate(self, reviewed: dict[str, dict[str, str]]) -> float | None:
        return len(self.wrongly_flagged(reviewed)) / self.checked if self.checked else None


def read_reviewed(path: Path) -> dict[str, dict[str, str]]:
    """The review file: step id -> {"kind": ..., "note": ...} (keys starting with "_" are notes)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {key: value for key, value in data.items() if not key.startswith("_")}


def measure_false_alarms(steps: Sequence[CorpusStep], tool: StepVerifier) -> FalseAlarmReport:
    """Tool verdicts on every corpus step, one batch; the false-alarm rate (module doc)."""
    checks: list[ToolCheck] = tool.check_steps([s.context() for s in steps])
    report = FalseAlarmReport(steps=len(steps))
    for step, check in zip(steps, checks, strict=True):
        ok = step.expected_correct
        report.verdicts[(ok, check.verdict.value)] += 1
        per_source = report.by_source.setdefault(step.source, Counter())
        per_source["steps"] += 1
        if check.verdict == ToolVerdict.INCORRECT and not ok:
            report.caught.append(step)
        if not ok:
            continue
        report.expected_correct += 1
        per_source["expected_correct"] += 1
        if check.verdict in (ToolVerdict.CORRECT, ToolVerdict.INCORRECT):
            report.checked += 1
            per_source["checked"] += 1
        if check.verdict == ToolVerdict.INCORRECT:
            report.false_alarms.append(FalseAlarm(step, dict(check.evidence.get("failing") or {})))
            per_source["false_alarms"] += 1
    return report
