"""The step-signal protocol (labelers/signals/): what the registry declares, and that a new signal
is one class plus its registration -- the pipeline runs it, the rationale prints its line, the
eval runner lists and runs it, and fusion (which reads tool, lean, mc, judge by name) is unchanged."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from data_schemas.records import StepRow
from data_schemas.schemas import STEPS
from labelers.config import BuildConfig
from labelers.evaluation import runner
from labelers.signals import registry
from labelers.signals.base import PathSignal, SignalInputs, SignalNeeds, SignalOutput, SignalPath
from labelers.signals.judge import JUDGE
from labelers.signals.lean import LEAN
from labelers.signals.mc import MC
from labelers.signals.tool import TOOL
from labelers.verify.base import JudgeVerdict
from tests.support.scripted_judge import ScriptedJudge
from tests.test_eval_run import _config, injected_set, scripted_for

STEP_ROW_COLUMNS = {f.name for f in dataclasses.fields(StepRow)}


@pytest.fixture(scope="module")
def small_set():
    """6 solutions with an injected error, 4 correct (as tests/test_eval_run.py's)."""
    return injected_set(6, 4, seed=11)


def test_registry_declares_tool_lean_mc_judge_with_their_columns() -> None:
    assert [(s.name, s.columns) for s in registry.registered()] == [
        ("tool", ("tool_verdict", "tool_kind", "tool_evidence")),
        ("lean", ("lean_state", "lean_statement", "lean_message")),
        ("mc", ("mc_correct", "mc_total", "mc_value", "mc_inferred", "hard_label")),
        ("judge", ("judge_verdict", "judge_reply", "judge_status")),
    ]
    owned = [column for signal in registry.registered() for column in signal.columns]
    assert len(owned) == len(set(owned))  # no column filled by two signals
    assert set(owned) <= STEP_ROW_COLUMNS and set(owned) <= set(STEPS.names)  # real columns of the steps table
    for signal in registry.registered():
        assert set(signal.row_fields(signal.missing)) == set(signal.columns), signal.name
    assert [s.name for s in registry.path_signals()] == ["lean", "judge"]  # tool: in the search; mc: the value stage


def test_needs_and_failed_stages() -> None:
    assert TOOL.needs == SignalNeeds(toolchain="tool") and LEAN.needs == SignalNeeds(toolchain="lean")
    assert JUDGE.needs == SignalNeeds(policy="judge")
    assert MC.needs == SignalNeeds(policy="policy", gold_answer=True)
    assert [s.failed_stage for s in registry.registered()] == ["verify", "verify", "mc", "judge"]
    assert runner.gold_signals() == {"mc", "hybrid", "answer"}
    assert runner.eval_signals() == ("tool", "lean", "mc", "judge", "hybrid", "prm", "answer")
    assert runner.pass_signals() == ("judge",)


def test_rows_round_trip_through_each_signal(small_set) -> None:
    """Each signal's columns of a labeled row give back what fusion read (stored signals re-fuse to
    the row's labels: labelers/evaluation/rescore.py relies on it)."""
    from labelers import pipeline

    records, references = small_set
    config = _config(**{"fuse.judge": "verifier", "fuse.after_first_error": "negative"})
    problems = runner._given_problems(records)
    result = pipeline.label_given_solutions(problems, [[list(r.steps)] for r in records], config,
                                            scripted_for(records, references), None, None,
                                            step_judge=ScriptedJudge(lambda *_: "Verdict: correct"))
    by_path: dict[str, list[StepRow]] = {}
    for row in result.steps:
        by_path.setdefault(row.path_id, []).append(row)
        for signal in registry.registered():
            # everything but the tool's evidence (fusion never reads it) comes back from the row
            fields = signal.row_fields(signal.from_row(row))
            fields.pop("tool_evidence", None)
            assert fields == {column: getattr(row, column) for column in fields}, signal.name
    for rows in by_path.values():
        rows.sort(key=lambda r: r.step_index)
        assert runner.fuse_stored(runner.stored_signals(rows), "hybrid", config.fuse) == [r.fused_label for r in rows]


# -- a new signal: one class + its registration ------------------------------------------------


class DoubtSignal:
    """A test signal: a step that says "maybe" is doubtful. No columns of its own (a real signal
    adds its columns to data_schemas), so it lives in the rationale and in eval's signal lists."""

    name = "doubt"
    columns: tuple[str, ...] = ()
    needs = SignalNeeds()
    failed_stage = "verify"
    missing = None
    enable: Mapping[str, object] = {}

    def __init__(self) -> None:
        self.calls: list[int] = []  # steps per run call

    def runs(self, config: BuildConfig) -> bool:
        return True

    def run(self, paths: Sequence[SignalPath], inputs: SignalInputs) -> SignalOutput:
        self.calls.append(sum(len(p.steps) for p in paths))
        return SignalOutput([["maybe" in step.context.step for step in path.steps] for path in paths])

    def row_fields(self, result: Any) -> dict[str, Any]:
        return {}

    def from_row(self, row: StepRow) -> Any:
        return None

    def rationale_line(self, result: bool | None) -> str | None:
        if result is None:
            return "Doubt: not run."
        return "Doubt: the step hedges." if result else "Doubt: none."

    def step_negative(self, result: bool | None) -> bool | None:
        return result

    def stored(self, row: StepRow) -> dict[str, Any]:
        return {}

    def from_stored(self, step: Mapping[str, Any]) -> Any:
        return None


def test_a_new_signal_is_one_class_and_its_registration(small_set, monkeypatch) -> None:
    from flows.commands.evaluate import parse_signals
    from labelers import pipeline

    doubt = DoubtSignal()
    signal: PathSignal = doubt  # structural: it implements the protocol, nothing to inherit
    records, references = small_set
    problems = runner._given_problems(records)
    solutions = [[list(r.steps)] for r in records]
    config = _config(**{"fuse.after_first_error": "negative"})
    before = pipeline.label_given_solutions(problems, solutions, config, scripted_for(records, references), None, None)

    monkeypatch.setattr(registry, "STEP_SIGNALS", (*registry.STEP_SIGNALS, signal))  # the registration

    after = pipeline.label_given_solutions(problems, solutions, config, scripted_for(records, references), None, None)
    assert doubt.calls == [sum(len(r.steps) for r in records)]  # ran once, batched over every step
    assert len(after.steps) == len(before.steps)
    for old, new in zip(before.steps, after.steps, strict=True):
        # fusion and the other columns are unchanged; the rationale gains the signal's line
        assert (new.fused_label, new.fused_reward, new.label_source) == (old.fused_label, old.fused_reward,
                                                                         old.label_source)
        lines = new.rationale.splitlines()
        assert lines[-3] in ("Doubt: none.", "Doubt: the step hedges.")  # before the decision and the verdict
        assert "\n".join(line for line in lines if not line.startswith("Doubt:")) == old.rationale
    # the eval runner lists it, parses it, and runs it in the labeling pass (no rollouts)
    assert "doubt" in runner.eval_signals() and "doubt" in runner.pass_signals()
    assert parse_signals("tool,doubt") == [("tool", None), ("doubt", None)]
    [run] = runner.run_shared(records, ["doubt"], config, scripted_for(records, references), None, None)
    assert run.signal == "doubt" and run.rollouts == 0 and len(run.predictions) == len(records)


# -- the runner's passes (moved from the CLI) --------------------------------------------------


class _Watch:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.passes: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def open_pass(self, label: str, solutions: int, completions: str = "rollouts") -> None:
        self.passes.append(f"open {label} {solutions} {completions}")

    def start_pass(self):
        self.passes.append("start")
        return lambda done, total: self.passes.append(f"{done}/{total}")

    def expected(self, per_solution) -> None:
        self.passes.append(f"expect {len(per_solution)}")

    def planned(self, plan, first: int, end: int) -> None:
        self.passes.append(f"plan {first}-{end}")

    def close_pass(self) -> None:
        self.passes.append("close")


class _Resources:
    def __init__(self, policy, tool=None) -> None:
        self._policy, self._tool = policy, tool

    def policy(self):
        return self._policy

    def step_judge(self):
        return None

    def tool(self):
        return self._tool

    def lean(self):
        raise AssertionError("not asked")

    def prm(self):
        raise AssertionError("not asked")


def test_run_signals_groups_passes(small_set) -> None:
    records, references = small_set
    judge = ScriptedJudge(lambda *_: "Verdict: correct", fallback=scripted_for(records, references))
    watch = _Watch()
    results = runner.run_signals(records, [("judge", None)], _config(), "binary", 2, _Resources(judge), watch,
                                 chunk=len(records))
    assert [r.run.signal for r in results] == ["judge"]
    assert watch.lines[0] == f"judging the {sum(len(r.steps) for r in records)} steps of {len(records)} solutions ..."
    assert watch.passes == ["open judge 10 replies", "start", "0/10", "10/10", "close"]
    assert results[0].run.rollouts == 0 and results[0].run.notes[0].startswith("judge replies: ")

    watch = _Watch()
    judge = ScriptedJudge(lambda *_: "Verdict: correct", fallback=scripted_for(records, references))
    results = runner.run_signals(records, [("mc", "binary"), ("judge", None), ("mc", "per-step"), ("answer", "last")],
                                 _config(), "binary", 2, _Resources(judge), watch, chunk=len(records))
    assert [(r.run.signal, r.run.mc_mode) for r in results] == [("mc", "binary"), ("judge", None),
                                                                ("mc", "per-step"), ("answer", "last")]
    assert [line.split(" over ")[0] for line in watch.lines if "over" in line] == [
        "labeling pass 1 of 2 (binary: mc, judge)", "labeling pass 2 of 2 (per-step: mc)"]
    assert [p for p in watch.passes if p.startswith("open")] == ["open pass 1 of 2 (binary) 10 rollouts",
                                                                 "open pass 2 of 2 (per-step) 10 rollouts"]


def test_judge_result_from_stored_reads_the_verdict() -> None:
    assert JUDGE.from_stored({"judge": "incorrect"}) == JudgeVerdict(False, "ok")
    assert JUDGE.from_stored({"judge": None}).correct is None
    with pytest.raises(KeyError):
        registry.signal_named("nope")
