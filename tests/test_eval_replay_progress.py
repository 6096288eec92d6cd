"""Passes of one eval run: replayed requests, chunked labeling with progress, stored signals that
re-fuse to the labels of the run (labelers/evaluation/replay.py, runner.run_shared,
flows/progress.PassProgress, labelers/evaluation/rescore.py)."""

from __future__ import annotations

import io

import pytest

from flows.progress import PassProgress
from labelers.evaluation import runner
from labelers.evaluation.replay import ReplayPolicy
from labelers.evaluation.rescore import refused, variant_rows
from labelers.policy.base import GenerationRequest
from labelers.policy.prompts import solution_messages
from tests.test_eval_run import _config, injected_set, scripted_for


def _request(question: str, seed: int | None, tag: str = "") -> GenerationRequest:
    return GenerationRequest(tuple(solution_messages(question)), n=2, seed=seed, tag=tag)


def test_replay_answers_a_seeded_request_once():
    records, references = injected_set(1, 1, seed=3)
    inner = scripted_for(records, references)
    seen: list[tuple[int, int]] = []
    policy = ReplayPolicy(inner, on_generate=lambda completions, tokens, seconds: seen.append((completions, tokens)))
    question = records[0].problem
    first = policy.generate([_request(question, 1, "a"), _request(question, 2), _request(question, 1, "b")])
    assert all(result.error is None for result in first)
    assert len(inner.calls) == 1 and len(inner.calls[0]) == 2  # the repeated request is sampled once
    assert first[0].completions == first[2].completions and first[2].request.tag == "b"
    again = policy.generate([_request(question, 2, "c"), _request(question, None), _request(question, None)])
    assert len(inner.calls[1]) == 2  # only the unseeded ones, each asked
    assert again[0].completions == first[1].completions and again[0].request.tag == "c"
    assert policy.counts.replayed_completions == 4 and policy.counts.completions == 8
    assert [c for c, _ in seen] == [4, 4]
    assert policy.model_id == inner.model_id and policy.usage is inner.usage


def test_chunked_pass_equals_one_call_and_replays_across_passes():
    records, references = injected_set(6, 4, seed=11)
    config = _config().with_overrides({"search.mc_confirm_verified_zero": True})  # the hybrid's own pass
    whole = runner.run_shared(records, ["mc", "hybrid"], config, scripted_for(records, references), None, None,
                              "binary", 4, chunk_size=len(records))
    ticks: list[tuple[int, int]] = []
    inner = scripted_for(records, references)
    policy = ReplayPolicy(inner)
    chunked = runner.run_shared(records, ["mc", "hybrid"], config, policy, None, None, "binary", 4, chunk_size=3,
                                on_solutions=lambda done, total: ticks.append((done, total)))
    for a, b in zip(whole, chunked):
        assert a.predictions == b.predictions and a.rollouts == b.rollouts
    # the hybrid samples with the tool's help in a pass of its own: its count restarts once
    # (between chunk ends, solutions also count as their searches end)
    restarts = [i for i in range(1, len(ticks)) if ticks[i][0] < ticks[i - 1][0]]
    assert len(restarts) == 1 and ticks[restarts[0]] == (0, 10)
    for part in (ticks[:restarts[0]], ticks[restarts[0]:]):
        assert {(3, 10), (6, 10), (9, 10), (10, 10)} <= set(part) and part[-1] == (10, 10)
    # without a tool nothing differs between the passes' requests: the second is all replayed
    assert policy.counts.replayed_completions >= policy.counts.completions


def test_by_default_the_hybrid_is_fused_from_mcs_pass():
    """Confirmation off (the default): MC and hybrid share one pass, sampled once."""
    records, references = injected_set(6, 4, seed=11)
    ticks: list[tuple[int, int]] = []
    policy = ReplayPolicy(scripted_for(records, references))
    mc, hybrid = runner.run_shared(records, ["mc", "hybrid"], _config(), policy, None, None, "binary", 4,
                                   chunk_size=3, on_solutions=lambda done, total: ticks.append((done, total)))
    done = [d for d, _ in ticks]
    assert done == sorted(done) and {0, 3, 6, 9, 10} <= set(done)  # one part: no restart
    assert policy.counts.replayed_completions == 0 and mc.rollouts == hybrid.rollouts > 0


@pytest.mark.parametrize("mc_mode", ["binary", "per-step"])
def test_solutions_count_as_done_one_at_a_time_inside_a_chunk(mc_mode: str):
    """One chunk of all 10 solutions. Binary: the 4 that reach gold need no rollouts and count at
    once, the 6 wrong ones as their first-error searches end. Per-step: a solution counts when the
    last of its prefixes is estimated (it said 0 of 20 for 16 minutes on a CPU). Never all at the
    chunk's end; the count only grows and ends at the total."""
    records, references = injected_set(6, 4, seed=11)
    ticks: list[tuple[int, int]] = []
    runner.run_shared(records, ["mc"], _config(), scripted_for(records, references), None, None, mc_mode, 4,
                      chunk_size=len(records), on_solutions=lambda done, total: ticks.append((done, total)))
    done = [d for d, _ in ticks]
    assert ticks[0] == (0, 10) and ticks[-1] == (10, 10)
    assert done == sorted(done)
    assert [d for d in done if 0 < d < 10] == list(range(1, 10))  # one solution at a time


def test_a_path_whose_prefixes_are_all_known_counts_at_once_and_a_shared_prefix_ends_both():
    from labelers.pipeline import _paths_estimated
    from labelers.search.montecarlo import MCEstimate

    done: list[int] = []
    known = {"a": MCEstimate(2, 4)}
    estimated = _paths_estimated([["a"], ["a", "b"], ["b", "c"]], known, lambda: done.append(len(done) + 1))
    assert done == [1]  # the first path needs nothing sampled
    estimated("b")
    assert done == [1, 2]  # "b" was the second path's last open prefix, not the third's
    estimated("x")  # a search's probe nobody here waits for
    estimated("c")
    assert done == [1, 2, 3]


def test_stored_signals_refuse_to_the_run_labels_and_variants_score():
    from labelers.verify.tool import ToolStepVerifier

    records, references = injected_set(6, 4, seed=11)
    config = _config()
    with ToolStepVerifier(config.tool) as tool:
        runs = runner.run_shared(records, ["mc", "hybrid"], config, ReplayPolicy(scripted_for(records, references)),
                                 tool, None, "binary", 4)
    results = [runner.evaluate(records, run).to_json() for run in runs]
    mc, hybrid = results
    assert set(hybrid["signals"]) == {r.id for r in records}
    assert refused(hybrid, "hybrid", config.fuse) == runs[1].predictions
    assert refused(mc, "mc", config.fuse) == runs[0].predictions
    rows = {row.name: row for row in variant_rows(records, [{"results": results}], config.fuse)}
    assert {"MC binary", "hybrid as run", "hybrid, no path rule", "hybrid, no confirmation"} <= set(rows)
    assert rows["hybrid as run"].score.f1 == runner.evaluate(records, runs[1]).score.f1
    assert rows["hybrid as run"].rollouts_per_solution == runs[1].rollouts / len(records)
    # scored on a subset of the run's solutions: still the run's rollouts per solution it labeled
    # (it divided the run's total by the subset's size: 2x on half the set)
    half = {row.name: row for row in variant_rows(records[::2], [{"results": results}], config.fuse)}
    assert half["hybrid as run"].solutions == len(records[::2])
    assert half["hybrid as run"].rollouts_per_solution == runs[1].rollouts / len(records)


def test_pass_progress_lines():
    now = [0.0]
    stream = io.StringIO()
    progress = PassProgress("pass 1 of 1 (binary)", 40, stream=stream, interval=30, min_gap=5, clock=lambda: now[0])
    progress.sampled(16, 400, 20.0)  # within the interval: quiet
    assert stream.getvalue() == ""
    now[0] = 31.0
    progress.sampled(16, 400, 20.0)
    now[0] = 100.0
    progress.solutions(4, 40)
    now[0] = 102.0
    progress.solutions(8, 40)  # 2 s after the last line: quiet
    now[0] = 200.0
    progress.solutions(40, 40)
    now[0] = 206.0
    progress.solutions(0, 40)  # the hybrid's own pass starts: its restart shows at once
    now[0] = 216.0
    progress.solutions(4, 40)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "pass 1 of 1 (binary): 0/40 solutions | 32 rollouts | 20.0 tok/s | elapsed 31 s | eta ?"
    assert lines[1] == ("pass 1 of 1 (binary): 4/40 solutions | 32 rollouts | 20.0 tok/s | elapsed 1 min 40 s"
                        " | eta 15 min 00 s")
    assert lines[2].startswith("pass 1 of 1 (binary): 40/40 solutions") and lines[2].endswith("eta 0 s")
    assert lines[3].startswith("pass 1 of 1 (binary) part 2: 0/40 solutions") and lines[3].endswith("eta ?")
    # 16 s for 4 (the part began when the last chunk of part 1 ended)
    assert lines[4].startswith("pass 1 of 1 (binary) part 2: 4/40 solutions") and lines[4].endswith("eta 2 min 24 s")
    assert len(lines) == 5


def test_pass_progress_takes_its_rate_from_a_live_token_counter():
    now = [0.0]
    stream = io.StringIO()
    sampled = [500]  # tokens the policy sampled before this pass
    progress = PassProgress("pass 1 of 1 (binary)", 10, stream=stream, interval=30, min_gap=5, clock=lambda: now[0])
    progress.watch_tokens(lambda: sampled[0])
    now[0], sampled[0] = 40.0, 500 + 800  # no request finished yet, 800 tokens sampled in 40 s
    assert progress.line() == "pass 1 of 1 (binary): 0/10 solutions | 0 rollouts | 20.0 tok/s | elapsed 40 s | eta ?"
    progress.sampled(4, 300, 40.0)  # a finished request moves the rollouts, not the live rate
    assert "| 4 rollouts | 20.0 tok/s |" in progress.line()
    progress.watch_tokens(None)  # without a counter: finished requests' tokens over their seconds
    assert "| 7.5 tok/s |" in progress.line()


class _Plan:
    """An EstimatePlan's two counts, set by the test."""

    def __init__(self, ended: int, planned: float) -> None:
        self.ended_now, self.planned_now = ended, planned

    def ended(self) -> int:
        return self.ended_now

    def planned(self) -> float:
        return self.planned_now


def test_pass_progress_eta_follows_the_planned_estimates_not_the_solutions_done():
    """The ETA of a streamed pass: solutions that need no rollouts count at once and searches end
    together, so by solutions it read 83 s after 31 s of a 9-minute pass. From the plan: estimates
    left (the begun chunks' planned ones plus the expected ones of the solutions after them) at
    the rate estimates ended since the first did (the decoder's fill time left out)."""
    now = [0.0]
    stream = io.StringIO()
    progress = PassProgress("pass 1 of 1 (binary)", 40, stream=stream, clock=lambda: now[0])
    # 32 + 8 solutions; the last 8 reach gold (0 expected) but for one wrong one
    progress.expect([1.5] * 32 + [0.0] * 7 + [2.0])
    assert stream.getvalue() == ("pass 1 of 1 (binary): about 50 prefix estimates to sample, for 33 of 40 solutions"
                                 " (the others need no rollouts)\n")
    assert progress.line().endswith("| eta ?")
    plan = _Plan(0, 50)
    progress.add_plan(plan, 32)
    now[0] = 31.0
    progress.solutions(11, 40)  # the 11 that reach gold without rollouts
    assert progress.line().endswith("| eta ?")  # no estimate has ended (by solutions: 1 min 06 s)
    now[0], plan.ended_now = 50.0, 3
    progress.sampled(12, 600, 40.0)  # the answers that ended the first 3 estimates
    now[0] = 62.0
    assert progress.line().endswith("| eta ?")  # none since
    now[0], plan.ended_now = 92.0, 5
    # 2 estimates in 42 s; 50 planned + 2 expected - 5 ended = 47 left
    assert progress.line().endswith("| eta 16 min 27 s")
    now[0], plan.ended_now, plan.planned_now = 200.0, 18, 48.0  # the searches narrowed down
    assert progress.line().endswith("| eta 5 min 20 s")  # 15 in 150 s, 32 left
    now[0], plan.ended_now, plan.planned_now = 520.0, 46, 46.0
    last = _Plan(0, 2.0)
    progress.add_plan(last, 40)  # the last chunk: its plan replaces its expectation
    assert progress.line().endswith("| eta 21 s")  # 43 in 470 s, 2 left
    progress.solutions(40, 40)
    progress.solutions(0, 40)  # a new part: the plans were the last part's
    assert progress.line().endswith("| eta ?")
    now[0] = 540.0
    progress.solutions(10, 40)
    assert progress.line().endswith("| eta 60 s")  # by solutions again: 10 in 20 s


def test_replay_reports_an_answer_after_the_estimate_it_ends():
    """A streamed pass's ReplayPolicy calls on_generate after handing the answer on, so the
    progress line sees the estimate it ended at that call (it times the first end there)."""
    from tests.test_scheduler import StreamingScripted

    records, references = injected_set(4, 2, seed=11)
    plans = _Plans()
    ended_at_answers: list[int] = []
    policy = ReplayPolicy(StreamingScripted(scripted_for(records, references)),
                          on_generate=lambda *_: ended_at_answers.append(plans.plans[-1].ended()))
    runner.run_shared(records, ["mc"], _config(), policy, None, None, "binary", 4, plans=plans)
    # one request of k = 4 per probe: the n-th answer ends the n-th estimate
    assert ended_at_answers == list(range(1, len(ended_at_answers) + 1)) and ended_at_answers


class _Plans:
    """A PlanWatch that keeps what it hears (runner.PlanWatch)."""

    def __init__(self) -> None:
        self.expected_per_solution: list[float] = []
        self.chunks: list[tuple[int, int, int, float]] = []  # first, end, ended and planned when begun
        self.plans: list = []

    def expected(self, per_solution) -> None:
        self.expected_per_solution = list(per_solution)

    def planned(self, plan, first: int, end: int) -> None:
        self.chunks.append((first, end, plan.ended(), plan.planned()))
        self.plans.append(plan)


@pytest.mark.parametrize("mc_mode", ["binary", "per-step"])
def test_a_pass_reports_its_plans_and_they_end_as_sampled(mc_mode: str):
    """run_shared -> pipeline -> EstimatePlan: the expectation per solution before sampling, one
    plan per chunk as it begins, and at the end ended = planned = the estimates sampled (k = 4
    rollouts each): the searches' probes, or every prefix but the full one (exact: the path's own
    answer). The expectation agrees with the pipeline: a chunk's searches expect as many probes
    as expected_estimates said for its solutions, and per-step MC samples what it said."""
    records, references = injected_set(6, 4, seed=11)
    plans = _Plans()
    [mc] = runner.run_shared(records, ["mc"], _config(), scripted_for(records, references), None, None, mc_mode,
                             4, chunk_size=4, plans=plans)
    assert [(first, end) for first, end, _, _ in plans.chunks] == [(0, 4), (4, 8), (8, 10)]
    assert all(ended == 0 for _, _, ended, _ in plans.chunks)
    assert all(plan.ended() == plan.planned() for plan in plans.plans)
    assert 4 * sum(plan.ended() for plan in plans.plans) == mc.rollouts > 0
    expected = plans.expected_per_solution
    assert len(expected) == len(records) and sum(expected) > 0
    for (first, end, _, planned_when_begun), plan in zip(plans.chunks, plans.plans):
        if mc_mode == "binary":
            assert sum(expected[first:end]) == pytest.approx(planned_when_begun)
        else:
            assert sum(expected[first:end]) == plan.ended()
    if mc_mode == "binary":  # the 4 solutions that reach gold need none
        assert sum(e == 0 for e in expected) == 4


def test_a_judge_only_pass_counts_replies_not_rollouts():
    progress = PassProgress("judge", 10, stream=io.StringIO(), completions="replies")
    progress.sampled(6, 300, 10.0)
    assert "0/10 solutions | 6 replies | 30.0 tok/s |" in progress.line()


def test_bench_processbench_rescores_stored_runs(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    records, references = injected_set(6, 4, seed=11)
    config = _config()
    runs = runner.run_shared(records, ["mc", "hybrid"], config, scripted_for(records, references), None, None,
                             "binary", 4)
    set_file = tmp_path / "set.json"
    set_file.write_text(json.dumps([r.to_json() for r in records]))
    out = tmp_path / "run.json"
    out.write_text(json.dumps({"results": [runner.evaluate(records, run).to_json() for run in runs]}))
    path = Path(__file__).parent.parent / "benchmarks" / "bench_processbench.py"
    spec = importlib.util.spec_from_file_location("bench_processbench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--input", str(set_file), "--runs", str(out), "--name", "t"]) == 0
    printed = capsys.readouterr().out
    assert "t: 10 solutions (6 erroneous)" in printed
    figures = [line.split("\t") for line in printed.splitlines() if line.startswith("FIGURE\t")]
    names = {f[1]: f[2] for f in figures}
    assert names["pb.t.MC_binary.f1"] == "1.0000" and "pb.t.hybrid_no_path_rule.f1" in names
    assert bench.main([]) == 0 and "nothing to re-score" in capsys.readouterr().out


def test_cli_rescore_scores_a_fuse_variant(tmp_path):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    records, references = injected_set(6, 4, seed=11)
    runs = runner.run_shared(records, ["mc", "hybrid"], _config(), scripted_for(records, references), None, None,
                             "binary", 4)
    set_file = tmp_path / "set.json"
    set_file.write_text(json.dumps([r.to_json() for r in records]))
    out = tmp_path / "run.json"
    out.write_text(json.dumps({"results": [runner.evaluate(records, run).to_json() for run in runs]}))
    cli = CliRunner()
    done = cli.invoke(app, ["eval", "rescore", "--input", str(set_file), "--runs", str(out),
                            "--set", "fuse.mc_threshold=0.5"])
    assert done.exit_code == 0, done.output
    assert "hybrid, no path rule" in done.output and "fuse.mc_threshold=0.5" in done.output
    refused_out = cli.invoke(app, ["eval", "rescore", "--input", str(set_file), "--runs", str(out),
                                   "--set", "search.mc_rollouts=8"])
    assert refused_out.exit_code != 0 and "only fuse.* keys" in str(refused_out.exception)


def test_rescore_keeps_runs_of_other_confirmation_rules_apart():
    from labelers.evaluation.rescore import stored_results

    def payload(**search):
        return {"config": {"search": search}, "results": [{"signal": "hybrid", "mc_mode": "binary", "k": 4}]}

    found = stored_results([payload(), payload(mc_confirm_verified_zero=False),
                            payload(mc_confirm_every_zero=True)])
    assert set(found) == {"hybrid:binary", "hybrid:binary:noconfirm", "hybrid:binary:everyzero"}


def test_a_per_step_pass_rescores_relative_progress_as_a_run_with_it_labels():
    """The relative-progress variant of a stored per-step MC pass equals a pass run with that
    setting (fusion only reads what the pass stored), and it is a variant of its own in the table.
    Rollouts recover from a wrong prefix 40% of the time: MC > 0 after an error, which plain MC
    reads as correct and a relative drop (1 -> < 0.9) does not."""
    records, references = injected_set(6, 4, seed=11)
    config = _config()
    [stored] = runner.run_shared(records, ["mc"], config, scripted_for(records, references, recovery_rate=0.4),
                                 None, None, "per-step", 4)
    strict = config.with_overrides({"fuse.mc_relative_progress": 0.9})
    [direct] = runner.run_shared(records, ["mc"], strict, scripted_for(records, references, recovery_rate=0.4),
                                 None, None, "per-step", 4)
    assert direct.predictions != stored.predictions  # the rule changed a label here
    payload = {"results": [runner.evaluate(records, stored).to_json()]}
    assert refused(payload["results"][0], "mc", strict.fuse) == direct.predictions
    rows = {row.name: row for row in variant_rows(records, [payload], config.fuse,
                                                  extra={"eps 0.9": strict.fuse.model_dump()})}
    assert {"MC per-step", "hybrid per-step, no confirmation", "MC per-step, eps 0.9", "hybrid per-step, eps 0.9"} \
        <= set(rows)
    assert rows["MC per-step, eps 0.9"].score == runner.evaluate(records, direct).score
    assert rows["MC per-step, eps 0.9"].score.acc_err > rows["MC per-step"].score.acc_err
