"""Lean batch plumbing without Lean: batch layout, ``--json`` message parsing and mapping, the
re-run rules, the cache, and the process limits.

Nothing here claims that Lean verification works: there is no Lean toolchain on this machine.
The JSON lines are written in Lean 4's documented message format (``fileName``, ``pos``,
``endPos``, ``severity``, ``caption``, ``data``); ``ScriptedLeanOutput`` produces such lines from
a batch file by a fixed rule so the mapping and re-run logic can be exercised; ``FAKE_LAKE``
scripts are shell/Python stand-ins for ``lake`` used ONLY to test timeouts, process-group kills,
crashes and limits. Real Lean runs are in tests/test_lean_verifier.py (marker ``lean``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labelers.verify.claims import Claim
from labelers.verify.lean_formalize import formalize_claim
from labelers.verify.lean_runner import (
    BATCH_HEADER,
    TRACE_PREFIX,
    BatchChecker,
    Declaration,
    DeclOutcome,
    LeanCache,
    LeanMessage,
    ProcessResult,
    assign_messages,
    declarations_for,
    environment_key,
    outcome_from_messages,
    parse_lean_json,
    proof_script,
    render_batch,
    run_limited,
)

TACTICS = ("norm_num", "decide", "omega", "simp", "linarith", "ring_nf", "positivity")


def _form(lhs: str, rhs: str, relation: str = "="):
    f = formalize_claim(Claim(text="t", span=(0, 1), lhs=lhs, rhs=rhs, relation=relation)).formalization
    assert f is not None
    return f


def _message(path: str, line: int, column: int, severity: str, data: str) -> str:
    """One line of ``lean --json`` output, as Lean 4 serializes a message."""
    return json.dumps(
        {
            "severity": severity,
            "pos": {"line": line, "column": column},
            "keepFullRange": False,
            "fileName": path,
            "endPos": {"line": line, "column": column + 5},
            "data": data,
            "caption": "",
        }
    )


# ---------------------------------------------------------------------------------------------
# Layout


def test_declarations_and_proof_script() -> None:
    f = _form("16 - 3 - 4", "9")
    decls = declarations_for(f, TACTICS)
    assert [d.kind for d in decls] == ["check", "prove", "refute"]
    assert [d.name for d in decls] == [f"{f.name}_chk", f.name, f"{f.name}_neg"]
    assert decls[0].text == f"theorem {f.name}_chk : (16 - 3 - 4 : ℤ) = 9 := by\n  sorry"
    assert decls[1].text.startswith(
        f"theorem {f.name} : (16 - 3 - 4 : ℤ) = 9 := by\n  first\n  | (norm_num; done); trace "
    )
    assert decls[2].text.startswith(f"theorem {f.name}_neg : ¬ ((16 - 3 - 4 : ℤ) = 9) := by\n  first\n")
    assert (proof_script(("norm_num",), substitute=False)
            == f'by\n  first\n  | (norm_num; done); trace "{TRACE_PREFIX}norm_num"')
    assert proof_script(("norm_num",), substitute=True).startswith("by\n  try subst_vars\n  first\n")
    # A free-symbol identity has no refutation.
    identity = _form("(x + 1)**2", "x**2 + 2*x + 1")
    assert [d.kind for d in declarations_for(identity, TACTICS)] == ["check", "prove"]


def test_render_batch_line_ranges_point_at_each_declaration() -> None:
    decls = declarations_for(_form("3*3", "9"), TACTICS) + declarations_for(_form("7/2", "3"), TACTICS)
    batch = render_batch(decls)
    lines = batch.text.split("\n")
    assert batch.text.startswith(BATCH_HEADER) and batch.text.count("import Mathlib") == 1
    previous_end = 0
    for decl in decls:
        first, last = batch.ranges[decl.name]
        assert first > previous_end
        assert lines[first - 1].startswith(f"theorem {decl.name} ")
        assert "\n".join(lines[first - 1 : last]) == decl.text
        previous_end = last


# ---------------------------------------------------------------------------------------------
# Messages


def test_parse_lean_json_reads_messages_and_keeps_other_lines() -> None:
    out = "\n".join(
        [
            _message("/p/B.lean", 5, 8, "warning", "declaration uses 'sorry'"),
            "✔ [1/1] Built something",
            _message("/p/B.lean", 9, 35, "information", TRACE_PREFIX + "norm_num"),
            json.dumps({"severity": "error", "pos": {"line": 14, "column": 2}, "endPos": None, "fileName": "/p/B.lean",
                        "data": "unsolved goals\n⊢ False", "caption": "", "keepFullRange": False}),
            json.dumps({"not": "a message"}),
            "",
        ]
    )
    messages, other = parse_lean_json(out)
    assert [(m.severity, m.line, m.column) for m in messages] == [
        ("warning", 5, 8), ("information", 9, 35), ("error", 14, 2)
    ]
    assert messages[2].data.startswith("unsolved goals") and messages[2].end_line is None
    assert other == ["✔ [1/1] Built something", '{"not": "a message"}']


@pytest.mark.parametrize(
    ("kind", "messages", "status", "tactic"),
    [
        ("check", [LeanMessage("warning", 1, 8, "declaration uses 'sorry'")], "ok", None),
        ("check", [LeanMessage("warning", 1, 8, "declaration uses 'sorry'")] * 2, "failed", None),
        ("check", [LeanMessage("warning", 1, 8, "declaration uses 'sorry'"),
                   LeanMessage("error", 1, 20, "unknown identifier 'foo'")], "failed", None),
        ("check", [LeanMessage("warning", 1, 8, "unused variable `h`")], None, None),
        ("prove", [LeanMessage("information", 3, 30, TRACE_PREFIX + "decide")], "ok", "decide"),
        ("prove", [LeanMessage("error", 9, 4, "linarith failed to find a contradiction")], "failed", None),
        ("refute", [LeanMessage("error", 2, 2, "(deterministic) timeout at `whnf`, "
                                               "maximum number of heartbeats (200000) has been reached")],
         "timeout", None),
        ("prove", [], None, None),
    ],
)
def test_outcome_from_messages(kind, messages, status, tactic) -> None:
    outcome = outcome_from_messages(kind, messages)
    if status is None:
        assert outcome is None
    else:
        assert outcome is not None and outcome.status == status and outcome.tactic == tactic


def test_assign_messages_by_line_and_header_errors() -> None:
    decls = declarations_for(_form("3*3", "9"), TACTICS)
    batch = render_batch(decls)
    chk, prove, neg = (batch.ranges[d.name] for d in decls)
    messages = [
        LeanMessage("error", 1, 0, "unknown module prefix 'Mathlib'"),
        LeanMessage("warning", chk[0], 8, "declaration uses 'sorry'"),
        LeanMessage("information", prove[0] + 2, 30, TRACE_PREFIX + "norm_num"),
        LeanMessage("error", neg[1], 4, "positivity failed"),
    ]
    per_decl, outside = assign_messages(batch, messages)
    assert [m.data for m in outside] == ["unknown module prefix 'Mathlib'"]
    assert [m.severity for m in per_decl[decls[0].name]] == ["warning"]
    assert [m.severity for m in per_decl[decls[1].name]] == ["information"]
    assert [m.severity for m in per_decl[decls[2].name]] == ["error"]


# ---------------------------------------------------------------------------------------------
# The checker's re-run rules, with scripted Lean output


class ScriptedLeanOutput:
    """Stands in for ``lake env lean --json``: answers a batch by a fixed rule per declaration
    (NOT Lean: it decides by a marker in the statement text). Markers: ``1111`` hangs (the
    process is cut at the time limit after reporting what came before), ``2222`` crashes the
    process (no output at all), ``3333`` is a parse error whose recovery swallows the next
    declaration (Lean reports nothing about it); otherwise check -> sorry warning, prove -> closed by norm_num
    when the statement has no ``99``, refute -> closed when it has."""

    def __init__(self, header_error: str | None = None) -> None:
        self.runs: list[list[str]] = []
        self.header_error = header_error

    def __call__(self, path: Path, timeout_s: float) -> ProcessResult:
        text = path.read_text(encoding="utf-8")
        starts = [(i + 1, m.group(1)) for i, line in enumerate(text.split("\n"))
                  if (m := re.match(r"theorem (\S+)", line))]
        self.runs.append([name for _, name in starts])
        lines = []
        if self.header_error:
            lines.append(_message(str(path), 1, 0, "error", self.header_error))
            return ProcessResult(1, "\n".join(lines), "", False, 0.01)
        swallow_next = False
        for line_no, name in starts:
            body = text.split("\n")[line_no - 1]
            if swallow_next:  # a neighbour's parse error ate this declaration: Lean says nothing
                swallow_next = False
                continue
            if "3333" in body:
                lines.append(_message(str(path), line_no, 20, "error", "unexpected token ':='; expected ')'"))
                swallow_next = True
                continue
            if "2222" in body:
                return ProcessResult(134, "", "INTERNAL PANIC: out of memory", False, 0.01)
            if "1111" in body:
                return ProcessResult(None, "\n".join(lines), "", True, timeout_s)
            if name.endswith("_chk"):
                lines.append(_message(str(path), line_no, 8, "warning", "declaration uses 'sorry'"))
            elif name.endswith("_neg") == ("99" in body):
                lines.append(_message(str(path), line_no + 2, 30, "information", TRACE_PREFIX + "norm_num"))
            else:
                lines.append(_message(str(path), line_no + 8, 4, "error", "linarith failed"))
        return ProcessResult(1, "\n".join(lines), "", False, 0.01)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "lean-toolchain").write_text("leanprover/lean4:v4.21.0\n")
    (root / "lake-manifest.json").write_text('{"packages": []}\n')
    return root


def _decls(*pairs: tuple[str, str]) -> list[Declaration]:
    out: list[Declaration] = []
    for lhs, rhs in pairs:
        out.extend(declarations_for(_form(lhs, rhs), TACTICS))
    return out


def test_checker_maps_outcomes_and_deletes_batch_files(project: Path) -> None:
    lean = ScriptedLeanOutput()
    checker = BatchChecker(project, run_file=lean, batch_size=100)
    decls = _decls(("3*3", "9"), ("3*3", "99"))
    results = checker.check(decls)
    assert len(lean.runs) == 1
    by = {d.name: results[d.name] for d in decls}
    assert [by[d.name].status for d in decls] == ["ok", "ok", "failed", "ok", "failed", "ok"]
    assert by[decls[1].name].tactic == "norm_num"
    assert list((project / ".lake" / "prmforge").iterdir()) == []


def test_a_hanging_statement_is_isolated_and_others_keep_their_results(project: Path) -> None:
    lean = ScriptedLeanOutput()
    checker = BatchChecker(project, run_file=lean, batch_size=100, batch_timeout_s=5, statement_timeout_s=1)
    decls = _decls(("2+2", "4"), ("1111*1", "1111"), ("5*5", "25"), ("6*6", "36"))
    results = checker.check(decls)
    hanging = [d.name for d in decls if "1111" in d.text]
    for d in decls:
        assert results[d.name].status == ("timeout" if d.name in hanging else "ok" if d.kind != "refute" else "failed")
    assert set(checker.stats.timeouts) == set(hanging)
    # The first run reported the declarations before the hang; they were not compiled again.
    first_batch = lean.runs[0]
    assert first_batch == [d.name for d in decls]
    recompiled = [name for run in lean.runs[1:] for name in run]
    assert decls[0].name not in recompiled and decls[2].name not in recompiled
    for name in hanging:  # each timeout verdict comes from a run of that declaration alone
        assert [name] in lean.runs
    assert len(lean.runs) == 1 + 2 * len(hanging)  # each hang: once alone, once before the rest


def test_a_crashing_statement_is_bisected_and_reported_alone(project: Path) -> None:
    lean = ScriptedLeanOutput()
    checker = BatchChecker(project, run_file=lean, batch_size=100)
    decls = _decls(("2+2", "4"), ("2222*1", "2222"), ("5*5", "25"))
    results = checker.check(decls)
    for d in decls:
        if "2222" in d.text:
            assert results[d.name].status == "crashed"
            assert "out of memory" in results[d.name].messages[0]
        else:
            assert results[d.name].status in ("ok", "failed")
    assert checker.stats.reruns >= 2


def test_import_failure_makes_lean_unavailable_once(project: Path) -> None:
    lean = ScriptedLeanOutput(header_error="unknown module prefix 'Mathlib'")
    checker = BatchChecker(project, run_file=lean, batch_size=3)
    results = checker.check(_decls(("2+2", "4"), ("3+3", "6")))
    assert {o.status for o in results.values()} == {"unavailable"}
    assert "Mathlib" in (checker.unavailable_reason or "")
    assert len(lean.runs) == 1  # the second batch was not even tried
    checker.check(_decls(("4+4", "8")))
    assert len(lean.runs) == 1


def test_cache_skips_recompilation_across_checkers(project: Path, tmp_path: Path) -> None:
    db = tmp_path / "cache" / "lean-outcomes.sqlite"
    lean = ScriptedLeanOutput()
    decls = _decls(("2+2", "4"), ("3+3", "99"))
    first = BatchChecker(project, run_file=lean, cache=LeanCache(db)).check(decls)
    assert len(lean.runs) == 1
    second_checker = BatchChecker(project, run_file=lean, cache=LeanCache(db))
    second = second_checker.check(decls)
    assert len(lean.runs) == 1 and second == first
    assert second_checker.stats.cache_hits == len(decls)
    # Another toolchain is another environment: nothing is reused.
    (project / "lean-toolchain").write_text("leanprover/lean4:v4.22.0\n")
    BatchChecker(project, run_file=lean, cache=LeanCache(db)).check(decls)
    assert len(lean.runs) == 2


def test_cache_never_stores_crashes_or_unavailability(tmp_path: Path) -> None:
    cache = LeanCache(tmp_path / "c.sqlite")
    cache.put_many({"a": DeclOutcome("crashed"), "b": DeclOutcome("unavailable"), "c": DeclOutcome("ok", "decide"),
                    "d": DeclOutcome("timeout")})
    assert set(cache.get_many(["a", "b", "c", "d"])) == {"c", "d"}
    assert cache.get_many(["c"])["c"] == DeclOutcome("ok", "decide")
    memory = LeanCache(None)
    memory.put_many({"x": DeclOutcome("failed", messages=("m",))})
    assert memory.get_many(["x", "y"]) == {"x": DeclOutcome("failed", messages=("m",))}


def test_environment_key_follows_toolchain_and_manifest(project: Path) -> None:
    key = environment_key(project)
    (project / "lake-manifest.json").write_text('{"packages": [{"rev": "abc"}]}')
    assert environment_key(project) != key


# ---------------------------------------------------------------------------------------------
# Process plumbing with FAKE lake executables (not Lean)


def _fake_lake(directory: Path, body: str) -> Path:
    path = directory / "lake"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_fake_lake_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    fake = _fake_lake(
        tmp_path,
        f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print('{{"severity": "information", "pos": {{"line": 5, "column": 0}}, "data": "before hang"}}', flush=True)
        time.sleep(60)
        """,
    )
    started = time.monotonic()
    result = run_limited([str(fake), "env", "lean", "--json", "x.lean"], cwd=tmp_path, timeout_s=1.5, memory_mb=1024)
    assert result.timed_out and time.monotonic() - started < 20
    assert "before hang" in result.stdout  # output streamed before the kill is kept
    child = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a zombie reaped by init disappears shortly
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived the process-group kill")


@pytest.mark.slow
def test_fake_lake_crash_and_limits_are_reported(tmp_path: Path) -> None:
    fake = _fake_lake(
        tmp_path,
        """
        import os, resource, sys
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        print(f"cwd={os.getcwd()} data={soft} args={sys.argv[1:]}")
        sys.stderr.write("PANIC at lean_alloc: out of memory\\n")
        sys.exit(134)
        """,
    )
    result = run_limited([str(fake), "env", "lean", "--json", "b.lean"], cwd=tmp_path, timeout_s=20, memory_mb=700)
    assert not result.timed_out and result.returncode == 134
    assert "out of memory" in result.stderr
    assert f"cwd={tmp_path}" in result.stdout
    assert f"data={700 * 1024 * 1024}" in result.stdout
    assert "args=['env', 'lean', '--json', 'b.lean']" in result.stdout


@pytest.mark.slow
def test_checker_runs_lake_env_lean_json_in_the_project(project: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "calls.txt"
    fake = _fake_lake(
        tmp_path,
        f"""
        import json, os, sys
        open({str(log_file)!r}, "a").write(
            json.dumps({{"cwd": os.getcwd(), "argv": sys.argv[1:], "exists": os.path.exists(sys.argv[-1])}}) + "\\n"
        )
        print(json.dumps({{"severity": "error", "pos": {{"line": 1, "column": 0}}, "fileName": sys.argv[-1],
                           "data": "unknown module prefix 'Mathlib'"}}))
        sys.exit(1)
        """,
    )
    checker = BatchChecker(project, lake=str(fake))
    results = checker.check(_decls(("2+2", "4")))
    call = json.loads(log_file.read_text().splitlines()[0])
    assert call["cwd"] == str(project) and call["argv"][:3] == ["env", "lean", "--json"] and call["exists"]
    assert call["argv"][3].startswith(str(project / ".lake" / "prmforge"))
    assert {o.status for o in results.values()} == {"unavailable"}


def test_a_lake_that_cannot_start_makes_lean_unavailable(project: Path) -> None:
    def missing_lake(path: Path, timeout_s: float) -> ProcessResult:
        raise FileNotFoundError(2, "No such file or directory", "lake")

    checker = BatchChecker(project, run_file=missing_lake)
    results = checker.check(_decls(("2+2", "4")))
    assert {o.status for o in results.values()} == {"unavailable"}
    assert "cannot run lean" in (checker.unavailable_reason or "")


def test_a_declaration_swallowed_by_a_neighbours_parse_error_is_checked_again(project: Path) -> None:
    lean = ScriptedLeanOutput()
    checker = BatchChecker(project, run_file=lean, batch_size=100)
    bad = [Declaration("bad_chk", "check", "theorem bad_chk (x : ℕ : 3333 := by\n  sorry")]
    good = _decls(("2+2", "4"))
    results = checker.check(bad + good)
    assert results["bad_chk"].status == "failed" and "expected ')'" in results["bad_chk"].messages[0]
    # good's _chk was swallowed in the first run; alone it is checked like any other.
    assert [results[d.name].status for d in good] == ["ok", "ok", "failed"]
    assert [good[0].name] in lean.runs or any(good[0].name in run for run in lean.runs[1:])
