"""Build statistics computed with DuckDB over a :class:`~data_schemas.catalog.Catalog`.

Every section is an Arrow table (the CLI prints them; :func:`plot_stats` draws a few). MC label
means the Math-Shepherd hard label ``hard_label`` (mc_correct > 0); "not estimated" when null.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa

from data_schemas.catalog import Catalog


def _versus_mc_sql(column: str) -> str:
    """Cross-tab of a verifier column against the MC hard label."""
    return f"""
        SELECT {column},
               count(*) FILTER (WHERE hard_label) AS mc_positive,
               count(*) FILTER (WHERE NOT hard_label) AS mc_negative,
               count(*) FILTER (WHERE hard_label IS NULL) AS mc_not_estimated,
               count(*) AS steps
        FROM steps GROUP BY 1 ORDER BY 1"""


SECTION_SQL: dict[str, str] = {
    "labels": """
        SELECT CASE WHEN fused_label THEN 'positive' ELSE 'negative' END AS label,
               count(*) AS steps,
               round(count(*) / sum(count(*)) OVER (), 4) AS share
        FROM steps GROUP BY 1 ORDER BY 1 DESC""",
    "label_sources": """
        SELECT label_source, count(*) AS steps,
               count(*) FILTER (WHERE fused_label) AS positive,
               count(*) FILTER (WHERE NOT fused_label) AS negative
        FROM steps GROUP BY 1 ORDER BY steps DESC, label_source""",
    "steps_per_path": """
        SELECT num_steps, count(*) AS paths
        FROM (SELECT build_id, problem_id, path_id, count(*) AS num_steps FROM steps GROUP BY ALL)
        GROUP BY 1 ORDER BY 1""",
    "first_error": """
        SELECT coalesce(CAST(first_error AS VARCHAR), 'none') AS first_error_step, count(*) AS paths
        FROM (SELECT build_id, problem_id, path_id,
                     min(step_index) FILTER (WHERE is_first_error) AS first_error
              FROM steps GROUP BY ALL)
        GROUP BY first_error ORDER BY first_error IS NULL, first_error""",
    "tool_vs_mc": _versus_mc_sql("tool_verdict"),
    "lean_vs_mc": _versus_mc_sql("lean_state"),
    "tool_vs_lean": """
        SELECT tool_verdict, lean_state, count(*) AS steps
        FROM steps GROUP BY 1, 2 ORDER BY 1, 2""",
    "agreement": """
        UNPIVOT (SELECT
          count(*) AS steps,
          count(*) FILTER (WHERE signals_agree) AS signals_agree,
          count(*) FILTER (WHERE tool_verdict IN ('correct', 'incorrect') AND hard_label IS NOT NULL)
            AS tool_and_mc_decided,
          count(*) FILTER (WHERE (tool_verdict = 'correct' AND hard_label)
                              OR (tool_verdict = 'incorrect' AND NOT hard_label)) AS tool_mc_agree,
          count(*) FILTER (WHERE lean_state IN ('proved', 'disproved') AND hard_label IS NOT NULL)
            AS lean_and_mc_decided,
          count(*) FILTER (WHERE (lean_state = 'proved' AND hard_label)
                              OR (lean_state = 'disproved' AND NOT hard_label)) AS lean_mc_agree,
          count(DISTINCT (build_id, problem_id, path_id)) AS paths,
          count(DISTINCT (build_id, problem_id, path_id)) FILTER (WHERE consensus) AS consensus_paths
        FROM steps) ON COLUMNS(*) INTO NAME metric VALUE count""",
    "outcomes": """
        SELECT status, coalesce(failed_stage, '') AS failed_stage, count(*) AS problems
        FROM problems GROUP BY 1, 2 ORDER BY problems DESC, status, failed_stage""",
    "usage": """
        SELECT build_id,
               count(*) AS problems,
               CAST(sum(rollouts) AS BIGINT) AS rollouts,
               CAST(sum(prompt_tokens) AS BIGINT) AS prompt_tokens,
               CAST(sum(completion_tokens) AS BIGINT) AS completion_tokens,
               round(sum(rollouts) / count(*), 2) AS rollouts_per_problem,
               round(sum(completion_tokens) / nullif(sum(num_steps), 0), 1) AS completion_tokens_per_step,
               round(sum(wall_seconds), 1) AS wall_seconds
        FROM problems GROUP BY 1 ORDER BY 1""",
}

SECTION_TITLES = {
    "labels": "Step labels (fused_label)",
    "label_sources": "Fusion rule that decided the label",
    "steps_per_path": "Steps per solution path",
    "first_error": "First-error step (0-based) per path",
    "tool_vs_mc": "Tool verdict x MC hard label (steps)",
    "lean_vs_mc": "Lean state x MC hard label (steps)",
    "tool_vs_lean": "Tool verdict x Lean state (steps)",
    "agreement": "Signal agreement",
    "outcomes": "Problems per outcome status",
    "usage": "Rollouts and tokens per build",
}


@dataclass(frozen=True)
class BuildStats:
    """One Arrow table per section of :data:`SECTION_SQL` (same names)."""

    labels: pa.Table
    label_sources: pa.Table
    steps_per_path: pa.Table
    first_error: pa.Table
    tool_vs_mc: pa.Table
    lean_vs_mc: pa.Table
    tool_vs_lean: pa.Table
    agreement: pa.Table
    outcomes: pa.Table
    usage: pa.Table

    def sections(self) -> list[tuple[str, str, pa.Table]]:
        """(name, title, table) in display order."""
        return [(f.name, SECTION_TITLES[f.name], getattr(self, f.name)) for f in fields(self)]


def compute_stats(catalog: Catalog) -> BuildStats:
    """All sections for the builds the catalog covers."""
    return BuildStats(**{name: catalog.query(sql) for name, sql in SECTION_SQL.items()})


def plot_stats(stats: BuildStats, out: str | Path) -> Path:
    """A 2x3 panel PNG: labels, steps per path, first error, tool x MC, outcomes, tokens.

    Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3)

    def bars(ax, labels, values, title, xlabel, color="#4C72B0"):
        ax.bar([str(x) for x in labels], values, color=color)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if not labels:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)

    labels = stats.labels.to_pydict()
    bars(axes[0, 0], labels["label"], labels["steps"], "Step labels", "fused_label", "#55A868")
    per_path = stats.steps_per_path.to_pydict()
    bars(axes[0, 1], per_path["num_steps"], per_path["paths"], "Steps per path", "steps")
    first = stats.first_error.to_pydict()
    bars(axes[0, 2], first["first_error_step"], first["paths"], "First error position",
         "step index (none = all correct)", "#C44E52")

    tool = stats.tool_vs_mc.to_pydict()
    columns = ["mc_positive", "mc_negative", "mc_not_estimated"]
    matrix = [[tool[c][i] for c in columns] for i in range(len(tool["tool_verdict"]))]
    ax = axes[1, 0]
    if matrix:
        ax.imshow(matrix, cmap="Blues", aspect="auto")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(len(columns)), ["MC +", "MC -", "MC n/a"])
    ax.set_yticks(range(len(tool["tool_verdict"])), tool["tool_verdict"])
    ax.set_title("Tool verdict x MC label")

    outcomes = stats.outcomes.to_pydict()
    names = [f"{s}\n{f}" if f else s for s, f in zip(outcomes["status"], outcomes["failed_stage"])]
    bars(axes[1, 1], names, outcomes["problems"], "Problems per outcome", "status / failed stage", "#8172B2")

    usage = stats.usage.to_pydict()
    ax = axes[1, 2]
    positions = range(len(usage["build_id"]))
    ax.bar([p - 0.2 for p in positions], usage["prompt_tokens"], width=0.4, label="prompt")
    ax.bar([p + 0.2 for p in positions], usage["completion_tokens"], width=0.4, label="completion")
    ax.set_xticks(list(positions), usage["build_id"], rotation=20)
    ax.set_title("Tokens per build")
    ax.legend()

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path
