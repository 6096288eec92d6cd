"""Writes tests/data/lean_golden.jsonl: Lean statements for GSM8K and MATH-500 steps.

Run once (``python tests/data/make_lean_golden.py``), review the output, commit it; the test
(tests/test_lean_formalize.py) recomputes every statement from the stored claims and compares
exactly. Claims come from labelers.verify.claims.extract_claims and are stored with the record,
so the golden set does not move when the claim extractor changes. A "corrupted" record is a step
whose first claim's result was changed (the number after the relation, +1 or x10), the way a
wrong step looks.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from labelers.verify.claims import Claim, extract_claims  # noqa: E402
from labelers.verify.lean_formalize import step_formalizations  # noqa: E402

DATA = ROOT / "tests" / "data"
GSM8K_STEPS = 230
MATH_STEPS = 70
ROUNDED_STEPS = 20
CORRUPT_EVERY = 3  # every third step with a formalized claim also appears corrupted


def _claim_dict(claim: Claim) -> dict:
    d = asdict(claim)
    d["span"] = list(claim.span)
    d["percent_sides"] = list(claim.percent_sides)
    d["substitution"] = [list(p) for p in claim.substitution]
    return d


def _expected(claims: list[Claim]) -> list[dict]:
    out = []
    for result in step_formalizations(claims):
        if result.formalization is not None:
            out.append(
                {
                    "claim": result.claim_index,
                    "statement": result.formalization.statement,
                    "negatable": result.formalization.negatable,
                }
            )
        else:
            out.append({"claim": result.claim_index, "skipped" if result.skipped else "failed": result.reason})
    return out


def _corrupt(claim: Claim, serial: int) -> Claim | None:
    """The claim with its result changed: the last number of the right side +1 (or x10)."""
    numbers = list(re.finditer(r"\d+(?:\.\d+)?", claim.rhs))
    if not numbers:
        return None
    last = numbers[-1]
    text = last.group(0)
    if serial % 2 == 0 and "." not in text:
        new = str(int(text) + 1)
    elif "." in text:
        whole, frac = text.split(".")
        new = f"{int(whole) + 1}.{frac}"
    else:
        new = text + "0"
    rhs = claim.rhs[: last.start()] + new + claim.rhs[last.end() :]
    return replace(claim, rhs=rhs, text=claim.text + f" [corrupted: {claim.rhs} -> {rhs}]")


def _records(source: str, steps: list[tuple[int, int, str]], wanted: int) -> list[dict]:
    records: list[dict] = []
    taken = 0
    for problem_index, step_index, text in steps:
        if taken >= wanted:
            break
        claims = extract_claims(text)
        expected = _expected(claims)
        if not any("statement" in e for e in expected):
            continue
        taken += 1
        base = {"source": source, "problem_index": problem_index, "step_index": step_index, "step_text": text}
        records.append({**base, "corrupted": False, "claims": [_claim_dict(c) for c in claims], "expected": expected})
        if taken % CORRUPT_EVERY == 0:
            first = next(i for i, c in enumerate(claims) if not c.substitution)
            # The claim and its substituted forms (same span) change together, as in a real step.
            span = claims[first].span
            changed = [_corrupt(c, taken) if c.span == span else c for c in claims]
            if any(c is None for c in changed):
                continue
            corrupted = [c for c in changed if c is not None]
            records.append(
                {**base, "corrupted": True, "claims": [_claim_dict(c) for c in corrupted],
                 "expected": _expected(corrupted)}
            )
    return records


def main() -> None:
    gsm_steps = []
    for i, line in enumerate((DATA / "gsm8k_test.jsonl").read_text().splitlines()):
        answer = json.loads(line)["answer"]
        for j, step in enumerate(s for s in answer.split("\n") if s.strip() and not s.startswith("####")):
            gsm_steps.append((i, j, step))
    math_steps = []
    for i, line in enumerate((DATA / "math500_test.jsonl").read_text().splitlines()):
        solution = json.loads(line)["solution"]
        for j, step in enumerate(p for p in solution.split("\n") if p.strip()):
            math_steps.append((i, j, step))
    records = _records("gsm8k", gsm_steps, GSM8K_STEPS) + _records("math500", math_steps, MATH_STEPS)
    # Rounded results (explicit "about", or GSM8K-style "100/3 = 33.33") are rare in the first
    # problems: add the first ROUNDED_STEPS of them from the rest of GSM8K.
    taken = {(r["source"], r["problem_index"], r["step_index"]) for r in records}
    rounded = [
        step
        for step in gsm_steps
        if ("gsm8k", step[0], step[1]) not in taken
        and any("∧" in e.get("statement", "") for e in _expected(extract_claims(step[2])))
    ]
    implicit = [step for step in rounded if not any(c.rounded for c in extract_claims(step[2]))]
    explicit = [step for step in rounded if step not in implicit]
    records += _records("gsm8k", implicit, ROUNDED_STEPS // 2) + _records("gsm8k", explicit, ROUNDED_STEPS // 2)
    with (DATA / "lean_golden.jsonl").open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{len(records)} records written")


if __name__ == "__main__":
    main()
