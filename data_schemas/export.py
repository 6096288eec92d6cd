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

Code: :mod:`data_schemas.export_query` (loading paths, the filters), :mod:`data_schemas.export_formats`
(the layouts), :mod:`data_schemas.export_write` (Parquet / JSON Lines, metadata); this module runs
an export (:func:`export_paths`) and re-exports their public names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_schemas.catalog import Catalog
from data_schemas.errors import PrmforgeError
from data_schemas.export_formats import (
    DEFAULT_AFTER_FIRST_ERROR,
    FORMATS,
    GENERATIVE_SCHEMA,
    GENERATIVE_SYSTEM_PROMPT,
    MATH_SHEPHERD_SCHEMA,
    MATH_SHEPHERD_SOFT_SCHEMA,
    PRM800K_SCHEMA,
    SCHEMAS,
    SOFT_LABEL_FORMATS,
    STEP_TAG,
    STEP_TAG_ESCAPE,
    TRAINERS,
    TRL_SCHEMA,
    VERDICT_TOKENS,
    build_records,
    generative_record,
    math_shepherd_record,
    parse_math_shepherd,
    prm800k_finish_reason,
    prm800k_record,
    schema_for,
    soft_values,
    trl_record,
    with_verdict,
)
from data_schemas.export_query import (
    AFTER_FIRST_ERROR,
    LabeledPath,
    apply_after_first_error,
    apply_min_confidence,
    balance_paths,
    load_paths,
    path_query,
    step_is_confident,
)
from data_schemas.export_write import EXPORT_METADATA_KEY, read_export_metadata, write_records

__all__ = [
    "AFTER_FIRST_ERROR",
    "DEFAULT_AFTER_FIRST_ERROR",
    "EXPORT_METADATA_KEY",
    "FORMATS",
    "GENERATIVE_SCHEMA",
    "GENERATIVE_SYSTEM_PROMPT",
    "MATH_SHEPHERD_SCHEMA",
    "MATH_SHEPHERD_SOFT_SCHEMA",
    "PRM800K_SCHEMA",
    "SCHEMAS",
    "SOFT_LABEL_FORMATS",
    "STEP_TAG",
    "STEP_TAG_ESCAPE",
    "TRAINERS",
    "TRL_SCHEMA",
    "VERDICT_TOKENS",
    "ExportResult",
    "LabeledPath",
    "apply_after_first_error",
    "apply_min_confidence",
    "balance_paths",
    "build_records",
    "export_paths",
    "generative_record",
    "load_paths",
    "math_shepherd_record",
    "parse_math_shepherd",
    "path_query",
    "prm800k_finish_reason",
    "prm800k_record",
    "read_export_metadata",
    "schema_for",
    "soft_values",
    "step_is_confident",
    "trl_record",
    "with_verdict",
    "write_records",
]


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
