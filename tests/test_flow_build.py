"""The build flow end to end: scripted policy (fast), Prefect caching/resume, failures, Dask, schedule.

The scripted policy (tests/support/scripted_policy.py) is injected through the flow's
``policy_factory`` parameter, never through user config. Each test uses its own data root.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from data_schemas.catalog import Catalog
from data_schemas.manifest import read_manifest, verify_build
from flows.build import make_batches, make_deployment, new_build_id, run_build
from flows.config_load import load_build_config
from flows.progress import BuildProgress
from labelers.config import PolicyConfig

REPO = Path(__file__).resolve().parent.parent
FACTORY = "tests.test_flow_build:scripted_policy_factory"
# Columns that differ between two builds of the same rows.
BUILD_COLUMNS = ("build_id",)


def _bundled_gsm8k_rows() -> list[dict]:
    from data_schemas.problems import bundled_problems_path

    rows = [json.loads(line) for line in bundled_problems_path().read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [row for row in rows if "####" in str(row.get("answer", ""))]


def scripted_policy_factory(policy_config: PolicyConfig):
    """The policy a test build uses: scripted answers for the bundled GSM8K problems, with slips."""
    from tests.support.scripted_policy import ScriptedPolicy, gsm8k_scripted_problems

    problems = gsm8k_scripted_problems(_bundled_gsm8k_rows(), seed=3, p_correct=0.7, step_error_rate=0.3)
    return ScriptedPolicy(
        problems, fail_questions=[q for q in os.environ.get("PRMFORGE_TEST_FAIL_QUESTION", "").split("|") if q]
    )


def slow_scripted_policy_factory(policy_config: PolicyConfig):
    """The scripted policy, 0.2 s per generate call: a build slow enough to kill half-way."""
    policy = scripted_policy_factory(policy_config)
    generate = policy.generate

    def slow_generate(requests):
        time.sleep(0.2)
        return generate(requests)

    policy.generate = slow_generate  # type: ignore[method-assign]
    return policy


def small_config(root: Path, *overrides: str):
    """Four bundled GSM8K problems, two per batch, small search budgets, tool checks on."""
    return load_build_config(
        preset="small",
        overrides=[
            f"output.root={json.dumps(str(root))}",
            "problems.limit=4",
            "output.batch_size=2",
            "search.rounds=3",
            "search.max_depth=8",
            "search.mc_rollouts=3",
            "search.children_per_expansion=2",
            "search.max_paths_per_problem=3",
            "flow.retries=1",
            "flow.retry_delay_s=0",
            *overrides,
        ],
    )


def step_rows(root: Path, build_id: str) -> list[tuple]:
    """Every step row of a build without build-specific columns, sorted (for set comparisons)."""
    pattern = str(root / "builds" / build_id / "steps" / "**" / "*.parquet")
    relation = duckdb.sql(f"SELECT * EXCLUDE ({', '.join(BUILD_COLUMNS)}) FROM read_parquet('{pattern}') ORDER BY ALL")
    return relation.fetchall()


def test_batches_have_stable_keys():
    from data_schemas.records import Problem

    problems = [Problem(f"id{i}", "s", f"q{i}", "1") for i in range(5)]
    batches = make_batches(problems, 2)
    assert [len(b.problems) for b in batches] == [2, 2, 1]
    assert [b.key for b in batches] == [b.key for b in make_batches(list(problems), 2)]
    assert batches[0].key.startswith("00000-") and batches[2].key.startswith("00002-")
    # Different problems at the same position get a different key (no stale shard reuse).
    assert make_batches(problems[1:], 2)[0].key != batches[0].key


def test_build_writes_rows_manifest_and_duckdb_reads_them(tmp_path: Path):
    config = small_config(tmp_path)
    progress = BuildProgress(stream=open(tmp_path / "progress.txt", "w"), force_terminal=False)  # noqa: SIM115
    summary = run_build(config, policy_factory=FACTORY, progress=progress)
    progress.console.file.close()

    assert summary.status == "complete"
    assert summary.problems_total == 4 and summary.problems_failed == 0
    assert summary.batches_total == 2 and summary.batches_reused == 0
    assert summary.steps > 0 and summary.rollouts > 0
    assert 0 < summary.tool_checked_steps <= summary.steps
    manifest = verify_build(str(tmp_path), summary.build_id)  # files match the manifest's checksums
    assert manifest.status == "complete"
    assert manifest.config_hash == config.config_hash()
    assert manifest.counts["stages"]["problems"] == 4
    assert manifest.counts["run"]["batches"] == 2
    assert summary.gold_reach is not None and summary.gold_reach[1] == 4  # MC ran: the summary counts reach
    assert manifest.counts["gold_reach"] == {"problems": 4, "reached": summary.gold_reach[0]}
    assert {s.table for s in manifest.shards} == {"steps", "nodes", "outcomes"}
    assert len(manifest.shards) == 6  # 2 batches x 3 tables, one source

    with Catalog(str(tmp_path), build_id=summary.build_id) as catalog:
        steps = catalog.query(
            "SELECT count(*) AS n, count(DISTINCT problem_id) AS p, sum(fused_label::INT) AS pos FROM steps"
        ).to_pylist()[0]
        outcomes = catalog.query("SELECT status, count(*) AS n FROM problems GROUP BY status").to_pylist()
    assert steps["n"] == summary.steps and steps["p"] == 4 and steps["pos"] == summary.positive_steps
    assert outcomes == [{"status": "labeled", "n": 4}]
    progress_text = (tmp_path / "progress.txt").read_text()
    assert "4/4 problems" in progress_text  # plain lines when not a terminal
    assert f"build {summary.build_id}" in progress_text

    # Same seed and inputs -> the same rows in a second build (only build_id differs).
    again = run_build(config, policy_factory=FACTORY)
    assert again.build_id != summary.build_id
    assert step_rows(tmp_path, again.build_id) == step_rows(tmp_path, summary.build_id)


def test_failing_problem_is_recorded_and_build_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    question = _bundled_gsm8k_rows()[1]["question"]
    monkeypatch.setenv("PRMFORGE_TEST_FAIL_QUESTION", question)
    summary = run_build(small_config(tmp_path, "flow.retries=0"), policy_factory=FACTORY)
    assert summary.status == "complete"
    assert summary.problems_failed == 1
    assert len(summary.failures) == 1 and summary.failures[0][2]  # stage and error recorded
    manifest = read_manifest(str(tmp_path), summary.build_id)
    assert manifest.failed_problems == 1
    with Catalog(str(tmp_path), build_id=summary.build_id) as catalog:
        failed = catalog.query("SELECT question, error FROM problems WHERE status = 'failed'").to_pylist()
    assert [row["question"] for row in failed] == [question]
    assert failed[0]["error"]


class FlakyFactory:
    """Raises a transient error the first ``failures`` times it is asked for a policy."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, policy_config: PolicyConfig):
        with self._lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError("503 Service Unavailable (test)")
        return scripted_policy_factory(policy_config)


def test_transient_error_is_retried_then_exhausted_retries_record_failures(tmp_path: Path):
    flaky = FlakyFactory(failures=1)
    summary = run_build(small_config(tmp_path, "flow.retries=2", "output.batch_size=4"), policy_factory=flaky)
    assert flaky.calls == 2  # failed once, retried, then the model was held for the batch
    assert summary.problems_failed == 0 and summary.steps > 0

    broken = FlakyFactory(failures=100)
    summary = run_build(small_config(tmp_path, "flow.retries=1", "output.batch_size=4"), policy_factory=broken)
    assert broken.calls == 2  # first try + one retry
    assert summary.status == "complete" and summary.problems_failed == 4 and summary.steps == 0
    assert all("503 Service Unavailable" in error for _, _, error in summary.failures)
    assert read_manifest(str(tmp_path), summary.build_id).failed_problems == 4


def test_rerun_reuses_prefect_cache_and_written_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = small_config(tmp_path)
    first = run_build(config, build_id="cache-test", policy_factory=FACTORY)
    rows = step_rows(tmp_path, "cache-test")
    results_dir = tmp_path / "builds" / "cache-test" / ".prefect-results"
    assert len(list(results_dir.iterdir())) == first.batches_total  # one persisted result per batch

    # Skipping by manifest checksum: nothing is relabeled or rewritten.
    second = run_build(config, build_id="cache-test", policy_factory=FACTORY)
    assert second.batches_reused == 2 and second.steps == first.steps

    # Ignoring the written shards: Prefect's cache gives the rows back without asking for a policy.
    made = []
    monkeypatch.setattr(importlib.import_module("tests.test_flow_build"), "scripted_policy_factory",
                        lambda pc: made.append(pc) or None)
    third = run_build(config, build_id="cache-test", policy_factory=FACTORY, reuse_written_shards=False)
    assert made == []
    assert third.batches_reused == 2
    assert step_rows(tmp_path, "cache-test") == rows


def test_resume_refuses_a_different_config(tmp_path: Path):
    from data_schemas.errors import ConfigError

    run_build(small_config(tmp_path), build_id="fixed", policy_factory=FACTORY)
    with pytest.raises(ConfigError, match="config hash"):
        run_build(small_config(tmp_path, "search.rounds=4"), build_id="fixed", policy_factory=FACTORY)


CRASH_SCRIPT = """
import sys
from flows.build import run_build
from flows.config_load import load_build_config
config = load_build_config(preset="small", overrides=sys.argv[3:])
run_build(config, build_id=sys.argv[2], policy_factory=sys.argv[1])
"""


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_rows(tmp_path: Path):
    root = tmp_path / "data"
    overrides = [
        f"output.root={json.dumps(str(root))}",
        "problems.limit=4",
        "output.batch_size=1",
        "search.rounds=3",
        "search.max_depth=8",
        "search.mc_rollouts=3",
        "search.children_per_expansion=2",
        "search.max_paths_per_problem=3",
    ]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, "tests.test_flow_build:slow_scripted_policy_factory", "crashed",
         *overrides],
        cwd=REPO,
        env=env,
        start_new_session=True,  # its own process group: the kill takes Prefect's server with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    outcomes_dir = root / "builds" / "crashed" / "outcomes"
    deadline = time.monotonic() + 90
    try:
        while not list(outcomes_dir.glob("*/part-*.parquet")):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard written in 90 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    written_before = len(list(outcomes_dir.glob("*/part-*.parquet")))
    assert 1 <= written_before < 4, "the kill should land in the middle of the build"
    assert read_manifest(str(root), "crashed", allow_incomplete=True).status == "running"

    config = load_build_config(preset="small", overrides=overrides)
    resumed = run_build(config, build_id="crashed", policy_factory="tests.test_flow_build:slow_scripted_policy_factory")
    assert resumed.status == "complete"
    assert resumed.batches_reused >= written_before  # finished batches were not labeled again
    uninterrupted = run_build(config, build_id="straight", policy_factory=FACTORY)

    crashed_rows = step_rows(root, "crashed")
    assert crashed_rows == step_rows(root, "straight")
    keys = duckdb.sql(
        f"SELECT problem_id, path_id, step_index FROM read_parquet('{root}/builds/crashed/steps/**/*.parquet')"
    ).fetchall()
    assert len(keys) == len(set(keys)) == uninterrupted.steps  # no duplicates, nothing lost
    verify_build(str(root), "crashed")


def test_dask_local_cluster_gives_the_same_rows_as_threads(tmp_path: Path):
    pytest.importorskip("prefect_dask", reason="needs the dask extra (prefect-dask)")
    threads = run_build(small_config(tmp_path), build_id="threads", policy_factory=FACTORY)
    dask_config = small_config(tmp_path, "flow.task_runner=dask", "flow.max_workers=2", "flow.dask_processes=false")
    dask = run_build(dask_config, build_id="dask", policy_factory=FACTORY)
    assert dask.steps == threads.steps
    assert step_rows(tmp_path, "dask") == step_rows(tmp_path, "threads")


def test_ray_runner_without_the_extra_names_it():
    from data_schemas.errors import ConfigError
    from flows.runners import make_task_runner

    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'prmforge\[ray\]'"):
            make_task_runner(load_build_config(overrides=["flow.task_runner=ray"]).flow)
    else:
        pytest.skip("prefect-ray is installed")


def test_serve_deployment_carries_the_cron_schedule():
    from data_schemas.errors import ConfigError

    deployment = make_deployment("nightly", "0 3 * * *", preset="gsm8k", overrides=["problems.limit=10"])
    assert deployment.name == "nightly"
    assert deployment.flow_name == "scheduled-build"
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * *"
    assert deployment.parameters == {"preset": "gsm8k", "config": None, "overrides": ["problems.limit=10"]}
    with pytest.raises(ConfigError, match="--cron 'every night'"):
        make_deployment("nightly", "every night", preset="gsm8k")


def test_new_build_ids_are_fresh_and_path_safe():
    config = load_build_config(preset="demo", overrides=["name='my build/1'"])
    build_id = new_build_id(config)
    assert build_id.startswith("my-build-1-") and build_id.endswith(config.config_hash()[:6])


def test_remote_root_keeps_shards_and_resume_cache_on_the_filesystem():
    """An fsspec URI root (memory:// standing in for s3://): shards, manifest and the persisted
    batch results all live under the URI; a rerun is served from that cache."""
    import uuid

    root = f"memory://prmforge-{uuid.uuid4().hex[:8]}"
    config = load_build_config(
        preset="small", overrides=[f"output.root={json.dumps(root)}", "problems.limit=2", "search.max_depth=8"]
    )
    first = run_build(config, build_id="remote", policy_factory=FACTORY)
    assert first.status == "complete" and first.steps > 0
    again = run_build(config, build_id="remote", policy_factory=FACTORY, reuse_written_shards=False)
    assert again.batches_reused == first.batches_total
    import fsspec

    results = fsspec.filesystem("memory").ls(f"{root.removeprefix('memory://')}/builds/remote/.prefect-results")
    assert len(results) == first.batches_total
    with Catalog(root, build_id="remote") as catalog:
        assert catalog.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": first.steps}]


def test_prefect_yaml_deployments_point_at_a_real_flow_with_valid_configs():
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    from flows.config_load import config_from_parts

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert flow.name == "scheduled-build"
        for schedule in deployment["schedules"]:
            Cron(schedule["cron"], timezone=schedule["timezone"])
        parameters = deployment["parameters"]
        assert set(parameters) <= {"preset", "config", "overrides", "policy_factory"}
        # The config scheduled_build will build, without running it.
        config = config_from_parts(parameters["preset"], parameters.get("config"), parameters.get("overrides") or [])
        assert config.output.root


def test_loading_the_deployment_entry_point_leaves_installed_packages_importable():
    """Prefect's loader puts the entry point's folder (flows/) first on sys.path and leaves it
    there, so a module in flows/ named like an installed package shadows that package for the
    rest of the worker's process (flows/datasets.py hid Hugging Face ``datasets``: processbench:
    SUBSET and the train loop would import the wrong module after a deployment loaded). Checked
    in a fresh interpreter."""
    import importlib.metadata

    code = (
        "import sys; from prefect.flows import load_flow_from_entrypoint\n"
        f"load_flow_from_entrypoint({str(REPO / 'flows' / 'build.py') + ':scheduled_build'!r})\n"
        "import datasets; print(datasets.__file__); assert hasattr(datasets, 'load_dataset'), datasets.__file__\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    installed = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    shadowing = sorted(path.name for path in (REPO / "flows").iterdir()
                       if (path.stem if path.suffix == ".py" else path.name) in installed)
    assert shadowing == []


def test_scheduled_build_entry_point_runs_a_build(tmp_path: Path):
    from flows.build import scheduled_build

    summary = scheduled_build(
        preset="small",
        config={"output": {"root": str(tmp_path)}, "problems": {"limit": 2}},
        overrides=["search.max_depth=8"],
        policy_factory=FACTORY,
    )
    assert summary.status == "complete" and summary.problems_total == 2 and summary.steps > 0
    assert read_manifest(str(tmp_path), summary.build_id).config_hash == load_build_config(
        preset="small", overrides=[f"output.root={json.dumps(str(tmp_path))}", "problems.limit=2", "search.max_depth=8"]
    ).config_hash()


def test_build_with_lean_enabled_but_no_toolchain_records_lean_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Lean asked for on a machine without a usable Lean project: the build still finishes, every
    step says lean_unavailable, and the reason is logged once for the build, not once per step."""
    missing_project = tmp_path / "no-lean-project"
    config = small_config(tmp_path, "lean.enabled=true", f"lean.project={json.dumps(str(missing_project))}")
    with caplog.at_level("WARNING", logger="labelers"):
        summary = run_build(config, policy_factory=FACTORY)
    assert summary.status == "complete" and summary.steps > 0 and summary.batches_total == 2
    with Catalog(str(tmp_path), build_id=summary.build_id) as catalog:
        states = catalog.query("SELECT DISTINCT lean_state FROM steps").to_pylist()
    assert states == [{"lean_state": "lean_unavailable"}]
    warnings = [r for r in caplog.records if "Lean verification unavailable" in r.getMessage()]
    assert len(warnings) == 1
