"""Reading JSON Lines files with one-line errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_schemas.errors import InputError


def read_json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSON Lines file.

    A missing file, a line that is not JSON, or a line holding something other than a JSON
    object raises InputError naming ``path`` and the line.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file")
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{line_number}: expected a JSON object")
            yield line_number, row
