"""The export formats: one record per labeled path in the layout a PRM trainer reads.

Per format (:data:`FORMATS`): the trainer it is written for (:data:`TRAINERS`), its Arrow schema
(:data:`SCHEMAS`, :func:`schema_for`), its default handling of the steps after the first error,
and the function building its record from a :class:`~data_schemas.export_query.LabeledPath`;
:func:`build_records` builds a format's records and says what it altered. The layouts are
described in :mod:`data_schemas.export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from data_schemas.errors import PrmforgeError
from data_schemas.export_query import LabeledPath

FORMATS = ("trl", "math-shepherd", "prm800k", "generative")

#: The trainer each format is written for (also in every export's metadata and docs/storage.md).
TRAINERS = {
    "trl": "trl==1.13.0 PRMTrainer (trl.experimental.prm; the last trl release that has it)",
    "math-shepherd": (
        "OpenRLHF train_prm: --input_key input --label_key value --placeholder_token ки --reward_tokens + -"
    ),
    "prm800k": "PRM800K phase-2 JSON Lines readers (openai/prm800k layout); no trainer pinned",
    "generative": "trl==1.13.0 SFTTrainer on conversational 'messages' (any chat SFT trainer reads it)",
}
#: Steps after the first error, per format: Math-Shepherd and TRL's stepwise data label every step
#: (later steps negative); PRM800K stops rating at the first -1 step, and a generative verifier's
#: critique ends at the first wrong step.
DEFAULT_AFTER_FIRST_ERROR = {
    "trl": "negative", "math-shepherd": "negative", "prm800k": "truncate", "generative": "truncate"
}
#: Formats whose label column can hold the MC value (OpenRLHF reads float labels as soft labels;
#: TRL's PRMTrainer casts labels to int, PRM800K ratings and verdict tokens are discrete).
SOFT_LABEL_FORMATS = ("math-shepherd",)

#: Math-Shepherd's step tag (the Cyrillic "ки", one token in its tokenizer).
STEP_TAG = "ки"
#: Replacement for a step tag occurring inside a step's own text (it would read as a step end).
STEP_TAG_ESCAPE = "к и"
#: Verdict tokens closing a generative-PRM assistant turn.
VERDICT_TOKENS = {True: "\\boxed{+}", False: "\\boxed{-}"}
GENERATIVE_SYSTEM_PROMPT = (
    "You are a meticulous math teacher checking a student's solution one step at a time. "
    "For each step, verify its computations and reasoning given the problem and the earlier steps, "
    "explain your check briefly, and end with \\boxed{+} if the step is correct or \\boxed{-} if it is not."
)

_ID_FIELDS = [
    pa.field("build_id", pa.string()),
    pa.field("problem_id", pa.string()),
    pa.field("path_id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("mc_values", pa.list_(pa.float64())),
]
TRL_SCHEMA = pa.schema(
    [pa.field("prompt", pa.string()), pa.field("completions", pa.list_(pa.string())),
     pa.field("labels", pa.list_(pa.bool_()))]
    + _ID_FIELDS
)
MATH_SHEPHERD_SCHEMA = pa.schema(
    [pa.field("input", pa.string()), pa.field("label", pa.string()), pa.field("task", pa.string()),
     pa.field("value", pa.list_(pa.string()))] + _ID_FIELDS
)
MATH_SHEPHERD_SOFT_SCHEMA = MATH_SHEPHERD_SCHEMA.set(3, pa.field("value", pa.list_(pa.float64())))
_PRM800K_COMPLETION = pa.struct([("text", pa.string()), ("rating", pa.int64()), ("flagged", pa.bool_())])
_PRM800K_HUMAN = pa.struct(
    [("text", pa.string()), ("rating", pa.int64()), ("source", pa.string()), ("flagged", pa.bool_())]
)
PRM800K_SCHEMA = pa.schema(
    [
        pa.field("labeler", pa.string()),
        pa.field("timestamp", pa.string()),
        pa.field("generation", pa.int64()),
        pa.field("is_quality_control_question", pa.bool_()),
        pa.field("is_initial_screening_question", pa.bool_()),
        pa.field("question", pa.struct([("problem", pa.string()), ("ground_truth_answer", pa.string())])),
        pa.field(
            "label",
            pa.struct(
                [
                    (
                        "steps",
                        pa.list_(
                            pa.struct(
                                [
                                    ("completions", pa.list_(_PRM800K_COMPLETION)),
                                    ("human_completion", _PRM800K_HUMAN),
                                    ("chosen_completion", pa.int64()),
                                ]
                            )
                        ),
                    ),
                    ("total_time", pa.int64()),
                    ("finish_reason", pa.string()),
                ]
            ),
        ),
    ]
    + _ID_FIELDS
)
GENERATIVE_SCHEMA = pa.schema(
    [
        pa.field("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        pa.field("labels", pa.list_(pa.bool_())),
    ]
    + _ID_FIELDS
)
SCHEMAS = {
    "trl": TRL_SCHEMA, "math-shepherd": MATH_SHEPHERD_SCHEMA, "prm800k": PRM800K_SCHEMA, "generative": GENERATIVE_SCHEMA
}


def soft_values(path: LabeledPath) -> tuple[list[float], int]:
    """(soft label per step, steps without an MC value): the step's MC value; 0.0 for a step
    labeled negative only because it follows the first error; the hard label (1.0 / 0.0) where
    no MC value was sampled or where fusion overruled the value (``zero_before_disproved``, and
    ``mc_relative_drop``: a share above 0 labeled - for its drop), so soft and hard labels agree."""
    values, fallback = [], 0
    for label, value, source in zip(path.labels, path.step_mc_values(), path.label_sources or [""] * len(path.labels)):
        if source == "after_first_error":
            values.append(0.0)
        elif value is None or source in ("zero_before_disproved", "mc_relative_drop"):
            # a yielded MC zero or a relative drop (labelers/fuse.py) is not the step's value: its hard label is
            values.append(1.0 if label else 0.0)
            fallback += 1
        else:
            values.append(float(value))
    return values, fallback


def _ids(path: LabeledPath) -> dict[str, Any]:
    return {"build_id": path.build_id, "problem_id": path.problem_id, "path_id": path.path_id, "source": path.source,
            "mc_values": path.step_mc_values()}


def trl_record(path: LabeledPath) -> dict[str, Any]:
    return {"prompt": path.question, "completions": list(path.steps), "labels": list(path.labels), **_ids(path)}


def math_shepherd_record(path: LabeledPath, soft_labels: bool = False) -> tuple[dict[str, Any], int]:
    """(record, number of step tags escaped inside step texts). ``value``: one label per step
    tag, ``"+"``/``"-"`` or (``soft_labels``) the soft values of :func:`soft_values`."""
    escaped = sum(step.count(STEP_TAG) for step in path.steps) + path.question.count(STEP_TAG)
    question = path.question.replace(STEP_TAG, STEP_TAG_ESCAPE)
    lines_input = []
    lines_label = []
    for number, (step, label) in enumerate(zip(path.steps, path.labels), start=1):
        text = f"Step {number}: {step.replace(STEP_TAG, STEP_TAG_ESCAPE)}"
        lines_input.append(f"{text} {STEP_TAG}")
        lines_label.append(f"{text} {'+' if label else '-'}")
    record = {
        "input": f"{question} " + "\n".join(lines_input),
        "label": f"{question} " + "\n".join(lines_label),
        "task": path.source,
        "value": soft_values(path)[0] if soft_labels else ["+" if label else "-" for label in path.labels],
        **_ids(path),
    }
    return record, escaped


def parse_math_shepherd(input_text: str, label_text: str) -> list[bool]:
    """Step labels of a Math-Shepherd record: the character at each tag's place in ``label``."""
    pieces = input_text.split(STEP_TAG)
    labels = []
    offset = 0
    for piece in pieces[:-1]:
        offset += len(piece)
        mark = label_text[offset]
        if mark not in "+-":
            raise ValueError(f"no +/- at offset {offset} of the label text")
        labels.append(mark == "+")
        offset += 1
    return labels


def prm800k_finish_reason(path: LabeledPath) -> str:
    """``found_error`` when a step is negative, ``solution`` when all are positive and the path
    gives a final answer, ``give_up`` when it stops without one."""
    if not path.positive:
        return "found_error"
    return "solution" if path.final_answer is not None else "give_up"


def prm800k_record(path: LabeledPath) -> dict[str, Any]:
    steps = [
        {
            "completions": [{"text": step, "rating": 1 if label else -1, "flagged": False}],
            "human_completion": None,
            # PRM800K marks the continued-from completion; a rated -1 step ends the labeling.
            "chosen_completion": 0 if label else None,
        }
        for step, label in zip(path.steps, path.labels)
    ]
    return {
        "labeler": "prmforge",
        "timestamp": path.finished_at,
        "generation": None,
        "is_quality_control_question": False,
        "is_initial_screening_question": False,
        "question": {"problem": path.question, "ground_truth_answer": path.gold_answer},
        "label": {"steps": steps, "total_time": None, "finish_reason": prm800k_finish_reason(path)},
        **_ids(path),
    }


def with_verdict(rationale: str, label: bool) -> tuple[str, bool]:
    """(assistant text, whether a verdict token was appended): the rationale is kept as written
    when it already ends in a verdict token (labelers.rationale ends it in a line
    ``Verdict: \\boxed{+}`` or ``Verdict: \\boxed{-}``); otherwise that line is appended for
    the step's label."""
    stripped = rationale.rstrip()
    if stripped.endswith(VERDICT_TOKENS[True]) or stripped.endswith(VERDICT_TOKENS[False]):
        return rationale, False
    return f"{stripped}\nVerdict: {VERDICT_TOKENS[label]}".strip(), True


def generative_record(path: LabeledPath) -> tuple[dict[str, Any], int, int]:
    """(record, verdict tokens appended, rationales whose token contradicts the label)."""
    messages = [{"role": "system", "content": GENERATIVE_SYSTEM_PROMPT}]
    appended = contradicting = 0
    for number, (step, label, rationale) in enumerate(zip(path.steps, path.labels, path.rationales), start=1):
        step_text = f"Step {number}: {step}"
        user = f"Problem: {path.question}\n\n{step_text}" if number == 1 else step_text
        assistant, was_appended = with_verdict(rationale, label)
        appended += was_appended
        contradicting += not assistant.rstrip().endswith(VERDICT_TOKENS[label])
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, "labels": list(path.labels), **_ids(path)}, appended, contradicting


def build_records(
    paths: Sequence[LabeledPath], format: str, soft_labels: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of ``format`` for ``paths`` and notes on anything altered."""
    notes: list[str] = []
    if soft_labels and format not in SOFT_LABEL_FORMATS:
        raise PrmforgeError(
            f"--soft-labels: the {format} layout holds hard labels only ({TRAINERS[format]}); soft labels go in "
            f"--format {' or '.join(SOFT_LABEL_FORMATS)}; every format carries the MC values in its mc_values column"
        )
    if format == "trl":
        return [trl_record(p) for p in paths], notes
    if format == "math-shepherd":
        records, escaped = [], 0
        for path in paths:
            record, count = math_shepherd_record(path, soft_labels)
            records.append(record)
            escaped += count
        if soft_labels:
            fallback = sum(soft_values(p)[1] for p in paths)
            if fallback:
                notes.append(f"{fallback} step(s) have no MC value; their soft label is the hard label (1.0 / 0.0)")
        if escaped:
            notes.append(f"{escaped} step tag(s) '{STEP_TAG}' inside questions or step texts "
                         f"were written as '{STEP_TAG_ESCAPE}'")
        return records, notes
    if format == "prm800k":
        return [prm800k_record(p) for p in paths], notes
    if format == "generative":
        records, appended, contradicting = [], 0, 0
        for path in paths:
            record, was_appended, contradicted = generative_record(path)
            records.append(record)
            appended += was_appended
            contradicting += contradicted
        if appended:
            notes.append(f"{appended} rationale(s) had no verdict token; the label's token was appended")
        if contradicting:
            notes.append(f"{contradicting} rationale(s) end in a verdict token that contradicts fused_label "
                         "(kept as written)")
        return records, notes
    raise PrmforgeError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")


def schema_for(format: str, soft_labels: bool = False) -> pa.Schema:
    return MATH_SHEPHERD_SOFT_SCHEMA if format == "math-shepherd" and soft_labels else SCHEMAS[format]
