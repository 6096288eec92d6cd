"""``prmforge compact``: rewrite a dataset's current rows into a few large files, atomically.

Nightly builds of a dataset leave many small shards (one per batch, table and source), and a
DuckDB query over the ``dataset_*`` views opens every one of them. Compaction writes the
current rows of ``dataset_steps``, ``dataset_nodes`` and ``dataset_problems`` (lineage columns
included) into one file per table (row groups of ``row_group_rows``) under a fresh generation
directory ``<root>/datasets/<name>/compacted/<generation>/``, then publishes it with one atomic
move of ``compacted.json`` (files, row counts, sha256, the builds it covers and the checksums of
the build shards folded in). A reader opens the pointer once, so it sees the old state or the
new one, never a mix. Builds that complete after a compaction are read from their own shards
until the next compaction folds them in. The builds themselves are left untouched (their
per-build views stay for inspection); the previous generation is kept for readers that opened
the old pointer, older ones (a killed compaction's unpublished generation included) are
deleted. One compaction of a dataset runs at a time (``<dataset>/.compact.lock``, a fenced lock
the compaction heartbeats however long it runs: data_schemas/locks.py); a second one started
meanwhile is refused with a one-line error, and breaks the lock only when its heartbeat is older
than ``STALE_COMPACT_LOCK_S`` on the storage's clock (the holder was killed). A compaction that
stalled that long finds its lock taken over when it is about to publish: it publishes nothing
and removes its own generation, so no pointer ever names files another compaction deleted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from data_schemas.catalog import DATASET_VIEWS, VIEWS, Catalog
from data_schemas.datasets import (
    COMPACT_LOCK_NAME,
    CompactedFile,
    Compaction,
    DatasetLock,
    dataset_dir,
    read_compaction,
    utc_now_precise,
    write_compaction,
)
from data_schemas.errors import PrmforgeError
from data_schemas.schemas import SCHEMA_VERSION
from data_schemas.shards import DEFAULT_ROW_GROUP_ROWS, SCHEMA_VERSION_KEY, DataRoot, resolve_root, write_chunks_atomic


@dataclass(frozen=True)
class CompactionResult:
    compaction: Compaction
    files_before: int  # files the dataset views read before
    files_after: int  # files they read right after (the compacted ones)
    generations_removed: int


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.Table]:
    for batch in reader:
        yield pa.Table.from_batches([batch])


def dataset_view_files(catalog: Catalog) -> int:
    """How many Parquet files the dataset views of ``catalog`` read."""
    compaction = read_compaction(catalog.root, catalog.dataset) if catalog.dataset else None
    covered = set(compaction.covered_builds) if compaction else set()
    shards = sum(1 for m in catalog.manifests if m.build_id not in covered for s in m.shards)
    return shards + (len(compaction.files) if compaction else 0)


def compact_dataset(root: str | DataRoot, name: str, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> CompactionResult:
    """Compact dataset ``name`` (see the module docstring); a one-line error when it has no builds."""
    data_root = resolve_root(root)
    # One compaction at a time: a second one would delete the generation the first publishes.
    with DatasetLock(data_root, name, timeout_s=1.0, lock_name=COMPACT_LOCK_NAME) as lock:
        return _compact(data_root, name, row_group_rows, lock)


def _compact(data_root: DataRoot, name: str, row_group_rows: int, lock: DatasetLock) -> CompactionResult:
    generation = f"g-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    previous = read_compaction(data_root, name)
    files: list[CompactedFile] = []
    with Catalog(data_root, dataset=name) as catalog:
        if not catalog.manifests:
            raise PrmforgeError(f"dataset {name!r} has no complete builds under {data_root.uri}")
        files_before = dataset_view_files(catalog)
        for view, base in DATASET_VIEWS.items():
            table = VIEWS[base][0]
            order = "source, problem_id, path_id, step_index" if base == "steps" else "source, problem_id"
            relation = catalog.relation(f"SELECT * FROM {view} ORDER BY {order}")
            # to_arrow_reader on DuckDB >= 1.4 (fetch_record_batch before).
            reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
            reader = reader(row_group_rows)
            schema = reader.schema.with_metadata(
                {SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode(), b"prmforge.dataset": name.encode()}
            )
            path = f"{dataset_dir(name)}/compacted/{generation}/{table}/part-00000.parquet"
            rows, size, digest = write_chunks_atomic(
                data_root, path, schema, (t.replace_schema_metadata(schema.metadata) for t in _batches(reader)),
                row_group_rows,
            )
            files.append(CompactedFile(table, path, rows, size, digest))
        source_shards = {s.path: s.sha256 for m in catalog.manifests for s in m.shards}
        if previous is not None:
            source_shards = {**previous.source_shards, **source_shards}
        covered = sorted(set(catalog.build_ids) | (set(previous.covered_builds) if previous else set()))
    compaction = Compaction(name, generation, utc_now_precise(), covered, files, dict(sorted(source_shards.items())))
    try:
        lock.check()  # fencing: a compaction whose lock was broken while it stalled publishes nothing
    except PrmforgeError:
        _remove_generations(data_root, name, keep=None, only={generation})
        raise
    write_compaction(data_root, compaction)
    keep = {generation, previous.generation if previous else None}
    removed = _remove_generations(data_root, name, keep)
    return CompactionResult(compaction, files_before, len(files), removed)


def _remove_generations(root: DataRoot, name: str, keep: set[str | None] | None, only: set[str] | None = None) -> int:
    """Delete compacted generations not in ``keep`` (the current and the previous one), or those in ``only``."""
    selector = pafs.FileSelector(root.join(dataset_dir(name), "compacted"), allow_not_found=True)
    removed = 0
    for info in root.filesystem.get_file_info(selector):
        doomed = info.base_name in only if only is not None else info.base_name not in (keep or set())
        if info.type == pafs.FileType.Directory and doomed:
            root.filesystem.delete_dir(info.path)
            removed += 1
    return removed
