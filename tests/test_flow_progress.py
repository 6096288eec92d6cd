"""Progress display (terminal bar and plain lines) and the closing summary table."""

from __future__ import annotations

import io
import time

from data_schemas.records import ProblemOutcome
from flows.progress import BuildProgress, BuildSummary, query_example
from labelers.policy.base import TokenUsage


def _outcome(problem_id: str, status: str = "labeled", rollouts: int = 5) -> ProblemOutcome:
    return ProblemOutcome(
        "b1", problem_id, "gsm8k", "q", "1", status, "search" if status == "failed" else None,
        "boom" if status == "failed" else None, 1, 2, 1, 1, rollouts, 10, 20, 1.0,
    )


def _summary(**changes) -> BuildSummary:
    values = dict(
        build_id="demo-1", status="complete", root="/data x", manifest_path="/data x/builds/demo-1/manifest.json",
        shards_dir="/data x/builds/demo-1", shard_files=6, problems_total=4, problems_failed=1, problems_skipped=1,
        input_rows_skipped=0, batches_total=2, batches_reused=1, steps=10, positive_steps=7, tool_checked_steps=4,
        lean_checked_steps=0, rollouts=30, prompt_tokens=100, completion_tokens=200, generation_seconds=9.0,
        wall_seconds=10.0, failures=(("p3", "search", "boom"),),
    )
    values.update(changes)
    return BuildSummary(**values)


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = BuildProgress(stream=stream, force_terminal=False)
    assert not progress.interactive
    progress.start("demo-1", problems_total=3, batches_total=2)
    progress.batch_done("00000-a", [], [_outcome("p1"), _outcome("p2", "failed")], TokenUsage(completion_tokens=50),
                        reused=False)
    progress.batch_done("00001-b", [], [_outcome("p3")], TokenUsage(completion_tokens=50), reused=True)
    progress.stop()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "build demo-1: 3 problems in 2 batches"
    assert lines[1].startswith("batch 00000-a: 2/3 problems (1 failed) | 10 rollouts")
    assert lines[2].startswith("batch 00001-b (reused): 3/3 problems (1 failed) | 15 rollouts")
    assert progress.tally.failures == [("p2", "search", "boom")]


def test_live_bar_on_a_terminal_reads_live_tokens():
    stream = io.StringIO()
    live = [500]  # tokens sampled before this build
    progress = BuildProgress(stream=stream, force_terminal=True, live_tokens=lambda: live[0])
    assert progress.interactive
    progress.start("demo-1", problems_total=2, batches_total=1)
    live[0] = 620  # tokens generated while the batch runs
    before = time.perf_counter() - progress._started
    rate = progress._tokens_per_second()
    after = time.perf_counter() - progress._started
    assert 120 / after <= rate <= 120 / before  # the 500 sampled before the build do not count
    progress.batch_done("00000-a", [], [_outcome("p1"), _outcome("p2")], TokenUsage(completion_tokens=120),
                        reused=False)
    progress.stop()
    text = stream.getvalue()
    assert "2/2 problems" in text and "10 rollouts" in text and "tok/s" in text


def test_eta_is_the_pace_of_the_batches_this_run_labeled_counted_down():
    """A resumed build's reused batches are done at once: by problems done the ETA after the first
    new batch read 40 s for 120. On a terminal the bar's ETA is the build's own (rich's
    TimeRemainingColumn read -:--:-- all build long: batches end minutes apart, its speed window
    is 30 s), counting down between batches."""
    from flows.progress import _EtaColumn

    now = [0.0]
    stream = io.StringIO()
    progress = BuildProgress(stream=stream, force_terminal=False, clock=lambda: now[0])
    progress.start("demo-1", problems_total=10, batches_total=4, batches_reusable=2)
    for key in ("00000-a", "00001-b"):  # 4 problems an earlier run labeled
        progress.batch_done(key, [], [_outcome(f"{key}-1"), _outcome(f"{key}-2")], TokenUsage(), reused=True)
    now[0] = 60.0
    progress.batch_done("00002-c", [], [_outcome("p5"), _outcome("p6")], TokenUsage(), reused=False)
    lines = stream.getvalue().splitlines()
    assert lines[1].endswith("| eta ?") and lines[2].endswith("| eta ?")
    assert lines[3].endswith("| elapsed 60 s | eta 120 s")  # 2 problems a minute, 4 left
    now[0] = 90.0
    assert progress.eta_seconds() == 90.0
    column = _EtaColumn(progress)
    assert column.render(None).plain == "eta 1 min 30 s"
    now[0] = 500.0
    assert column.render(None).plain == "eta 0 s"  # late, not negative


def test_the_terminal_bar_shows_the_builds_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = BuildProgress(stream=stream, force_terminal=True, clock=lambda: now[0])
    progress.start("demo-1", problems_total=4, batches_total=2)
    now[0] = 100.0
    progress.batch_done("00000-a", [], [_outcome("p1"), _outcome("p2")], TokenUsage(), reused=False)
    now[0] = 120.0
    progress.stop()
    text = stream.getvalue()
    assert "eta 80 s" in text and "-:--:--" not in text  # the last frame: 100 s for 2, 2 left, 20 s on


def test_summary_table_names_everything_the_user_needs():
    stream = io.StringIO()
    BuildProgress(stream=stream, force_terminal=False).print_summary(_summary())
    text = stream.getvalue()
    for expected in ("2 labeled, 1 skipped", "1 failed", "10 (7 positive, 3 negative)", "4/10 (40%)", "0/10", "(90%)",
                     "p3 at search: boom", "prmforge query"):
        assert expected in text, expected
    assert query_example(_summary()).endswith("--root '/data x' --build demo-1")
    assert "gold reached" not in text  # no MC in this build


def test_summary_says_on_how_many_problems_mc_reached_gold():
    stream = io.StringIO()
    BuildProgress(stream=stream, force_terminal=False).print_summary(_summary(gold_reach=(1, 3)))
    text = " ".join(stream.getvalue().replace("│", " ").split())  # the table wraps long values
    assert "on 1 of 3 problems a path or rollout reached the gold answer; on the other 2 every MC value is 0" in text
    stream = io.StringIO()
    BuildProgress(stream=stream, force_terminal=False).print_summary(_summary(gold_reach=(3, 3)))
    text = " ".join(stream.getvalue().replace("│", " ").split())
    assert "on 3 of 3 problems a path or rollout reached the gold answer" in text and "no evidence" not in text
    assert _summary(wall_seconds=0.0).generation_share is None

