"""Gold answers joined into ProcessBench-layout records (labelers/evaluation/goldjoin.py), the
input spellings of eval run, coverage, and the answer-aware baselines.

Fixtures are written here in ProcessBench's layout; no ProcessBench text is in the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_schemas.errors import InputError
from flows.cli import app
from labelers.evaluation import runner
from labelers.evaluation.goldjoin import (
    bundled_gold_path,
    gold_table_rows,
    join_gold,
    load_processbench,
    load_tables,
    normalize_problem,
)
from labelers.evaluation.processbench import record_from_json

DATA = Path(__file__).parent / "data"


def _gsm8k_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()[:n]]


def _math_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (DATA / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()[:n]]


def pb(rid: str, problem: str, steps: list[str], label: int, final_ok: bool | None = None, **extra) -> dict:
    return {"id": rid, "generator": "test", "problem": problem, "steps": steps, "label": label,
            "final_answer_correct": (label == -1) if final_ok is None else final_ok, **extra}


def test_bundled_table_is_the_published_files_unchanged():
    gsm8k = [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()]
    math500 = [json.loads(line) for line in (DATA / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()]
    shipped = [json.loads(line) for line in bundled_gold_path().read_text(encoding="utf-8").splitlines()]
    assert shipped == gold_table_rows(gsm8k, math500)
    assert len(shipped) == 1319 + 500
    janet = shipped[0]
    assert janet["source"] == "gsm8k" and janet["answer"] == "18"
    assert all("," not in row["answer"] for row in shipped if row["source"] == "gsm8k")


def test_normalization_is_whitespace_case_and_quotes_only():
    assert normalize_problem("  Janet\u2019s ducks\n lay  16 eggs ") == normalize_problem("janet's ducks lay 16 eggs")
    assert normalize_problem("lay 16 eggs") != normalize_problem("lay 17 eggs")
    assert normalize_problem("a b") != normalize_problem("ab")


def test_join_from_gsm8k_math500_siblings_and_user_file(tmp_path):
    gsm = _gsm8k_rows(2)
    math = _math_rows(1)
    records = [record_from_json(row, row["id"]) for row in [
        pb("g0", gsm[0]["question"].upper() + "  ", ["16 - 3 - 4 = 9", "9 * 2 = 18. The answer is 18"], -1),
        pb("m0", math[0]["problem"], ["r = 3", "The answer is \\boxed{(3, \\frac{\\pi}{2})}"], 1, final_ok=False),
        # two solutions of one unknown problem: each takes the OTHER's answer when that one is final-correct
        pb("s-wrong", "What is 6 times 7?", ["6 * 7 = 43", "The answer is 43"], 0),
        pb("s-right", "What is 6 times 7?", ["6 * 7 = 42", "The answer is 42"], -1),
        # alone and correct: its own answer is never its gold (that would read its label)
        pb("alone", "What is 2 plus 2?", ["2 + 2 = 4", "The answer is 4"], -1),
        pb("user", "A problem only the user knows", ["x = 5", "The answer is 5"], -1),
        pb("has", "Already joined", ["The answer is 9"], -1, gold_answer="9"),
    ]]
    gold_file = tmp_path / "gold.jsonl"
    gold_file.write_text(json.dumps({"id": "user", "gold_answer": 5}) + "\n")
    joined, coverage = join_gold(records, load_tables(gold_file))
    by_id = {r.id: r for r in joined}
    assert (by_id["g0"].gold_answer, by_id["g0"].gold_source) == ("18", "gsm8k")
    assert (by_id["m0"].gold_answer, by_id["m0"].gold_source) == (math[0]["answer"], "math500")
    assert (by_id["s-wrong"].gold_answer, by_id["s-wrong"].gold_source) == ("42", "sibling")
    assert by_id["s-right"].gold_answer is None  # its sibling is wrong: no gold, not its own answer
    assert by_id["alone"].gold_answer is None
    assert (by_id["user"].gold_answer, by_id["user"].gold_source) == ("5", "gold_file")
    assert (by_id["has"].gold_answer, by_id["has"].gold_source) == ("9", "file")
    assert coverage.total == 7 and coverage.with_gold == 5 and coverage.without_gold == 2
    assert coverage.by_source == {"file": 1, "gold_file": 1, "gsm8k": 1, "math500": 1, "sibling": 1}
    assert "5 of 7 solutions" in coverage.line() and "2 without gold" in coverage.line()
    # order and every other field kept
    assert [r.id for r in joined] == [r.id for r in records]
    assert by_id["g0"].steps == records[0].steps and by_id["g0"].label == -1


def test_disagreeing_or_silent_siblings_give_no_gold():
    rows = [
        pb("a", "Q", ["The answer is 1"], 0, final_ok=False),
        pb("b", "Q", ["The answer is 2"], -1),
        pb("c", "Q", ["The answer is 3"], -1),  # two final-correct siblings that disagree
        pb("d", "R", ["nothing stated"], 0, final_ok=False),
        pb("e", "R", ["the result follows"], -1),  # states no final answer
    ]
    joined, coverage = join_gold([record_from_json(r, r["id"]) for r in rows], load_tables())
    assert coverage.with_gold == 2  # b takes c's answer and c takes b's: each from the other
    by_id = {r.id: r for r in joined}
    assert by_id["a"].gold_answer is None and by_id["d"].gold_answer is None
    assert (by_id["b"].gold_answer, by_id["c"].gold_answer) == ("3", "2")


def test_bad_gold_file_is_one_line(tmp_path):
    bad = tmp_path / "gold.jsonl"
    bad.write_text(json.dumps({"problem": "p"}) + "\n")
    with pytest.raises(InputError, match="no 'gold_answer'"):
        load_tables(bad)
    bad.write_text(json.dumps({"answer": "3"}) + "\n")
    with pytest.raises(InputError, match="neither 'id' nor 'problem'"):
        load_tables(bad)
    with pytest.raises(InputError, match="--gold"):
        load_tables(tmp_path / "missing.jsonl")


def test_processbench_spec_without_hub_names_the_local_file(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("datasets")

    def unreachable(*_args, **_kwargs):
        raise ConnectionError("Couldn't reach 'Qwen/ProcessBench' on the Hub (LocalEntryNotFoundError)\nmore")

    fake.load_dataset = unreachable
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # skip the connection probe: load_dataset itself fails
    with pytest.raises(InputError) as raised:
        load_processbench("processbench:gsm8k")
    message = str(raised.value)
    assert "\n" not in message and "--input path/to/gsm8k.json" in message and "not reachable" in message
    with pytest.raises(InputError, match="processbench:omnimath"):
        load_processbench("processbench:aime")


def test_processbench_spec_probes_the_hub_first(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *a, **k: pytest.fail("load_dataset must not be called when the hub is unreachable")
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://prmforge-no-such-host.invalid")
    with pytest.raises(InputError) as raised:
        load_processbench("processbench:gsm8k")
    assert "prmforge-no-such-host.invalid:443" in str(raised.value) and "\n" not in str(raised.value)


def test_processbench_spec_reads_the_published_rows(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: [pb("0", "What is 6 times 7?", ["The answer is 42"], -1)] \
        if (name, split) == ("Qwen/ProcessBench", "math") else []
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [record] = load_processbench("processbench:math")
    assert record.id == "0" and record.label == -1


def test_answer_aware_baselines():
    records = [record_from_json(r, r["id"]) for r in [
        pb("wrong", "Q", ["a", "b", "The answer is 5"], 0, final_ok=False, gold_answer="6"),
        pb("right", "Q", ["a", "The answer is 6"], -1, gold_answer="6"),
        pb("silent", "Q", ["a", "so it is six"], 1, final_ok=False, gold_answer="6"),
    ]]
    last = runner.run_answer(records, "last").predictions
    first = runner.run_answer(records, "first").predictions
    assert last["wrong"].first_error == 2 and first["wrong"].first_error == 0
    assert last["right"].first_error == -1 and first["right"].first_error == -1
    assert last["silent"].first_error == 1  # no final answer stated: not gold
    with pytest.raises(InputError, match="gold answer"):
        runner.run_answer([record_from_json(pb("x", "Q", ["a"], -1), "x")], "last")


def test_cli_scores_cases_without_gold_apart(tmp_path):
    gsm = _gsm8k_rows(3)
    rows = [
        pb("g0", gsm[0]["question"], ["16 - 3 - 4 = 9", "9 * 2 = 18", "The answer is 18"], -1),
        pb("g1", gsm[1]["question"], ["2 / 2 = 1", "2 + 1 = 4", "The answer is 4"], 1, final_ok=False),
        pb("u0", "An unknown problem", ["3 + 3 = 7", "The answer is 7"], 0, final_ok=False),
    ]
    set_file = tmp_path / "pb.json"
    set_file.write_text(json.dumps(rows))
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["eval", "run", "--input", str(set_file), "--labels", "tool,answer:last",
                                      "--set", "tool.workers=1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "gold answers: 2 of 3 solutions (gsm8k 2); 1 without gold" in result.output
    payload = json.loads(out.read_text())
    assert payload["gold"] == {"total": 3, "with_gold": 2, "without_gold": 1, "by_source": {"gsm8k": 2}}
    assert payload["gold_sources"] == {"g0": "gsm8k", "g1": "gsm8k"}
    assert [r["signal"] for r in payload["results"]] == ["tool", "answer"]
    assert set(payload["results"][1]["predictions"]) == {"g0", "g1"}
    assert payload["results"][1]["score"]["acc_err"] == 0.0  # the error is step 1, not the last step
    apart = payload["results_without_gold"]
    assert [r["signal"] for r in apart] == ["tool"] and set(apart[0]["predictions"]) == {"u0"}
    assert apart[0]["predictions"]["u0"][0] is True  # 3 + 3 = 7 disproved


def test_cli_selects_the_first_erroneous_and_correct_solutions(tmp_path):
    # The documented dev sets ("the first 20 erroneous + 20 correct with a gold answer") are named
    # by two numbers. With a signal that needs gold the classes are counted among the solutions with
    # gold: u0, the first erroneous solution of the file, has none and is passed over; a gold-free
    # run counts it.
    gsm = _gsm8k_rows(4)
    rows = [
        pb("u0", "An unknown problem", ["3 + 3 = 7", "The answer is 7"], 0, final_ok=False),
        pb("g0", gsm[0]["question"], ["16 - 3 - 4 = 9", "9 * 2 = 18", "The answer is 18"], -1),
        pb("g1", gsm[1]["question"], ["2 / 2 = 1", "2 + 1 = 4", "The answer is 4"], 1, final_ok=False),
        pb("g2", gsm[2]["question"], ["It costs 5", "The answer is 5"], 0, final_ok=False),
        pb("g3", gsm[3]["question"], ["The answer is 540"], -1),
    ]
    set_file = tmp_path / "pb.jsonl"
    set_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out.json"

    def run(*args: str):
        return CliRunner().invoke(app, ["eval", "run", "--input", str(set_file), "--set", "tool.workers=1", *args])

    result = run("--labels", "answer:first", "--errors", "1", "--correct", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "selected: the first 1 erroneous + 1 correct solutions (file order) of the 4 with a gold answer" \
        in result.output
    payload = json.loads(out.read_text())
    assert set(payload["results"][0]["predictions"]) == {"g0", "g1"}
    assert payload["selection"] == {"errors": 1, "correct": 1, "among": "with a gold answer", "erroneous_taken": 1,
                                    "correct_taken": 1}
    assert payload["gold"]["total"] == 2

    result = run("--labels", "tool", "--errors", "1", "--correct", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["results"][0]["predictions"]) == {"u0"}

    result = run("--labels", "answer:first", "--errors", "5", "--correct", "1")
    assert result.exit_code == 0, result.output
    assert "fewer than asked: 2 erroneous" in result.output

    for args, message in ((("--limit", "2", "--errors", "1", "--correct", "1"), "use one of them"),
                          (("--errors", "1"), "--errors goes with --correct"),
                          (("--errors", "0", "--correct", "0"), "selects no solution")):
        result = run("--labels", "answer:first", *args)  # flows.cli.main prints these as one line, exit 2
        assert isinstance(result.exception, InputError) and message in str(result.exception), result.output
