"""Parser: tokens -> expression tree (tuples) -> plain string, and the readings of a tree.

A side of a claim (a list of :class:`~labelers.verify.claims.tokens.Token`) becomes a tree of
tuples such as ``("add", ("num", "2"), ("sym", "x"))``; :func:`to_plain` writes a tree as a
sympy-parseable string and :func:`parse_plain` reads such a string back. The parser is a small
recursive-descent parser over a token whitelist (no ``eval``) with a nesting limit. Text with two
meanings (a mixed number, square brackets, a bare log) gives marked nodes; :func:`_side_readings`
resolves them into the first reading and the others (``READ_AS_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labelers.verify.claims.tokens import (
    _BREAKS,
    _LOG_EITHER_BASE,
    _MIXED,
    MAX_NESTING,
    ParseError,
    Token,
    _Tokenizer,
)


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
