"""Build progress (live bar on a terminal, plain lines otherwise) and the closing summary table."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from data_schemas.records import ProblemOutcome, StepRow
from labelers.policy.base import TokenUsage

if TYPE_CHECKING:
    from labelers.pipeline import GoldReach
    from labelers.search.scheduler import EstimatePlan

# Tool verdicts that mean a tool actually decided the step; Lean states that mean Lean did.
TOOL_DECIDED = frozenset({"correct", "incorrect"})
LEAN_DECIDED = frozenset({"proved", "disproved"})


@dataclass
class BuildTally:
    """Running counts over the batches finished so far (the flow adds each batch once)."""

    problems_done: int = 0
    problems_failed: int = 0
    steps: int = 0
    positive_steps: int = 0
    tool_checked_steps: int = 0
    lean_checked_steps: int = 0
    rollouts: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (problem_id, stage, error)

    def add_batch(self, steps: Sequence[StepRow], outcomes: Sequence[ProblemOutcome], usage: TokenUsage) -> None:
        self.problems_done += len(outcomes)
        self.steps += len(steps)
        self.positive_steps += sum(1 for row in steps if row.fused_label)
        self.tool_checked_steps += sum(1 for row in steps if row.tool_verdict in TOOL_DECIDED)
        self.lean_checked_steps += sum(1 for row in steps if row.lean_state in LEAN_DECIDED)
        self.rollouts += sum(outcome.rollouts for outcome in outcomes)
        self.usage.add(usage)
        for outcome in outcomes:
            if outcome.status == "failed":
                self.problems_failed += 1
                self.failures.append((outcome.problem_id, outcome.failed_stage or "unknown", outcome.error or ""))


@dataclass(frozen=True)
class BuildSummary:
    """What a finished build reports (also the flow's return value)."""

    build_id: str
    status: str  # manifest status: complete or failed
    root: str
    manifest_path: str
    shards_dir: str
    shard_files: int
    problems_total: int
    problems_failed: int
    problems_skipped: int  # no complete solution path within the search budget
    input_rows_skipped: int
    batches_total: int
    batches_reused: int  # finished by an earlier run of this build (resume)
    steps: int
    positive_steps: int
    tool_checked_steps: int
    lean_checked_steps: int
    rollouts: int
    prompt_tokens: int
    completion_tokens: int
    generation_seconds: float
    wall_seconds: float
    failures: tuple[tuple[str, str, str], ...]
    dataset: str | None = None  # the dataset this build grows
    # Its plan: new, changed, relabeled, already_labeled, claimed_elsewhere (flows/dataset_plans.py).
    dataset_plan: dict[str, int] = field(default_factory=dict)
    cost_profile: str | None = None  # labelers.policy.usage.CostProfile.line() of the labeled batches
    # MC builds: problems with step rows, and those where a path or rollout reached the gold answer
    # (labelers.pipeline.gold_reach); None when the build's rule samples no rollouts.
    gold_reach: GoldReach | None = None

    @property
    def negative_steps(self) -> int:
        return self.steps - self.positive_steps

    @property
    def generation_share(self) -> float | None:
        """generation_seconds / wall_seconds: the part of the wall time spent generating."""
        return self.generation_seconds / self.wall_seconds if self.wall_seconds > 0 else None


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100.0 * part / whole:.0f}%)" if whole else "0/0"


def query_example(summary: BuildSummary) -> str:
    """A ready command that reads this build's step labels (a dataset's current ones) with DuckDB."""
    if summary.dataset is not None:
        sql = "SELECT fused_label, count(*) AS steps FROM dataset_steps GROUP BY fused_label"
        return f"prmforge query {shlex.quote(sql)} --root {shlex.quote(summary.root)} --dataset {summary.dataset}"
    sql = "SELECT fused_label, count(*) AS steps FROM steps GROUP BY fused_label"
    return f"prmforge query {shlex.quote(sql)} --root {shlex.quote(summary.root)} --build {summary.build_id}"


def dataset_plan_line(dataset: str, plan: dict[str, int]) -> str:
    """``dataset nightly: 5 new, 0 changed, 0 relabeled; 10 already labeled (skipped), ...``."""
    labeled = plan.get("new", 0) + plan.get("changed", 0) + plan.get("relabeled", 0)
    text = (
        f"{dataset}: {plan.get('new', 0)} new, {plan.get('changed', 0)} changed (content, model or label config), "
        f"{plan.get('relabeled', 0)} relabeled; {plan.get('already_labeled', 0)} already labeled (skipped)"
    )
    if plan.get("claimed_elsewhere"):
        text += f", {plan['claimed_elsewhere']} being labeled by another run"
    return text + ("" if labeled else " - nothing new to label")


def gold_reach_line(reached: int, problems: int) -> str:
    """The summary's warning that MC labels of problems the policy never solved carry no
    evidence (labelers.pipeline.gold_reach)."""
    line = f"on {reached} of {problems} problems a path or rollout reached the gold answer"
    if reached < problems:
        line += (f"; on the other {problems - reached} every MC value is 0 and each first error sits at the earliest "
                 "step probed: the policy not solving them, no evidence about their steps (a policy that solves "
                 "them: --model, --backend)")
    return line


def summary_table(summary: BuildSummary) -> Table:
    nothing_new = summary.dataset is not None and summary.problems_total == 0
    title = f"build {summary.build_id}: {summary.status}" + (" (nothing new to label)" if nothing_new else "")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")  # paths wrap, never cut with an ellipsis
    if nothing_new:
        table.add_row("dataset", dataset_plan_line(summary.dataset, summary.dataset_plan))
        table.add_row("manifest", summary.manifest_path)
        return table
    labeled = summary.problems_total - summary.problems_failed - summary.problems_skipped
    table.add_row(
        "problems",
        f"{labeled} labeled, {summary.problems_skipped} skipped (no complete path), {summary.problems_failed} failed",
    )
    if summary.input_rows_skipped:
        table.add_row("input rows skipped", str(summary.input_rows_skipped))
    if summary.dataset is not None:
        table.add_row("dataset", dataset_plan_line(summary.dataset, summary.dataset_plan))
    table.add_row(
        "step rows", f"{summary.steps} ({summary.positive_steps} positive, {summary.negative_steps} negative)"
    )
    table.add_row("rollouts", str(summary.rollouts))
    if summary.gold_reach is not None:
        table.add_row("gold reached", gold_reach_line(*summary.gold_reach))
    table.add_row("tokens", f"{summary.prompt_tokens} prompt, {summary.completion_tokens} generated")
    table.add_row("tool-checked steps", _share(summary.tool_checked_steps, summary.steps))
    table.add_row("Lean-checked steps", _share(summary.lean_checked_steps, summary.steps))
    share = summary.generation_share
    table.add_row(
        "time",
        f"{summary.wall_seconds:.1f} s wall, {summary.generation_seconds:.1f} s generating"
        + (f" ({100 * share:.0f}%)" if share is not None else ""),
    )
    if summary.cost_profile:
        table.add_row("cost profile", summary.cost_profile)
    table.add_row("batches", f"{summary.batches_total} ({summary.batches_reused} reused from an earlier run)")
    table.add_row("shards", f"{summary.shard_files} files under {summary.shards_dir}")
    table.add_row("manifest", summary.manifest_path)
    for problem_id, stage, error in summary.failures[:5]:
        table.add_row("failed", f"{problem_id} at {stage}: {error[:120]}")
    if len(summary.failures) > 5:
        table.add_row("failed", f"... and {len(summary.failures) - 5} more (see the problems view)")
    return table


class _CountColumn(ProgressColumn):
    """Problems done/total, rollouts and generated tokens per second."""

    def render(self, task: Task) -> Text:
        fields = task.fields
        failed = fields.get("failed", 0)
        text = f"{int(task.completed)}/{int(task.total or 0)} problems"
        if failed:
            text += f" ({failed} failed)"
        text += f" | {fields.get('rollouts', 0)} rollouts | {fields.get('tokens_per_s', 0.0):.1f} tok/s"
        return Text(text)


class _EtaColumn(ProgressColumn):
    """The build's own ETA (BuildProgress.eta_seconds). rich's TimeRemainingColumn estimates the
    speed from the updates of the last 30 s, and a build's batches end minutes apart on a CPU:
    it showed -:--:-- for the whole build."""

    def __init__(self, progress: BuildProgress) -> None:
        super().__init__()
        self.progress = progress

    def render(self, task: Task) -> Text:
        seconds = self.progress.eta_seconds()
        return Text("eta " + ("?" if seconds is None else _duration(seconds)))


class BuildProgress:
    """Live progress of one build.

    On a terminal: a rich progress bar refreshed a few times a second. Elsewhere (CI logs, pipes)
    one plain line per finished batch. ``live_tokens`` (optional) returns the tokens the policies
    in this process have sampled, runs in progress included (ResourceHolder.live_tokens), so tokens/s
    moves while a batch is still generating (thread runner); other runners update at batch
    boundaries.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        live_tokens: Callable[[], int] | None = None,
        force_terminal: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.console = Console(file=stream, force_terminal=force_terminal, highlight=False, soft_wrap=True)
        self.live_tokens = live_tokens
        self.clock = clock
        self.tally = BuildTally()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task_id: int | None = None
        self._started = clock()
        self._total = 0
        self._reused_problems = 0  # of batches an earlier run wrote: done at once, not at the build's pace
        self._last_batch_at: float | None = None  # when the last batch labeled by this run ended
        self._baseline_tokens = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def start(self, build_id: str, problems_total: int, batches_total: int, batches_reusable: int = 0) -> None:
        self._started = self.clock()
        self._total = problems_total
        self._baseline_tokens = self.live_tokens() if self.live_tokens else 0
        head = f"build {build_id}: {problems_total} problems in {batches_total} batches"
        if batches_reusable:
            head += f" ({batches_reusable} shard(s) already written by an earlier run)"
        self.console.print(head)
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]labeling"),
                BarColumn(bar_width=16),  # the whole line fits 80 columns
                _CountColumn(),
                _EtaColumn(self),
                console=self.console,
                transient=False,
            )
            self._task_id = self._progress.add_task(
                "labeling", total=problems_total, rollouts=0, tokens_per_s=0.0, failed=0
            )
            self._progress.start()
            if self.live_tokens is not None:
                self._ticker = threading.Thread(target=self._tick, name="prmforge-progress", daemon=True)
                self._ticker.start()

    def eta_seconds(self) -> float | None:
        """Seconds left: the problems not done at the pace of those this run labeled, counted
        down since the last batch ended (``elapsed / labeled * left - since``; a resumed build's
        reused batches are done at once and would make it look fast). None before a batch."""
        labeled = self.tally.problems_done - self._reused_problems
        if self._last_batch_at is None or labeled <= 0:
            return None
        pace = (self._last_batch_at - self._started) / labeled
        left = pace * (self._total - self.tally.problems_done) - (self.clock() - self._last_batch_at)
        return max(left, 0.0)

    def _tokens_per_second(self) -> float:
        elapsed = self.clock() - self._started
        if self.live_tokens is not None:
            generated = self.live_tokens() - self._baseline_tokens
        else:
            generated = self.tally.usage.completion_tokens
        return max(generated, 0) / elapsed if elapsed > 0 else 0.0

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._progress is not None and self._task_id is not None:
                    self._progress.update(self._task_id, tokens_per_s=self._tokens_per_second())

    def batch_done(
        self,
        batch_key: str,
        steps: Sequence[StepRow],
        outcomes: Sequence[ProblemOutcome],
        usage: TokenUsage,
        reused: bool,
    ) -> None:
        with self._lock:
            self.tally.add_batch(steps, outcomes, usage)
            if reused:
                self._reused_problems += len(outcomes)
            else:
                self._last_batch_at = self.clock()
            tally = self.tally
            rate = self._tokens_per_second()
            if self._progress is not None and self._task_id is not None:
                self._progress.update(
                    self._task_id,
                    completed=tally.problems_done,
                    rollouts=tally.rollouts,
                    tokens_per_s=rate,
                    failed=tally.problems_failed,
                )
                return
            elapsed = self.clock() - self._started
            eta = self.eta_seconds()
            self.console.print(
                f"batch {batch_key}{' (reused)' if reused else ''}: {tally.problems_done}/{self._total} problems"
                f" ({tally.problems_failed} failed) | {tally.rollouts} rollouts | {rate:.1f} tok/s"
                f" | elapsed {elapsed:.0f} s | eta {'?' if eta is None else f'{eta:.0f} s'}"
            )

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    def print_summary(self, summary: BuildSummary) -> None:
        self.console.print(summary_table(summary))
        # Outside the table and never wrapped, so it can be copied as one line.
        self.console.print("query the steps:", soft_wrap=True)
        self.console.print("  " + query_example(summary), soft_wrap=True, markup=False)


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class PassProgress:
    """Progress of one labeling pass of ``eval run``: plain lines on ``stream`` (stderr) such as
    ``pass 1 of 1 (binary: mc, hybrid): 12/40 solutions | 230 rollouts | 41.2 tok/s | elapsed 9 min
    | eta 21 min``.

    :meth:`sampled` is fed after every generate call (rollouts and tokens sampled fresh, not
    replayed: labelers/evaluation/replay.py) and prints at most every ``interval`` seconds, so a
    chunk of long rollouts still shows that the pass moves; :meth:`solutions` after every chunk
    of solutions, printing unless a line went out less than ``min_gap`` seconds ago. A pass that
    restarts its count (the hybrid's own pass after MC's) is numbered as a part of the pass.

    ``eta`` comes from the work of the part's prefix estimates when it has a plan (:meth:`expect`
    before it samples, :meth:`add_plan` as each chunk begins), else from solutions::

        planned = P + X        # P: the begun chunks' EstimatePlan.planned(), X: the expected
                               # estimates of the solutions after them
        eta = (t - t1) / (E - E1) * (planned - E)   # E estimates ended by now (t), E1 by the
                                                     # first time any had ended (t1)
        eta = elapsed / done * (total - done)      # without a plan (a judge-only pass)

    A streamed chunk's searches advance together and end together, and the solutions that need
    no rollouts count at once: by solutions the ETA of a 9-minute GSM8K pass read 83 s after 31 s
    and 8 min 45 s with 4 minutes left. Counting from the first end leaves out the time the
    decoder takes to fill with rollouts, when no estimate can end. ``?`` until an estimate has
    ended after the first. Measured against the alternatives: docs/evaluation.md.

    Between :meth:`start` and :meth:`stop` a ticker thread also prints when ``interval`` seconds
    passed without a line: one generate call of a chunk can take minutes on a CPU, and a silent
    pass looks like a hung one.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None, interval: float = 30.0,
                 min_gap: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 completions: str = "rollouts") -> None:
        import sys

        self.label = label
        self.completions = completions  # what the pass samples: rollouts, or a judge-only pass's replies
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.min_gap = min_gap
        self.clock = clock
        self.done = 0
        self.part = 1
        self.rollouts = 0
        self.tokens = 0
        self.generation_seconds = 0.0
        self._part_started = self._started = self._last_line = self._last_chunk = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._live_tokens: Callable[[], int] | None = None
        self._live_base = 0
        self._live_since = 0.0
        self._plans: list[tuple[EstimatePlan, int]] = []  # (plan, end) of the part's chunks, in order
        self._expected: list[float] = []  # estimates expected per solution of the part, before it sampled
        self._first_end: tuple[float, int] | None = None  # (time, estimates ended) when the part's first ended

    def watch_tokens(self, counter: Callable[[], int] | None) -> None:
        """Take tok/s from ``counter`` (tokens the policy sampled so far, a run in progress
        included: EmbeddedPolicy.live_sampled_tokens) over the time since this call, instead of
        from finished requests: a streamed run answers its first request minutes after it starts
        on a CPU, and a rate that stays at 0.0 until then looks like a hung pass."""
        with self._lock:
            self._live_tokens = counter
            self._live_base = counter() if counter is not None else 0
            self._live_since = self.clock()

    def start(self) -> None:
        self._ticker = threading.Thread(target=self._tick, name="prmforge-pass-progress", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None

    def _tick(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            with self._lock:
                self._note_first_end()  # within 5 s where no sampled() call follows an end
                if self.clock() - self._last_line >= self.interval:
                    self._print()

    def _note_first_end(self) -> None:
        if self._first_end is None and (ended := self._ended()):
            self._first_end = (self.clock(), ended)

    def sampled(self, completions: int, tokens: int, seconds: float) -> None:
        with self._lock:
            self.rollouts += completions
            self.tokens += tokens
            self.generation_seconds += seconds
            self._note_first_end()  # an estimate ends as its last request's answer comes back
            if self.clock() - self._last_line >= self.interval:
                self._print()

    def solutions(self, done: int, total: int) -> None:
        with self._lock:
            if done < self.done:
                self.part += 1
                self._part_started = self._last_chunk  # the new part began when the last one ended
                self._plans, self._expected = [], []
                self._first_end = None
            self._last_chunk = self.clock()
            self.done, self.total = done, total
            if self.clock() - self._last_line >= self.min_gap or done == total:
                self._print()

    def expect(self, per_solution: Sequence[float]) -> None:
        """The prefix estimates each solution of this part is expected to take (before any chunk
        begins: labelers.pipeline.expected_estimates); says the pass's size at once."""
        with self._lock:
            self._expected = list(per_solution)
            sampled = sum(1 for estimates in per_solution if estimates > 0)
            part = f" part {self.part}" if self.part > 1 else ""
            print(f"{self.label}{part}: about {sum(per_solution):.0f} prefix estimates to sample, for {sampled} of"
                  f" {len(per_solution)} solutions (the others need no rollouts)", file=self.stream, flush=True)

    def add_plan(self, plan: EstimatePlan, end: int) -> None:
        """The next chunk of this part, its solutions up to ``end - 1``, plans ``plan``
        (``ended()`` and ``planned()`` prefix estimates, read at each line while it runs)."""
        with self._lock:
            self._plans.append((plan, end))

    def _ended(self) -> int:
        return sum(plan.ended() for plan, _ in self._plans)

    def _work_eta(self, now: float) -> str | None:
        """The ETA from the plans (class doc), ``?`` until an estimate has ended after the first,
        None without a plan of any estimate (the caller counts solutions)."""
        covered = max((end for _, end in self._plans), default=0)
        planned = sum(plan.planned() for plan, _ in self._plans) + sum(self._expected[covered:])
        if planned <= 0:
            return None
        ended = self._ended()
        if self._first_end is None or ended <= self._first_end[1] or now <= self._first_end[0]:
            return "?"
        first_time, first_ended = self._first_end
        return _duration((now - first_time) / (ended - first_ended) * max(planned - ended, 0.0))

    def line(self) -> str:
        now = self.clock()
        elapsed = now - self._started
        in_part = now - self._part_started
        if self._live_tokens is not None:
            since = now - self._live_since
            rate = max(0, self._live_tokens() - self._live_base) / since if since > 0 else 0.0
        else:
            rate = self.tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        eta = self._work_eta(now)
        if eta is None:
            eta = _duration(in_part / self.done * (self.total - self.done)) if self.done else "?"
        part = f" part {self.part}" if self.part > 1 else ""
        return (f"{self.label}{part}: {self.done}/{self.total} solutions | {self.rollouts} {self.completions}"
                f" | {rate:.1f} tok/s | elapsed {_duration(elapsed)} | eta {eta}")

    def _print(self) -> None:
        self._last_line = self.clock()
        print(self.line(), file=self.stream, flush=True)
