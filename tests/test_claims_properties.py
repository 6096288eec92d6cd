"""Property-based tests (hypothesis): claim extraction and the tool verifier never raise, on
arbitrary unicode and on real solution steps with random edits, and stay within their limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelers.config import ToolConfig
from labelers.verify import claims as claims_module
from labelers.verify.base import StepContext, ToolVerdict
from labelers.verify.claims import MAX_CLAIMS_PER_STEP, extract
from labelers.verify.tool import ToolStepVerifier

DATA = Path(__file__).parent / "data"

# Characters the extractor treats specially, so random text hits its branches often.
_MATH_ALPHABET = (
    "0123456789+-*/^=<>!%$()[]{}.,;: \n\\_&~'\"xyzabcCnk"
    "²³¹⁰⁴⁵⁶⁷⁸⁹⁻⁺⁽⁾ⁿ₀₁₂₃×÷−·⋅√π°≈≤≥≠≡∼€£٣"
)
_FRAGMENTS = [
    "mod", "choose", " of ", " and ", "\\frac{", "\\sqrt", "\\binom", "\\pmod", "\\equiv", "\\bmod", "\\text{",
    "$", "$$", "\\(", "\\)", "<<", ">>", "```python\n", "```", "squared", "times", "divided by", "C(",
    "\\left(", "\\right)", "\\begin{align}", "\\end{align}", "&=", "\\\\", "^{", "_{", "half of", "%",
]


def _real_steps() -> list[str]:
    steps: list[str] = []
    for line in (DATA / "prm800k_sample.jsonl").read_text(encoding="utf-8").splitlines():
        for step in json.loads(line)["label"]["steps"]:
            steps += [c["text"] for c in step.get("completions") or []]
    for line in (DATA / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()[:40]:
        steps += json.loads(line)["solution"].split("\n\n")
    for line in (DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()[:40]:
        steps += json.loads(line)["answer"].splitlines()
    return [s for s in steps if s.strip()]


REAL_STEPS = _real_steps()

math_text = st.lists(
    st.one_of(st.sampled_from(list(_MATH_ALPHABET)), st.sampled_from(_FRAGMENTS), st.text(max_size=3)),
    max_size=60,
).map("".join)


@st.composite
def mutated_steps(draw) -> str:
    """A real step with up to six random edits (insert, delete, replace) of random characters."""
    text = draw(st.sampled_from(REAL_STEPS))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(text)))
        piece = draw(st.one_of(st.sampled_from(list(_MATH_ALPHABET)), st.sampled_from(_FRAGMENTS), st.text(max_size=2)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            text = text[:position] + piece + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + len(piece):]
        else:
            text = text[:position] + piece + text[position + len(piece):]
    return text


def _check_extraction(text: str) -> None:
    extraction = extract(text)  # must not raise
    assert len(extraction.claims) <= MAX_CLAIMS_PER_STEP
    assert len(extraction.sides) == len(extraction.claims)
    for claim in extraction.claims:
        start, end = claim.span
        assert 0 <= start <= end <= len(text)
        assert claim.text == text[start:end]
        assert claim.relation in ("=", "<", ">", "<=", ">=", "!=")
        assert set(claim.exclamation_sides) <= {"lhs", "rhs"}


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_extraction_never_raises_on_arbitrary_unicode(text):
    _check_extraction(text)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(math_text)
def test_extraction_never_raises_on_math_like_text(text):
    _check_extraction(text)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_steps())
def test_extraction_never_raises_on_mutated_real_steps(text):
    _check_extraction(text)


def test_extraction_limits_hold_on_hostile_input():
    deep = "(" * (claims_module.MAX_NESTING + 50) + "1" + ")" * (claims_module.MAX_NESTING + 50) + " = 1"
    _check_extraction(deep)
    _check_extraction("1=" * (MAX_CLAIMS_PER_STEP * 3) + "1")
    _check_extraction("9" * (claims_module.MAX_NUMBER_DIGITS + 5) + " = 1")
    _check_extraction("²" * 5000 + "=" + "⁻" * 5000)


@pytest.fixture(scope="module")
def tool():
    with ToolStepVerifier(ToolConfig(workers=1, claim_timeout_s=2.0, run_code=False)) as verifier:
        yield verifier


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(math_text, mutated_steps()), min_size=1, max_size=4))
def test_tool_verifier_never_raises_and_answers_every_step(tool, steps):
    checks = tool.check_steps([StepContext("q", tuple(steps[:i]), s) for i, s in enumerate(steps)])
    assert len(checks) == len(steps)
    for check in checks:
        assert check.verdict in tuple(ToolVerdict)
        assert check.verdict != ToolVerdict.ERROR, check.evidence  # nothing here should break it
        json.loads(check.evidence_json())
