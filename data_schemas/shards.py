"""Parquet shards: one file per (build, table, source, batch), written atomically.

Layout under a data root (a local path or any pyarrow/fsspec filesystem URI)::

    <root>/builds/<build_id>/manifest.json
    <root>/builds/<build_id>/<table>/source=<source>/part-<batch_key>.parquet

``<table>`` is one of :data:`SHARD_TABLES`: ``steps`` (one row per labeled step), ``nodes``
(one row per search-tree node) and ``outcomes`` (one row per problem: labeled / failed / skipped;
the catalog exposes it as the view ``problems``). The ``source=<source>`` directory is a Hive-style
partition so engines can prune by source; the column is stored in the files too, so readers never
need Hive decoding.

Atomicity: a shard is first written to a hidden temporary file in the same directory
(``.part-<batch_key>.parquet.<random>.tmp``: leading dot and ``.tmp`` suffix, so neither the
``part-*.parquet`` glob nor ``*.parquet`` match it) and then moved onto its final name. On a local
or POSIX filesystem the move is an atomic rename, so a reader sees either the previous complete
file or the new complete one, never a partial file. On object stores (s3://) the object appears
only when its upload completes. Names are deterministic in (build, table, source, batch_key), so
rewriting a batch replaces its shard instead of adding a second copy.

Each file's Arrow schema metadata holds ``prmforge.schema_version``; :func:`read_shard` refuses a
file written with another version.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_schemas.errors import PrmforgeError
from data_schemas.records import NodeRow, ProblemOutcome, StepRow
from data_schemas.schemas import NODES, OUTCOMES, SCHEMA_VERSION, STEPS

#: Shard tables, in the order :meth:`ShardWriter.write_batch` writes them.
SHARD_TABLES: dict[str, pa.Schema] = {"steps": STEPS, "nodes": NODES, "outcomes": OUTCOMES}

#: Rows per Parquet row group. 64Ki rows keeps a row group of step rows at a few MB (cheap to
#: skip by statistics, large enough for good zstd ratios); a batch of a few problems fits in one.
DEFAULT_ROW_GROUP_ROWS = 65_536
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3

SCHEMA_VERSION_KEY = b"prmforge.schema_version"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
_RECORD_TYPES: dict[str, type] = {"steps": StepRow, "nodes": NodeRow, "outcomes": ProblemOutcome}


@dataclass(frozen=True)
class ShardInfo:
    """One written shard: where it is (relative to the data root), its size and checksum."""

    table: str
    source: str
    batch_key: str
    path: str  # relative to the data root, "/"-separated
    rows: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "source": self.source,
            "batch_key": self.batch_key,
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardInfo:
        return cls(
            table=str(data["table"]),
            source=str(data["source"]),
            batch_key=str(data["batch_key"]),
            path=str(data["path"]),
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            sha256=str(data["sha256"]),
        )


@dataclass(frozen=True)
class DataRoot:
    """A data root resolved to a pyarrow filesystem and the base path inside it.

    ``uri`` is what the user gave; ``is_local`` tells the catalog whether DuckDB can read the
    files by plain path.
    """

    uri: str
    filesystem: pafs.FileSystem
    base: str
    is_local: bool

    def join(self, *parts: str) -> str:
        """Absolute path (inside ``filesystem``) of a path relative to the root."""
        base = self.base.rstrip("/")
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{base}/{rel}" if rel else base


def resolve_root(root: str | DataRoot) -> DataRoot:
    """Resolve a local path, ``file://`` URI or any pyarrow/fsspec URI to a :class:`DataRoot`.

    pyarrow's own filesystems (local, s3, gcs, hdfs, abfs) are tried first; any other scheme is
    opened through fsspec (``memory://``, ``gcs://`` via gcsfs, ...) and wrapped for pyarrow.
    """
    if isinstance(root, DataRoot):
        return root
    text = str(root)
    if not text:
        raise PrmforgeError("data root is empty: give a directory or a filesystem URI")
    if "://" not in text:
        import os

        return DataRoot(text, pafs.LocalFileSystem(), os.path.abspath(text), True)
    try:
        filesystem, base = pafs.FileSystem.from_uri(text)
        return DataRoot(text, filesystem, base.rstrip("/") or "/", isinstance(filesystem, pafs.LocalFileSystem))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass
    try:
        from fsspec.core import url_to_fs

        fs_spec, base = url_to_fs(text)
    except (ImportError, ValueError) as error:
        raise PrmforgeError(f"cannot open data root {text!r}: {error}") from None
    return DataRoot(text, pafs.PyFileSystem(pafs.FSSpecHandler(fs_spec)), base.rstrip("/") or "/", False)


def check_name(kind: str, value: str) -> str:
    """Reject ids that are unsafe as a path component (``/``, leading dot, empty)."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise PrmforgeError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_', '-' and '=' (not starting with '.' or '-')"
        )
    return value


def encode_source(source: str) -> str:
    """Partition directory value for a source: percent-encoded, so any source name is path-safe."""
    if not source:
        raise PrmforgeError("a shard needs a non-empty source")
    encoded = quote(source, safe="-_.")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def decode_source(directory_value: str) -> str:
    return unquote(directory_value)


def build_dir(build_id: str) -> str:
    """Path of a build's directory relative to the data root."""
    return f"builds/{check_name('build id', build_id)}"


def shard_path(build_id: str, table: str, source: str, batch_key: str) -> str:
    """Relative path of the shard for (build, table, source, batch) — deterministic."""
    if table not in SHARD_TABLES:
        raise ValueError(f"unknown shard table {table!r}; expected one of {sorted(SHARD_TABLES)}")
    check_name("batch key", batch_key)
    return f"{build_dir(build_id)}/{table}/source={encode_source(source)}/part-{batch_key}.parquet"


def records_to_table(records: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """Records of one dataclass kind as an Arrow table with ``schema`` (column-wise, no asdict copy)."""
    columns = {}
    for field in schema:
        getter = attrgetter(field.name)
        columns[field.name] = pa.array([getter(r) for r in records], type=field.type)
    return pa.Table.from_pydict(columns, schema=schema)


def _as_table(table_name: str, rows: Sequence[Any] | pa.Table) -> pa.Table:
    schema = SHARD_TABLES[table_name]
    if isinstance(rows, pa.Table):
        if rows.schema.names != schema.names:
            raise ValueError(f"{table_name} table columns {rows.schema.names} differ from the schema {schema.names}")
        table = rows.cast(schema) if not rows.schema.equals(schema, check_metadata=False) else rows
        return table.replace_schema_metadata(schema.metadata)
    expected = _RECORD_TYPES[table_name]
    for row in rows:
        if not isinstance(row, expected):
            raise TypeError(f"{table_name} rows must be {expected.__name__}, got {type(row).__name__}")
    return records_to_table(rows, schema)


def _check_rows(table_name: str, table: pa.Table, build_id: str, source: str) -> None:
    """Refuse rows that would corrupt the partitioning or violate non-null columns."""
    for field in table.schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ValueError(
                f"{table_name}.{field.name} has {table.column(field.name).null_count} null(s) but is required"
            )
    if table.num_rows == 0:
        return
    import pyarrow.compute as pc

    for column, expected in (("build_id", build_id), ("source", source)):
        values = pc.unique(table.column(column)).to_pylist()
        if values != [expected]:
            raise ValueError(f"{table_name} rows carry {column} {values}, but this shard is for {column} {expected!r}")


class _HashingSink(io.RawIOBase):
    """A write-only file that forwards to a pyarrow stream and hashes every byte on the way."""

    def __init__(self, stream: pa.NativeFile) -> None:
        super().__init__()
        self._stream = stream
        self._digest = hashlib.sha256()
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._stream.write(view)
        self._digest.update(view)
        self._size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        if not self._stream.closed:
            self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self._stream.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    @property
    def size(self) -> int:
        return self._size

    def sync(self) -> None:
        """Flush and, for a local file, fsync: the bytes are on disk before the file is renamed."""
        self.flush()
        if isinstance(self._stream, io.IOBase) and not isinstance(self._stream, pa.NativeFile):
            os.fsync(self._stream.fileno())  # a local file (_open_temp); a store's stream has no descriptor


def fsync_directory(directory: str) -> None:
    """fsync a local directory, so a rename or link in it survives a power loss."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform without directory descriptors
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(descriptor)


def make_directory(data_root: DataRoot, directory: str) -> None:
    """Create ``directory`` and its missing parents; on a local root each new entry is fsynced in its parent."""
    if not data_root.is_local:
        data_root.filesystem.create_dir(directory, recursive=True)
        return
    missing = []
    current = directory
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if not missing:
        return
    os.makedirs(directory, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(os.path.dirname(created))


def _open_temp(data_root: DataRoot, temp: str) -> Any:
    """A writable stream for a temporary file: a plain Python file on local roots (it can be fsynced)."""
    if data_root.is_local:
        return open(temp, "wb")  # noqa: SIM115 - closed by the caller
    return data_root.filesystem.open_output_stream(temp)


def _publish(data_root: DataRoot, temp: str, target: str) -> None:
    """Move a complete temporary file onto its name: local rename + directory fsync, else the store's move."""
    if data_root.is_local:
        os.replace(temp, target)
        fsync_directory(os.path.dirname(target))
    else:
        data_root.filesystem.move(temp, target)


def write_table_atomic(
    root: str | DataRoot,
    relative_path: str,
    table: pa.Table,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> tuple[int, str]:
    """Write ``table`` as Parquet to ``relative_path`` under ``root`` via temp file + move.

    Returns (bytes written, sha256 hex of the file).
    """
    _, size, digest = write_chunks_atomic(root, relative_path, table.schema, [table], row_group_rows)
    return size, digest


def write_chunks_atomic(
    root: str | DataRoot,
    relative_path: str,
    schema: pa.Schema,
    chunks: Iterable[pa.Table],
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> tuple[int, int, str]:
    """Stream tables into one Parquet file at ``relative_path``, published only when complete.

    Each chunk becomes one or more row groups of at most ``row_group_rows`` rows, flushed as it is
    encoded, so a large shard never has to sit in memory whole. The temporary file lives next to
    the target (same filesystem, so the move is a rename) under a hidden ``.tmp`` name that no
    shard glob matches; if the process dies, only that temporary file is left behind.
    Returns (rows, bytes, sha256 hex).
    """
    data_root = resolve_root(root)
    fs = data_root.filesystem
    target = data_root.join(relative_path)
    directory, name = target.rsplit("/", 1)
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    make_directory(data_root, directory)
    sink = _HashingSink(_open_temp(data_root, temp))
    rows = 0
    step = max(1, row_group_rows)
    try:
        with pq.ParquetWriter(
            sink,
            schema,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
            write_statistics=True,
        ) as writer:
            for chunk in chunks:
                for offset in range(0, chunk.num_rows, step):
                    writer.write_table(chunk.slice(offset, step), row_group_size=step)
                rows += chunk.num_rows
            if rows == 0:
                writer.write_table(schema.empty_table())
        sink.sync()
        sink.close()
        _publish(data_root, temp, target)
    except BaseException:
        sink.close()
        try:
            fs.delete_file(temp)
        except (OSError, FileNotFoundError):
            pass
        raise
    return rows, sink.size, sink.sha256


def _write_temp(data_root: DataRoot, temp: str, data: bytes) -> None:
    """Write ``data`` to a temporary file; on a local root fsynced before it is closed."""
    with _open_temp(data_root, temp) as stream:
        stream.write(data)
        if data_root.is_local:
            stream.flush()
            os.fsync(stream.fileno())


def write_bytes_atomic(root: str | DataRoot, relative_path: str, data: bytes) -> None:
    """Write a small file (manifest, pointer, claim, JSONL export) via hidden temp file + move.

    Local roots: the temp file is fsynced, renamed, and the directory fsynced (durable once this
    returns). Object stores: the object appears when its upload completes (docs/storage.md).
    """
    data_root = resolve_root(root)
    fs = data_root.filesystem
    target = data_root.join(relative_path)
    directory, name = target.rsplit("/", 1)
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    make_directory(data_root, directory)
    try:
        _write_temp(data_root, temp, data)
        _publish(data_root, temp, target)
    except BaseException:
        try:
            fs.delete_file(temp)
        except (OSError, FileNotFoundError):
            pass
        raise


def write_bytes_exclusive(root: str | DataRoot, relative_path: str, data: bytes) -> bool:
    """Create a file with ``data`` only if no file has that name: True when this call created it.

    Local roots only (compare-and-swap on a name): the content is written to a temporary file,
    fsynced and hard-linked onto the name — ``link`` fails when the name exists, so of two
    writers exactly one wins and no reader sees the file half written. Filesystems without hard
    links fall back to ``O_CREAT | O_EXCL`` (atomic too; the content follows the create).
    """
    data_root = resolve_root(root)
    if not data_root.is_local:
        raise ValueError("write_bytes_exclusive needs a local data root (object stores have no exclusive create here)")
    target = data_root.join(relative_path)
    directory, name = target.rsplit("/", 1)
    make_directory(data_root, directory)
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    _write_temp(data_root, temp, data)
    try:
        os.link(temp, target)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network or FUSE filesystems)
        try:
            descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        os.unlink(temp)
    fsync_directory(directory)
    return True


class ShardWriter:
    """Writes a build's shards under ``<root>/builds/<build_id>/``.

    Stateless apart from its location, so it can be created in any worker process; the
    :class:`ShardInfo` list it returns goes into the build manifest.
    """

    def __init__(self, root: str | DataRoot, build_id: str, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> None:
        self.root = resolve_root(root)
        self.build_id = check_name("build id", build_id)
        if row_group_rows < 1:
            raise ValueError("row_group_rows must be >= 1")
        self.row_group_rows = row_group_rows

    def write_table(self, table_name: str, source: str, batch_key: str, rows: Sequence[Any] | pa.Table) -> ShardInfo:
        """Write one table's rows for (source, batch_key); replaces an earlier write of the same batch."""
        if table_name not in SHARD_TABLES:
            raise ValueError(f"unknown shard table {table_name!r}; expected one of {sorted(SHARD_TABLES)}")
        relative = shard_path(self.build_id, table_name, source, batch_key)
        table = _as_table(table_name, rows)
        _check_rows(table_name, table, self.build_id, source)
        size, digest = write_table_atomic(self.root, relative, table, self.row_group_rows)
        return ShardInfo(table_name, source, batch_key, relative, table.num_rows, size, digest)

    def write_stream(
        self, table_name: str, source: str, batch_key: str, chunks: Iterable[Sequence[Any] | pa.Table]
    ) -> ShardInfo:
        """Like :meth:`write_table` for a shard too large to hold at once: rows arrive in chunks.

        The shard becomes visible only after the last chunk is written.
        """
        if table_name not in SHARD_TABLES:
            raise ValueError(f"unknown shard table {table_name!r}; expected one of {sorted(SHARD_TABLES)}")
        relative = shard_path(self.build_id, table_name, source, batch_key)

        def checked() -> Iterable[pa.Table]:
            for chunk in chunks:
                table = _as_table(table_name, chunk)
                _check_rows(table_name, table, self.build_id, source)
                yield table

        rows, size, digest = write_chunks_atomic(
            self.root, relative, SHARD_TABLES[table_name], checked(), self.row_group_rows
        )
        return ShardInfo(table_name, source, batch_key, relative, rows, size, digest)

    def write_batch(
        self,
        source: str,
        batch_key: str,
        steps: Sequence[StepRow] | pa.Table,
        nodes: Sequence[NodeRow] | pa.Table,
        outcomes: Sequence[ProblemOutcome] | pa.Table,
    ) -> list[ShardInfo]:
        """Write the three shards of one batch (empty tables too, so a rerun replaces every file).

        Outcomes are written last: a batch whose outcomes shard exists has its steps and nodes.
        """
        return [
            self.write_table("steps", source, batch_key, steps),
            self.write_table("nodes", source, batch_key, nodes),
            self.write_table("outcomes", source, batch_key, outcomes),
        ]

    def temp_files(self) -> list[str]:
        """Leftover temporary files of this build (from killed writers), relative to the root."""
        return [p for p in _list_build_files(self.root, self.build_id) if p.rsplit("/", 1)[-1].startswith(".")]

    def remove_temp_files(self) -> int:
        """Delete leftover temporary files. Call only when no writer of this build is running."""
        paths = self.temp_files()
        for path in paths:
            self.root.filesystem.delete_file(self.root.join(path))
        return len(paths)


def _list_build_files(root: DataRoot, build_id: str) -> list[str]:
    selector = pafs.FileSelector(root.join(build_dir(build_id)), recursive=True, allow_not_found=True)
    base = root.base.rstrip("/") + "/"
    files = []
    for info in root.filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File:
            path = info.path
            files.append(path[len(base) :] if path.startswith(base) else path.lstrip("/"))
    return sorted(files)


def list_shards(root: str | DataRoot, build_id: str, table: str | None = None) -> list[str]:
    """Complete shard files of a build on disk (relative paths), optionally of one table.

    Temporary files of running or killed writers are never listed.
    """
    data_root = resolve_root(root)
    pattern = re.compile(r"^builds/[^/]+/(steps|nodes|outcomes)/source=[^/]+/part-[^/]+\.parquet$")
    result = []
    for path in _list_build_files(data_root, build_id):
        match = pattern.match(path)
        if match and (table is None or match.group(1) == table):
            result.append(path)
    return result


def describe_shard(root: str | DataRoot, relative_path: str) -> ShardInfo:
    """A :class:`ShardInfo` for a shard already on disk (reads it once for rows and checksum)."""
    data_root = resolve_root(root)
    match = re.match(r"^builds/[^/]+/(steps|nodes|outcomes)/source=([^/]+)/part-([^/]+)\.parquet$", relative_path)
    if not match:
        raise PrmforgeError(f"not a shard path: {relative_path}")
    digest, size = file_sha256(data_root, relative_path)
    rows = shard_row_count(data_root, relative_path)
    return ShardInfo(match.group(1), decode_source(match.group(2)), match.group(3), relative_path, rows, size, digest)


def shard_row_count(root: str | DataRoot, relative_path: str) -> int:
    """Rows in a shard, from its Parquet footer (no data read)."""
    data_root = resolve_root(root)
    with data_root.filesystem.open_input_file(data_root.join(relative_path)) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def file_sha256(root: str | DataRoot, relative_path: str) -> tuple[str, int]:
    """(sha256 hex, size) of a file under the root, streamed in 1 MiB chunks."""
    data_root = resolve_root(root)
    digest = hashlib.sha256()
    size = 0
    with data_root.filesystem.open_input_stream(data_root.join(relative_path)) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_schema_version(schema: pa.Schema, where: str) -> None:
    """Raise a one-line error when a file's schema version differs from this package's."""
    found = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if found is None:
        raise PrmforgeError(f"{where}: no prmforge schema version in the Parquet metadata (not a prmforge shard?)")
    if found.decode() != SCHEMA_VERSION:
        raise PrmforgeError(
            f"{where}: written with schema version {found.decode()}, this prmforge reads version {SCHEMA_VERSION}"
        )


def read_shard(root: str | DataRoot, relative_path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one shard, checking its schema version."""
    data_root = resolve_root(root)
    with data_root.filesystem.open_input_file(data_root.join(relative_path)) as handle:
        parquet = pq.ParquetFile(handle)
        check_schema_version(parquet.schema_arrow, relative_path)
        return parquet.read(columns=columns)
