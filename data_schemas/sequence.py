"""A dataset's sequence: monotonic numbers handed out without a clock (docs/storage.md, "Commit protocol").

``<root>/datasets/<name>/seq/<n, 12 digits>.json`` — one small file per number, naming what took
it (``plan`` or ``commit``) and the build. Taking the next number is a compare-and-swap on a
file name: read the highest number, create ``n + 1`` exclusively (local roots: write a temp
file, fsync, ``link`` it onto the name, which fails if the name exists — then try ``n + 2``).
Of two machines racing for a number exactly one gets it; numbers only grow, and no clock is
read. Object stores reached through pyarrow/fsspec have no exclusive create: there a number is
taken under the dataset's sequence lock (a fenced lock, written and read back) and the object
is read back after writing — the documented single-writer rule.

The number files are the allocator only. What a build's number means is written in its
manifest (``dataset.plan_seq`` when it plans, ``dataset.commit_seq`` in the complete manifest),
so a number taken by a build that died before writing its manifest is simply a gap.
"""

from __future__ import annotations

import json
import os
import re
import socket

import pyarrow.fs as pafs

from data_schemas.datasets import DatasetLock, dataset_dir
from data_schemas.errors import PrmforgeError
from data_schemas.shards import DataRoot, resolve_root, write_bytes_atomic, write_bytes_exclusive

SEQ_DIR = "seq"
SEQ_LOCK_NAME = ".seq.lock"
SEQ_KINDS = ("plan", "commit")
_SEQ_FILE = re.compile(r"^(\d{12})\.json$")


def _taken(root: DataRoot, name: str) -> list[int]:
    selector = pafs.FileSelector(root.join(dataset_dir(name), SEQ_DIR), allow_not_found=True)
    numbers = []
    for info in root.filesystem.get_file_info(selector):
        match = _SEQ_FILE.match(info.base_name)
        if match and info.type == pafs.FileType.File:
            numbers.append(int(match.group(1)))
    return numbers


def seq_path(name: str, number: int) -> str:
    return f"{dataset_dir(name)}/{SEQ_DIR}/{number:012d}.json"


def _record(number: int, kind: str, build_id: str) -> bytes:
    record = {"seq": number, "kind": kind, "build_id": build_id, "pid": os.getpid(), "host": socket.gethostname()}
    return json.dumps(record).encode()


def read_seq(root: str | DataRoot, name: str, number: int) -> dict | None:
    """The record of a taken number (None when not taken)."""
    data_root = resolve_root(root)
    try:
        with data_root.filesystem.open_input_stream(data_root.join(seq_path(name, number))) as stream:
            return json.loads(stream.read().decode())
    except FileNotFoundError:
        return None


def next_seq(root: str | DataRoot, name: str, kind: str, build_id: str) -> int:
    """Take the dataset's next sequence number for ``build_id`` (``kind``: plan or commit)."""
    if kind not in SEQ_KINDS:
        raise ValueError(f"sequence kind {kind!r} is not one of {SEQ_KINDS}")
    data_root = resolve_root(root)
    if data_root.is_local:
        number = max(_taken(data_root, name), default=0) + 1
        while not write_bytes_exclusive(data_root, seq_path(name, number), _record(number, kind, build_id)):
            number += 1  # another run took it first: the next one
        return number
    with DatasetLock(data_root, name, lock_name=SEQ_LOCK_NAME) as lock:
        number = max(_taken(data_root, name), default=0) + 1
        lock.check()
        write_bytes_atomic(data_root, seq_path(name, number), _record(number, kind, build_id))
        if (read_seq(data_root, name, number) or {}).get("build_id") != build_id:
            raise PrmforgeError(
                f"dataset {name!r}: sequence number {number} was taken by another run at the same moment "
                "(object stores have no exclusive create; docs/storage.md): run this again"
            )
        return number
