"""``prmforge diff``: which step labels changed between two builds or two states of a dataset.

Steps are matched by (problem_id, path_id, step_index); path ids are derived from the problem
and the search tree, so the same seed and config give the same ids and a rerun with a changed
model or config shows which steps moved. Each matched or unmatched step gets one change kind,
the first that applies:

``added``               only in B
``removed``             only in A
``label_changed``       ``fused_label`` differs
``first_error_changed`` ``is_first_error`` differs (the path's first-error position moved)
``reward_changed``      ``|fused_reward_b - fused_reward_a| > tolerance``

Unchanged steps are counted, not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from data_schemas.catalog import Catalog, arrow_result

CHANGE_KINDS = ("added", "removed", "label_changed", "first_error_changed", "reward_changed")
DIFF_COLUMNS = "build_id, problem_id, source, path_id, step_index, step_text, fused_label, fused_reward, is_first_error"


@dataclass(frozen=True)
class StepDiff:
    changes: pa.Table  # one row per changed step
    counts: dict[str, int]  # change kind -> steps, plus "unchanged"


def diff_steps_of(catalog: Catalog, view: str = "steps") -> pa.Table:
    """The columns a diff compares, from one side's steps view."""
    return arrow_result(catalog.relation(f"SELECT {DIFF_COLUMNS} FROM {view}"))


def diff_steps(before: pa.Table, after: pa.Table, tolerance: float = 1e-9) -> StepDiff:
    """Compare two step tables (columns :data:`DIFF_COLUMNS`); see the module docstring."""
    connection = duckdb.connect(":memory:")
    try:
        connection.register("a", before)
        connection.register("b", after)
        classified = connection.sql(
            f"""
            SELECT coalesce(b.problem_id, a.problem_id) AS problem_id,
                   coalesce(b.source, a.source) AS source,
                   coalesce(b.path_id, a.path_id) AS path_id,
                   coalesce(b.step_index, a.step_index) AS step_index,
                   CASE WHEN a.problem_id IS NULL THEN 'added'
                        WHEN b.problem_id IS NULL THEN 'removed'
                        WHEN a.fused_label <> b.fused_label THEN 'label_changed'
                        WHEN a.is_first_error <> b.is_first_error THEN 'first_error_changed'
                        WHEN abs(a.fused_reward - b.fused_reward) > {float(tolerance)!r} THEN 'reward_changed'
                        ELSE 'unchanged' END AS change,
                   a.fused_label AS label_a, b.fused_label AS label_b,
                   a.fused_reward AS reward_a, b.fused_reward AS reward_b,
                   a.is_first_error AS first_error_a, b.is_first_error AS first_error_b,
                   a.build_id AS build_a, b.build_id AS build_b,
                   coalesce(b.step_text, a.step_text) AS step_text
            FROM a FULL OUTER JOIN b USING (problem_id, path_id, step_index)
            """
        )
        counts = {kind: 0 for kind in (*CHANGE_KINDS, "unchanged")}
        for kind, number in classified.aggregate("change, count(*)").fetchall():
            counts[kind] = number
        changes = arrow_result(
            classified.filter("change <> 'unchanged'").order("source, problem_id, path_id, step_index")
        )
    finally:
        connection.close()
    return StepDiff(changes, counts)
