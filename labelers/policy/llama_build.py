"""The llama.cpp build behind the embedded backend: how it is compiled, and a preflight.

Why this module exists: llama-cpp-python compiles llama.cpp when it is installed, by default with
``GGML_NATIVE=ON`` (``-march=native``). On an Intel Xeon with AMX inside a Firecracker VM that
build dies with SIGSEGV in the first ``llama_decode`` (the AMX kernels; a build with AMX code
generation switched off runs), and the signal kills the whole Python process: a build, an eval
or pytest just vanishes. Three defences, in order:

1. :func:`build_environment` is the compile environment of the project's install step
   (``python -m labelers.policy.llama_build install``, used by the README and CI): native code
   for the installing CPU with AMX code generation off (``-mno-amx-*``; ``GGML_AMX_*`` options
   are ignored when ``GGML_NATIVE`` is on), and the multimodal library (``LLAVA_BUILD``) not built.
   The flag sets and their speed are in docs/generation.md (benchmarks/bench_llama_builds.py).
2. The install bypasses pip's wheel cache for this one package: the cache is keyed by the source
   archive only, so a wheel compiled earlier with other flags (or on another machine sharing the
   cache) would silently come back.
3. :func:`preflight` loads the model and decodes a short prompt and one token in a child process
   before a model is loaded in-process. A child killed by a signal becomes one
   :class:`LlamaBuildError` line: the signal, the CPU features compiled into the library, those
   this CPU lacks, and the reinstall command. A passing preflight is remembered on disk, keyed by
   the library file and the model file, so it costs one child per install and model.

This module imports only the standard library at import time: ``install`` runs before the
project's dependencies are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from data_schemas.errors import PrmforgeError

# The version range of the ``embedded`` extra (pyproject.toml). The batched decoder uses the
# llama_memory_* API of this line; a test checks that pyproject.toml says the same.
# The one version tested: the batch decoder relies on its low-level API (sampler chains, memory
# sequences, unified KV) and on how llama_sampler_sample builds its candidates (batch_decoder.py).
LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
# AMX tile code generation off; x86-64 only (other compilers' targets do not know the flags).
NO_AMX_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# The multimodal (llava/mtmd) library is not used by prmforge; skipping it shortens the compile.
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF",)
INSTALL_COMMAND = "python -m labelers.policy.llama_build install"
PREFLIGHT_TIMEOUT_S = 300.0  # loading a 1 GB GGUF from a cold disk on a busy machine


class LlamaBuildError(PrmforgeError):
    """The installed llama.cpp library cannot run the model on this machine."""


def build_environment(base: dict[str, str] | None = None, machine: str | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the compile settings added.

    What the user set already (CMAKE_ARGS for a GPU build, CFLAGS) is kept and extended.
    """
    env = dict(os.environ if base is None else base)
    arch = (machine or platform.machine()).lower()
    if arch in ("x86_64", "amd64"):
        for name in ("CFLAGS", "CXXFLAGS"):
            env[name] = " ".join(part for part in (env.get(name, ""), *NO_AMX_FLAGS) if part)
    env["CMAKE_ARGS"] = " ".join(part for part in (env.get("CMAKE_ARGS", ""), *CMAKE_ARGS) if part)
    return env


def install_argv(force: bool) -> list[str]:
    """The pip command of ``install``: this one package, never from pip's wheel cache."""
    argv = [sys.executable, "-m", "pip", "install", "--no-cache-dir"]
    if force:  # rebuild even when a (possibly broken) build of the same version is installed
        argv += ["--force-reinstall", "--no-deps"]
    return [*argv, LLAMA_CPP_REQUIREMENT]


def install(force: bool = False) -> int:
    """Compile and install llama-cpp-python with :func:`build_environment`; pip's exit code."""
    env = build_environment()
    argv = install_argv(force)
    shown = " ".join(f"{name}={shlex.quote(env[name])}" for name in ("CFLAGS", "CXXFLAGS", "CMAKE_ARGS") if name in env)
    print(f"compiling llama.cpp (several minutes on 2 cores): {shown} {shlex.join(argv[1:])}", flush=True)
    return subprocess.call(argv, env=env)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU feature flags the kernel reports (Linux), or None where they cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def compiled_features(system_info: str) -> frozenset[str]:
    """Features llama.cpp reports as compiled in: ``"AVX2 = 1 | AMX_INT8 = 1"`` -> {AVX2, AMX_INT8}."""
    features = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if sep and name and value.strip() not in ("", "0"):
            features.add(name)
    return frozenset(features)


# llama.cpp feature name -> the /proc/cpuinfo flag that must be present for it to run.
FEATURE_CPU_FLAG = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
    "AMX_BF16": "amx_bf16",
}


def missing_cpu_features(features: frozenset[str], flags: frozenset[str] | None) -> list[str]:
    """Compiled-in features this CPU does not report (a wheel built on another machine)."""
    if flags is None:
        return []
    return sorted(name for name in features if name in FEATURE_CPU_FLAG and FEATURE_CPU_FLAG[name] not in flags)


@dataclass(frozen=True)
class PreflightResult:
    ok: bool
    system_info: str  # llama.cpp's own line ("CPU : AVX2 = 1 | ...") when the child got that far
    failure: str | None = None  # e.g. "killed by SIGSEGV", "exit code 1: ValueError: ..."

    def message(self, model_path: Path) -> str:
        features = compiled_features(self.system_info)
        missing = missing_cpu_features(features, cpu_flags())
        parts = [
            f"llama.cpp cannot run on this machine: decoding with {model_path.name} in a child process {self.failure}"
        ]
        if features:
            parts.append(f"the library was compiled with {', '.join(sorted(features))}")
        if missing:
            parts.append(f"this CPU lacks {', '.join(missing)} (a wheel built on another machine?)")
        parts.append(f"rebuild it for this machine: {INSTALL_COMMAND} --force")
        return "; ".join(parts)


def library_path() -> Path | None:
    """The compiled llama.cpp library of the installed llama-cpp-python (without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    for name in ("lib/libllama.so", "lib/libllama.dylib", "libllama.so", "lib/llama.dll"):
        if (package / name).exists():
            return package / name
    return None


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _marker_path(cache_dir: Path, model_path: Path) -> Path | None:
    library = library_path()
    if library is None:
        return None
    key = f"{_fingerprint(library)}|{_fingerprint(model_path)}|{sys.version_info[:2]}"
    digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
    return cache_dir / "preflight" / f"{digest}.ok"


def run_preflight_child(
    model_path: Path, n_threads: int, timeout_s: float = PREFLIGHT_TIMEOUT_S, python: str | None = None
) -> PreflightResult:
    """Decode a short prompt and one token with ``model_path`` in a child process."""
    argv = [python or sys.executable, "-m", "labelers.policy.llama_build", "probe", str(model_path),
            "--threads", str(n_threads)]
    repo_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONFAULTHANDLER"] = "0"  # the parent reports the signal; no C stack dump on the terminal
    try:
        child = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return PreflightResult(False, "", f"did not finish within {timeout_s:.0f} s")
    info = ""
    for line in child.stdout.splitlines():
        if line.startswith("system_info:"):
            info = line.removeprefix("system_info:").strip()
    if child.returncode == 0 and "decoded: ok" in child.stdout:
        return PreflightResult(True, info)
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        return PreflightResult(False, info, f"was killed by {name}")
    last = next((line for line in reversed(child.stderr.splitlines()) if line.strip()), "no output")
    return PreflightResult(False, info, f"failed (exit code {child.returncode}: {last.strip()[:300]})")


def preflight(model_path: Path, n_threads: int | None, cache_dir: Path) -> None:
    """Raise :class:`LlamaBuildError` (one line) unless a child process can decode with the model.

    Passing results are remembered under ``cache_dir/preflight`` keyed by the library and model
    files (path, size, modification time), so a reinstall or a new model runs it again.
    ``n_threads=None``: the default thread count, sampled only when the child has to run.
    """
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise LlamaBuildError(f"the embedded backend needs llama-cpp-python; install it with: {INSTALL_COMMAND}")
    marker = _marker_path(cache_dir, model_path)
    if marker is not None and marker.exists():
        return
    if n_threads is None:
        from labelers.policy.threads import default_threads

        n_threads = default_threads(quiet=True)  # the model load that follows says it, once
    result = run_preflight_child(model_path, n_threads)
    if not result.ok:
        raise LlamaBuildError(result.message(model_path))
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"system_info": result.system_info}) + "\n")


def system_info() -> str:
    """llama.cpp's description of the compiled library (imports llama_cpp; decodes nothing)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def _probe(model_path: str, n_threads: int) -> int:
    """Child side of the preflight: print the build's features, then decode."""
    print(f"system_info: {system_info()}", flush=True)
    import llama_cpp

    llama = llama_cpp.Llama(
        model_path, n_ctx=256, n_batch=64, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
    )
    # A batch of prompt tokens (the matrix kernels) and then one token (the vector kernels).
    prompt = llama.tokenize(b"Question: what is 12 + 30? Answer step by step. First, 12 + 30 = 42.", add_bos=True)
    llama.eval(prompt[:32])
    llama.eval([llama.token_eos()])
    print("decoded: ok", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelers.policy.llama_build", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install_parser = commands.add_parser("install", help="compile and install llama-cpp-python for this machine")
    install_parser.add_argument("--force", action="store_true", help="rebuild even if llama-cpp-python is installed")
    commands.add_parser("env", help="print the compile environment install uses")
    probe_parser = commands.add_parser("probe", help="(internal) the preflight child")
    probe_parser.add_argument("model")
    probe_parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "install":
        return install(args.force)
    if args.command == "env":
        env = build_environment({})
        print(" ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()))
        return 0
    return _probe(args.model, args.threads)


if __name__ == "__main__":
    sys.exit(main())
