"""The CLI frame, ``problems validate`` and ``doctor``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).parent.parent
WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_the_groups(runner):
    result = runner.invoke(app, ["--help"], env=WIDE)
    assert result.exit_code == 0
    for command in ("problems", "doctor"):
        assert command in result.output
    sub = runner.invoke(app, ["problems", "validate", "--help"], env=WIDE)
    assert sub.exit_code == 0 and "--skip-invalid" in sub.output and "--column" in sub.output


def test_validate_gsm8k(runner, gsm8k_path):
    result = runner.invoke(app, ["problems", "validate", str(gsm8k_path)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "│ problems               │  1319 │" in result.output
    assert "source gsm8k" in result.output


def test_validate_bundled_counts_sources(runner):
    result = runner.invoke(app, ["problems", "validate", "bundled"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "source gsm8k" in result.output and "source math500" in result.output
    assert "│ problems               │    60 │" in result.output


def test_validate_with_column_mapping_reports_duplicates(runner, tmp_path):
    path = tmp_path / "own.jsonl"
    rows = [{"q": "1+1?", "a": "2"}, {"q": "2+2?", "a": "4"}, {"q": "1+1? ", "a": "3"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = runner.invoke(
        app, ["problems", "validate", str(path), "--column", "question=q", "--column", "answer=a"], env=WIDE
    )
    assert result.exit_code == 0, result.output
    assert "duplicates (kept once) │     1" in result.output
    assert "Duplicates (the earlier row is kept)" in result.output and "NO" in result.output


def test_validate_bad_file_is_one_line_and_exit_2(runner, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"\n')
    result = runner.invoke(app, ["problems", "validate", str(path)], env=WIDE)
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {path}:2: invalid JSON")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_validate_skip_invalid_lists_reasons(runner, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "", "answer": "1"}\n{"answer": "1"}\n')
    result = runner.invoke(app, ["problems", "validate", str(path), "--skip-invalid"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "skipped rows           │     2" in result.output
    assert "empty question" in result.output and "no 'question' or 'problem' field" in result.output


def test_validate_missing_file_and_bad_options(runner, tmp_path):
    missing = runner.invoke(app, ["problems", "validate", str(tmp_path / "none.jsonl")], env=WIDE)
    assert missing.exit_code == 2 and f"error: {tmp_path / 'none.jsonl'}: no such file" in missing.output
    fmt = runner.invoke(app, ["problems", "validate", str(tmp_path / "none.jsonl"), "--format", "xml"], env=WIDE)
    assert fmt.exit_code == 2 and "unknown format 'xml'" in fmt.output
    column = runner.invoke(app, ["problems", "validate", "bundled", "--column", "question"], env=WIDE)
    assert column.exit_code == 2 and "expected KEY=COLUMN" in column.output


def test_doctor_reports_every_section(runner):
    result = runner.invoke(app, ["doctor"], env=WIDE)
    assert result.exit_code == 0, result.output
    for section in ("Python dependencies", "answer checking", "embedded model", "vLLM / GPU", "Lean 4",
                    "Dask task runner"):
        assert section in result.output


def test_doctor_checks_report_not_raise(monkeypatch):
    from labelers import doctor

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("PRMFORGE_LEAN_PROJECT", raising=False)
    items = {item.name: item for item in doctor.run_checks()}
    lean = next(item for name, item in items.items() if name.startswith("Lean"))
    assert lean.ok is False and lean.hint
    vllm = next(item for name, item in items.items() if name.startswith("vLLM"))
    assert vllm.ok is False  # no nvidia-smi on an empty PATH
    assert items["Python dependencies"].ok is True
    assert items["answer checking"].ok is True


def test_installed_entry_point_exits_2_on_bad_input(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("prompt,gold\n")
    completed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "problems", "validate", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: {path}: missing column 'question' (columns: prompt, gold)"


def test_doctor_imports_no_optional_package():
    code = (
        "import sys; from labelers.doctor import run_checks; run_checks(); "
        "print(sorted(m for m in ('torch', 'vllm', 'llama_cpp', 'ray') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_cli_start_and_train_help_import_no_training_package():
    code = (
        "import sys; from typer.testing import CliRunner; from flows.cli import app; "
        "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
