"""The llama.cpp install environment, the preflight, and what the CLI does when llama.cpp crashes.

The crash tests put a stand-in ``llama_cpp`` package first on PYTHONPATH (the native library is
the boundary being faked): its model constructor kills its own process with SIGSEGV, as the
AMX build of llama.cpp does in ``llama_decode`` on some machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from labelers.policy.llama_build import (
    INSTALL_COMMAND,
    LLAMA_CPP_REQUIREMENT,
    NO_AMX_FLAGS,
    build_environment,
    compiled_features,
    install_argv,
    missing_cpu_features,
    run_preflight_child,
)
from labelers.policy.model_files import PRESETS, preset_status

ROOT = Path(__file__).parent.parent

CRASHING_LLAMA_CPP = '''
import os, signal

def llama_print_system_info():
    return b"CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "

class Llama:
    def __init__(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
'''


@pytest.fixture()
def crashing_llama(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``llama_cpp`` dies with SIGSEGV when a model is created."""
    package = tmp_path / "stub" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(CRASHING_LLAMA_CPP)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path / "stub")])
    env["PRMFORGE_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def test_build_environment_turns_amx_off_on_x86_and_keeps_user_flags():
    env = build_environment({"CFLAGS": "-O3", "CMAKE_ARGS": "-DGGML_CUDA=ON"}, machine="x86_64")
    assert env["CFLAGS"].split() == ["-O3", *NO_AMX_FLAGS]
    assert env["CXXFLAGS"].split() == list(NO_AMX_FLAGS)
    assert env["CMAKE_ARGS"].split() == ["-DGGML_CUDA=ON", "-DLLAVA_BUILD=OFF"]
    arm = build_environment({}, machine="aarch64")
    assert "CFLAGS" not in arm and arm["CMAKE_ARGS"] == "-DLLAVA_BUILD=OFF"


def test_install_bypasses_the_wheel_cache_and_matches_the_extra():
    argv = install_argv(force=True)
    assert "--no-cache-dir" in argv and "--force-reinstall" in argv and argv[-1] == LLAMA_CPP_REQUIREMENT
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["embedded"] == [LLAMA_CPP_REQUIREMENT]


def test_compiled_features_and_what_the_cpu_lacks():
    features = compiled_features("CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | REPACK = 1 | ")
    assert features == {"SSE3", "AVX2", "AMX_INT8", "REPACK"}
    assert missing_cpu_features(features, frozenset({"pni", "avx2"})) == ["AMX_INT8"]
    assert missing_cpu_features(features, None) == []


def test_preflight_child_killed_by_a_signal_is_reported_with_the_fix(tmp_path, crashing_llama, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", crashing_llama["PYTHONPATH"])
    result = run_preflight_child(tmp_path / "model.gguf", 1, timeout_s=120)
    assert not result.ok and result.failure == "was killed by SIGSEGV"
    message = result.message(tmp_path / "model.gguf")
    assert "AMX_INT8" in message and f"{INSTALL_COMMAND} --force" in message
    assert "\n" not in message


def test_preflight_child_on_a_file_that_is_no_model_fails_without_a_signal(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    result = run_preflight_child(bogus, 1, timeout_s=120)
    assert not result.ok and result.failure is not None and result.failure.startswith("failed (exit code 1")


@pytest.mark.skipif(bool(preset_status(PRESETS["small"]).missing_packages), reason="0.5B model parts not installed")
def test_build_with_a_crashing_llama_is_one_line_and_leaves_nothing_running(tmp_path, crashing_llama):
    root = tmp_path / "data"
    crashing_llama["PRMFORGE_CACHE_DIR"] = os.environ.get("PRMFORGE_CACHE_DIR",
                                                          str(Path.home() / ".cache" / "prmforge"))
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "build", "--preset", "demo", "--model", "small", "--root", str(root)],
        cwd=ROOT, env=crashing_llama, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "SIGSEGV" in lines[0] and INSTALL_COMMAND in lines[0]
    # The demo preset builds into a dataset: the planned build is recorded failed with the
    # reason and its claim released; nothing is left 'running'.
    from data_schemas.manifest import list_builds

    manifests = list_builds(str(root))
    assert [m.status for m in manifests] == ["failed"]
    assert "SIGSEGV" in (manifests[0].error or "")


def test_build_with_a_missing_problem_file_is_one_line_before_prefect_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "build", "--problems", str(tmp_path / "missing.jsonl"),
         "--root", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'missing.jsonl'}: no such file"
    assert not (tmp_path / "data" / "builds").exists()


def _session_members(session_id: int) -> list[str]:
    """Command lines of the live processes in a session (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session_id:  # state, ppid, pgrp, session
            members.append(cmdline.strip())
    return members


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.skipif(bool(preset_status(PRESETS["small"]).missing_packages), reason="0.5B model parts not installed")
def test_sigkilled_build_leaves_no_process_behind(tmp_path):
    """SIGKILL a running build (as the OOM killer would): its Prefect API server and every other
    child must go with it."""
    import signal
    import time

    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    root = tmp_path / "data"
    build = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "build", "--preset", "demo", "--model", "small", "--limit", "1",
         "--root", str(root)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # Running means: the manifest is written (the flow started) and the API server is a child.
        while time.monotonic() < deadline and build.poll() is None:
            members = _session_members(build.pid)
            if list(root.glob("builds/*/manifest.json")) and any("uvicorn" in m for m in members):
                break
            time.sleep(0.5)
        assert build.poll() is None, "the build ended before it could be killed"
        time.sleep(2)
        assert len(_session_members(build.pid)) >= 2
    finally:
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
    deadline = time.monotonic() + 30
    while _session_members(build.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _session_members(build.pid) == []


@pytest.mark.skipif(bool(preset_status(PRESETS["small"]).missing_packages), reason="0.5B model parts not installed")
def test_doctor_reports_a_crashing_build_with_the_fix(crashing_llama, monkeypatch):
    import importlib.metadata

    from labelers.policy.embedded import doctor_check
    from labelers.policy.model_files import resolve_model

    try:
        importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llama-cpp-python not installed")
    resolve_model("small")  # assembled, so doctor has a model to decode with
    monkeypatch.setenv("PYTHONPATH", crashing_llama["PYTHONPATH"])
    item = doctor_check()
    assert not item.ok
    assert "killed by SIGSEGV" in item.detail and "AMX_INT8" in item.detail
    assert f"{INSTALL_COMMAND} --force" in (item.hint or "")


def test_default_threads_leave_the_cores_other_processes_use(monkeypatch, caplog):
    """All cores on an idle machine; a core another process keeps busy is left to it, and the
    user is told (the build is slower than on an idle machine)."""
    from labelers.policy import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 0.3)
    with caplog.at_level("WARNING", logger="prmforge.policy"):
        assert threads.default_threads() == 4
    assert not caplog.records
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 1.2)
    with caplog.at_level("WARNING", logger="prmforge.policy"):
        assert threads.default_threads() == 3
    assert [r.getMessage() for r in caplog.records] == [
        "llama.cpp decodes with 3 of 4 cores: other processes keep 1.2 busy (set policy.n_threads to choose)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="prmforge.policy"):
        assert threads.default_threads(quiet=True) == 3  # the preflight's probe: the load says it
    assert not caplog.records
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda: 7.0)
    assert threads.default_threads() == 1


def test_busy_cores_subtract_this_process_tree(monkeypatch, tmp_path):
    """Busy ticks minus this tree's own ticks, over all ticks, times the CPUs; parsed from /proc."""
    from labelers.policy import threads

    me = os.getpid()
    processes = {me: 1, 4001: me, 4002: 4001, 4003: 1}  # pid -> parent: a child, a grandchild, a stranger
    for pid, parent in processes.items():
        (tmp_path / str(pid)).mkdir()
        # comm may hold spaces and parentheses; utime and stime are fields 14 and 15.
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (a (b) c) S {parent} " + "0 " * 9 + f"{pid % 100} 1 0 0\n")
    (tmp_path / "self").mkdir()  # non-numeric entries are skipped
    assert threads._own_tree_ticks(tmp_path) == (me % 100 + 1) + (1 + 1) + (2 + 1)

    samples = iter([threads._CpuTicks(busy=1000, total=4000, own=100),
                    threads._CpuTicks(busy=1400, total=4400, own=200)])
    monkeypatch.setattr(threads, "_sample", lambda proc: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    # 400 busy ticks of 400, 100 of them this tree's: 300/400 of 4 CPUs = 3 cores busy elsewhere.
    assert threads.busy_cores_of_others() == 3.0


def test_own_tree_ticks_include_a_spinning_child():
    import time

    from labelers.policy.threads import _own_tree_ticks

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        first = _own_tree_ticks(Path("/proc"))
        # >= 0.1 s of the child's CPU at USER_HZ 100; on a loaded machine (a niced suite beside a
        # model run) the child got 0.07 s in half a second, so wait for it, up to 20 s.
        deadline = time.monotonic() + 20
        while _own_tree_ticks(Path("/proc")) - first < 10 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _own_tree_ticks(Path("/proc")) - first >= 10
    finally:
        child.kill()
        child.wait()
