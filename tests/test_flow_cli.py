"""The build commands through the CLI: one-line errors, `builds` listing, resume refusals."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.build import run_build
from flows.cli import app
from flows.config_load import load_build_config

runner = CliRunner()


def test_build_rejects_bad_config_in_one_line(tmp_path: Path):
    result = runner.invoke(app, ["build", "--preset", "demo", "--set", "search.rounds=0", "--root", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert "config key search.rounds: Input should be greater than or equal to 1" in str(result.exception)


def test_resume_of_unknown_build_and_mixed_flags_are_refused(tmp_path: Path):
    result = runner.invoke(app, ["build", "--resume", "nope", "--root", str(tmp_path)])
    assert "no build 'nope'" in str(result.exception)
    result = runner.invoke(app, ["build", "--resume", "nope", "--preset", "demo", "--root", str(tmp_path)])
    assert "--resume takes the build's own config" in str(result.exception)


def test_builds_lists_manifests_and_resume_keeps_identity(tmp_path: Path):
    result = runner.invoke(app, ["builds", "--root", str(tmp_path)])
    assert result.exit_code == 0 and "no builds under" in result.output

    config = load_build_config(
        preset="small",
        overrides=[f"output.root={json.dumps(str(tmp_path))}", "problems.limit=2", "search.max_depth=8", "search.rounds=2"],
    )
    summary = run_build(config, build_id="listed", policy_factory="tests.test_flow_build:scripted_policy_factory")
    result = runner.invoke(app, ["builds", "--root", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "listed" in result.output and "complete" in result.output

    # A resume may change orchestration, never the labeling.
    result = runner.invoke(app, ["build", "--resume", "listed", "--root", str(tmp_path), "--set", "search.rounds=5"])
    assert "change the labeling of build 'listed'" in str(result.exception)
    assert summary.steps > 0
