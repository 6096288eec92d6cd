"""Final answers: extract one from a written solution, decide whether it equals the gold answer.

Extraction (:func:`extract_final_answer`) looks, in order, for the last ``\\boxed{...}`` /
``\\fbox{...}`` (nested braces kept), the last ``#### N`` line (GSM8K), the last "the answer is
X" / "final answer: X" phrase, and finally the last number in the text.

Equivalence (:func:`answers_equal`) works in two layers:

1. A fast, in-process layer that never evaluates anything: both answers are normalized (``$``,
   ``\\left``/``\\right``, ``\\text{}``, ``\\dfrac``, thousands separators, a leading ``x =``,
   degree signs, trailing units in words are removed) and compared as strings; when both read as
   plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``, percentages) they are compared as
   exact fractions (decimals with a relative tolerance of 1e-6). A number-vs-number comparison
   is decided here.
2. Anything symbolic (radicals, pi, intervals, tuples, sets, expressions) goes to math-verify,
   and, when it says no, to sympy for plain scalar expressions (``3*pi``, ``x**2+1``,
   ``2 sqrt(3)``: text math-verify's LaTeX reading misses; see :func:`plain_expression`).
   Both run in a separate worker process owned by an :class:`AnswerJudge`: model-written
   answers are untrusted (sympy's expression parser evaluates Python), and sympy can run for
   ever on some inputs. math-verify's own signal-based timeouts are disabled (they only work in
   the main thread); the judge enforces ``timeout_s`` itself by killing the worker. A timeout
   counts as "not equal" and never hangs the caller.

Percent rule: ``p%`` has two readings, the unit reading ``p`` and the value reading ``p/100``;
a percentage equals a number when either reading equals it (``50\\%`` = ``50`` = ``0.5``), and
two percentages compare by their numbers. Data sets write the answer to "what percent ..."
both ways (GSM8K: ``25``, MATH: ``25\\%``), and models write either.

Loops that compare many answers should hold one :class:`AnswerJudge` and pass it as ``judge``;
without one, a symbolic comparison starts (and stops) a worker process of its own (about half a
second).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from data_schemas.errors import PrmforgeError

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\b")
# GSM8K's "#### 42"; not a markdown heading ("#### Term 1:", "#### Coefficient of x^4:", which the
# 1.5B writes on MATH): no two letters first, no colon last.
_HASH_ANSWER = re.compile(r"^\s*####[ \t]*(?![ \t]|[A-Za-z]{2})(.*[^\s:])[ \t]*$", re.MULTILINE)
_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is|:|=)\s*:?\s*(?P<rest>[^\n]+)|^\s*(?:\*\*)?answer\s*:\s*(?P<line>[^\n]+)",
    re.IGNORECASE | re.MULTILINE,
)
_OPENING_PHRASE = re.compile(r"\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _braced(text: str, open_index: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[open_index] == "{"`` and the index after it."""
    depth = 0
    for index in range(open_index, len(text)):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in "{}":
            continue
        if char == "{" and (index == 0 or text[index - 1] != "\\"):
            depth += 1
        elif char == "}" and (index == 0 or text[index - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index], index + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (also ``\\boxed 5``), or None."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        index = match.end()
        while index < len(text) and text[index] == " ":
            index += 1
        if index < len(text) and text[index] == "{":
            group = _braced(text, index)
            if group is not None:
                return group[0].strip()
        else:
            # "\boxed 5" form: the argument runs to the next space, $ or end of line.
            bare = re.match(r"([^\s$]+)", text[index:])
            if bare and match.end() < index:
                return bare.group(1).strip()
    return None


_SENTENCE_BREAK = re.compile(
    r"(?<=[^\d])\.\s|\.\s+(?=[A-Z])|,\s+(?=[A-Za-z]{2})|\s+(?:because|since|as|so|which)\s", re.IGNORECASE
)


def _strip_sentence_end(answer: str) -> str:
    """The answer a phrase states: up to the end of its sentence or clause, without ``$``."""
    answer = _SENTENCE_BREAK.split(answer.strip(), maxsplit=1)[0].strip()
    # Markdown emphasis around the value ("the answer is: **24**", "**The answer is 24.**"): the
    # 1.5B policy writes it, and "**24**" was not equal to 24.
    answer = re.sub(r"[\s.;!*]+$", "", answer).lstrip("*").strip()
    if answer.startswith("$") and answer.count("$") >= 2:
        answer = answer[1 : answer.index("$", 1)]
    return answer.strip().strip("$").strip()


# "The final answer is the amount of red paint used, which is 2 pints." (the 1.5B policy, 1 of 160
# rollouts of a stop): the phrase names what is asked and the clause after it gives the value.
# Only where the phrase's text is a description (plain words, no digit, no math: two or more
# opening with an article, else three or more): "The answer is \pi, which is about 3.14" keeps \pi.
_DESCRIPTION = re.compile(r"(?:the|a|an)\s+[A-Za-z]+(?:[ '-][A-Za-z]+)*|[A-Za-z]+(?:[ '-][A-Za-z]+){2,}", re.IGNORECASE)
_VALUE_CLAUSE = re.compile(r",?\s+(?:which|that)\s+(?:is|was|comes\s+to|equals)\s+(?P<value>[^\n]+)", re.IGNORECASE)


def _described_value(stated: str, answer: str) -> str | None:
    """The value a description answer gives in its next clause ("the amount of red paint used,
    which is 2 pints" -> "2 pints"), or None."""
    if not (_DESCRIPTION.fullmatch(answer) and stated.startswith(answer)):
        return None
    clause = _VALUE_CLAUSE.match(stated, len(answer))
    value = _strip_sentence_end(clause.group("value")) if clause else ""
    return value if any(char.isdigit() for char in value) else None


def _states_value(answer: str) -> bool:
    """Whether a phrase's answer holds a value: a letter, a digit or ``∞``. "The final answer
    is:" with the value on the next line, or "**Final Answer:**", leaves ``:`` or ``**`` after the
    phrase, and a rollout cut there was scored as answering ``:`` (a miss, whatever came next)."""
    return any(char.isalnum() or char == "∞" for char in answer)


def extract_final_answer(text: str, allow_fallback: bool = True) -> str | None:
    """The final answer a solution gives, or None when it gives none.

    Order: last ``\\boxed{}``/``\\fbox{}``; last ``#### N`` line; last "the answer is X" /
    "final answer: X" / "Answer: X"; then (``allow_fallback``) the last number in the text.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed != "":
        return boxed
    hashes = _HASH_ANSWER.findall(text)
    if hashes:
        return hashes[-1].strip()
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        stated = phrases[-1].group("rest") or phrases[-1].group("line") or ""
        # "Final Answer: The final answer is $143$. I hope it is correct." (the MATH few-shot
        # format, 72 of 502 ProcessBench MATH dev solutions): the text opens with the phrase again.
        # Only where it opens it: "5, and the answer is consistent with ..." states 5.
        while (opening := _OPENING_PHRASE.match(stated)) is not None and opening.end() < len(stated):
            stated = stated[opening.end():]
        answer = _strip_sentence_end(stated)
        described = _described_value(stated.strip(), answer)
        if described is not None:
            return described
        if _states_value(answer):
            return answer
    if allow_fallback:
        numbers = _LAST_NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


# A line that states the final answer on its own (after an optional "Step N:" label): the
# extractor's phrase forms when they open the line, or a GSM8K "#### N" line.
_ANSWER_LINE = re.compile(
    r"^[ \t]*(?:step\s+\d+\s*[:.]\s*)?(?:\*\*)?(?:so,?\s+|therefore,?\s+|thus,?\s+)?"
    r"(?:(?:the\s+final\s+answer|final\s+answer|the\s+answer|answer)\b|####)",
    re.IGNORECASE,
)


def answer_end(text: str) -> int | None:
    """Where a solution's answer is complete: the index of the newline that ends the first line
    holding a closed ``\\boxed{...}``/``\\fbox{...}``, or a line that opens with "The answer is
    X" / "Final answer: X" / "Answer: X" / "#### X" (after an optional "Step N:" label) and gives
    a value (no ``=``, at most 4 words and 40 characters; a letter or digit in it, so "The final
    answer is:" or "**Final Answer:**" is not one: the value on the next non-blank line completes
    it); None while there is none.

    The stop rule of rollouts (``GenerationRequest.stop_at_answer``): the text is cut there, so
    ``extract_final_answer(text[:answer_end(text)])`` is the answer of that line. Only a finished
    line counts (``The answer is 1`` may still become ``18``), and a phrase inside a sentence
    ("... the answer is the number of eggs left, ...") does not stop anything: only lines that
    open with it, which the prompt's format ("give the final answer as \\boxed{ANSWER}") and
    the models' habits make the last line of a solution.
    """
    start = 0
    opened: int | None = None  # where a line opened the phrase without its value ("The answer is:")
    while True:
        newline = text.find("\n", start)
        if newline < 0:
            return None
        line = text[start:newline]
        if _line_states_answer(line) or (opened is not None and _line_states_answer(text[opened:newline])):
            return newline
        if line.strip():
            opened = start if _ANSWER_LINE.match(line) else None
        start = newline + 1


def _line_states_answer(line: str) -> bool:
    if "box" in line and last_boxed(line):
        return True
    if not _ANSWER_LINE.match(line):
        return False
    answer = extract_final_answer(line, allow_fallback=False)
    # A value, not a description ("the number of eggs left, 16 - 3 = 13"): no "=", short.
    return answer is not None and _states_value(answer) and "=" not in answer and len(answer) <= 40 \
        and len(answer.split()) <= 4


# --------------------------------------------------------------------------------------------
# Normalization and the fast numeric layer
# --------------------------------------------------------------------------------------------

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
# A spacing command, but not the second backslash of a matrix or array row break (two backslashes).
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\quad|\\qquad|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
# A whole answer that is one number with thousands separators (optionally a % or unit words);
# inside tuples and lists a comma separates entries and is kept.
_GROUPED_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:\s*(?:\\%|%|[A-Za-z][A-Za-z .]*))?")
_THOUSANDS_BRACED = re.compile(r"(\d)\{,\}(\d{3})")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?P<rhs>[^=<>]+)$")
_CHOICE = re.compile(r"^\(([A-Ea-e])\)$")  # "(b)" -> "B"; a bare "e" stays a symbol
# "18 dollars" -> "18": words of two or more letters after a space; "2x", "2 pi", "3 sqrt" stay.
# "24 (pink flamingos)" -> "24": the same words as a note in parentheses; "3 (mod 4)" keeps its
# modulus (a congruence is not the bare residue).
_TRAILING_UNITS = re.compile(
    r"^(?P<number>[-+]?[\d.,/]+(?:\\%|%)?)"
    r"(?:\s+(?!(?:pi|sqrt|oo|infty)\b)[A-Za-z]{2,}[A-Za-z .]*|\s*\((?!mod\b)[A-Za-z]{2,}[A-Za-z ,.'-]*\))$"
)
# "2nd", "15th place" -> the number (a rank: "Finley finished in \\boxed{6th} place").
_ORDINAL = re.compile(r"^(?P<number>\d+)(?:st|nd|rd|th)(?:\s+[A-Za-z]+)?$")
# Exponents of at most 3 digits: "1e999999999" would take for ever as an exact Fraction, so
# it goes to the worker (with its deadline) instead.
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?$")
_SLASH_FRACTION = re.compile(r"^([-+]?\d+)\s*/\s*([-+]?\d+)$")
_LATEX_FRACTION = re.compile(r"^([-+]?)\\frac\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))$")


def normalize_answer(answer: str) -> str:
    """A canonical text for an answer: the formatting that never changes its value removed."""
    text = answer.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.replace("\\$", "").replace("$", "")
    if text.startswith("\\(") and text.endswith("\\)"):
        text = text[2:-2]
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)  # keeps \leftarrow
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SPACING.sub(" ", text)
    text = _DEGREES.sub("", text)
    for _ in range(3):  # nested \text{\textbf{..}}
        text = _TEXT_COMMAND.sub(r"\1", text)
    text = _THOUSANDS_BRACED.sub(r"\1\2", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"[.\s]+$", "", text) if not re.search(r"\d\.$", text) else text[:-1]
    assignment = _ASSIGNMENT.match(text)
    if assignment:
        text = assignment.group("rhs").strip()
    if _GROUPED_NUMBER.fullmatch(text):
        text = text.replace(",", "")
    units = _TRAILING_UNITS.match(text) or _ORDINAL.match(text)
    if units:
        text = units.group("number")
    choice = _CHOICE.match(text)
    if choice:
        text = choice.group(1).upper()
    return text


@dataclass(frozen=True)
class NumericReading:
    """The value(s) a plain-number answer can mean, and whether it was written as a decimal."""

    values: tuple[Fraction, ...]
    approximate: bool


def numeric_readings(normalized: str) -> NumericReading | None:
    """The numbers a normalized answer reads as, or None when it is not a plain number.

    A percentage ``p%`` reads as ``p`` and as ``p/100`` (see the module's percent rule).
    """
    text = normalized.replace(" ", "")
    percent = False
    for sign in ("\\%", "%"):
        if text.endswith(sign):
            text, percent = text[: -len(sign)], True
            break
    if len(text) > 4000:  # past Python's int-from-text digit limit; the worker decides
        return None
    value: Fraction | None = None
    approximate = False
    if _NUMBER.match(text):
        value = Fraction(text)
        approximate = "." in text or "e" in text.lower()
    elif match := _SLASH_FRACTION.match(text):
        if int(match.group(2)) != 0:
            value = Fraction(int(match.group(1)), int(match.group(2)))
    elif match := _LATEX_FRACTION.match(text):
        numerator = int(match.group(2) or match.group(3))
        denominator = int(match.group(4) or match.group(5))
        if denominator != 0:
            value = Fraction(numerator, denominator) * (-1 if match.group(1) == "-" else 1)
    if value is None:
        return None
    if percent:
        return NumericReading((value, value / 100), approximate)
    return NumericReading((value,), approximate)


def _numbers_equal(a: NumericReading, b: NumericReading) -> bool:
    tolerance = Fraction(1, 10**6) if (a.approximate or b.approximate) else Fraction(0)
    return any(abs(x - y) <= tolerance * max(Fraction(1), abs(y)) for x in a.values for y in b.values)


def _fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the in-process layer can decide, None when a symbolic check is needed."""
    if pred == gold:
        return True
    pred_number, gold_number = numeric_readings(pred), numeric_readings(gold)
    if pred_number is not None and gold_number is not None:
        return _numbers_equal(pred_number, gold_number)
    if pred.casefold() == gold.casefold() and re.fullmatch(r"[A-Za-z ]+", gold):
        return True  # words ("Navin", "odd") compare case-blind
    return None


def _without_percent(normalized: str) -> str:
    return re.sub(r"\\?%$", "", normalized).strip()


# --------------------------------------------------------------------------------------------
# The symbolic layer: math-verify in a worker process
# --------------------------------------------------------------------------------------------

_WORKER_MEMORY_BYTES = 2 * 1024**3
_WORKER_START_TIMEOUT_S = 60.0


_PLAIN_ALLOWED = re.compile(r"^[0-9A-Za-z+\-*/^().\s]*$")
_PLAIN_NAMES = frozenset({"sqrt", "pi", "oo"})
_LATEX_FRAC = re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_ROOT = re.compile(r"\\sqrt\s*\[([^\]]*)\]\s*\{([^{}]*)\}")
_LATEX_SQRT = re.compile(r"\\sqrt\s*\{([^{}]*)\}")
_LATEX_SQRT_SHORT = re.compile(r"\\sqrt\s*([0-9A-Za-z])")


def plain_expression(answer: str) -> str | None:
    """``answer`` as a plain scalar expression (``sqrt``, ``pi``, ``oo``, one-letter symbols,
    numbers, ``+ - * / ^`` and parentheses), or None when it is anything else.

    The sympy fallback parses only such text: with no other names, no quotes, dots after names
    or underscores, sympy's expression parser (which evaluates Python) cannot reach anything.
    """
    text = answer.replace("\\pi", " pi ").replace("\\infty", " oo ").replace("\\cdot", "*").replace("\\times", "*")
    for _ in range(10):  # innermost first, so nested fractions and roots unfold
        replaced = _LATEX_FRAC.sub(r"((\1)/(\2))", text)
        replaced = _LATEX_ROOT.sub(r"((\2)**(1/(\1)))", replaced)
        replaced = _LATEX_SQRT.sub(r"sqrt(\1)", replaced)
        replaced = _LATEX_SQRT_SHORT.sub(r"sqrt(\1)", replaced)
        if replaced == text:
            break
        text = replaced
    text = text.replace("{", "(").replace("}", ")").replace("**", "^")
    if not text.strip() or not _PLAIN_ALLOWED.match(text):
        return None
    for name in re.findall(r"[A-Za-z]+", text):
        if len(name) > 1 and name not in _PLAIN_NAMES:
            return None
    if re.search(r"[A-Za-z]\s*\.|\.\s*[A-Za-z]", text):  # no attribute access
        return None
    return text


def _sympy_equal(predicted: str, gold: str) -> bool:  # pragma: no cover - runs in the worker
    """Fallback when math-verify says no: both answers as plain expressions, equal by sympy."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    plain_pred, plain_gold = plain_expression(predicted), plain_expression(gold)
    if plain_pred is None or plain_gold is None:
        return False
    names = set(re.findall(r"[A-Za-z]+", plain_pred + " " + plain_gold)) - _PLAIN_NAMES
    local = {name: sympy.Symbol(name) for name in names}  # "S", "I", "E" stay plain symbols
    local.update({"sqrt": sympy.sqrt, "pi": sympy.pi, "oo": sympy.oo})
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    constructors = {"Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational, "Symbol": sympy.Symbol}
    a = parse_expr(plain_pred, local_dict=local, global_dict=dict(constructors), transformations=transformations)
    b = parse_expr(plain_gold, local_dict=local, global_dict=dict(constructors), transformations=transformations)
    if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
        return False
    difference = a - b
    if a.free_symbols or b.free_symbols:
        return bool(sympy.expand(difference) == 0 or sympy.simplify(difference) == 0)
    value, scale = sympy.N(difference, 30), sympy.N(b, 30)
    if not (value.is_number and scale.is_number) or value.has(sympy.zoo, sympy.nan):
        return False
    return bool(abs(value) <= sympy.Float("1e-9") * max(1, abs(scale)))


def _worker_main() -> None:  # pragma: no cover - runs in the worker process
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import logging
    import resource

    try:  # sympy can allocate without bound on hostile input
        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    logging.disable(logging.WARNING)  # math-verify warns on every call with timeouts disabled
    from math_verify import parse, verify

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            gold = parse("\\boxed{" + request["gold"] + "}", parsing_timeout=None)
            pred = parse("\\boxed{" + request["pred"] + "}", parsing_timeout=None)
            equal = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
            if not equal:
                equal = _sympy_equal(request["pred"], request["gold"])
            reply = {"equal": equal}
        except Exception as error:  # a parse/verify failure means "not shown equal"
            reply = {"equal": False, "error": f"{type(error).__name__}: {error}"[:300]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


class AnswerJudge:
    """Owns one math-verify worker process; compares answers with a deadline per comparison.

    Thread-safe (one comparison at a time). On a timeout the worker is killed, the comparison
    counts as unequal and the next comparison starts a fresh worker. Use as a context manager
    or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._buffer = b""
        self.timeouts = 0  # comparisons cut off by the deadline
        self.symbolic_checks = 0  # comparisons that reached the worker
        self._finalizer: weakref.finalize | None = None

    def __enter__(self) -> AnswerJudge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker process (a later comparison starts a new one)."""
        with self._lock:
            self._stop()

    def equal(self, predicted: str, gold: str, timeout_s: float = 5.0) -> bool:
        """:func:`answers_equal` with this judge's worker for the symbolic layer."""
        return answers_equal(predicted, gold, timeout_s=timeout_s, judge=self)

    def symbolic_equal(self, predicted: str, gold: str, timeout_s: float) -> bool:
        """math-verify's verdict on two normalized answers; False on timeout or failure."""
        with self._lock:
            self.symbolic_checks += 1
            process = self._ensure_started()
            request = json.dumps({"pred": predicted, "gold": gold}) + "\n"
            try:
                assert process.stdin is not None
                process.stdin.write(request.encode())
                process.stdin.flush()
            except (BrokenPipeError, OSError):
                self._stop()
                return False
            reply = self._read_line(time.monotonic() + timeout_s)
            if reply is None:
                self.timeouts += 1
                self._stop()
                return False
            return bool(json.loads(reply).get("equal", False))

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        project_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            [sys.executable, "-c", "from labelers.answers import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._process = process
        self._buffer = b""
        self._finalizer = weakref.finalize(self, _kill, process)
        ready = self._read_line(time.monotonic() + _WORKER_START_TIMEOUT_S)
        if ready is None or not json.loads(ready).get("ready"):
            self._stop()
            raise PrmforgeError("the answer-checking worker (math-verify) did not start; is math-verify installed?")
        return process

    def _read_line(self, deadline: float) -> str | None:
        process = self._process
        assert process is not None and process.stdout is not None
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # worker died (e.g. memory limit)
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps the worker once
            self._finalizer = None
        self._process = None
        self._buffer = b""


def answers_equal(predicted: str, gold: str, timeout_s: float = 5.0, judge: AnswerJudge | None = None) -> bool:
    """Whether ``predicted`` and ``gold`` are the same answer (see the module doc for the rules).

    ``timeout_s`` bounds the symbolic check; past it the answer counts as unequal. ``judge``
    supplies a long-lived worker for the symbolic layer (recommended in loops).
    """
    if predicted is None or gold is None:
        return False
    pred, ref = normalize_answer(predicted), normalize_answer(gold)
    if not pred or not ref:
        return False
    verdict = _fast_verdict(pred, ref)
    if verdict is not None:
        return verdict
    # Symbolic layer: the percent sign is a unit there (unit reading of the percent rule).
    pred, ref = _without_percent(pred), _without_percent(ref)
    if "__" in pred or "__" in ref:  # no answer needs a dunder; sympy's parser would evaluate it
        return False
    if judge is not None:
        return judge.symbolic_equal(pred, ref, timeout_s)
    with AnswerJudge() as own_judge:
        return own_judge.symbolic_equal(pred, ref, timeout_s)
