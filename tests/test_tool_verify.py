"""Tool verification: verdicts, evidence, the worker pool, hostile input, and the data-set figures.

Figures (printed; run with ``-s`` to see them):
- GSM8K test reference steps with a calculator annotation judged ``correct`` (>= 99 %);
- seeded arithmetic corruptions of GSM8K steps judged ``incorrect`` (>= 95 %), untouched steps
  judged ``incorrect`` (<= 1 %);
- the same without calculator annotations (as a model writes steps): untouched steps judged
  ``incorrect`` (<= 0.5 %), a corrupted visible result caught (>= 95 %);
- MATH-500 reference steps: share with a checkable claim, share of those judged ``correct``
  (>= 97 %).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from labelers.config import ToolConfig
from labelers.steps import gsm8k_reference_steps
from labelers.verify.base import StepContext, ToolVerdict
from labelers.verify.claims.segments import _math_segments
from labelers.verify.tool import ToolStepVerifier

CLAIM_TIMEOUT_S = 1.5
# A killed worker, its replacement being started and the bookkeeping around it.
OVERHEAD_S = 3.0


@pytest.fixture(scope="module")
def verifier() -> Iterator[ToolStepVerifier]:
    config = ToolConfig(workers=2, claim_timeout_s=CLAIM_TIMEOUT_S, sandbox_timeout_s=2.0, sandbox_memory_mb=256)
    with ToolStepVerifier(config) as tool:
        # Start the sympy workers once, so timings below measure checks, not interpreter start-up.
        tool.check_text(r"$\sqrt{4 \cdot 2} = 2\sqrt{2}$")
        yield tool


def _judge(verifier: ToolStepVerifier, text: str) -> ToolVerdict:
    return verifier.check_text(text).verdict


# ---------------------------------------------------------------------------------------------
# Verdicts and evidence


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.", "correct"),
        ("Janet sells 16 - 3 - 4 = <<16-3-4=10>>10 duck eggs a day.", "incorrect"),
        ("She makes 9 * 2 = $18 every day.", "correct"),
        ("She makes 9 * 2 = $19 every day.", "incorrect"),
        ("It is 0.1 + 0.2 = 0.3 exactly.", "correct"),  # exact rationals, not floats
        ("So 80 * 25% = 20 eggs.", "correct"),
        ("So 80 * 25% = 25 eggs.", "incorrect"),
        ("The share is 20/100 * 100 = 20%.", "correct"),
        ("So 10/3 = 3.33 hours.", "correct"),  # a decimal written to two places
        ("So 2/3 = 0.67 of the cake.", "correct"),
        ("So 10/3 = 3.4 hours.", "incorrect"),  # not 10/3 rounded or truncated
        ("The area is about 3.14 * 2^2 ≈ 12.57.", "correct"),
        ("The area is 3.14 * 2^2 ≈ 13.57.", "incorrect"),
        (r"$\pi \cdot 2 \approx 6.3$", "correct"),
        ("Rounded to the nearest dollar, 19.99 * 3 = 60.", "correct"),
        ("So 3 < 5 and 10 >= 2*5.", "correct"),
        ("So 5 < 3.", "incorrect"),
        (r"$\sqrt{2} > 1.41$", "correct"),
        (r"$\frac{3}{4} \cdot 8 = 6$", "correct"),
        (r"$\frac{3}{4} \cdot 8 = 5$", "incorrect"),
        (r"$2^{10}=1024$", "correct"),
        (r"$\sqrt{117} = 3\sqrt{13}$", "correct"),
        (r"$\sqrt{117} = 4\sqrt{13}$", "incorrect"),
        (r"$\sin 30^\circ = \frac{1}{2}$", "correct"),
        (r"$4\frac{5}{8} = \frac{37}{8}$", "correct"),
        (r"$(x+1)^2 = x^2 + 2x + 1$", "correct"),
        (r"$(x+1)^2 = x^2 + 1$", "unverifiable"),  # an equation in x, not a numeric claim
        ("x = 5 solves 2x + 1 = 11", "correct"),
        ("x = 4 solves 2x + 1 = 11", "incorrect"),
        (r"If $x=1$, we have $1 = \sqrt{11-2} + 4$, which is not true.", "unverifiable"),
        ("He has 3 apples.", "unverifiable"),
        ("Let x be the number of apples.", "unverifiable"),
        (r"$x = 2 + \sqrt{3}$", "unverifiable"),  # a definition
        ("5 / 0 = 1", "unverifiable"),
    ],
)
def test_verdicts(verifier: ToolStepVerifier, text: str, verdict: str) -> None:
    check = verifier.check_text(text)
    assert check.verdict.value == verdict, check.evidence_json()


def test_incorrect_evidence_names_the_failing_claim_and_values(verifier: ToolStepVerifier) -> None:
    text = "He buys 3 * 4 = <<3*4=12>>12 apples and 12 + 5 = <<12+5=18>>18 in all."
    check = verifier.check_text(text)
    assert check.verdict is ToolVerdict.INCORRECT and check.kind == "sympy"
    failing = check.evidence["failing"]
    assert failing["lhs"] == "12 + 5" and failing["rhs"] == "18"
    assert (failing["lhs_value"], failing["rhs_value"]) == ("17", "18")
    start, end = failing["span"]
    assert text[start:end] == failing["text"] == "12+5=18"
    assert [c["holds"] for c in check.evidence["claims"]] == [True, False]
    json.loads(check.evidence_json())  # stored as JSON


def test_correct_and_unverifiable_evidence(verifier: ToolStepVerifier) -> None:
    check = verifier.check_text("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.")
    (claim,) = check.evidence["claims"]
    assert claim["method"] == "exact" and claim["lhs_value"] == claim["rhs_value"] == "9"
    nothing = verifier.check_text("She sells the rest at the market.")
    assert nothing.kind == "none" and nothing.evidence["reason"] == "no checkable claim in the step"
    definition = verifier.check_text("$r = 5$")
    assert "defines r" in definition.evidence["reason"]


@pytest.mark.usefixtures("kernel_sandbox")
def test_program_of_thought_code_is_run_and_compared(verifier: ToolStepVerifier) -> None:
    good = verifier.check_text("```python\nfrom fractions import Fraction\nprint(Fraction(3, 4) * 8)\n```\n"
                               "So 6 cookies.")
    assert (good.verdict, good.kind) == (ToolVerdict.CORRECT, "python")
    bad = verifier.check_text("```python\nprint(sum(range(1, 11)))\n```\nThe sum is 56.")
    assert (bad.verdict, bad.kind) == (ToolVerdict.INCORRECT, "python")
    assert bad.evidence["failing"]["lhs_value"] == "55"
    failing_code = verifier.check_text("```python\nprint(1/0)\n```\nThe result is 3.")
    assert failing_code.verdict is ToolVerdict.UNVERIFIABLE
    assert "ZeroDivisionError" in failing_code.evidence["reason"]


def test_order_is_kept_and_one_slow_claim_does_not_block_the_rest(verifier: ToolStepVerifier) -> None:
    quick = [rf"$\sqrt{{{k * k * 2}}} = {k}\sqrt{{2}}$" for k in range(2, 42)]
    steps = quick[:20] + ["9**9**9**9 = 5"] + quick[20:] + ["7 * 6 = 42"]
    started = time.perf_counter()
    checks = verifier.check_steps([StepContext("q", (), s) for s in steps])
    elapsed = time.perf_counter() - started
    verdicts = [c.verdict.value for c in checks]
    assert verdicts[20] == "unverifiable" and "timed out" in checks[20].evidence["reason"]
    assert verdicts[:20] + verdicts[21:] == ["correct"] * (len(steps) - 1)
    assert elapsed < CLAIM_TIMEOUT_S + OVERHEAD_S + 10
    assert verifier._pool.workers_replaced >= 1
    # the pool keeps working after a worker was killed and replaced
    assert _judge(verifier, r"$\sqrt{8} = 2\sqrt{2}$") is ToolVerdict.CORRECT


def test_close_shuts_workers_down() -> None:
    tool = ToolStepVerifier(ToolConfig(workers=1, claim_timeout_s=5.0))
    with tool:
        assert tool.check_text(r"$\sqrt{9} + \sqrt{2} > 4$").verdict is ToolVerdict.CORRECT
        assert tool._pool.live_workers == 1
    assert tool._pool.live_workers == 0


# ---------------------------------------------------------------------------------------------
# Hostile input: never hangs, crashes or escapes; ends as unverifiable with the reason.


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("9**9**9**9 = 5", "timed out"),
        ("factorial(10**9) = 5", "timed out"),
        ("(10**9)! = 5", "timed out"),
        ("__import__('os') = 1", "no checkable claim"),
        ("(" * 10_000 + "1" + ")" * 10_000 + " = 1", "nested deeper"),
        ("'a'*10**10 = 5", "no checkable claim"),
        ("```python\n9**9**9**9\n```\nThe value is 5.", "timeout"),
        ("```python\nimport math\nprint(math.factorial(10**9))\n```\nThe value is 5.", "timeout"),
        ("```python\nx = 'a'*10**10\nprint(len(x))\n```\nThe value is 5.", "memory"),
        ("```python\nimport subprocess\nprint(subprocess.run(['echo', '5']).returncode)\n```\nThe value is 5.",
         "code blocked: PermissionError"),
        ("```python\nprint(" + "(" * 10_000 + "1" + ")" * 10_000 + ")\n```\nThe value is 1.", "SyntaxError"),
        ("```python\nimport socket\nsocket.create_connection(('1.1.1.1', 80))\nprint(5)\n```\nSo 5.", "unreachable"),
        ("```python\nopen('/usr/lib/prmforge-escape.txt', 'w').write('x')\nprint(5)\n```\nSo 5.",
         "Read-only file system"),
        ("```python\nwhile True:\n    pass\n```\nThe value is 5.", "timeout"),
    ],
)
def test_hostile_input_ends_unverifiable_within_limit(
    verifier: ToolStepVerifier, text: str, reason_part: str, request: pytest.FixtureRequest
) -> None:
    if "```python" in text:
        request.getfixturevalue("kernel_sandbox")
    started = time.perf_counter()
    check = verifier.check_text(text)
    elapsed = time.perf_counter() - started
    assert check.verdict is ToolVerdict.UNVERIFIABLE, check.evidence_json()
    assert reason_part in check.evidence["reason"], check.evidence["reason"]
    limit = max(CLAIM_TIMEOUT_S, verifier.config.sandbox_timeout_s) + OVERHEAD_S
    assert elapsed < limit, f"took {elapsed:.1f} s, limit {limit:.1f} s"
    assert not Path("/usr/lib/prmforge-escape.txt").exists()


# ---------------------------------------------------------------------------------------------
# Figures over the test data


def _gsm8k_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _annotated_steps(rows: list[dict]) -> list[str]:
    return [s for r in rows for s in gsm8k_reference_steps(r["answer"], keep_calculator=True) if "<<" in s]


def test_gsm8k_reference_steps_are_correct(verifier: ToolStepVerifier, gsm8k_path: Path) -> None:
    steps = _annotated_steps(_gsm8k_rows(gsm8k_path))
    checks = verifier.check_steps([StepContext("", (), s) for s in steps])
    counts = Counter(c.verdict.value for c in checks)
    share = counts["correct"] / len(steps)
    print(f"\nGSM8K reference steps with an annotation: {len(steps)}, correct {share:.2%}, {dict(counts)}")
    assert len(steps) > 4000
    assert share >= 0.99


_ANNOTATION_RESULT = re.compile(r"<<([^<>=]*)=([^<>]*)>>(\$?)([\d,]*\.?\d+)?")


def _corrupt_value(value: str, kind: str, rng: random.Random) -> str | None:
    """A wrong result as a model's slip would write it; None when the kind does not apply."""
    number = float(value)
    decimals = len(value.split(".")[1]) if "." in value else 0

    def fmt(x: float) -> str:
        return f"{x:.{decimals}f}" if decimals else str(int(round(x)))

    if kind == "delta":
        delta = rng.choice([-3, -2, 2, 3, 4, 5]) * (10**-decimals if decimals else 1)
        out = fmt(number + delta)
    elif kind == "off_by_one":
        out = fmt(number + rng.choice([-1, 1]))
    elif kind == "times_ten":
        out = fmt(number * 10)
    else:  # swapped adjacent digits
        digits = list(value)
        spots = [i for i in range(len(digits) - 1)
                 if digits[i].isdigit() and digits[i + 1].isdigit() and digits[i] != digits[i + 1]]
        if not spots:
            return None
        i = rng.choice(spots)
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
        out = "".join(digits)
    return out if out != value and not out.startswith("-") else None


def _corrupt_step(step: str, rng: random.Random) -> tuple[str, str] | None:
    """Change one annotation's result, and the visible result after it, consistently."""
    matches = list(_ANNOTATION_RESULT.finditer(step))
    if not matches:
        return None
    match = rng.choice(matches)
    result = match.group(2).strip()
    if not re.fullmatch(r"\d+(\.\d+)?", result):
        return None
    kinds = ["delta", "off_by_one", "times_ten", "swap"]
    rng.shuffle(kinds)
    for kind in kinds:
        wrong = _corrupt_value(result, kind, rng)
        if wrong is None:
            continue
        visible = match.group(4)
        replacement = f"<<{match.group(1)}={wrong}>>{match.group(3)}"
        if visible is not None:
            replacement += wrong if visible.replace(",", "") == result else visible
        return step[: match.start()] + replacement + step[match.end() :], kind
    return None


def test_gsm8k_injected_errors_are_found(verifier: ToolStepVerifier, gsm8k_path: Path) -> None:
    rng = random.Random(20240917)
    corrupted: list[tuple[str, str]] = []
    untouched: list[str] = []
    for row in _gsm8k_rows(gsm8k_path):
        steps = [s for s in gsm8k_reference_steps(row["answer"], keep_calculator=True) if "<<" in s]
        if not steps:
            continue
        target = rng.randrange(len(steps))
        result = _corrupt_step(steps[target], rng)
        if result is None:
            continue
        corrupted.append(result)
        untouched += [s for i, s in enumerate(steps) if i != target]
    assert len(corrupted) >= 500
    checks = verifier.check_steps([StepContext("", (), s) for s, _ in corrupted + [(u, "") for u in untouched]])
    bad = checks[: len(corrupted)]
    good = checks[len(corrupted) :]
    found = sum(c.verdict is ToolVerdict.INCORRECT for c in bad) / len(bad)
    false_alarms = sum(c.verdict is ToolVerdict.INCORRECT for c in good) / len(good)
    by_kind = Counter(k for (_, k), c in zip(corrupted, bad, strict=True) if c.verdict is ToolVerdict.INCORRECT)
    all_kinds = Counter(k for _, k in corrupted)
    print(
        f"\nGSM8K injected errors: {len(corrupted)} corrupted steps, {found:.2%} judged incorrect "
        f"({ {k: f'{by_kind[k]}/{n}' for k, n in all_kinds.items()} }); "
        f"{len(untouched)} untouched steps, {false_alarms:.2%} judged incorrect"
    )
    assert found >= 0.95
    assert false_alarms <= 0.01


_VISIBLE_RESULT = re.compile(r"=\s*\$?(\d[\d,]*(?:\.\d+)?)")


def test_gsm8k_visible_text_without_annotations(verifier: ToolStepVerifier, gsm8k_path: Path) -> None:
    """Steps as a model writes them: the reference lines with the calculator annotations removed.

    Untouched steps must almost never be judged incorrect; a visible result changed (one of the
    four slips) in a step that was judged correct must be caught.
    """
    rng = random.Random(7)
    rows = _gsm8k_rows(gsm8k_path)
    steps = [s for r in rows for s in gsm8k_reference_steps(r["answer"], keep_calculator=False)]
    checks = verifier.check_steps([StepContext("", (), s) for s in steps])
    counts = Counter(c.verdict.value for c in checks)
    corrupted: list[str] = []
    for step, check in zip(steps, checks, strict=True):
        matches = list(_VISIBLE_RESULT.finditer(step))
        if check.verdict is not ToolVerdict.CORRECT or not matches:
            continue
        match = rng.choice(matches)
        value = match.group(1).replace(",", "").rstrip(".")
        kinds = ["delta", "off_by_one", "times_ten", "swap"]
        rng.shuffle(kinds)
        wrong = next((w for k in kinds if (w := _corrupt_value(value, k, rng)) is not None), None)
        if wrong is not None:
            corrupted.append(step[: match.start(1)] + wrong + step[match.end(1) :])
    bad = verifier.check_steps([StepContext("", (), s) for s in corrupted])
    found = sum(c.verdict is ToolVerdict.INCORRECT for c in bad) / len(bad)
    false_alarms = counts["incorrect"] / len(steps)
    print(
        f"\nGSM8K reference steps without annotations: {len(steps)}; correct {counts['correct'] / len(steps):.2%}, "
        f"incorrect {false_alarms:.2%}, {dict(counts)}; visible result corrupted in {len(corrupted)} "
        f"correct steps: {found:.2%} judged incorrect"
    )
    assert counts["correct"] / len(steps) >= 0.70
    assert false_alarms <= 0.005
    assert len(corrupted) >= 500 and found >= 0.95


def split_math_solution(solution: str) -> list[str]:
    """Steps of a MATH solution: paragraphs, cut at sentence ends outside math regions."""
    steps: list[str] = []
    for paragraph in re.split(r"\n\s*\n", solution):
        if not paragraph.strip():
            continue
        regions = _math_segments(paragraph, 0, len(paragraph))
        cuts = [0]
        for m in re.finditer(r"(?<=[.!?])\s+(?=[A-Z\\$])", paragraph):
            if not any(s < m.start() < e for s, e, _, _ in regions):
                cuts.append(m.end())
        cuts.append(len(paragraph))
        steps += [paragraph[a:b].strip() for a, b in pairwise(cuts) if paragraph[a:b].strip()]
    return steps


@pytest.mark.slow
def test_math500_reference_steps(verifier: ToolStepVerifier, math500_path: Path) -> None:
    rows = [json.loads(line) for line in math500_path.read_text().splitlines() if line.strip()]
    steps = [s for r in rows for s in split_math_solution(r["solution"])]
    checks = verifier.check_steps([StepContext("", (), s) for s in steps])
    counts = Counter(c.verdict.value for c in checks)
    checkable = counts["correct"] + counts["incorrect"]
    reasons: Counter[str] = Counter()
    for check in checks:
        if check.verdict is ToolVerdict.UNVERIFIABLE:
            for item in check.evidence.get("unchecked", []):
                reasons[re.sub(r"(defines|in( unknowns)?) .*", r"\1 ...", item["reason"])] += 1
            if "unchecked" not in check.evidence:
                reasons[check.evidence["reason"]] += 1
    print(
        f"\nMATH-500 reference steps: {len(steps)}; with a checkable claim {checkable / len(steps):.2%}; "
        f"correct of checkable {counts['correct'] / checkable:.2%}; {dict(counts)}"
    )
    print("  reasons a claim was not checked:", reasons.most_common(8))
    for step, check in zip(steps, checks, strict=True):
        if check.verdict is ToolVerdict.INCORRECT:
            print("  judged incorrect:", step[:120].replace("\n", " "), "|", check.evidence["failing"]["text"][:60])
    assert checkable / len(steps) >= 0.2
    assert counts["correct"] / checkable >= 0.97


def _labeled_sample_steps(data_dir: Path) -> list[tuple[str, int]]:
    """(step, label) pairs: PRM800K human ratings (-1/0/1) and Math-Shepherd +/- labels."""
    items: list[tuple[str, int]] = []
    for line in (data_dir / "prm800k_sample.jsonl").read_text().splitlines():
        record = json.loads(line)
        for step in record["label"]["steps"]:
            for completion in step["completions"] or []:
                if completion["rating"] is not None:
                    items.append((completion["text"], completion["rating"]))
    for line in (data_dir / "math_shepherd_sample.jsonl").read_text().splitlines():
        labeled = json.loads(line)["label"]
        for part in re.split(r"(?:^|\s)Step \d+: ", labeled)[1:]:
            part = part.strip()
            if part[-1:] in "+-":
                items.append((part[:-1].strip(), 1 if part.endswith("+") else -1))
    return items


def test_incorrect_verdicts_agree_with_human_and_mc_labels(verifier: ToolStepVerifier, data_dir: Path) -> None:
    """Every step the tool calls incorrect in the labeled samples is labeled wrong (-1) there.

    The tool checks arithmetic only, so wrong steps with sound arithmetic stay correct or
    unverifiable; precision, not recall, is what this sample can show.
    """
    items = _labeled_sample_steps(data_dir)
    checks = verifier.check_steps([StepContext("", (), text) for text, _ in items])
    table = Counter((label, c.verdict.value) for (_, label), c in zip(items, checks, strict=True))
    print(f"\nlabeled samples: {len(items)} steps; (label, verdict) counts: {sorted(table.items())}")
    flagged = [label for (_, label), c in zip(items, checks, strict=True) if c.verdict is ToolVerdict.INCORRECT]
    assert len(flagged) >= 3
    assert all(label == -1 for label in flagged)
