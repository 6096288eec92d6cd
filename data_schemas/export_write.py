"""Writing an export: records as Parquet or JSON Lines, atomically, with the export's metadata,
and reading that metadata back.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from data_schemas.shards import DataRoot, resolve_root, write_bytes_atomic, write_chunks_atomic

#: Parquet footer key of an export's metadata (JSON).
EXPORT_METADATA_KEY = "prmforge.export"


def _parent_and_name(out: str) -> tuple[DataRoot, str]:
    target = resolve_root(out)
    directory, name = target.base.rsplit("/", 1) if "/" in target.base else (".", target.base)
    return DataRoot(target.uri, target.filesystem, directory or "/", target.is_local), name


def write_records(
    records: list[dict[str, Any]], schema: pa.Schema, out: str, metadata: dict[str, Any] | None = None
) -> None:
    """Write records as Parquet (zstd) or, for ``*.jsonl``, JSON Lines — atomically. ``metadata``
    goes in the Parquet footer (key ``prmforge.export``), or next to a JSON Lines file as
    ``<out>.meta.json``."""
    parent, name = _parent_and_name(out)
    if name.endswith(".jsonl"):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        if metadata is not None:
            write_bytes_atomic(
                parent, name + ".meta.json", (json.dumps(metadata, indent=1, sort_keys=True) + "\n").encode()
            )
        write_bytes_atomic(parent, name, data)
    else:
        if metadata is not None:
            schema = schema.with_metadata(
                {**(schema.metadata or {}), EXPORT_METADATA_KEY: json.dumps(metadata, sort_keys=True)}
            )
        table = pa.Table.from_pylist(records, schema=schema)
        write_chunks_atomic(parent, name, schema, [table])


def read_export_metadata(out: str) -> dict[str, Any] | None:
    """The metadata an export wrote (Parquet footer or ``<out>.meta.json``); None when absent."""
    import pyarrow.parquet as pq

    parent, name = _parent_and_name(out)
    fs = parent.filesystem
    if name.endswith(".jsonl"):
        try:
            with fs.open_input_stream(parent.join(name + ".meta.json")) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None
    with fs.open_input_file(parent.join(name)) as handle:
        raw = (pq.read_schema(handle).metadata or {}).get(EXPORT_METADATA_KEY.encode())
    return json.loads(raw) if raw else None
