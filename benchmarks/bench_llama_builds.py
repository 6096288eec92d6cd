"""llama.cpp compile flag sets side by side: does the build crash here, and how fast is it.

    python benchmarks/bench_llama_builds.py --quick              # the installed build only
    python benchmarks/bench_llama_builds.py                      # compile every flag set (~4 min each)
    python benchmarks/bench_llama_builds.py --wheels DIR         # wheels compiled before: DIR/<set>/*.whl

For each flag set (FLAG_SETS) the wheel of llama-cpp-python is installed into a private folder
and a child process loads the 1.5B preset and measures, with 1 and with all cores:
  single   tokens/s of 64 one-token decodes (one sequence generating),
  batch16  tokens/s of one llama_decode of 16 tokens (what batched rollouts cost per token),
  batch32  the same with 32 tokens.
A child killed by a signal is reported as a crash (the AMX build's SIGSEGV on some machines).
Compile seconds are measured when this script compiles (not with --wheels or --quick).
Figures: FIGURE lines (benchmarks/run_all.py convention) named ``llama_<set>_<measure>_t<threads>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from labelers.policy.llama_build import LLAMA_CPP_REQUIREMENT, NO_AMX_FLAGS  # noqa: E402

_AVX2 = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"
# name -> (extra environment for the compile, what it is)
FLAG_SETS: dict[str, tuple[dict[str, str], str]] = {
    "native": ({"CMAKE_ARGS": "-DLLAVA_BUILD=OFF"}, "llama-cpp-python's default: -march=native"),
    "native_noamx": (
        {"CMAKE_ARGS": "-DLLAVA_BUILD=OFF", "CFLAGS": " ".join(NO_AMX_FLAGS), "CXXFLAGS": " ".join(NO_AMX_FLAGS)},
        "-march=native with AMX code generation off (the project's install)",
    ),
    "avx512": (
        {"CMAKE_ARGS": _AVX2 + " -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON"},
        "fixed AVX-512 (+VNNI, BF16, VBMI), no AMX",
    ),
    "avx2": ({"CMAKE_ARGS": _AVX2}, "fixed AVX2/FMA/F16C"),
}
PROMPT = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
    "per fresh duck egg. How much in dollars does she make every day at the farmers' market? Let's think."
)


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.3f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def probe(model: str, threads: int) -> None:
    """Child: print 'measure value' lines for one build (imports whatever llama_cpp is first)."""
    import llama_cpp

    print("info", llama_cpp.llama_print_system_info().decode().strip().replace(" ", ""), flush=True)
    llama = llama_cpp.Llama(model, n_ctx=1024, n_batch=64, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = llama.tokenize(PROMPT.encode(), add_bos=True)
    llama.eval(tokens[:16])  # warm-up, and a context to attend to
    started = time.perf_counter()
    for token in tokens[16:16 + 64]:
        llama.eval([token])
    print("single", 64 / (time.perf_counter() - started), flush=True)
    for size in (16, 32):
        rates = []
        for _ in range(3):
            llama.reset()
            llama.eval(tokens[:16])
            started = time.perf_counter()
            llama.eval(tokens[16:16 + size])
            rates.append(size / (time.perf_counter() - started))
        print(f"batch{size}", max(rates), flush=True)


def measure(name: str, site: Path | None, model: str, threads: int) -> None:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO_ROOT)])
    child = subprocess.run(
        [sys.executable, __file__, "--probe", model, "--threads", str(threads)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    values = dict(line.split(" ", 1) for line in child.stdout.splitlines() if " " in line)
    print(f"  {name} t{threads}: {values.get('info', '?')}", flush=True)
    if child.returncode < 0:
        print(f"  {name} t{threads}: CRASHED ({signal.Signals(-child.returncode).name})", flush=True)
    elif child.returncode != 0:
        print(f"  {name} t{threads}: failed: {child.stderr.strip().splitlines()[-1:]}", flush=True)
    figure(f"llama_{name}_crashed_t{threads}", 1.0 if child.returncode < 0 else 0.0, "1 = killed by a signal",
           "<= 0" if name == "native_noamx" else "")
    for measure_name in ("single", "batch16", "batch32"):
        value = values.get(measure_name)
        figure(f"llama_{name}_{measure_name}_t{threads}", float(value) if value else None, "tokens/s")


def compile_wheel(name: str, out: Path) -> float:
    extra, _ = FLAG_SETS[name]
    env = {**os.environ, **extra}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out), LLAMA_CPP_REQUIREMENT],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="measure the installed build only")
    parser.add_argument("--wheels", type=Path, help="folder with <flag set>/*.whl compiled before")
    parser.add_argument("--sets", default=",".join(FLAG_SETS), help="flag sets to measure (comma-separated)")
    parser.add_argument("--model", default="better", help="embedded preset or GGUF path")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, args.threads)
        return
    from labelers.policy.model_files import resolve_model

    model_path = str(resolve_model(args.model)[0])
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} CPUs, load {os.getloadavg()[0]:.2f}; model {Path(model_path).name}", flush=True)
    thread_counts = sorted({1, cores})
    if args.quick:
        for threads in thread_counts:
            measure("installed", None, model_path, threads)
        return
    with tempfile.TemporaryDirectory(prefix="prmforge-llama-builds-") as scratch:
        for name in args.sets.split(","):
            print(f"{name}: {FLAG_SETS[name][1]}", flush=True)
            if args.wheels is not None:
                wheel_dir = args.wheels / name
            else:
                wheel_dir = Path(scratch) / "wheels" / name
                figure(f"llama_{name}_compile_seconds", compile_wheel(name, wheel_dir), "s")
            wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
            if not wheels:
                print(f"  {name}: no wheel in {wheel_dir}", flush=True)
                continue
            site = Path(scratch) / "site" / name
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                            str(wheels[-1])], check=True)
            for threads in thread_counts:
                measure(name, site, model_path, threads)


if __name__ == "__main__":
    main()
