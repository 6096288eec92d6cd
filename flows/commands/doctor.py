"""prmforge CLI: ``doctor`` reports which optional parts work here (it never fails)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def doctor() -> None:
    """Check the optional parts: answer checking, embedded model, vLLM/GPU, Lean 4, scale-out."""
    from labelers.doctor import run_checks

    table = Table(title="prmforge doctor")
    for column in ("part", "status", "found", "to enable"):
        table.add_column(column, overflow="fold")
    for item in run_checks():
        status = "[green]ok[/green]" if item.ok else "[yellow]not available[/yellow]"
        table.add_row(escape(item.name), status, escape(item.detail), escape(item.hint or ""))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.command("doctor")(doctor)
