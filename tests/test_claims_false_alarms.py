"""No false alarms on real text (issue 23, item 5).

Correct competition and word-problem solutions write things the tool used to read as false claims:
``=`` for a congruence, a false relation a proof by contradiction derives on purpose, ``2\\frac{1}{2}``
for 2 * 1/2, ``[x]`` for the integer part, ``15,000`` inside math, list bullets, a minus after
words, a quotient with a remainder, a number glued to math, ``4√3 / 6√3``, the subfactorial ``!5``,
angles named by powers, and an equation that holds for one of two values. Each kind has a made-up
sentence that must not be flagged and, where the tool can still check it, a slip that must be.
The last tests pin the flags that remain on the ProcessBench dev half: real false equalities
inside correct solutions, which the tool is right to flag.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labelers.config import ToolConfig
from labelers.verify.base import ToolVerdict
from labelers.verify.claims import (
    READ_AS_CONGRUENCE,
    READ_AS_INTEGER_PART,
    READ_AS_LOG10,
    READ_AS_PRODUCT,
    READ_AS_QUOTIENT,
    extract,
    extract_claims,
)
from labelers.verify.tool import ToolStepVerifier


@pytest.fixture(scope="module")
def tool() -> Iterator[ToolStepVerifier]:
    with ToolStepVerifier(ToolConfig(workers=1)) as verifier:
        yield verifier


def _verdict(tool: ToolStepVerifier, text: str) -> ToolVerdict:
    return tool.check_text(text).verdict


# (made-up step that a correct solution could write, the same step with a real slip or None)
KINDS = {
    "congruence, modulus opening the sentence": (
        r"Modulo 7, $4 \times 4^2 = 4 \times 2 = 1$, so the remainder is 1.",
        r"Modulo 7, $4 \times 4^2 = 4 \times 2 = 3$, so the remainder is 3.",
    ),
    "congruence, modulus right after the math": (
        r"Squaring again, $3^4 = 4$ (mod 11).",
        r"Squaring again, $3^4 = 5$ (mod 11).",
    ),
    "congruence, modulo word after the math": (r"Hence $17 = 3$ modulo 7.", r"Hence $17 = 4$ modulo 7."),
    "congruence, 'a mod n = b' with a negative b": (
        "So 200 mod 9 = -7, which we use next.",
        "So 200 mod 9 = -6, which we use next.",
    ),
    "proof by contradiction": (r"Assume $k \ge 2$. Then $2 > 9$, which cannot happen.", None),
    "proof by contradiction, 'no such'": (
        "Suppose such a triangle exists. Then 3 > 40, so no such triangle exists.",
        None,
    ),
    "a check the step says fails": ("Check: \\( 30 = 2^2 + 5^2 = 4 + 25 = 29 \\)\n- This does not work.", None),
    "a whole number next to a fraction as a product": (
        r"Each of the 3 parts is a third, so $3\frac{1}{3} = 1$.",
        r"Each of the 3 parts is a third, so $3\frac{1}{3} = 2$.",
    ),
    "a mixed number": (
        r"As an improper fraction, $3\frac{1}{3} = \frac{10}{3}$.",
        r"As an improper fraction, $3\frac{1}{3} = \frac{11}{3}$.",
    ),
    "square brackets as the integer part": (r"Then $[7.4] + [2.9] = 9$.", r"Then $[7.4] + [2.9] = 10$."),
    "square brackets multiplied only group": (r"Then $\frac{1}{2}[8 - 2] = 3$.", r"Then $\frac{1}{2}[8 - 2] = 4$."),
    "thousands separator inside math": (
        r"In total \(250 \times 40 = 10,000\) steps.",
        r"In total \(250 \times 40 = 11,000\) steps.",
    ),
    "list bullets": ("Prime factors:\n- 21 = 3 * 7\n- 22 = 2 * 11", "Prime factors:\n- 21 = 3 * 7\n- 26 = 2 * 12"),
    "a minus after words in \\text": (
        r"\[ \text{Tom's savings} = \text{Ann's savings} - 7 = 20 - 7 = 13 \]",
        r"\[ \text{Tom's savings} = \text{Ann's savings} - 7 = 20 - 7 = 14 \]",
    ),
    "a minus after words in prose": (
        "Price of the bike - $1,200 = $3,000 - $1,200 = $1,800.",
        "Price of the bike - $1,200 = $3,000 - $1,200 = $1,900.",
    ),
    "a minus after a product with a word": ("This gives 3(AB)^2 - 5AB - 210 = 0, a quadratic in AB.", None),
    "a quotient with its remainder": (
        r"First, \(1000 \div 7 = 142\) with a remainder of \(6\).",
        r"First, \(1000 \div 7 = 142\) with a remainder of \(5\).",
    ),
    "a quotient with its remainder in \\text": (
        r"\[ 2023 \div 4 = 505 \text{ remainder } 3. \]",
        r"\[ 2023 \div 4 = 505 \text{ remainder } 2. \]",
    ),
    "a quotient named as such": (
        r"\[ 95 \div 8 = 11 \quad \text{(quotient)} \]",
        r"\[ 95 \div 8 = 12 \quad \text{(quotient)} \]",
    ),
    "a number glued to math": (r"We need 45 ≤ 9\( m \), so \( m \geq 5 \).", None),
    "'/' before a product written by juxtaposition": (
        "Ratio = 6√2 / 3√2 = 6 / 3 = 2.",
        "Ratio = 6√2 / 3√2 = 6 / 3 = 3.",
    ),
    "the subfactorial": (
        r"The count is \[!3 = 3!\left(1 - 1 + \frac{1}{2} - \frac{1}{6}\right) = 2\]",
        r"The count is \[!3 = 3!\left(1 - 1 + \frac{1}{2} - \frac{1}{6}\right) = 3\]",
    ),
    "an angle named by a power": (r"The angles are \(16^\circ = 2^4\) degrees apart.", None),
    "a power of degrees": (r"\[\frac{1}{\sin 2^3^\circ} = 7\]", None),
    "an equation true for one of two values": (
        r"Substituting \(x = 2\): \[(y - 1)^2 = 4\] \[y - 1 = 2 \quad \text{or} \quad y - 1 = -2\] "
        r"Since y > 0, \[y = 3\].",
        None,
    ),
    "a symbol with a ± value": (
        r"We solve: \( x^2 - 9 = 0 \) when \( x = \pm 3 \), and \( x - 1 = 0 \) when \( x = 1 \).",
        None,
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_correct_text_of_each_kind_is_not_flagged(tool: ToolStepVerifier, kind: str) -> None:
    correct, _ = KINDS[kind]
    check = tool.check_text(correct)
    assert check.verdict != ToolVerdict.INCORRECT, (kind, check.evidence.get("failing"))


@pytest.mark.parametrize("kind", sorted(k for k, (_, slip) in KINDS.items() if slip is not None))
def test_a_slip_of_each_kind_is_still_flagged(tool: ToolStepVerifier, kind: str) -> None:
    _, slip = KINDS[kind]
    assert slip is not None
    assert _verdict(tool, slip) == ToolVerdict.INCORRECT, kind


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        (r"$3\frac{1}{3} = 1$", READ_AS_PRODUCT),
        (r"$[7.4] = 7$", READ_AS_INTEGER_PART),
        (r"\(\log{100} = 2\)", READ_AS_LOG10),
        (r"\(95 \div 8 = 11\) remainder \(7\)", READ_AS_QUOTIENT),
        ("So 200 mod 9 = -7.", f"{READ_AS_CONGRUENCE} mod 9"),
        (r"Hence $17 = 3$ (mod 7).", f"{READ_AS_CONGRUENCE} mod 7"),
    ],
)
def test_the_other_reading_is_recorded_with_the_claim(text: str, reading: str) -> None:
    extraction = extract(text)
    assert len(extraction.readings) == len(extraction.claims) == 1
    assert [name for name, _, _ in extraction.readings[0]] == [reading]


def test_the_evidence_names_the_reading_that_holds(tool: ToolStepVerifier) -> None:
    check = tool.check_text(r"\(1000 \div 7 = 142\) with a remainder of \(6\).")
    assert check.verdict == ToolVerdict.CORRECT
    [claim] = check.evidence["claims"]
    assert claim["method"].startswith(READ_AS_QUOTIENT)


def test_a_reading_the_exact_path_cannot_settle_leaves_the_claim_unchecked(tool: ToolStepVerifier) -> None:
    # ln(100) != 2; log10(100) = 2 needs sympy, so the claim is neither confirmed nor flagged
    check = tool.check_text(r"Using a calculator, \(\log{100} = 2\).")
    assert check.verdict == ToolVerdict.UNVERIFIABLE
    assert READ_AS_LOG10 in check.evidence["reason"]


def test_a_modulus_said_elsewhere_in_the_step_does_not_loosen_an_equality(tool: ToolStepVerifier) -> None:
    # 2^9 and 2^8 are both 0 mod 4, but the step states an exponent slip, not a congruence
    text = r"The exponent gives \(2^{3^2} = 2^8\), which we reduce modulo 4 later."
    assert _verdict(tool, text) == ToolVerdict.INCORRECT


def test_a_false_not_equal_in_a_denying_step_is_flagged(tool: ToolStepVerifier) -> None:
    # the step's own denial is the false statement: 5 - 3 is 2
    assert _verdict(tool, "Checking b = 3: 5 - 3 ≠ 2, so this case doesn't work.") == ToolVerdict.INCORRECT


def test_plain_lists_and_coordinates_keep_their_reading() -> None:
    assert [(c.lhs, c.rhs) for c in extract_claims(r"\(1,2,3\) and \(x = 1,000\)")] == [("x", "1000")]
    assert [(c.lhs, c.rhs) for c in extract_claims("- 7 = 3 + 4")] == [("7", "3 + 4")]
    assert [(c.lhs, c.rhs) for c in extract_claims("so we get -7 = 3 - 10")] == [("-7", "3 - 10")]


# The flags that remain on correct solutions of the ProcessBench dev half are real false
# equalities the human labels forgive (the result after them is right). The tool is right there.


def test_remaining_flag_a_wrong_intermediate_fraction_before_a_right_result(tool: ToolStepVerifier) -> None:
    # 6!/3! = 120, but (6*5*4)/(3*2*1) = 20: the middle fraction is false as written
    text = r"\[ P(6, 3) = \frac{6!}{3!} = \frac{6 \times 5 \times 4}{3 \times 2 \times 1} = 120 \]"
    check = tool.check_text(text)
    assert check.verdict == ToolVerdict.INCORRECT
    assert check.evidence["failing"]["rhs_value"] == "20"


def test_remaining_flag_a_wrong_factorization_before_a_right_divisor_list(tool: ToolStepVerifier) -> None:
    # 540 = 2^2 * 3^3 * 5; the step writes 3^2 (= 180) and then lists the right divisors
    check = tool.check_text("First, we factor 540:\n\\[ 540 = 2^2 \\times 3^2 \\times 5 \\]\nIts divisors are ...")
    assert check.verdict == ToolVerdict.INCORRECT
    assert check.evidence["failing"]["rhs_value"] == "180"
