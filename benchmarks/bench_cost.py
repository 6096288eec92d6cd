"""Cost per labeled solution on a ProcessBench-format set: one ``prmforge eval run``, measured.

    flock /tmp/prmforge-llm.lock python benchmarks/bench_cost.py --set SET.jsonl --out-dir DIR \
        [--errors 20 --correct 20] [--labels tool,hybrid:binary] [--k 4] [--set-option policy.n_threads=2 ...] \
        [--chunk N] \
        [--baseline BASELINE_eval.json --baseline-cpu-seconds S]

Runs ``prmforge eval run --input SET --labels ... --k K --seed 0 --out DIR/eval.json`` in a child
process (its log in DIR/run.log) and prints, per labeling-core signal, FIGURE lines
(benchmarks/run_all.py convention):

- ``cost.cpu_seconds_per_solution``: the child's user + system CPU seconds (its own children
  included, as ``/usr/bin/time`` counts them: model load, tool checks, everything) / solutions;
- ``cost.pass_cpu_seconds_per_solution``: the same over the labeling pass only (the eval JSON's
  cost profile);
- ``cost.generated_tokens_per_labeled_step``, ``cost.rollouts_per_labeled_step``,
  ``cost.evaluated_prompt_tokens_per_labeled_step``;
- ``quality.f1`` with its 95% bootstrap interval (from the eval JSON).

``--baseline`` (an earlier run's eval JSON, e.g. today's code) and ``--baseline-cpu-seconds``
(that run's user + system seconds, e.g. from ``/usr/bin/time -v``) add the ratios and whether
this run's F1 lies inside the baseline's interval. The set is read where it lies; nothing of it
is copied (ProcessBench data stays out of the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.3f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def run_eval(args: argparse.Namespace, out_json: Path, log: Path) -> float:
    """The eval run in a child; returns its user + system CPU seconds (its children included)."""
    # this interpreter's prmforge (no PATH lookup: the benchmark runs in the project's venv)
    command = [sys.executable, "-m", "flows.cli", "eval", "run", "--input", str(args.set), "--labels", args.labels,
               "--k", str(args.k), "--seed", str(args.seed), "--out", str(out_json)]
    for option in args.set_option:
        command += ["--set", option]
    if args.chunk is not None:
        command += ["--chunk", str(args.chunk)]
    if args.errors is not None:  # issue 26's shape: a ProcessBench file, --errors 20 --correct 20
        command += ["--errors", str(args.errors), "--correct", str(args.correct)]
    print("running:", " ".join(command), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as handle:
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"exit {status} after {time.perf_counter() - started:.0f} s wall, {cpu:.0f} s CPU; log {log}", flush=True)
    if status != 0:
        sys.exit(f"error: the eval run failed (exit {status}); see {log}")
    return cpu


def core_results(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in payload["results"] if r["cost"].get("labeled_steps")]


def report(payload: dict[str, Any], cpu_seconds: float | None, tag: str) -> dict[str, dict[str, Any]]:
    records = payload["records"]
    figures: dict[str, dict[str, Any]] = {}
    if cpu_seconds is not None:
        figure(f"cost.cpu_seconds_per_solution [{tag}, whole eval process, {records} solutions]",
               cpu_seconds / records, "s/solution")
    for result in core_results(payload):
        cost, score = result["cost"], result["score"]
        signal = result["signal"]
        steps = cost["labeled_steps"]
        profile = cost.get("profile") or {}
        row = {
            "f1": score.get("f1"), "f1_ci": score.get("f1_ci"),
            "generated_per_step": cost["completion_tokens"] / steps,
            "rollouts_per_step": cost["rollouts"] / steps,
        }
        figures[signal] = row
        shape = f"{tag}, {signal}, k={result.get('k')}, {records} solutions, {steps} labeled steps"
        if profile.get("decode_threads"):  # CPU seconds per solution depend on it (docs/generation.md)
            shape += f", llama.cpp threads {'/'.join(map(str, profile['decode_threads']))}"
        if profile.get("cpu_seconds_per_solution") is not None:
            figure(f"cost.pass_cpu_seconds_per_solution [{shape}]", profile["cpu_seconds_per_solution"], "s/solution")
            figure(f"cost.evaluated_prompt_tokens_per_labeled_step [{shape}]",
                   profile["evaluated_prompt_tokens"] / steps, "tokens/step")
            print(f"  {signal} profile: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in profile.items()))
        figure(f"cost.generated_tokens_per_labeled_step [{shape}]", row["generated_per_step"], "tokens/step")
        figure(f"cost.rollouts_per_labeled_step [{shape}]", row["rollouts_per_step"], "rollouts/step")
        ci = score.get("f1_ci")
        figure(f"quality.f1 [{shape}; 95% CI {ci[0]:.3f}-{ci[1]:.3f}]" if ci else f"quality.f1 [{shape}]",
               score.get("f1"), "F1")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, required=True, help="ProcessBench-format JSONL with gold_answer")
    parser.add_argument("--out-dir", type=Path, required=True, help="where eval.json and run.log go (not the repo)")
    parser.add_argument("--labels", default="tool,hybrid:binary")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set-option", action="append", default=[], help="passed on as --set (repeatable)")
    parser.add_argument("--chunk", type=int, default=None, help="passed on as --chunk (solutions per labeling call)")
    parser.add_argument("--errors", type=int, default=None, help="passed on: the first N erroneous solutions")
    parser.add_argument("--correct", type=int, default=None, help="passed on: the first N correct solutions")
    parser.add_argument("--reuse", action="store_true", help="report an existing DIR/eval.json instead of running")
    parser.add_argument("--cpu-seconds", type=float, default=None, help="with --reuse: that run's CPU seconds")
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier run's eval JSON")
    parser.add_argument("--baseline-cpu-seconds", type=float, default=None)
    args = parser.parse_args()
    if not args.set.is_file():
        sys.exit(f"error: no set at {args.set}")
    if (args.errors is None) != (args.correct is None):
        sys.exit("error: --errors and --correct go together")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out_json = args.out_dir / "eval.json"
    if args.reuse:
        cpu = args.cpu_seconds
    else:
        cpu = run_eval(args, out_json, args.out_dir / "run.log")
    now = report(json.loads(out_json.read_text()), cpu, "this run")
    if args.baseline is None:
        return
    baseline = json.loads(args.baseline.read_text())
    before = report(baseline, args.baseline_cpu_seconds, "baseline")
    records = baseline["records"]
    if cpu is not None and args.baseline_cpu_seconds:
        figure("cost.cpu_seconds_per_solution_ratio [this run / baseline, whole eval process]",
               (cpu / json.loads(out_json.read_text())["records"]) / (args.baseline_cpu_seconds / records),
               "x", "<= 0.333")
    for signal, row in now.items():
        old = before.get(signal)
        if old is None:
            continue
        # A signal that samples nothing (tool) has no per-step generation to compare.
        for key, name in (("generated_per_step", "generated_tokens"), ("rollouts_per_step", "rollouts")):
            if old[key]:
                figure(f"cost.{name}_per_labeled_step_ratio [{signal}, this run / baseline]", row[key] / old[key], "x")
        ci = old.get("f1_ci")
        if ci and row["f1"] is not None:
            inside = ci[0] <= row["f1"] <= ci[1]
            print(f"  {signal}: F1 {row['f1']:.3f} vs baseline {old['f1']:.3f} "
                  f"(95% CI {ci[0]:.3f}-{ci[1]:.3f}): {'inside' if inside else 'OUTSIDE'} the baseline's interval")


if __name__ == "__main__":
    main()
