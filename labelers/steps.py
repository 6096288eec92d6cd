"""Split a written solution into steps.

Styles:

- ``"step"``: a new step begins at each line starting with ``Step k:`` (or ``Step k.``), the
  format the shared prompt asks for (labelers/policy/prompts.py); the label is not part of the
  step's content;
- ``"blank"``: steps are separated by blank lines (paragraphs);
- ``"newline"``: every non-empty line is a step;
- ``"auto"``: ``"step"`` when some line starts with a step label, else ``"blank"`` when the text
  has at least two paragraphs, else ``"newline"``.

:func:`segment_steps` returns :class:`StepSegment` records that cover the text without gaps or
overlaps (``"".join(s.raw for s in segments) == text``): separators, blank lines and
whitespace belong to a neighbouring segment's ``raw`` text, never to its ``content``. Text before
the first ``Step 1:`` label is a step of its own when it holds anything but whitespace.
:func:`split_steps` returns just the contents. Text holding only whitespace has no steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STYLES = ("auto", "step", "blank", "newline")

_STEP_LABEL = re.compile(r"^[ \t]*Step[ \t]+\d+[ \t]*[:.][ \t]*", re.IGNORECASE | re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_NEWLINES = re.compile(r"\n\s*")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"^\s*####.*$", re.MULTILINE)


@dataclass(frozen=True)
class StepSegment:
    """One step: ``raw`` is ``text[start:end]`` (label, content and trailing separator);
    ``content`` is the step without its label and surrounding whitespace."""

    start: int
    end: int
    raw: str
    content: str


def detect_style(text: str) -> str:
    """The style ``"auto"`` resolves to for ``text``."""
    if _STEP_LABEL.search(text):
        return "step"
    paragraphs = [p for p in _BLANK_LINES.split(text.strip()) if p.strip()]
    return "blank" if len(paragraphs) >= 2 else "newline"


def _boundaries(text: str, style: str) -> list[int]:
    """Start offsets of the pieces ``text`` is cut into (always starting with 0)."""
    if style == "step":
        starts = [m.start() for m in _STEP_LABEL.finditer(text)]
    elif style == "blank":
        starts = [m.end() for m in _BLANK_LINES.finditer(text)]
    elif style == "newline":
        starts = [m.end() for m in _NEWLINES.finditer(text)]
    else:
        raise ValueError(f"unknown step style {style!r}; expected one of {', '.join(STYLES)}")
    return [0] + [s for s in starts if 0 < s < len(text)]


def _content(piece: str, style: str) -> str:
    if style == "step":
        piece = _STEP_LABEL.sub("", piece, count=1) if _STEP_LABEL.match(piece) else piece
    return piece.strip()


def segment_steps(text: str, style: str = "auto") -> list[StepSegment]:
    """The steps of ``text`` as segments covering it exactly (see the module doc).

    Pieces without content (leading whitespace, an empty ``Step k:`` label) are merged into the
    following step, or into the previous one at the end of the text, so no step is empty.
    """
    if style == "auto":
        style = detect_style(text)
    cuts = _boundaries(text, style) + [len(text)]
    pieces = [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1) if cuts[i] < cuts[i + 1]]
    merged: list[tuple[int, int, str]] = []  # (start, end, content of the step's own piece)
    pending_start: int | None = None  # start of content-less pieces waiting for a step
    for start, end in pieces:
        content = _content(text[start:end], style)
        if not content:
            if pending_start is None:
                pending_start = start
            continue
        merged.append((pending_start if pending_start is not None else start, end, content))
        pending_start = None
    if pending_start is not None and merged:
        merged[-1] = (merged[-1][0], len(text), merged[-1][2])
    segments = [StepSegment(start, end, text[start:end], content) for start, end, content in merged]
    return segments


def split_steps(text: str, style: str = "auto") -> list[str]:
    """The contents of the steps of ``text`` (labels and surrounding whitespace removed)."""
    return [segment.content for segment in segment_steps(text, style)]


def gsm8k_reference_steps(answer_text: str, keep_calculator: bool = False) -> list[str]:
    """Steps of a GSM8K reference answer: its non-empty lines before ``#### N``.

    The ``<<expr=result>>`` calculator annotations are removed unless ``keep_calculator``:
    they are GSM8K markup, not part of the written reasoning.
    """
    body = answer_text.split("\n####", 1)[0] if "\n####" in answer_text else _GSM8K_FINAL.sub("", answer_text)
    if not keep_calculator:
        body = _CALCULATOR.sub("", body)
    return [line.strip() for line in body.splitlines() if line.strip()]
