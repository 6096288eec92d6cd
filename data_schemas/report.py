"""A self-contained HTML report of one build, from its shards through DuckDB.

``build_report(root, build_id)`` queries the catalog views (``steps``, ``problems``) and renders
one HTML page with every figure embedded as a base64 PNG data URI (no external file, no
JavaScript), so the page can be mailed or attached to an issue:

1. Summary: problems by status, steps, positive/negative labels, rollouts and tokens.
2. Label distribution: fused labels, tool verdicts, Lean states, label sources.
3. First-error position: histogram of ``step_index`` of the steps with ``is_first_error``.
4. Signal agreement: for each pair of signals (tool: correct/incorrect, Lean: proved/disproved,
   MC: hard label, fused label) the share of steps where both have a verdict and agree, with the
   number of such steps.
5. Cost: rollouts and completion tokens per labeled problem, rollouts per labeled step.
6. Failures: problems whose labeling failed, with stage and error.

Plots use matplotlib's object API (``Figure`` + Agg canvas), never pyplot's global state.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from data_schemas.catalog import Catalog
from data_schemas.errors import PrmforgeError
from data_schemas.shards import DataRoot

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("labels", "Label distribution"),
    ("first-error", "First-error position"),
    ("agreement", "Signal agreement"),
    ("cost", "Cost"),
    ("failures", "Failed problems"),
)

# Signal -> SQL expression giving TRUE (good step), FALSE (bad step) or NULL (no verdict).
SIGNALS: dict[str, str] = {
    "tool": "CASE tool_verdict WHEN 'correct' THEN TRUE WHEN 'incorrect' THEN FALSE END",
    "lean": "CASE lean_state WHEN 'proved' THEN TRUE WHEN 'disproved' THEN FALSE END",
    "mc": "hard_label",
    "fused": "fused_label",
}


@dataclass
class BuildReport:
    build_ids: list[str]
    html: str
    figures: list[str] = field(default_factory=list)  # names of the embedded PNG figures
    summary: dict[str, Any] = field(default_factory=dict)
    agreement: dict[tuple[str, str], tuple[float | None, int]] = field(default_factory=dict)


def _rows(catalog: Catalog, sql: str) -> list[dict[str, Any]]:
    return catalog.query(sql).to_pylist()


def _png(figure: Any) -> str:
    """The figure as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _bar(axis: Any, counts: Sequence[tuple[str, int]], title: str) -> None:
    labels = [str(label) for label, _ in counts]
    values = [value for _, value in counts]
    bars = axis.bar(range(len(values)), values, color="#4c72b0")
    axis.set_xticks(range(len(values)))
    axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axis.set_title(title, fontsize=10)
    for bar, value in zip(bars, values):
        axis.annotate(str(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                      va="bottom", fontsize=7)


def _counts(catalog: Catalog, column: str, table: str = "steps") -> list[tuple[str, int]]:
    rows = _rows(catalog, f'SELECT CAST("{column}" AS VARCHAR) AS k, count(*) AS n FROM {table} GROUP BY 1 ORDER BY 1')
    return [("null" if r["k"] is None else r["k"], int(r["n"])) for r in rows]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def agreement_matrix(catalog: Catalog) -> dict[tuple[str, str], tuple[float | None, int]]:
    """(signal a, signal b) -> (share of steps where both have a verdict and they agree, number
    of steps where both have a verdict). Share is None when no step has both."""
    names = list(SIGNALS)
    selects = ", ".join(f"({expr}) AS {name}" for name, expr in SIGNALS.items())
    pairs = []
    for i, a in enumerate(names):
        for b in names[i:]:
            pairs.append(
                f"count(*) FILTER (WHERE {a} IS NOT NULL AND {b} IS NOT NULL) AS n_{a}_{b}, "
                f"count(*) FILTER (WHERE {a} IS NOT NULL AND {b} IS NOT NULL AND {a} = {b}) AS k_{a}_{b}"
            )
    row = _rows(catalog, f"SELECT {', '.join(pairs)} FROM (SELECT {selects} FROM steps)")[0]
    matrix: dict[tuple[str, str], tuple[float | None, int]] = {}
    for i, a in enumerate(names):
        for b in names[i:]:
            n = int(row[f"n_{a}_{b}"])
            k = int(row[f"k_{a}_{b}"])
            share = k / n if n else None
            matrix[(a, b)] = matrix[(b, a)] = (share, n)
    return matrix


def build_report(root: str | DataRoot, build_id: str, include_incomplete: bool = True) -> BuildReport:
    """The HTML report of ``build_id`` under ``root`` (see the module docstring)."""
    with Catalog(root, build_id=build_id, include_incomplete=include_incomplete) as catalog:
        return _render(catalog, build_id)


def _render(catalog: Catalog, build_id: str) -> BuildReport:
    figures: list[tuple[str, str]] = []  # (name, data uri)
    summary = _rows(
        catalog,
        """SELECT count(*) AS problems,
                  count(*) FILTER (WHERE status = 'labeled') AS labeled,
                  count(*) FILTER (WHERE status = 'failed') AS failed,
                  count(*) FILTER (WHERE status = 'skipped') AS skipped,
                  CAST(coalesce(sum(rollouts), 0) AS BIGINT) AS rollouts,
                  CAST(coalesce(sum(prompt_tokens), 0) AS BIGINT) AS prompt_tokens,
                  CAST(coalesce(sum(completion_tokens), 0) AS BIGINT) AS completion_tokens,
                  coalesce(sum(wall_seconds), 0) AS wall_seconds
           FROM problems""",
    )[0]
    step_summary = _rows(
        catalog,
        """SELECT count(*) AS steps, count(DISTINCT (problem_id, path_id)) AS paths,
                  count(*) FILTER (WHERE fused_label) AS positive,
                  count(*) FILTER (WHERE NOT fused_label) AS negative,
                  count(*) FILTER (WHERE NOT signals_agree) AS disagreeing,
                  count(*) FILTER (WHERE mc_total IS NOT NULL AND NOT mc_inferred) AS mc_sampled_steps
           FROM steps""",
    )[0]
    summary.update(step_summary)
    build_rows = _rows(catalog, "SELECT status, config_hash, policy_model FROM builds")
    if build_rows:
        summary = {"build status": build_rows[0]["status"], "config hash": build_rows[0]["config_hash"], **summary}
    model_rows = _rows(catalog, "SELECT DISTINCT generator_model FROM steps ORDER BY 1")
    summary["generator_models"] = ", ".join(r["generator_model"] for r in model_rows) or None

    sections: dict[str, str] = {}
    sections["summary"] = _table(["quantity", "value"], [(k, v) for k, v in summary.items()])

    # Label distribution
    figure = _new_figure(12, 3.2)
    axes = figure.subplots(1, 4)
    for axis, (column, title) in zip(
        axes,
        [("fused_label", "fused label"), ("tool_verdict", "tool verdict"), ("lean_state", "Lean state"),
         ("label_source", "label source")],
    ):
        _bar(axis, _counts(catalog, column), title)
    figure.tight_layout()
    figures.append(("label_distribution", _png(figure)))
    sections["labels"] = _img(figures[-1])

    # First-error position
    rows = _rows(
        catalog,
        "SELECT step_index, count(*) AS n FROM steps WHERE is_first_error GROUP BY 1 ORDER BY 1",
    )
    figure = _new_figure(6, 3)
    axis = figure.subplots()
    _bar(axis, [(str(r["step_index"]), int(r["n"])) for r in rows], "earliest negative step (0-based index)")
    axis.set_xlabel("step index")
    axis.set_ylabel("paths")
    figure.tight_layout()
    figures.append(("first_error_position", _png(figure)))
    paths_without = _rows(
        catalog,
        "SELECT count(*) AS n FROM "
        "(SELECT problem_id, path_id FROM steps GROUP BY 1, 2 HAVING NOT bool_or(is_first_error))",
    )[0]["n"]
    sections["first-error"] = _img(figures[-1]) + f"<p>Paths without a negative step: {int(paths_without)}.</p>"

    # Agreement
    matrix = agreement_matrix(catalog)
    names = list(SIGNALS)
    figure = _new_figure(5, 4.2)
    axis = figure.subplots()
    values = [[(matrix[(a, b)][0] if matrix[(a, b)][0] is not None else float("nan")) for b in names] for a in names]
    image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis")
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names)
    axis.set_yticks(range(len(names)))
    axis.set_yticklabels(names)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            share, n = matrix[(a, b)]
            text = "n/a" if share is None else f"{share:.2f}\nn={n}"
            axis.text(j, i, text, ha="center", va="center", fontsize=7,
                      color="white" if (share or 0) < 0.6 else "black")
    axis.set_title("agreement where both signals give a verdict", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figures.append(("agreement_matrix", _png(figure)))
    sections["agreement"] = _img(figures[-1]) + _table(
        ["signal a", "signal b", "agreement", "steps with both"],
        [(a, b, *matrix[(a, b)]) for i, a in enumerate(names) for b in names[i + 1 :]],
    )

    # Cost
    rows = _rows(
        catalog,
        """SELECT rollouts, completion_tokens, num_steps FROM problems WHERE status = 'labeled'""",
    )
    figure = _new_figure(12, 3.2)
    axes = figure.subplots(1, 3)
    axes[0].hist([r["rollouts"] for r in rows] or [0], bins=20, color="#55a868")
    axes[0].set_title("rollouts per labeled problem", fontsize=10)
    axes[1].hist([r["completion_tokens"] for r in rows] or [0], bins=20, color="#c44e52")
    axes[1].set_title("completion tokens per labeled problem", fontsize=10)
    per_step = [r["rollouts"] / r["num_steps"] for r in rows if r["num_steps"]]
    axes[2].hist(per_step or [0], bins=20, color="#8172b2")
    axes[2].set_title("rollouts per labeled step (per problem)", fontsize=10)
    for axis in axes:
        axis.set_ylabel("problems", fontsize=8)
    figure.tight_layout()
    figures.append(("cost", _png(figure)))
    total_steps = sum(r["num_steps"] for r in rows)
    total_rollouts = sum(r["rollouts"] for r in rows)
    total_tokens = sum(r["completion_tokens"] for r in rows)
    cost_rows = [
        ("labeled problems", len(rows)),
        ("rollouts per labeled problem", total_rollouts / len(rows) if rows else None),
        ("rollouts per labeled step", total_rollouts / total_steps if total_steps else None),
        ("completion tokens per labeled problem", total_tokens / len(rows) if rows else None),
        ("completion tokens per labeled step", total_tokens / total_steps if total_steps else None),
    ]
    summary.update({name: value for name, value in cost_rows})
    sections["cost"] = _img(figures[-1]) + _table(["quantity", "value"], cost_rows)

    # Failures
    failed = _rows(
        catalog,
        "SELECT problem_id, source, failed_stage, error FROM problems WHERE status = 'failed' ORDER BY 1 LIMIT 200",
    )
    sections["failures"] = (
        _table(["problem", "source", "stage", "error"], [tuple(r.values()) for r in failed])
        if failed
        else "<p>No failed problems.</p>"
    )

    page = _page(build_id, sections)
    return BuildReport(catalog.build_ids, page, [name for name, _ in figures], summary, matrix)


def _img(figure: tuple[str, str]) -> str:
    name, uri = figure
    return f'<img alt="{html.escape(name)}" data-figure="{html.escape(name)}" src="{uri}">'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
img { max-width: 100%; }
nav a { margin-right: 1em; }
"""


def _page(build_id: str, sections: dict[str, str]) -> str:
    title = f"prmforge build {html.escape(build_id)}"
    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name in SECTIONS)
    body = "".join(
        f'<section id="{key}"><h2>{html.escape(name)}</h2>{sections[key]}</section>' for key, name in SECTIONS
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


def write_report(root: str | DataRoot, build_id: str, out_path: str) -> BuildReport:
    """Render the report and write it to ``out_path`` (a local file)."""
    from pathlib import Path

    report = build_report(root, build_id)
    path = Path(out_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.html, encoding="utf-8")
    except OSError as error:
        raise PrmforgeError(f"cannot write the report to {out_path}: {error.strerror}") from None
    return report
