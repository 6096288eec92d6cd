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
        overrides=[f"output.root={json.dumps(str(tmp_path))}", "problems.limit=2", "search.max_depth=8",
                   "search.rounds=2"],
    )
    summary = run_build(config, build_id="listed", policy_factory="tests.test_flow_build:scripted_policy_factory")
    result = runner.invoke(app, ["builds", "--root", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "listed" in result.output and "complete" in result.output

    # A resume may change orchestration, never the labeling.
    result = runner.invoke(app, ["build", "--resume", "listed", "--root", str(tmp_path), "--set", "search.rounds=5"])
    assert "change the labeling of build 'listed'" in str(result.exception)
    assert summary.steps > 0


def test_cli_start_does_not_import_prefect():
    """Prefect reads PREFECT_HOME etc. at import: the CLI must set them first."""
    import subprocess
    import sys

    code = "import sys, flows.cli; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


def test_prefect_environment_defaults_keep_user_settings(tmp_path: Path, monkeypatch):
    from flows.runners import configure_prefect_environment, default_prefect_home

    for name in ("PREFECT_HOME", "PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    applied = configure_prefect_environment(str(tmp_path / "data"))
    assert applied["PREFECT_HOME"] == str(tmp_path / "data" / ".prefect")
    assert (tmp_path / "data" / ".prefect").is_dir()
    assert applied["PREFECT_LOGGING_LEVEL"] == "WARNING"
    assert applied["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    assert "PREFECT_HOME" not in configure_prefect_environment(str(tmp_path / "data"), verbose=True)
    import os

    assert os.environ["PREFECT_LOGGING_LEVEL"] == "INFO"  # --verbose shows Prefect's lines
    assert default_prefect_home("s3://bucket/x") == Path.home() / ".prmforge" / "prefect"
