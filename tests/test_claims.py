"""Claim extraction: what a step's text claims, with spans; prose and hostile text give nothing."""

from __future__ import annotations

import time

import pytest
import sympy

from labelers.verify.claims import Claim, extract, extract_claims, parse_plain, to_plain


def _pairs(text: str) -> list[tuple[str, str, str]]:
    return [(c.lhs, c.relation, c.rhs) for c in extract_claims(text)]


def _check_spans(text: str) -> list[Claim]:
    claims = extract_claims(text)
    for c in claims:
        assert text[c.span[0] : c.span[1]] == c.text
    return claims


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16 - 3 - 4 = 9", [("16 - 3 - 4", "=", "9")]),
        ("a = b = c", [("a", "=", "b"), ("b", "=", "c")]),
        ("It takes 2/2=<<2/2=1>>1 bolt of white fiber", [("2/2", "=", "1")]),
        (r"$\frac{3}{4} \cdot 8 = 6$", [("3/4*8", "=", "6")]),
        (r"so $2^{10}=1024$.", [("2**10", "=", "1024")]),
        (r"\(\sqrt{117} = 3\sqrt{13}\)", [("sqrt(117)", "=", "3*sqrt(13)")]),
        (r"$\left(3 \times 4\right) \div 2 = 6$", [("3*4/2", "=", "6")]),
        (r"\[\sqrt[3]{27} = 3\]", [("27**(1/3)", "=", "3")]),
        ("He pays 80 * 25% = 20 dollars", [("80*(25/100)", "=", "20")]),
        ("It costs $5 + $3 = $8 in total", [("5 + 3", "=", "8")]),
        ("5 cm + 3 cm = 8 cm", [("5 + 3", "=", "8")]),
        ("They had 1,000 + 2,500 = 3,500 coins", [("1000 + 2500", "=", "3500")]),
        ("Each is 1.5 * 4 = 6.", [("1.5*4", "=", "6")]),
        ("So 3 < 5 and 10 >= 2*5", [("3", "<", "5"), ("10", ">=", "2*5")]),
        (r"$x \le 4$ and $7 \neq 8$", [("x", "<=", "4"), ("7", "!=", "8")]),
        ("3 x 4 = 12 eggs", [("3*4", "=", "12")]),
        ("The answer is 5! = 120", [("factorial(5)", "=", "120")]),
        (r"$1{,}000 \div 8 = 125$", [("1000/8", "=", "125")]),
        ("He pays 20% of 100 = 20 dollars", [("(20/100)*100", "=", "20")]),
        ("She eats 1/2 of 10 = 5 cookies", [("1/2*10", "=", "5")]),
        ("So 3 times 4 = 12 and 12 divided by 3 = 4", [("3*4", "=", "12"), ("12/3", "=", "4")]),
        ("**Total:** 5 + 3 = 8", [("5 + 3", "=", "8")]),
        ("Janet's 3 + 4 = 7", [("3 + 4", "=", "7")]),
        (r"$\sin 30^\circ = \frac{1}{2}$", [("sin((30*pi/180))", "=", "1/2")]),
        (r"$4\frac{5}{8} = \frac{37}{8}$", [("4 + 5/8", "=", "37/8")]),
        (r"$\alpha_1 + \lambda = 3$", [("alpha_1 + lamda", "=", "3")]),
        ("f(3) = 5", [("f(3)", "=", "5")]),
    ],
)
def test_extracts_expected_claims(text: str, expected: list[tuple[str, str, str]]) -> None:
    _check_spans(text)
    assert _pairs(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "He has 3 apples = 3",
        "There are 12 apples and 5 pears.",
        "Let me think about the problem = hard",
        "",
        "```python\nprint(2 + 2 == 5)\n```",
        "__import__('os') = 1",
        "she said: $5 and $6 = lots",
        "half of 10 = 5",  # the number after "half of" is not the left side
        "twice 6 = 12",
        "2 hours = 120 minutes",  # a conversion, not arithmetic
        "4 students drank 1.5 quarts = 4 * 1.5",  # "1.5 quarts" labels the product
        r"$(1-2)+(3-4)+ \dots +(99-100) = -50$",  # the sum's start is not read, so no "= -50"
        r"$\binom{7}{4}+\dots=35$",
        r"$110_2=6_8$",
        r"Let $x = 0.\overline{1331}$",
        r"$9\&2 = 3$",
        "foo(3) = 5",
    ],
)
def test_prose_gives_no_claims(text: str) -> None:
    assert extract_claims(text) == []


def test_gsm8k_annotation_counted_once_with_span() -> None:
    text = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day."
    claims = _check_spans(text)
    assert len(claims) == 1
    (claim,) = claims
    assert (claim.lhs, claim.rhs, claim.origin) == ("16 - 3 - 4", "9", "annotation")
    assert claim.text == "16-3-4=9"


def test_annotation_with_money_and_thousands() -> None:
    text = "The cost came out to 80,000+50,000=$<<80000+50000=130000>>130,000"
    claims = _check_spans(text)
    assert [(c.lhs, c.rhs) for c in claims] == [("80000 + 50000", "130000")]


def test_chain_before_annotation_keeps_the_earlier_link() -> None:
    text = "So 2 * 3 * 4 = 6 * 4 = <<6*4=24>>24 cookies"
    assert sorted(_pairs(text)) == [("2*3*4", "=", "6*4"), ("6*4", "=", "24")]


def test_align_environment_continues_chains() -> None:
    text = r"\begin{align*} x &= 2 + 3 \\ &= 5 \end{align*}"
    assert _pairs(text) == [("x", "=", "2 + 3"), ("2 + 3", "=", "5")]


def test_substitution_claim_when_step_states_both() -> None:
    claims = _check_spans("x = 5 solves 2x + 1 = 11")
    subs = [c for c in claims if c.origin == "substitution"]
    assert len(subs) == 1
    assert (subs[0].lhs, subs[0].rhs, subs[0].substitution) == ("2*(5) + 1", "11", (("x", "5"),))
    # conflicting bindings or negations give no substitution
    assert not [c for c in extract_claims("x = 5 or x = -3 in x^2 - 2x = 15") if c.origin == "substitution"]
    assert not [c for c in extract_claims("x = 2 is not a root of x^2 = 5") if c.origin == "substitution"]


def test_rounding_marks() -> None:
    (c,) = extract_claims("The area is 3.14 * 2^2 ≈ 12.57")
    assert c.rounded and c.relation == "="
    (c,) = extract_claims(r"$\sqrt{2} \approx 1.414$")
    assert c.rounded
    (c,) = extract_claims("10 / 3 = about 3.33")
    assert c.rounded and c.rhs == "3.33"
    (c,) = extract_claims("10 / 3 = 3.33 rounded to the hundredths")
    assert c.rounded
    (c,) = extract_claims("10 / 2 = 5")
    assert not c.rounded
    # "round" as a noun or adjective is no rounding cue
    (c,) = extract_claims("The round trip is 2 * 15 = 30 miles")
    assert not c.rounded
    (c,) = extract_claims("3 rounds of 2 * 4 = 8 laps")
    assert not c.rounded
    (c,) = extract_claims("Rounding up, 10/3 = 4")
    assert c.rounded


def test_percent_side_is_marked() -> None:
    (c,) = extract_claims("20/100 * 100 = 20%")
    assert c.percent_sides == ("rhs",) and c.rhs == "(20/100)"


def test_sides_are_sympy_parseable_and_round_trip() -> None:
    text = r"$\frac{3}{4} \cdot 8 = 6$, $\sqrt{117} = 3\sqrt{13}$, 2^10 = 1024, 5! = 120, 1.5 * 4 = 6"
    for claim in extract_claims(text):
        for side in (claim.lhs, claim.rhs):
            parsed = sympy.parse_expr(side, evaluate=False)
            assert parsed is not None
            assert to_plain(parse_plain(side)) == side


def test_hostile_text_is_bounded() -> None:
    nested = "(" * 10_000 + "1" + ")" * 10_000 + " = 1"
    started = time.perf_counter()
    result = extract(nested)
    assert result.claims == []
    assert any("nested" in r.reason for r in result.rejected)
    latex_nested = "$" + r"\frac{1}{" * 5_000 + "2" + "}" * 5_000 + " = 1$"
    assert extract_claims(latex_nested) == []
    long_text = "1 + 1 = 2 and " * 20_000
    assert len(extract_claims(long_text)) == 200  # capped
    huge_literal = "9" * 5_000 + " = 1"
    assert extract_claims(huge_literal) == []
    # nothing is evaluated while extracting: an exponent tower is just a claim
    (tower,) = extract_claims("9**9**9**9 = 5")
    assert tower.lhs == "9**9**9**9"
    assert time.perf_counter() - started < 10
