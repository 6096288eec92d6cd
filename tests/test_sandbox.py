"""The Python sandbox: results, typed failures, and what it refuses, each within its limit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from labelers.verify.sandbox import run_python

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


def test_prints_and_trailing_expression() -> None:
    result = _run("from fractions import Fraction\nprint(Fraction(3, 4) * 8)\n6 * 7")
    assert result.ok
    assert result.stdout == "6\n"
    assert result.result == "42"


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
        ("__import__('os').system('echo pwned')", "blocked", "os.system"),
        ("import subprocess\nsubprocess.run(['true'])", "blocked", "subprocess.Popen"),
        ("import os\nos.fork()", "blocked", "os.fork"),
        ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", "blocked", "socket"),
        ("open('/tmp/prmforge-sandbox-escape.txt', 'w').write('x')", "blocked", "open for writing"),
        ("import os\nos.remove('/etc/hostname')", "blocked", "os.remove"),
        ("import ctypes\nctypes.CDLL(None).system(b'echo pwned')", "blocked", "ctypes"),
        ("while True:\n    print('x' * 100_000)", "output_limit", ""),
    ],
)
def test_hostile_code_gives_typed_failure_within_limit(code: str, status: str, error_part: str) -> None:
    result = _run(code)
    assert result.status == status, (result.status, result.error, result.stderr[-300:])
    assert error_part in (result.error or "") + " ".join(result.blocked_events)
    assert not Path("/tmp/prmforge-sandbox-escape.txt").exists()


def test_scratch_directory_is_private_writable_and_removed() -> None:
    code = "import os\nopen('note.txt', 'w').write('hi')\nprint(os.getcwd())\nprint(open('note.txt').read())"
    result = _run(code)
    assert result.ok, result.error
    cwd, content = result.stdout.split()
    assert content == "hi"
    assert Path(cwd).name == "work" and Path(cwd).parent.name.startswith("prmforge-sandbox-")
    assert not Path(cwd).exists()  # removed after the run


def test_environment_is_cleared() -> None:
    os.environ["PRMFORGE_SECRET_FOR_TEST"] = "leak"
    try:
        result = _run("import os\nprint(sorted(os.environ))")
    finally:
        del os.environ["PRMFORGE_SECRET_FOR_TEST"]
    assert result.ok
    assert "PRMFORGE_SECRET_FOR_TEST" not in result.stdout
    assert "HOME" in result.stdout


def test_network_is_unreachable() -> None:
    # With a network namespace there is no interface but loopback; without one the audit hook
    # still refuses sockets. Either way no connection is made.
    result = _run("import socket\nprint(socket.if_nameindex())")
    if result.network_namespace:
        assert result.ok
        assert "eth" not in result.stdout and "lo" in result.stdout
    code = "import socket\ntry:\n    socket.socket()\nexcept PermissionError as e:\n    print('refused', e)"
    refused = _run(code)
    assert refused.ok and refused.stdout.startswith("refused")
    assert refused.blocked_events and refused.blocked_events[0].startswith("socket")
