"""Exports of labeled paths to the layouts PRM trainers read.

One exported record is one labeled solution *path* (the step rows sharing build_id, problem_id
and path_id, in step_index order), joined with its problem's question and gold answer. The step
label is ``steps.fused_label``. Steps after a path's first error are handled per format
(``after_first_error``; defaults in :data:`DEFAULT_AFTER_FIRST_ERROR`): ``truncate`` ends the path
at its first negative step, ``negative`` keeps the later steps as negatives (possible only where
the build kept them: ``fuse.after_first_error = "negative"``).

Formats (``--format``):

``trl``           TRL PRMTrainer stepwise supervision: ``prompt`` (str), ``completions``
                  (list of step strings), ``labels`` (list of bools).
``math-shepherd`` ``input`` = question, a space, then ``Step k: <step> ки`` lines joined by
                  newlines; ``label`` = the same text with each step tag replaced by ``+`` or
                  ``-``; ``task`` = the problem's source.
``prm800k``       PRM800K-like: ``question{problem, ground_truth_answer}``,
                  ``label{steps[{completions[{text, rating, flagged}], human_completion,
                  chosen_completion}], total_time, finish_reason}``; rating 1 = positive,
                  -1 = negative (0, PRM800K's "neutral", is never written).
``generative``    chat ``messages`` per path for generative PRMs: a system turn, then per step a
                  user turn with the step (the first one also carries the problem) and an
                  assistant turn with the step's rationale ending in its verdict token.

Every record also carries ``build_id``, ``problem_id``, ``path_id`` and ``source`` so an example
can be traced back to its rows, and ``mc_values`` (the steps' Monte Carlo values, null where not
sampled: soft labels kept as metadata). ``math-shepherd`` adds ``value``, the per-step labels
OpenRLHF's ``train_prm`` reads (``"+"``/``"-"``, or with ``soft_labels`` the MC values). The
output is Parquet, or JSON Lines when the path ends in ``.jsonl``; what was exported and for which
trainer is in the Parquet footer (key ``prmforge.export``) or, for JSON Lines, in
``<out>.meta.json``.

Filters, applied in this order: ``where`` (a SQL predicate over the ``steps`` view; a path is
kept when *at least one* of its steps satisfies it, and then exported whole), ``consensus``
(keep paths whose steps all have ``consensus = true``), ``balance`` (seeded downsampling of the
larger class so positive : negative paths ≈ ratio, where a path is positive when all its step
labels are true). Between consensus and balance: after-first-error handling, then
``min_confidence`` (a path is cut before its first step whose signals disagree or whose MC value
rests on fewer than ``min_confidence`` rollouts; a path with no step left is dropped).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from data_schemas.catalog import Catalog, arrow_result
from data_schemas.errors import PrmforgeError
from data_schemas.shards import DataRoot, resolve_root, write_bytes_atomic, write_chunks_atomic

FORMATS = ("trl", "math-shepherd", "prm800k", "generative")

#: The trainer each format is written for (also in every export's metadata and docs/storage.md).
TRAINERS = {
    "trl": "trl==1.13.0 PRMTrainer (trl.experimental.prm; the last trl release that has it)",
    "math-shepherd": "OpenRLHF train_prm: --input_key input --label_key value --placeholder_token ки --reward_tokens + -",
    "prm800k": "PRM800K phase-2 JSON Lines readers (openai/prm800k layout); no trainer pinned",
    "generative": "trl==1.13.0 SFTTrainer on conversational 'messages' (any chat SFT trainer reads it)",
}
AFTER_FIRST_ERROR = ("truncate", "negative")
#: Steps after the first error, per format: Math-Shepherd and TRL's stepwise data label every step
#: (later steps negative); PRM800K stops rating at the first -1 step, and a generative verifier's
#: critique ends at the first wrong step.
DEFAULT_AFTER_FIRST_ERROR = {"trl": "negative", "math-shepherd": "negative", "prm800k": "truncate", "generative": "truncate"}
#: Formats whose label column can hold the MC value (OpenRLHF reads float labels as soft labels;
#: TRL's PRMTrainer casts labels to int, PRM800K ratings and verdict tokens are discrete).
SOFT_LABEL_FORMATS = ("math-shepherd",)
#: Parquet footer key of an export's metadata (JSON).
EXPORT_METADATA_KEY = "prmforge.export"

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
    [pa.field("prompt", pa.string()), pa.field("completions", pa.list_(pa.string())), pa.field("labels", pa.list_(pa.bool_()))]
    + _ID_FIELDS
)
MATH_SHEPHERD_SCHEMA = pa.schema(
    [pa.field("input", pa.string()), pa.field("label", pa.string()), pa.field("task", pa.string()),
     pa.field("value", pa.list_(pa.string()))] + _ID_FIELDS
)
MATH_SHEPHERD_SOFT_SCHEMA = MATH_SHEPHERD_SCHEMA.set(3, pa.field("value", pa.list_(pa.float64())))
_PRM800K_COMPLETION = pa.struct([("text", pa.string()), ("rating", pa.int64()), ("flagged", pa.bool_())])
_PRM800K_HUMAN = pa.struct([("text", pa.string()), ("rating", pa.int64()), ("source", pa.string()), ("flagged", pa.bool_())])
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
SCHEMAS = {"trl": TRL_SCHEMA, "math-shepherd": MATH_SHEPHERD_SCHEMA, "prm800k": PRM800K_SCHEMA, "generative": GENERATIVE_SCHEMA}


@dataclass(frozen=True)
class LabeledPath:
    """One solution path with its steps and labels, in step order."""

    build_id: str
    problem_id: str
    path_id: str
    source: str
    question: str
    gold_answer: str
    steps: list[str]
    labels: list[bool]
    rationales: list[str]
    consensus: bool
    final_answer: str | None
    generator_model: str
    finished_at: str | None
    # Per-step evidence (empty = unknown, e.g. a path made by hand): MC value and rollouts
    # (None where not sampled), signal agreement, fusion branch; the path's length in the build.
    mc_values: Sequence[float | None] = ()
    mc_totals: Sequence[int | None] = ()
    signals_agree: Sequence[bool] = ()
    label_sources: Sequence[str] = ()
    num_steps: int | None = None

    def step_mc_values(self) -> list[float | None]:
        return list(self.mc_values) if self.mc_values else [None] * len(self.steps)

    def prefix(self, count: int) -> "LabeledPath":
        """The path's first ``count`` steps (per-step lists cut alike)."""
        return replace(
            self, steps=self.steps[:count], labels=self.labels[:count], rationales=self.rationales[:count],
            mc_values=self.mc_values[:count], mc_totals=self.mc_totals[:count],
            signals_agree=self.signals_agree[:count], label_sources=self.label_sources[:count],
        )

    @property
    def positive(self) -> bool:
        """A path is positive when every step label is true."""
        return all(self.labels)


@dataclass
class ExportResult:
    """What an export wrote and what each filter removed."""

    format: str
    out: str
    paths_total: int
    paths_after_where: int
    paths_after_consensus: int
    records: int
    steps: int
    positive_paths: int
    negative_paths: int
    notes: list[str] = field(default_factory=list)
    after_first_error: str = "negative"
    soft_labels: bool = False
    min_confidence: int | None = None
    paths_after_confidence: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def path_query(where: str | None) -> str:
    """SQL selecting one row per path (lists in step order) joined with its problem."""
    selected = ""
    if where is not None and where.strip():
        selected = f"""
        JOIN (SELECT DISTINCT build_id, problem_id, path_id FROM steps WHERE ({where})) AS selected
          USING (build_id, problem_id, path_id)"""
    return f"""
    WITH paths AS (
      SELECT build_id, problem_id, path_id,
             any_value(source) AS source,
             list(step_text ORDER BY step_index) AS steps,
             list(fused_label ORDER BY step_index) AS labels,
             list(rationale ORDER BY step_index) AS rationales,
             list(mc_value ORDER BY step_index) AS mc_values,
             list(mc_total ORDER BY step_index) AS mc_totals,
             list(signals_agree ORDER BY step_index) AS signals_agree,
             list(label_source ORDER BY step_index) AS label_sources,
             any_value(num_steps) AS num_steps,
             bool_and(consensus) AS consensus,
             any_value(path_final_answer) AS final_answer,
             any_value(generator_model) AS generator_model
      FROM steps{selected}
      GROUP BY build_id, problem_id, path_id
    ),
    problem_text AS (
      SELECT build_id, problem_id, any_value(question) AS question, any_value(gold_answer) AS gold_answer
      FROM problems GROUP BY build_id, problem_id
    )
    SELECT paths.*, problem_text.question, problem_text.gold_answer,
           strftime(builds.finished_at, '%Y-%m-%dT%H:%M:%SZ') AS finished_at
    FROM paths
    LEFT JOIN problem_text USING (build_id, problem_id)
    LEFT JOIN builds USING (build_id)
    ORDER BY build_id, source, problem_id, path_id
    """


def load_paths(catalog: Catalog, where: str | None = None) -> list[LabeledPath]:
    """Labeled paths of the catalog (those with a step matching ``where`` when given)."""
    table = arrow_result(catalog.relation(path_query(where)))
    rows = table.to_pylist()
    missing = [r for r in rows if r["question"] is None]
    if missing:
        first = missing[0]
        raise PrmforgeError(
            f"{len(missing)} path(s) have no problem row (first: build {first['build_id']}, problem "
            f"{first['problem_id']}); the build's outcomes shards are incomplete"
        )
    return [
        LabeledPath(
            build_id=r["build_id"], problem_id=r["problem_id"], path_id=r["path_id"], source=r["source"],
            question=r["question"], gold_answer=r["gold_answer"], steps=r["steps"], labels=r["labels"],
            rationales=r["rationales"], consensus=bool(r["consensus"]), final_answer=r["final_answer"],
            generator_model=r["generator_model"], finished_at=r["finished_at"], mc_values=r["mc_values"],
            mc_totals=r["mc_totals"], signals_agree=r["signals_agree"], label_sources=r["label_sources"],
            num_steps=r["num_steps"],
        )
        for r in rows
    ]


def _draw_key(seed: int, path: LabeledPath) -> str:
    return hashlib.sha256(f"{seed}\x1f{path.build_id}\x1f{path.problem_id}\x1f{path.path_id}".encode()).hexdigest()


def balance_paths(paths: Sequence[LabeledPath], ratio: float, seed: int = 0) -> list[LabeledPath]:
    """Downsample the larger class so positive : negative ≈ ``ratio``; order is kept.

    With P positive and N negative paths: if P > ratio * N keep all negatives and
    round(ratio * N) positives, else keep all positives and round(P / ratio) negatives. Which
    paths stay is decided by sha256(seed, build_id, problem_id, path_id) order: deterministic and
    independent of the input order.
    """
    if not ratio > 0:
        raise PrmforgeError(f"--balance must be a positive ratio (positive:negative), got {ratio}")
    positive = [p for p in paths if p.positive]
    negative = [p for p in paths if not p.positive]
    if not positive or not negative:
        raise PrmforgeError(
            f"cannot balance: {len(positive)} positive and {len(negative)} negative paths (need both)"
        )
    if len(positive) > ratio * len(negative):
        keep_positive, keep_negative = max(1, round(ratio * len(negative))), len(negative)
    else:
        keep_positive, keep_negative = len(positive), max(1, min(len(negative), round(len(positive) / ratio)))
    kept = {
        id(p)
        for group, count in ((positive, keep_positive), (negative, keep_negative))
        for p in sorted(group, key=lambda p: _draw_key(seed, p))[:count]
    }
    return [p for p in paths if id(p) in kept]


def apply_after_first_error(path: LabeledPath, after_first_error: str) -> LabeledPath:
    """``truncate``: the path up to and including its first negative step; ``negative``: as is
    (the labeling core already labels the steps after the first error negative)."""
    if after_first_error not in AFTER_FIRST_ERROR:
        raise PrmforgeError(f"--after-first-error must be one of {', '.join(AFTER_FIRST_ERROR)}, got {after_first_error!r}")
    if after_first_error == "truncate" and not path.positive:
        return path.prefix(path.labels.index(False) + 1)
    return path


def step_is_confident(path: LabeledPath, index: int, min_rollouts: int) -> bool:
    """A step is confident when its signals agree and its label does not rest on an MC value of
    fewer than ``min_rollouts`` rollouts. Not resting on a sampled value: no MC value (the label
    came from a verifier, the path outcome or an inferred first-error search label), or the
    path's last step when the path states a final answer (its value is that answer checked
    against gold, exact with one "rollout")."""
    if path.signals_agree and not path.signals_agree[index]:
        return False
    total = path.mc_totals[index] if path.mc_totals else None
    if total is None:
        return True
    exact_last = path.num_steps is not None and index == path.num_steps - 1 and path.final_answer is not None
    return exact_last or total >= min_rollouts


def apply_min_confidence(path: LabeledPath, min_rollouts: int) -> LabeledPath | None:
    """The path cut before its first unconfident step (a step's label is a statement about its
    prefix, so the steps before it keep their meaning); None when no step is left."""
    for index in range(len(path.steps)):
        if not step_is_confident(path, index, min_rollouts):
            return path.prefix(index) if index else None
    return path


def soft_values(path: LabeledPath) -> tuple[list[float], int]:
    """(soft label per step, steps without an MC value): the step's MC value; 0.0 for a step
    labeled negative only because it follows the first error; the hard label (1.0 / 0.0) where
    no MC value was sampled or where fusion overruled the value (``zero_before_disproved``)."""
    values, fallback = [], 0
    for label, value, source in zip(path.labels, path.step_mc_values(), path.label_sources or [""] * len(path.labels)):
        if source == "after_first_error":
            values.append(0.0)
        elif value is None or source == "zero_before_disproved":
            # a yielded MC zero (labelers/fuse.py, path rule) is not the step's value: its hard label is
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


def build_records(paths: Sequence[LabeledPath], format: str, soft_labels: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
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
            notes.append(f"{escaped} step tag(s) '{STEP_TAG}' inside questions or step texts were written as '{STEP_TAG_ESCAPE}'")
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
            notes.append(f"{contradicting} rationale(s) end in a verdict token that contradicts fused_label (kept as written)")
        return records, notes
    raise PrmforgeError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")


def schema_for(format: str, soft_labels: bool = False) -> pa.Schema:
    return MATH_SHEPHERD_SOFT_SCHEMA if format == "math-shepherd" and soft_labels else SCHEMAS[format]


def _parent_and_name(out: str) -> tuple[DataRoot, str]:
    target = resolve_root(out)
    directory, name = target.base.rsplit("/", 1) if "/" in target.base else (".", target.base)
    return DataRoot(target.uri, target.filesystem, directory or "/", target.is_local), name


def write_records(records: list[dict[str, Any]], schema: pa.Schema, out: str, metadata: dict[str, Any] | None = None) -> None:
    """Write records as Parquet (zstd) or, for ``*.jsonl``, JSON Lines — atomically. ``metadata``
    goes in the Parquet footer (key ``prmforge.export``), or next to a JSON Lines file as
    ``<out>.meta.json``."""
    parent, name = _parent_and_name(out)
    if name.endswith(".jsonl"):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        if metadata is not None:
            write_bytes_atomic(parent, name + ".meta.json", (json.dumps(metadata, indent=1, sort_keys=True) + "\n").encode())
        write_bytes_atomic(parent, name, data)
    else:
        if metadata is not None:
            schema = schema.with_metadata({**(schema.metadata or {}), EXPORT_METADATA_KEY: json.dumps(metadata, sort_keys=True)})
        table = pa.Table.from_pylist(records, schema=schema)
        write_chunks_atomic(parent, name, schema, [table])


def read_export_metadata(out: str) -> dict[str, Any] | None:
    """The metadata an export wrote (Parquet footer or ``<out>.meta.json``); None when absent."""
    import pyarrow.parquet as pq

    parent, name = _parent_and_name(out)
    fs = parent.filesystem
    if name.endswith(".jsonl"):
        try:
            with fs.open_input_stream(parent.join(name + ".meta.json")) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None
    with fs.open_input_file(parent.join(name)) as handle:
        raw = (pq.read_schema(handle).metadata or {}).get(EXPORT_METADATA_KEY.encode())
    return json.loads(raw) if raw else None


def export_paths(
    catalog: Catalog,
    format: str,
    out: str,
    where: str | None = None,
    consensus: bool = False,
    balance: float | None = None,
    seed: int = 0,
    after_first_error: str | None = None,
    soft_labels: bool = False,
    min_confidence: int | None = None,
) -> ExportResult:
    """Select, filter and write the catalog's labeled paths in ``format`` to ``out``, with the
    export's metadata (trainer, label kind, filters, after-first-error handling, counts)."""
    if format not in FORMATS:
        raise PrmforgeError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    handling = after_first_error or DEFAULT_AFTER_FIRST_ERROR[format]
    if handling not in AFTER_FIRST_ERROR:
        raise PrmforgeError(f"--after-first-error must be one of {', '.join(AFTER_FIRST_ERROR)}, got {handling!r}")
    if min_confidence is not None and min_confidence < 1:
        raise PrmforgeError(f"--min-confidence is a number of rollouts (>= 1), got {min_confidence}")
    if soft_labels and format not in SOFT_LABEL_FORMATS:
        build_records([], format, soft_labels)  # raises the one-line error
    total = catalog.query("SELECT count(*) AS n FROM (SELECT DISTINCT build_id, problem_id, path_id FROM steps)")
    paths = load_paths(catalog, where)
    after_where = len(paths)
    if consensus:
        paths = [p for p in paths if p.consensus]
    after_consensus = len(paths)
    notes: list[str] = []
    cut_by_build = sum(1 for p in paths if p.num_steps is not None and len(p.steps) < p.num_steps)
    if handling == "negative" and cut_by_build:
        notes.append(
            f"{cut_by_build} path(s) were truncated after their first error by the build (fuse.after_first_error = "
            "truncate): they have no later steps to keep as negatives"
        )
    steps_before = sum(len(p.steps) for p in paths)
    paths = [apply_after_first_error(p, handling) for p in paths]
    cut_after_error = steps_before - sum(len(p.steps) for p in paths)
    low_confidence_steps = low_confidence_paths = 0
    if min_confidence is not None:
        kept: list[LabeledPath] = []
        for path in paths:
            confident = apply_min_confidence(path, min_confidence)
            low_confidence_steps += len(path.steps) - (len(confident.steps) if confident else 0)
            if confident is None:
                low_confidence_paths += 1
            else:
                kept.append(confident)
        paths = kept
    after_confidence = len(paths)
    if balance is not None:
        paths = balance_paths(paths, balance, seed)
    records, record_notes = build_records(paths, format, soft_labels)
    notes += record_notes
    positive = sum(p.positive for p in paths)
    metadata = {
        "format": format,
        "trainer": TRAINERS[format],
        "labels": "soft (MC value)" if soft_labels else "hard (fused_label)",
        "after_first_error": handling,
        "after_first_error_steps_removed": cut_after_error,
        "paths_truncated_by_build": cut_by_build,
        "min_confidence_rollouts": min_confidence,
        "low_confidence_steps_removed": low_confidence_steps,
        "low_confidence_paths_removed": low_confidence_paths,
        "where": where,
        "consensus": consensus,
        "balance": balance,
        "seed": seed,
        "builds": sorted({p.build_id for p in paths}),
        "records": len(records),
        "steps": sum(len(p.steps) for p in paths),
        "positive_paths": positive,
        "negative_paths": len(paths) - positive,
        "notes": notes,
    }
    write_records(records, schema_for(format, soft_labels), out, metadata)
    return ExportResult(
        format=format,
        out=out,
        paths_total=int(total.column("n")[0].as_py()),
        paths_after_where=after_where,
        paths_after_consensus=after_consensus,
        records=len(records),
        steps=metadata["steps"],
        positive_paths=positive,
        negative_paths=len(paths) - positive,
        notes=notes,
        after_first_error=handling,
        soft_labels=soft_labels,
        min_confidence=min_confidence,
        paths_after_confidence=after_confidence,
        metadata=metadata,
    )
