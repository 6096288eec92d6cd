"""DuckDB catalog over the shards of a data root.

:class:`Catalog` opens an in-memory DuckDB connection and defines four views:

``steps``     one row per labeled step (schema ``STEPS``)
``nodes``     one row per search-tree node (schema ``NODES``)
``problems``  one row per problem outcome — labeled, failed or skipped (schema ``OUTCOMES``,
              files under ``<build>/outcomes/``)
``builds``    one row per build the views cover, from its manifest

By default the views cover every *complete* build under the root, reading exactly the shard
files each manifest lists (so a file a killed writer left behind, or one written after the
manifest, is never read). ``build_id`` narrows to given builds; ``include_incomplete`` adds
running/failed builds, whose shards are found by listing ``part-*.parquet`` files (temporary
files of writers never match). Nothing is copied: DuckDB scans the Parquet files at query time
(local paths natively; other filesystems through a pyarrow dataset).

``dataset`` (a dataset name, data_schemas/datasets.py) narrows the views to the complete builds
of that dataset and adds ``dataset_steps``, ``dataset_nodes``, ``dataset_problems`` and
``dataset_builds``: for every problem, the rows of the committed build that labeled it with the
highest plan sequence number (data_schemas/datasets.py), with lineage columns
(:data:`LINEAGE_SCHEMA`). They read the dataset's compacted files where a compaction covers a
build, the build's own shards otherwise. ``as_of`` (a build id of the dataset) gives the dataset
as it was when that build committed (the builds up to it in commit order); ``dataset_as_default`` makes
``steps``/``nodes``/``problems`` those current rows (what ``export``/``stats --dataset`` read).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from data_schemas.datasets import (
    HELD_STATUSES,
    Compaction,
    check_dataset_name,
    dataset_manifests,
    member_rows,
    read_compaction,
)
from data_schemas.errors import PrmforgeError
from data_schemas.manifest import Manifest, list_builds, read_manifest
from data_schemas.schemas import DATASET_LINEAGE, NODES, OUTCOMES, STEPS
from data_schemas.shards import DataRoot, check_schema_version, list_shards, resolve_root

#: view name -> (shard table directory, schema)
VIEWS: dict[str, tuple[str, pa.Schema]] = {
    "steps": ("steps", STEPS),
    "nodes": ("nodes", NODES),
    "problems": ("outcomes", OUTCOMES),
}

#: Lineage columns the dataset views add to every row: where and how the row was made.
LINEAGE_SCHEMA = DATASET_LINEAGE.remove_metadata()
MEMBERS_SCHEMA = pa.schema([("build_id", pa.string()), ("problem_id", pa.string()), *LINEAGE_SCHEMA])
#: dataset view -> base view / shard table it extends
DATASET_VIEWS: dict[str, str] = {"dataset_steps": "steps", "dataset_nodes": "nodes", "dataset_problems": "problems"}

BUILDS_SCHEMA = pa.schema(
    [
        ("build_id", pa.string()),
        ("status", pa.string()),
        ("schema_version", pa.string()),
        ("config_hash", pa.string()),
        ("policy_model", pa.string()),
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("finished_at", pa.timestamp("s", tz="UTC")),
        ("git_revision", pa.string()),
        ("num_shards", pa.int64()),
        ("num_steps", pa.int64()),
        ("num_nodes", pa.int64()),
        ("num_problems", pa.int64()),
        ("failed_problems", pa.int64()),
        ("positive_steps", pa.int64()),
        ("negative_steps", pa.int64()),
        ("rollouts", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("config", pa.string()),
        ("package_versions", pa.string()),
        ("error", pa.string()),
    ]
)


def one_line_duckdb_error(error: Exception) -> str:
    """DuckDB's message on one line (its caret-marker lines dropped)."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not re.fullmatch(r"\^+", line)]
    return " ".join(kept) or type(error).__name__


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def arrow_result(relation: Any) -> pa.Table:
    """A DuckDB relation as an Arrow table (``to_arrow_table`` on DuckDB >= 1.4)."""
    method = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return method()


class Catalog:
    """In-memory DuckDB connection with the ``steps``, ``nodes``, ``problems``, ``builds`` views.

    Use as a context manager or call :meth:`close`. ``build_id`` is one id or a list of ids.
    """

    def __init__(
        self,
        root: str | DataRoot,
        build_id: str | Sequence[str] | None = None,
        include_incomplete: bool = False,
        dataset: str | None = None,
        as_of: str | None = None,
        dataset_as_default: bool = False,
    ) -> None:
        self.root = resolve_root(root)
        self.include_incomplete = include_incomplete
        self.dataset = check_dataset_name(dataset) if dataset is not None else None
        if self.dataset is not None:
            if build_id is not None or include_incomplete:
                raise PrmforgeError(
                    "--dataset reads the dataset's complete builds; leave out --build and --include-incomplete"
                )
            self.manifests = self._dataset_builds(as_of)
        elif build_id is None:
            self.manifests = [m for m in list_builds(self.root) if include_incomplete or m.is_complete]
        else:
            ids = [build_id] if isinstance(build_id, str) else list(build_id)
            self.manifests = [read_manifest(self.root, b, allow_incomplete=include_incomplete) for b in ids]
        self.connection = duckdb.connect(":memory:")
        self._keep_alive: list[Any] = []  # arrow objects registered with DuckDB
        try:
            for view, (table, schema) in VIEWS.items():
                self._define_view(view, schema, self.shard_files(table))
            self._define_builds_view()
            if self.dataset is not None:
                # A compaction is a snapshot of the latest state: an earlier state reads the builds' shards.
                self._define_dataset_views(read_compaction(self.root, self.dataset) if as_of is None else None)
                if dataset_as_default:
                    for view, base in DATASET_VIEWS.items():
                        columns = ", ".join(f'"{name}"' for name in VIEWS[base][1].names)
                        self.connection.execute(f"CREATE OR REPLACE VIEW {base} AS SELECT {columns} FROM {view}")
        except BaseException:
            self.connection.close()
            raise

    # -- files ---------------------------------------------------------------------------------

    def shard_files(self, table: str) -> list[str]:
        """Relative paths of the shards of ``table`` the views read, in a stable order."""
        files: list[str] = []
        for manifest in self.manifests:
            if manifest.is_complete:
                files += sorted(s.path for s in manifest.shards if s.table == table)
            else:
                found = list_shards(self.root, manifest.build_id, table)
                for path in found:
                    # No manifest vouches for these files: check each footer's schema version.
                    with self.root.filesystem.open_input_file(self.root.join(path)) as handle:
                        check_schema_version(pq.ParquetFile(handle).schema_arrow, path)
                files += found
        return files

    def _dataset_builds(self, as_of: str | None) -> list[Manifest]:
        members = dataset_manifests(list_builds(self.root), self.dataset)
        if as_of is None:
            return members
        ids = [m.build_id for m in members]
        if as_of not in ids:
            raise PrmforgeError(f"build {as_of!r} is not a complete build of dataset {self.dataset!r}")
        return members[: ids.index(as_of) + 1]

    def _source(self, name: str, schema: pa.Schema, files: list[str]) -> str:
        """A DuckDB table expression reading ``files`` (an empty typed table when there are none)."""
        if not files:
            empty = schema.empty_table()
            self._keep_alive.append(empty)
            self.connection.register(f"_empty_{name}", empty)
            return f"_empty_{name}"
        if self.root.is_local:
            paths = ", ".join(_sql_string(self.root.join(f)) for f in files)
            return f"read_parquet([{paths}], hive_partitioning = false)"
        dataset = pads.dataset(
            [self.root.join(f) for f in files], schema=schema, format="parquet", filesystem=self.root.filesystem
        )
        self._keep_alive.append(dataset)
        self.connection.register(f"_dataset_{name}", dataset)
        return f"_dataset_{name}"

    def _define_view(self, view: str, schema: pa.Schema, files: list[str]) -> None:
        columns = ", ".join(f'"{name}"' for name in schema.names)
        self.connection.execute(f"CREATE VIEW {view} AS SELECT {columns} FROM {self._source(view, schema, files)}")

    def _define_dataset_views(self, compaction: Compaction | None) -> None:
        """``dataset_*`` views: per problem, the rows of the latest complete build that labeled it.

        Candidates are the compacted rows (already one build per problem, lineage included) and
        the rows of builds the compaction does not cover, joined with their manifest's lineage.
        The current build of a problem: a labeled/skipped outcome before a failed one, then the
        highest ``plan_seq`` (data_schemas/sequence.py; no clock involved), then — for builds
        made before sequence numbers, which rank below — ``build_finished_at``, then the build id.
        """
        covered = set(compaction.covered_builds) if compaction is not None else set()
        uncovered = [m for m in self.manifests if m.build_id not in covered]
        members = pa.Table.from_pylist(member_rows(uncovered), schema=MEMBERS_SCHEMA)
        self._keep_alive.append(members)
        self.connection.register("_dataset_members", members)
        lineage = ", ".join(f'm."{name}"' for name in LINEAGE_SCHEMA.names)
        for view, base in DATASET_VIEWS.items():
            table, schema = VIEWS[base]
            files = [f for m in uncovered for f in sorted(s.path for s in m.shards if s.table == table)]
            fresh = (
                f"SELECT b.*, {lineage} FROM {self._source(f'new_{view}', schema, files)} AS b "
                "JOIN _dataset_members AS m USING (build_id, problem_id)"
            )
            if compaction is not None:
                full_schema = pa.schema([*schema, *LINEAGE_SCHEMA])
                compacted = self._source(f"compacted_{view}", full_schema, compaction.table_files(table))
                fresh += f" UNION ALL BY NAME SELECT * FROM {compacted}"
            self.connection.execute(f"CREATE VIEW _all_{view} AS {fresh}")
        held = ", ".join(_sql_string(s) for s in HELD_STATUSES)
        self.connection.execute(
            f"""CREATE VIEW _dataset_current AS SELECT build_id, problem_id FROM _all_dataset_problems
            QUALIFY row_number() OVER (
              PARTITION BY problem_id
              ORDER BY status NOT IN ({held}), plan_seq DESC NULLS LAST, build_finished_at DESC, build_id DESC) = 1"""
        )
        for view in DATASET_VIEWS:
            self.connection.execute(
                f"CREATE VIEW {view} AS SELECT * FROM _all_{view} "
                "SEMI JOIN _dataset_current USING (build_id, problem_id)"
            )
        lineage_names = ", ".join(
            f"any_value({name}) AS {name}" for name in LINEAGE_SCHEMA.names if name != "labeling_key"
        )
        self.connection.execute(
            f"""CREATE VIEW dataset_builds AS SELECT build_id, {lineage_names}, count(*) AS current_problems
            FROM dataset_problems GROUP BY build_id ORDER BY commit_seq NULLS FIRST, build_finished_at"""
        )

    def _define_builds_view(self) -> None:
        rows = [self._build_row(m) for m in self.manifests]
        table = pa.Table.from_pylist(rows, schema=BUILDS_SCHEMA)
        self._keep_alive.append(table)
        self.connection.register("_builds", table)
        self.connection.execute("CREATE VIEW builds AS SELECT * FROM _builds")

    def _build_row(self, manifest: Manifest) -> dict[str, Any]:
        stages = manifest.counts.get("stages", {})
        labels = manifest.counts.get("labels", {})
        return {
            "build_id": manifest.build_id,
            "status": manifest.status,
            "schema_version": manifest.schema_version,
            "config_hash": manifest.config_hash,
            "policy_model": manifest.policy_model,
            "started_at": _timestamp(manifest.started_at),
            "finished_at": _timestamp(manifest.finished_at),
            "git_revision": manifest.git_revision,
            "num_shards": len(manifest.shards),
            "num_steps": stages.get("steps"),
            "num_nodes": stages.get("nodes"),
            "num_problems": stages.get("problems"),
            "failed_problems": manifest.failed_problems if manifest.is_complete else None,
            "positive_steps": labels.get("positive"),
            "negative_steps": labels.get("negative"),
            "rollouts": manifest.token_usage.get("rollouts"),
            "prompt_tokens": manifest.token_usage.get("prompt_tokens"),
            "completion_tokens": manifest.token_usage.get("completion_tokens"),
            "config": json.dumps(manifest.config, sort_keys=True),
            "package_versions": json.dumps(manifest.package_versions, sort_keys=True),
            "error": manifest.error,
        }

    # -- queries -------------------------------------------------------------------------------

    @property
    def build_ids(self) -> list[str]:
        return [m.build_id for m in self.manifests]

    def relation(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyRelation:
        """A lazy DuckDB relation for ``sql``; DuckDB errors become one-line PrmforgeErrors."""
        try:
            return self.connection.sql(sql, params=params) if params else self.connection.sql(sql)
        except duckdb.Error as error:
            raise PrmforgeError(one_line_duckdb_error(error)) from None

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run ``sql`` and return the result as an Arrow table (empty for a statement)."""
        try:
            relation = self.connection.sql(sql, params=params) if params else self.connection.sql(sql)
            if relation is None:  # a statement without a result (SET, CREATE VIEW ...)
                return pa.table({})
            return arrow_result(relation)
        except duckdb.Error as error:
            raise PrmforgeError(one_line_duckdb_error(error)) from None

    def close(self) -> None:
        self.connection.close()
        self._keep_alive.clear()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
