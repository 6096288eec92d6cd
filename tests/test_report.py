"""HTML build report over synthetic shards (and the `prmforge report` command)."""

from __future__ import annotations

import base64
import re

import pytest

from data_schemas.errors import PrmforgeError
from data_schemas.report import SECTIONS, build_report
from data_schemas.synthetic import write_synthetic_build


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "root"
    write_synthetic_build(str(path), "b1", num_batches=3)
    return path


@pytest.fixture(scope="module")
def report(root):
    return build_report(str(root), "b1")


def test_report_has_every_section_and_embedded_png_figures(report):
    page = report.html
    for key, name in SECTIONS:
        assert f'<section id="{key}">' in page
        assert f"<h2>{name}</h2>" in page
    images = re.findall(r'data-figure="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [name for name, _ in images] == ["label_distribution", "first_error_position", "agreement_matrix", "cost"]
    for _, payload in images:
        assert base64.b64decode(payload).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


def test_report_numbers_come_from_the_shards(root, report):
    import duckdb

    steps = duckdb.sql("SELECT count(*), count(*) FILTER (WHERE fused_label) "
                       f"FROM read_parquet('{root}/builds/b1/steps/*/*.parquet')").fetchall()[0]
    assert report.summary["steps"] == steps[0]
    assert report.summary["positive"] == steps[1]
    # synthetic rows: the fused label equals the MC hard label on every step
    share, n = report.agreement[("mc", "fused")]
    assert share == 1.0 and n == steps[0]
    assert report.summary["failed"] >= 1  # synthetic builds fail every 7th problem
    assert "Failed problems" in report.html and "<td>" in report.html


def test_unknown_build_is_one_line_error(root):
    with pytest.raises(PrmforgeError):
        build_report(str(root), "no-such-build")


def test_report_command_writes_the_file(root, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "b1", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "4 figures" in result.output


def test_empty_and_running_builds_still_render(tmp_path):
    root = str(tmp_path / "root")
    write_synthetic_build(root, "empty", num_batches=0)
    write_synthetic_build(root, "running", num_batches=1, status="running")
    empty = build_report(root, "empty")
    assert empty.summary["steps"] == 0 and empty.summary["rollouts per labeled step"] is None
    assert len(empty.figures) == 4 and "No failed problems." in empty.html
    running = build_report(root, "running")
    assert running.summary["build status"] == "running" and running.summary["steps"] > 0
