"""prmforge CLI: ``datasets`` (list), ``diff`` (what changed between builds or dataset states),
``compact`` (rewrite a dataset's current rows into few large files).

Datasets are grown by ``prmforge build --dataset NAME`` (flows/commands/build.py); the rules are
in data_schemas/datasets.py, the views in data_schemas/catalog.py.
"""

from __future__ import annotations

from pathlib import Path

import typer

from data_schemas.errors import PrmforgeError
from flows.commands.data import QUERY_FORMATS, ROOT_OPTION, print_result, rich_table


def datasets(root: str = ROOT_OPTION) -> None:
    """List the datasets under a data root: builds, current problems and steps, last build."""
    import pyarrow as pa
    from rich.console import Console

    from data_schemas.catalog import Catalog
    from data_schemas.datasets import list_datasets, read_compaction
    from data_schemas.manifest import list_builds

    names = list_datasets(list_builds(root))
    console = Console(highlight=False)
    if not names:
        console.print(f"no datasets under {root} (prmforge build --dataset NAME grows one)", markup=False)
        return
    rows = []
    for name in names:
        with Catalog(root, dataset=name) as catalog:
            problems = catalog.query("SELECT count(*) FROM dataset_problems").column(0)[0].as_py()
            steps = catalog.query("SELECT count(*) FROM dataset_steps").column(0)[0].as_py()
            last = catalog.build_ids[-1] if catalog.build_ids else None
        compaction = read_compaction(root, name)
        rows.append(
            {
                "dataset": name,
                "complete builds": len(catalog.build_ids),
                "problems": problems,
                "steps": steps,
                "last build": last,
                "compacted": compaction.created_at if compaction else None,
            }
        )
    console.print(rich_table(pa.Table.from_pylist(rows), title=f"datasets under {root}"))


def _dataset_sides(root: str, dataset: str, before: str | None, after: str | None) -> tuple[str | None, str]:
    """(A, B) build ids of a dataset: defaults B = the last build, A = the one before it."""
    from data_schemas.catalog import Catalog

    with Catalog(root, dataset=dataset) as catalog:
        ids = catalog.build_ids
    if not ids:
        raise PrmforgeError(f"dataset {dataset!r} has no complete builds under {root}")
    after = after or ids[-1]
    if after not in ids:
        raise PrmforgeError(f"build {after!r} is not a complete build of dataset {dataset!r}")
    if before is None:
        position = ids.index(after)
        before = ids[position - 1] if position else None
    return before, after


def diff(
    before: str | None = typer.Argument(None, help="Build A (with --dataset: the dataset as of build A)."),
    after: str | None = typer.Argument(None, help="Build B (with --dataset: as of build B; default its last build)."),
    root: str = ROOT_OPTION,
    dataset: str | None = typer.Option(
        None, "--dataset", help="Compare states of dataset NAME (default: before/after its last run)."
    ),
    format: str = typer.Option(
        "table", "--format", "-f", help="table (counts + changed steps), csv, json or parquet (changed steps)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the changed steps to FILE.", dir_okay=False),
    max_rows: int = typer.Option(50, "--max-rows", min=1, help="Changed steps shown by --format table."),
    tolerance: float = typer.Option(1e-9, "--tolerance", min=0, help="Reward changes up to this are not counted."),
) -> None:
    """Steps whose label, first-error position or reward changed between two builds or dataset states.

    prmforge diff BUILD_A BUILD_B; prmforge diff --dataset NAME (before/after its last run).
    """
    import pyarrow as pa
    from rich.console import Console

    from data_schemas.catalog import Catalog
    from data_schemas.diff import CHANGE_KINDS, DIFF_COLUMNS, diff_steps, diff_steps_of
    from data_schemas.schemas import STEPS

    if format not in QUERY_FORMATS:
        raise PrmforgeError(f"unknown --format {format!r}; choose one of {', '.join(QUERY_FORMATS)}")
    if dataset is None:
        if before is None or after is None:
            raise PrmforgeError("give two builds (prmforge diff A B), or --dataset NAME")
        with Catalog(root, build_id=before) as a, Catalog(root, build_id=after) as b:
            result = diff_steps(diff_steps_of(a), diff_steps_of(b), tolerance)
        label_a, label_b = before, after
    else:
        before, after = _dataset_sides(root, dataset, before, after)
        empty = STEPS.empty_table().select([c.strip() for c in DIFF_COLUMNS.split(",")])
        if before is None:
            side_a = empty
        else:
            with Catalog(root, dataset=dataset, as_of=before) as a:
                side_a = diff_steps_of(a, "dataset_steps")
        with Catalog(root, dataset=dataset, as_of=after) as b:
            result = diff_steps(side_a, diff_steps_of(b, "dataset_steps"), tolerance)
        label_a, label_b = f"{dataset} as of {before or '(empty)'}", f"{dataset} as of {after}"
    if format != "table":
        print_result(result.changes, format, out, max_rows)
        return
    if out is not None:
        raise PrmforgeError("--format table prints to the terminal; use --format csv, json or parquet with --out")
    console = Console(highlight=False)
    counts = pa.Table.from_pylist([{"change": k, "steps": result.counts[k]} for k in (*CHANGE_KINDS, "unchanged")])
    console.print(rich_table(counts, title=f"A = {label_a}, B = {label_b}"))
    if result.changes.num_rows:
        shown = result.changes.drop_columns(["build_a", "build_b"])
        console.print(rich_table(shown, title="changed steps", max_rows=max_rows))
        if result.changes.num_rows > max_rows:
            console.print(
                f"{result.changes.num_rows} changed step(s), "
                f"first {max_rows} shown (--format parquet --out FILE for all)"
            )


def compact(
    dataset: str = typer.Option(..., "--dataset", help="The dataset to compact."),
    root: str = ROOT_OPTION,
) -> None:
    """Rewrite a dataset's current rows into one file per table (atomic; lineage and checksums kept)."""
    from data_schemas.compaction import compact_dataset

    result = compact_dataset(root, dataset)
    rows = {f.table: f.rows for f in result.compaction.files}
    typer.echo(
        f"compacted dataset {dataset}: {result.files_before} files -> {result.files_after} "
        f"({rows.get('steps', 0)} steps, {rows.get('outcomes', 0)} problems, {rows.get('nodes', 0)} nodes; "
        f"generation {result.compaction.generation}, {len(result.compaction.covered_builds)} builds covered)"
    )


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.command("datasets")(datasets)
    app.command("diff")(diff)
    app.command("compact")(compact)
