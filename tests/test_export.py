"""Exports: each format round-trips the shard labels and loads with `datasets`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_schemas.catalog import Catalog
from data_schemas.errors import PrmforgeError
from data_schemas.export import (
    DEFAULT_AFTER_FIRST_ERROR,
    FORMATS,
    STEP_TAG,
    LabeledPath,
    apply_after_first_error,
    apply_min_confidence,
    balance_paths,
    export_paths,
    load_paths,
    math_shepherd_record,
    parse_math_shepherd,
    prm800k_record,
    read_export_metadata,
    soft_values,
)
from data_schemas.synthetic import write_synthetic_build
from flows.cli import app

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_synthetic_build(root, "b1", num_batches=4)
    write_synthetic_build(root, "b2", num_batches=2, seed=1)
    return root


def shard_labels(root: Path, where: str = "true") -> dict[tuple[str, str, str], list[bool]]:
    """Step labels per path straight from the steps view (the truth an export must keep)."""
    with Catalog(root) as catalog:
        rows = catalog.query(
            f"SELECT build_id, problem_id, path_id, list(fused_label ORDER BY step_index) AS labels "
            f"FROM steps WHERE {where} GROUP BY ALL"
        ).to_pylist()
    return {(r["build_id"], r["problem_id"], r["path_id"]): r["labels"] for r in rows}


def truncated(labels_by_path: dict, format: str) -> dict:
    """The labels a format's default after-first-error handling keeps."""
    if DEFAULT_AFTER_FIRST_ERROR[format] == "negative":
        return labels_by_path
    return {k: v[: v.index(False) + 1] if False in v else v for k, v in labels_by_path.items()}


def key(record: dict) -> tuple[str, str, str]:
    return record["build_id"], record["problem_id"], record["path_id"]


def labels_of(format: str, record: dict) -> list[bool]:
    """Step labels as each format encodes them."""
    if format == "trl":
        return record["labels"]
    if format == "math-shepherd":
        return parse_math_shepherd(record["input"], record["label"])
    if format == "prm800k":
        ratings = [step["completions"][0]["rating"] for step in record["label"]["steps"]]
        assert set(ratings) <= {1, -1}
        return [rating == 1 for rating in ratings]
    if format == "generative":
        turns = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        return [bool(re.search(r"\\boxed\{\+\}\s*$", turn)) for turn in turns]
    raise AssertionError(format)


@pytest.mark.parametrize("format", FORMATS)
def test_export_round_trips_labels_and_loads_with_datasets(data_root, tmp_path, format):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / f"{format}.parquet"
    with Catalog(data_root) as catalog:
        result = export_paths(catalog, format, str(out))
    expected = truncated(shard_labels(data_root), format)
    assert result.records == len(expected) == result.paths_total
    assert result.metadata["after_first_error"] == DEFAULT_AFTER_FIRST_ERROR[format]
    assert read_export_metadata(str(out)) == result.metadata
    loaded = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == len(expected)
    exported = {key(r): labels_of(format, r) for r in loaded}
    assert exported == expected
    assert sum(len(v) for v in exported.values()) == result.steps


def test_trl_record_layout(data_root, tmp_path):
    out = tmp_path / "trl.parquet"
    with Catalog(data_root, build_id="b1") as catalog:
        export_paths(catalog, "trl", str(out))
        steps = catalog.query(
            "SELECT problem_id, path_id, list(step_text ORDER BY step_index) AS texts FROM steps GROUP BY ALL"
        ).to_pylist()
        questions = {r["problem_id"]: r["question"]
                     for r in catalog.query("SELECT problem_id, question FROM problems").to_pylist()}
    import pyarrow.parquet as pq

    records = {(r["problem_id"], r["path_id"]): r for r in pq.read_table(out).to_pylist()}
    for row in steps:
        record = records[(row["problem_id"], row["path_id"])]
        assert record["completions"] == row["texts"]
        assert record["prompt"] == questions[row["problem_id"]]
        assert len(record["labels"]) == len(record["completions"])


def test_math_shepherd_rendering_reproduces_the_published_sample():
    for line in (DATA / "math_shepherd_sample.jsonl").read_text().splitlines():
        sample = json.loads(line)
        question, body = sample["input"].split(" Step 1: ", 1)
        steps = [re.sub(r"^Step \d+: ", "", part)
                 for part in ("Step 1: " + body).removesuffix(f" {STEP_TAG}").split(f" {STEP_TAG}\n")]
        labels = parse_math_shepherd(sample["input"], sample["label"])
        assert len(labels) == len(steps)
        path = LabeledPath("b", "p", "path", "gsm8k", question, "?", steps, labels, [""] * len(steps), True, None,
                           "m", None)
        record, escaped = math_shepherd_record(path)
        assert (record["input"], record["label"], escaped) == (sample["input"], sample["label"], 0)


def test_math_shepherd_escapes_tags_inside_step_text():
    path = LabeledPath("b", "p", "path", "s", "Q?", "1", [f"x {STEP_TAG} y", "z"], [True, False], ["", ""], True, "1",
                       "m", None)
    record, escaped = math_shepherd_record(path)
    assert escaped == 1
    assert parse_math_shepherd(record["input"], record["label"]) == [True, False]


def test_prm800k_record_matches_the_published_layout():
    sample = json.loads((DATA / "prm800k_sample.jsonl").read_text().splitlines()[0])
    path = LabeledPath("b", "p", "path", "math500", "Q?", "29", ["a", "b"], [True, False], ["", ""], True, "30",
                       "m", None)
    record = prm800k_record(path)
    assert set(sample) <= set(record)
    assert set(sample["label"]) == set(record["label"])
    assert set(sample["question"]) == set(record["question"])
    assert set(sample["label"]["steps"][0]) == set(record["label"]["steps"][0])
    assert set(sample["label"]["steps"][0]["completions"][0]) == set(record["label"]["steps"][0]["completions"][0])
    assert record["label"]["finish_reason"] == "found_error"
    assert [s["completions"][0]["rating"] for s in record["label"]["steps"]] == [1, -1]


def test_jsonl_output(data_root, tmp_path):
    out = tmp_path / "prm800k.jsonl"
    with Catalog(data_root) as catalog:
        result = export_paths(catalog, "prm800k", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == result.records
    assert {key(r): labels_of("prm800k", r) for r in records} == truncated(shard_labels(data_root), "prm800k")
    metadata = read_export_metadata(str(out))
    assert metadata["after_first_error"] == "truncate" and metadata["records"] == result.records
    assert metadata["after_first_error_steps_removed"] > 0


def test_generative_turns_carry_rationales(data_root, tmp_path):
    out = tmp_path / "gen.parquet"
    with Catalog(data_root, build_id="b2") as catalog:
        export_paths(catalog, "generative", str(out))
        rationales = {
            (r["problem_id"], r["path_id"]): r["rationales"]
            for r in catalog.query(
                "SELECT problem_id, path_id, list(rationale ORDER BY step_index) AS rationales FROM steps GROUP BY ALL"
            ).to_pylist()
        }
    import pyarrow.parquet as pq

    for record in pq.read_table(out).to_pylist():
        roles = [m["role"] for m in record["messages"]]
        assert roles[0] == "system" and roles[1:] == ["user", "assistant"] * len(record["labels"])
        assistant = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        expected = rationales[(record["problem_id"], record["path_id"])]
        assert assistant == expected[: len(assistant)] and len(assistant) == len(record["labels"])
        assert all(record["labels"][:-1])  # cut after the first error (the generative default)
        assert record["messages"][1]["content"].startswith("Problem: ")


def test_where_keeps_paths_with_a_matching_step_whole(data_root, tmp_path):
    where = "tool_verdict = 'incorrect' AND source = 'gsm8k'"
    with Catalog(data_root) as catalog:
        paths = load_paths(catalog, where)
        result = export_paths(catalog, "trl", str(tmp_path / "w.parquet"), where=where)
    matching = shard_labels(data_root, where)
    full = shard_labels(data_root)
    assert {(p.build_id, p.problem_id, p.path_id) for p in paths} == set(matching)
    assert 0 < result.paths_after_where == len(matching) < result.paths_total
    for path in paths:  # the whole path is exported, not only the matching steps
        assert path.labels == full[(path.build_id, path.problem_id, path.path_id)]


def test_consensus_filter(data_root, tmp_path):
    with Catalog(data_root) as catalog:
        result = export_paths(catalog, "trl", str(tmp_path / "c.parquet"), consensus=True)
        expected = catalog.query(
            "SELECT count(*) FROM (SELECT build_id, problem_id, path_id FROM steps GROUP BY ALL"
            " HAVING bool_and(consensus))"
        ).column(0)[0].as_py()
    assert 0 < result.records == expected < result.paths_total


@pytest.mark.parametrize("ratio", [1.0, 0.5, 3.0])
def test_balance_is_seeded_and_reaches_the_ratio(data_root, ratio):
    with Catalog(data_root) as catalog:
        paths = load_paths(catalog)
    first = balance_paths(paths, ratio, seed=7)
    again = balance_paths(list(reversed(paths)), ratio, seed=7)
    assert {id(p) for p in first} == {id(p) for p in again}
    other_seed = balance_paths(paths, ratio, seed=8)
    positive = sum(p.positive for p in first)
    negative = len(first) - positive
    assert abs(positive - ratio * negative) <= max(1, ratio) and positive and negative
    assert [p for p in paths if any(p is q for q in first)] == first  # original order kept
    if len(first) < len(paths):
        assert {id(p) for p in first} != {id(p) for p in other_seed} or ratio == 1.0


def test_balance_needs_both_classes():
    path = LabeledPath("b", "p", "x", "s", "Q", "1", ["a"], [True], [""], True, "1", "m", None)
    with pytest.raises(PrmforgeError, match="cannot balance"):
        balance_paths([path], 1.0)
    with pytest.raises(PrmforgeError, match="positive ratio"):
        balance_paths([path], 0)


def test_bad_where_and_format_are_one_line_errors(data_root, tmp_path):
    with Catalog(data_root) as catalog:
        with pytest.raises(PrmforgeError, match="no_such_column"):
            export_paths(catalog, "trl", str(tmp_path / "x.parquet"), where="no_such_column = 1")
        with pytest.raises(PrmforgeError, match="unknown export format"):
            export_paths(catalog, "csv", str(tmp_path / "x.parquet"))


def test_export_cli(data_root, tmp_path):
    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(
        app, ["export", "--format", "math-shepherd", "--out", str(out), "--root", str(data_root), "--build", "b1",
              "--balance", "1", "--consensus"],
    )
    assert result.exit_code == 0, result.output
    assert "math-shepherd record(s)" in result.output and out.is_file()
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert set(table.column("build_id").to_pylist()) == {"b1"}
    labels = [parse_math_shepherd(r["input"], r["label"]) for r in table.to_pylist()]
    positive = sum(all(x) for x in labels)
    assert abs(positive - (len(labels) - positive)) <= 1


def _path(labels, mc_totals=None, agree=None, sources=None, final_answer="1", num_steps=None):
    n = len(labels)
    return LabeledPath(
        "b", "p", "x", "s", "Q", "1", [f"s{i}" for i in range(n)], list(labels), [""] * n, True, final_answer, "m",
        None, mc_values=[None if t is None else 0.5 for t in (mc_totals or [None] * n)],
        mc_totals=mc_totals or [None] * n,
        signals_agree=agree or [True] * n, label_sources=sources or ["mc"] * n, num_steps=num_steps or n,
    )


def test_after_first_error_truncates_or_keeps_negatives():
    path = _path([True, False, False, True])
    assert apply_after_first_error(path, "truncate").labels == [True, False]
    assert apply_after_first_error(path, "truncate").steps == ["s0", "s1"]
    assert apply_after_first_error(path, "negative") is path
    assert apply_after_first_error(_path([True, True]), "truncate").labels == [True, True]
    with pytest.raises(PrmforgeError, match="after-first-error"):
        apply_after_first_error(path, "drop")


def test_min_confidence_cuts_before_the_first_unconfident_step():
    # step 1 rests on 4 rollouts: with 8 required the path keeps only step 0
    path = _path([True, True, False], mc_totals=[8, 4, 8])
    assert apply_min_confidence(path, 4).labels == [True, True, False]
    assert apply_min_confidence(path, 8).steps == ["s0"]
    # disagreeing signals cut too; nothing left -> None
    assert apply_min_confidence(_path([True, True], mc_totals=[8, 8], agree=[False, True]), 1) is None
    # no sampled value (verifier or inferred label): not an estimate, kept
    assert apply_min_confidence(_path([True, True], mc_totals=[None, None]), 16).labels == [True, True]
    # the last step of a path with a final answer is exact (1 "rollout": its own answer)
    assert apply_min_confidence(_path([True, True], mc_totals=[8, 1]), 8).labels == [True, True]
    assert apply_min_confidence(_path([True, True], mc_totals=[8, 1], final_answer=None), 8).labels == [True]


def test_min_confidence_export_keeps_only_agreeing_well_sampled_prefixes(data_root, tmp_path):
    out = tmp_path / "conf.parquet"
    with Catalog(data_root) as catalog:
        plain = export_paths(catalog, "trl", str(tmp_path / "plain.parquet"))
        result = export_paths(catalog, "trl", str(out), min_confidence=8)
        agree = {
            (r["build_id"], r["problem_id"], r["path_id"]): r["agree"]
            for r in catalog.query(
                "SELECT build_id, problem_id, path_id, list(signals_agree ORDER BY step_index) AS agree FROM steps"
                " GROUP BY ALL"
            ).to_pylist()
        }
    import pyarrow.parquet as pq

    records = pq.read_table(out).to_pylist()
    assert 0 < result.records < plain.records and result.steps < plain.steps
    for record in records:
        flags = agree[key(record)]
        n = len(record["labels"])
        assert all(flags[:n]) and (n == len(flags) or not flags[n])  # cut exactly at the first disagreement
    metadata = read_export_metadata(str(out))
    assert metadata["min_confidence_rollouts"] == 8
    assert metadata["low_confidence_steps_removed"] == plain.steps - result.steps
    assert metadata["low_confidence_paths_removed"] == plain.records - result.records


def test_soft_labels_math_shepherd_and_refused_elsewhere(data_root, tmp_path):
    out = tmp_path / "soft.parquet"
    with Catalog(data_root) as catalog:
        result = export_paths(catalog, "math-shepherd", str(out), soft_labels=True)
        with pytest.raises(PrmforgeError, match="soft"):
            export_paths(catalog, "trl", str(tmp_path / "t.parquet"), soft_labels=True)
        values = {
            (r["build_id"], r["problem_id"], r["path_id"]): r["values"]
            for r in catalog.query(
                "SELECT build_id, problem_id, path_id, list(mc_value ORDER BY step_index) AS values FROM steps"
                " GROUP BY ALL"
            ).to_pylist()
        }
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.schema.field("value").type.value_type == "double"
    for record in table.to_pylist():
        assert record["value"] == values[key(record)] == record["mc_values"]
        assert len(record["value"]) == record["input"].count(STEP_TAG)
    assert result.metadata["labels"].startswith("soft")
    # a step labeled negative only because it follows the first error gets 0.0, not its MC value
    path = _path([False, False], mc_totals=[8, 8], sources=["mc", "after_first_error"])
    assert soft_values(path) == ([0.5, 0.0], 0)
    assert soft_values(_path([True, False]))[1] == 2


def test_hard_math_shepherd_value_column_matches_the_tags(data_root, tmp_path):
    out = tmp_path / "hard.parquet"
    with Catalog(data_root) as catalog:
        export_paths(catalog, "math-shepherd", str(out))
    import pyarrow.parquet as pq

    for record in pq.read_table(out).to_pylist():
        labels = parse_math_shepherd(record["input"], record["label"])
        assert record["value"] == ["+" if x else "-" for x in labels]


def test_negative_after_first_error_says_when_the_build_truncated(tmp_path):
    from data_schemas.manifest import finish_build, start_build
    from data_schemas.shards import ShardWriter
    from data_schemas.synthetic import synthetic_batch

    # a build made with fuse.after_first_error = "truncate": no rows after a path's first error
    batch = synthetic_batch("t1", "gsm8k", 0)
    first_error = {}
    for row in batch.steps:
        if row.is_first_error:
            first_error[(row.problem_id, row.path_id)] = row.step_index
    kept = [r for r in batch.steps if r.step_index <= first_error.get((r.problem_id, r.path_id), r.step_index)]
    cut = {k for k, index in first_error.items()
           if any(r.step_index > index for r in batch.steps if (r.problem_id, r.path_id) == k)}
    assert cut  # the synthetic batch has paths with steps after their first error
    manifest = start_build(tmp_path, "t1", {"name": "truncated"}, policy_model="m")
    shards = ShardWriter(tmp_path, "t1").write_batch("gsm8k", "b0", kept, batch.nodes, batch.outcomes)
    finish_build(tmp_path, manifest, shards)
    with Catalog(tmp_path) as catalog:
        result = export_paths(catalog, "trl", str(tmp_path / "n.parquet"))
    assert result.after_first_error == "negative"
    assert result.metadata["paths_truncated_by_build"] == len(cut)
    assert any("truncated after their first error by the build" in note for note in result.notes)
