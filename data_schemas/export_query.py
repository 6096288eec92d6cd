"""Which paths an export holds: labeled paths loaded from the catalog, and the filters on them.

:func:`load_paths` reads one :class:`LabeledPath` per solution path (:func:`path_query`, with an
optional ``where`` predicate); :func:`balance_paths`, :func:`apply_after_first_error` and
:func:`apply_min_confidence` are the filters :func:`data_schemas.export.export_paths` applies
(the order and the rules are in :mod:`data_schemas.export`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from data_schemas.catalog import Catalog, arrow_result
from data_schemas.errors import PrmforgeError

AFTER_FIRST_ERROR = ("truncate", "negative")


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
        raise PrmforgeError(
            f"--after-first-error must be one of {', '.join(AFTER_FIRST_ERROR)}, got {after_first_error!r}"
        )
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
