"""DuckDB catalog and the query / stats CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_shards import kill_writer_mid_file
from typer.testing import CliRunner

from data_schemas.catalog import Catalog
from data_schemas.errors import PrmforgeError
from data_schemas.records import to_table
from data_schemas.schemas import STEPS
from data_schemas.shards import ShardWriter
from data_schemas.stats import compute_stats, plot_stats
from data_schemas.synthetic import synthetic_batch, write_synthetic_build
from flows.cli import app

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    write_synthetic_build(root, "b1", num_batches=4)
    write_synthetic_build(root, "b2", num_batches=2)
    write_synthetic_build(root, "running", num_batches=1, status="running")
    return root


def count(catalog: Catalog, sql: str) -> int:
    return catalog.query(sql).column(0)[0].as_py()


def test_views_cover_complete_builds_by_default(data_root):
    with Catalog(data_root) as catalog:
        assert catalog.build_ids == ["b1", "b2"]
        by_build = {r["build_id"]: r["n"]
                    for r in catalog.query("SELECT build_id, count(*) AS n FROM steps GROUP BY 1").to_pylist()}
        builds = {r["build_id"]: r for r in catalog.query("SELECT * FROM builds").to_pylist()}
        assert set(builds) == {"b1", "b2"}
        for build_id, row in builds.items():
            assert row["num_steps"] == by_build[build_id]
            assert row["status"] == "complete"
        assert count(catalog, "SELECT count(*) FROM problems") == sum(r["num_problems"] for r in builds.values())
        assert count(catalog, "SELECT count(*) FROM nodes") == sum(r["num_nodes"] for r in builds.values())
        # The problems view is the outcomes table: failures are there with their stage and error.
        failed = catalog.query("SELECT failed_stage, error FROM problems WHERE status = 'failed'").to_pylist()
        assert failed and all(r["failed_stage"] and r["error"] for r in failed)
        # steps join problems.
        assert (count(catalog, "SELECT count(*) FROM steps JOIN problems USING (build_id, problem_id)")
                == sum(by_build.values()))


def test_build_filter_and_incomplete_builds(data_root):
    with Catalog(data_root, build_id="b2") as catalog:
        assert catalog.query("SELECT DISTINCT build_id FROM steps").column(0).to_pylist() == ["b2"]
    with pytest.raises(PrmforgeError, match="running, not complete"):
        Catalog(data_root, build_id="running")
    with Catalog(data_root, include_incomplete=True) as catalog:
        assert catalog.build_ids == ["b1", "b2", "running"]
        assert count(catalog, "SELECT count(*) FROM steps WHERE build_id = 'running'") > 0
        assert (catalog.query("SELECT status FROM builds WHERE build_id = 'running'").column(0).to_pylist()
                == ["running"])


def test_complete_build_reads_only_the_shards_its_manifest_lists(tmp_path):
    manifest = write_synthetic_build(tmp_path, "b1", num_batches=2)
    listed = manifest.shard_rows("steps")
    stray = synthetic_batch("b1", "gsm8k", 9)
    ShardWriter(tmp_path, "b1").write_table("steps", "gsm8k", "late", stray.steps)  # after the manifest
    with Catalog(tmp_path) as catalog:
        assert count(catalog, "SELECT count(*) FROM steps") == listed
    with Catalog(tmp_path, include_incomplete=True) as catalog:
        assert count(catalog, "SELECT count(*) FROM steps") == listed  # complete: still the manifest's list


def test_killed_writer_leaves_nothing_visible_to_queries(tmp_path):
    temp = kill_writer_mid_file(tmp_path)
    assert temp.stat().st_size > 0
    complete_rows = len(synthetic_batch("crash", "gsm8k", 0, num_problems=8).steps)
    # No manifest was ever written by the subprocess: write the running one a flow would have.
    from data_schemas.manifest import start_build

    start_build(tmp_path, "crash", {"note": "writer killed"})
    with Catalog(tmp_path, include_incomplete=True) as catalog:
        assert count(catalog, "SELECT count(*) FROM steps") == complete_rows
        assert catalog.query("SELECT DISTINCT filename FROM read_parquet(?, filename = true)",
                             [str(tmp_path / "builds/crash/steps/**/*.parquet")]).num_rows == 1
    with Catalog(tmp_path) as catalog:
        assert catalog.build_ids == [] and count(catalog, "SELECT count(*) FROM steps") == 0
    result = run_cli("query", "SELECT count(*) AS n FROM steps", "--root", str(tmp_path), "--include-incomplete",
                     "-f", "json")
    assert json.loads(result.stdout) == {"n": complete_rows}


def test_stray_shard_of_another_schema_version_is_refused(tmp_path):
    write_synthetic_build(tmp_path, "r", num_batches=1, status="running")
    table = to_table(synthetic_batch("r", "gsm8k", 5).steps, STEPS).replace_schema_metadata(
        {"prmforge.schema_version": "0"}
    )
    path = tmp_path / "builds/r/steps/source=gsm8k/part-old.parquet"
    pq.write_table(table, path)
    with pytest.raises(PrmforgeError, match="schema version 0"):
        Catalog(tmp_path, include_incomplete=True)


def test_fsspec_memory_root():
    root = f"memory://catalog-test-{os.getpid()}"
    manifest = write_synthetic_build(root, "m1", num_batches=2)
    try:
        with Catalog(root) as catalog:
            assert count(catalog, "SELECT count(*) FROM steps") == manifest.shard_rows("steps")
            assert count(catalog, "SELECT count(*) FROM problems") == manifest.shard_rows("outcomes")
    finally:
        import fsspec

        fsspec.filesystem("memory").rm(f"/catalog-test-{os.getpid()}", recursive=True)


def test_bad_sql_is_one_line_error(data_root):
    with Catalog(data_root) as catalog:
        with pytest.raises(PrmforgeError) as error:
            catalog.query("SELEC count(*) FROM steps")
        assert "syntax error" in str(error.value) and "\n" not in str(error.value)
        with pytest.raises(PrmforgeError, match="no_such_column"):
            catalog.query("SELECT no_such_column FROM steps")


def test_empty_root_has_typed_empty_views(tmp_path):
    with Catalog(tmp_path) as catalog:
        assert catalog.query("SELECT * FROM steps").schema.names == STEPS.names
        assert count(catalog, "SELECT count(*) FROM builds") == 0


def test_stats_sections_match_the_rows(data_root, tmp_path):
    with Catalog(data_root, build_id="b1") as catalog:
        stats = compute_stats(catalog)
        steps = count(catalog, "SELECT count(*) FROM steps")
        positive = count(catalog, "SELECT count(*) FROM steps WHERE fused_label")
    labels = {r["label"]: r["steps"] for r in stats.labels.to_pylist()}
    assert labels == {"positive": positive, "negative": steps - positive}
    assert sum(r["steps"] for r in stats.tool_vs_mc.to_pylist()) == steps
    agreement = {r["metric"]: r["count"] for r in stats.agreement.to_pylist()}
    assert agreement["steps"] == steps and 0 < agreement["tool_mc_agree"] <= agreement["tool_and_mc_decided"]
    paths = sum(r["paths"] for r in stats.steps_per_path.to_pylist())
    assert sum(r["paths"] for r in stats.first_error.to_pylist()) == paths == agreement["paths"]
    png = plot_stats(stats, tmp_path / "stats.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- CLI ---------------------------------------------------------------------------------------


def run_cli(*args: str, input: str | None = None):
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=True)
    return result


def test_query_cli_formats(data_root, tmp_path):
    sql = "SELECT build_id, count(*) AS steps FROM steps GROUP BY 1 ORDER BY 1"
    table = run_cli("query", sql, "--root", str(data_root))
    assert table.exit_code == 0, table.output
    assert "b1" in table.output and "b2" in table.output and "2 row(s)" in table.output

    as_csv = run_cli("query", sql, "--root", str(data_root), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    with Catalog(data_root) as catalog:
        expected = catalog.query(sql).to_pylist()
    assert [(r["build_id"], int(r["steps"])) for r in rows] == [(r["build_id"], r["steps"]) for r in expected]

    as_json = run_cli("query", sql, "--root", str(data_root), "--format", "json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == expected

    out = tmp_path / "result.parquet"
    as_parquet = run_cli("query", sql, "--root", str(data_root), "--format", "parquet", "--out", str(out))
    assert as_parquet.exit_code == 0 and pq.read_table(out).to_pylist() == expected

    filtered = run_cli("query", "SELECT DISTINCT build_id FROM steps", "--root", str(data_root), "--build", "b2",
                       "-f", "json")
    assert [json.loads(line)["build_id"] for line in filtered.stdout.splitlines()] == ["b2"]


def test_query_cli_reads_root_from_environment(data_root, monkeypatch):
    monkeypatch.setenv("PRMFORGE_DATA_ROOT", str(data_root))
    result = run_cli("query", "SELECT count(*) AS n FROM builds", "-f", "json")
    assert json.loads(result.stdout) == {"n": 2}


def test_query_cli_bad_sql_exits_2_with_one_line(data_root):
    completed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "query", "SELEC 1 FROM steps", "--root", str(data_root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: Parser Error: syntax error")
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr


def test_query_shell_runs_statements_until_semicolon(data_root):
    script = "SELECT count(*) AS n\nFROM builds;\nSELECT nope;\n.tables\n.quit\n"
    result = run_cli("query", "--shell", "--root", str(data_root), input=script)
    assert result.exit_code == 0, result.output
    assert re.search(r"┃\s+n\s+┃", result.output) and re.search(r"│\s+2\s+│", result.output)
    assert "error: Binder Error" in result.output
    assert "builds  nodes  problems  steps" in result.output


def test_stats_cli_prints_tables_and_plot(data_root, tmp_path):
    png = tmp_path / "stats.png"
    result = run_cli("stats", "b1", "--root", str(data_root), "--plot", str(png))
    assert result.exit_code == 0, result.output
    for title in ("Step labels", "Tool verdict x MC hard label", "Problems per outcome status", "Rollouts and tokens"):
        assert title in result.output
    assert png.stat().st_size > 10_000
