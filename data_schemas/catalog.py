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

from data_schemas.errors import PrmforgeError
from data_schemas.manifest import Manifest, list_builds, read_manifest
from data_schemas.schemas import NODES, OUTCOMES, STEPS
from data_schemas.shards import DataRoot, check_schema_version, list_shards, resolve_root

#: view name -> (shard table directory, schema)
VIEWS: dict[str, tuple[str, pa.Schema]] = {
    "steps": ("steps", STEPS),
    "nodes": ("nodes", NODES),
    "problems": ("outcomes", OUTCOMES),
}

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
    ) -> None:
        self.root = resolve_root(root)
        self.include_incomplete = include_incomplete
        if build_id is None:
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

    def _define_view(self, view: str, schema: pa.Schema, files: list[str]) -> None:
        columns = ", ".join(f'"{name}"' for name in schema.names)
        if not files:
            empty = schema.empty_table()
            self._keep_alive.append(empty)
            self.connection.register(f"_empty_{view}", empty)
            source = f"_empty_{view}"
        elif self.root.is_local:
            paths = ", ".join(_sql_string(self.root.join(f)) for f in files)
            source = f"read_parquet([{paths}], hive_partitioning = false)"
        else:
            dataset = pads.dataset(
                [self.root.join(f) for f in files], schema=schema, format="parquet", filesystem=self.root.filesystem
            )
            self._keep_alive.append(dataset)
            self.connection.register(f"_dataset_{view}", dataset)
            source = f"_dataset_{view}"
        self.connection.execute(f"CREATE VIEW {view} AS SELECT {columns} FROM {source}")

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
