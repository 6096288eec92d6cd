"""prmforge CLI: ``problems validate`` reads a problem file the way a build would and reports."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from data_schemas.errors import PrmforgeError
from data_schemas.problems import COLUMN_KEYS, FORMATS, LoadResult, bundled_problems_path, load_problems

problems_app = typer.Typer(help="Check problem files before a build.", no_args_is_help=True)

FILE_ARGUMENT = typer.Argument(..., help="Problem file (.jsonl, .json, .csv, .parquet) or 'bundled'.")
FORMAT_OPTION = typer.Option("auto", "--format", "-f", help=f"Record format: {', '.join(FORMATS)}.")
SOURCE_OPTION = typer.Option(
    None, "--source", help="Source name for every row (default: row field, format or file name)."
)
SKIP_OPTION = typer.Option(
    False, "--skip-invalid", help="Skip bad rows (each is reported) instead of stopping at the first."
)
COLUMN_OPTION = typer.Option(
    None, "--column", help=f"Column mapping KEY=COLUMN (keys: {', '.join(COLUMN_KEYS)}); repeatable."
)


def parse_columns(assignments: list[str] | None) -> dict[str, str]:
    """``["question=q", "answer=a"]`` -> ``{"question": "q", "answer": "a"}``."""
    columns: dict[str, str] = {}
    for assignment in assignments or []:
        key, sep, column = assignment.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise typer.BadParameter(f"expected KEY=COLUMN, got {assignment!r}", param_hint="--column")
        if key.strip() not in COLUMN_KEYS:
            raise typer.BadParameter(
                f"unknown key {key.strip()!r} (keys: {', '.join(COLUMN_KEYS)})", param_hint="--column"
            )
        columns[key.strip()] = column.strip()
    return columns


def print_report(console: Console, name: str, result: LoadResult) -> None:
    summary = Table(title=f"Problems in {escape(name)}", show_header=True)
    summary.add_column("count")
    summary.add_column("value", justify="right")
    summary.add_row("problems", str(len(result.problems)))
    for source, count in sorted(result.counts_by_source().items()):
        summary.add_row(f"  source {escape(source)}", str(count))
    for row_format, count in sorted(result.formats.items()):
        summary.add_row(f"  rows read as {row_format}", str(count))
    summary.add_row("duplicates (kept once)", str(len(result.duplicates)))
    summary.add_row("skipped rows", str(len(result.skipped)))
    console.print(summary)
    if result.duplicates:
        duplicates = Table(title="Duplicates (the earlier row is kept)")
        for column in ("problem_id", "kept line", "duplicate line", "same answer"):
            duplicates.add_column(column)
        for duplicate in result.duplicates:
            duplicates.add_row(
                duplicate.problem_id,
                str(duplicate.kept_line),
                str(duplicate.duplicate_line),
                "yes" if duplicate.same_answer else "NO",
            )
        console.print(duplicates)
    if result.skipped:
        skipped = Table(title="Skipped rows")
        for column in ("line", "field", "reason"):
            skipped.add_column(column)
        for row in result.skipped:
            skipped.add_row(str(row.line), escape(row.field or "-"), escape(row.reason))
        console.print(skipped)


@problems_app.command("validate")
def validate(
    file: str = FILE_ARGUMENT,
    format: str = FORMAT_OPTION,
    source: str | None = SOURCE_OPTION,
    skip_invalid: bool = SKIP_OPTION,
    column: list[str] | None = COLUMN_OPTION,
) -> None:
    """Read FILE as a build would; print counts per source, duplicates and skipped rows.

    Exits 0 when the file is usable, 2 with a one-line error when it is not.
    """
    columns = parse_columns(column)
    path = bundled_problems_path() if file == "bundled" else Path(file)
    try:
        result = load_problems(path, format=format, source=source, columns=columns or None, skip_invalid=skip_invalid)
    except PrmforgeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    print_report(Console(), file, result)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.add_typer(problems_app, name="problems")
