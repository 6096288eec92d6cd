"""Build manifests: lifecycle, incomplete refusal, counts from shards, checksums."""

from __future__ import annotations

import json

import pytest

from data_schemas.errors import PrmforgeError
from data_schemas.manifest import (
    Manifest,
    finish_build,
    list_builds,
    read_manifest,
    start_build,
    verify_build,
)
from data_schemas.shards import ShardWriter
from data_schemas.synthetic import synthetic_batch, write_synthetic_build


def test_running_manifest_is_written_first_and_refused_by_default(tmp_path):
    manifest = start_build(tmp_path, "b1", {"seed": 3, "policy": {"model": "m"}}, policy_model="m")
    on_disk = json.loads((tmp_path / "builds/b1/manifest.json").read_text())
    assert on_disk["status"] == "running" and on_disk["config"] == {"seed": 3, "policy": {"model": "m"}}
    assert len(on_disk["config_hash"]) == 16 and on_disk["started_at"] and on_disk["finished_at"] is None
    assert {"pyarrow", "duckdb"} <= set(on_disk["package_versions"])
    with pytest.raises(PrmforgeError, match="is running, not complete.*allow_incomplete") as error:
        read_manifest(tmp_path, "b1")
    assert "\n" not in str(error.value)
    assert read_manifest(tmp_path, "b1", allow_incomplete=True) == manifest
    assert not list((tmp_path / "builds/b1").glob(".*"))  # no temp file left


def test_finish_counts_come_from_the_shards(tmp_path):
    manifest = start_build(tmp_path, "b1", {"seed": 0})
    writer = ShardWriter(tmp_path, "b1")
    shards = []
    steps = nodes = 0
    outcomes = []
    for index, source in enumerate(["gsm8k", "math500", "gsm8k"]):
        batch = synthetic_batch("b1", source, index, num_problems=5)
        shards += writer.write_batch(source, f"b{index}", batch.steps, batch.nodes, batch.outcomes)
        steps += len(batch.steps)
        nodes += len(batch.nodes)
        outcomes += batch.outcomes
    # A retried batch reports its shards twice; the manifest lists each path once.
    batch = synthetic_batch("b1", "gsm8k", 0, num_problems=5)
    shards += writer.write_batch("gsm8k", "b0", batch.steps, batch.nodes, batch.outcomes)
    final = finish_build(tmp_path, manifest, shards)
    assert final.status == "complete" and final.finished_at
    assert len(final.shards) == 9
    stages = final.counts["stages"]
    assert stages["steps"] == steps and stages["nodes"] == nodes and stages["problems"] == 15
    failed = [o for o in outcomes if o.status == "failed"]
    assert final.failed_problems == len(failed) == stages["failed"] > 0
    assert stages["failed_at_sample"] == len(failed)
    positive = sum(o.num_positive for o in outcomes)
    assert final.counts["labels"]["positive"] == positive
    assert final.counts["labels"]["negative"] == steps - positive
    assert final.token_usage["prompt_tokens"] == sum(o.prompt_tokens for o in outcomes)
    assert final.token_usage["rollouts"] == sum(o.rollouts for o in outcomes)
    assert read_manifest(tmp_path, "b1") == final
    assert Manifest.from_dict(json.loads(final.to_json())) == final


def test_failed_build_records_its_error(tmp_path):
    manifest = start_build(tmp_path, "b1", {})
    final = finish_build(tmp_path, manifest, [], status="failed", error="policy crashed")
    assert final.status == "failed" and final.error == "policy crashed"
    with pytest.raises(PrmforgeError, match="is failed"):
        read_manifest(tmp_path, "b1")


def test_missing_build_is_a_one_line_error(tmp_path):
    with pytest.raises(PrmforgeError, match="no build 'nope'"):
        read_manifest(tmp_path, "nope")


def test_verify_detects_changed_and_missing_shards(tmp_path):
    final = write_synthetic_build(tmp_path, "b1", num_batches=2)
    assert verify_build(tmp_path, "b1") == final
    shard = tmp_path / final.shards[0].path
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PrmforgeError, match="checksum mismatch"):
        verify_build(tmp_path, "b1")
    shard.unlink()
    with pytest.raises(PrmforgeError, match="missing"):
        verify_build(tmp_path, "b1")


def test_list_builds_sees_every_status(tmp_path):
    write_synthetic_build(tmp_path, "done", num_batches=1)
    write_synthetic_build(tmp_path, "running", num_batches=1, status="running")
    (tmp_path / "builds/no-manifest-yet").mkdir()
    builds = {m.build_id: m.status for m in list_builds(tmp_path)}
    assert builds == {"done": "complete", "running": "running"}
    assert list_builds(tmp_path / "empty") == []


def test_build_config_model_is_accepted(tmp_path):
    config_module = pytest.importorskip("labelers.config")
    config = config_module.BuildConfig()
    manifest = start_build(tmp_path, "b1", config, policy_model="qwen")
    assert manifest.config_hash == config.config_hash()
    assert manifest.config["seed"] == config.seed
