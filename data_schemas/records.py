"""Typed records, one class per table in :mod:`data_schemas.schemas`.

Field names and order equal the schema's columns (a test checks it), so
``pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=...)`` just works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class Problem:
    problem_id: str
    source: str
    question: str
    gold_answer: str
    reference_solution: str | None = None
    subject: str | None = None
    level: int | None = None
    source_row: int | None = None


@dataclass(frozen=True)
class StepRow:
    build_id: str
    problem_id: str
    source: str
    path_id: str
    node_id: str
    step_index: int
    num_steps: int
    step_text: str
    prefix_hash: str
    tool_verdict: str
    tool_kind: str
    tool_evidence: str | None
    lean_state: str
    lean_statement: str | None
    lean_message: str | None
    mc_correct: int | None
    mc_total: int | None
    mc_value: float | None
    mc_inferred: bool
    hard_label: bool | None
    fused_reward: float
    fused_label: bool
    label_source: str
    signals_agree: bool
    consensus: bool
    rationale: str
    is_first_error: bool
    path_final_answer: str | None
    path_correct: bool | None
    generator_model: str
    seed: int
    # The step judge (labelers/judge.py); null when it did not run (judge_status "not_run").
    judge_verdict: str | None = None
    judge_reply: str | None = None
    judge_status: str = "not_run"


@dataclass(frozen=True)
class NodeRow:
    build_id: str
    problem_id: str
    source: str
    node_id: str
    parent_id: str | None
    depth: int
    step_text: str
    prefix_hash: str
    visits: int
    value_sum: float
    q_value: float | None
    is_terminal: bool
    final_answer: str | None
    reached_gold: bool | None
    tool_verdict: str | None
    mc_value: float | None


@dataclass(frozen=True)
class ProblemOutcome:
    build_id: str
    problem_id: str
    source: str
    question: str
    gold_answer: str
    status: str
    failed_stage: str | None
    error: str | None
    num_paths: int
    num_steps: int
    num_positive: int
    num_negative: int
    rollouts: int
    prompt_tokens: int
    completion_tokens: int
    wall_seconds: float


def to_table(records: list[Any], schema: pa.Schema) -> pa.Table:
    """Records (dataclass instances of one kind) as an Arrow table with ``schema``."""
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in records], schema=schema)
