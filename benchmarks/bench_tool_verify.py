"""Throughput of the tool verifier on GSM8K reference steps (and MATH-500 for comparison).

Prints checks per second per core: steps judged (and claims checked) per second of wall time,
divided by the cores the verifier used. GSM8K steps are settled by the exact in-process path, so
that figure uses one core; MATH-500 steps also use the sympy worker pool (``--workers``).
Side by side: a naive per-claim sympy check (``sympify`` both sides, ``simplify(lhs - rhs) == 0``)
on a sample of the same claims.

    python benchmarks/bench_tool_verify.py [--workers 2] [--repeat 3] [--naive-sample 300] [--quick]
    python benchmarks/bench_tool_verify.py --code-only [--code-steps 60] [--starts 30]

Code checks (``--code-steps``): GSM8K calculator annotations rewritten as program-of-thought steps
(```` ```python print(48/2) ``` So 24. ````), judged with code checks on: steps/s of wall time
with ``--workers`` sandboxes at a time. Sandbox start cost (``--starts``): mean wall time of
``run_python("pass")`` one after another, next to a bare ``python -I -S -c pass``; the difference
is what the isolation adds per snippet. The script runs unchanged on older checkouts (only
``run_python(code, timeout_s, memory_mb)`` and ``ToolStepVerifier`` are used) for before/after.

Figures are also printed as ``FIGURE<TAB>name<TAB>value<TAB>unit<TAB>goal`` lines
(benchmarks/run_all.py convention). ``--quick``: best of 1 instead of 3, naive sample 100.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelers.config import ToolConfig  # noqa: E402
from labelers.steps import gsm8k_reference_steps  # noqa: E402
from labelers.verify.base import StepContext  # noqa: E402
from labelers.verify.claims import extract_claims  # noqa: E402
from labelers.verify.claims.segments import _math_segments  # noqa: E402
from labelers.verify.tool import ToolStepVerifier  # noqa: E402


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.1f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def gsm8k_steps() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "tests/data/gsm8k_test.jsonl").read_text().splitlines() if line]
    return [s for r in rows for s in gsm8k_reference_steps(r["answer"], keep_calculator=True)]


def math500_steps() -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "tests/data/math500_test.jsonl").read_text().splitlines() if line]
    steps = []
    for row in rows:
        for paragraph in re.split(r"\n\s*\n", row["solution"]):
            regions = _math_segments(paragraph, 0, len(paragraph))
            cuts = [0] + [
                m.end()
                for m in re.finditer(r"(?<=[.!?])\s+(?=[A-Z\\$])", paragraph)
                if not any(s < m.start() < e for s, e, _, _ in regions)
            ]
            cuts.append(len(paragraph))
            steps += [paragraph[a:b].strip() for a, b in pairwise(cuts) if paragraph[a:b].strip()]
    return steps


def measure(tool: ToolStepVerifier, steps: list[str], repeat: int) -> tuple[float, int]:
    """Best wall time over ``repeat`` runs, and the number of claims checked per run."""
    contexts = [StepContext("", (), s) for s in steps]
    best = float("inf")
    claims = 0
    for _ in range(repeat):
        started = time.perf_counter()
        checks = tool.check_steps(contexts)
        best = min(best, time.perf_counter() - started)
        claims = sum(len(c.evidence.get("claims", [])) + len(c.evidence.get("unchecked", [])) for c in checks)
    return best, claims


def naive_sympy(steps: list[str], sample: int) -> tuple[float, int]:
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, rationalize, standard_transformations

    claims = [c for s in steps for c in extract_claims(s)][:sample]
    transformations = standard_transformations + (rationalize,)
    started = time.perf_counter()
    for claim in claims:
        lhs = parse_expr(claim.lhs, transformations=transformations)
        rhs = parse_expr(claim.rhs, transformations=transformations)
        sympy.simplify(lhs - rhs) == 0  # noqa: B015 - the work being timed
    return time.perf_counter() - started, len(claims)


def code_steps(limit: int) -> list[str]:
    """Program-of-thought steps from GSM8K calculator annotations ``<<48/2=24>>``."""
    steps = []
    for step in gsm8k_steps():
        for expression, value in re.findall(r"<<([^=<>]+)=([^<>]+)>>", step):
            steps.append(f"We compute it:\n```python\nprint({expression})\n```\nSo the result is {value}.")
            break
        if len(steps) >= limit:
            break
    return steps


def sandbox_start_costs(starts: int) -> tuple[float, float, float]:
    """Mean wall seconds: bare interpreter start, run_python('pass'), run_python('import sympy')."""
    import subprocess

    from labelers.verify.sandbox import run_python

    bare = []
    for _ in range(starts):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - started)
    runs = []
    for _ in range(starts):
        result = run_python("pass", 10.0, 512)
        assert result.ok, result.error
        runs.append(result.wall_s)
    sympy_runs = []
    for _ in range(max(3, starts // 5)):
        result = run_python("import sympy", 30.0, 512)
        assert result.ok, result.error
        sympy_runs.append(result.wall_s)
    return sum(bare) / len(bare), sum(runs) / len(runs), sum(sympy_runs) / len(sympy_runs)


def code_section(args: argparse.Namespace) -> None:
    bare_s, start_s, sympy_s = sandbox_start_costs(args.starts)
    print(f"sandbox start, mean of {args.starts}: bare interpreter {bare_s * 1000:.1f} ms, "
          f"run_python('pass') {start_s * 1000:.1f} ms (isolation adds {(start_s - bare_s) * 1000:.1f} ms); "
          f"run_python('import sympy') {sympy_s * 1000:.0f} ms")
    figure(f"tool_verify.code.sandbox_start_ms [run_python('pass'), mean of {args.starts}, sequential]",
           start_s * 1000, "ms/snippet")
    figure(f"tool_verify.code.bare_interpreter_start_ms [python -I -S -c pass, mean of {args.starts}]",
           bare_s * 1000, "ms")
    figure("tool_verify.code.sandbox_import_sympy_ms [run_python('import sympy')]", sympy_s * 1000, "ms/snippet")
    steps = code_steps(args.code_steps)
    contexts = [StepContext("", (), s) for s in steps]
    with ToolStepVerifier(ToolConfig(workers=args.workers)) as tool:
        tool.check_text("```python\nprint(6 * 7)\n```\nSo 42.")  # probe and warm outside the timing
        started = time.perf_counter()
        checks = tool.check_steps(contexts)
        elapsed = time.perf_counter() - started
    verdicts = [c.verdict.value for c in checks]
    kinds = sum(1 for c in checks if c.kind == "python")
    print(f"code steps: {len(steps)} steps, {kinds} judged by code, verdicts "
          f"{ {v: verdicts.count(v) for v in sorted(set(verdicts))} }, {elapsed:.2f} s: "
          f"{len(steps) / elapsed:.1f} steps/s with {args.workers} sandboxes at a time")
    figure(f"tool_verify.code.steps_per_s [{len(steps)} GSM8K program-of-thought steps, code checks on, "
           f"{args.workers} at a time]", len(steps) / elapsed, "steps/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=None, help="best of N runs on GSM8K (default 3, --quick 1)")
    parser.add_argument("--naive-sample", type=int, default=None,
                        help="claims for the naive check (default 300, --quick 100)")
    parser.add_argument("--quick", action="store_true", help="reduced run: best of 1, naive sample 100")
    parser.add_argument("--code-steps", type=int, default=60, help="program-of-thought steps for the code figure")
    parser.add_argument("--starts", type=int, default=30, help="sandbox starts for the start-cost figure")
    parser.add_argument("--code-only", action="store_true", help="only the code-check figures")
    args = parser.parse_args()
    if args.code_only:
        code_section(args)
        return
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.naive_sample is None:
        args.naive_sample = 100 if args.quick else 300

    gsm = gsm8k_steps()
    math = math500_steps()
    with ToolStepVerifier(ToolConfig(workers=args.workers)) as tool:
        tool.check_text(r"$\sqrt{8} = 2\sqrt{2}$")  # start the workers outside the timings
        gsm_s, gsm_claims = measure(tool, gsm, args.repeat)
        math_s, math_claims = measure(tool, math, 1)
    naive_s, naive_n = naive_sympy(gsm, args.naive_sample)

    gsm_rate = len(gsm) / gsm_s
    print(f"GSM8K reference steps: {len(gsm)} steps, {gsm_claims} claims, best of {args.repeat}: {gsm_s:.3f} s")
    print(f"  tool verifier (1 core: exact in-process path): {gsm_rate:,.0f} steps/s/core, "
          f"{gsm_claims / gsm_s:,.0f} claims/s/core (goal >= 500 checks/s/core)")
    naive_rate = naive_n / naive_s
    print(f"  naive sympy per claim (parse_expr + simplify, {naive_n} claims): {naive_rate:,.0f} claims/s/core")
    print(f"  ratio tool / naive (claims/s): {(gsm_claims / gsm_s) / naive_rate:,.1f}x")
    scale = f"{len(gsm)} GSM8K reference steps, best of {args.repeat}, 1 core"
    figure(f"tool_verify.gsm8k.steps_per_s_per_core [{scale}]", gsm_rate, "checks (steps)/s/core", ">= 500")
    figure(f"tool_verify.gsm8k.claims_per_s_per_core [{scale}, {gsm_claims} claims]", gsm_claims / gsm_s,
           "claims/s/core", ">= 500")
    figure(f"tool_verify.gsm8k.naive_sympy_claims_per_s [{naive_n} claims, parse_expr + simplify]", naive_rate,
           "claims/s/core")
    figure("tool_verify.gsm8k.ratio_tool_over_naive [claims/s]", (gsm_claims / gsm_s) / naive_rate, "x")
    cores = 1 + args.workers
    print(f"MATH-500 reference steps: {len(math)} steps, {math_claims} claims, {math_s:.2f} s "
          f"with {args.workers} sympy workers: {len(math) / math_s / cores:,.0f} steps/s/core, "
          f"{math_claims / math_s / cores:,.0f} claims/s/core (counting {cores} cores)")
    figure(f"tool_verify.math500.steps_per_s_per_core [{len(math)} reference steps, {args.workers} sympy workers, "
           f"counting {cores} cores]", len(math) / math_s / cores, "steps/s/core")
    code_section(args)


if __name__ == "__main__":
    main()
