"""The Python sandbox: results, typed failures, and what it refuses, each within its limit."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from labelers.verify.sandbox import probe_isolation, run_python, seccomp_filter

TIMEOUT_S = 2.0
MEMORY_MB = 256
# Interpreter start, the kill and the clean-up around a run.
OVERHEAD_S = 2.0


def _run(code: str, timeout_s: float = TIMEOUT_S):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = run_python(code, timeout_s=timeout_s, memory_mb=MEMORY_MB)
    elapsed = time.perf_counter() - started
    assert elapsed < timeout_s + OVERHEAD_S, f"took {elapsed:.1f} s"
    return result


@pytest.mark.usefixtures("kernel_sandbox")
def test_prints_and_trailing_expression() -> None:
    result = _run("from fractions import Fraction\nprint(Fraction(3, 4) * 8)\n6 * 7")
    assert result.ok
    assert result.stdout == "6\n"
    assert result.result == "42"


@pytest.mark.usefixtures("kernel_sandbox")
def test_scientific_libraries_can_be_imported() -> None:
    result = _run("import sympy\nprint(sympy.sqrt(117))", timeout_s=30)
    assert result.ok, result.error
    assert result.stdout.strip() == "3*sqrt(13)"


@pytest.mark.parametrize(
    ("code", "status", "error_part"),
    [
        ("9**9**9**9", "timeout", ""),
        ("import math\nmath.factorial(10**9)", "timeout", ""),
        ("while True:\n    pass", "timeout", ""),
        ("import time\ntime.sleep(60)", "timeout", ""),
        ("x = 'a' * 10**10", "memory", "MemoryError"),
        ("x = [0] * 10**9", "memory", "MemoryError"),
        ("(" * 10_000 + "1" + ")" * 10_000, "error", "SyntaxError"),
        ("def f(n):\n    return f(n + 1)\nf(0)", "error", "RecursionError"),
        ("1 / 0", "error", "ZeroDivisionError"),
        ("import subprocess\nsubprocess.run(['true'])", "blocked", "Operation not permitted"),
        ("import os\nos.fork()", "blocked", "Operation not permitted"),
        ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "error", "unreachable"),
        ("open('/usr/lib/prmforge-sandbox-escape.txt', 'w').write('x')", "blocked", "Read-only file system"),
        ("import os\nos.remove('/etc/hostname')", "error", "FileNotFoundError"),
        ("while True:\n    print('x' * 100_000)", "output_limit", ""),
    ],
)
@pytest.mark.usefixtures("kernel_sandbox")
def test_hostile_code_gives_typed_failure_within_limit(code: str, status: str, error_part: str) -> None:
    result = _run(code)
    assert result.status == status, (result.status, result.error, result.stderr[-300:])
    assert error_part in (result.error or "")


@pytest.mark.usefixtures("kernel_sandbox")
def test_shell_through_libc_gets_no_process() -> None:
    # system() cannot clone: glibc reports exit status 127 and no command runs
    result = _run("import os\nprint(os.system('echo pwned'))")
    assert result.ok and "pwned" not in result.stdout
    assert result.stdout.strip() == str(127 << 8)


@pytest.mark.usefixtures("kernel_sandbox")
def test_scratch_is_a_private_tmpfs() -> None:
    code = "import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd())\nprint(open('note.txt').read())"
    result = _run(code)
    assert result.ok, result.error
    cwd, content = result.stdout.split()
    assert content == "hi" and cwd == "/tmp"
    assert not Path("/tmp/note.txt").exists()  # the host's /tmp never saw it
    full = _run("open('big', 'wb').write(b'x' * (64 * 1024 * 1024))")  # beyond the tmpfs size and FSIZE
    assert full.status in ("output_limit", "error", "blocked"), full.status


@pytest.mark.usefixtures("kernel_sandbox")
def test_environment_is_cleared() -> None:
    os.environ["PRMFORGE_SECRET_FOR_TEST"] = "leak"
    try:
        result = _run("import os\nprint(sorted(os.environ))")
    finally:
        del os.environ["PRMFORGE_SECRET_FOR_TEST"]
    assert result.ok
    assert "PRMFORGE_SECRET_FOR_TEST" not in result.stdout
    assert "HOME" in result.stdout


@pytest.mark.usefixtures("kernel_sandbox")
def test_network_namespace_has_only_loopback() -> None:
    result = _run("import socket\nprint(socket.if_nameindex())")
    assert result.ok and result.network_namespace
    assert result.stdout.strip() == "[(1, 'lo')]"


@pytest.mark.usefixtures("kernel_sandbox")
def test_only_the_interpreter_and_allowed_packages_are_visible() -> None:
    result = _run("import os\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/opt/prmforge-lib')))")
    assert result.ok, result.error
    top, libs = result.stdout.splitlines()
    interpreter = os.path.realpath(sys.executable)
    for absent in ("etc", "home", "work", "root", "var", "srv"):
        if not interpreter.startswith(f"/{absent}/"):  # the interpreter's own directory is bound
            assert f"'{absent}'" not in top
    assert "'sympy'" in libs and "'mpmath'" in libs


@pytest.mark.usefixtures("kernel_sandbox")
def test_pid_namespace_kill_reaches_a_setsid_child() -> None:
    # With process creation allowed, a child that leaves the session still dies with the sandbox.
    tag = "prmforge-pidns-" + str(os.getpid())
    code = (
        "import os, sys, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {tag!r}])\n"
        "print('child', pid, flush=True)\ntime.sleep(60)\n"
    )
    result = run_python(code, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, max_processes=4)
    assert result.status == "timeout" and result.stdout.startswith("child")
    time.sleep(0.3)
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and tag.encode() in (entry / "cmdline").read_bytes():
                alive.append(entry.name)
        except OSError:
            pass
    assert not alive


@pytest.mark.usefixtures("kernel_sandbox")
def test_process_limit_bounds_forks_when_allowed() -> None:
    code = (
        "import os\nmade = 0\nfor _ in range(50):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        import time; time.sleep(5); os._exit(0)\n"
        "    made += 1\nprint(made)\n"
    )
    result = run_python(code, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, max_processes=4)
    if os.geteuid() == 0:
        pytest.skip("RLIMIT_NPROC does not bind processes of host uid 0 (the seccomp filter does)")
    assert result.ok and int(result.stdout) <= 3


def test_unavailable_sandbox_is_a_status_not_a_weaker_run(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = run_python("print(1)", bwrap=str(fake))
    assert result.status == "unavailable" and "namespace" in (result.error or "")
    support = probe_isolation(str(fake))
    assert not support.available and "namespace" in support.reason


def test_weak_mode_is_chosen_by_name_only() -> None:
    result = run_python("print(7)", isolation="process-unsafe")
    assert result.ok and result.stdout == "7\n" and result.isolation == "process-unsafe"
    with pytest.raises(ValueError):
        run_python("print(7)", isolation="weak")


def test_seccomp_filter_program_shape() -> None:
    program = seccomp_filter("x86_64")
    assert program is not None and len(program) % 8 == 0
    assert seccomp_filter("riscv64") is None
    assert seccomp_filter("x86_64", allow_processes=True) != program


# ---------------------------------------------------------------------------------------------
# Where bwrap cannot start: code checks off with one warning, claims still checked, doctor says why


def _fake_bwrap(tmp_path: Path) -> str:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    return str(fake)


def test_tool_verifier_turns_code_checks_off_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from labelers.config import ToolConfig
    from labelers.verify import sandbox
    from labelers.verify.base import ToolVerdict
    from labelers.verify.tool import ToolStepVerifier

    fake = _fake_bwrap(tmp_path)
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: fake)
    code_step = "```python\nprint(6 * 7)\n```\nSo 42."
    with caplog.at_level("WARNING", logger="prmforge.tool"), ToolStepVerifier(ToolConfig(workers=1)) as tool:
        first = tool.check_text(code_step)
        second = tool.check_text(code_step)
        claim = tool.check_text(r"$\sqrt{8} = 2\sqrt{2}$ and 2 + 2 = 4")
        pool_isolation = tool._pool.isolation
    for check in (first, second):
        assert check.verdict is ToolVerdict.UNVERIFIABLE and check.kind == "python"
        assert "code checks are off: bwrap at" in check.evidence["reason"]
        assert "Permission denied" in check.evidence["reason"]
    assert claim.verdict is ToolVerdict.CORRECT  # claims are still checked
    assert pool_isolation == "process"
    code_warnings = [r for r in caplog.records if "code checks are off" in r.getMessage()]
    assert len(code_warnings) == 1


def test_weak_mode_by_name_runs_code_without_bwrap(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from labelers.config import ToolConfig
    from labelers.verify import sandbox
    from labelers.verify.base import ToolVerdict
    from labelers.verify.tool import ToolStepVerifier

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: _fake_bwrap(tmp_path))
    config = ToolConfig(workers=1, code_isolation="process-unsafe")
    with ToolStepVerifier(config) as tool:
        check = tool.check_text("```python\nprint(6 * 7)\n```\nSo 42.")
    assert check.verdict is ToolVerdict.CORRECT and check.kind == "python"


def test_config_refuses_unknown_isolation_names() -> None:
    from pydantic import ValidationError

    from labelers.config import ToolConfig

    with pytest.raises(ValidationError):
        ToolConfig(code_isolation="none")


def test_doctor_says_why_code_checks_are_off(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from labelers import doctor
    from labelers.verify import sandbox

    working = {item.name: item for item in doctor.run_checks()}["code sandbox"]
    available_here = probe_isolation().available
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: _fake_bwrap(tmp_path))
    broken = sandbox.doctor_check()
    assert working.ok == available_here
    assert broken.ok is False
    assert broken.detail.startswith("code checks are off: bwrap at") and "Permission denied" in broken.detail
    assert "process-unsafe" in (broken.hint or "")


def test_claim_workers_run_in_the_sandbox(kernel_sandbox) -> None:  # type: ignore[no-untyped-def]
    from labelers.verify.pool import ClaimPool

    pool = ClaimPool(workers=1, claim_timeout_s=10.0, memory_mb=512, isolation="bubblewrap")
    try:
        sqrt8 = ("fn", "sqrt", ("num", "8"))
        two_sqrt2 = ("mul", ("num", "2"), ("fn", "sqrt", ("num", "2")))
        (result,) = pool.run([(sqrt8, two_sqrt2, "=", False, 0.0, ())])
        assert pool.isolation == "bubblewrap" and pool.live_workers == 1
        (worker,) = pool._workers
        # the worker's command line is bwrap's, with the interpreter inside it
        cmdline = Path(f"/proc/{worker.process.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"bwrap") and b"--unshare-all" in cmdline
    finally:
        pool.close()
    assert result["holds"] is True
    assert pool.live_workers == 0
