"""Lean template coverage and speed on reference solutions (no Lean needed).

    python benchmarks/bench_lean_templates.py [--quick]

For every GSM8K test solution line and every MATH-500 solution paragraph: extract the claims
(labelers.verify.claims), formalize them with the Lean templates, and count the steps where
every claim that needs a check got a statement ("covered"), the statements per number type,
the reasons a claim got none, and the time per step. Proving needs a Lean toolchain and is not
measured here (docs/lean.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labelers.verify.claims import extract_claims  # noqa: E402
from labelers.verify.lean_formalize import step_formalizations  # noqa: E402


def _steps(source: str, limit: int | None) -> list[str]:
    path = REPO / "tests" / "data" / ("gsm8k_test.jsonl" if source == "gsm8k" else "math500_test.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:limit]
    if source == "gsm8k":
        return [s for r in rows for s in r["answer"].split("\n") if s.strip() and not s.startswith("####")]
    return [p for r in rows for p in r["solution"].split("\n") if p.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="first 300 GSM8K and 100 MATH-500 problems")
    args = parser.parse_args()
    for source, limit in (("gsm8k", 300 if args.quick else None), ("math500", 100 if args.quick else None)):
        steps = _steps(source, limit)
        with_claims = covered = statements = 0
        types: collections.Counter[str] = collections.Counter()
        reasons: collections.Counter[str] = collections.Counter()
        started = time.perf_counter()
        for step in steps:
            results = step_formalizations(extract_claims(step))
            needed = [r for r in results if not r.skipped]
            if not needed:
                continue
            with_claims += 1
            covered += all(r.formalization is not None for r in needed)
            for r in needed:
                if r.formalization is None:
                    reasons[r.reason or "?"] += 1
                    continue
                statements += 1
                for t in ("ℕ", "ℤ", "ℚ", "ℝ"):
                    if f": {t})" in r.formalization.proposition:
                        types[t] += 1
                        break
        elapsed = time.perf_counter() - started
        print(f"{source}: {len(steps)} steps, {with_claims} with claims to check, {statements} statements")
        print(f"  types: {dict(types)}")
        print(f"  no statement: {dict(reasons.most_common(6))}")
        share = 100.0 * covered / with_claims if with_claims else 0.0
        goal = ">= 95" if source == "gsm8k" else ">= 80"
        print(f"FIGURE\t{source}_template_coverage\t{share:.1f}\t% of steps with claims, all formalized\t{goal}")
        print(f"FIGURE\t{source}_formalize_ms_per_step\t{1000 * elapsed / max(len(steps), 1):.2f}"
              f"\tms (claims + templates)\t< 20")


if __name__ == "__main__":
    main()
