"""Run model-written Python in a separate, limited process.

:func:`run_python` starts a fresh interpreter for each program and returns a
:class:`SandboxResult` (stdout, the value of a trailing expression, or a typed failure). What is
enforced, and by whom:

- **separate process**: ``python -I -S`` (isolated mode: no user site, no ``PYTHON*`` variables,
  no ``site`` import); the project's site-packages directory is appended to ``sys.path`` so that
  ``math``/``fractions``/``sympy``/``numpy`` imports work; its own session and process group,
  killed as a whole when it ends or overruns;
- **time**: ``RLIMIT_CPU`` (CPU seconds, kernel-enforced) plus a wall-clock kill from the parent
  (``SIGKILL`` to the process group) after ``timeout_s``;
- **memory**: ``RLIMIT_AS`` (address space) of ``memory_mb``; an allocation beyond it raises
  ``MemoryError`` in the program (status ``memory``);
- **output**: ``RLIMIT_FSIZE`` caps files (stdout/stderr go to files); the parent reads at most
  :data:`MAX_OUTPUT_CHARS`;
- **network**: a new, empty network namespace (``unshare -n``; ``unshare -r -n`` when not root)
  where the kernel permits it — reported in ``SandboxResult.network_namespace`` — and, always, an
  audit hook that refuses every ``socket.*`` event;
- **processes**: the audit hook refuses ``subprocess.Popen``, ``os.system``, ``os.exec*``,
  ``os.posix_spawn``, ``os.fork``, ``os.kill`` and ``ctypes`` foreign calls;
- **files**: the working directory is a fresh temporary directory, removed afterwards; the audit
  hook refuses opening files for writing, and removing/renaming/creating paths, outside it;
- **environment**: cleared; only ``PATH``, ``HOME``/``TMPDIR`` (the scratch directory), ``LANG``
  and single-thread settings for numeric libraries are set.

Known gaps (documented in docs/verification.md): audit hooks are a CPython mechanism, not a
kernel boundary; calling ``_posixsubprocess.fork_exec`` directly is not audited; without user
namespaces there is no network namespace and only the audit hook stands between the code and the
network. The programs run are a model's arithmetic, not adversarial malware; the kernel limits
(time, memory, file size) and the process-group kill hold regardless.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

MAX_OUTPUT_CHARS = 20_000
_FILE_LIMIT_BYTES = 4 * 1024 * 1024

STATUSES = ("ok", "error", "timeout", "memory", "blocked", "output_limit", "crashed")


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed program did.

    ``status``: ``ok`` (ran to the end), ``error`` (raised; ``error`` holds ``Type: message``),
    ``timeout`` (wall or CPU limit), ``memory`` (address-space limit), ``blocked`` (a refused
    operation was attempted and not handled by the program), ``output_limit`` (file size limit),
    ``crashed`` (killed by another signal). ``result`` is ``repr`` of the program's trailing
    expression when it has one. ``blocked_events`` lists refused operations (even when handled).
    """

    status: str
    stdout: str
    stderr: str
    result: str | None
    error: str | None
    wall_s: float
    network_namespace: bool
    blocked_events: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# The program that runs inside the child: limits, audit hook, then the model's code.
_RUNNER = r'''
import sys
def _main():
    import ast, json, os, resource
    cfg = json.loads(sys.argv[1])
    nonce = cfg["nonce"]
    for path in cfg["paths"]:
        if path not in sys.path:
            sys.path.append(path)
    mem = cfg["memory_bytes"]
    cpu = cfg["cpu_s"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    scratch = os.path.realpath(os.getcwd())
    blocked = []
    realpath = os.path.realpath
    fspath = os.fspath
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    DENY = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "ctypes.call_function", "ctypes.cdata",
            "ctypes.dlsym", "ctypes.string_at", "ctypes.wstring_at", "sys.setrecursionlimit_",
            "os.setuid", "os.chroot", "resource.setrlimit", "resource.prlimit")
    PATH_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                   "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree",
                   "shutil.copyfile", "shutil.move", "os.replace")

    def inside(path):
        try:
            if isinstance(path, int):
                return True
            full = realpath(fspath(path))
        except Exception:
            return False
        return full == scratch or full.startswith(scratch + os.sep)

    def refuse(event):
        blocked.append(event)
        raise PermissionError(f"sandbox: {event} is not allowed")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and path is not None and not inside(path):
                refuse(f"open for writing {path!r}")
        elif event.startswith("socket."):
            refuse(event)
        elif event.startswith(DENY):
            refuse(event)
        elif event.startswith(PATH_EVENTS):
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    refuse(f"{event} {arg!r}")

    code = sys.stdin.read()
    sys.stdin = open(os.devnull)
    status, result, error = "ok", None, None
    try:
        tree = ast.parse(code, "<step>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        body = compile(tree, "<step>", "exec")
        tail = compile(last, "<step>", "eval") if last is not None else None
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        sys.addaudithook(hook)
        exec(body, namespace)
        if tail is not None:
            value = eval(tail, namespace)
            if value is not None:
                result = repr(value)[:2000]
    except MemoryError:
        status, error = "memory", "MemoryError"
    except RecursionError as exc:
        status, error = "error", f"RecursionError: {exc}"[:500]
    except PermissionError as exc:
        status = "blocked" if str(exc).startswith("sandbox:") else "error"
        error = f"PermissionError: {exc}"[:500]
    except OSError as exc:
        # EFBIG: the file size limit (stdout is a file) was reached
        status = "output_limit" if getattr(exc, "errno", None) == 27 else "error"
        error = f"{type(exc).__name__}: {exc}"[:500]
    except BaseException as exc:
        status, error = "error", f"{type(exc).__name__}: {exc}"[:500]
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    sys.stderr.write("\n" + nonce + json.dumps({"status": status, "result": result, "error": error,
                                                "blocked": blocked[:20]}) + "\n")
    sys.stderr.flush()
_main()
'''


def _site_paths() -> list[str]:
    """Library directories the child may import from (read-only use)."""
    paths = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path and path not in paths:
            paths.append(path)
    return paths


def _unshare_prefix() -> list[str]:
    tool = shutil.which("unshare")
    if tool is None or not sys.platform.startswith("linux"):
        return []
    return [tool, "-n"] if os.geteuid() == 0 else [tool, "-r", "-n"]


def _read_limited(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_OUTPUT_CHARS * 4 + 4096)
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter (see the module doc for what is enforced).

    Never raises for anything the program does; a failure is a status in the result.
    """
    root = tempfile.mkdtemp(prefix="prmforge-sandbox-")
    scratch = os.path.join(root, "work")
    os.mkdir(scratch)
    nonce = "@@prmforge-sandbox-" + secrets.token_hex(8) + "@@"
    config = {
        "nonce": nonce,
        "paths": _site_paths(),
        "memory_bytes": int(memory_mb) * 1024 * 1024,
        "cpu_s": max(1, int(timeout_s + 0.999)),
        "file_bytes": _FILE_LIMIT_BYTES,
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }
    argv = [sys.executable, "-I", "-S", "-c", _RUNNER, json.dumps(config)]
    started = time.perf_counter()
    try:
        prefix = _unshare_prefix()
        outcome = _spawn(prefix + argv, code, scratch, root, env, timeout_s)
        network_namespace = bool(prefix)
        if prefix and outcome[0] == 1 and outcome[2].lstrip().startswith("unshare:"):
            # The kernel refused a network namespace here; the audit hook still refuses sockets.
            outcome = _spawn(argv, code, scratch, root, env, timeout_s)
            network_namespace = False
        returncode, stdout, stderr, timed_out = outcome
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - started
    return _result(returncode, stdout, stderr, timed_out, nonce, wall, network_namespace)


def _spawn(
    argv: list[str], code: str, scratch: str, root: str, env: dict[str, str], timeout_s: float
) -> tuple[int | None, str, str, bool]:
    out_path = os.path.join(root, "stdout")
    err_path = os.path.join(root, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            cwd=scratch,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        timed_out = False
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(code.encode("utf-8", errors="replace"))
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The whole process group goes, whatever the program started.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    return proc.returncode, _read_limited(out_path), _read_limited(err_path), timed_out


def _result(
    returncode: int | None,
    stdout: str,
    stderr: str,
    timed_out: bool,
    nonce: str,
    wall: float,
    network_namespace: bool,
) -> SandboxResult:
    report: dict = {}
    if nonce in stderr:
        stderr, _, tail = stderr.rpartition(nonce)
        try:
            report = json.loads(tail.strip().splitlines()[0])
        except (ValueError, IndexError):
            report = {}
    stdout = stdout[:MAX_OUTPUT_CHARS]
    stderr = stderr.strip()[-MAX_OUTPUT_CHARS:]
    blocked = tuple(str(b) for b in report.get("blocked", []))
    if timed_out:
        status, error = "timeout", "wall-clock limit reached"
    elif report:
        status, error = str(report.get("status", "error")), report.get("error")
    elif returncode is not None and returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU or sig == signal.SIGKILL:
            status, error = "timeout", f"killed by signal {signal.Signals(sig).name} (CPU limit)"
        elif sig == signal.SIGXFSZ:
            status, error = "output_limit", "output larger than the file size limit"
        elif sig == signal.SIGSEGV:
            status, error = "memory", "killed by SIGSEGV (likely the memory limit)"
        else:
            status, error = "crashed", f"killed by signal {signal.Signals(sig).name}"
    else:
        last = stderr.splitlines()[-1] if stderr else f"exit status {returncode}"
        status = "memory" if "MemoryError" in last else "crashed"
        error = last[:500]
    if status not in STATUSES:
        status = "error"
    return SandboxResult(
        status=status,
        stdout=stdout,
        stderr=stderr,
        result=report.get("result") if status == "ok" else None,
        error=error,
        wall_s=wall,
        network_namespace=network_namespace,
        blocked_events=blocked,
    )
