"""Where the math is in a step: LaTeX regions (``$...$``, ``$$...$$``, ``\\(...\\)``,
``\\[...\\]``, math environments), and which ``$`` signs are money rather than math.

Extraction tokenizes the regions in LaTeX mode and the text between them as plain text.
"""

from __future__ import annotations

import re

_MATH_ENV = re.compile(
    r"\\begin\{(align|equation|eqnarray|gather|multline|split|aligned|gathered)(\*?)\}(.*?)\\end\{\1\2\}",
    re.DOTALL,
)


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
