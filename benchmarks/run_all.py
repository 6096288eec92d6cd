"""Run every benchmark script of the project and print one table of figures with their goals.

Convention (docs/evaluation.md, "Benchmark scripts"): a script ``benchmarks/bench_<name>.py``

- runs standalone (``python benchmarks/bench_<name>.py``) from the repository root;
- accepts ``--quick`` (a reduced run of a few minutes at most) when it mentions ``--quick`` in
  its source: run_all passes it unless ``--full`` is given;
- prints each figure as one tab-separated line::

      FIGURE<TAB>name<TAB>value<TAB>unit<TAB>goal

  ``value`` a number (or ``-`` when it could not be measured), ``unit`` free text, ``goal``
  free text; a goal of the form ``>= X``, ``<= X``, ``> X``, ``< X`` is checked (column "met").
  Any other output line is passed over, so scripts may print tables and logs freely;
- exits non-zero when it fails; run_all reports the failure (exit code, last error line) and
  goes on with the next script.

Usage: ``python benchmarks/run_all.py [--full] [--only SUBSTRING] [--timeout S] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
_GOAL = re.compile(r"^\s*(>=|<=|>|<)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$")


@dataclass
class Figure:
    script: str
    name: str
    value: str
    unit: str
    goal: str
    met: bool | None = None


@dataclass
class ScriptRun:
    script: str
    exit_code: int | None  # None: timed out
    seconds: float
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None


def parse_figures(script: str, output: str) -> list[Figure]:
    """The FIGURE lines of ``output``; other lines (and malformed FIGURE lines) are passed over."""
    figures = []
    for line in output.splitlines():
        parts = line.rstrip("\n").split("\t")
        if parts[0] != "FIGURE" or len(parts) < 3:
            continue
        parts += [""] * (5 - len(parts))
        figure = Figure(script, parts[1].strip(), parts[2].strip(), parts[3].strip(), "\t".join(parts[4:]).strip())
        figure.met = goal_met(figure.value, figure.goal)
        figures.append(figure)
    return figures


def goal_met(value: str, goal: str) -> bool | None:
    """True/False for a numeric value and a goal ``>= X`` (etc.); None when either is not that."""
    match = _GOAL.match(goal)
    if match is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    bound = float(match.group(2))
    return {">=": number >= bound, "<=": number <= bound, ">": number > bound, "<": number < bound}[match.group(1)]


def supports_quick(path: Path) -> bool:
    return "--quick" in path.read_text(encoding="utf-8", errors="replace")


def run_script(path: Path, quick: bool, timeout_s: float) -> ScriptRun:
    use_quick = quick and supports_quick(path)
    command = [sys.executable, str(path)] + (["--quick"] if use_quick else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes)
                  else (expired.stdout or ""))
        run = ScriptRun(path.name, None, time.perf_counter() - started, use_quick, parse_figures(path.name, output))
        run.error = f"timed out after {timeout_s:.0f} s"
        return run
    run = ScriptRun(path.name, completed.returncode, time.perf_counter() - started, use_quick,
                    parse_figures(path.name, completed.stdout))
    if completed.returncode != 0:
        lines = [line for line in (completed.stderr or completed.stdout).splitlines() if line.strip()]
        run.error = lines[-1] if lines else f"exit code {completed.returncode}"
    return run


def discover(only: str | None) -> list[Path]:
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    return [s for s in scripts if only is None or only in s.name]


def print_table(runs: list[ScriptRun]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="prmforge benchmark figures")
    for column in ("script", "figure", "value", "unit", "goal", "met"):
        table.add_column(column, overflow="fold")  # fold long names, never cut them with an ellipsis
    for run in runs:
        for figure in run.figures:
            met = "-" if figure.met is None else ("yes" if figure.met else "NO")
            # Scripts' text is plain, not rich markup: "[preset demo, ...]" in a name must show as is.
            table.add_row(run.script, escape(figure.name), escape(figure.value), escape(figure.unit),
                          escape(figure.goal), met)
        if run.error is not None:
            table.add_row(run.script, "[red]FAILED[/red]", "-", "-", "-", escape(run.error[:120]))
        elif not run.figures:
            table.add_row(run.script, "(no FIGURE lines)", "-", "-", "-", "-")
    console = Console(width=max(Console().width, 200))  # never squeeze figure names in a pipe
    console.print(table)
    for run in runs:
        state = "ok" if run.error is None else f"FAILED ({escape(run.error)})"
        console.print(f"{run.script}: {state}, {run.seconds:.1f} s{' (--quick)' if run.quick else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="Run scripts without --quick.")
    parser.add_argument("--only", default=None, help="Run only scripts whose file name contains this.")
    parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds per script before it is stopped.")
    parser.add_argument("--json", type=Path, default=None, help="Also write all figures and script states as JSON.")
    args = parser.parse_args(argv)
    scripts = discover(args.only)
    if not scripts:
        print("no benchmark scripts found", file=sys.stderr)
        return 2
    runs = []
    for script in scripts:
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        runs.append(run_script(script, quick=not args.full, timeout_s=args.timeout))
    print_table(runs)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n", encoding="utf-8")
    return 1 if any(r.error is not None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
