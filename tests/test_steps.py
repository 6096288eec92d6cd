"""Step segmentation: styles, auto detection, exact round trip, GSM8K reference steps."""

from __future__ import annotations

import json

import pytest

from labelers.policy.prompts import assistant_prefix
from labelers.steps import detect_style, gsm8k_reference_steps, segment_steps, split_steps

NUMBERED = "Step 1: 16 - 3 - 4 = 9 eggs.\nStep 2: 9 * 2 = 18 dollars.\nStep 3: The answer is \\boxed{18}."
PARAGRAPHS = "First we add.\n2 + 3 = 5\n\nThen we double.\n5 * 2 = 10\n\n\nSo \\boxed{10}."
LINES = "2 + 3 = 5\n5 * 2 = 10\nSo the answer is 10."


def _round_trip(text: str, style: str = "auto") -> str:
    return "".join(segment.raw for segment in segment_steps(text, style))


def test_numbered_steps_lose_their_labels():
    assert split_steps(NUMBERED) == ["16 - 3 - 4 = 9 eggs.", "9 * 2 = 18 dollars.", "The answer is \\boxed{18}."]


def test_numbered_steps_span_lines():
    text = "Step 1: Add.\n2 + 3 = 5\nStep 2. Double:\n5 * 2 = 10"
    assert split_steps(text) == ["Add.\n2 + 3 = 5", "Double:\n5 * 2 = 10"]


def test_preamble_before_first_label_is_its_own_step():
    assert (split_steps("Let's solve it.\nStep 1: 1 + 1 = 2\nStep 2: \\boxed{2}")
            == ["Let's solve it.", "1 + 1 = 2", "\\boxed{2}"])


def test_empty_step_label_is_merged_not_an_empty_step():
    assert split_steps("Step 1:\nStep 2: 1 + 1 = 2\nStep 3:   \n") == ["1 + 1 = 2"]


def test_blank_line_style():
    assert split_steps(PARAGRAPHS) == ["First we add.\n2 + 3 = 5", "Then we double.\n5 * 2 = 10", "So \\boxed{10}."]


def test_newline_style():
    assert split_steps(LINES) == ["2 + 3 = 5", "5 * 2 = 10", "So the answer is 10."]
    assert split_steps(PARAGRAPHS, style="newline")[:2] == ["First we add.", "2 + 3 = 5"]


@pytest.mark.parametrize(
    ("text", "style"), [(NUMBERED, "step"), (PARAGRAPHS, "blank"), (LINES, "newline"), ("one line", "newline")]
)
def test_auto_detection(text, style):
    assert detect_style(text) == style


@pytest.mark.parametrize("style", ["auto", "step", "blank", "newline"])
@pytest.mark.parametrize(
    "text",
    [NUMBERED, PARAGRAPHS, LINES, "", "   \n\n ", "\n\nStep 1: a\n\n\nStep 2: b\n\n", "x\r\ny\r\n\r\nz",
     "  lead\n\ntrail  \n"],
)
def test_round_trip_is_exact(text, style):
    assert _round_trip(text, style) == text or (not text.strip() and segment_steps(text, style) == [])


def test_segments_are_contiguous_and_point_into_the_text():
    segments = segment_steps(PARAGRAPHS)
    assert segments[0].start == 0 and segments[-1].end == len(PARAGRAPHS)
    for left, right in zip(segments, segments[1:]):
        assert left.end == right.start
    for segment in segments:
        assert PARAGRAPHS[segment.start : segment.end] == segment.raw
        assert segment.content in segment.raw


def test_whitespace_only_text_has_no_steps():
    assert split_steps("") == []
    assert split_steps(" \n\n ") == []


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="unknown step style 'bullets'"):
        split_steps("a", style="bullets")


def test_prompt_prefix_splits_back_into_its_steps():
    steps = ["16 - 3 - 4 = 9 eggs.", "9 * 2 = 18.", "\\boxed{18}"]
    prefix = assistant_prefix(steps)  # ends with the open label "Step 4:"
    assert split_steps(prefix) == steps


def test_gsm8k_reference_steps():
    answer = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
              "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18")
    assert gsm8k_reference_steps(answer) == ["Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
                                             "She makes 9 * 2 = $18 every day."]
    assert (gsm8k_reference_steps(answer, keep_calculator=True)[0]
            == "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.")


def test_gsm8k_reference_steps_over_the_test_split(gsm8k_path):
    rows = [json.loads(line) for line in gsm8k_path.read_text().splitlines()]
    counts = [len(gsm8k_reference_steps(row["answer"])) for row in rows]
    assert min(counts) >= 1
    assert all("####" not in step and "<<" not in step
               for row in rows[:200] for step in gsm8k_reference_steps(row["answer"]))
    # Each non-empty line before "####" is one step.
    for row, count in zip(rows, counts):
        assert count == sum(1 for line in row["answer"].split("\n####")[0].splitlines() if line.strip())
