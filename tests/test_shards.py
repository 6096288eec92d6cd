"""Shard writer: layout, atomic replace, schema version, filesystems, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schemas.errors import PrmforgeError
from data_schemas.records import to_table
from data_schemas.schemas import SCHEMA_VERSION, STEPS
from data_schemas.shards import (
    ShardWriter,
    describe_shard,
    list_shards,
    read_shard,
    records_to_table,
    shard_path,
)
from data_schemas.synthetic import synthetic_batch

REPO = Path(__file__).resolve().parent.parent


def test_layout_is_hive_partitioned_and_deterministic(tmp_path):
    batch = synthetic_batch("b1", "gsm8k", 0)
    infos = ShardWriter(tmp_path, "b1").write_batch("gsm8k", "b00000", batch.steps, batch.nodes, batch.outcomes)
    assert [i.path for i in infos] == [
        "builds/b1/steps/source=gsm8k/part-b00000.parquet",
        "builds/b1/nodes/source=gsm8k/part-b00000.parquet",
        "builds/b1/outcomes/source=gsm8k/part-b00000.parquet",
    ]
    assert [i.rows for i in infos] == [len(batch.steps), len(batch.nodes), len(batch.outcomes)]
    for info in infos:
        file = tmp_path / info.path
        assert file.is_file() and file.stat().st_size == info.bytes
        assert describe_shard(tmp_path, info.path) == info  # checksum and rows read back equal
    parquet = pq.ParquetFile(tmp_path / infos[0].path)
    assert parquet.schema_arrow.metadata[b"prmforge.schema_version"] == SCHEMA_VERSION.encode()
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    table = read_shard(tmp_path, infos[0].path)
    assert table.equals(to_table(batch.steps, STEPS).replace_schema_metadata(table.schema.metadata))


def test_rerun_of_a_batch_replaces_its_shards(tmp_path):
    writer = ShardWriter(tmp_path, "b1")
    batch = synthetic_batch("b1", "gsm8k", 3)
    first = writer.write_batch("gsm8k", "b00003", batch.steps, batch.nodes, batch.outcomes)
    second = writer.write_batch("gsm8k", "b00003", batch.steps, batch.nodes, batch.outcomes)
    assert [i.path for i in first] == [i.path for i in second]
    assert [i.sha256 for i in first] == [i.sha256 for i in second]  # deterministic bytes too
    assert len(list_shards(tmp_path, "b1")) == 3
    assert sum(read_shard(tmp_path, p).num_rows for p in list_shards(tmp_path, "b1", "steps")) == len(batch.steps)
    # A rerun that now yields fewer rows replaces, it does not add.
    smaller = writer.write_table("steps", "gsm8k", "b00003", batch.steps[:5])
    assert smaller.rows == 5 and read_shard(tmp_path, smaller.path).num_rows == 5
    assert not writer.temp_files()


def test_stream_write_splits_row_groups_and_hashes_what_it_wrote(tmp_path):
    batch = synthetic_batch("b1", "gsm8k", 0)
    writer = ShardWriter(tmp_path, "b1", row_group_rows=10)
    info = writer.write_stream("steps", "gsm8k", "k", [batch.steps[:25], to_table(batch.steps[25:], STEPS)])
    parquet = pq.ParquetFile(tmp_path / info.path)
    assert info.rows == parquet.metadata.num_rows == len(batch.steps)
    assert [parquet.metadata.row_group(i).num_rows for i in range(3)] == [10, 10, 5]
    assert describe_shard(tmp_path, info.path) == info


def test_empty_batch_writes_empty_shards(tmp_path):
    infos = ShardWriter(tmp_path, "b1").write_batch("gsm8k", "k", [], [], [])
    assert [i.rows for i in infos] == [0, 0, 0]
    assert read_shard(tmp_path, infos[0].path).schema.names == STEPS.names


def test_records_to_table_matches_records_to_table():
    batch = synthetic_batch("b1", "math500", 1)
    assert records_to_table(batch.steps, STEPS).equals(to_table(batch.steps, STEPS))


def test_rows_of_another_build_or_source_are_refused(tmp_path):
    batch = synthetic_batch("other", "gsm8k", 0)
    writer = ShardWriter(tmp_path, "b1")
    with pytest.raises(ValueError, match="build_id"):
        writer.write_table("steps", "gsm8k", "k", batch.steps)
    batch = synthetic_batch("b1", "gsm8k", 0)
    with pytest.raises(ValueError, match="source"):
        writer.write_table("steps", "math500", "k", batch.steps)
    with pytest.raises(TypeError):
        writer.write_table("steps", "gsm8k", "k", batch.nodes)
    assert list_shards(tmp_path, "b1") == []


def test_required_column_nulls_are_refused(tmp_path):
    table = to_table(synthetic_batch("b1", "gsm8k", 0).steps, STEPS)
    broken = table.set_column(table.schema.get_field_index("step_text"), STEPS.field("step_text"),
                              pa.array([None] * table.num_rows, pa.string()))
    with pytest.raises(ValueError, match="step_text"):
        ShardWriter(tmp_path, "b1").write_table("steps", "gsm8k", "k", broken)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "-x"])
def test_unsafe_ids_are_one_line_errors(tmp_path, bad):
    with pytest.raises(PrmforgeError):
        shard_path("b1", "steps", "gsm8k", bad)
    with pytest.raises(PrmforgeError):
        ShardWriter(tmp_path, bad)


def test_source_names_are_encoded_in_partition_directory(tmp_path):
    batch = synthetic_batch("b1", "my file.jsonl", 0)
    info = ShardWriter(tmp_path, "b1").write_table("steps", "my file.jsonl", "k", batch.steps)
    assert info.path == "builds/b1/steps/source=my%20file.jsonl/part-k.parquet"
    assert describe_shard(tmp_path, info.path).source == "my file.jsonl"


def test_reader_refuses_other_schema_version(tmp_path):
    table = to_table(synthetic_batch("b1", "gsm8k", 0).steps, STEPS)
    path = tmp_path / "builds/b1/steps/source=gsm8k/part-k.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({"prmforge.schema_version": "0"}), path)
    with pytest.raises(PrmforgeError, match="schema version 0"):
        read_shard(tmp_path, "builds/b1/steps/source=gsm8k/part-k.parquet")
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(PrmforgeError, match="no prmforge schema version"):
        read_shard(tmp_path, "builds/b1/steps/source=gsm8k/part-k.parquet")


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_filesystem_uris(tmp_path, scheme):
    root = f"memory://prmforge-test-{os.getpid()}/data" if scheme == "memory" else f"file://{tmp_path}/data"
    batch = synthetic_batch("b1", "gsm8k", 0)
    infos = ShardWriter(root, "b1").write_batch("gsm8k", "k", batch.steps, batch.nodes, batch.outcomes)
    assert list_shards(root, "b1") == sorted(i.path for i in infos)
    assert read_shard(root, infos[0].path).num_rows == len(batch.steps)
    assert describe_shard(root, infos[2].path) == infos[2]
    if scheme == "file":
        assert (tmp_path / "data" / infos[0].path).is_file()
    else:
        import fsspec

        fsspec.filesystem("memory").rm(f"/prmforge-test-{os.getpid()}", recursive=True)


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from data_schemas.shards import ShardWriter
    from data_schemas.synthetic import synthetic_batch

    root = sys.argv[1]
    batch = synthetic_batch("crash", "gsm8k", 0, num_problems=8)
    writer = ShardWriter(root, "crash", row_group_rows=16)
    writer.write_batch("gsm8k", "b00000", batch.steps, batch.nodes, batch.outcomes)

    def slow_chunks():
        for index in range(10_000):  # minutes of writing: the parent kills it long before
            yield batch.steps
            time.sleep(0.02)

    print("complete batch written", flush=True)
    writer.write_stream("steps", "gsm8k", "b00001", slow_chunks())
    """
)


def kill_writer_mid_file(root: Path) -> Path:
    """Run SLOW_WRITER in a subprocess, SIGKILL it once its temp file holds row groups."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    partial_dir = root / "builds/crash/steps/source=gsm8k"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            temps = [p for p in partial_dir.glob(".part-b00001*")] if partial_dir.exists() else []
            if temps and temps[0].stat().st_size > 20_000:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the writer subprocess never started its second shard")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return temps[0]


def test_killed_writer_leaves_only_a_hidden_temp_file(tmp_path):
    temp = kill_writer_mid_file(tmp_path)
    assert temp.exists() and temp.name.startswith(".") and temp.name.endswith(".tmp")
    with pytest.raises(pa.ArrowInvalid):
        pq.ParquetFile(temp)  # truncated: no footer
    steps_shards = list_shards(tmp_path, "crash", "steps")
    assert steps_shards == ["builds/crash/steps/source=gsm8k/part-b00000.parquet"]
    assert not (tmp_path / "builds/crash/steps/source=gsm8k/part-b00001.parquet").exists()
    writer = ShardWriter(tmp_path, "crash")
    assert writer.temp_files() == [str(temp.relative_to(tmp_path))]
    assert writer.remove_temp_files() == 1 and not temp.exists()
