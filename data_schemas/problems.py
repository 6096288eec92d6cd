"""Read problem files (GSM8K, MATH, any JSONL/Parquet/CSV) into :class:`Problem` records.

Formats (``format=``):

- ``"gsm8k"``: ``question``, ``answer`` ending in a ``#### N`` line; gold = N, the whole answer
  text is the reference solution;
- ``"math"``: ``problem``, ``solution``, ``answer``, optional ``subject``, ``level``
  (``"Level 3"`` -> 3) and ``unique_id``;
- ``"generic"``: columns named by ``columns`` (keys ``question``, ``answer``, ``solution``,
  ``subject``, ``level``, ``source``; defaults: the key itself); the answer column is the gold
  answer as written;
- ``"auto"`` (default): ``"generic"`` when a column mapping is given; otherwise each row is
  read by its fields: ``problem`` -> math, ``question`` with a ``#### N`` answer -> gsm8k,
  other ``question`` rows -> generic. So one file may mix GSM8K and MATH rows (the bundled file
  does).

File types by extension: ``.jsonl`` / ``.json`` (JSON lines, or one JSON array in ``.json``),
``.parquet``, ``.csv``.

Source of a problem: the ``source`` argument when given, else the row's ``source`` field, else
``gsm8k`` / ``math`` by format, else the file name without extension.

Nothing is dropped silently: a bad row raises :class:`InputError` naming file, line and field
(or, with ``skip_invalid=True``, is recorded as a :class:`SkippedRow`); a problem that repeats
an earlier one (same ``problem_id``) is kept once and listed in ``LoadResult.duplicates`` with
both line numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from data_schemas.errors import InputError
from data_schemas.records import Problem

FORMATS = ("auto", "gsm8k", "math", "generic")
COLUMN_KEYS = ("question", "answer", "solution", "subject", "level", "source")
FILE_TYPES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

_SPACES = re.compile(r"\s+")
_GSM8K_FINAL = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)
_LEVEL = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)
_UNKNOWN_LEVEL = re.compile(r"^\s*(?:level\s*)?\?\s*$", re.IGNORECASE)


# --- identity (labelers.identity re-exports these: one implementation) ------------------------


def normalize_text(text: str) -> str:
    """NFKC, collapsed whitespace, stripped: two copies of a question differing only in layout
    normalize equal."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def stable_digest(*parts: str, length: int = 16) -> str:
    """``blake2b`` over the parts, each followed by a unit separator; ``length`` hex digits."""
    hasher = hashlib.blake2b(digest_size=32)
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") hash differently
    return hasher.hexdigest()[:length]


def problem_id(question: str, source: str) -> str:
    """``blake2b(normalize(question), source)``, 16 hex characters."""
    return stable_digest(normalize_text(question), source)


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedRow:
    """A row left out by ``skip_invalid=True`` and why."""

    file: str
    line: int
    field: str | None  # the field at fault, None when the whole row is (bad JSON, bad bytes)
    reason: str


@dataclass(frozen=True)
class DuplicateProblem:
    """A row repeating an earlier problem (same problem_id); the earlier row is kept."""

    problem_id: str
    file: str
    kept_line: int
    duplicate_line: int
    same_answer: bool  # False when the two rows disagree on the gold answer


@dataclass
class LoadResult:
    problems: list[Problem]
    skipped: list[SkippedRow] = field(default_factory=list)
    duplicates: list[DuplicateProblem] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)  # rows read per detected format

    def counts_by_source(self) -> dict[str, int]:
        return dict(Counter(problem.source for problem in self.problems))


class _RowError(Exception):
    """A problem with one row; becomes an InputError or a SkippedRow."""

    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field_name = field_name
        self.reason = reason


# --- reading files into (line, record) pairs ------------------------------------------------


def _decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _RowError(None, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})") from None


def _json_lines(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = _decode_line(raw)
                if not text.strip():
                    continue
                try:
                    record = json.loads(text.rstrip("\r\n"))
                except json.JSONDecodeError as error:
                    raise _RowError(None, f"invalid JSON ({error.msg} at column {error.pos + 1})") from None
                if not isinstance(record, dict):
                    raise _RowError(None, f"expected a JSON object, got {type(record).__name__}")
                yield line_number, record
            except _RowError as error:
                yield line_number, error


def _read_utf8(path: Path, name: str, encoding: str) -> str:
    """The whole file as text; a byte that is not UTF-8 is an InputError naming its line."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise InputError(f"{name}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x})") from None


def _json_array(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
    text = _read_utf8(path, name, "utf-8")
    if not text.lstrip().startswith("["):
        yield from _json_lines(path, name)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{name}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})") from None
    for index, record in enumerate(records, start=1):
        if isinstance(record, dict):
            yield index, record
        else:
            yield index, _RowError(None, f"expected a JSON object, got {type(record).__name__}")


def _csv_rows(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
    text = _read_utf8(path, name, "utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row:  # more cells than header columns
                yield reader.line_num, _RowError(
                    None,
                    f"{len(row) - 1 + len(row[None])} cells but {len(reader.fieldnames or [])} columns in the header",
                )
                continue
            yield reader.line_num, dict(row)
    except csv.Error as error:
        raise InputError(f"{name}:{reader.line_num}: invalid CSV ({error})") from None


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise InputError(f"{name}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _file_columns(path: Path, file_type: str) -> list[str] | None:
    """Column names of a file with a header (CSV, Parquet); None for JSON (per-row fields)."""
    if file_type == "csv":
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
            header = next(csv.reader(handle), None)
        return list(header or [])
    if file_type == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as error:
            raise InputError(f"{path.name}: not a readable Parquet file ({type(error).__name__}: {error})") from None
    return None


# --- turning records into problems ---------------------------------------------------------


def _text(record: Mapping[str, Any], key: str, required: bool, label: str | None = None) -> str | None:
    label = label or key
    if key not in record or record[key] is None:
        if required:
            raise _RowError(label, f"missing field '{key}'")
        return None
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RowError(label, f"field '{key}' must be text, got {type(value).__name__}")
    text = value if isinstance(value, str) else _number_text(value)
    if required and not text.strip():
        raise _RowError(label, f"empty {label} (field '{key}')" if label != key else f"empty {key}")
    return text


def _number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _level(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if match := _LEVEL.match(value):
            return int(match.group(1))
        if _UNKNOWN_LEVEL.match(value):  # MATH writes "Level ?" for a few problems
            return None
    raise _RowError("level", f"field '{key}' must be a level number or 'Level N', got {value!r}")


def _row_format(record: Mapping[str, Any]) -> str:
    if "problem" in record:
        return "math"
    if "question" in record and isinstance(record.get("answer"), str) and _GSM8K_FINAL.search(record["answer"]):
        return "gsm8k"
    if "question" in record:
        return "generic"
    found = ", ".join(sorted(record)) or "none"
    raise _RowError("question", f"no 'question' or 'problem' field (fields: {found})")


def _problem(
    record: Mapping[str, Any], row_format: str, columns: Mapping[str, str], source: str, line: int
) -> Problem:
    if row_format == "gsm8k":
        question = _text(record, "question", True)
        answer_text = _text(record, "answer", True)
        assert question is not None and answer_text is not None
        finals = _GSM8K_FINAL.findall(answer_text)
        if not finals or not finals[-1]:
            raise _RowError("answer", "field 'answer' has no '#### N' final-answer line")
        return Problem(problem_id(question, source), source, question, finals[-1], answer_text, None, None, line)
    if row_format == "math":
        question = _text(record, "problem", True)
        answer = _text(record, "answer", True)
        assert question is not None and answer is not None
        return Problem(
            problem_id(question, source),
            source,
            question,
            answer.strip(),
            _text(record, "solution", False),
            _text(record, "subject", False),
            _level(record, "level"),
            line,
        )
    question = _text(record, columns["question"], True, "question")
    answer = _text(record, columns["answer"], True, "answer")
    assert question is not None and answer is not None
    return Problem(
        problem_id(question, source),
        source,
        question,
        answer.strip(),
        _text(record, columns["solution"], False, "solution"),
        _text(record, columns["subject"], False, "subject"),
        _level(record, columns["level"]),
        line,
    )


def _row_source(
    record: Mapping[str, Any], row_format: str, source: str | None, columns: Mapping[str, str], stem: str
) -> str:
    if source:
        return source
    value = record.get(columns["source"])
    if isinstance(value, str) and value.strip():
        return value.strip()
    return {"gsm8k": "gsm8k", "math": "math"}.get(row_format, stem)


def load_problems(
    path: str | Path,
    format: str = "auto",
    source: str | None = None,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
) -> LoadResult:
    """Read a problem file (see the module doc for formats, sources and error handling).

    Raises :class:`InputError` with a one-line message naming the file (and line and field)
    for a missing file, an unknown format or file type, a missing column, and, unless
    ``skip_invalid``, for any bad row.
    """
    path = Path(path)
    name = str(path)
    if format not in FORMATS:
        raise InputError(f"{name}: unknown format '{format}' (expected one of {', '.join(FORMATS)})")
    unknown_keys = sorted(set(columns or {}) - set(COLUMN_KEYS))
    if unknown_keys:
        raise InputError(f"{name}: unknown column key '{unknown_keys[0]}' (expected {', '.join(COLUMN_KEYS)})")
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if path.is_dir():
        raise InputError(f"{name}: is a directory, expected a problem file")
    file_type = FILE_TYPES.get(path.suffix.lower())
    if file_type is None:
        raise InputError(f"{name}: unknown file type '{path.suffix}' (expected {', '.join(FILE_TYPES)})")

    mapping = {key: key for key in COLUMN_KEYS} | dict(columns or {})
    fixed_format = "generic" if (format == "auto" and columns) else (None if format == "auto" else format)
    header = _file_columns(path, file_type)
    if header is not None:
        required = {
            "gsm8k": ["question", "answer"],
            "math": ["problem", "answer"],
            "generic": [mapping["question"], mapping["answer"]],
        }
        header_format = fixed_format or ("math" if "problem" in header else "gsm8k")
        for column in required[header_format]:
            if column not in header:
                raise InputError(f"{name}: missing column '{column}' (columns: {', '.join(header) or 'none'})")

    reader = {"jsonl": _json_lines, "json": _json_array, "csv": _csv_rows, "parquet": _parquet_rows}[file_type]
    result = LoadResult(problems=[])
    first_line: dict[str, tuple[int, str]] = {}
    formats: Counter[str] = Counter()
    rows_seen = 0
    for line, record in reader(path, name):
        rows_seen += 1
        try:
            if isinstance(record, _RowError):
                raise record
            row_format = fixed_format or _row_format(record)
            row_source = _row_source(record, row_format, source, mapping, path.stem)
            problem = _problem(record, row_format, mapping, row_source, line)
        except _RowError as error:
            if not skip_invalid:
                where = f"{name}:{line}"
                raise InputError(f"{where}: {error.reason}") from None
            result.skipped.append(SkippedRow(name, line, error.field_name, error.reason))
            continue
        formats[row_format] += 1
        if problem.problem_id in first_line:
            kept_line, kept_answer = first_line[problem.problem_id]
            result.duplicates.append(
                DuplicateProblem(problem.problem_id, name, kept_line, line, kept_answer == problem.gold_answer)
            )
            continue
        first_line[problem.problem_id] = (line, problem.gold_answer)
        result.problems.append(problem)
    if rows_seen == 0:
        raise InputError(f"{name}: no problems in the file")
    result.formats = dict(formats)
    return result


def bundled_problems_path() -> Path:
    """The problem file shipped with prmforge: 40 GSM8K test + 20 MATH-500 problems
    (data_schemas/data/README.md says where they came from)."""
    return Path(str(resources.files("data_schemas") / "data" / "bundled_problems.jsonl"))
