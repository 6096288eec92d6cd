"""Wall time of a preset build (default: demo) and the share of it spent generating.

Prints, for one in-process build exactly as `prmforge build --preset demo` runs it:
- total wall time (Prefect start included: what a user waits for),
- the flow's own wall time (problem loading -> final manifest),
- generation seconds (policy.usage.generation_seconds summed over batches),
- the share of the wall time outside generation: orchestration, model loading, tool and Lean
  verification, Parquet and manifest I/O. Goal: generation >= 90% of the flow's wall time.

Usage: python benchmarks/bench_demo.py [--preset demo] [--set key=value ...] [--root DIR] [--quick]
``--quick``: a tiny build (1 problem, the embedded 0.5B "small" model) instead of the preset's
own size; the figure names say which. Figures are also printed as
``FIGURE<TAB>name<TAB>value<TAB>unit<TAB>goal`` lines (benchmarks/run_all.py convention).
The machine's other load changes the figures (llama.cpp slows down sharply when its threads
share cores): report the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

QUICK_OVERRIDES = ["problems.limit=1", "policy.model=small"]


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.3f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--root", default=None, help="data root (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help=f"tiny build: {' '.join(QUICK_OVERRIDES)} (before --set)")
    args = parser.parse_args()
    if args.quick:
        args.overrides = QUICK_OVERRIDES + args.overrides
    started = time.perf_counter()
    root = args.root or tempfile.mkdtemp(prefix="prmforge-bench-")

    from flows.config_load import load_build_config
    from flows.runners import configure_prefect_environment

    config = load_build_config(preset=args.preset, overrides=args.overrides, flag_values={"output.root": root})
    configure_prefect_environment(config.output.root)
    from flows.build import run_build
    from flows.resources import PROCESS_RESOURCES, prewarm

    if config.flow.task_runner == "threads":  # as the CLI does: load the model while Prefect starts
        prewarm(PROCESS_RESOURCES, config)
    summary = run_build(config)
    total = time.perf_counter() - started
    flow_wall = summary.wall_seconds
    generation = summary.generation_seconds
    load = os.getloadavg()
    print(f"preset {args.preset}: {summary.problems_total} problems, {summary.steps} step rows, "
          f"{summary.rollouts} rollouts, {summary.completion_tokens} generated tokens, "
          f"{summary.problems_failed} failed, {summary.problems_skipped} skipped")
    print(f"cores {os.cpu_count()}, load average (1/5/15 min) {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'':24s}{'seconds':>10s}{'share of flow':>16s}{'share of total':>16s}")
    rows = [
        ("total (process)", total),
        ("Prefect start + setup", total - flow_wall),
        ("flow wall", flow_wall),
        ("  generation", generation),
        ("  outside generation", flow_wall - generation),
    ]
    for name, seconds in rows:
        print(f"{name:24s}{seconds:10.1f}{100 * seconds / flow_wall:15.1f}%{100 * seconds / total:15.1f}%")
    rate = summary.completion_tokens / generation if generation > 0 else 0.0
    print(f"generation speed {rate:.1f} tokens/s; build {summary.build_id} under {root}")
    scale = (f"[preset {args.preset}{', ' + ' '.join(args.overrides) if args.overrides else ''}: "
             f"{summary.problems_total} problems, {summary.rollouts} rollouts, load {load[0]:.1f}]")
    figure(f"demo.total_wall {scale}", total, "s (process, Prefect start included)")
    figure(f"demo.flow_wall {scale}", flow_wall, "s")
    figure(f"demo.labeled_steps_per_minute {scale}", summary.steps / (total / 60) if total > 0 else None,
           "steps/min (process)")
    figure(f"demo.generation_share_of_flow {scale}", generation / flow_wall if flow_wall > 0 else None,
           "share of flow wall time", ">= 0.9")


if __name__ == "__main__":
    main()
