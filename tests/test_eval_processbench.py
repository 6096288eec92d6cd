"""ProcessBench files and scores on hand-made predictions."""

from __future__ import annotations

import json

import pytest

from data_schemas.errors import InputError
from labelers.evaluation.processbench import (
    BenchRecord,
    Prediction,
    f1_score,
    first_error_index,
    read_set,
    score,
    write_set,
)


def _record(rid: str, label: int, n: int = 4, kind: str | None = None) -> BenchRecord:
    return BenchRecord(rid, "q", tuple(f"s{i}" for i in range(n)), label, corruption=kind)


def _pred(rid: str, first: int, n: int = 4) -> Prediction:
    return Prediction(rid, tuple(i == first if first >= 0 else False for i in range(n)))


def test_scores_on_hand_made_predictions():
    records = [
        _record("e1", 1, kind="arithmetic_slip"),
        _record("e2", 2, kind="arithmetic_slip"),
        _record("e3", 0, kind="dropped_term"),
        _record("e4", 3, kind="dropped_term"),
        _record("c1", -1),
        _record("c2", -1),
        _record("c3", -1),
    ]
    predictions = {
        "e1": _pred("e1", 1),  # exact
        "e2": _pred("e2", 1),  # too early
        "e3": _pred("e3", 0),  # exact
        "e4": _pred("e4", -1),  # missed
        "c1": _pred("c1", -1),  # right
        "c2": _pred("c2", 2),  # false alarm
        # c3: no prediction (failed labeling) -> a miss
    }
    result = score(records, predictions)
    assert (result.n_error, result.n_correct) == (4, 3)
    assert result.acc_err == 0.5
    assert result.acc_cor == pytest.approx(1 / 3)
    assert result.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))  # = 0.4
    assert result.f1 == pytest.approx(0.4)
    assert result.missing == 1
    assert (result.too_early, result.too_late) == (1, 1)
    assert result.by_corruption == {"arithmetic_slip": 0.5, "dropped_term": 0.5}
    # errors before the last step: e1, e2, e3 (e4's error is in its last step) -> hits e1, e3
    assert result.n_error_before_last == 3 and result.acc_err_before_last == pytest.approx(2 / 3)
    # per step over gold-labeled steps: gold negatives at e1:1, e2:2, e3:0, e4:3 -> 4;
    # predicted negatives within gold-labeled steps: e1:1, e2:1, e3:0, c2:2 -> 4; hits e1, e3 -> 2
    assert (result.step_gold_negative, result.step_predicted_negative, result.step_true_negative_hits) == (4, 4, 2)
    assert result.step_precision == 0.5 and result.step_recall == 0.5


def test_perfect_and_degenerate_scores():
    records = [_record("e", 2), _record("c", -1)]
    perfect = score(records, {"e": _pred("e", 2), "c": _pred("c", -1)})
    assert perfect.f1 == 1.0
    # "everything correct" predictor: acc_cor 1, acc_err 0 -> F1 0
    lazy = score(records, {"e": _pred("e", -1), "c": _pred("c", -1)})
    assert (lazy.acc_err, lazy.acc_cor, lazy.f1) == (0.0, 1.0, 0.0)
    assert f1_score(None, 1.0) is None
    only_correct = score([_record("c", -1)], {"c": _pred("c", -1)})
    assert only_correct.acc_err is None and only_correct.f1 is None


def test_first_error_uses_only_true_verdicts():
    assert first_error_index([None, False, True, True]) == 2
    assert first_error_index([None, None]) == -1
    assert Prediction("x", (False, None, True)).first_error == 2


def test_read_json_list_and_jsonl(tmp_path):
    rows = [
        {"id": "gsm8k-0", "generator": "Qwen2-7B", "problem": "p", "steps": ["a", "b"], "label": 1,
         "final_answer_correct": False},
        {"id": "gsm8k-1", "generator": "Qwen2-7B", "problem": "p", "steps": ["a"], "label": -1,
         "final_answer_correct": True},
    ]
    (tmp_path / "pb.json").write_text(json.dumps(rows))
    (tmp_path / "pb.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("pb.json", "pb.jsonl"):
        records = read_set(tmp_path / name)
        assert [r.label for r in records] == [1, -1]
        assert records[0].gold_answer is None  # ProcessBench carries no gold answer
        assert records[0].generator == "Qwen2-7B"
    write_set(tmp_path / "out.jsonl", read_set(tmp_path / "pb.json"))
    assert [r.id for r in read_set(tmp_path / "out.jsonl")] == ["gsm8k-0", "gsm8k-1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "problem": "p", "steps": ["a"]}', "missing field 'label'"),
        ('{"id": 1, "problem": "p", "steps": ["a"], "label": 1}', "'label' must be -1 or a step index 0..0"),
        ('{"id": 1, "problem": "p", "steps": [], "label": -1}', "non-empty list of strings"),
        ('{"id": 1, "problem": "p", "steps": ["a"], "label": -1}\n'
         '{"id": 1, "problem": "p", "steps": ["a"], "label": -1}', "duplicate id"),
        ("not json", "not JSON"),
        ("[1, 2", "not valid JSON"),
        ("", "no records"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_set(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_set(tmp_path / "nope.json")
