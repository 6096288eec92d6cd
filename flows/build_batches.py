"""A build's input and batches: the problem files, the problems, batch keys and build ids.

Part of the ``build_dataset`` flow (flows/build.py describes the walk): :func:`load_build_problems`
reads ``problems.path`` (one file, a folder or a glob), :func:`make_batches` cuts the problems into
batches whose keys name their shards, :func:`new_build_id` / :func:`unused_build_id` name a build.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from pyarrow.fs import FileSelector

from data_schemas.errors import InputError
from data_schemas.problems import FILE_TYPES, bundled_problems_path, load_problems
from data_schemas.records import Problem
from data_schemas.shards import resolve_root
from labelers.config import BuildConfig


def code_version() -> str:
    """The installed prmforge version: part of the cache key, so an upgrade relabels."""
    try:
        return metadata.version("prmforge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Batch:
    """A shard's worth of problems. ``key`` = position + hash of the problem ids (stable)."""

    key: str
    problems: tuple[Problem, ...]

    @property
    def problem_ids(self) -> tuple[str, ...]:
        return tuple(problem.problem_id for problem in self.problems)

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(problem.source for problem in self.problems)


def make_batches(problems: Sequence[Problem], batch_size: int) -> list[Batch]:
    """Consecutive chunks of ``batch_size`` problems with keys ``<index:05d>-<12 hex of ids>``.

    The index keeps shard names in input order; the hash ties the key to exactly these problems,
    so a changed input file never reuses a stale shard of the same position.
    """
    batches = []
    for index, start in enumerate(range(0, len(problems), batch_size)):
        chunk = tuple(problems[start : start + batch_size])
        digest = hashlib.blake2b("\x1f".join(p.problem_id for p in chunk).encode(), digest_size=6).hexdigest()
        batches.append(Batch(f"{index:05d}-{digest}", chunk))
    return batches


def new_build_id(config: BuildConfig, now: datetime | None = None) -> str:
    """``<name>-<UTC yyyymmdd-HHMMSS>-<config hash, 6 hex>``: a fresh id per run (see docs)."""
    moment = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", config.name).strip(".-") or "build"
    return f"{name}-{moment}-{config.config_hash()[:6]}"


def unused_build_id(root: str, candidate: str) -> str:
    """``candidate``, or ``candidate-2``, ``-3``... when a build of that id exists (same second)."""
    data_root = resolve_root(root)
    listing = data_root.filesystem.get_file_info(FileSelector(data_root.join("builds"), allow_not_found=True))
    taken = {info.base_name for info in listing}
    build_id, number = candidate, 1
    while build_id in taken:
        number += 1
        build_id = f"{candidate}-{number}"
    return build_id


def problem_files(spec: str) -> list[Path]:
    """The files ``problems.path`` names: one file, every problem file in a folder, or a glob.

    Folder and glob matches are sorted by name and filtered to the known problem file types, so
    a scheduled dataset build picks up files added since the last run.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_TYPES and not p.name.startswith(".")
        )
    elif any(char in spec for char in "*?["):
        matches = glob.glob(str(Path(spec).expanduser()), recursive=True)
        files = sorted(Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in FILE_TYPES)
    else:
        return [path]
    if not files:
        raise InputError(f"{spec}: no problem files ({', '.join(FILE_TYPES)}) there")
    return files


def load_build_problems(config: BuildConfig) -> tuple[list[Problem], int, int]:
    """(problems after ``limit``, input rows skipped as invalid, duplicate rows dropped).

    Several files (a folder or a glob) are read in name order; a problem id seen in an earlier
    file is a duplicate like one repeated within a file.
    """
    section = config.problems
    files = [bundled_problems_path()] if section.path == "bundled" else problem_files(section.path)
    problems: list[Problem] = []
    seen: set[str] = set()
    skipped = duplicates = 0
    for path in files:
        loaded = load_problems(
            path,
            format=section.format,
            source=section.source,
            columns=section.columns or None,
            skip_invalid=section.skip_invalid,
        )
        skipped += len(loaded.skipped)
        duplicates += len(loaded.duplicates)
        for problem in loaded.problems:
            if problem.problem_id in seen:
                duplicates += 1
                continue
            seen.add(problem.problem_id)
            problems.append(problem)
    problems = problems[: section.limit] if section.limit is not None else problems
    return problems, skipped, duplicates
