"""docs/schema.md and data_schemas/records.py agree with data_schemas/schemas.py."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pyarrow as pa
import pytest

from data_schemas import records
from data_schemas.schemadoc import render, type_name
from data_schemas.schemas import TABLES, field_doc

DOC = Path(__file__).parent.parent / "docs" / "schema.md"
RECORDS = {"problems": records.Problem, "steps": records.StepRow, "nodes": records.NodeRow,
           "outcomes": records.ProblemOutcome}
_ROW = re.compile(
    r"^\|\s*`(?P<name>[^`]+)`\s*\|\s*(?P<type>[^|]+?)\s*\|\s*(?P<nullable>yes|no)\s*\|\s*(?P<meaning>.*?)\s*\|$"
)


def parse_doc(text: str) -> dict[str, list[tuple[str, str, bool, str]]]:
    """{table: [(column, type, nullable, meaning), ...]} from the doc's ``## table`` sections."""
    tables: dict[str, list[tuple[str, str, bool, str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            tables[current] = []
        elif current is not None and (row := _ROW.match(line.strip())):
            meaning = row["meaning"].replace("\\|", "|")
            tables[current].append((row["name"], row["type"], row["nullable"] == "yes", meaning))
    return tables


def disagreements(documented: dict[str, list[tuple[str, str, bool, str]]]) -> list[str]:
    problems = []
    for table, schema in TABLES.items():
        rows = documented.get(table)
        if rows is None:
            problems.append(f"table {table} is not documented")
            continue
        expected = [(f.name, type_name(f.type), f.nullable, field_doc(f)) for f in schema]
        names = [row[0] for row in rows]
        for name in [f.name for f in schema if f.name not in names]:
            problems.append(f"{table}.{name} is not documented")
        for name in [n for n in names if n not in schema.names]:
            problems.append(f"{table}.{name} is documented but not in the schema")
        if names != schema.names and set(names) == set(schema.names):
            problems.append(f"{table}: columns documented in another order")
        by_name = {row[0]: row for row in rows}
        for name, data_type, nullable, meaning in expected:
            if name in by_name:
                _, doc_type, doc_nullable, doc_meaning = by_name[name]
                if doc_type != data_type:
                    problems.append(f"{table}.{name}: doc type {doc_type}, schema type {data_type}")
                if doc_nullable != nullable:
                    problems.append(f"{table}.{name}: doc nullable {doc_nullable}, schema {nullable}")
                if doc_meaning != meaning:
                    problems.append(f"{table}.{name}: doc meaning differs from the schema's doc")
    for table in set(documented) - set(TABLES):
        problems.append(f"documented table {table} has no schema")
    return problems


def test_every_schema_field_has_a_doc_string():
    for table, schema in TABLES.items():
        for field in schema:
            assert field_doc(field).strip(), f"{table}.{field.name} has no doc"


def test_doc_agrees_with_schemas():
    assert disagreements(parse_doc(DOC.read_text())) == []


def test_doc_is_the_generated_one():
    assert DOC.read_text() == render(), "regenerate: python -m data_schemas.schemadoc > docs/schema.md"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("| `level` | int32 |", "| `level` | int64 |", "problems.level: doc type int64, schema type int32"),
        ("| `gold_answer` | string | no |", "| `gold_answer` | string | yes |",
         "problems.gold_answer: doc nullable True, schema False"),
        ("| `visits` |", "| `visit_count` |", "nodes.visits is not documented"),
    ],
)
def test_a_changed_doc_is_caught(old, new, expected):
    text = DOC.read_text()
    assert old in text
    assert expected in disagreements(parse_doc(text.replace(old, new, 1)))


def test_records_match_schemas():
    for table, record in RECORDS.items():
        schema = TABLES[table]
        fields = dataclasses.fields(record)
        assert [f.name for f in fields] == schema.names, table
        hints = typing.get_type_hints(record)
        for field in schema:
            optional = type(None) in typing.get_args(hints[field.name])
            assert optional == field.nullable, f"{table}.{field.name}: Optional in record vs nullable in schema"


def test_records_convert_to_their_schema():
    problem = records.Problem("id", "gsm8k", "q", "1", None, None, 3, 1)
    table = records.to_table([problem], TABLES["problems"])
    assert table.schema.equals(TABLES["problems"], check_metadata=False)
    assert table.column("level").type == pa.int32()
