"""The build's two Prefect tasks and what they exchange: ``label-batch`` and ``write-shards``.

``label-batch`` labels one batch with the worker process's shared model (its result is cached and
persisted under the build, keyed by :func:`batch_cache_key`, for resume); ``write-shards`` writes a
batch's rows as Parquet shards. :func:`failed_batch` records a batch whose task failed after all
retries; :func:`written_batch` takes back a batch an earlier run of the build already wrote.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from data_schemas.errors import PrmforgeError
from data_schemas.manifest import Manifest
from data_schemas.records import NodeRow, ProblemOutcome, StepRow
from data_schemas.shards import ShardInfo, ShardWriter, file_sha256, read_shard
from flows.build_batches import Batch, code_version
from flows.resources import PolicyFactorySpec, factory_label
from labelers.config import BuildConfig
from labelers.policy.base import TokenUsage

RESULTS_DIRNAME = ".prefect-results"
# Failed outcomes the flow writes itself when a batch task fails after all its retries.
FAILED_STAGE_TASK = "batch_task"


def results_storage(root: str, build_id: str) -> Any:
    """Where Prefect persists batch results (the resume cache) for a build.

    Local root: ``<root>/builds/<build_id>/.prefect-results``, next to the shards. Remote root
    (s3://...): ``$PREFECT_LOCAL_STORAGE_PATH/<build_id>`` when that is set, else the same prefix
    as the shards through fsspec (needs the filesystem's fsspec package, e.g. s3fs), else
    ``~/.prmforge/results/<build_id>`` (a resume then has to run on the same machine).
    """
    if "://" not in root or root.startswith("file://"):
        return Path(root.removeprefix("file://")).expanduser().resolve() / "builds" / build_id / RESULTS_DIRNAME
    local_storage = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    if local_storage:
        return Path(local_storage).expanduser() / build_id
    try:
        import fsspec

        fsspec.get_filesystem_class(root.split("://", 1)[0])
    except (ImportError, ValueError):
        return Path.home() / ".prmforge" / "results" / build_id
    from prefect.filesystems import RemoteFileSystem

    basepath = f"{root.rstrip('/')}/builds/{build_id}/{RESULTS_DIRNAME}"
    block = RemoteFileSystem(basepath=basepath)
    # Prefect accepts only saved blocks as task result storage; the name is derived from the path.
    block.save(f"prmforge-results-{hashlib.sha256(basepath.encode()).hexdigest()[:16]}", overwrite=True)
    return block


def batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key of a label-batch run: (build id, problem ids, config hash, code version, factory)."""
    batch: Batch = parameters["batch"]
    config: BuildConfig = parameters["config"]
    parts = (
        parameters["build_id"],
        batch.key,
        *batch.problem_ids,
        config.config_hash(),
        code_version(),
        factory_label(parameters.get("policy_factory")),
    )
    return "label-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (backend 5xx, timeouts, a crashed worker), never a user error."""
    try:
        state.result()
    except PrmforgeError:
        return False
    except Exception:  # noqa: BLE001 - any other error may be transient
        return True
    return True


@dataclass(frozen=True)
class LabeledBatch:
    """What a label-batch task returns (the pipeline's BatchResult, flattened to plain rows)."""

    steps: tuple[StepRow, ...]
    nodes: tuple[NodeRow, ...]
    outcomes: tuple[ProblemOutcome, ...]
    usage: TokenUsage
    counters: dict[str, int] = field(default_factory=dict)  # e.g. paths_dropped_consensus


@task(name="label-batch", cache_key_fn=batch_cache_key, persist_result=True)
def label_batch_task(
    batch: Batch, config: BuildConfig, build_id: str, policy_factory: PolicyFactorySpec = None
) -> LabeledBatch:
    """Label one batch with this process's shared model and verifiers."""
    # Imported here, not at module level: Dask/process runners pickle this function by value,
    # and the holder (which holds locks and models) must be looked up in the worker's process.
    from flows.resources import PROCESS_RESOURCES as process_resources
    from labelers.pipeline import label_batch

    with process_resources.lease(config, policy_factory) as held:  # not closed while this batch runs
        result = label_batch(batch.problems, config, held.policy, held.tool, held.lean, build_id, step_judge=held.judge)
    return LabeledBatch(
        tuple(result.steps), tuple(result.nodes), tuple(result.outcomes), result.usage, dict(result.counters)
    )


@task(name="write-shards", cache_policy=NO_CACHE, persist_result=False)
def write_shards_task(root: str, build_id: str, batch_key: str, labeled: LabeledBatch) -> list[ShardInfo]:
    """Write a batch's steps, nodes and outcomes, one shard triple per source in the batch."""
    writer = ShardWriter(root, build_id)
    sources = sorted({row.source for row in (*labeled.outcomes, *labeled.steps, *labeled.nodes)})
    shards: list[ShardInfo] = []
    for source in sources:
        shards += writer.write_batch(
            source,
            batch_key,
            [row for row in labeled.steps if row.source == source],
            [row for row in labeled.nodes if row.source == source],
            [row for row in labeled.outcomes if row.source == source],
        )
    return shards


def failed_batch(batch: Batch, build_id: str, error: BaseException | str) -> LabeledBatch:
    """Outcomes recording every problem of a batch whose task failed after all retries."""
    message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    outcomes = tuple(
        ProblemOutcome(
            build_id=build_id,
            problem_id=problem.problem_id,
            source=problem.source,
            question=problem.question,
            gold_answer=problem.gold_answer,
            status="failed",
            failed_stage=FAILED_STAGE_TASK,
            error=message[:2000],
            num_paths=0,
            num_steps=0,
            num_positive=0,
            num_negative=0,
            rollouts=0,
            prompt_tokens=0,
            completion_tokens=0,
            wall_seconds=0.0,
        )
        for problem in batch.problems
    )
    return LabeledBatch((), (), outcomes, TokenUsage())


def written_batch(root: str, batch: Batch, manifest: Manifest) -> tuple[list[ShardInfo], LabeledBatch] | None:
    """A batch's shards and rows when an earlier run wrote all of them with the manifest's checksums."""
    listed = [shard for shard in manifest.shards if shard.batch_key == batch.key]
    wanted = {(table, source) for table in ("steps", "nodes", "outcomes") for source in batch.sources}
    if {(shard.table, shard.source) for shard in listed} != wanted:
        return None
    for shard in listed:
        try:
            digest, size = file_sha256(root, shard.path)
        except (FileNotFoundError, OSError):
            return None
        if digest != shard.sha256 or size != shard.bytes:
            return None
    rows: dict[str, list[Any]] = {"steps": [], "nodes": [], "outcomes": []}
    record_types = {"steps": StepRow, "nodes": NodeRow, "outcomes": ProblemOutcome}
    for shard in listed:
        if shard.table in ("steps", "outcomes"):  # nodes are not needed for the tally
            record = record_types[shard.table]
            rows[shard.table] += [record(**values) for values in read_shard(root, shard.path).to_pylist()]
    labeled = LabeledBatch(tuple(rows["steps"]), (), tuple(rows["outcomes"]), TokenUsage())
    return listed, labeled
