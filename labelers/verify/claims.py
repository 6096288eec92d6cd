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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Limits that keep extraction linear and bounded on hostile text.
MAX_STEP_CHARS = 100_000  # text beyond this is not scanned for claims
MAX_NESTING = 100  # parentheses / LaTeX groups deeper than this are rejected
MAX_NUMBER_DIGITS = 1_000  # a literal longer than this is rejected
MAX_CLAIMS_PER_STEP = 200

RELATIONS = ("=", "<", ">", "<=", ">=", "!=")
FUNCTIONS = ("sqrt", "sin", "cos", "tan", "log", "ln", "exp", "factorial")

# Unit and currency words dropped when they directly follow a number (or ")" / "%").
UNITS = frozenset(
    """
    cm mm km meter meters metre metres kilometer kilometers kilometre kilometres centimeter
    centimeters millimeter millimeters inch inches ft foot feet yd yard yards mi mile miles
    kg mg gram grams kilogram kilograms lb lbs pound pounds oz ounce ounces ton tons
    ml liter liters litre litres gallon gallons gal quart quarts pint pints cup cups
    sec secs second seconds min mins minute minutes hr hrs hour hours day days week weeks
    month months year years yr yrs
    dollar dollars cent cents usd euro euros
    mph kph km/h sq square cubic units unit degree degrees
    """.split()
)
_WORD_OPERATORS = {"times": "*", "plus": "+", "minus": "-"}
# Words that scale the number after them: that number is not a claim's whole left side.
_QUANTIFIERS = frozenset(
    """twice double triple thrice quadruple half halves quarter quarters third thirds fourth fourths
    fifth fifths sixth sixths tenth tenths""".split()
)
# Up to two more words, then a binary operator ("-" only as a minus, not a hyphen).
_LABEL_BEFORE_OPERATOR = re.compile(r"(?:\s+[A-Za-z]+(?:['’][A-Za-z]+)?){0,2}\s*(?:[*×·/÷+]|-(?=[\s\d$(]))")
_APPROX_WORDS = frozenset({"about", "approximately", "approx", "roughly", "around", "nearly"})
# "round" as a verb only: "a round trip" or "3 rounds of golf" must not loosen the check.
_ROUNDING_CUE = re.compile(
    r"\b(?:round(?:ed|ing)?\s+(?:it\s+|this\s+|that\s+|the\s+\w+\s+)?(?:up|down|off|to)\b"
    r"|rounds\s+(?:it\s+|this\s+|that\s+)?(?:up|down|off|to)\b|nearest)",
    re.IGNORECASE,
)
_SUBSTITUTION_CUE = re.compile(
    r"\b(solves?|solution|satisf\w*|substitut\w*|plug\w*|check\w*|verif\w*)\b", re.IGNORECASE
)
# A step that says a relation is false ("which is not true", "a contradiction") states false
# relations on purpose; the checker does not count them against the step.
_DENIAL_CUE = re.compile(
    r"\b(not true|false|contradiction|contradicts|extraneous|impossible|not possible|not equal|"
    r"does not hold|doesn't hold|does not work|doesn't work|not a (solution|root)|absurd|fails|never|"
    r"cannot (?:happen|hold|be true)|"
    r"can't (?:happen|hold|be true)|no such|no (?:real |integer |positive )?solutions?)\b",
    re.IGNORECASE,
)
_HYPOTHETICAL_CUE = re.compile(r"\b(if|suppose|assume|assuming|whenever|for all|for any|for every)\b", re.IGNORECASE)
_NEGATION_CUE = re.compile(
    r"\b(not|isn't|doesn't|does not|fails?|extraneous|reject(ed)?|invalid|impossible|contradiction|none|neither|never)\b",
    re.IGNORECASE,
)

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_CODE_BLOCK = re.compile(r"```.*?(```|\Z)", re.DOTALL)
_MATH_ENV = re.compile(
    r"\\begin\{(align|equation|eqnarray|gather|multline|split|aligned|gathered)(\*?)\}(.*?)\\end\{\1\2\}",
    re.DOTALL,
)
_PLAIN_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)|\d+(?:\.\d+)?|\.\d+", re.ASCII)
# In math mode too, "15,000" is one number (steps write \\(300 \\times 50 = 15,000\\)); "1,2" is not.
_LATEX_NUMBER = re.compile(
    r"\d{1,3}(?:(?:\{,\}|,\\!)\d{3})+(?:\.\d+)?(?!\d)|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)|\d+(?:\.\d+)?|\.\d+",
    re.ASCII,
)
_WORD = re.compile(r"[A-Za-z]+")
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")  # "Janet's" is one word
_DIGITS = frozenset("0123456789")  # str.isdigit() is also true for "²" and "٣": never use it here
# Unicode superscripts: a run of them after an operand is a power ("c²", "2¹⁰", "x⁻¹").
_SUPERSCRIPTS = {
    "⁰": "0", "¹": "1", "²": "2", "³": "3", "⁴": "4", "⁵": "5", "⁶": "6", "⁷": "7", "⁸": "8", "⁹": "9",
    "⁻": "-", "⁺": "+", "⁽": "(", "⁾": ")", "ⁿ": "n", "ˣ": "x", "ʸ": "y", "ⁱ": "i", "ᵏ": "k", "ᵐ": "m",
}
_SUPERSCRIPT_POWER = re.compile(r"[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+|[ⁿˣʸⁱᵏᵐ]")
# Unicode subscripts: after a letter they are part of a symbol's name ("x₁" is x_1).
_SUBSCRIPTS = {"₀": "0", "₁": "1", "₂": "2", "₃": "3", "₄": "4", "₅": "5", "₆": "6", "₇": "7", "₈": "8", "₉": "9"}
# Words that change the number right before them ("5 squared", "1.5 million", "2 raised to"):
# that number is not a whole side, and neither is the math after the word.
_MODIFIER_WORDS = frozenset(
    """squared cubed million millions billion billions trillion trillions thousand thousands hundred
    hundreds factorial raised""".split()
)
# Words that join two numbers into one expression ("3 over 4", "3 by 4", "12 into 3"): between
# two numbers, neither number is a whole side ("10 over weekends" is prose).
_INFIX_WORDS = frozenset("over by into divides div rem".split())
# Words that take the number after them as an operand of something said before ("subtract 5
# from 12 = 7", "the sum of 3 and 5 = 8", "5 less than 12 = 7"): between two numbers, in a run
# that states no relation yet, a lone number after them is not a whole side ("increased by $20
# to $45+$20=$65" keeps its claim).
_OPERAND_WORDS = frozenset("and to from versus vs".split())
_COMPARATIVES = re.compile(r"(?:less|more|fewer|greater|smaller|larger)\s+than\b", re.IGNORECASE)
_MOD_WORDS = frozenset({"mod", "modulo"})
# "(mod 3)", "(\\bmod 3)", "(\\text{mod } 3)": a congruence's modulus, not a remark in parentheses.
_MODULUS_PAREN = re.compile(r"\(\s*(?:mod(?:ulo)?\b|\\[bp]?mod\b|\\(?:text|mathrm|operatorname)\{\s*mod\s*\})")
_BINOM_CALL = re.compile(r"\(\s*(\d{1,6})\s*,\s*(\d{1,6})\s*\)", re.ASCII)  # C(10, 3)
# A log without a base: natural or base 10 (the parser's FN value; sides carry both readings)
_LOG_EITHER_BASE = "log?"
_MIXED = "mixed"  # the operator joining a whole number and a fraction written next to it
# Text right after "a ÷ b = q" that makes q a quotient of integer division ("= 505 remainder 3",
# "= 2 \quad (quotient)", "= 6 full turns with 90 degrees remaining")
_QUOTIENT_CUE = re.compile(r"\b(?:quotients?|remainders?|remaining|left\s?over)\b|\bR\s*\d", re.IGNORECASE)
# ... and the remainder's value when it is written right after ("remainder \\(133\\)", "R 3",
# "with a remainder of 77")
_REMAINDER_VALUE = re.compile(
    r"(?:\bremainder|\bR)(?:\s|\\[()]|[${}]|\\text|\bof\b|\bis\b)*(\d+)(?!\.?\d)", re.IGNORECASE
)
_QUOTIENT_WINDOW = 80
# Words that make a step modular arithmetic, and the moduli it names ("mod 11", "\pmod{11}")
_MODULAR_CUE = re.compile(r"\bmod(?:ulo|ular)?\b|\\[bp]?mod\b|\bcongruen\w*|\bresidues?\b|\\equiv|≡", re.IGNORECASE)
# a modulus right after a claim ("= 1$ (mod 11)", "= 2$ modulo 8"), or opening a sentence
# ("Modulo 11, ...", "Working mod 7: ...")
_MODULUS_AFTER = re.compile(
    r"[\s$)\]}]*(?:\\\)|\\\])?[\s$]*\(?\s*"
    r"(?:\\[bp]?mod|\bmod(?:ulo)?|\\(?:text|mathrm)\{\s*mod\s*\})\s*\{?\s*(\d{1,12})(?!\.?\d)",
    re.IGNORECASE,
)
_MODULUS_OPENING = re.compile(r"\bmod(?:ulo)?\s+(\d{1,12})\s*[,:]", re.IGNORECASE)
# "y + 2 = 4 or y + 2 = -4", "x = \pm 3": a symbol with more than one value in the step
_DISJUNCTION = re.compile(r"\bor\b|\\pm\b|±|\\mp\b|∓")


@dataclass(frozen=True)
class Claim:
    """One checkable statement ``lhs relation rhs`` found in a step.

    ``span`` is ``(start, end)`` in the step text and ``text`` is ``step[start:end]``. ``lhs`` and
    ``rhs`` are plain expressions (decimals written as decimals: read them as exact rationals).
    ``rounded``: the step says the relation holds up to rounding. ``origin``: ``"annotation"``
    (a GSM8K ``<<...>>``), ``"text"`` or ``"substitution"``. ``percent_sides``: which sides are a
    lone percentage (``"lhs"``/``"rhs"``), which a checker may also read as the bare number.
    ``substitution``: for substituted claims, the bindings used, e.g. ``(("x", "5"),)``.
    ``exclamation_sides``: sides ending in ``n!`` at a sentence end (``120 = 5!``), where the
    ``!`` may be an exclamation mark; a checker may also read them without that factorial.
    A congruence ``a ≡ b (mod n)`` (or ``a = b mod n``) is the claim ``Mod(a, n) = Mod(b, n)``.
    """

    text: str
    span: tuple[int, int]
    lhs: str
    rhs: str
    relation: str
    rounded: bool = False
    origin: str = "text"
    percent_sides: tuple[str, ...] = ()
    substitution: tuple[tuple[str, str], ...] = ()
    exclamation_sides: tuple[str, ...] = ()
    # a relation between constants right after an implication arrow that follows an equation in
    # unknowns ("4a = 4(a-3) \Rightarrow 0 = -12"): when false, the step derives a contradiction
    derived: bool = False


@dataclass(frozen=True)
class RejectedClaim:
    """A relation that looked like a claim but did not parse, and why."""

    text: str
    span: tuple[int, int]
    reason: str


@dataclass(frozen=True)
class Extraction:
    claims: list[Claim]
    rejected: list[RejectedClaim]
    code_blocks: list[tuple[int, int]]  # spans of ``` blocks (run by the tool verifier, not parsed)
    # Parsed (lhs, rhs) trees aligned with ``claims`` (what the checker evaluates).
    sides: list[tuple[tuple, tuple]] = field(default_factory=list)
    # The step says some relation is false ("which is not true", "extraneous").
    denies: bool = False
    # Other readings the text allows, aligned with ``claims``: (name, lhs tree, rhs tree), or
    # (name, None, None) for a reading that cannot be written out (a congruence modulo a number
    # the step does not name). A checker counts a claim false only when no reading holds.
    readings: list[tuple[tuple[str, tuple | None, tuple | None], ...]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class Token:
    # NUM ID FN CALL OP LP RP REL PCT DEG BANG APPROX UNIT SEP (the comma of C(n, k) and
    # \binom), the cuts CUT / CUT1 (see _BREAKS), and two breaks: BRK (prose word,
    # punctuation, line end) and POISON (an unknown command or symbol: the math next to it is
    # not read, so "\dots + 10 = 55" or "9 \& 2 = 3" give no claim).
    kind: str
    value: str
    start: int
    end: int


class ParseError(ValueError):
    pass


_REL_CHARS = {
    "<=": "<=",
    ">=": ">=",
    "!=": "!=",
    "==": "=",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "≈": "≈",
    "≡": "≡",
    "=": "=",
    "<": "<",
    ">": ">",
}
_OP_CHARS = {
    "**": "**",
    "+": "+",
    "-": "-",
    "−": "-",
    "*": "*",
    "×": "*",
    "·": "*",
    "⋅": "*",
    "∙": "*",
    "/": "/",
    "÷": "/",
    "^": "**",
}
_LATEX_OPS = {"cdot": "*", "times": "*", "ast": "*", "div": "/"}
_LATEX_RELS = {
    "le": "<=",
    "leq": "<=",
    "leqslant": "<=",
    "ge": ">=",
    "geq": ">=",
    "geqslant": ">=",
    "ne": "!=",
    "neq": "!=",
    "lt": "<",
    "gt": ">",
    "approx": "≈",
    "sim": "≈",
    "simeq": "≈",
    "thickapprox": "≈",
    "equiv": "≡",
}
_LATEX_SPACING = frozenset(
    """left right big bigl bigr Big Bigl Bigr bigg biggl biggr Bigg Biggl Biggr quad qquad
    displaystyle textstyle limits nonumber notag hline""".split()
)
_LATEX_TEXT = frozenset({"text", "textbf", "textit", "textrm", "mbox", "mathrm", "operatorname", "textnormal"})
_LATEX_GROUP = frozenset({"boxed", "mathbf", "mathit", "displaystyle", "bm", "pmb"})
_LATEX_FRAC = frozenset({"frac", "dfrac", "tfrac", "cfrac"})
_LATEX_FUNCS = frozenset({"sin", "cos", "tan", "log", "ln", "exp"})
# Greek letters are symbols; "lambda" is a Python keyword, so it is written "lamda" (as sympy does).
_GREEK = {
    name: ("lamda" if name == "lambda" else name)
    for name in """alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda
    mu nu xi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma
    Upsilon Phi Psi Omega""".split()
}
_LATEX_SKIP_CONNECTIVES = frozenset({"Rightarrow", "implies", "Longrightarrow", "therefore", "iff", "Leftrightarrow"})
_IMPLICATIONS = frozenset({"Rightarrow", "implies", "Longrightarrow", "=>", "->"})


class _Tokenizer:
    """Turns step text into tokens with spans; LaTeX and plain text have their own rules."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[Token] = []
        self.depth = 0
        self.in_latex = False

    # -- helpers
    def emit(self, kind: str, value: str, start: int, end: int) -> None:
        self.tokens.append(Token(kind, value, start, end))

    def last_is_label(self) -> bool:
        return bool(self.tokens) and self.tokens[-1].kind == "LABEL"

    def run_has_relation(self) -> bool:
        """A relation was written since the last break ("= 120 and 28 * 5 = 140")."""
        for tok in reversed(self.tokens):
            if tok.kind in _BREAKS:
                return False
            if tok.kind == "REL":
                return True
        return False

    def binom_call(self, start: int, call: re.Match[str]) -> int:
        """``C(10, 3)``: the binomial coefficient; returns where scanning goes on."""
        self.emit("FN", "binom", start, start + 1)
        self.emit("LP", "(", call.start(), call.start() + 1)
        self.emit("NUM", call.group(1), call.start(1), call.end(1))
        self.emit("SEP", ",", call.end(1), call.start(2))
        self.emit("NUM", call.group(2), call.start(2), call.end(2))
        self.emit("RP", ")", call.end() - 1, call.end())
        return call.end()

    def after_fraction(self) -> bool:
        """The last tokens are ``NUM / NUM`` (a fraction written in prose: "1/2 of ...")."""
        kinds = [t for t in self.tokens if t.kind != "UNIT"][-3:]
        return len(kinds) == 3 and kinds[0].kind == "NUM" and kinds[1].value == "/" and kinds[2].kind == "NUM"

    def prev_kind(self) -> str | None:
        for tok in reversed(self.tokens):
            if tok.kind not in ("UNIT", "LABEL"):
                return tok.kind
        return None

    def next_nonspace(self, i: int, end: int) -> str:
        while i < end and self.text[i] in " \t":
            i += 1
        return self.text[i] if i < end else ""

    def word(self, word: str, start: int, end: int, stop: int, latex: bool) -> int:
        """A word of prose (or of \\text{...}): a unit after a number, a function, or a break.

        Returns where scanning goes on (after a unit's power: "cm^2", "m²")."""
        low = word.lower()
        prev = self.prev_kind()
        if prev in ("NUM", "RP", "PCT") and low in UNITS:
            self.emit("UNIT", low.rstrip("s") or low, start, end)  # stripped, but compared
            power = re.match(r"\^\{?[23]\}?|[²³]", self.text[end:stop])
            return end + power.end() if power else end
        last = self.tokens[-1].kind if self.tokens else None
        if low in _MOD_WORDS and last in ("NUM", "RP", "ID", "BANG", "LP"):
            self.emit("OP", "mod", start, end)  # "9 mod 3", "(mod 7)"
            return end
        if low == "choose" and last in ("NUM", "RP", "ID", "BANG"):
            self.emit("OP", "choose", start, end)  # "101 choose 2"
            return end
        operand_next = self.next_nonspace(end, stop)[:1] in _DIGITS | {"(", "$", "."}
        if prev in ("NUM", "RP", "PCT", "ID", "BANG") and (
            low in _MODIFIER_WORDS or (low in _INFIX_WORDS and operand_next)
        ):
            # "25 = 5 squared", "3 over 4", "1.5 million": neither neighbour is a whole side
            self.emit("POISON", low, start, end)
            return end
        if not latex and prev in ("NUM", "RP", "PCT", "BANG") and not self.run_has_relation():
            comparative = _COMPARATIVES.match(self.text, start, stop)
            if comparative is not None or (low in _OPERAND_WORDS and operand_next):
                # "the sum of 3 and 5 = 8", "subtract 5 from 12 = 7", "5 less than 12 = 7":
                # a lone 5 / 12 / 12 after the words is not a whole side
                stop_at = comparative.end() if comparative is not None else end
                self.emit("CUT1", low, start, stop_at)
                return stop_at
        if (
            not latex
            and len(word) >= 2
            and start > 0
            and self.text[start - 1].isspace()
            and (prev in ("NUM", "RP", "PCT") or self.last_is_label())
            and _LABEL_BEFORE_OPERATOR.match(self.text, end, stop)
        ):
            # "18 pink - 6", "4 dozen eggs * 12", "44 seniors * $24": words naming what a
            # number counts, right before an operator, are labels (dropped, not compared).
            if not (low == "x" or low in _WORD_OPERATORS or low in _QUANTIFIERS or low == "divided"):
                self.emit("LABEL", low, start, end)
                return end
        if low in _APPROX_WORDS and prev == "REL":
            self.emit("APPROX", low, start, end)
            return end
        if not latex:
            nxt = self.next_nonspace(end, stop)
            operand_before = prev in ("NUM", "RP", "PCT", "ID")
            operand_after = nxt.isdigit() or (nxt != "" and nxt in "($.")
            if low == "x" and prev in ("NUM", "RP", "PCT") and operand_after:
                self.emit("OP", "*", start, end)  # "3 x 4" is a product in prose
                return end
            if low in _WORD_OPERATORS and operand_before and operand_after:
                self.emit("OP", _WORD_OPERATORS[low], start, end)  # "3 times 4", "5 plus 2"
                return end
            if low == "divided" and operand_before:
                by = re.match(r"\s+by\b", self.text[end:stop])
                if by and self.next_nonspace(end + by.end(), stop)[:1].isdigit():
                    self.emit("OP", "/", start, end + by.end())
                    return end + by.end()
            if low in ("divided", "multiplied"):
                by = re.match(r"\s+by\b", self.text[end:stop])
                if by:
                    # "45 is divided by 11 = 1": a lone 11 after it is not a whole side
                    self.emit("CUT1", low, start, end + by.end())
                    return end + by.end()
            if low == "percent" and prev == "NUM":
                self.emit("PCT", "%", start, end)
                return end
            if low == "of" and operand_after and (prev in ("PCT", "RP") or self.after_fraction()):
                self.emit("OP", "*", start, end)  # "20% of 50", "1/2 of 10"
                return end
            if low == "of" and prev in ("PCT", "RP") or (low == "of" and self.after_fraction()):
                # "20% of the 50 = 10": the number after the words is not the left side
                self.emit("CUT", low, start, end)
                return end
            if low in _QUANTIFIERS:
                # "half of 10 = 5", "twice 6 = 12": the number after the word is not the
                # whole left side, so the next run's first side is not read.
                self.emit("CUT", low, start, end)
                return end
            if low in FUNCTIONS and nxt == "(":
                self.emit("FN", _LOG_EITHER_BASE if low == "log" else low, start, end)
                return end
            if low == "pi":
                self.emit("ID", "pi", start, end)
                return end
            if len(word) == 1:
                call = _BINOM_CALL.match(self.text, end, stop) if word == "C" else None
                if call is not None:
                    return self.binom_call(start, call)
                if end < stop and self.text[end] == "(":
                    self.emit("CALL", word, start, end)  # f(3): a function value, not f*3
                else:
                    self.emit("ID", word, start, end)
                return end
        self.emit("BRK", word, start, end)
        return end

    # -- plain text
    def plain(self, start: int, end: int, annotations: list[tuple[int, int]]) -> None:
        text = self.text
        ann_starts = {a: b for a, b in annotations}
        i = start
        while i < end:
            c = text[i]
            if i in ann_starts:
                i = ann_starts[i]  # annotations are claims of their own and invisible here
                continue
            if c in " \t\r":
                i += 1
                continue
            if c == "\n":
                self.emit("BRK", "\n", i, i + 1)
                i += 1
                continue
            if c in "-*•" and _is_bullet(text, i, end):
                self.emit("BRK", c, i, i + 1)  # "- 10 = 2 * 5" in a list: a bullet, not a minus
                i += 1
                continue
            if c in _DIGITS or (c == "." and i + 1 < end and text[i + 1] in _DIGITS and not (i > 0 and text[i - 1] in _DIGITS)):
                m = _PLAIN_NUMBER.match(text, i, end)
                if m is None:  # cannot happen for an ASCII digit; never let odd text raise
                    raise ParseError(f"unreadable number at {i}")
                self.number(m.group(0).replace(",", ""), i, m.end())
                i = m.end()
                continue
            if c.isalpha() and c.isascii():
                m = _PLAIN_WORD.match(text, i, end)
                if m is None:
                    raise ParseError(f"unreadable word at {i}")
                i = self.word(m.group(0), i, m.end(), end, latex=False)
                continue
            i = self.symbol(i, end)

    def number(self, digits: str, start: int, end: int) -> None:
        if len(digits) > MAX_NUMBER_DIGITS:
            self.emit("BRK", "number too long", start, end)
        else:
            self.emit("NUM", digits, start, end)

    def symbol(self, i: int, end: int) -> int:
        """Operators, relations, brackets and punctuation shared by both modes."""
        text = self.text
        two = text[i : i + 2]
        c = text[i]
        if two == "!=" and self.tokens and self.tokens[-1].end == i and self.tokens[-1].kind in ("NUM", "RP"):
            if self.in_latex:  # "$7!\\times 2!=10$": LaTeX writes "not equal" as \\neq
                self.emit("BANG", "!", i, i + 1)
                self.emit("REL", "=", i + 1, i + 2)
            else:  # "3!=6": 3! = 6 or 3 != 6? not guessed
                self.poison_previous_number(i)
                self.emit("POISON", "!=", i, i + 2)
            return i + 2
        if two in ("<=", ">=", "!=", "=="):
            self.emit("REL", _REL_CHARS[two], i, i + 2)
            return i + 2
        if two in ("=>", "->"):
            self.emit("BRK", two, i, i + 2)
            return i + 2
        if c == "*" and self.prev_kind() not in ("NUM", "ID", "RP", "PCT", "BANG", "DEG"):
            # Nothing to multiply on the left. "**Total:**", "*so*" are markdown emphasis (a star
            # touching a word on one side only); "apples * 3" or "'a'*10" multiply something
            # unknown, so the math after it is not read.
            stop = i + 2 if two == "**" else i + 1
            before = text[i - 1] if i > 0 else " "
            after = text[stop] if stop < end else " "
            opening = (before.isspace() or before in "([") and (after.isalnum() or after in "$\\")
            closing = (before.isalnum() or before in ":.!?)") and (after.isspace() or after in ",.;:!?)")
            markdown = (opening or closing) and self.prev_kind() != "POISON"
            self.emit("BRK" if markdown else "POISON", text[i:stop], i, stop)
            return stop
        if two == "**":
            self.emit("OP", "**", i, i + 2)
            return i + 2
        if c in _REL_CHARS:
            self.emit("REL", _REL_CHARS[c], i, i + 1)
            return i + 1
        if c == "~" or c == "∼":
            self.emit("REL", "≈", i, i + 1)
            return i + 1
        if c in _OP_CHARS:
            self.emit("OP", _OP_CHARS[c], i, i + 1)
            return i + 1
        if c in "([":
            if (
                not self.in_latex
                and self.prev_kind() in ("NUM", "PCT")
                and i > 0
                and text[i - 1].isspace()
                and not _MODULUS_PAREN.match(text, i, end)
            ):
                # "= 4 (15 minutes)": a remark in parentheses after a number, not a product;
                # "1/2 (68) + 10": what follows is not a whole expression either
                self.emit("CUT", "", i, i)
            self.emit("LP", c, i, i + 1)
            return i + 1
        if c in ")]":
            self.emit("RP", c, i, i + 1)
            return i + 1
        if c == "%":
            self.emit("PCT", "%", i, i + 1)
            return i + 1
        if c in "$€£":
            # Currency signs are dropped but compared like units ("$0.054 = 5.4 cents" is a
            # conversion, not arithmetic).
            self.emit("UNIT", {"$": "dollar", "€": "euro", "£": "pound"}[c], i, i + 1)
            return i + 1
        if c == "!":
            nxt = self.next_nonspace(i + 1, end)
            attached = bool(self.tokens) and self.tokens[-1].end == i and self.tokens[-1].kind in ("NUM", "RP", "BANG")
            after = text[i + 1] if i + 1 < end else ""
            if self.prev_kind() in ("NUM", "RP") and nxt and nxt in "=<>+-*/)^×·≤≥≠":
                self.emit("BANG", "!", i, i + 1)
            elif attached and self.in_latex:
                self.emit("BANG", "!", i, i + 1)  # math mode has no exclamation marks
            elif attached and (after == "" or after.isspace() or after in ".,;:?$"):
                # "120 = 5!": a factorial or an exclamation mark; the checker tries both
                self.emit("BANG", "!?", i, i + 1)
            elif attached:
                # "5!!", "3!x": notation not read; the number is not a whole side
                self.poison_previous_number(i)
                self.emit("POISON", "!", i, i + 1)
            elif after in _DIGITS or after == "(":
                # "!5 = 44": the subfactorial (derangements), a notation not read
                self.emit("POISON", "!", i, i + 1)
            else:
                self.emit("BRK", "!", i, i + 1)
            return i + 1
        if c == "√":
            self.emit("FN", "sqrt", i, i + 1)
            return i + 1
        if c in _SUPERSCRIPTS:
            return self.superscript_run(i, end)
        if c in _SUBSCRIPTS:
            return self.subscript_run(i, end)
        if c == "\\" and not self.in_latex:
            m = re.match(r"\\(b?mod|pmod|binom|dbinom|tbinom|choose|equiv|cdot|times|div)(?![A-Za-z])", text[i:end])
            if m:
                return self.command(i, end)  # LaTeX notation written outside $...$
        if c == "π":
            self.emit("ID", "pi", i, i + 1)
            return i + 1
        if c == "°":
            self.emit("DEG", "°", i, i + 1)
            return i + 1
        if c in "'’" and 0 < i < end - 1 and text[i - 1].isalpha() and text[i + 1].isalpha():
            self.emit("BRK", c, i, i + 1)  # an apostrophe inside a word ("Janet's")
            return i + 1
        if c in ",;:?.\"“”" or c.isspace():
            self.emit("BRK", c, i, i + 1)
        else:
            self.emit("POISON", c, i, i + 1)
        return i + 1

    def superscript_run(self, i: int, end: int) -> int:
        """``c²``, ``2¹⁰``, ``x⁻¹``, ``aⁿ``: a power of the operand right before; else unknown."""
        text = self.text
        m = _SUPERSCRIPT_POWER.match(text, i, end)
        last = self.tokens[-1] if self.tokens else None
        if m is None or last is None or last.end != i or last.kind not in ("NUM", "ID", "RP", "BANG"):
            j = i
            while j < end and text[j] in _SUPERSCRIPTS:
                j += 1
            self.poison_previous_number(i)
            self.emit("POISON", text[i:j], i, j)
            return j
        power = "".join(_SUPERSCRIPTS[ch] for ch in m.group(0))
        stop = m.end()
        self.emit("OP", "**", i, i)
        self.emit("LP", "(", i, i)
        if power[0] in "+-":
            self.emit("OP", power[0], i, i + 1)
            power = power[1:]
        self.emit("ID" if power.isalpha() else "NUM", power, i, stop)
        self.emit("RP", ")", stop, stop)
        return stop

    def subscript_run(self, i: int, end: int) -> int:
        """``x₁`` is the symbol x_1; a subscript on anything else (``110₂``) is not read."""
        text = self.text
        j = i
        while j < end and text[j] in _SUBSCRIPTS:
            j += 1
        last = self.tokens[-1] if self.tokens else None
        if last is not None and last.end == i and last.kind in ("ID", "CALL") and last.value != "pi":
            self.tokens.pop()
            name = last.value + "_" + "".join(_SUBSCRIPTS[ch] for ch in text[i:j])
            self.emit("CALL" if text[j : j + 1] == "(" else "ID", name, last.start, j)
            return j
        self.poison_previous_number(i)
        self.emit("POISON", text[i:j], i, j)
        return j

    def poison_previous_number(self, i: int) -> None:
        """Replace a number written right before text[i] by a POISON token."""
        if self.tokens and self.tokens[-1].kind == "NUM" and self.tokens[-1].end == i:
            last = self.tokens.pop()
            self.emit("POISON", last.value, last.start, last.end)

    def skip_argument(self, i: int, end: int) -> int:
        """Index after the macro argument starting at text[i] (a brace group or one character)."""
        if i >= end:
            return i
        try:
            return self.argument(i, end)[2]
        except ParseError:
            return i + 1

    # -- LaTeX
    def latex(self, start: int, end: int) -> None:
        """Tokens of the LaTeX text[start:end] (math mode)."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.depth -= 1
            raise ParseError(f"LaTeX nested deeper than {MAX_NESTING}")
        text = self.text
        self.in_latex = True
        i = start
        while i < end:
            c = text[i]
            if c.isspace() or c == "&":
                i += 1
                continue
            if c in _DIGITS or (c == "." and i + 1 < end and text[i + 1] in _DIGITS):
                m = _LATEX_NUMBER.match(text, i, end)
                if m is None:
                    raise ParseError(f"unreadable number at {i}")
                self.number(m.group(0).replace("{,}", "").replace(",\\!", "").replace(",", ""), i, m.end())
                i = m.end()
                continue
            if c.isalpha() and c.isascii():
                call = _BINOM_CALL.match(text, i + 1, end) if c == "C" else None
                if call is not None:
                    i = self.binom_call(i, call)
                    continue
                # In math mode each letter is a symbol; x_1 / x_{12} are one symbol.
                j = i + 1
                name = c
                if j < end and text[j] == "_":
                    sub = re.match(r"_(\{[A-Za-z0-9]{1,8}\}|[A-Za-z0-9])", text[j:end])
                    if sub is None:
                        self.emit("POISON", "_", j, j + 1)
                        i = self.skip_argument(j + 1, end)
                        continue
                    name = c + "_" + sub.group(1).strip("{}")
                    j += sub.end()
                self.emit("CALL" if text[j : j + 1] == "(" else "ID", name, i, j)
                i = j
                continue
            if c == "\\":
                i = self.command(i, end)
                continue
            if c == "{":
                close = self.group_end(i, end)
                self.emit("LP", "{", i, i + 1)
                self.latex(i + 1, close - 1)
                self.emit("RP", "}", close - 1, close)
                i = close
                continue
            if c == "^":
                i = self.superscript(i, end)
                continue
            if c == "_":
                # a subscript on a number or a command: a base (110_2) or a log base (\log_2)
                self.poison_previous_number(i)
                self.emit("POISON", "_", i, i + 1)
                i = self.skip_argument(i + 1, end)
                continue
            if c == "." and text[i + 1 : i + 2] == "\\":
                # "0.\overline{3}": a decimal the reader cannot write out
                self.poison_previous_number(i)
                self.emit("POISON", ".", i, i + 1)
                i += 1
                continue
            i = self.symbol(i, end)
        self.depth -= 1
        self.in_latex = self.depth > 0

    def group(self, start: int, end: int) -> None:
        """The LaTeX text[start:end] as one parenthesized operand (a \\frac or \\binom argument)."""
        self.emit("LP", "(", start, start)
        self.latex(start, end)
        self.emit("RP", ")", end, end)

    def group_end(self, i: int, end: int) -> int:
        """Index just past the brace group opening at text[i] == '{' (or end if unbalanced)."""
        depth = 0
        text = self.text
        j = i
        while j < end:
            ch = text[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ParseError("unbalanced braces")

    def argument(self, i: int, end: int) -> tuple[int, int, int]:
        """The next macro argument after text[i]: (inner_start, inner_end, next_index)."""
        text = self.text
        while i < end and text[i].isspace():
            i += 1
        if i >= end:
            raise ParseError("missing argument")
        if text[i] == "{":
            close = self.group_end(i, end)
            return i + 1, close - 1, close
        if text[i] == "\\":
            m = re.match(r"\\[A-Za-z]+", text[i:end])
            stop = i + (m.end() if m else 2)
            return i, stop, stop
        return i, i + 1, i + 1

    def superscript(self, i: int, end: int) -> int:
        text = self.text
        j = i + 1
        rest = text[j:end].lstrip()
        j = end - len(rest)
        if (rest.startswith("\\circ") or rest.startswith("{\\circ}")) and _after_power(text, i):
            # "2^4^\circ": 2^4 degrees or 2 to the 4 degrees; not guessed
            self.poison_previous_number(i)
            self.emit("POISON", "^\\circ", i, j + (5 if rest.startswith("\\circ") else 7))
            return j + (5 if rest.startswith("\\circ") else 7)
        if rest.startswith("\\circ") or rest.startswith("{\\circ}"):
            self.emit("DEG", "°", i, j + (5 if rest.startswith("\\circ") else 7))
            return j + (5 if rest.startswith("\\circ") else 7)  # degrees: times pi/180
        if self.tokens and self.tokens[-1].kind == "UNIT":
            return self.skip_argument(j, end)  # "\text{ cm}^2": the unit's power
        if re.match(r"\d\d", rest):
            # $2^10$ renders as 2^1 0; the writer's intent is unclear, so no claim here.
            self.emit("BRK", "^", i, i + 1)
            return i + 1
        a, b, nxt = self.argument(j, end)
        self.emit("OP", "**", i, i + 1)
        self.emit("LP", "{", a, a)
        self.latex(a, b)
        self.emit("RP", "}", b, nxt)
        return nxt

    def command(self, i: int, end: int) -> int:
        text = self.text
        m = re.match(r"\\([A-Za-z]+|.)", text[i:end])
        if m is None:
            self.emit("BRK", "\\", i, i + 1)
            return i + 1
        name = m.group(1)
        j = i + m.end()
        if name == "\\":
            # Line break; in align environments "\\ &= ..." continues the chain.
            if re.match(r"\s*(\[[^\]]*\])?\s*&\s*(=|<|>|\\le|\\ge|\\approx|\\ne)", text[j:end]):
                return j
            self.emit("BRK", "\\\\", i, j)
            return j
        if name in (",", ";", ":", "!", " ") or name in _LATEX_SPACING:
            if name in ("left", "right") and text[j : j + 1] == ".":
                return j + 1
            if name in ("left", "right") and text[j : j + 1] == "\\":
                m2 = re.match(r"\\([{}|]|[A-Za-z]+)", text[j:end])
                if m2 and m2.group(1) in ("{", "}"):
                    self.emit("LP" if m2.group(1) == "{" else "RP", m2.group(1), j, j + m2.end())
                    return j + m2.end()
            return j
        if name in _LATEX_FRAC:
            a1, b1, n1 = self.argument(j, end)
            a2, b2, n2 = self.argument(n1, end)
            prev = self.tokens[-1] if self.tokens else None
            if (
                prev is not None
                and prev.kind == "NUM"
                and "." not in prev.value
                and not text[prev.end : i].strip()
                and text[a1:b1].strip().isdigit()
                and text[a2:b2].strip().isdigit()
            ):
                # "4\frac{5}{8}" is the mixed number 4 + 5/8, or 4 times 5/8 ("2\frac{1}{2}" for
                # 2 * 1/2): the side carries both readings (_side_readings)
                self.tokens.pop()
                self.emit("LP", "(", prev.start, prev.start)
                self.emit("NUM", prev.value, prev.start, prev.end)
                self.emit("OP", _MIXED, prev.end, i)
                self.emit("NUM", text[a1:b1].strip(), a1, b1)
                self.emit("OP", "/", b1, a2)
                self.emit("NUM", text[a2:b2].strip(), a2, b2)
                self.emit("RP", ")", b2, n2)
                return n2
            self.emit("LP", "(", i, j)
            self.group(a1, b1)
            self.emit("OP", "/", b1, a2)
            self.group(a2, b2)
            self.emit("RP", ")", b2, n2)
            return n2
        if name == "sqrt":
            index: tuple[int, int] | None = None
            k = j
            if text[k : k + 1] == "[":
                close = text.find("]", k, end)
                if close < 0:
                    raise ParseError("unbalanced \\sqrt[")
                index = (k + 1, close)
                k = close + 1
            a, b, nxt = self.argument(k, end)
            if index is None:
                self.emit("FN", "sqrt", i, j)
                self.emit("LP", "(", a, a)
                self.latex(a, b)
                self.emit("RP", ")", b, nxt)
            else:
                self.emit("LP", "(", i, j)
                self.emit("LP", "(", a, a)
                self.latex(a, b)
                self.emit("RP", ")", b, b)
                self.emit("OP", "**", b, b)
                self.emit("LP", "(", index[0], index[0])
                self.emit("NUM", "1", index[0], index[0])
                self.emit("OP", "/", index[0], index[0])
                self.emit("LP", "(", index[0], index[0])
                self.latex(index[0], index[1])
                self.emit("RP", ")", index[1], index[1])
                self.emit("RP", ")", index[1], index[1])
                self.emit("RP", ")", nxt - 1, nxt)
            return nxt
        if name in _LATEX_OPS:
            self.emit("OP", _LATEX_OPS[name], i, j)
            return j
        if name in ("bmod", "mod"):
            self.emit("OP", "mod", i, j)
            return j
        if name == "pmod":
            a, b, nxt = self.argument(j, end)
            self.emit("LP", "(", i, i)
            self.emit("OP", "mod", i, j)
            self.emit("LP", "(", a, a)
            self.latex(a, b)
            self.emit("RP", ")", b, nxt)
            self.emit("RP", ")", nxt, nxt)
            return nxt
        if name == "choose":
            self.emit("OP", "choose", i, j)
            return j
        if name in ("binom", "dbinom", "tbinom"):
            a1, b1, n1 = self.argument(j, end)
            a2, b2, n2 = self.argument(n1, end)
            self.emit("FN", "binom", i, j)
            self.emit("LP", "(", i, j)
            self.group(a1, b1)
            self.emit("SEP", ",", b1, a2)
            self.group(a2, b2)
            self.emit("RP", ")", b2, n2)
            return n2
        if name in _LATEX_RELS:
            self.emit("REL", _LATEX_RELS[name], i, j)
            return j
        if name == "pi":
            self.emit("ID", "pi", i, j)
            return j
        if name in _GREEK:
            k = j
            symbol = _GREEK[name]
            sub = re.match(r"_(\{[A-Za-z0-9]{1,8}\}|[A-Za-z0-9])", text[k:end])
            if sub:
                symbol += "_" + sub.group(1).strip("{}")
                k += sub.end()
            self.emit("CALL" if text[k : k + 1] == "(" else "ID", symbol, i, k)
            return k
        if name == "degree":
            self.emit("DEG", "°", i, j)
            return j
        if name in _LATEX_SKIP_CONNECTIVES:
            self.emit("BRK", name, i, j)
            return j
        if name in _LATEX_FUNCS:
            if name == "log" and text[j : j + 1] != "_":
                self.emit("FN", _LOG_EITHER_BASE, i, j)  # "\log 100 = 2": base e or 10
                return j
            self.emit("FN", "log" if name == "ln" else name, i, j)
            return j
        if name == "%":
            self.emit("PCT", "%", i, j)
            return j
        if name == "$":
            self.emit("UNIT", "dollar", i, j)  # money sign
            return j
        if name in _LATEX_TEXT:
            a, b, nxt = self.argument(j, end)
            content = text[a:b]
            for w in _WORD.finditer(content):
                self.word(w.group(0), a + w.start(), a + w.end(), b, latex=True)
            if not content.strip():
                return nxt
            if re.search(r"[^A-Za-z\s]", content):
                self.emit("BRK", content, a, b)
            return nxt
        if name in _LATEX_GROUP:
            if j < end and text[j:].lstrip().startswith("{"):
                a, b, nxt = self.argument(j, end)
                self.emit("LP", "{", a, a)
                self.latex(a, b)
                self.emit("RP", "}", b, nxt)
                return nxt
            return j
        if name in ("begin", "end"):
            if text[j : j + 1] == "{":
                close = self.group_end(j, end)
                self.emit("BRK", name, i, close)
                return close
        # Unknown command (\dots, \binom, \overline, \star, \pm, ...): its arguments are
        # skipped and the math touching it is not read.
        self.poison_previous_number(i)
        self.emit("POISON", "\\" + name, i, j)
        while j < end and text[j] == "{":
            j = self.group_end(j, end)
        return j


def _money_or_math_dollars(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans (inner) of tight ``$...$`` pairs; a ``$`` that opens no tight pair is money."""
    spans: list[tuple[int, int]] = []

    def find(sub: str, at: int) -> int:
        """Next unescaped occurrence (``\\$`` is a literal dollar sign inside math)."""
        k = text.find(sub, at, end)
        while k > 0 and text[k - 1] == "\\":
            k = text.find(sub, k + 1, end)
        return k

    i = find("$", start)
    while 0 <= i < end:
        if text.startswith("$$", i):
            close = find("$$", i + 2)
            if close > i + 2:
                spans.append((i + 2, close))
                i = find("$", close + 2)
                continue
            i = find("$", i + 2)
            continue
        close = find("$", i + 1)
        # A "$" right before a digit is a money sign ("$140-$14 = $126"), never a closing one.
        while close >= 0 and text[close + 1 : close + 2].isdigit():
            close = find("$", close + 1)
        if close < 0:
            break
        inner = text[i + 1 : close]
        if inner and not inner[0].isspace() and not inner[-1].isspace() and "\n\n" not in inner and "<<" not in inner:
            spans.append((i + 1, close))
            i = find("$", close + 1)
        else:
            i = close  # this "$" is money; the next one may open a pair
    return spans


def _math_segments(text: str, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """LaTeX math regions as (outer_start, outer_end, inner_start, inner_end), sorted."""
    regions: list[tuple[int, int, int, int]] = []
    taken: list[tuple[int, int]] = []

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    for m in _MATH_ENV.finditer(text, start, end):
        regions.append((m.start(), m.end(), m.start(3), m.end(3)))
        taken.append((m.start(), m.end()))
    for open_, close_ in (("\\[", "\\]"), ("\\(", "\\)")):
        i = text.find(open_, start, end)
        while i >= 0:
            j = text.find(close_, i + 2, end)
            if j < 0:
                break
            if free(i, j + 2):
                regions.append((i, j + 2, i + 2, j))
                taken.append((i, j + 2))
            i = text.find(open_, j + 2, end)
    # $...$ pairs outside the regions found so far
    pos = start
    gaps: list[tuple[int, int]] = []
    for s, e in sorted(taken):
        if s > pos:
            gaps.append((pos, s))
        pos = max(pos, e)
    if pos < end:
        gaps.append((pos, end))
    for gs, ge in gaps:
        for a, b in _money_or_math_dollars(text, gs, ge):
            delim = 2 if text.startswith("$$", a - 2) and a - 2 >= gs else 1
            regions.append((a - delim, b + delim, a, b))
    regions.sort()
    return regions


# ---------------------------------------------------------------------------------------------
# Parser: tokens -> expression tree (tuples) -> plain string


def _is_atom_start(tok: Token) -> bool:
    return tok.kind in ("NUM", "ID", "FN", "CALL", "LP")


class _Parser:
    """choice := expr ('choose' expr)?; expr := term (('+'|'-') term)*;
    term := unary (('*'|'/'|'mod'|implicit) unary)*; unary := ('-'|'+') unary | power;
    power := postfix ('**' unary)?; postfix := atom ('%'|'!')*;
    atom := NUM | ID | FN atom | binom '(' choice ',' choice ')' | '(' choice ')'.

    ``choose`` binds loosest ("99+3-1 choose 3-1" reads as (101) choose (2)); a side where that
    or ``mod`` next to ``+``/``-`` could be read two ways is refused before parsing
    (:func:`_ambiguous`)."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> tuple:
        if not self.tokens:
            raise ParseError("empty side")
        tree = self.choice()
        if self.pos != len(self.tokens):
            raise ParseError(f"unexpected {self.tokens[self.pos].value!r}")
        return tree

    def expect(self, kind: str) -> None:
        t = self.peek()
        if t is None or t.kind != kind:
            raise ParseError(f"expected {kind}, got {t.value if t else 'the end'!r}")
        self.pos += 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ParseError(f"nested deeper than {MAX_NESTING}")

    def choice(self) -> tuple:
        left = self.expr()
        t = self.peek()
        if t is not None and t.kind == "OP" and t.value == "choose":
            self.pos += 1
            right = self.expr()
            return ("binom", left, right)
        return left

    def expr(self) -> tuple:
        self.enter()
        left = self.term()
        while (t := self.peek()) is not None and t.kind == "OP" and (t.value in ("+", "-", _MIXED)):
            self.pos += 1
            right = self.term()
            left = ({"+": "add", "-": "sub", _MIXED: "mixed"}[t.value], left, right)
        self.depth -= 1
        return left

    def term(self) -> tuple:
        left = self.unary()
        while (t := self.peek()) is not None:
            if t.kind == "OP" and t.value in ("*", "/", "mod"):
                self.pos += 1
                right = self.unary()
                left = ({"*": "mul", "/": "div", "mod": "mod"}[t.value], left, right)
            elif _is_atom_start(t) and not (t.kind == "NUM" and self.tokens[self.pos - 1].kind in ("NUM", "PCT")):
                # implicit product: 2x, 3\sqrt{13}, (a)(b), xy; never "3 4"; brackets in one
                # ("\frac{1}{2}[a - b]") only group
                right = self.power()
                left = ("mul", _unbracket(left), _unbracket(right))
            else:
                break
        return left

    def unary(self) -> tuple:
        t = self.peek()
        if t is not None and t.kind == "OP" and t.value in ("-", "+"):
            self.pos += 1
            self.enter()
            operand = self.unary()
            self.depth -= 1
            return ("neg", operand) if t.value == "-" else operand
        return self.power()

    def power(self) -> tuple:
        base = self.postfix()
        t = self.peek()
        if t is not None and t.kind == "OP" and t.value == "**":
            self.pos += 1
            self.enter()
            exponent = self.unary()
            self.depth -= 1
            return ("pow", base, exponent)
        return base

    def postfix(self) -> tuple:
        node = self.atom()
        while (t := self.peek()) is not None and t.kind in ("PCT", "BANG", "DEG"):
            self.pos += 1
            node = {"PCT": "pct", "BANG": "fact", "DEG": "deg"}[t.kind], node
        return node

    def atom(self) -> tuple:
        t = self.peek()
        if t is None:
            raise ParseError("expression ends early")
        self.pos += 1
        if t.kind == "NUM":
            return ("num", t.value)
        if t.kind == "ID":
            return ("pi",) if t.value == "pi" else ("sym", t.value)
        if t.kind == "FN" and t.value == "binom":
            self.enter()
            self.expect("LP")
            n = self.choice()
            self.expect("SEP")
            k = self.choice()
            self.expect("RP")
            self.depth -= 1
            return ("binom", n, k)
        if t.kind == "FN":
            self.enter()
            arg = self.power()
            self.depth -= 1
            return ("fact", arg) if t.value == "factorial" else ("fn", t.value, arg)
        if t.kind == "CALL":
            nxt = self.peek()
            if nxt is None or nxt.kind != "LP":
                raise ParseError(f"{t.value} is not applied")
            self.enter()
            arg = self.atom()
            self.depth -= 1
            return ("call", t.value, arg)
        if t.kind == "LP":
            self.enter()
            inner = self.choice()
            close = self.peek()
            if close is None or close.kind != "RP":
                raise ParseError("unbalanced parentheses")
            self.pos += 1
            self.depth -= 1
            # "[22.8] = 22": square brackets group, or take the integer part (_side_readings)
            return ("bracket", inner) if t.value == "[" and close.value == "]" else inner
        raise ParseError(f"unexpected {t.value!r}")


def _unbracket(node: tuple) -> tuple:
    """A bracket group as a plain group (no integer-part reading)."""
    return node[1] if node[0] == "bracket" else node


_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}


def _ambiguous(tokens: list[Token]) -> str | None:
    """Why a side's unparenthesized ``choose``/``mod`` could be read two ways, or None.

    ``2 * 5 choose 2`` (10 choose 2, or 2 times 5 choose 2) and ``10 + 5 mod 3`` ((15) mod 3 as
    prose means it, or 10 + (5 mod 3) as precedence says) are not guessed."""
    depth = 0
    ops: list[str] = []
    previous: Token | None = None
    for tok in tokens:
        if tok.kind == "LP":
            depth += 1
        elif tok.kind == "RP":
            depth -= 1
        elif depth == 0 and tok.kind == "OP":
            binary = previous is not None and previous.kind not in ("OP", "LP", "SEP")
            if binary or tok.value in ("mod", "choose"):
                ops.append(tok.value)
        previous = tok
    if "choose" in ops and len(ops) > 1:
        return "'choose' next to another operator without parentheses"
    if "mod" in ops and ("+" in ops or "-" in ops):
        return "'mod' next to + or - without parentheses"
    if _juxtaposed_after_slash(tokens):
        return "'/' before a product written without an operator (4√3 / 6√3): the denominator is not guessed"
    return None


def _juxtaposed_after_slash(tokens: list[Token]) -> bool:
    """A depth-0 ``/`` whose right operand is a product written by juxtaposition ("6√3", "2x",
    "2(1+2)"): whether that whole product is the denominator is not guessed."""
    depth = 0
    after_slash = False
    previous: Token | None = None
    for tok in tokens:
        operand_before = previous is not None and previous.kind in ("NUM", "ID", "RP", "BANG", "PCT", "DEG")
        if depth == 0 and after_slash and operand_before and tok.kind in ("ID", "FN", "CALL", "LP"):
            return True
        if tok.kind == "LP":
            depth += 1
        elif tok.kind == "RP":
            depth -= 1
        elif depth == 0 and tok.kind == "OP" and tok.value != "**":
            after_slash = tok.value == "/"
        previous = tok
    return False


def to_plain(tree: tuple) -> str:
    """The plain sympy-parseable string of a parsed side (explicit ``*``, ``**``)."""
    return _emit(tree)


def _emit(node: tuple, parent: int = 0, right: bool = False) -> str:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sym":
        return node[1]
    if kind == "pi":
        return "pi"
    if kind == "pct":
        return f"({_emit(node[1], 2)}/100)"
    if kind == "fact":
        return f"factorial({_emit(node[1])})"
    if kind in ("mod", "residue"):
        return f"Mod({_emit(node[1])}, {_emit(node[2])})"
    if kind == "binom":
        return f"binomial({_emit(node[1])}, {_emit(node[2])})"
    if kind == "deg":
        return f"({_emit(node[1], 2)}*pi/180)"
    if kind == "call":
        return f"{node[1]}({_emit(node[2])})"
    if kind == "fn":
        return f"{node[1]}({_emit(node[2])})"
    prec = _PREC[kind]
    if kind == "neg":
        s = "-" + _emit(node[1], prec)
    else:
        op = {"add": " + ", "sub": " - ", "mul": "*", "div": "/", "pow": "**"}[kind]
        if kind == "pow":
            s = _emit(node[1], prec + 1) + op + _emit(node[2], prec)
        else:
            s = _emit(node[1], prec) + op + _emit(node[2], prec, right=True)
    needs = prec < parent or (right and prec == parent and kind in ("add", "sub", "mul", "div"))
    return f"({s})" if needs else s


def parse_plain(expression: str) -> tuple:
    """Parse a plain expression (a Claim side) back into a tree; raises ParseError."""
    tokenizer = _Tokenizer(expression)
    tokenizer.plain(0, len(expression), [])
    tokens = [t for t in tokenizer.tokens if t.kind not in ("APPROX", "UNIT", "LABEL")]
    # "factorial" is emitted by to_plain; read it back as a function.
    merged: list[Token] = []
    for t in tokens:
        if t.kind == "BRK" and t.value == "factorial":
            merged.append(Token("FN", "factorial", t.start, t.end))
        else:
            merged.append(t)
    if any(t.kind in _BREAKS or t.kind == "REL" for t in merged):
        bad = next(t for t in merged if t.kind in _BREAKS or t.kind == "REL")
        raise ParseError(f"not a plain expression: {bad.value!r}")
    tree = _read(_Parser(merged).parse(), None)
    return _fn_factorial(tree)


def _map_children(node: tuple, fn) -> tuple:  # type: ignore[no-untyped-def]
    """``node`` with ``fn`` applied to its child trees (leaves are returned as they are)."""
    kind = node[0]
    if kind in ("num", "sym", "pi"):
        return node
    if kind in ("fn", "call"):
        return (kind, node[1], fn(node[2]))
    return (kind,) + tuple(fn(c) for c in node[1:])


def _fn_factorial(node: tuple) -> tuple:
    if node[0] == "fn" and node[1] == "factorial":
        return ("fact", _fn_factorial(node[2]))
    return _map_children(node, _fn_factorial)


def free_symbols(node: tuple) -> set[str]:
    """Unknown names in a tree; a function value f(3) counts as the unknown "f()"."""
    kind = node[0]
    if kind == "sym":
        return {node[1]}
    if kind in ("num", "pi"):
        return set()
    if kind == "fn":
        return free_symbols(node[2])
    if kind == "call":
        return {node[1] + "()"} | free_symbols(node[2])
    out: set[str] = set()
    for child in node[1:]:
        out |= free_symbols(child)
    return out


def substitute(node: tuple, bindings: dict[str, tuple]) -> tuple:
    if node[0] == "sym":
        return bindings.get(node[1], node)
    return _map_children(node, lambda child: substitute(child, bindings))


# ---------------------------------------------------------------------------------------------
# Extraction


@dataclass
class _Side:
    tokens: list[Token]
    tree: tuple | None = None
    error: str | None = None
    # other readings the text allows (reading name -> tree), see _side_readings
    readings: dict[str, tuple] = field(default_factory=dict)

    @property
    def start(self) -> int:
        return self.tokens[0].start if self.tokens else -1

    @property
    def end(self) -> int:
        return self.tokens[-1].end if self.tokens else -1


def _parse_side(tokens: list[Token], lead_plus: bool = False) -> _Side:
    side = _Side(tokens)
    if tokens and tokens[0].kind == "OP" and tokens[0].value != "-" and not (lead_plus and tokens[0].value == "+"):
        # "+ 10 = 55" is the tail of a longer sum whose start was not read
        side.error = f"starts with {tokens[0].value!r}"
        return side
    ambiguity = _ambiguous(tokens)
    if ambiguity is not None:
        side.error = ambiguity
        return side
    try:
        side.tree, side.readings = _side_readings(_Parser(tokens).parse())
    except ParseError as exc:
        side.error = str(exc)
    except RecursionError:
        side.error = "expression too deeply nested"
    return side


# Names of the other readings a claim may have (shown in the evidence when one of them holds).
READ_AS_PRODUCT = "a whole number next to a fraction read as a product"
READ_AS_INTEGER_PART = "square brackets read as the integer part"
READ_AS_LOG10 = "log read as base 10"
READ_AS_QUOTIENT = "÷ read as the quotient of a division with remainder"
READ_AS_CONGRUENCE = "'=' read as a congruence"
_MARKS = {"mixed": READ_AS_PRODUCT, "bracket": READ_AS_INTEGER_PART, "fn": READ_AS_LOG10}


def _marks(node: tuple) -> set[str]:
    """The readings a parsed tree's marked nodes allow (mixed numbers, brackets, a bare log)."""
    kind = node[0]
    found: set[str] = set()
    if kind == "mixed" or kind == "bracket" or (kind == "fn" and node[1] == _LOG_EITHER_BASE):
        found.add(_MARKS[kind])
    if kind in ("num", "sym", "pi"):
        return found
    for child in node[2:] if kind in ("fn", "call") else node[1:]:
        found |= _marks(child)
    return found


def _read(node: tuple, reading: str | None) -> tuple:
    """The tree with its marked nodes resolved: the first reading (None) or ``reading``.

    First reading: ``4\\frac{5}{8}`` is 4 + 5/8, ``[x]`` is x, a bare log is natural. Others:
    4 * 5/8; the integer part ``x - Mod(x, 1)`` (= floor(x)); ``log(x)/log(10)``."""
    kind = node[0]
    if kind == "mixed":
        return ("mul" if reading == READ_AS_PRODUCT else "add", _read(node[1], reading), _read(node[2], reading))
    if kind == "bracket":
        inner = _read(node[1], reading)
        return ("sub", inner, ("mod", inner, ("num", "1"))) if reading == READ_AS_INTEGER_PART else inner
    if kind == "fn" and node[1] == _LOG_EITHER_BASE:
        arg = _read(node[2], reading)
        if reading == READ_AS_LOG10:
            return ("div", ("fn", "log", arg), ("fn", "log", ("num", "10")))
        return ("fn", "log", arg)
    return _map_children(node, lambda child: _read(child, reading))


def _side_readings(tree: tuple) -> tuple[tuple, dict[str, tuple]]:
    """(first reading, {other reading: tree}) of a parsed side (see :func:`_read`)."""
    return _read(tree, None), {name: _read(tree, name) for name in sorted(_marks(tree))}


def _split_modulus(tokens: list[Token]) -> tuple[list[Token], list[Token]] | None:
    """(rest, modulus) of a last side that ends in a modulus: ``b (mod n)``, ``b \\pmod{n}``
    or ``b mod n`` (the last ``mod`` outside parentheses); None when it ends in none."""
    if len(tokens) >= 4 and tokens[-1].kind == "RP":
        depth = 0
        for index in range(len(tokens) - 1, -1, -1):
            kind = tokens[index].kind
            depth += kind == "RP"
            depth -= kind == "LP"
            if depth == 0:
                after = tokens[index + 1] if index + 1 < len(tokens) else None
                if index > 0 and after is not None and after.kind == "OP" and after.value == "mod":
                    return tokens[:index], tokens[index + 2 : -1]
                break
    depth = 0
    last_mod = -1
    for index, tok in enumerate(tokens):
        depth += tok.kind == "LP"
        depth -= tok.kind == "RP"
        if depth == 0 and tok.kind == "OP" and tok.value == "mod":
            last_mod = index
    if last_mod > 0 and last_mod < len(tokens) - 1:
        return tokens[:last_mod], tokens[last_mod + 1 :]
    return None


def _is_bullet(text: str, i: int, end: int) -> bool:
    """``text[i]`` opens a list item: first on its line and followed by a space ("- 10 = 2 * 5")."""
    line_start = text.rfind("\n", 0, i) + 1
    return not text[line_start:i].strip() and i + 1 < end and text[i + 1] in " \t"


def _after_power(text: str, i: int) -> bool:
    """``text[i]`` is a ``^`` right after a superscript (``2^4^\\circ``, ``2^{4}^\\circ``)."""
    return re.search(r"\^(?:\{[^{}]{0,20}\}|\w)\s*$", text[max(0, i - 24) : i]) is not None


def _is_lone_percent(tree: tuple) -> bool:
    return tree[0] == "pct" and tree[1][0] == "num"


# Token kinds that end a run: prose (BRK), unknown notation (POISON), a cut of the next run's
# first side (CUT), a cut of it only when it is a lone number (CUT1).
_BREAKS = frozenset({"BRK", "POISON", "CUT", "CUT1"})


def _lone_number_first(run: list[Token]) -> bool:
    """The run's first side is one number ("12 = 7" after "subtract 5 from")."""
    first: list[Token] = []
    for tok in run:
        if tok.kind == "REL":
            break
        if tok.kind not in ("UNIT", "LABEL"):
            first.append(tok)
    return len(first) == 1 and first[0].kind == "NUM"


def _claims_from_tokens(
    text: str, tokens: list[Token], origin: str, step_rounds: bool, readings: dict[Claim, tuple] | None = None
) -> tuple[list[Claim], list[RejectedClaim], list[tuple[Claim, tuple, tuple, int]]]:
    """Claims (and rejections) of one token stream; also (claim, lhs tree, rhs tree) triples.

    ``readings`` (when given) receives each claim's other readings (:func:`_claim_readings`)."""
    claims: list[Claim] = []
    rejected: list[RejectedClaim] = []
    trees: list[tuple[Claim, tuple, tuple, int]] = []
    run: list[Token] = []
    before: Token | None = None  # the break token in front of the current run
    dangling = False
    # A CUT ("half of", "twice") cuts the first side of the next non-empty run if at most two
    # more words come between ("half of the 10 = 5").
    pending_cut = 0
    symbolic_relation = False  # the last run with a relation had unknowns ("4a = 4(a-3)")
    for tok in tokens + [Token("BRK", "", len(text), len(text))]:
        if tok.kind not in _BREAKS:
            run.append(tok)
            continue
        if any(t.kind == "REL" for t in run):
            # "4a=4(a-3) \Rightarrow 0=-12": constants derived from an equation in unknowns
            derived = symbolic_relation and before is not None and before.value in _IMPLICATIONS
            # "foo(3) = 5": a run that opens with "(" right after a word is a call of an
            # unknown function; its first side is not the whole expression. Next to an unknown
            # command or symbol ("\dots + 10 = 55") the side is not the whole expression either.
            first_cut = before is not None and (
                before.kind in ("POISON", "CUT")
                or (
                    before.value[:1].isalpha()
                    and run[0].kind == "LP"
                    and not re.sub(r"\\(left|bigl?|Bigl?)|\s", "", text[before.end : run[0].start])
                )
            )
            first_cut = first_cut or dangling or pending_cut > 0 or (before is not None and before.kind == "CUT1" and _lone_number_first(run))
            first_cut = first_cut or _minus_after_word(text, before, run)
            last_cut = tok.kind == "POISON"
            quotient = _quotient_after(text, run[-1].end)
            _claims_from_run(
                text, run, origin, step_rounds, claims, rejected, trees, first_cut, last_cut, derived,
                readings if readings is not None else {}, quotient,
            )
            symbolic_relation = any(t.kind in ("ID", "CALL") and t.value != "pi" for t in run)
        # "25 + shoe size 5 = 30": a run ending in an operator continues after the words, so
        # the next run's first side is not the whole expression.
        if run:
            dangling = run[-1].kind == "OP"
            pending_cut = 0
        if tok.kind == "CUT":
            pending_cut = 3
        elif tok.kind == "BRK" and tok.value in (".", ",", ";", ":", "!", "?", "\n"):
            pending_cut = 0  # a new clause
        elif pending_cut:
            pending_cut -= 1
        run = []
        before = tok
    return claims, rejected, trees


def _claims_from_run(
    text: str,
    run: list[Token],
    origin: str,
    step_rounds: bool,
    claims: list[Claim],
    rejected: list[RejectedClaim],
    trees: list[tuple[Claim, tuple, tuple, int]],
    first_cut: bool = False,
    last_cut: bool = False,
    derived: bool = False,
    readings: dict[Claim, tuple] | None = None,
    quotient: tuple[str | None] | None = None,
) -> None:
    """Claims of one run (see :func:`_claims_from_tokens`); ``quotient``: text right after the
    run says its last result is a quotient with a remainder (:func:`_quotient_after`)."""
    sides: list[list[Token]] = [[]]
    relations: list[tuple[str, bool]] = []
    for tok in run:
        if tok.kind == "REL":
            relations.append((tok.value, False))
            sides.append([])
        elif tok.kind == "APPROX":
            if relations and not sides[-1]:
                relations[-1] = (relations[-1][0], True)
        else:
            sides[-1].append(tok)
    units = [{t.value for t in side if t.kind == "UNIT"} for side in sides]
    # Calculator annotations are machine-written: "<<+8=8>>" is a complete claim.
    lead_plus = origin == "annotation"
    math_sides = [[t for t in s if t.kind not in ("UNIT", "LABEL")] for s in sides]
    modulus: _Side | None = None
    split = _split_modulus(math_sides[-1]) if len(sides) > 1 and not last_cut else None
    if split is not None:
        # "a ≡ b (mod n)", "2^10 = 1024 ≡ 1 \pmod{11}", "1024 = 1 mod 11": the whole run is
        # a congruence; "=" there reads as "≡" (weaker, so never a false "incorrect")
        math_sides[-1], modulus_tokens = split
        modulus = _parse_side(modulus_tokens)
        if modulus.tree is None:
            start, end = math_sides[0][0].start if math_sides[0] else run[0].start, run[-1].end
            rejected.append(RejectedClaim(text[start:end], (start, end), f"modulus: {modulus.error}"))
            return
    elif any(rel == "≡" for rel, _ in relations):
        return  # "≡" without a modulus this reader understands: nothing checked
    parsed = [_parse_side(s, lead_plus) if s else None for s in math_sides]
    if first_cut:
        parsed[0] = None
    if last_cut:
        parsed[-1] = None
    for k, (rel, approx_word) in enumerate(relations):
        left, right = parsed[k], parsed[k + 1]
        if left is None or right is None:
            continue  # "apples = 3": one side is prose, not a claim
        if units[k] and units[k] != units[k + 1]:
            # "2 hours = 120 minutes", "1.5 quarts = 4 * 1.5": a conversion or a label, not
            # arithmetic. Units on the result alone ("3 * 5 = 15 dollars") are fine.
            continue
        start, end = left.start, right.end
        if modulus is not None and k == len(relations) - 1:
            end = max(end, modulus.end + (1 if text[modulus.end : modulus.end + 1] in ")}" else 0))
        if left.tree is None or right.tree is None:
            reason = left.error if left.tree is None else right.error
            # Only report sides that look like math gone wrong, not ordinary prose fragments.
            rejected.append(RejectedClaim(text[start:end], (start, end), reason or "unparsable"))
            continue
        rounded = rel == "≈" or approx_word or step_rounds
        relation = "=" if rel in ("≈", "≡") else rel
        lhs_tree, rhs_tree = left.tree, right.tree
        if _degrees_against_number(lhs_tree, rhs_tree):
            continue  # "8^\circ = 2^3": the angle named by a power, not arithmetic
        if modulus is not None:
            if relation != "=":
                continue  # "a < b (mod n)" means nothing checkable
            # residues: in a congruence 17^{-1} is the inverse of 17 modulo n
            lhs_tree, rhs_tree = ("residue", lhs_tree, modulus.tree), ("residue", rhs_tree, modulus.tree)
            rounded = False
        percent = tuple(
            name for name, side in (("lhs", left), ("rhs", right)) if _is_lone_percent(side.tree)  # type: ignore[arg-type]
        )
        exclaimed = tuple(
            name
            for name, side in (("lhs", left), ("rhs", right))
            if modulus is None and side.tokens and side.tokens[-1].kind == "BANG" and side.tokens[-1].value == "!?"
        )
        claim = Claim(
            text=text[start:end],
            span=(start, end),
            lhs=to_plain(lhs_tree),
            rhs=to_plain(rhs_tree),
            relation=relation,
            rounded=rounded,
            origin=origin,
            percent_sides=percent,
            exclamation_sides=exclaimed,
            derived=derived and not free_symbols(lhs_tree) and not free_symbols(rhs_tree),
        )
        claims.append(claim)
        trees.append((claim, lhs_tree, rhs_tree, right.start))
        if readings is not None:
            quotient_here = quotient if k == len(relations) - 1 and relation == "=" else None
            other = _claim_readings(left, right, lhs_tree, rhs_tree, quotient_here, relation == "=")
            if other:
                readings[claim] = other


def _quotient_after(text: str, end: int) -> tuple[str | None] | None:
    """None, or (remainder,) when the text after ``end`` says the result before it is a quotient
    ("= 505 remainder 3" gives ("3",); "= 2 (quotient)" gives (None,))."""
    window = text[end : end + _QUOTIENT_WINDOW]
    if _QUOTIENT_CUE.search(window) is None:
        return None
    value = _REMAINDER_VALUE.search(window)
    return (value.group(1) if value else None,)


def _claim_readings(
    left: _Side, right: _Side, lhs_tree: tuple, rhs_tree: tuple, quotient: tuple[str | None] | None, equality: bool
) -> tuple[tuple[str, tuple, tuple], ...]:
    """Other readings of a claim: its sides' (:func:`_side_readings`), "a mod n = b" as a
    congruence, and, for "a ÷ b = q" followed
    by "(quotient)", q as the integer part of a/b, or, followed by "remainder r", a = b*q + r."""
    out: list[tuple[str, tuple, tuple]] = []
    if lhs_tree is left.tree and rhs_tree is right.tree:  # not rewritten (a congruence, a mod)
        for name in sorted(left.readings.keys() | right.readings.keys()):
            out.append((name, left.readings.get(name, lhs_tree), right.readings.get(name, rhs_tree)))
    if equality and lhs_tree[0] == "mod" and not _has_kind(rhs_tree, "mod"):
        # "385 mod 13 = -5": in modular reasoning "=" after "a mod n" may mean "≡"
        n = lhs_tree[2]
        out.append((f"{READ_AS_CONGRUENCE} mod {to_plain(n)}", ("residue", lhs_tree[1], n), ("residue", rhs_tree, n)))
    if quotient is not None and lhs_tree[0] == "div" and rhs_tree[0] == "num" and "." not in rhs_tree[1]:
        (remainder,) = quotient
        if remainder is None:
            out.append((READ_AS_QUOTIENT, ("sub", lhs_tree, ("mod", lhs_tree, ("num", "1"))), rhs_tree))
        else:
            dividend, divisor = lhs_tree[1], lhs_tree[2]
            out.append((READ_AS_QUOTIENT, dividend, ("add", ("mul", divisor, rhs_tree), ("num", remainder))))
    return tuple(out)


def _has_kind(node: tuple, kind: str) -> bool:
    """The tree has a node of this kind ("deg", "mod", "pi", ...)."""
    if node[0] == kind:
        return True
    if node[0] in ("num", "sym", "pi"):
        return False
    return any(_has_kind(child, kind) for child in (node[2:] if node[0] in ("fn", "call") else node[1:]))


def _degrees_against_number(lhs: tuple, rhs: tuple) -> bool:
    """One side is a lone angle in degrees, the other has no degrees and no pi ("8° = 2^3")."""
    for angle, other in ((lhs, rhs), (rhs, lhs)):
        if angle[0] == "deg" and not _has_kind(other, "deg") and not _has_kind(other, "pi"):
            return True
    return False


def _minus_after_word(text: str, before: Token | None, run: list[Token]) -> bool:
    """The run opens with a binary minus whose left operand is prose ("Chenny's age - 4 = 10 - 4",
    "2(AC)^2 - 68AC - 444 = 0"): its first side is not the whole expression."""
    if before is None or before.kind != "BRK" or not before.value[:1].isalpha():
        return False
    first = run[0]
    if first.kind != "OP" or first.value != "-" or text[first.end : first.end + 1] not in (" ", "\t"):
        return False
    return not text[before.end : first.start].strip(" \t}")


def extract_claims(step_text: str) -> list[Claim]:
    """The claims of a step (see the module doc for the rules), in order of appearance."""
    return extract(step_text).claims


def extract(step_text: str) -> Extraction:
    """Claims, rejected claim-like text with reasons, and code block spans of a step."""
    text = step_text[:MAX_STEP_CHARS]
    step_rounds = bool(_ROUNDING_CUE.search(text))
    code_blocks = [(m.start(), m.end()) for m in _CODE_BLOCK.finditer(text)]
    annotations = [(m.start(), m.end()) for m in _ANNOTATION.finditer(text)]
    ann_tokens: list[tuple[int, int, list[Token]]] = []
    rejected: list[RejectedClaim] = []
    trees: list[tuple[Claim, tuple, tuple, int]] = []
    readings: dict[Claim, tuple] = {}

    # 1. calculator annotations
    for m in _ANNOTATION.finditer(text):
        tk = _Tokenizer(text)
        try:
            tk.plain(m.start(1), m.end(1), [])
        except ParseError as exc:
            rejected.append(RejectedClaim(m.group(0), (m.start(), m.end()), str(exc)))
            continue
        ann_tokens.append((m.start(), m.end(), tk.tokens))
        _, r, t = _claims_from_tokens(text, tk.tokens, "annotation", step_rounds, readings)
        rejected += r
        trees += t

    # 2. visible text: plain outside math regions, LaTeX inside, code blocks skipped
    tk = _Tokenizer(text)
    pos = 0
    blocked = sorted(
        [(s, e, None, None) for s, e in code_blocks] + [r for r in _math_segments_safe(text, rejected)]
    )
    try:
        for outer_s, outer_e, inner_s, inner_e in blocked:
            if outer_s < pos:
                continue
            tk.plain(pos, outer_s, annotations)
            # "70 ≤ 24\( K \)": a number glued to math is a product with it, not a whole side
            math = text[inner_s:inner_e] if inner_s is not None and inner_e is not None else ""
            tk.emit("POISON" if _glued(text[outer_s - 1 : outer_s], math.lstrip()) else "BRK", "", outer_s, outer_s)
            if inner_s is not None and inner_e is not None:
                tk.latex(inner_s, inner_e)
                glued = _glued(math.rstrip(), text[outer_e : outer_e + 1])
                tk.emit("POISON" if glued else "BRK", "", outer_e, outer_e)
            pos = outer_e
        tk.plain(pos, len(text), annotations)
    except (ParseError, RecursionError) as exc:
        rejected.append(RejectedClaim(text[:80], (0, len(text)), f"could not read the step: {exc}"))
    _, r, t = _claims_from_tokens(text, tk.tokens, "text", step_rounds, readings)
    ann_ends = [e for _, e, _ in ann_tokens]
    for claim, lt, rt, rhs_start in t:
        if any(_adjacent(text, e, rhs_start) for e in ann_ends):
            continue  # "16 - 3 - 4 = <<16-3-4=9>>9": the annotation already is this claim
        trees.append((claim, lt, rt, rhs_start))
    rejected += [x for x in r if not any(_adjacent(text, e, x.span[1] - 1) or s <= x.span[0] < e for s, e, _ in ann_tokens)]

    # 3. substitutions stated in the step
    trees += _substitutions(text, trees)
    trees.sort(key=lambda item: (item[0].span[0], item[0].span[1]))
    trees = trees[:MAX_CLAIMS_PER_STEP]
    congruence = _congruence_reading(text)
    return Extraction(
        claims=[item[0] for item in trees],
        rejected=rejected,
        code_blocks=code_blocks,
        sides=[(item[1], item[2]) for item in trees],
        denies=bool(_DENIAL_CUE.search(text)),
        readings=[readings.get(claim, ()) + congruence(claim, lt, rt) for claim, lt, rt, _ in trees],
    )


def _glued(behind: str, ahead: str) -> bool:
    """Text and math touch with no space between, the left one ending in a number or ")" and the
    right one starting with a letter, digit or "(" ("24\\( K \\)", "\\(2\\)x"): a product across
    the boundary, so neither number is a whole side."""
    return (behind[-1:] in _DIGITS or behind[-1:] == ")") and (ahead[:1].isalnum() or ahead[:1] == "(")


def _congruence_reading(text: str):  # type: ignore[no-untyped-def]
    """A function giving a claim's congruence reading: "=" between numbers read as "≡" modulo n
    when a modulus is attached to the claim but outside what was parsed: right after it
    ("$5 \\times 25^2 = 5 \\times 3^2$ (mod 11)", "$10 = 2$ modulo 8") or opening its sentence
    ("Modulo 11, ..."). A modulus said elsewhere in the step is not enough ("5^9 = 5^8 is what we
    reduce modulo 10" stays a false equality)."""
    if not _MODULAR_CUE.search(text):
        return lambda claim, lhs, rhs: ()

    def reading(claim: Claim, lhs: tuple, rhs: tuple) -> tuple:
        if claim.relation != "=" or lhs[0] == "residue" or free_symbols(lhs) or free_symbols(rhs):
            return ()
        modulus = _attached_modulus(text, claim.span)
        if modulus is None:
            return ()
        n = ("num", modulus)
        return ((f"{READ_AS_CONGRUENCE} mod {modulus}", ("residue", lhs, n), ("residue", rhs, n)),)

    return reading


def _attached_modulus(text: str, span: tuple[int, int]) -> str | None:
    """The modulus written right after a claim or opening its sentence, or None."""
    after = _MODULUS_AFTER.match(text, span[1])
    if after is not None:
        return after.group(1)
    sentence_start = max(text.rfind(". ", 0, span[0]), text.rfind("\n", 0, span[0])) + 1
    before = _MODULUS_OPENING.search(text, sentence_start, span[0])
    return before.group(1) if before is not None else None



def _math_segments_safe(text: str, rejected: list[RejectedClaim]) -> list[tuple[int, int, int, int]]:
    try:
        return _math_segments(text, 0, len(text))
    except ParseError as exc:
        rejected.append(RejectedClaim(text[:80], (0, len(text)), str(exc)))
        return []


def _adjacent(text: str, ann_end: int, rhs_start: int) -> bool:
    """True when only spaces and money signs stand between an annotation and a right side."""
    if ann_end > rhs_start or rhs_start - ann_end > 20:
        return False
    return text[ann_end:rhs_start].strip(" $\t") == ""


def _substitutions(
    text: str, trees: list[tuple[Claim, tuple, tuple, int]]
) -> list[tuple[Claim, tuple, tuple, int]]:
    """Substituted claims for "x = 5 solves 2x + 1 = 11" (see the module doc)."""
    if len(trees) < 2 or _NEGATION_CUE.search(text) or not _SUBSTITUTION_CUE.search(text):
        return []
    if _HYPOTHETICAL_CUE.search(text):
        return []  # "n = 4 works ... if n >= 5, then ...": n is not 4 there
    if _DISJUNCTION.search(text):
        return []  # "y + 2 = 4 or y + 2 = -4 ... y = 2": each equation holds for one value only
    bound: dict[str, list[tuple]] = {}
    binding_claims: set[int] = set()
    for idx, (claim, lt, rt, _) in enumerate(trees):
        if claim.relation != "=":
            continue
        for sym_side, value_side in ((lt, rt), (rt, lt)):
            if sym_side[0] == "sym" and not free_symbols(value_side):
                bound.setdefault(sym_side[1], []).append(value_side)
                binding_claims.add(idx)
    # a symbol bound to two different values ("x = 5 or x = -3") is not substituted
    bindings = {
        name: values[0]
        for name, values in bound.items()
        if len({to_plain(v) for v in values}) == 1
    }
    if not bindings:
        return []
    out: list[tuple[Claim, tuple, tuple, int]] = []
    for idx, (claim, lt, rt, rhs_start) in enumerate(trees):
        if idx in binding_claims or claim.relation != "=":
            continue  # an inequality in a bound symbol is a condition, not a claim about it
        names = free_symbols(lt) | free_symbols(rt)
        if not names or not names <= bindings.keys():
            continue
        wrapped = {n: ("group", bindings[n]) for n in names}
        lhs = _emit_grouped(substitute(lt, wrapped))
        rhs = _emit_grouped(substitute(rt, wrapped))
        substituted = Claim(
            text=claim.text,
            span=claim.span,
            lhs=lhs,
            rhs=rhs,
            relation=claim.relation,
            rounded=claim.rounded,
            origin="substitution",
            substitution=tuple(sorted((n, to_plain(bindings[n])) for n in names)),
        )
        values = {n: bindings[n] for n in names}
        out.append((substituted, substitute(lt, values), substitute(rt, values), rhs_start))
    return out


def _emit_grouped(node: tuple) -> str:
    """to_plain, where ("group", x) nodes (substituted values) are always parenthesized."""
    return _emit(_groups_to_parens(node))


def _groups_to_parens(node: tuple) -> tuple:
    if node[0] == "group":
        return ("sym", f"({to_plain(node[1])})")
    return _map_children(node, _groups_to_parens)
