"""prmforge CLI: ``query`` (SQL over the shards), ``stats`` and ``export``.

All three open a :class:`data_schemas.catalog.Catalog` over the data root: ``--root``, else the
environment variable ``PRMFORGE_DATA_ROOT``, else ``prmforge-data`` (OutputConfig.root).
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import typer

from data_schemas.errors import PrmforgeError
from labelers.config import OutputConfig

ROOT_OPTION = typer.Option(
    OutputConfig().root,
    "--root",
    envvar="PRMFORGE_DATA_ROOT",
    help="Data root: a directory or a filesystem URI (env PRMFORGE_DATA_ROOT).",
)
BUILD_OPTION = typer.Option(None, "--build", "-b", help="Only this build (repeatable); default: every complete build.")
INCOMPLETE_OPTION = typer.Option(False, "--include-incomplete", help="Also read running or failed builds.")
DATASET_OPTION = typer.Option(
    None, "--dataset", help="Read dataset NAME: its builds, and its current rows (dataset_steps, ... views)."
)
QUERY_FORMATS = ("table", "csv", "json", "parquet")


def _catalog(
    root: str,
    builds: list[str] | None,
    include_incomplete: bool,
    dataset: str | None = None,
    current_rows: bool = False,
) -> Any:
    from data_schemas.catalog import Catalog

    return Catalog(
        root,
        build_id=builds or None,
        include_incomplete=include_incomplete,
        dataset=dataset,
        dataset_as_default=current_rows,
    )


def _plain(value: Any) -> Any:
    """A JSON-ready version of a value DuckDB returned."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_plain(value), ensure_ascii=False)
    return str(_plain(value))


def rich_table(table: pa.Table, title: str | None = None, max_rows: int | None = None) -> Any:
    """An Arrow table as a rich Table (cells as plain text, never markup)."""
    from rich.table import Table
    from rich.text import Text

    shown = table if max_rows is None else table.slice(0, max_rows)
    view = Table(title=title, title_justify="left", show_lines=False)
    for field in table.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        view.add_column(field.name, justify="right" if numeric else "left", overflow="fold")
    for row in shown.to_pylist():
        view.add_row(*(Text(_cell(v), style="dim" if v is None else "") for v in row.values()))
    return view


def print_result(table: pa.Table, format: str, out: Path | None, max_rows: int) -> None:
    """Print or write a query result in ``format``."""
    from rich.console import Console

    if format == "table":
        if out is not None:
            raise PrmforgeError("--format table prints to the terminal; use --format csv, json or parquet with --out")
        console = Console(highlight=False)
        console.print(rich_table(table, max_rows=max_rows))
        hidden = table.num_rows - min(table.num_rows, max_rows)
        console.print(
            f"{table.num_rows} row(s)"
            + (f", first {max_rows} shown (--max-rows, or --format csv/json/parquet --out FILE)" if hidden else "")
        )
        return
    if format == "parquet":
        if out is None:
            raise PrmforgeError("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out, compression="zstd")
        typer.echo(f"wrote {table.num_rows} row(s) to {out}", err=True)
        return
    buffer = io.StringIO()
    rows = table.to_pylist()
    if format == "csv":
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow(
                [
                    "" if v is None else (_cell(v) if isinstance(v, (dict, list, tuple)) else _plain(v))
                    for v in row.values()
                ]
            )
    elif format == "json":
        # JSON Lines: one object per row, streams and appends well.
        for row in rows:
            buffer.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
    else:
        raise PrmforgeError(f"unknown --format {format!r}; choose one of {', '.join(QUERY_FORMATS)}")
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(buffer.getvalue(), encoding="utf-8")
        typer.echo(f"wrote {table.num_rows} row(s) to {out}", err=True)


SHELL_HELP = """Statements end with ';' (they may span lines). Views: steps, nodes, problems, builds
(with --dataset also dataset_steps, dataset_nodes, dataset_problems, dataset_builds).
.tables   list the views      .schema VIEW   columns of a view
.help     this text           .quit / .exit  leave (or Ctrl-D)"""


def run_shell(catalog: Any, max_rows: int) -> None:
    """A small DuckDB REPL over the catalog's connection (the duckdb Python package has no shell)."""
    from rich.console import Console

    console = Console(highlight=False)
    console.print(f"prmforge SQL shell over {len(catalog.build_ids)} build(s); .help for help")
    pending: list[str] = []
    while True:
        try:
            line = input("prmforge> " if not pending else "     ...> ")
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print()
            pending = []
            continue
        stripped = line.strip()
        if not pending and stripped.startswith("."):
            command, _, argument = stripped.partition(" ")
            if command in (".quit", ".exit"):
                return
            if command == ".help":
                console.print(SHELL_HELP)
            elif command == ".tables":
                console.print("  ".join(("builds", "nodes", "problems", "steps")))
            elif command == ".schema" and argument.strip():
                try:
                    console.print(
                        rich_table(catalog.query(f"DESCRIBE {argument.strip()}").select(["column_name", "column_type"]))
                    )
                except PrmforgeError as error:
                    typer.echo(f"error: {error}")
            else:
                typer.echo(f"error: unknown command {stripped!r}; .help lists the commands")
            continue
        if not stripped:
            continue
        pending.append(line)
        if not stripped.endswith(";"):
            continue
        sql = "\n".join(pending)
        pending = []
        try:
            result = catalog.query(sql)
        except PrmforgeError as error:
            typer.echo(f"error: {error}")
            continue
        if result.num_columns:
            console.print(rich_table(result, max_rows=max_rows))
            if result.num_rows > max_rows:
                console.print(f"{result.num_rows} row(s), first {max_rows} shown")


def query(
    sql: str | None = typer.Argument(None, help="SQL over the views steps, nodes, problems, builds."),
    root: str = ROOT_OPTION,
    builds: list[str] | None = BUILD_OPTION,
    include_incomplete: bool = INCOMPLETE_OPTION,
    format: str = typer.Option("table", "--format", "-f", help="table, csv, json (JSON Lines) or parquet."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the result to FILE instead of stdout.", dir_okay=False
    ),
    max_rows: int = typer.Option(100, "--max-rows", min=1, help="Rows shown by --format table."),
    shell: bool = typer.Option(False, "--shell", help="Interactive SQL session with the views defined."),
    dataset: str | None = DATASET_OPTION,
) -> None:
    """Run SQL over the dataset with DuckDB (in-memory, reading the Parquet shards in place).

    Example: prmforge query "SELECT source, avg(fused_label::INT) FROM steps GROUP BY 1"
    """
    if format not in QUERY_FORMATS:
        raise PrmforgeError(f"unknown --format {format!r}; choose one of {', '.join(QUERY_FORMATS)}")
    if shell == (sql is not None):
        raise PrmforgeError("give either an SQL statement or --shell")
    with _catalog(root, builds, include_incomplete, dataset) as catalog:
        if shell:
            # SIGTERM keeps its default action here (the process ends at once; the shell only
            # reads): a raising handler runs only when the main thread is back in Python, and a
            # signal that came between the prompt and the blocking read of stdin left the shell
            # waiting for a line (1 run in 3 of tests/test_cli_sigterm.py under load).
            run_shell(catalog, max_rows)
            return
        print_result(catalog.query(sql), format, out, max_rows)


def stats(
    build: str | None = typer.Argument(None, help="Build id; default: every complete build under the root."),
    root: str = ROOT_OPTION,
    include_incomplete: bool = INCOMPLETE_OPTION,
    plot: Path | None = typer.Option(None, "--plot", help="Also draw the main figures to FILE.png.", dir_okay=False),
    dataset: str | None = typer.Option(None, "--dataset", help="Statistics of dataset NAME's current rows."),
) -> None:
    """Label distribution, steps per path, signal agreement, outcomes, rollouts and tokens."""
    from rich.console import Console

    from data_schemas.stats import compute_stats, plot_stats

    with _catalog(root, [build] if build else None, include_incomplete, dataset, current_rows=True) as catalog:
        if not catalog.build_ids:
            raise PrmforgeError(f"no complete builds under {root} (--include-incomplete reads running ones)")
        result = compute_stats(catalog)
        console = Console(highlight=False)
        console.print(f"builds: {', '.join(catalog.build_ids)}", markup=False)
        for _, title, table in result.sections():
            console.print(rich_table(table, title=title))
        if plot is not None:
            if plot.suffix.lower() != ".png":
                raise PrmforgeError(f"--plot writes a PNG: give a FILE.png, not {plot}")
            plot_stats(result, plot)
            console.print(f"wrote {plot}", markup=False)


def export(
    format: str = typer.Option(..., "--format", "-f", help="trl, math-shepherd, prm800k or generative."),
    out: str = typer.Option(
        ..., "--out", "-o", help="Output file (.parquet, or .jsonl for JSON Lines); a path or URI."
    ),
    root: str = ROOT_OPTION,
    builds: list[str] | None = BUILD_OPTION,
    include_incomplete: bool = INCOMPLETE_OPTION,
    where: str | None = typer.Option(
        None, "--where", help="SQL predicate over steps; keeps paths with at least one matching step."
    ),
    consensus: bool = typer.Option(False, "--consensus", help="Only paths that pass the consensus filter."),
    balance: float | None = typer.Option(None, "--balance", help="Downsample to positive:negative paths ≈ RATIO."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --balance draw."),
    after_first_error: str | None = typer.Option(
        None,
        "--after-first-error",
        help=(
            "Steps after a path's first error: truncate or negative (default per format: negative for trl and "
            "math-shepherd, truncate for prm800k and generative)."
        ),
    ),
    soft_labels: bool = typer.Option(
        False,
        "--soft-labels",
        help="Label column = the MC value (math-shepherd, for OpenRLHF); every format has mc_values anyway.",
    ),
    min_confidence: int | None = typer.Option(
        None,
        "--min-confidence",
        help=(
            "Cut each path before its first step whose signals disagree or whose MC value rests on fewer than "
            "N rollouts."
        ),
        min=1,
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="Export dataset NAME's current rows (each step once)."),
) -> None:
    """Export labeled solution paths for PRM training (one record per path)."""
    from data_schemas.export import FORMATS, export_paths

    if format not in FORMATS:
        raise PrmforgeError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    with _catalog(root, builds, include_incomplete, dataset, current_rows=True) as catalog:
        if not catalog.build_ids:
            raise PrmforgeError(f"no complete builds under {root} (--include-incomplete reads running ones)")
        result = export_paths(catalog, format, out, where=where, consensus=consensus, balance=balance, seed=seed,
                              after_first_error=after_first_error, soft_labels=soft_labels,
                              min_confidence=min_confidence)
    typer.echo(
        f"wrote {result.records} {format} record(s) ({result.steps} steps; {result.positive_paths} positive, "
        f"{result.negative_paths} negative paths) to {out}; paths: {result.paths_total} in builds, "
        f"{result.paths_after_where} after --where, {result.paths_after_consensus} after --consensus"
        + (f", {result.paths_after_confidence} after --min-confidence" if min_confidence is not None else "")
        + f"; steps after the first error: {result.after_first_error}; labels: {result.metadata['labels']}"
    )
    for note in result.notes:
        typer.echo(f"note: {note}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.command("query")(query)
    app.command("stats")(stats)
    app.command("export")(export)
