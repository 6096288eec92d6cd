"""Build manifests: ``<root>/builds/<build_id>/manifest.json``.

A build writes its manifest twice: at the start with status ``running`` (:func:`start_build`)
and at the end with ``complete`` or ``failed`` (:func:`finish_build`), each time atomically
(temp file + move). Readers (:func:`read_manifest`, the catalog, exports) refuse a build that is
not complete unless asked (``allow_incomplete=True``), because its shard list is not final.

The manifest lists every shard with its row count and sha256, so :func:`verify_build` can prove
the files on disk are the ones the build wrote. Counts per stage and per label and the token
usage are computed from the shards themselves when the build finishes, so they cannot drift
from the data.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.fs as pafs

from data_schemas.errors import PrmforgeError
from data_schemas.schemas import SCHEMA_VERSION
from data_schemas.shards import (
    DataRoot,
    ShardInfo,
    build_dir,
    check_name,
    file_sha256,
    read_shard,
    resolve_root,
    shard_row_count,
    write_bytes_atomic,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
STATUSES = ("running", "complete", "failed")

#: Distributions whose versions a manifest records when installed (import names differ for some).
RECORDED_PACKAGES = (
    "prmforge",
    "pyarrow",
    "duckdb",
    "prefect",
    "sympy",
    "math-verify",
    "pydantic",
    "llama_cpp_python",
    "vllm",
    "lean-dojo",
)


@dataclass
class Manifest:
    """What a build is (config, code versions) and what it wrote (shards, counts)."""

    build_id: str
    status: str
    config: dict[str, Any]
    config_hash: str | None
    policy_model: str | None
    started_at: str
    finished_at: str | None = None
    package_versions: dict[str, str] = field(default_factory=dict)
    git_revision: str | None = None
    schema_version: str = SCHEMA_VERSION
    shards: list[ShardInfo] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_problems: int = 0
    token_usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    manifest_version: int = MANIFEST_VERSION
    # Builds that grow a named dataset: name, labeling keys of the problems this build labels,
    # the plan's counts (data_schemas/datasets.py). None for a standalone build.
    dataset: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": self.manifest_version,
            "build_id": self.build_id,
            "status": self.status,
            "schema_version": self.schema_version,
            "config_hash": self.config_hash,
            "config": self.config,
            "policy_model": self.policy_model,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "package_versions": self.package_versions,
            "git_revision": self.git_revision,
            "counts": self.counts,
            "failed_problems": self.failed_problems,
            "token_usage": self.token_usage,
            "error": self.error,
            "shards": [s.to_dict() for s in self.shards],
            **({"dataset": self.dataset} if self.dataset is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(
            build_id=str(data["build_id"]),
            status=str(data["status"]),
            config=dict(data.get("config") or {}),
            config_hash=data.get("config_hash"),
            policy_model=data.get("policy_model"),
            started_at=str(data["started_at"]),
            finished_at=data.get("finished_at"),
            package_versions=dict(data.get("package_versions") or {}),
            git_revision=data.get("git_revision"),
            schema_version=str(data.get("schema_version", "")),
            shards=[ShardInfo.from_dict(s) for s in data.get("shards") or []],
            counts={k: dict(v) for k, v in (data.get("counts") or {}).items()},
            failed_problems=int(data.get("failed_problems") or 0),
            token_usage=dict(data.get("token_usage") or {}),
            error=data.get("error"),
            manifest_version=int(data.get("manifest_version", MANIFEST_VERSION)),
            dataset=dict(data["dataset"]) if data.get("dataset") else None,
        )

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    def shard_rows(self, table: str) -> int:
        return sum(s.rows for s in self.shards if s.table == table)


def utc_now() -> str:
    """Current UTC time as ISO 8601 with seconds (what manifests store)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`RECORDED_PACKAGES` (those not installed are left out)."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision(directory: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the prmforge checkout (None outside a git checkout or without git)."""
    where = Path(directory) if directory is not None else Path(__file__).resolve().parent.parent
    try:
        completed = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = completed.stdout.strip()
    return revision if completed.returncode == 0 and revision else None


def manifest_path(build_id: str) -> str:
    return f"{build_dir(build_id)}/{MANIFEST_NAME}"


def _config_payload(config: Any) -> tuple[dict[str, Any], str | None]:
    """(config as JSON-ready dict, its hash) from a pydantic BuildConfig or a plain mapping."""
    if hasattr(config, "model_dump"):
        payload = config.model_dump(mode="json")
        config_hash = config.config_hash() if hasattr(config, "config_hash") else None
        return payload, config_hash
    if isinstance(config, Mapping):
        payload = json.loads(json.dumps(dict(config), default=str))
        import hashlib

        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return payload, hashlib.sha256(canonical.encode()).hexdigest()[:16]
    raise TypeError(f"config must be a pydantic model or a mapping, got {type(config).__name__}")


def new_manifest(
    build_id: str, config: Any, policy_model: str | None = None, config_hash: str | None = None
) -> Manifest:
    """A ``running`` manifest for a build that starts now (not written; see :func:`start_build`).

    ``config`` is a BuildConfig (its ``config_hash()`` is used) or a plain mapping (hashed here).
    """
    payload, computed_hash = _config_payload(config)
    return Manifest(
        build_id=check_name("build id", build_id),
        status="running",
        config=payload,
        config_hash=config_hash or computed_hash,
        policy_model=policy_model,
        started_at=utc_now(),
        package_versions=package_versions(),
        git_revision=git_revision(),
    )


def write_manifest(root: str | DataRoot, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (hidden temp file next to it, then move)."""
    if manifest.status not in STATUSES:
        raise ValueError(f"manifest status {manifest.status!r} is not one of {STATUSES}")
    write_bytes_atomic(root, manifest_path(manifest.build_id), manifest.to_json().encode())


def start_build(root: str | DataRoot, build_id: str, config: Any, policy_model: str | None = None) -> Manifest:
    """Write and return the ``running`` manifest of a build that starts now."""
    manifest = new_manifest(build_id, config, policy_model=policy_model)
    write_manifest(root, manifest)
    return manifest


def _dedupe_shards(shards: Iterable[ShardInfo]) -> list[ShardInfo]:
    """One entry per path, the last write winning (a retried batch reports its shard twice)."""
    by_path: dict[str, ShardInfo] = {}
    for shard in shards:
        by_path.pop(shard.path, None)
        by_path[shard.path] = shard
    return sorted(by_path.values(), key=lambda s: s.path)


def count_from_shards(
    root: str | DataRoot, shards: Iterable[ShardInfo]
) -> tuple[dict[str, dict[str, int]], int, dict[str, int]]:
    """(counts, failed problem count, token usage) computed by reading the shards.

    counts["stages"]: problems, labeled, failed, skipped, failed_at_<stage>, paths, steps, nodes;
    counts["labels"]: positive / negative steps (fused_label), hard_positive / hard_negative /
    hard_unknown (Math-Shepherd hard label); counts["label_sources"]: steps per fusion rule.
    token_usage: prompt_tokens, completion_tokens, rollouts summed over problem outcomes.
    """
    data_root = resolve_root(root)
    stages: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    label_sources: Counter[str] = Counter()
    usage: Counter[str] = Counter()
    for shard in shards:
        if shard.table == "outcomes":
            table = read_shard(
                data_root,
                shard.path,
                ["status", "failed_stage", "num_paths", "rollouts", "prompt_tokens", "completion_tokens"],
            )
            stages["problems"] += table.num_rows
            for status, stage in zip(table.column("status").to_pylist(), table.column("failed_stage").to_pylist()):
                stages[status] += 1
                if status == "failed":
                    stages[f"failed_at_{stage or 'unknown'}"] += 1
            stages["paths"] += int(pc.sum(table.column("num_paths")).as_py() or 0)
            for column in ("prompt_tokens", "completion_tokens", "rollouts"):
                usage[column] += int(pc.sum(table.column(column)).as_py() or 0)
        elif shard.table == "steps":
            table = read_shard(data_root, shard.path, ["fused_label", "hard_label", "label_source"])
            stages["steps"] += table.num_rows
            fused = table.column("fused_label")
            positive = int(pc.sum(pc.cast(fused, "int64")).as_py() or 0)
            labels["positive"] += positive
            labels["negative"] += table.num_rows - positive
            hard = table.column("hard_label")
            hard_true = int(pc.sum(pc.cast(pc.fill_null(hard, False), "int64")).as_py() or 0)
            labels["hard_positive"] += hard_true
            labels["hard_unknown"] += hard.null_count
            labels["hard_negative"] += table.num_rows - hard_true - hard.null_count
            label_sources.update(table.column("label_source").to_pylist())
        elif shard.table == "nodes":
            stages["nodes"] += shard.rows
    for key in ("problems", "labeled", "failed", "skipped", "paths", "steps", "nodes"):
        stages.setdefault(key, 0)
    for key in ("positive", "negative", "hard_positive", "hard_negative", "hard_unknown"):
        labels.setdefault(key, 0)
    counts = {
        "stages": dict(sorted(stages.items())),
        "labels": dict(labels),
        "label_sources": dict(sorted(label_sources.items())),
    }
    usage_dict = {k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "rollouts")}
    return counts, stages.get("failed", 0), usage_dict


def finish_build(
    root: str | DataRoot,
    manifest: Manifest,
    shards: Iterable[ShardInfo],
    status: str = "complete",
    error: str | None = None,
    token_usage: Mapping[str, int] | None = None,
    extra_counts: Mapping[str, Mapping[str, int]] | None = None,
) -> Manifest:
    """Write the final manifest (``complete`` or ``failed``) with its shard list and counts.

    Counts and token usage come from the shards; ``token_usage`` overrides the latter when the
    caller measured it elsewhere (e.g. tokens of failed problems that wrote no outcome).
    ``extra_counts`` adds sections (e.g. ``{"timings_ms": {...}}``).
    """
    if status not in ("complete", "failed"):
        raise ValueError(f"a finished build is 'complete' or 'failed', not {status!r}")
    shard_list = _dedupe_shards(shards)
    counts, failed, usage = count_from_shards(root, shard_list)
    if extra_counts:
        counts.update({k: dict(v) for k, v in extra_counts.items()})
    if token_usage is not None:
        usage = {**usage, **{k: int(v) for k, v in token_usage.items()}}
    final = replace(
        manifest,
        status=status,
        shards=shard_list,
        counts=counts,
        failed_problems=failed,
        token_usage=usage,
        error=error,
        finished_at=utc_now(),
    )
    write_manifest(root, final)
    return final


def read_manifest(root: str | DataRoot, build_id: str, allow_incomplete: bool = False) -> Manifest:
    """The manifest of ``build_id``; a one-line error when missing or (unless allowed) not complete."""
    data_root = resolve_root(root)
    path = manifest_path(build_id)
    try:
        with data_root.filesystem.open_input_stream(data_root.join(path)) as stream:
            text = stream.read().decode()
    except FileNotFoundError:
        raise PrmforgeError(f"no build {build_id!r} under {data_root.uri} (missing {path})") from None
    try:
        manifest = Manifest.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as error:
        raise PrmforgeError(f"{data_root.uri}/{path}: unreadable manifest ({error})") from None
    if not allow_incomplete and not manifest.is_complete:
        raise PrmforgeError(
            f"build {build_id!r} is {manifest.status}, not complete; "
            "pass allow_incomplete=True (CLI: --include-incomplete) to read it anyway"
        )
    if manifest.schema_version != SCHEMA_VERSION:
        raise PrmforgeError(
            f"build {build_id!r} was written with schema version {manifest.schema_version}, "
            f"this prmforge reads version {SCHEMA_VERSION}"
        )
    return manifest


def list_builds(root: str | DataRoot) -> list[Manifest]:
    """Every build with a manifest under the root, any status, oldest first."""
    data_root = resolve_root(root)
    selector = pafs.FileSelector(data_root.join("builds"), recursive=False, allow_not_found=True)
    manifests = []
    for info in data_root.filesystem.get_file_info(selector):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or name.startswith("."):
            continue
        try:
            manifests.append(read_manifest(data_root, name, allow_incomplete=True))
        except PrmforgeError as error:
            if "missing" in str(error):
                continue  # a directory without a manifest is not a build (yet)
            raise
    return sorted(manifests, key=lambda m: (m.started_at, m.build_id))


def verify_build(root: str | DataRoot, build_id: str, allow_incomplete: bool = False) -> Manifest:
    """Check every shard the manifest lists: present, same size, same sha256, same row count.

    Raises a one-line :class:`PrmforgeError` naming the first shard that differs.
    """
    data_root = resolve_root(root)
    manifest = read_manifest(data_root, build_id, allow_incomplete=allow_incomplete)
    for shard in manifest.shards:
        try:
            digest, size = file_sha256(data_root, shard.path)
        except FileNotFoundError:
            raise PrmforgeError(
                f"build {build_id!r}: shard {shard.path} is listed in the manifest but missing"
            ) from None
        if size != shard.bytes or digest != shard.sha256:
            raise PrmforgeError(
                f"build {build_id!r}: shard {shard.path} checksum mismatch "
                f"(manifest {shard.sha256[:12]}…/{shard.bytes} B, file {digest[:12]}…/{size} B)"
            )
        if shard_row_count(data_root, shard.path) != shard.rows:
            raise PrmforgeError(f"build {build_id!r}: shard {shard.path} row count differs from the manifest")
    return manifest
