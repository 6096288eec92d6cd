"""Datasets grown by scheduled builds: label only what is new, one truth per step, diff, compact.

All builds use the scripted policy (tests/test_flow_build.py); each test has its own data root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_schemas.catalog import Catalog
from data_schemas.compaction import compact_dataset, dataset_view_files
from data_schemas.datasets import (
    CurrentProblem,
    live_claims,
    plan_problems,
    read_compaction,
    verify_compaction,
    write_claim,
)
from data_schemas.diff import diff_steps, diff_steps_of
from data_schemas.errors import ConfigError, PrmforgeError
from data_schemas.export import export_paths
from data_schemas.manifest import list_builds, read_manifest
from flows.build import run_build
from flows.cli import app
from flows.config_load import load_build_config
from tests.test_flow_build import FACTORY, REPO, _bundled_gsm8k_rows

SLOW_FACTORY = "tests.test_flow_build:slow_scripted_policy_factory"
STEP_KEY = "problem_id, path_id, step_index"


def write_problems(path: Path, start: int, stop: int, mode: str = "w") -> None:
    rows = _bundled_gsm8k_rows()[start:stop]
    with path.open(mode, encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def overrides(root: Path, problems: Path, *extra: str) -> list[str]:
    return [
        f"output.root={json.dumps(str(root))}",
        f"problems.path={json.dumps(str(problems))}",
        "problems.limit=1000",
        "output.dataset=nightly",
        "output.batch_size=2",
        "search.rounds=2",
        "search.max_depth=8",
        "search.mc_rollouts=2",
        "search.children_per_expansion=2",
        "search.max_paths_per_problem=2",
        "flow.retries=0",
        *extra,
    ]


def dataset_config(root: Path, problems: Path, *extra: str):
    return load_build_config(preset="small", overrides=overrides(root, problems, *extra))


def dataset_rows(root: Path, view: str = "dataset_steps") -> list[tuple]:
    with Catalog(str(root), dataset="nightly") as catalog:
        return catalog.connection.sql(f"SELECT * FROM {view} ORDER BY ALL").fetchall()


def build_rows(root: Path, build_ids: list[str]) -> list[tuple]:
    with Catalog(str(root), build_id=build_ids) as catalog:
        return catalog.connection.sql("SELECT * FROM steps ORDER BY ALL").fetchall()


def labeled_ids(root: Path, build_id: str) -> set[str]:
    with Catalog(str(root), build_id=build_id) as catalog:
        return set(catalog.query("SELECT problem_id FROM problems").column(0).to_pylist())


@pytest.fixture(autouse=True)
def restore_prefect_api_url():
    """`prmforge build` points PREFECT_API_URL at its own API server (flows/runners.py); an
    in-process CLI call must not leave that URL to later tests and their subprocesses."""
    saved = os.environ.get("PREFECT_API_URL")
    yield
    if saved is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = saved


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def running_prefect_api() -> dict[str, str]:
    """PREFECT_API_URL of this process's temporary Prefect server when one runs (else nothing).

    A subprocess build pointed at it skips starting its own server (10-20 s on a busy machine).
    """
    if os.environ.get("PREFECT_API_URL"):
        return {}
    try:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        if server.running:
            return {"PREFECT_API_URL": server.api_url}
    except (ImportError, AttributeError):
        pass
    return {}


GROW_SCRIPT = """
import sys
from flows.build import run_build
from flows.config_load import load_build_config
config = load_build_config(preset="small", overrides=sys.argv[3:])
run_build(config, build_id=sys.argv[2], policy_factory=sys.argv[1])
"""


@pytest.mark.slow
def test_dataset_grows_by_new_problems_survives_a_kill_and_skips_what_it_holds(tmp_path: Path):
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 10)
    first = run_build(dataset_config(root, problems, "output.batch_size=5"), build_id="night-1", policy_factory=FACTORY)
    assert first.problems_total == 10 and first.dataset == "nightly" and first.dataset_plan["new"] == 10
    after_first = dataset_rows(root)
    first_ids = labeled_ids(root, "night-1")

    # Five problems appended; the second run is killed after its first batch's shards.
    write_problems(problems, 10, 15, mode="a")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO),
           **running_prefect_api()}
    process = subprocess.Popen(
        [sys.executable, "-c", GROW_SCRIPT, SLOW_FACTORY, "night-2", *overrides(root, problems, "output.batch_size=1")],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    outcomes_dir = root / "builds" / "night-2" / "outcomes"
    deadline = time.monotonic() + 120
    try:
        while not list(outcomes_dir.glob("*/part-*.parquet")):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: no orphan Prefect server
        process.wait()
        process.stderr.close()
    written = len(list(outcomes_dir.glob("*/part-*.parquet")))
    assert 1 <= written < 5, "the kill should land in the middle of the run"
    killed = read_manifest(str(root), "night-2", allow_incomplete=True)
    assert killed.status == "running"
    listed = {shard.batch_key for shard in killed.shards if shard.table == "outcomes"}  # finished batches
    assert dataset_rows(root) == after_first  # the killed run changed nothing in the dataset
    assert [c.build_id for c in live_claims(str(root), "nightly")] == ["night-2"]

    # Resume: the build labels exactly its five planned problems.
    resumed = run_build(dataset_config(root, problems, "output.batch_size=1"), build_id="night-2",
                        policy_factory=FACTORY)
    # Batches the running manifest listed are not labeled again (one written but not yet listed is).
    assert resumed.status == "complete" and resumed.problems_total == 5 and resumed.batches_reused >= len(listed)
    second_ids = labeled_ids(root, "night-2")
    assert len(second_ids) == 5 and not second_ids & first_ids
    assert live_claims(str(root), "nightly") == []  # released on completion

    # One truth per step: each step once, exactly the union of the two builds.
    with Catalog(str(root), dataset="nightly") as catalog:
        keys = catalog.query(f"SELECT {STEP_KEY} FROM dataset_steps").to_pylist()
        assert catalog.query("SELECT count(*) FROM dataset_problems").column(0)[0].as_py() == 15
        lineage = catalog.query(
            "SELECT DISTINCT build_id, config_hash, prmforge_version, policy_model FROM dataset_steps ORDER BY 1"
        ).to_pylist()
    assert len(keys) == len({tuple(k.values()) for k in keys}) == first.steps + resumed.steps
    assert [row["build_id"] for row in lineage] == ["night-1", "night-2"]
    assert all(row["config_hash"] and row["prmforge_version"] and row["policy_model"] for row in lineage)
    with Catalog(str(root), dataset="nightly") as catalog:
        current = catalog.connection.sql(
            "SELECT * EXCLUDE (labeling_key, build_finished_at, plan_seq, commit_seq, policy_model, config_hash, "
            "prmforge_version, git_revision) "
            "FROM dataset_steps ORDER BY ALL"
        ).fetchall()
    assert current == build_rows(root, ["night-1", "night-2"])

    # The export of the dataset equals the export of the two builds, with no step twice.
    with Catalog(str(root), dataset="nightly", dataset_as_default=True) as catalog:
        export_paths(catalog, "trl", str(tmp_path / "dataset.parquet"))
    with Catalog(str(root), build_id=["night-1", "night-2"]) as catalog:
        export_paths(catalog, "trl", str(tmp_path / "builds.parquet"))
    exported = pq.read_table(tmp_path / "dataset.parquet").to_pylist()
    assert exported == pq.read_table(tmp_path / "builds.parquet").to_pylist()
    assert sum(len(r["labels"]) for r in exported) == len(keys)
    assert len({(r["problem_id"], r["path_id"]) for r in exported}) == len(exported)

    # A third run with nothing new labels nothing, without starting Prefect.
    started = time.perf_counter()
    third = run_build(dataset_config(root, problems), policy_factory=FACTORY)
    assert time.perf_counter() - started < 5
    assert third.problems_total == 0 and third.steps == 0
    assert third.dataset_plan == {"new": 0, "changed": 0, "relabeled": 0, "already_labeled": 15, "claimed_elsewhere": 0}
    assert read_manifest(str(root), third.build_id).status == "complete"
    with Catalog(str(root), dataset="nightly") as catalog:
        assert catalog.query("SELECT count(*) FROM dataset_steps").column(0)[0].as_py() == len(keys)


@pytest.fixture(scope="module")
def relabeled_dataset(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A dataset of 3 problems labeled twice: once, then again after search.mc_rollouts changed.

    A compaction is taken between the two builds, so the second build's rows are read from its
    own shards and the first's from the compacted files.
    """
    tmp_path = tmp_path_factory.mktemp("relabel")
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 3)
    info: dict = {}
    info["first"] = run_build(dataset_config(root, problems), build_id="a-1", policy_factory=FACTORY)
    info["before_compaction"] = dataset_rows(root)
    with Catalog(str(root), dataset="nightly") as catalog:
        info["files_before"] = dataset_view_files(catalog)
    info["compaction"] = compact_dataset(str(root), "nightly")
    info["after_compaction"] = dataset_rows(root)
    info["orchestration"] = run_build(dataset_config(root, problems, "flow.max_workers=2"), build_id="a-2",
                                      policy_factory=FACTORY)
    info["relabel"] = run_build(dataset_config(root, problems, "search.mc_rollouts=3"), build_id="a-3",
                                policy_factory=FACTORY)
    return root, problems, info


def test_label_config_change_relabels_everything_orchestration_change_nothing(relabeled_dataset):
    root, _, info = relabeled_dataset
    assert info["orchestration"].problems_total == 0
    assert info["orchestration"].dataset_plan["already_labeled"] == 3
    relabel = info["relabel"]
    assert relabel.problems_total == 3 and relabel.dataset_plan["changed"] == 3
    with Catalog(str(root), dataset="nightly") as catalog:
        assert catalog.query("SELECT DISTINCT build_id FROM dataset_steps").column(0).to_pylist() == ["a-3"]
        assert catalog.query("SELECT DISTINCT build_id FROM dataset_problems").column(0).to_pylist() == ["a-3"]
    with Catalog(str(root), dataset="nightly", as_of="a-1") as catalog:
        assert catalog.query("SELECT DISTINCT build_id FROM dataset_steps").column(0).to_pylist() == ["a-1"]


def test_compaction_keeps_rows_lineage_and_checksums(relabeled_dataset, tmp_path):
    root, _, info = relabeled_dataset
    result = info["compaction"]
    assert info["after_compaction"] == info["before_compaction"]  # same rows, lineage columns included
    assert info["files_before"] == 6 * 1 + 0  # 2 batches x 3 tables, one source
    assert result.files_after == 3 and result.files_before == info["files_before"]
    compaction = read_compaction(str(root), "nightly")
    assert compaction.covered_builds == ["a-1"]
    verify_compaction(str(root), compaction)
    shards = {s.path: s.sha256 for s in read_manifest(str(root), "a-1").shards}
    assert all(compaction.source_shards[path] == digest for path, digest in shards.items())

    # A reader that opened the old state keeps working while a new compaction is published.
    with Catalog(str(root), dataset="nightly") as reader:
        before = reader.connection.sql("SELECT * FROM dataset_steps ORDER BY ALL").fetchall()
        again = compact_dataset(str(root), "nightly")
        assert reader.connection.sql("SELECT * FROM dataset_steps ORDER BY ALL").fetchall() == before
    assert dataset_rows(root) == before
    assert again.compaction.covered_builds == ["a-1", "a-2", "a-3"]
    assert again.generations_removed == 0  # the previous generation stays for readers that opened it
    from data_schemas.datasets import COMPACT_LOCK_NAME, DatasetLock

    with DatasetLock(str(root), "nightly", lock_name=COMPACT_LOCK_NAME):  # a compaction is running
        with pytest.raises(PrmforgeError, match="held for over 1 s"):
            compact_dataset(str(root), "nightly")
    third = compact_dataset(str(root), "nightly")
    assert third.generations_removed == 1 and third.files_before == 3  # the compacted files only
    generations = sorted(p.name for p in (root / "datasets" / "nightly" / "compacted").iterdir())
    assert generations == sorted([again.compaction.generation, third.compaction.generation])
    again = third

    # A damaged compacted file is named.
    damaged = root / again.compaction.files[0].path
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[:-10])
    try:
        with pytest.raises(PrmforgeError, match="checksum mismatch"):
            verify_compaction(str(root), again.compaction)
    finally:
        damaged.write_bytes(intact)


def test_diff_counts_changed_steps_between_dataset_states(relabeled_dataset, tmp_path):
    root, _, _ = relabeled_dataset
    with Catalog(str(root), build_id="a-1") as catalog:
        before = {tuple(r[k] for k in ("problem_id", "path_id", "step_index")): r
                  for r in diff_steps_of(catalog).to_pylist()}
    with Catalog(str(root), build_id="a-3") as catalog:
        after = {tuple(r[k] for k in ("problem_id", "path_id", "step_index")): r
                 for r in diff_steps_of(catalog).to_pylist()}
    expected = {"added": len(after.keys() - before.keys()), "removed": len(before.keys() - after.keys())}
    both = before.keys() & after.keys()
    expected["label_changed"] = sum(before[k]["fused_label"] != after[k]["fused_label"] for k in both)
    expected["unchanged"] = sum(
        before[k]["fused_label"] == after[k]["fused_label"]
        and before[k]["is_first_error"] == after[k]["is_first_error"]
        and abs(before[k]["fused_reward"] - after[k]["fused_reward"]) <= 1e-9
        for k in both
    )
    with Catalog(str(root), build_id="a-1") as a, Catalog(str(root), build_id="a-3") as b:
        result = diff_steps(diff_steps_of(a), diff_steps_of(b))
    for kind, number in expected.items():
        assert result.counts[kind] == number, kind
    assert sum(result.counts.values()) == len(before.keys() | after.keys())
    assert result.changes.num_rows == sum(v for k, v in result.counts.items() if k != "unchanged")
    assert sum(result.counts.values()) > result.counts["unchanged"]  # mc_rollouts 2 -> 3 moved something

    # CLI: the dataset before/after its last run (a-2 labeled nothing: state as of a-2 = a-1's rows).
    out = tmp_path / "diff.parquet"
    cli = run_cli("diff", "--dataset", "nightly", "--root", str(root), "--format", "parquet", "--out", str(out))
    assert cli.exit_code == 0, cli.output
    assert pq.read_table(out).num_rows == result.changes.num_rows
    table = run_cli("diff", "a-1", "a-3", "--root", str(root))
    assert table.exit_code == 0, table.output
    for kind, _number in result.counts.items():
        assert f"{kind}" in table.output
    same = run_cli("diff", "a-1", "a-1", "--root", str(root), "--format", "json")
    assert same.exit_code == 0 and same.stdout == ""


def test_compact_and_query_cli(relabeled_dataset):
    root, _, _ = relabeled_dataset
    result = run_cli("compact", "--dataset", "nightly", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "compacted dataset nightly" in result.output
    query = run_cli("query", "SELECT count(DISTINCT problem_id) AS n FROM dataset_steps", "--dataset", "nightly",
                    "--root", str(root), "-f", "json")
    assert json.loads(query.stdout) == {"n": 3}
    missing = run_cli("compact", "--dataset", "nope", "--root", str(root))
    assert missing.exit_code != 0


def test_overlapping_runs_never_label_a_problem_twice(tmp_path: Path):
    """A slow run of problems 0-3 is still going when a run of problems 0-5 starts."""
    root = tmp_path / "data"
    early, late = tmp_path / "early.jsonl", tmp_path / "late.jsonl"
    write_problems(early, 0, 4)
    write_problems(late, 0, 6)
    results: dict = {}

    def slow_run() -> None:
        results["slow"] = run_build(dataset_config(root, early, "output.batch_size=1"), build_id="slow",
                                    policy_factory=SLOW_FACTORY)

    thread = threading.Thread(target=slow_run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not live_claims(str(root), "nightly"):
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        results["fast"] = run_build(dataset_config(root, late), build_id="fast", policy_factory=FACTORY)
    finally:
        thread.join()
    slow_ids, fast_ids = labeled_ids(root, "slow"), labeled_ids(root, "fast")
    assert len(slow_ids) == 4 and len(fast_ids) == 2 and not slow_ids & fast_ids
    assert results["fast"].dataset_plan["claimed_elsewhere"] == 4
    with Catalog(str(root), dataset="nightly") as catalog:
        keys = catalog.query(f"SELECT {STEP_KEY} FROM dataset_steps").to_pylist()
        assert catalog.query("SELECT count(*) FROM dataset_problems").column(0)[0].as_py() == 6
    assert len(keys) == len({tuple(k.values()) for k in keys}) == results["slow"].steps + results["fast"].steps


def test_plan_rules_claim_lease_and_relabel():
    current = {
        "held": CurrentProblem("k1", "labeled", "b1"),
        "skipped": CurrentProblem("k2", "skipped", "b1"),
        "failed": CurrentProblem("k3", "failed", "b1"),
        "edited": CurrentProblem("old", "labeled", "b1"),
    }
    wanted = {"held": "k1", "skipped": "k2", "failed": "k3", "edited": "new", "fresh": "k5", "busy": "k6"}
    plan = plan_problems("d", wanted, current, claimed=["busy"])
    assert list(plan.selected) == ["failed", "edited", "fresh"]
    assert plan.counts() == {"new": 2, "changed": 1, "relabeled": 0, "already_labeled": 2, "claimed_elsewhere": 1}
    forced = plan_problems("d", wanted, current, claimed=["busy"], relabel=["held", "busy"])
    assert "held" in forced.selected and "busy" not in forced.selected and forced.relabeled == 1


def test_expired_claims_are_ignored(tmp_path):
    write_claim(str(tmp_path), "d", "dead", ["p1"], lease_s=0.01)
    write_claim(str(tmp_path), "d", "alive", ["p2"], lease_s=60)
    time.sleep(0.05)
    assert [c.build_id for c in live_claims(str(tmp_path), "d")] == ["alive"]
    assert live_claims(str(tmp_path), "d", exclude="alive") == []


def test_relabel_where_and_user_errors(relabeled_dataset):
    from flows.dataset_plans import current_problems

    root, problems, _ = relabeled_dataset
    current, matching = current_problems(str(root), "nightly", "build_id = 'a-3'")
    assert len(current) == 3 and matching == set(current)
    with pytest.raises(PrmforgeError):
        current_problems(str(root), "nightly", "no_such_column = 1")
    with pytest.raises(ConfigError, match="--relabel"):
        run_build(dataset_config(root, problems), relabel_where="true", policy_factory=FACTORY)
    with pytest.raises(PrmforgeError, match="not a complete build of dataset"):
        Catalog(str(root), dataset="nightly", as_of="nope")
    # --relabel --where on a predicate nothing matches: nothing to label, recorded as an empty build.
    summary = run_build(dataset_config(root, problems, "search.mc_rollouts=3"), relabel=True, relabel_where="false",
                        policy_factory=FACTORY)
    assert summary.problems_total == 0 and summary.dataset_plan["already_labeled"] == 3
    assert len([m for m in list_builds(str(root)) if m.dataset]) >= 4


def test_dataset_choice_on_the_command_line(tmp_path):
    from flows.commands.build import with_dataset
    from flows.config_load import config_from_parts

    preset = load_build_config(preset="small")
    assert with_dataset(preset, None, False, "small").output.dataset == "small"  # the preset's name
    assert with_dataset(preset, "nightly", False, "small").output.dataset == "nightly"
    assert with_dataset(preset, None, True, "small").output.dataset is None
    assert with_dataset(load_build_config(), None, False, None).output.dataset is None  # no preset: standalone
    from_file = load_build_config(preset="small", overrides=["output.dataset=mine"])
    assert with_dataset(from_file, None, False, "small").output.dataset == "mine"
    with pytest.raises(PrmforgeError, match="invalid dataset name"):
        with_dataset(preset, "../x", False, None)
    with pytest.raises(ConfigError, match="not both"):
        with_dataset(preset, "x", True, None)
    # serve passes the dataset to its scheduled runs as a quoted override (a digit-only name stays a string)
    assert config_from_parts("small", None, ['output.dataset="2024"']).output.dataset == "2024"
    result = run_cli("build", "--resume", "b", "--dataset", "x", "--root", str(tmp_path))
    assert result.exit_code != 0 and "--resume takes the build's own config" in str(result.exception)


def test_datasets_export_and_stats_cli(relabeled_dataset, tmp_path):
    root, problems, _ = relabeled_dataset
    listing = run_cli("datasets", "--root", str(root))
    assert listing.exit_code == 0, listing.output
    assert "nightly" in listing.output
    out = tmp_path / "trl.jsonl"
    exported = run_cli("export", "--dataset", "nightly", "--format", "trl", "--out", str(out), "--root", str(root))
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["build_id"] for r in records} == {"a-3"}  # the latest labeling of every problem
    with Catalog(str(root), dataset="nightly") as catalog:
        paths = catalog.query("SELECT count(DISTINCT (problem_id, path_id)) FROM dataset_steps").column(0)[0].as_py()
    assert len(records) == paths
    # The CLI with nothing new: says so, loads no model, starts no Prefect.
    sets = [arg for o in overrides(root, problems, "search.mc_rollouts=3") for arg in ("--set", o)]
    again = run_cli("build", "--preset", "small", *sets)
    assert again.exit_code == 0, again.output
    assert "nothing new to label" in again.output and "3 already labeled" in again.output
    stats = run_cli("stats", "--dataset", "nightly", "--root", str(root))
    assert stats.exit_code == 0, stats.output
    assert "builds: a-1, a-2, a-3" in stats.output.replace("\n", " ")


def test_new_files_in_a_problem_folder_are_picked_up(tmp_path):
    root, folder = tmp_path / "data", tmp_path / "incoming"
    folder.mkdir()
    write_problems(folder / "day1.jsonl", 0, 2)
    first = run_build(dataset_config(root, folder), policy_factory=FACTORY)
    write_problems(folder / "day2.jsonl", 2, 3)
    (folder / "notes.txt").write_text("not a problem file")
    second = run_build(dataset_config(root, Path(str(folder / "day*.jsonl"))), policy_factory=FACTORY)
    assert first.dataset_plan["new"] == 2 and second.dataset_plan == {
        "new": 1, "changed": 0, "relabeled": 0, "already_labeled": 2, "claimed_elsewhere": 0
    }
    assert len(labeled_ids(root, second.build_id)) == 1
    from data_schemas.errors import InputError

    with pytest.raises(InputError, match="no problem files"):
        run_build(dataset_config(root, tmp_path / "nothing-*.jsonl"), policy_factory=FACTORY)


def test_scheduled_run_of_a_dataset_reports_its_plan(relabeled_dataset, capsys):
    from flows.build import scheduled_build

    root, problems, _ = relabeled_dataset
    summary = scheduled_build(preset="small", overrides=overrides(root, problems, "search.mc_rollouts=3"),
                              policy_factory=FACTORY)
    assert summary.dataset == "nightly" and summary.problems_total == 0
    assert "3 already labeled (skipped) - nothing new to label" in capsys.readouterr().out


def test_cli_build_that_cannot_start_releases_its_claim(tmp_path):
    """Planned, then the policy check fails: one line, the build recorded failed, no claim left."""
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 2)
    sets = [arg for o in overrides(root, problems, 'policy.model="/no/such/model.gguf"') for arg in ("--set", o)]
    result = run_cli("build", "--preset", "small", *sets)
    assert result.exit_code != 0
    assert isinstance(result.exception, PrmforgeError) and "\n" not in str(result.exception)
    [manifest] = list_builds(str(root))
    assert manifest.status == "failed" and manifest.dataset["plan"]["new"] == 2
    assert live_claims(str(root), "nightly") == []
    with Catalog(str(root), dataset="nightly") as catalog:  # a failed build is not part of the dataset
        assert catalog.build_ids == []


def _synthetic_dataset_build(root: str, build_id: str, batch_index: int, seed: int = 0) -> None:
    """A complete one-batch synthetic build of dataset "nightly" (the benchmark's kind of build)."""
    from data_schemas.datasets import labeling_key, problem_content_hash, utc_now_precise
    from data_schemas.manifest import finish_build, start_build
    from data_schemas.shards import ShardWriter
    from data_schemas.synthetic import synthetic_batch

    batch = synthetic_batch(build_id, "gsm8k", batch_index, num_problems=3, seed=seed)
    manifest = start_build(root, build_id, {"name": "synthetic", "seed": seed}, policy_model="synthetic/none")
    shards = ShardWriter(root, build_id).write_batch("gsm8k", "b00000", batch.steps, batch.nodes, batch.outcomes)
    keys = {
        o.problem_id: labeling_key(o.problem_id, problem_content_hash(o.source, o.question, o.gold_answer), "m",
                                   str(seed))
        for o in batch.outcomes
    }
    manifest.dataset = {"name": "nightly", "labeling_keys": keys, "plan": {}, "completed_at": utc_now_precise()}
    finish_build(root, manifest, shards)


def test_dataset_views_and_compaction_on_a_remote_root():
    """memory:// stands in for s3://: views through pyarrow datasets, compaction, latest build wins."""
    import uuid

    import fsspec

    root = f"memory://datasets-{uuid.uuid4().hex[:8]}"
    try:
        _synthetic_dataset_build(root, "r1", 0)
        _synthetic_dataset_build(root, "r2", 1)
        compact_dataset(root, "nightly")
        _synthetic_dataset_build(root, "r3", 1, seed=5)  # the problems of r2 again, after the compaction
        with Catalog(root, dataset="nightly") as catalog:
            current = dict(catalog.connection.sql(
                "SELECT build_id, count(DISTINCT problem_id) FROM dataset_problems GROUP BY 1"
            ).fetchall())
            keys = catalog.query(f"SELECT {STEP_KEY}, build_id FROM dataset_steps").to_pylist()
        assert current == {"r1": 3, "r3": 3}
        assert {k["build_id"] for k in keys} == {"r1", "r3"}
        assert len({(k["problem_id"], k["path_id"], k["step_index"]) for k in keys}) == len(keys)
        verify_compaction(root, read_compaction(root, "nightly"))
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def test_planning_lock_is_exclusive_and_a_stale_one_is_broken(tmp_path):
    from data_schemas import datasets
    from data_schemas.datasets import DatasetLock

    with DatasetLock(str(tmp_path), "d"):
        with pytest.raises(PrmforgeError, match="held for over"):
            with DatasetLock(str(tmp_path), "d", timeout_s=0.2):
                pass
    with DatasetLock(str(tmp_path), "d", timeout_s=0.2):  # released on exit
        pass
    lock = tmp_path / "datasets" / "d" / ".lock"
    lock.write_text("{}")  # left by a killed planner
    old = time.time() - datasets.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    with DatasetLock(str(tmp_path), "d", timeout_s=2):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
