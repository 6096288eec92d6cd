"""Fault injection for datasets grown from several machines: nothing lost, nothing shadowed.

Each test injects one fault the audit of issue 25 found — a resumed complete or stale build, a
planner that stalls past the old 120 s lock limit, a writer whose clock is 10 minutes off, a
compaction killed with SIGKILL or stalled while another starts, a heartbeat whose write raises
something other than OSError — and checks the dataset's current rows afterwards. Timeouts and
heartbeat intervals are shortened through the module constants; time itself is faked only for
the clock of the run under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from data_schemas import compaction, datasets, manifest
from data_schemas.catalog import Catalog
from data_schemas.compaction import compact_dataset
from data_schemas.datasets import live_claims, read_compaction, verify_compaction
from data_schemas.errors import PrmforgeError
from flows import dataset_plans as flow_datasets
from flows.build import run_build, start_dataset_build
from tests.test_datasets import (  # noqa: F401 - restore_prefect_api_url is an autouse fixture
    _synthetic_dataset_build,
    dataset_config,
    dataset_rows,
    labeled_ids,
    restore_prefect_api_url,
    run_cli,
    write_problems,
)
from tests.test_flow_build import FACTORY, REPO


def current_builds(root: Path | str) -> dict[str, str]:
    """problem_id -> build id of its current row in dataset "nightly"."""
    with Catalog(str(root), dataset="nightly") as catalog:
        return dict(catalog.connection.sql("SELECT problem_id, build_id FROM dataset_problems").fetchall())


def clock_shim(offset: list[float]) -> types.SimpleNamespace:
    """A stand-in for the ``time`` module whose ``time()`` is off by ``offset[0]`` seconds."""
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    shim.time = lambda: time.time() + offset[0]
    return shim


def skew_writer_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make this process's prmforge code read a wall clock ``seconds`` off (a writer with a wrong clock)."""

    class SkewedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001 - datetime's signature
            return datetime.now(tz) + timedelta(seconds=seconds)

    for module in (datasets, manifest):
        if hasattr(module, "datetime"):
            monkeypatch.setattr(module, "datetime", SkewedDatetime)
        if hasattr(module, "time"):
            monkeypatch.setattr(module, "time", clock_shim([seconds]))


def plan_only(config, build_id: str):
    """Plan a dataset build (manifest + claim) without labeling; returns (plan, running claim or None)."""
    from flows.build import load_build_problems

    problems, _, _ = load_build_problems(config)
    result = flow_datasets.plan_dataset_build(config, problems, build_id)
    return result[0], (result[2] if len(result) > 2 else None)


def stop_claim(claim) -> None:
    if claim is not None:
        claim.stop(release=False)


# -- resume ------------------------------------------------------------------------------------


def start_thread(name: str, work, results: dict) -> threading.Thread:
    """Run ``work()`` in a started thread named ``name``; ``results["first"]`` gets its value or
    the exception it raised (asserted on by the test, never lost in the thread)."""

    def run() -> None:
        try:
            results["first"] = work()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            results["first"] = error

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_resume_of_a_complete_build_is_refused_and_changes_nothing(tmp_path: Path):
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 2)
    run_build(dataset_config(root, problems), build_id="old", policy_factory=FACTORY)
    run_build(dataset_config(root, problems, "search.mc_rollouts=3"), build_id="new", policy_factory=FACTORY)
    assert set(current_builds(root).values()) == {"new"}  # the label-config change relabeled both
    rows, manifest_bytes = dataset_rows(root), (root / "builds" / "old" / "manifest.json").read_bytes()

    with pytest.raises(PrmforgeError, match="already complete"):
        run_build(dataset_config(root, problems), build_id="old", policy_factory=FACTORY)
    cli = run_cli("build", "--resume", "old", "--root", str(root))
    assert cli.exit_code != 0 and isinstance(cli.exception, PrmforgeError)
    assert "already complete" in str(cli.exception) and "\n" not in str(cli.exception)

    assert (root / "builds" / "old" / "manifest.json").read_bytes() == manifest_bytes  # not re-stamped
    assert dataset_rows(root) == rows and set(current_builds(root).values()) == {"new"}  # nothing shadowed
    with Catalog(str(root), dataset="nightly") as catalog:
        assert catalog.build_ids == ["old", "new"]  # commit order unchanged


def test_a_resumed_stale_build_never_outranks_a_newer_committed_one(tmp_path: Path):
    """A plans, dies, its claim lapses; B labels the same problems and commits; A is resumed."""
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 3)
    config = dataset_config(root, problems)
    result = start_dataset_build(config, "stale")
    stop_claim(result[2] if len(result) > 2 else None)
    datasets.remove_claim(str(root), "nightly", "stale")  # its lease lapsed: A's machine died

    newer = run_build(config, build_id="newer", policy_factory=FACTORY)
    assert newer.dataset_plan["new"] == 3
    resumed = run_build(config, build_id="stale", policy_factory=FACTORY)  # days later, someone resumes A
    assert resumed.status == "complete" and resumed.problems_total == 3

    assert set(current_builds(root).values()) == {"newer"}  # the build planned later stays current
    assert len(labeled_ids(root, "stale")) == 3  # A's rows are kept for inspection: nothing lost
    with Catalog(str(root), dataset="nightly") as catalog:
        keys = catalog.query("SELECT problem_id, path_id, step_index FROM dataset_steps").to_pylist()
    assert len(keys) == len({tuple(k.values()) for k in keys}) == newer.steps  # no step twice


# -- planning lock -----------------------------------------------------------------------------


def test_a_planner_stalled_past_the_old_lock_limit_keeps_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Planner 1 stalls after reading the dataset (a slow object store); planner 2 waits for it.

    Intervals are scaled down (stale 0.6 s, heartbeat 0.05 s, a 2 s stall), and planner 2's clock
    is made to read 200 s later than the lock's write — past the old fixed 120 s limit.
    """
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 5)
    config = dataset_config(root, problems)
    monkeypatch.setattr(datasets, "STALE_LOCK_S", 0.6)
    monkeypatch.setattr(datasets, "LOCK_HEARTBEAT_S", 0.05, raising=False)
    offset = [0.0]
    monkeypatch.setattr(datasets, "time", clock_shim(offset))
    real_claims = flow_datasets.live_claims
    stalled = threading.Event()

    def slow_claims(*args, **kwargs):
        claims = real_claims(*args, **kwargs)
        if threading.current_thread().name == "planner-1":  # read the dataset and the claims, then stall
            stalled.set()
            offset[0] = 200.0  # what the old code measured: the waiter's clock against the lock's mtime
            time.sleep(2.0)
        return claims

    monkeypatch.setattr(flow_datasets, "live_claims", slow_claims)
    results: dict = {}
    thread = start_thread("planner-1", lambda: plan_only(config, "planner-1"), results)
    assert stalled.wait(30)
    try:
        second_plan, second_claim = plan_only(config, "planner-2")
    finally:
        thread.join()
    assert not isinstance(results["first"], BaseException), results["first"]
    first_plan, first_claim = results["first"]
    stop_claim(first_claim)
    stop_claim(second_claim)
    assert len(first_plan.selected) == 5  # nothing lost
    assert not set(first_plan.selected) & set(second_plan.selected)  # nothing planned twice
    assert second_plan.claimed_elsewhere == 5


# -- clocks ------------------------------------------------------------------------------------


def test_a_writer_clock_ten_minutes_slow_neither_loses_its_claim_nor_its_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 2)

    # Claims: the slow machine plans; a machine with a right clock plans right after it.
    with monkeypatch.context() as slow:
        skew_writer_clock(slow, -600.0)
        slow_plan, slow_claim = plan_only(dataset_config(root, problems), "slow-plan")
    try:
        assert len(slow_plan.selected) == 2
        plan, claim = plan_only(dataset_config(root, problems), "right-plan")
        stop_claim(claim)
        assert plan.claimed_elsewhere == 2 and not plan.selected  # the slow machine's claim is live
        assert [c.build_id for c in live_claims(str(root), "nightly", exclude="right-plan")] == ["slow-plan"]
    finally:
        stop_claim(slow_claim)
    for build_id in ("slow-plan", "right-plan"):  # planning only: drop both builds again
        datasets.remove_claim(str(root), "nightly", build_id)
        for path in sorted((root / "builds" / build_id).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "builds" / build_id).rmdir()

    # Order: a right-clock build, then a relabel (label config changed) on the slow machine.
    first = run_build(dataset_config(root, problems), build_id="right", policy_factory=FACTORY)
    with monkeypatch.context() as slow:
        skew_writer_clock(slow, -600.0)
        relabel_config = dataset_config(root, problems, "search.mc_rollouts=3")
        relabel = run_build(relabel_config, build_id="slow", policy_factory=FACTORY)
    assert first.problems_total == 2 and relabel.dataset_plan["changed"] == 2
    assert set(current_builds(root).values()) == {"slow"}  # the later labeling is current
    with Catalog(str(root), dataset="nightly") as catalog:
        assert catalog.build_ids == ["right", "slow"]  # diff's "last build" is the slow machine's
    compact_dataset(str(root), "nightly")
    assert set(current_builds(root).values()) == {"slow"}


# -- compaction --------------------------------------------------------------------------------

KILLED_COMPACTION = """
import sys, time
from data_schemas import compaction, datasets
datasets.STALE_COMPACT_LOCK_S = 1.0
datasets.LOCK_HEARTBEAT_S = 0.1
real = compaction.write_chunks_atomic
def stalled(*args, **kwargs):
    result = real(*args, **kwargs)
    print("wrote " + args[1], flush=True)
    time.sleep(120)
    return result
compaction.write_chunks_atomic = stalled
compaction.compact_dataset(sys.argv[1], "nightly")
"""


def test_sigkill_during_compaction_then_a_second_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = str(tmp_path / "data")
    for index, build_id in enumerate(("s1", "s2", "s3")):
        _synthetic_dataset_build(root, build_id, index)
    first = compact_dataset(root, "nightly")
    _synthetic_dataset_build(root, "s4", 1, seed=7)  # relabels s2's problems after the compaction
    expected = dataset_rows(root)

    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_COMPACTION, root],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("wrote "), process.stderr.read()[-2000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()
    killed_generation = line.split()[1].split("/compacted/")[1].split("/")[0]
    assert (Path(root) / "datasets" / "nightly" / ".compact.lock").exists()  # left by the killed run
    assert read_compaction(root, "nightly").generation == first.compaction.generation  # nothing published
    assert dataset_rows(root) == expected

    monkeypatch.setattr(datasets, "STALE_COMPACT_LOCK_S", 1.0)
    deadline, second, refusals = time.monotonic() + 10, None, 0
    while second is None:
        try:
            second = compact_dataset(root, "nightly")
        except PrmforgeError as error:
            refusals += 1
            assert time.monotonic() < deadline, f"the killed compaction's lock was never broken: {error}"
            time.sleep(0.2)
    pointer = read_compaction(root, "nightly")
    verify_compaction(root, pointer)
    assert pointer.generation == second.compaction.generation
    assert sorted(pointer.covered_builds) == ["s1", "s2", "s3", "s4"]
    assert dataset_rows(root) == expected  # nothing lost, nothing shadowed
    generations = {p.name for p in (Path(root) / "datasets" / "nightly" / "compacted").iterdir()}
    assert killed_generation not in generations  # the killed run's unpublished files are gone
    assert generations == {first.compaction.generation, second.compaction.generation}


def test_a_stalled_compaction_keeps_its_lock_and_its_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A live compaction stalls; another starts, its clock reading 7 hours later (past the old 6 h limit)."""
    root = str(tmp_path / "data")
    for index, build_id in enumerate(("c1", "c2")):
        _synthetic_dataset_build(root, build_id, index)
    expected = dataset_rows(root)
    monkeypatch.setattr(datasets, "STALE_COMPACT_LOCK_S", 0.5)
    monkeypatch.setattr(datasets, "LOCK_HEARTBEAT_S", 0.05, raising=False)
    offset = [0.0]
    monkeypatch.setattr(datasets, "time", clock_shim(offset))
    real_write = compaction.write_chunks_atomic
    started = threading.Event()

    def stalled_write(*args, **kwargs):
        result = real_write(*args, **kwargs)
        if threading.current_thread().name == "first-compaction" and not started.is_set():
            started.set()
            time.sleep(2.0)
        return result

    monkeypatch.setattr(compaction, "write_chunks_atomic", stalled_write)
    results: dict = {}
    thread = start_thread("first-compaction", lambda: compact_dataset(root, "nightly"), results)
    assert started.wait(30)
    offset[0] = 7 * 3600.0
    refusals, later = 0, []
    while "first" not in results:
        try:
            later.append(compact_dataset(root, "nightly"))  # only once the first has released its lock
        except PrmforgeError as error:
            assert "held" in str(error)
            refusals += 1
        time.sleep(0.05)
    thread.join()
    assert not isinstance(results["first"], BaseException), results["first"]  # it published
    assert refusals >= 1 and len(later) <= 1
    first_generation = Path(root) / "datasets" / "nightly" / "compacted" / results["first"].compaction.generation
    assert first_generation.is_dir()  # current, or kept as the previous generation
    pointer = read_compaction(root, "nightly")
    assert pointer.generation == (later[0] if later else results["first"]).compaction.generation
    verify_compaction(root, pointer)  # the published files all exist: none deleted under it
    verify_compaction(root, results["first"].compaction)
    assert dataset_rows(root) == expected


# -- heartbeats --------------------------------------------------------------------------------


def test_claim_heartbeat_survives_an_exception_that_is_not_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    real_write = datasets.write_claim
    calls = {"n": 0}

    def flaky_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first renewal: a storage client bug, not an OSError
            raise RuntimeError("injected: storage client returned garbage")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(datasets, "write_claim", flaky_write)
    caplog.set_level("WARNING")
    heartbeat = datasets.ClaimHeartbeat(str(tmp_path), "d", "b1", ["p1"], lease_s=1.0).start()
    try:
        time.sleep(2.5)  # ten renewals; the claim would have lapsed after 1 s without them
        assert [c.build_id for c in live_claims(str(tmp_path), "d")] == ["b1"]
        assert calls["n"] >= 4  # it kept renewing after the failure
    finally:
        heartbeat.stop()
    assert "RuntimeError: injected" in caplog.text  # reported, not swallowed
    assert live_claims(str(tmp_path), "d") == []  # released on stop


# -- durability --------------------------------------------------------------------------------


def test_local_writes_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pyarrow as pa

    from data_schemas import shards

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "fsync-file")
        real_fsync(descriptor)

    def replace(source, target) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    shards.write_bytes_atomic(str(tmp_path), "a/b/manifest.json", b"{}")
    # two new directories, each made durable in its parent; then the file, the rename, the directory
    assert events == ["fsync-dir", "fsync-dir", "fsync-file", "rename", "fsync-dir"]
    events.clear()
    shards.write_table_atomic(str(tmp_path), "a/b/part-0.parquet", pa.table({"x": [1, 2]}))
    assert events == ["fsync-file", "rename", "fsync-dir"]
    assert json.loads((tmp_path / "a" / "b" / "manifest.json").read_text()) == {}


def test_breaking_a_stale_lock_never_deletes_a_fresh_one_taken_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Between judging a lock stale and deleting it, another run broke it and took a fresh one."""
    from data_schemas import locks

    lock_file = tmp_path / "datasets" / "d" / ".lock"
    lock_file.parent.mkdir(parents=True)
    lock_file.write_text(json.dumps({"token": "dead"}))
    old = time.time() - 3600
    os.utime(lock_file, (old, old))
    real_now = locks.storage_now

    def race(root, directory):
        now = real_now(root, directory)
        if json.loads(lock_file.read_text())["token"] == "dead":  # another waiter is faster
            lock_file.unlink()
            lock_file.write_text(json.dumps({"token": "fresh"}))
            os.utime(lock_file, (old, old))  # its mtime looks just as old to this waiter's first read
        return now

    monkeypatch.setattr(locks, "storage_now", race)
    waiter = datasets.DatasetLock(str(tmp_path), "d", timeout_s=0.3)
    waiter._break_if_stale()
    assert json.loads(lock_file.read_text())["token"] == "fresh"  # the token check kept it
    assert not list(lock_file.parent.glob(".lock.broken-*"))


def test_lock_heartbeat_survives_an_exception_and_keeps_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    from data_schemas import locks

    real_utime, calls = os.utime, {"n": 0}

    def flaky_utime(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("injected: not an OSError")
        return real_utime(*args, **kwargs)

    monkeypatch.setattr(locks.os, "utime", flaky_utime)
    caplog.set_level("WARNING")
    with datasets.DatasetLock(str(tmp_path), "d", stale_s=0.8, heartbeat_s=0.1) as holder:
        time.sleep(1.5)  # the holder "plans" for longer than the stale time
        with pytest.raises(PrmforgeError, match="held for over"):
            with datasets.DatasetLock(str(tmp_path), "d", timeout_s=0.5, stale_s=0.8):
                pass
        holder.check()  # still ours: fenced publishing may go ahead
    assert calls["n"] >= 5 and "ValueError: injected" in caplog.text
    assert not (tmp_path / "datasets" / "d" / ".lock").exists()


def test_a_claim_is_renewed_from_the_moment_it_is_written(tmp_path: Path):
    """Planned, then a slow start (model check, Prefect server) longer than the lease: the claim holds."""
    root, problems = tmp_path / "data", tmp_path / "problems.jsonl"
    write_problems(problems, 0, 2)
    config = dataset_config(root, problems, "output.claim_lease_s=0.8")
    result = start_dataset_build(config, "planned")
    claim = result[2] if len(result) > 2 else None
    try:
        time.sleep(2.0)  # the CLI's preflight and Prefect start, before run_build
        assert [c.build_id for c in live_claims(str(root), "nightly")] == ["planned"]
        plan, other = plan_only(dataset_config(root, problems), "meanwhile")
        stop_claim(other)
        assert plan.claimed_elsewhere == 2 and not plan.selected  # nothing labeled twice
    finally:
        stop_claim(claim)
