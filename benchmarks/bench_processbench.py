"""Fusion variants on real model solutions (ProcessBench layout), re-scored offline.

Reads a ProcessBench-format set (``--input``; gold answers joined as ``eval run`` joins them) and
one or more ``prmforge eval run --out`` files made on it, and prints one table per set: F1 with
its 95% bootstrap interval, acc_err / acc_cor, negative-step precision, rollouts and wall seconds
per solution, for every stored signal and the hybrid's re-fusions (labelers/evaluation/
rescore.py: no rollout is sampled here). The measurement of issue 23 (commands in
docs/evaluation.md, "ProcessBench"):

    flock /tmp/prmforge-llm.lock prmforge eval run --input SET \\
        --labels tool,answer:last,answer:first,mc:binary,hybrid:binary --k 4 --out RUN.json
    python benchmarks/bench_processbench.py --input SET --runs RUN.json [JUDGE.json ...]

Without ``--runs`` (as ``benchmarks/run_all.py`` calls it) there is nothing to re-score: it says
so and prints no figure. ProcessBench itself is never part of the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labelers.evaluation.goldjoin import join_gold, load_tables  # noqa: E402
from labelers.evaluation.processbench import read_set  # noqa: E402
from labelers.evaluation.rescore import variant_rows  # noqa: E402


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="the ProcessBench-format set the runs labeled")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="eval run --out files on that set")
    parser.add_argument("--name", default=None, help="figure name prefix (default: the set's file stem)")
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; the re-scoring is quick anyway")
    args = parser.parse_args(argv)
    if args.input is None or not args.runs:
        print("nothing to re-score: pass --input SET --runs RUN.json (eval run --out files); no figures")
        return 0
    payloads = [json.loads(path.read_text(encoding="utf-8")) for path in args.runs]
    records, _ = join_gold(read_set(args.input), load_tables())
    scored_ids = {rid for payload in payloads for result in payload.get("results", []) for rid in result["predictions"]}
    records = [r for r in records if r.id in scored_ids]
    rows = variant_rows(records, payloads)
    name = args.name or args.input.stem
    head = f"{'variant':40} {'n':>4} {'F1':>6} {'95% CI':>13} {'acc_err':>7} {'acc_cor':>7} {'P(neg)':>6} " \
           f"{'roll/sol':>8} {'s/sol':>6}  note"
    print(f"{name}: {len(records)} solutions ({sum(r.label >= 0 for r in records)} erroneous)")
    print(head)
    for row in rows:
        s = row.score
        ci = "-" if s.f1_ci is None else f"{s.f1_ci[0]:.3f}-{s.f1_ci[1]:.3f}"
        costs = f"{_fmt(row.rollouts_per_solution, 1):>8} {_fmt(row.seconds_per_solution, 1):>6}"
        print(f"{row.name:40} {row.solutions:>4} {_fmt(s.f1):>6} {ci:>13} {_fmt(s.acc_err):>7} {_fmt(s.acc_cor):>7} "
              f"{_fmt(s.step_precision):>6} {costs}  {row.note}")
    for row in rows:
        key = row.name.replace(" ", "_").replace(",", "").replace(":", "").replace("=", "eq")
        print(f"FIGURE\tpb.{name}.{key}.f1\t{_fmt(row.score.f1, 4)}\tF1 (n={row.solutions})\t")
    return 0


if __name__ == "__main__":
    sys.exit(main())
