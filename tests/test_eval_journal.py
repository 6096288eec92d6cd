"""An interrupted eval run resumes: labeled chunks are kept in a journal and not labeled again
(labelers/evaluation/journal.py), with the scripted policy."""

from __future__ import annotations

import json

import pytest

from labelers.evaluation import runner
from labelers.evaluation.journal import ChunkJournal
from tests.test_eval_run import _config, injected_set, scripted_for


class CrashingPolicy:
    """The scripted policy until its ``calls_left`` generate calls are spent, then an interruption
    (Ctrl-C; an exception would only fail the problems of that call, recorded)."""

    def __init__(self, policy, calls_left: int) -> None:
        self.policy, self.calls_left = policy, calls_left

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def generate(self, requests):
        if self.calls_left == 0:
            raise KeyboardInterrupt
        self.calls_left -= 1
        return self.policy.generate(requests)


@pytest.fixture(scope="module")
def labeled_set():
    return injected_set(6, 3, seed=4)


def _run(records, policy, journal, config=None):
    [run] = runner.run_shared(records, ["mc"], config or _config(), policy, None, None, "binary", 4, chunk_size=3,
                              journal=journal)
    return run


def test_an_interrupted_pass_resumes_where_it_stopped(tmp_path, labeled_set):
    records, references = labeled_set
    whole_policy = scripted_for(records, references)
    whole = _run(records, whole_policy, None)
    journal = ChunkJournal(tmp_path / "out.json.partial")
    with pytest.raises(KeyboardInterrupt):
        _run(records, CrashingPolicy(scripted_for(records, references), calls_left=3), journal)
    held = len((tmp_path / "out.json.partial").read_text().splitlines())
    assert 0 < held < 3  # chunks of 3 solutions: at least one was written, not all

    again = ChunkJournal(tmp_path / "out.json.partial")
    fresh = scripted_for(records, references)
    resumed = _run(records, fresh, again)
    assert again.resumed == held
    assert resumed.predictions == whole.predictions and resumed.failures == whole.failures == {}
    assert resumed.rollouts == whole.rollouts and resumed.completion_tokens == whole.completion_tokens
    # the resumed run sampled only the chunks the journal did not hold
    def sampled(policy):
        return {request.tag.split("/")[0] for call in policy.calls for request in call}

    assert 0 < len(sampled(fresh)) < len(sampled(whole_policy))


def test_a_resumed_pass_plans_nothing_for_the_chunks_it_takes(tmp_path, labeled_set):
    """The progress line counts a taken chunk as planned with nothing to sample, so the ETA drops
    its expected estimates (labelers/search/scheduler.EstimatePlan)."""
    from tests.test_eval_replay_progress import _Plans

    records, references = labeled_set
    path = tmp_path / "out.json.partial"
    _run(records, scripted_for(records, references), ChunkJournal(path))
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # chunks 0-2 and 3-5 kept
    plans = _Plans()
    runner.run_shared(records, ["mc"], _config(), scripted_for(records, references), None, None, "binary", 4,
                      chunk_size=3, journal=ChunkJournal(path), plans=plans)
    assert [(first, end) for first, end, _, _ in plans.chunks] == [(0, 3), (3, 6), (6, 9)]
    assert [planned for *_, planned in plans.chunks[:2]] == [0, 0]
    assert plans.chunks[2][3] == pytest.approx(sum(plans.expected_per_solution[6:9])) and plans.chunks[2][3] > 0


def test_a_line_cut_by_a_crash_is_labeled_again_and_other_runs_lines_are_ignored(tmp_path, labeled_set):
    records, references = labeled_set
    path = tmp_path / "out.json.partial"
    _run(records, scripted_for(records, references), ChunkJournal(path))
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # the last write cut off
    journal = ChunkJournal(path)
    policy = scripted_for(records, references)
    _run(records, policy, journal)
    assert journal.resumed == 2 and policy.calls  # the cut chunk was sampled again

    other_seed = ChunkJournal(path)
    policy = scripted_for(records, references)
    _run(records, policy, other_seed, _config().with_overrides({"seed": 6}))
    assert other_seed.resumed == 0  # another seed: nothing of the journal is taken


def test_journal_lines_are_plain_json_with_rows_and_outcomes(tmp_path, labeled_set):
    records, references = labeled_set
    path = tmp_path / "out.json.partial"
    _run(records[:3], scripted_for(records, references), ChunkJournal(path))
    entry = json.loads(path.read_text().splitlines()[0])
    chunk = entry["chunk"]
    assert {o["problem_id"] for o in chunk["outcomes"]} == {r["problem_id"] for r in chunk["rows"]}
    assert chunk["usage"]["completion_tokens"] > 0 and chunk["cpu_seconds"] >= 0
    ChunkJournal(path).remove()
    assert not path.exists()


def test_a_run_resumed_after_mc_pass_replays_its_rollouts_in_the_hybrids_pass(tmp_path, labeled_set):
    """The journal keeps what each chunk sampled: a run restarted after MC's pass takes MC's chunks
    from the file and the hybrid's own pass replays their rollouts (here, without a tool, all of
    them) instead of sampling them again; a journal without them (older files) samples again."""
    from labelers.evaluation.replay import ReplayPolicy

    records, references = labeled_set
    # The hybrid has a pass of its own only when it confirms zeros (off by default).
    confirming = _config().with_overrides({"search.mc_confirm_verified_zero": True})
    path = tmp_path / "out.json.partial"
    mc_only = ReplayPolicy(scripted_for(records, references))
    runner.run_shared(records, ["mc"], confirming, mc_only, None, None, "binary", 4, chunk_size=3,
                      journal=ChunkJournal(path))
    assert mc_only.counts.completions > 0
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert sum(len(e["chunk"]["answers"]) for e in entries) == mc_only.remembered

    def restarted(journal_path):
        policy = ReplayPolicy(scripted_for(records, references))
        runs = runner.run_shared(records, ["mc", "hybrid"], confirming, policy, None, None, "binary", 4,
                                 chunk_size=3, journal=ChunkJournal(journal_path))
        return runs, policy

    (mc, hybrid), resumed = restarted(path)
    assert resumed.counts.completions == 0 and resumed.counts.replayed_completions > 0
    whole_mc, whole_hybrid = runner.run_shared(records, ["mc", "hybrid"], confirming,
                                               ReplayPolicy(scripted_for(records, references)), None, None,
                                               "binary", 4, chunk_size=3)
    assert hybrid.predictions == whole_hybrid.predictions and hybrid.rollouts == whole_hybrid.rollouts
    older = tmp_path / "older.json.partial"
    older.write_text("".join(json.dumps({"key": e["key"], "chunk": {k: v for k, v in e["chunk"].items()
                                                                    if k != "answers"}}) + "\n"
                             for e in entries))
    _, sampled_again = restarted(older)
    assert sampled_again.counts.completions > 0
