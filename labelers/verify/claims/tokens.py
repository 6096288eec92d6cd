"""Tokens of a step's text: the token types and the tokenizer (plain text and LaTeX math mode).

:class:`_Tokenizer` turns step text into :class:`Token` records with spans. Prose words,
punctuation and line ends become breaks (BRK), notation it does not read becomes POISON, and
words such as "half of" become cuts (CUT, CUT1): :mod:`labelers.verify.claims.extraction` splits
the stream into runs at those, and :mod:`labelers.verify.claims.parse` reads each side of a run.
Plain text and LaTeX are one tokenizer because they call into each other: LaTeX notation written
outside ``$...$`` (``\\pmod``, ``\\binom``) is read as LaTeX, and LaTeX ``\\text{...}`` and
operators are read with the plain-text word and symbol rules, over one token list and one
nesting depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Limits that keep tokenizing and parsing bounded on hostile text (extraction.py has the others).
MAX_NESTING = 100  # parentheses / LaTeX groups deeper than this are rejected
MAX_NUMBER_DIGITS = 1_000  # a literal longer than this is rejected

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
            if c in _DIGITS or (
                c == "." and i + 1 < end and text[i + 1] in _DIGITS and not (i > 0 and text[i - 1] in _DIGITS)
            ):
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


def _is_bullet(text: str, i: int, end: int) -> bool:
    """``text[i]`` opens a list item: first on its line and followed by a space ("- 10 = 2 * 5")."""
    line_start = text.rfind("\n", 0, i) + 1
    return not text[line_start:i].strip() and i + 1 < end and text[i + 1] in " \t"


def _after_power(text: str, i: int) -> bool:
    """``text[i]`` is a ``^`` right after a superscript (``2^4^\\circ``, ``2^{4}^\\circ``)."""
    return re.search(r"\^(?:\{[^{}]{0,20}\}|\w)\s*$", text[max(0, i - 24) : i]) is not None


# Token kinds that end a run: prose (BRK), unknown notation (POISON), a cut of the next run's
# first side (CUT), a cut of it only when it is a lone number (CUT1).
_BREAKS = frozenset({"BRK", "POISON", "CUT", "CUT1"})
