"""Claim extraction: the claims of a step with their spans, other readings and cues.

:func:`extract` reads GSM8K calculator annotations, then the visible text (plain text between
the math regions of :mod:`labelers.verify.claims.segments`, LaTeX inside them), splits the
token stream into runs at breaks, each run into sides at its relations, and keeps the pairs of
neighbouring sides that both parse; then adds substituted claims ("x = 5 solves 2x + 1 = 11").
Cue words in the step mark claims as rounded, the step as denying, and give other readings
(a quotient with a remainder, a congruence). The rules are in the package doc
(:mod:`labelers.verify.claims`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labelers.verify.claims.parse import (
    READ_AS_CONGRUENCE,
    READ_AS_QUOTIENT,
    _emit,
    _map_children,
    _parse_side,
    _Side,
    free_symbols,
    substitute,
    to_plain,
)
from labelers.verify.claims.segments import _math_segments
from labelers.verify.claims.tokens import _BREAKS, _DIGITS, ParseError, Token, _Tokenizer

# Limits that keep extraction linear and bounded on hostile text (tokens.py has the others).
MAX_STEP_CHARS = 100_000  # text beyond this is not scanned for claims
MAX_CLAIMS_PER_STEP = 200

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
    r"\b(not|isn't|doesn't|does not|fails?|extraneous|reject(ed)?|invalid|impossible|"
    r"contradiction|none|neither|never)\b",
    re.IGNORECASE,
)

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_CODE_BLOCK = re.compile(r"```.*?(```|\Z)", re.DOTALL)
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


_IMPLICATIONS = frozenset({"Rightarrow", "implies", "Longrightarrow", "=>", "->"})


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


def _is_lone_percent(tree: tuple) -> bool:
    return tree[0] == "pct" and tree[1][0] == "num"


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
            first_cut = (
                first_cut
                or dangling
                or pending_cut > 0
                or (before is not None and before.kind == "CUT1" and _lone_number_first(run))
            )
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
    rejected += [
        x for x in r if not any(_adjacent(text, e, x.span[1] - 1) or s <= x.span[0] < e for s, e, _ in ann_tokens)
    ]

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
