"""Render docs/schema.md from the schemas: ``python -m data_schemas.schemadoc > docs/schema.md``.

tests/test_schema_doc.py parses the committed document back and compares it with
:mod:`data_schemas.schemas`, so a schema change without a doc update fails the tests.
"""

from __future__ import annotations

import pyarrow as pa

from data_schemas.schemas import SCHEMA_VERSION, TABLES, field_doc

TABLE_INTROS = {
    "problems": "One row per input problem (the loader's output, see docs/problems.md).",
    "steps": "One row per step of each labeled solution path: the PRM training signal.",
    "nodes": "One row per node of each problem's MCTS tree (the root is the empty prefix).",
    "outcomes": "One row per problem and build: what happened to it (labeled, failed or skipped) and what it cost.",
    "dataset_lineage": (
        "Columns the dataset views `dataset_steps`, `dataset_nodes`, `dataset_problems` add to the\n"
        "columns of `steps`, `nodes`, `outcomes` (docs/operations.md, \"Datasets\"); from the build's manifest."
    ),
}

HEADER = """# Table schemas

Generated from `data_schemas/schemas.py` (schema version {version}) by
`python -m data_schemas.schemadoc > docs/schema.md`; `tests/test_schema_doc.py` fails when this
file and the schemas disagree. Types are Arrow types (`string`, `int32`, `int64`, `double`,
`bool`); "nullable: no" columns always hold a value. The record dataclasses in
`data_schemas/records.py` have the same fields in the same order.
"""


def type_name(data_type: pa.DataType) -> str:
    """The Arrow type as written in the doc (``str(pa.float64())`` is ``double``)."""
    return str(data_type)


def render() -> str:
    """The whole of docs/schema.md."""
    parts = [HEADER.format(version=SCHEMA_VERSION)]
    for table, schema in TABLES.items():
        stored_name = (schema.metadata or {}).get(b"prmforge.table", table.encode()).decode()
        parts.append(f"\n## {table}\n\n{TABLE_INTROS.get(table, '')}\nStored as table `{stored_name}`.\n\n")
        parts.append("| column | type | nullable | meaning |\n|---|---|---|---|\n")
        for field in schema:
            meaning = field_doc(field).replace("|", "\\|")
            parts.append(
                f"| `{field.name}` | {type_name(field.type)} | {'yes' if field.nullable else 'no'} | {meaning} |\n"
            )
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
