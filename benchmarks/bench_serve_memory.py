"""Resident memory of one long-lived process over 20 scheduled runs with differing sampling settings.

A worker process that runs many scheduled builds (a Dask/Ray worker that outlives the runs, or
any process that calls the deployment's entry point ``scheduled_build`` again and again) keeps
its models in the process's resource holder (flows/resources.py). Schedules often differ only in
sampling settings (temperature, top_p, token limits); those never need a new model. This script
runs ``scheduled_build`` ``--runs`` times in this process, each run with its own sampling
settings, a tiny build on the embedded 0.5B model ("small"), and prints the process's resident
memory (RSS) after each run and the models held.

Usage (a real model: hold the machine-wide lock):
    flock /tmp/prmforge-llm.lock python benchmarks/bench_serve_memory.py [--runs 20] [--max-rss-mb 6000] [--quick]

``--max-rss-mb`` stops early (and says so) when RSS passes it, so a holder that never evicts
cannot take a shared machine down; the figures then cover the runs made. Figures:
``FIGURE<TAB>name<TAB>value<TAB>unit<TAB>goal`` lines (benchmarks/run_all.py convention).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

TINY_BUILD = [
    "policy.model=small",
    "problems.limit=1",
    "search.mode=sample",
    "search.samples_per_problem=1",
    "search.mc_rollouts=1",
    "search.max_depth=3",
    "tool.enabled=false",
    "flow.retries=0",
]


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.3f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def sampling_overrides(index: int) -> list[str]:
    """Run ``index``'s sampling settings: every run differs from every other in at least one."""
    return [
        f"policy.temperature={0.3 + 0.05 * index:.2f}",
        f"policy.top_p={0.9 if index % 2 else 0.95}",
        f"policy.max_step_tokens={48 + 4 * index}",
        f"policy.max_solution_tokens={96 + 8 * index}",
    ]


def held_models(holder: object) -> int:
    counter = getattr(holder, "held_policies", None)
    if callable(counter):
        return int(counter())
    return len(holder._policies)  # a holder from before the bound (for the "before" figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 runs instead of --runs (benchmarks/run_all.py)")
    parser.add_argument("--max-rss-mb", type=float, default=6000.0)
    parser.add_argument("--root", default=None, help="data root (default: a temporary directory)")
    parser.add_argument("--label", default="", help="suffix of the figure names (e.g. before)")
    parser.add_argument("--policy-factory", default=None,
                        help="'module:function' making the policy (a dry run of this script without a model: "
                             "tests.test_flow_build:scripted_policy_factory)")
    args = parser.parse_args()
    if args.quick:
        args.runs = 5
    root = args.root or tempfile.mkdtemp(prefix="prmforge-bench-serve-")

    from flows.runners import configure_prefect_environment

    configure_prefect_environment(root)
    from flows.build import scheduled_build
    from flows.resources import PROCESS_RESOURCES

    suffix = f"_{args.label}" if args.label else ""
    start_rss = rss_mb()
    rows = []
    stopped = None
    for index in range(args.runs):
        started = time.perf_counter()
        overrides = [*TINY_BUILD, f"output.root={json.dumps(root)}", *sampling_overrides(index)]
        summary = scheduled_build.fn(preset="small", overrides=overrides, policy_factory=args.policy_factory)
        seconds = time.perf_counter() - started
        rows.append((index + 1, summary.status, rss_mb(), held_models(PROCESS_RESOURCES), seconds))
        print(f"run {index + 1:2d}: {summary.status}, {summary.steps} steps, rss {rows[-1][2]:.0f} MB, "
              f"models held {rows[-1][3]}, {rows[-1][4]:.1f} s ({' '.join(sampling_overrides(index))})", flush=True)
        if rows[-1][2] > args.max_rss_mb:
            stopped = f"stopped after run {index + 1}: rss {rows[-1][2]:.0f} MB > --max-rss-mb {args.max_rss_mb:.0f}"
            print(stopped, flush=True)
            break
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; rss before the first run {start_rss:.0f} MB")
    figure(f"serve_runs_made{suffix}", len(rows), "runs", f"{args.runs}")
    figure(f"serve_rss_after_first_run{suffix}", rows[0][2], "MB")
    figure(f"serve_rss_after_last_run{suffix}", rows[-1][2], "MB", "close to the first run's")
    figure(f"serve_rss_growth_per_run{suffix}", (rows[-1][2] - rows[0][2]) / max(1, len(rows) - 1), "MB/run", "~0")
    figure(f"serve_models_held_after_last_run{suffix}", rows[-1][3], "models", "<= 2")  # flow.max_held_models
    figure(f"serve_failed_runs{suffix}", sum(1 for row in rows if row[1] != "complete"), "runs", "<= 0")
    PROCESS_RESOURCES.close_all()


if __name__ == "__main__":
    main()
