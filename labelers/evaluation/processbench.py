"""ProcessBench-format files and the ProcessBench score of earliest-error predictions.

A record (ProcessBench, 2024): ``id``, ``generator``, ``problem``, ``steps`` (list of strings),
``label`` = index of the earliest wrong step or -1 when every step is correct,
``final_answer_correct``. prmforge's injected sets add ``gold_answer`` (needed by Monte Carlo
labels: rollouts are judged against it), ``corruption`` (kind, or null for an untouched
solution) and ``corruption_detail``. Files are a JSON list (as ProcessBench ships) or JSONL.

Score (ProcessBench): ``acc_err`` = exact-index accuracy on erroneous solutions (label >= 0),
``acc_cor`` = accuracy on all-correct ones (predicted -1), ``F1 = 2 * acc_err * acc_cor /
(acc_err + acc_cor)``. Per step, over the steps that have a gold label (steps before the
earliest error are good, the earliest error is bad, later steps carry no gold label; every step
of a correct solution is good): precision and recall of the NEGATIVE (bad-step) predictions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_schemas.errors import InputError


@dataclass(frozen=True)
class BenchRecord:
    id: str
    problem: str
    steps: tuple[str, ...]
    label: int  # earliest wrong step, -1 = all correct
    generator: str = ""
    final_answer_correct: bool | None = None
    gold_answer: str | None = None
    corruption: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other fields, written back as read
    gold_source: str | None = None  # where gold_answer came from (goldjoin.py); None = the file

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "generator": self.generator,
            "problem": self.problem,
            "steps": list(self.steps),
            "label": self.label,
            "final_answer_correct": self.final_answer_correct,
            "gold_answer": self.gold_answer,
            "corruption": self.corruption,
            **dict(self.extra),
            **({"gold_source": self.gold_source} if self.gold_source else {}),
        }


_KNOWN = {"id", "generator", "problem", "steps", "label", "final_answer_correct", "gold_answer", "corruption",
          "gold_source"}


def record_from_json(row: Any, where: str) -> BenchRecord:
    """One record from a parsed JSON object; InputError naming ``where`` and the field at fault."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in ("id", "problem", "steps", "label"):
        if name not in row:
            raise InputError(f"{where}: missing field '{name}' (ProcessBench records need id, problem, steps, label)")
    steps = row["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise InputError(f"{where}: 'steps' must be a non-empty list of strings")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise InputError(f"{where}: 'label' must be -1 or a step index 0..{len(steps) - 1}, got {label!r}")
    if not isinstance(row["problem"], str):
        raise InputError(f"{where}: 'problem' must be a string")
    gold = row.get("gold_answer")
    if gold is not None and not isinstance(gold, (str, int, float)):
        raise InputError(f"{where}: 'gold_answer' must be a string or number")
    final_ok = row.get("final_answer_correct")
    return BenchRecord(
        id=str(row["id"]),
        problem=row["problem"],
        steps=tuple(steps),
        label=label,
        generator=str(row.get("generator") or ""),
        final_answer_correct=bool(final_ok) if final_ok is not None else None,
        gold_answer=str(gold) if gold is not None else None,
        corruption=row.get("corruption"),
        extra={k: v for k, v in row.items() if k not in _KNOWN},
        gold_source=str(row["gold_source"]) if row.get("gold_source") and gold is not None else None,
    )


def read_set(path: Path) -> list[BenchRecord]:
    """Records of a ProcessBench-format file: a JSON list, or JSONL (one object per line)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    records: list[BenchRecord] = []
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
        for index, row in enumerate(rows):
            records.append(record_from_json(row, f"{path}: record {index}"))
    else:
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: not JSON ({error.msg})") from None
            records.append(record_from_json(row, f"{path}:{line_number}"))
    if not records:
        raise InputError(f"{path}: no records")
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InputError(f"{path}: duplicate id {record.id!r}")
        seen.add(record.id)
    return records


def write_set(path: Path, records: Sequence[BenchRecord | Mapping[str, Any]]) -> None:
    """Write records: a JSON list when ``path`` ends in ``.json``, JSONL otherwise. Keys
    sorted, so the same records give the same bytes."""
    path = Path(path)
    rows = [r.to_json() if isinstance(r, BenchRecord) else dict(r) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        payload = json.dumps(rows, ensure_ascii=False, sort_keys=True, indent=1) + "\n"
    else:
        payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(payload, encoding="utf-8")
    temporary.replace(path)


def first_of_each_class(
    records: Sequence[BenchRecord], errors: int, correct: int
) -> tuple[list[BenchRecord], int, int]:
    """The first ``errors`` erroneous (label >= 0) and the first ``correct`` correct (label -1)
    records, in file order, and how many of each there were: a balanced scoring set named by two
    numbers instead of a hand-made file (``eval run --errors 20 --correct 20``). A class with
    fewer records than asked is taken whole; the counts say so."""
    taken: list[BenchRecord] = []
    took = {True: 0, False: 0}
    wanted = {True: errors, False: correct}
    for record in records:
        erroneous = record.label >= 0
        if took[erroneous] < wanted[erroneous]:
            taken.append(record)
            took[erroneous] += 1
    return taken, took[True], took[False]


# --------------------------------------------------------------------------------------------
# Predictions and scores
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A signal's verdict on one solution.

    ``step_negative[j]``: True = the signal calls step j bad, False = good, None = no verdict
    (unverifiable, not estimated). ``first_error`` = the first True, or -1.
    """

    id: str
    step_negative: tuple[bool | None, ...]

    @property
    def first_error(self) -> int:
        return first_error_index(self.step_negative)


def first_error_index(step_negative: Sequence[bool | None]) -> int:
    """Index of the first step judged bad (True), -1 when none is."""
    for index, negative in enumerate(step_negative):
        if negative is True:
            return index
    return -1


def f1_score(acc_err: float | None, acc_cor: float | None) -> float | None:
    """ProcessBench F1 = 2 * acc_err * acc_cor / (acc_err + acc_cor); 0 when both are 0;
    None when either accuracy is undefined (no solutions of that kind)."""
    if acc_err is None or acc_cor is None:
        return None
    if acc_err + acc_cor == 0:
        return 0.0
    return 2 * acc_err * acc_cor / (acc_err + acc_cor)


@dataclass(frozen=True)
class Score:
    n_error: int
    n_correct: int
    hits_error: int  # erroneous solutions whose earliest error was found exactly
    hits_correct: int  # correct solutions predicted -1
    acc_err: float | None
    acc_cor: float | None
    f1: float | None
    # per step, over gold-labeled steps: negatives found / predicted / gold
    step_true_negative_hits: int
    step_predicted_negative: int
    step_gold_negative: int
    step_precision: float | None
    step_recall: float | None
    missing: int  # records without a prediction (labeling failed): counted as misses
    by_corruption: dict[str, float] = field(default_factory=dict)  # exact-index accuracy per kind
    too_early: int = 0  # erroneous solutions with a predicted error before the gold one
    too_late: int = 0  # ... after it, or none predicted
    # exact-index accuracy on erroneous solutions whose earliest error is NOT the last step
    # (an error in the answer step is found by anything that compares the final answer with gold)
    acc_err_before_last: float | None = None
    n_error_before_last: int = 0
    # 95% percentile-bootstrap interval of f1 (f1_interval); None when f1 is undefined
    f1_ci: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


BOOTSTRAP_RESAMPLES = 2000


def f1_interval(
    error_hits: Sequence[bool], correct_hits: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ProcessBench F1.

    Erroneous and correct solutions are resampled separately with replacement (each group keeps
    its size, as the set was built with fixed counts); each resample's F1 is
    ``2 * a_e * a_c / (a_e + a_c)`` of the resampled accuracies; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles. Seeded: the same hits give the same
    interval."""
    import random

    if not error_hits or not correct_hits:
        return None
    rng = random.Random(seed)
    n_e, n_c = len(error_hits), len(correct_hits)
    values = []
    for _ in range(resamples):
        a_e = sum(error_hits[rng.randrange(n_e)] for _ in range(n_e)) / n_e
        a_c = sum(correct_hits[rng.randrange(n_c)] for _ in range(n_c)) / n_c
        values.append(f1_score(a_e, a_c) or 0.0)
    values.sort()
    low = values[int((1 - level) / 2 * (resamples - 1))]
    high = values[int((1 + level) / 2 * (resamples - 1))]
    return (round(low, 4), round(high, 4))


def score(records: Sequence[BenchRecord], predictions: Mapping[str, Prediction]) -> Score:
    """ProcessBench score of ``predictions`` (by record id) on ``records``; a record without a
    prediction counts as a miss (reported in ``missing``)."""
    n_error = n_correct = hits_error = hits_correct = missing = 0
    tp = predicted_neg = gold_neg = 0
    too_early = too_late = 0
    inner_total = inner_hits = 0
    kind_total: dict[str, int] = {}
    kind_hits: dict[str, int] = {}
    error_hits: list[bool] = []
    correct_hits: list[bool] = []
    for record in records:
        prediction = predictions.get(record.id)
        if prediction is None:
            missing += 1
            predicted = None
        else:
            predicted = prediction.first_error
        if record.label >= 0:
            n_error += 1
            kind = record.corruption or "unspecified"
            kind_total[kind] = kind_total.get(kind, 0) + 1
            inner = record.label < len(record.steps) - 1
            inner_total += inner
            inner_hits += inner and predicted == record.label
            error_hits.append(predicted == record.label)
            if predicted == record.label:
                hits_error += 1
                kind_hits[kind] = kind_hits.get(kind, 0) + 1
            elif predicted is not None and 0 <= predicted < record.label:
                too_early += 1
            else:
                too_late += 1
        else:
            n_correct += 1
            correct_hits.append(predicted == -1)
            if predicted == -1:
                hits_correct += 1
        last_gold = record.label if record.label >= 0 else len(record.steps) - 1
        for index in range(last_gold + 1):
            gold_negative = index == record.label
            predicted_negative = (
                prediction is not None
                and index < len(prediction.step_negative)
                and prediction.step_negative[index] is True
            )
            gold_neg += gold_negative
            predicted_neg += predicted_negative
            tp += gold_negative and predicted_negative
    acc_err = hits_error / n_error if n_error else None
    acc_cor = hits_correct / n_correct if n_correct else None
    return Score(
        n_error=n_error,
        n_correct=n_correct,
        hits_error=hits_error,
        hits_correct=hits_correct,
        acc_err=acc_err,
        acc_cor=acc_cor,
        f1=f1_score(acc_err, acc_cor),
        step_true_negative_hits=tp,
        step_predicted_negative=predicted_neg,
        step_gold_negative=gold_neg,
        step_precision=tp / predicted_neg if predicted_neg else None,
        step_recall=tp / gold_neg if gold_neg else None,
        missing=missing,
        by_corruption={k: kind_hits.get(k, 0) / kind_total[k] for k in sorted(kind_total)},
        too_early=too_early,
        too_late=too_late,
        acc_err_before_last=inner_hits / inner_total if inner_total else None,
        n_error_before_last=inner_total,
        f1_ci=f1_interval(error_hits, correct_hits),
    )
