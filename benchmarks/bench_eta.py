"""How good ``eval run``'s ETA is: what its progress lines said against the time the pass had left.

    python benchmarks/bench_eta.py --input ../shared/data/processbench/gsm8k.jsonl \
        [--errors 20] [--correct 20] [--k 4] [--seed 0] [--threads 2] [--quick]

Runs ``prmforge eval run --labels mc:binary`` on the first ``--errors`` erroneous and ``--correct``
correct solutions of a ProcessBench-format set (read where it lies, never copied into the
repository) in a child process and reads its progress lines on stderr (``... N/T solutions | ... |
elapsed E | eta X``). For the lines nearest to 1/4, 1/2 and 3/4 of the pass it prints, as FIGURE
lines, the ETA over the time really left (1.0 = exact), beside the rule before it (solutions left
at the pace of those done: elapsed / done * (total - done), computed from the same line). The
figures of docs/evaluation.md ("`eta` counts prefix estimates") came from the session script this
replaces, on the GSM8K 20 + 20 dev pass.

Without ``--input`` (as benchmarks/run_all.py calls it) there is no set: it says so and prints no
figure. ``--quick``: 5 + 5 solutions.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r": (\d+)/(\d+) solutions \|.*\| elapsed (.+?) \| eta (.+)$")
PASS_DONE = re.compile(r"^labeling pass 1 of \d+ done in (\d+) s$")


def seconds(text: str) -> float | None:
    """A duration as flows/progress._duration writes it (``42 s``, ``3 min 05 s``, ``1 h 02 min``),
    None for ``?``."""
    text = text.strip()
    if text == "?":
        return None
    if match := re.fullmatch(r"(\d+) h (\d+) min", text):
        return 3600 * int(match[1]) + 60 * int(match[2])
    if match := re.fullmatch(r"(\d+) min (\d+) s", text):
        return 60 * int(match[1]) + int(match[2])
    if match := re.fullmatch(r"(\d+) s", text):
        return float(match[1])
    raise ValueError(f"not a duration: {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="a ProcessBench-format set with gold answers joinable")
    parser.add_argument("--errors", type=int, default=20)
    parser.add_argument("--correct", type=int, default=20)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="5 + 5 solutions")
    args = parser.parse_args(argv)
    if args.input is None:
        print("bench_eta: no --input set (ProcessBench-format, never part of the repository): no figure")
        return 0
    if args.quick:
        args.errors = args.correct = 5
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "flows.cli", "eval", "run", "--input", str(args.input),
                   "--errors", str(args.errors), "--correct", str(args.correct), "--labels", "mc:binary",
                   "--k", str(args.k), "--seed", str(args.seed), "--set", f"policy.n_threads={args.threads}",
                   "--out", str(Path(scratch) / "run.json")]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    print(f"eval run: exit {done.returncode} in {time.perf_counter() - started:.0f} s")
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return 1
    lines: list[tuple[float, float | None, float | None]] = []  # elapsed, eta, by solutions
    pass_seconds = None
    for text in done.stderr.splitlines():
        if match := PASS_DONE.match(text):
            pass_seconds = float(match[1])
            break
        if match := LINE.search(text):
            solutions, total, elapsed = int(match[1]), int(match[2]), seconds(match[3])
            assert elapsed is not None
            by_solutions = elapsed / solutions * (total - solutions) if solutions else None
            lines.append((elapsed, seconds(match[4]), by_solutions))
            print(text)
    if pass_seconds is None or not lines:
        print("no progress lines or no end of the pass on stderr", file=sys.stderr)
        return 1
    scale = f"[{args.errors}+{args.correct} {args.input.name}, embedded, k={args.k}, pass {pass_seconds:.0f} s]"
    for share in (0.25, 0.5, 0.75):
        elapsed, eta, by_solutions = min(lines, key=lambda line: abs(line[0] - share * pass_seconds))
        left = pass_seconds - elapsed
        for rule, value in (("estimates", eta), ("by_solutions", by_solutions)):
            ratio = "-" if value is None or left <= 0 else f"{value / left:.2f}"
            print(f"FIGURE\teval.eta_over_time_left.{rule} at {share:.0%} {scale}\t{ratio}\tx\t"
                  f"1.0 = exact (line at {elapsed:.0f} s, {left:.0f} s left)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
