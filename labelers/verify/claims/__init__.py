"""Claims a step makes: equalities, chains and inequalities found in its text.

:func:`extract_claims` turns a step into :class:`Claim` records whose ``lhs``/``rhs`` are plain,
sympy-parseable expressions (numbers, ``+ - * / **``, parentheses, ``sqrt(...)``,
``factorial(...)``, ``pi``, symbol names): no LaTeX, no units, no money signs. The same strings are
what the Lean helper builds statements from.

How text becomes claims (docs/verification.md has the full rules):

- the step is tokenized; prose words, commas, colons, sentence ends and line ends *break* the text
  into runs; a run is split at its relations (``= < > <= >= !=`` and the rounding relations
  ``≈ ~ \\approx``); every pair of neighbouring sides is one claim (``a = b = c`` gives ``a = b``
  and ``b = c``); a claim exists only when both sides parse as pure math, so ``He has 3 apples = 3``
  gives nothing;
- GSM8K calculator annotations ``<<48/2=24>>`` are claims of their own; the visible equation whose
  result directly follows an annotation (``16 - 3 - 4 = <<16-3-4=9>>9``) is the same claim and is
  not counted twice;
- LaTeX inside ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` and math environments is read
  (``\\frac``, ``\\sqrt``, ``^{...}``, ``\\cdot``, ``\\times``, ``\\div``, ``\\left( \\right)``,
  ``\\text{..}``, ``{,}`` separators, ``\\boxed``); a ``$`` that does not open a tight
  ``$...$`` pair is a money sign and is dropped;
- ``25%`` is ``(25/100)`` inside arithmetic; a side that is only a percentage (``= 20%``) may
  also be read as the bare number (``percent_sides``), because steps write both ``0.2 = 20%`` and
  ``20/100*100 = 20%``;
- known unit words right after a number (``5 cm``, ``18 dollars``) and currency signs are dropped
  but compared (``2 hours = 120 minutes`` is a conversion, not a claim); words naming what a
  number counts before an operator (``18 pink - 6``) are dropped; other words break; ``times``,
  ``plus``, ``minus``, ``divided by`` and ``of`` after a percentage or fraction are operators;
- math that is not a whole expression is not read: after an unknown LaTeX command or symbol
  (``\\dots + 10 = 55``), after a scaling word (``half of 10 = 5``), after a run ending in an
  operator (``25 + shoe size 5 = 30``);
- thousands separators (``1,000``) are removed; decimals stay decimals in the strings and are
  exact rationals when checked;
- ``x = 5 solves 2x + 1 = 11``: when a step binds a symbol to a constant exactly once and also
  states an equation in that symbol, a substituted claim ``2*(5) + 1 = 11`` is added (only with a
  cue word such as "solves", "satisfies", "substituting"; not in steps that negate: "not",
  "extraneous", ...);
- text with two meanings is read the first way and the claim carries the others in
  ``Extraction.readings`` (``2\\frac{1}{2}`` as 2 * 1/2, ``[x]`` as the integer part, a bare
  ``log`` as base 10, ``a ÷ b = q`` before "remainder r" as ``a = b*q + r``, ``a mod n = b`` and
  an ``=`` with a modulus right after it as congruences); a checker counts the claim false only
  when every reading is false;
- a claim is ``rounded`` when its relation is ``≈``/``~``/``\\approx``, when ``about``,
  ``approximately``, ... follows the relation, or when the step says it rounds ("round",
  "rounded", "nearest").

Nothing here evaluates anything; the parser is a small recursive-descent parser over a token
whitelist (no ``eval``), with nesting and size limits so hostile text cannot hang it.

The package, along its seams (each module imports only those listed before it):

- :mod:`.tokens`: the token types and the tokenizer (plain text and LaTeX math mode);
- :mod:`.segments`: where the LaTeX math regions of a step are, and which ``$`` are money;
- :mod:`.parse`: tokens -> expression tree -> plain string, and the other readings of a tree;
- :mod:`.extraction`: claims with spans, readings and cues (:func:`extract`, :func:`extract_claims`).

The public names are re-exported here: ``from labelers.verify.claims import extract_claims``.
"""

from labelers.verify.claims.extraction import (
    MAX_CLAIMS_PER_STEP,
    MAX_STEP_CHARS,
    Claim,
    Extraction,
    RejectedClaim,
    extract,
    extract_claims,
)
from labelers.verify.claims.parse import (
    READ_AS_CONGRUENCE,
    READ_AS_INTEGER_PART,
    READ_AS_LOG10,
    READ_AS_PRODUCT,
    READ_AS_QUOTIENT,
    free_symbols,
    parse_plain,
    substitute,
    to_plain,
)
from labelers.verify.claims.tokens import (
    FUNCTIONS,
    MAX_NESTING,
    MAX_NUMBER_DIGITS,
    RELATIONS,
    UNITS,
    ParseError,
    Token,
)

__all__ = [
    "FUNCTIONS",
    "MAX_CLAIMS_PER_STEP",
    "MAX_NESTING",
    "MAX_NUMBER_DIGITS",
    "MAX_STEP_CHARS",
    "READ_AS_CONGRUENCE",
    "READ_AS_INTEGER_PART",
    "READ_AS_LOG10",
    "READ_AS_PRODUCT",
    "READ_AS_QUOTIENT",
    "RELATIONS",
    "UNITS",
    "Claim",
    "Extraction",
    "ParseError",
    "RejectedClaim",
    "Token",
    "extract",
    "extract_claims",
    "free_symbols",
    "parse_plain",
    "substitute",
    "to_plain",
]
