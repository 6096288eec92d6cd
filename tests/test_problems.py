"""Problem loaders: GSM8K, MATH, generic JSONL/Parquet/CSV, the bundled set, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import labelers.identity
from data_schemas.errors import InputError
from data_schemas.problems import SkippedRow, bundled_problems_path, load_problems, problem_id


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- real data sets ------------------------------------------------------------------------------


def test_gsm8k_test_split(gsm8k_path):
    result = load_problems(gsm8k_path)
    assert len(result.problems) == 1319 and not result.skipped and not result.duplicates
    first = result.problems[0]
    assert first.source == "gsm8k" and first.gold_answer == "18"
    assert first.question.startswith("Janet") and first.reference_solution.endswith("#### 18")
    assert first.source_row == 1 and result.problems[-1].source_row == 1319
    assert first.problem_id == problem_id(first.question, "gsm8k")
    assert result.formats == {"gsm8k": 1319}


def test_math500(math500_path):
    result = load_problems(math500_path, format="math", source="math500")
    assert len(result.problems) == 500
    first = result.problems[0]
    assert first.source == "math500" and first.level == 2 and first.subject == "Precalculus"
    assert first.gold_answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert "\\boxed" in first.reference_solution
    assert {p.level for p in result.problems} == {1, 2, 3, 4, 5}


def test_problem_ids_are_stable_and_shared_with_labelers():
    assert labelers.identity.problem_id is problem_id
    assert problem_id("What is  1+1?", "gsm8k") == problem_id("What is 1+1?\n", "gsm8k")
    assert problem_id("What is 1+1?", "gsm8k") != problem_id("What is 1+1?", "math")
    assert problem_id("What is 1+1?", "gsm8k") == "ee6b7dcab47d59d9"  # fixed: ids must not drift


def test_bundled_problems_are_unchanged_copies(gsm8k_path, math500_path):
    path = bundled_problems_path()
    assert path.name == "bundled_problems.jsonl" and path.exists()
    result = load_problems(path)
    assert result.counts_by_source() == {"gsm8k": 40, "math500": 20}
    assert not result.skipped and not result.duplicates
    originals = {}
    for data in (gsm8k_path, math500_path):
        for line in data.read_text().splitlines():
            row = json.loads(line)
            originals[row.get("question") or row["problem"]] = row
    for line in path.read_text().splitlines():
        row = json.loads(line)
        source = row.pop("source")
        assert originals[row.get("question") or row["problem"]] == row
        if source == "math500":
            assert row["level"] in ("Level 1", "Level 2", "Level 3") and row["answer"].lstrip("-").isdigit()
    assert (path.parent / "LICENSE").read_text().count("MIT License") >= 2
    assert "gsm8k" in (path.parent / "README.md").read_text()


# --- generic formats ---------------------------------------------------------------------------------


def test_generic_jsonl_with_column_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "own.jsonl", [{"q": "2+2?", "a": 4, "s": "2+2=4", "lvl": "Level 1"}])
    result = load_problems(path, columns={"question": "q", "answer": "a", "solution": "s", "level": "lvl"})
    (problem,) = result.problems
    assert ((problem.question, problem.gold_answer, problem.reference_solution, problem.level)
            == ("2+2?", "4", "2+2=4", 1))
    assert problem.source == "own" and result.formats == {"generic": 1}


def test_generic_question_answer_without_hashes_is_taken_as_written(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"question": "3*3?", "answer": "9", "source": "mine"}])
    (problem,) = load_problems(path).problems
    assert problem.gold_answer == "9" and problem.source == "mine" and problem.reference_solution is None


def test_source_argument_wins_over_row_field(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"question": "3*3?", "answer": "9", "source": "mine"}])
    assert load_problems(path, source="given").problems[0].source == "given"


def test_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["1+1?", "2+5?"], "answer": [2, 7], "level": [1, None]}), path)
    result = load_problems(path)
    assert [(p.gold_answer, p.level, p.source_row) for p in result.problems] == [("2", 1, 1), ("7", None, 2)]


def test_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,gold\n"What is 1,000 + 1?","1,001"\n"Multi\nline?",5\n')
    result = load_problems(path, columns={"question": "prompt", "answer": "gold"})
    assert [(p.question, p.gold_answer, p.source_row) for p in result.problems] == [
        ("What is 1,000 + 1?", "1,001", 2),
        ("Multi\nline?", "5", 4),
    ]


def test_mixed_file_reads_each_row_by_its_fields(tmp_path):
    path = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "q1", "answer": "x\n#### 5"},
            {"problem": "p1", "solution": "\\boxed{2}", "answer": "2", "level": "Level ?"},
        ],
    )
    result = load_problems(path)
    assert [(p.source, p.gold_answer, p.level) for p in result.problems] == [("gsm8k", "5", None), ("math", "2", None)]


def test_duplicates_are_kept_once_and_reported(tmp_path):
    path = _write_jsonl(
        tmp_path / "dup.jsonl",
        [
            {"question": "What is 1+1?", "answer": "2"},
            {"question": "Other?", "answer": "3"},
            {"question": "What  is 1+1? ", "answer": "3"},
        ],
    )
    result = load_problems(path)
    assert [p.question for p in result.problems] == ["What is 1+1?", "Other?"]
    (duplicate,) = result.duplicates
    assert (duplicate.kept_line, duplicate.duplicate_line, duplicate.same_answer) == (1, 3, False)
    assert duplicate.problem_id == result.problems[0].problem_id


# --- bad input: one clear line naming file, line and field ------------------------------------------


def _error(*args, **kwargs) -> str:
    with pytest.raises(InputError) as raised:
        load_problems(*args, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert _error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file"


def test_unknown_format_and_file_type(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "1"}])
    assert "unknown format 'mmlu'" in _error(path, format="mmlu")
    text_file = tmp_path / "a.txt"
    text_file.write_text("hello")
    assert _error(text_file) == f"{text_file}: unknown file type '.txt' (expected .jsonl, .json, .parquet, .csv)"
    assert "unknown column key 'prompt'" in _error(path, columns={"prompt": "q"})


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q2", "answer": \n')
    assert _error(path) == f"{path}:2: invalid JSON (Expecting value at column 30)"


def test_missing_field_names_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl",
                        [{"problem": "p", "solution": "s", "answer": "1"}, {"problem": "p2", "solution": "s"}])
    assert _error(path) == f"{path}:2: missing field 'answer'"
    gsm = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no final line"}])
    assert _error(gsm, format="gsm8k") == f"{gsm}:1: field 'answer' has no '#### N' final-answer line"
    neither = _write_jsonl(tmp_path / "n.jsonl", [{"text": "q"}])
    assert _error(neither) == f"{neither}:1: no 'question' or 'problem' field (fields: text)"


def test_missing_column_in_csv_and_parquet_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,gold\nq,1\n")
    assert _error(path) == f"{path}: missing column 'question' (columns: prompt, gold)"
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["q"]}), parquet)
    assert (_error(parquet, columns={"question": "question"})
            == f"{parquet}: missing column 'answer' (columns: question)")


def test_empty_question(tmp_path):
    path = _write_jsonl(tmp_path / "e.jsonl", [{"question": "ok", "answer": "1"}, {"question": "  ", "answer": "2"}])
    assert _error(path) == f"{path}:2: empty question"
    mapped = _write_jsonl(tmp_path / "m.jsonl", [{"q": "", "a": "2"}])
    assert _error(mapped, columns={"question": "q", "answer": "a"}) == f"{mapped}:1: empty question (field 'q')"


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "ok", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    assert _error(path) == f"{path}:2: not UTF-8 text (byte 0xe9 at column 18)"
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"question,answer\nok,1\ncaf\xe9,2\n")
    assert _error(csv_path) == f"{csv_path}:3: not UTF-8 text (byte 0xe9)"


def test_bad_level_and_non_text_question(tmp_path):
    path = _write_jsonl(tmp_path / "l.jsonl", [{"problem": "p", "answer": "1", "level": "hard"}])
    assert _error(path) == f"{path}:1: field 'level' must be a level number or 'Level N', got 'hard'"
    listed = _write_jsonl(tmp_path / "q.jsonl", [{"question": ["a"], "answer": "1"}])
    assert _error(listed) == f"{listed}:1: field 'question' must be text, got list"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert _error(path) == f"{path}: no problems in the file"


def test_skip_invalid_records_every_skipped_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"question": "good", "answer": "1"}\n'
        b"not json\n"
        b'{"question": "", "answer": "2"}\n'
        b'{"question": "caf\xe9", "answer": "2"}\n'
        b'{"question": "no answer"}\n'
        b'{"question": "also good", "answer": "3"}\n'
    )
    result = load_problems(path, skip_invalid=True)
    assert [p.question for p in result.problems] == ["good", "also good"]
    assert [(s.line, s.field) for s in result.skipped] == [(2, None), (3, "question"), (4, None), (5, "answer")]
    assert result.skipped[1] == SkippedRow(str(path), 3, "question", "empty question")
    assert result.skipped[0].reason.startswith("invalid JSON")


def test_json_array_file(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"question": "1+1?", "answer": "2"}, 5]))
    assert _error(path) == f"{path}:2: expected a JSON object, got int"
    result = load_problems(path, skip_invalid=True)
    assert [p.gold_answer for p in result.problems] == ["2"] and result.skipped[0].line == 2
