"""The shared JSON Lines reader: objects with their line numbers, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_schemas.errors import InputError
from data_schemas.jsonl import read_json_objects


def test_objects_come_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(read_json_objects(path)) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"a": 1}\n{"a": \n', "rows.jsonl:2: not JSON"), ('{"a": 1}\n[1, 2]\n', "rows.jsonl:2: expected a JSON object")],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        list(read_json_objects(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_json_objects(tmp_path / "absent.jsonl"))
