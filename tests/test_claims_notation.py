"""Notation real model solutions use (issue 12): mod, choose, factorial, unicode powers and
subscripts, and words that make a number only part of an expression. A claim is checked only
when both sides are read completely; otherwise the step is unverifiable, never wrongly flagged."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from labelers.config import ToolConfig
from labelers.verify.base import StepContext, ToolVerdict
from labelers.verify.claims import extract_claims
from labelers.verify.tool import ToolStepVerifier


@pytest.fixture(scope="module")
def tool():
    with ToolStepVerifier(ToolConfig(workers=1)) as verifier:
        yield verifier


def _pairs(text: str) -> list[tuple[str, str, str]]:
    return [(c.lhs, c.relation, c.rhs) for c in extract_claims(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("c² = a² + b²", [("c**2", "=", "a**2 + b**2")]),
        ("2¹⁰ = 1024", [("2**10", "=", "1024")]),
        ("x⁻¹ = 1/x", [("x**(-1)", "=", "1/x")]),
        ("x₁ + x₂ = 5", [("x_1 + x_2", "=", "5")]),
        ("9 mod 3 = 0", [("Mod(9, 3)", "=", "0")]),
        ("-7 mod 3 = 2", [("Mod(-7, 3)", "=", "2")]),
        (r"$45 \mod 11 = 1$", [("Mod(45, 11)", "=", "1")]),
        (r"$45 \bmod 11 = 1$", [("Mod(45, 11)", "=", "1")]),
        (r"$7 \equiv 1 \pmod{3}$", [("Mod(7, 3)", "=", "Mod(1, 3)")]),
        ("7 ≡ 2 (mod 5)", [("Mod(7, 5)", "=", "Mod(2, 5)")]),
        ("1024 = 1 mod 11", [("Mod(1024, 11)", "=", "Mod(1, 11)")]),  # a congruence, not 1024 = 1
        ("101 choose 2 = 5050", [("binomial(101, 2)", "=", "5050")]),
        (
            "(99+3-1) choose (3-1) = 101 choose 2 = 5050",
            [("binomial(99 + 3 - 1, 3 - 1)", "=", "binomial(101, 2)"), ("binomial(101, 2)", "=", "5050")],
        ),
        (r"$\binom{5}{2} = 10$", [("binomial(5, 2)", "=", "10")]),
        (r"$\dbinom{6}{3}=20$", [("binomial(6, 3)", "=", "20")]),
        (r"${5 \choose 2} = 10$", [("binomial(5, 2)", "=", "10")]),
        ("C(5, 2) = 10", [("binomial(5, 2)", "=", "10")]),
        ("120 = 5!", [("120", "=", "factorial(5)")]),
        ("5! = 120", [("factorial(5)", "=", "120")]),
        ("6 ÷ 2 × 3 − 1 = 8", [("6/2*3 - 1", "=", "8")]),
        ("2·3 = 6", [("2*3", "=", "6")]),
        ("40 * 3 = 120 and 28 * 5 = 140", [("40*3", "=", "120"), ("28*5", "=", "140")]),
    ],
)
def test_notation_is_read(text, expected):
    assert _pairs(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the sum of 3 and 5 = 8",  # not "5 = 8"
        "subtract 5 from 12 = 7",  # not "12 = 7"
        "5 less than 12 = 7",
        "45 is divided by 11 = 1",  # not "11 = 1"
        "25 = 5 squared",  # not "25 = 5"
        "1.5 million = 1500000",
        "0.75 = 3 over 4",
        "multiply 3 by 4 = 12",
        "2 * 5 choose 2 = 45",  # which operand does choose take? not guessed
        "10 + 5 mod 3 = 0",  # (15) mod 3 or 10 + (5 mod 3)? not guessed
        "5!! = 15",  # a double factorial is not read, and 5 is not the whole side
        "110₂ = 6",  # a base-2 numeral
        "x ≡ 3",  # a congruence without a modulus
        "٣ + ٤ = 7",  # digits of another script are not numbers here
    ],
)
def test_partly_understood_math_gives_no_claim(text):
    assert extract_claims(text) == []


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("c² = a² + b², so c² = 3² + 4² = 25", ToolVerdict.CORRECT),
        ("9 mod 3 = 0", ToolVerdict.CORRECT),
        ("-7 mod 3 = 2", ToolVerdict.CORRECT),
        ("-7 mod 3 = 1", ToolVerdict.INCORRECT),
        (r"$45 \mod 11 = 1$", ToolVerdict.CORRECT),
        (r"$2^{10} \equiv 1 \pmod{11}$", ToolVerdict.CORRECT),
        (r"$2^{10} \equiv 2 \pmod{11}$", ToolVerdict.INCORRECT),
        ("(99+3-1) choose (3-1) = 101 choose 2 = 5050", ToolVerdict.CORRECT),
        ("101 choose 2 = 5051", ToolVerdict.INCORRECT),
        ("120 = 5!", ToolVerdict.CORRECT),
        ("2 + 3 = 5!", ToolVerdict.CORRECT),  # an exclamation mark also reads correctly
        ("120 = 6!", ToolVerdict.INCORRECT),  # wrong on both readings
        ("10! = 3628800", ToolVerdict.CORRECT),
        ("C(200, 100) = 90548514656103281165404177077484163874504589675413336841320", ToolVerdict.CORRECT),
        ("2¹⁰ = 1000", ToolVerdict.INCORRECT),
    ],
)
def test_notation_is_checked(tool, text, verdict):
    check = tool.check_text(text)
    assert check.verdict == verdict, check.evidence


def test_acceptance_eval_run_labels_no_notation_step_negative(tmp_path):
    """Issue 12 acceptance: these correct steps run through `eval run` without a traceback and
    none is labeled negative."""
    steps = ["In the right triangle c² = a² + b².", "9 mod 3 = 0, so 9 is divisible by 3.",
             "The number of ways is 101 choose 2 = 5050.", "There are 120 = 5! orderings."]
    records = [{"id": "notation", "problem": "Notation check.", "steps": steps, "label": -1},
               {"id": "wrong", "problem": "A slip.", "steps": ["9 mod 3 = 0", "101 choose 2 = 5000"], "label": 1}]
    bench = tmp_path / "set.json"
    bench.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["eval", "run", "--input", str(bench), "--labels", "tool",
                                      "--set", "tool.workers=1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    score = json.loads(out.read_text())["results"][0]["score"]
    assert score["acc_cor"] == 1.0  # the notation solution gets no negative step
    assert score["acc_err"] == 1.0  # and the real slip is still found at step 1



def test_exception_in_a_step_is_its_error_verdict(tool, monkeypatch):
    import labelers.verify.tool as tool_module

    real = tool_module._prefilter

    def failing(claim, lhs, rhs):
        if claim.lhs == "13*13":
            raise ZeroDivisionError("injected")
        return real(claim, lhs, rhs)

    monkeypatch.setattr(tool_module, "_prefilter", failing)
    checks = tool.check_steps([StepContext("q", (), "2 + 2 = 4"), StepContext("q", (), "13*13 = 169"),
                               StepContext("q", (), "2 + 2 = 5")])
    assert [c.verdict for c in checks] == [ToolVerdict.CORRECT, ToolVerdict.ERROR, ToolVerdict.INCORRECT]
    assert "ZeroDivisionError: injected" in checks[1].evidence["error"]


def test_error_verdict_is_no_decision_downstream():
    from labelers.config import FuseConfig
    from labelers.fuse import NO_MC, fuse_step, verifier_decision
    from labelers.rationale import tool_line
    from labelers.search.mcts import verdict_value
    from labelers.verify.base import ToolCheck
    from tests.support.step_signals import signals

    failed = ToolCheck(ToolVerdict.ERROR, "none",
                       {"error": "tool verifier failed while checking a claim: KeyError: 'x'"})
    assert verifier_decision(failed, None) is None
    assert verdict_value(failed) == 0
    assert tool_line(failed).startswith("Tool check: failed (tool verifier failed")
    fused = fuse_step(signals(failed, None, NO_MC), FuseConfig(rule="hybrid"), path_correct=True)
    assert fused.label is True and fused.source == "path_outcome"


def test_a_contradiction_derived_from_an_equation_is_not_an_error(tool):
    derived = tool.check_text(r"If $b=2$, then $4a=4(a-3)\qquad\Rightarrow 0=-12$.")  # MATH-500 reference text
    assert derived.verdict == ToolVerdict.UNVERIFIABLE
    assert "a contradiction derived" in json.dumps(derived.evidence)
    # constants after constants, or without an arrow, are still checked
    assert tool.check_text(r"$12 + 5 = 18 \Rightarrow 3 = 4$").verdict == ToolVerdict.INCORRECT
    assert tool.check_text(r"$x = 2$, so $3 \cdot 4 = 13$").verdict == ToolVerdict.INCORRECT
    assert tool.check_text(r"$2x + 4 = 10 \Rightarrow 2 + 4 = 6$").verdict == ToolVerdict.CORRECT
