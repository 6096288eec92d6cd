"""The ``build_dataset`` Prefect flow: problems -> labeled batches -> Parquet shards -> manifest.

Walk of one build (all algorithms live in labelers/ and data_schemas/; this module only wires):

1. load and validate the problems (bundled set by default), keep ``problems.limit``;
2. split them into batches of ``output.batch_size`` problems; a batch's key is derived from its
   position and its problem ids, so the same inputs give the same keys and shard names;
3. write the manifest with status ``running`` (on resume: the existing one, back to running);
4. one ``label-batch`` task per batch runs ``labelers.pipeline.label_batch`` (sample -> MCTS/MC
   -> tool and Lean checks -> fusion) with the worker process's shared model and returns rows;
5. as each batch finishes, one ``write-shards`` task (in the flow's process) writes its shards
   (atomic, deterministic names) and the running manifest is updated with them;
6. the final manifest (``complete``, counts computed from the shards) is written last.

Datasets: ``run_build`` first plans a build of ``output.dataset`` (flows/datasets.py): under the
dataset lock it keeps only the problems the dataset does not hold under the same labeling key,
writes the running manifest with that plan and a claim; the flow then labels the planned
problems (on resume too), and the claim is renewed until the build ends.

Resume: ``label-batch`` results are cached and persisted under the build's directory, keyed on
(build id, batch problem ids, config hash, code version, policy factory). A rerun of the same
build id skips every batch whose shards the manifest lists with matching checksums, takes the
cached rows of batches labeled but not written, and labels only the rest. Shard names are
deterministic, so no row is ever written twice.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from pyarrow.fs import FileSelector

from data_schemas.datasets import ClaimHeartbeat, remove_claim
from data_schemas.errors import ConfigError, InputError, PrmforgeError
from data_schemas.manifest import Manifest, finish_build, read_manifest, start_build, write_manifest
from data_schemas.problems import FILE_TYPES, bundled_problems_path, load_problems
from data_schemas.records import NodeRow, Problem, ProblemOutcome, StepRow
from data_schemas.shards import ShardInfo, ShardWriter, file_sha256, read_shard, resolve_root
from flows.datasets import commit_section, plan_dataset_build, planned_problems, refuse_complete
from flows.progress import BuildProgress, BuildSummary, dataset_plan_line
from flows.resources import PROCESS_RESOURCES, PolicyFactorySpec, factory_label
from flows.runners import make_task_runner
from labelers.config import BuildConfig
from labelers.policy.base import TokenUsage
from labelers.policy.usage import CostProfile, cpu_seconds

RESULTS_DIRNAME = ".prefect-results"
# Failed outcomes the flow writes itself when a batch task fails after all its retries.
FAILED_STAGE_TASK = "batch_task"


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


def _open_manifest(root: str, build_id: str, config: BuildConfig) -> tuple[Manifest, bool]:
    """(running manifest, resumed?) — the existing one when this build id was started before."""
    try:
        existing = read_manifest(root, build_id, allow_incomplete=True)
    except PrmforgeError as error:
        if "missing" not in str(error):
            raise
        return start_build(root, build_id, config, policy_model=config.policy.model), False
    refuse_complete(existing, standalone_too=False)
    if existing.config_hash != config.config_hash():
        raise ConfigError(
            f"build {build_id!r} was started with config hash {existing.config_hash}, this config has "
            f"{config.config_hash()}: resume with the build's own config (prmforge build --resume {build_id})"
        )
    resumed = replace(existing, status="running", finished_at=None, error=None)
    write_manifest(root, resumed)
    return resumed, True


@flow(name="build-dataset", log_prints=False)
def build_dataset(
    config: BuildConfig,
    build_id: str | None = None,
    policy_factory: Any = None,
    progress: Any = None,
    reuse_written_shards: bool = True,
) -> BuildSummary:
    """Label the configured problems and write a build (see the module docstring).

    ``build_id``: None starts a fresh build; an existing id resumes it (same config required).
    ``policy_factory``: how worker processes make the policy from ``config.policy`` — None for
    the real backends, or a callable / ``"module:function"`` (tests inject a scripted policy).
    ``progress``: a :class:`BuildProgress` to report to (None: silent).
    ``reuse_written_shards``: skip batches whose shards the manifest already lists (resume).
    """
    started = time.perf_counter()
    cpu_started = cpu_seconds()
    root = config.output.root
    build_id = build_id or unused_build_id(root, new_build_id(config))
    reporter: BuildProgress | None = progress
    problems, skipped_rows, duplicate_rows = load_build_problems(config)
    input_problems = len(problems)
    manifest, resumed = _open_manifest(root, build_id, config)
    if manifest.dataset is not None:  # a dataset build labels what its plan chose (flows/datasets.py)
        problems = planned_problems(problems, manifest, config)
    batches = make_batches(problems, config.output.batch_size)
    if resumed:
        ShardWriter(root, build_id).remove_temp_files()  # left by a killed writer of this build

    shards: list[ShardInfo] = []
    pending: list[Batch] = []
    reused_batches = 0
    done_rows: list[tuple[Batch, LabeledBatch, bool]] = []
    for batch in batches:
        written = written_batch(root, batch, manifest) if (resumed and reuse_written_shards) else None
        if written is None:
            pending.append(batch)
        else:
            shards += written[0]
            done_rows.append((batch, written[1], True))
            reused_batches += 1

    if reporter is not None:
        reporter.start(build_id, len(problems), len(batches), reused_batches)
    steps_seen: list[StepRow] = []
    outcomes_seen: list[ProblemOutcome] = []
    generation_seconds = 0.0
    usage_total = TokenUsage()
    pipeline_counters: Counter[str] = Counter()
    model_ids: set[str] = set()

    def account(batch: Batch, labeled: LabeledBatch, reused: bool) -> None:
        nonlocal generation_seconds
        steps_seen.extend(labeled.steps)
        outcomes_seen.extend(labeled.outcomes)
        model_ids.update(row.generator_model for row in labeled.steps)
        usage_total.add(labeled.usage)
        pipeline_counters.update(labeled.counters)
        if not reused:
            generation_seconds += labeled.usage.generation_seconds
        if reporter is not None:
            reporter.batch_done(batch.key, labeled.steps, labeled.outcomes, labeled.usage, reused)

    for batch, labeled, reused in done_rows:
        account(batch, labeled, reused)

    flow_config = config.flow
    delays = [flow_config.retry_delay_s * 2**attempt for attempt in range(flow_config.retries)]
    label = label_batch_task.with_options(
        retries=flow_config.retries,
        retry_delay_seconds=delays or 0,
        retry_condition_fn=_retry_unless_user_error,
        result_storage=results_storage(root, build_id),
    )
    write = write_shards_task.with_options(retries=flow_config.retries, retry_delay_seconds=delays or 0)
    try:
        futures = {label.submit(batch, config, build_id, policy_factory): batch for batch in pending}
        for future in as_completed(list(futures)):
            batch = futures[future]
            future.wait()  # sets the future's final state (otherwise .state asks the API, maybe stale)
            state = future.state
            if state.is_completed():
                labeled = future.result()
                reused = state.name == "Cached"
            else:
                labeled = failed_batch(batch, build_id, future.result(raise_on_failure=False))
                reused = False
            reused_batches += reused
            # Called, not submitted: the write runs now in the flow's thread instead of queueing
            # behind label tasks in the runner's pool (with one worker it would wait for all of them).
            written_shards = write(root, build_id, batch.key, labeled)
            shards += written_shards
            # The running manifest lists finished batches, so a crash loses at most the batches in flight.
            manifest = replace(manifest, shards=list(shards))
            write_manifest(root, manifest)
            account(batch, labeled, reused)
    except BaseException as error:
        if reporter is not None:
            reporter.stop()
        finish_build(root, manifest, shards, status="failed", error=f"{type(error).__name__}: {error}"[:2000])
        raise
    wall_seconds = time.perf_counter() - started
    # This process's CPU (the thread runner's labeling included; process/Dask workers are not).
    cost = CostProfile.of(usage_total, solutions=sum(1 for o in outcomes_seen if o.status == "labeled"),
                          rollouts=sum(o.rollouts for o in outcomes_seen), wall_seconds=wall_seconds,
                          cpu_seconds=cpu_seconds() - cpu_started)

    tool_checked = sum(1 for row in steps_seen if row.tool_verdict in ("correct", "incorrect"))
    lean_checked = sum(1 for row in steps_seen if row.lean_state in ("proved", "disproved"))
    if model_ids:
        manifest = replace(manifest, policy_model=",".join(sorted(model_ids)))
    if manifest.dataset is not None:  # the commit: a sequence number, then the complete manifest
        manifest = replace(manifest, dataset=commit_section(root, manifest))
    final = finish_build(
        root,
        manifest,
        shards,
        status="complete",
        extra_counts={
            "input": {"problems": input_problems, "skipped_rows": skipped_rows, "duplicate_rows": duplicate_rows},
            "pipeline": dict(sorted(pipeline_counters.items())),
            "verification": {"steps": len(steps_seen), "tool_checked": tool_checked, "lean_checked": lean_checked},
            "run": {
                "batches": len(batches),
                "batches_reused": reused_batches,
                "wall_ms": int(wall_seconds * 1000),
                "generation_ms": int(generation_seconds * 1000),
            },
            "cost_profile": cost.to_counts(),
        },
    )
    failures = tuple(
        (o.problem_id, o.failed_stage or "unknown", o.error or "") for o in outcomes_seen if o.status == "failed"
    )
    data_root = resolve_root(root)
    summary = BuildSummary(
        build_id=build_id,
        status=final.status,
        root=root,
        manifest_path=data_root.join("builds", build_id, "manifest.json"),
        shards_dir=data_root.join("builds", build_id),
        shard_files=len(final.shards),
        problems_total=len(problems),
        problems_failed=final.failed_problems,
        problems_skipped=sum(1 for o in outcomes_seen if o.status == "skipped"),
        input_rows_skipped=skipped_rows,
        batches_total=len(batches),
        batches_reused=reused_batches,
        steps=len(steps_seen),
        positive_steps=sum(1 for row in steps_seen if row.fused_label),
        tool_checked_steps=tool_checked,
        lean_checked_steps=lean_checked,
        rollouts=sum(o.rollouts for o in outcomes_seen),
        # Whole build, from the shards (batches reused from an earlier run included).
        prompt_tokens=int(final.token_usage.get("prompt_tokens", usage_total.prompt_tokens)),
        completion_tokens=int(final.token_usage.get("completion_tokens", usage_total.completion_tokens)),
        generation_seconds=generation_seconds,
        wall_seconds=wall_seconds,
        failures=failures,
        dataset=(manifest.dataset or {}).get("name"),
        dataset_plan=dict((manifest.dataset or {}).get("plan") or {}),
        cost_profile=cost.line(),
    )
    if reporter is not None:
        reporter.stop()
    return summary


def run_build(
    config: BuildConfig,
    build_id: str | None = None,
    policy_factory: PolicyFactorySpec = None,
    progress: BuildProgress | None = None,
    reuse_written_shards: bool = True,
    release_resources: bool = True,
    relabel: bool = False,
    relabel_where: str | None = None,
    claim: ClaimHeartbeat | None = None,
) -> BuildSummary:
    """Run ``build_dataset`` with the task runner ``config.flow`` asks for.

    ``release_resources`` closes the models this process loaded (thread runner) when the build
    ends; a long-lived caller that runs many builds (``serve``) may keep them.

    With ``config.output.dataset``, a new build is first planned against the dataset (only new
    or changed problems; ``relabel`` forces held ones, all or those matching ``relabel_where``
    over ``dataset_problems``) and claims its problems while it runs; a build with nothing to
    label is recorded as an empty complete build without starting Prefect. An existing
    ``build_id`` resumes that build with its own plan; a complete dataset build is refused (one
    line), a complete standalone build runs again reusing its verified shards.
    ``claim``: the running claim :func:`start_dataset_build` returned for ``build_id`` (it keeps
    beating from planning on; stopped here when the build ends).
    """
    heartbeat: ClaimHeartbeat | None = claim
    dataset = config.output.dataset
    existing = _existing_manifest(config.output.root, build_id) if build_id is not None else None
    if existing is not None:
        try:
            refuse_complete(existing, standalone_too=False)
        except PrmforgeError:
            if heartbeat is not None:
                heartbeat.stop(release=False)
            raise
    if dataset is not None:
        if existing is None:  # a new build of the dataset: plan it (resume keeps its plan)
            build_id, nothing_new, heartbeat = start_dataset_build(config, build_id, relabel, relabel_where)
            if nothing_new is not None:
                return nothing_new
            existing = read_manifest(config.output.root, build_id, allow_incomplete=True)
        planned = list((existing.dataset or {}).get("labeling_keys") or {})
        if planned and heartbeat is None:  # a resume: claim again, beating from this write on
            heartbeat = ClaimHeartbeat(
                config.output.root, dataset, build_id, planned, config.output.claim_lease_s
            ).start()
    elif relabel or relabel_where is not None:
        raise ConfigError("--relabel and --where apply to a dataset build: give --dataset NAME")
    runner = make_task_runner(config.flow)
    configured = build_dataset.with_options(task_runner=runner)
    try:
        return configured(
            config=config,
            build_id=build_id,
            policy_factory=policy_factory,
            progress=progress,
            reuse_written_shards=reuse_written_shards,
        )
    finally:
        if heartbeat is not None:
            heartbeat.stop()  # after the final manifest: the problems are never unclaimed and unlabeled
        if release_resources:
            PROCESS_RESOURCES.close_all()


def start_dataset_build(
    config: BuildConfig, build_id: str | None = None, relabel: bool = False, relabel_where: str | None = None
) -> tuple[str, BuildSummary | None, ClaimHeartbeat | None]:
    """Plan a new build of ``config.output.dataset`` (flows/datasets.py) before any model loads.

    Returns (build id, None, claim) when the build has problems to label: its running manifest
    and claim are written, the claim is renewed from now on, and ``run_build(config,
    build_id=..., claim=claim)`` labels them. Returns (build id, summary, None) when there is
    nothing to label: the build is already finished (committed) as an empty complete build (no
    Prefect, no model).
    """
    build_id = build_id or unused_build_id(config.output.root, new_build_id(config))
    problems, skipped_rows, duplicate_rows = load_build_problems(config)
    plan, manifest, claim = plan_dataset_build(config, problems, build_id, relabel, relabel_where)
    if plan.selected:
        return build_id, None, claim
    return build_id, _nothing_new(config, manifest, len(problems), skipped_rows, duplicate_rows), None


def abandon_dataset_build(
    config: BuildConfig, build_id: str, error: BaseException, claim: ClaimHeartbeat | None = None
) -> None:
    """A planned dataset build that cannot start: record it ``failed`` and release its claim."""
    root = config.output.root
    if claim is not None:
        claim.stop(release=False)  # released below, after the manifest says failed
    manifest = read_manifest(root, build_id, allow_incomplete=True)
    finish_build(root, manifest, [], status="failed", error=f"{type(error).__name__}: {error}"[:2000])
    if config.output.dataset is not None:
        remove_claim(root, config.output.dataset, build_id)


def _existing_manifest(root: str, build_id: str) -> Manifest | None:
    try:
        return read_manifest(root, build_id, allow_incomplete=True)
    except PrmforgeError as error:
        if "missing" in str(error):
            return None
        raise


def _nothing_new(
    config: BuildConfig,
    manifest: Manifest,
    input_problems: int,
    skipped_rows: int,
    duplicate_rows: int,
) -> BuildSummary:
    """Finish a dataset build that found nothing to label as an empty complete build (no Prefect)."""
    root = config.output.root
    dataset = commit_section(root, manifest)
    final = finish_build(
        root,
        replace(manifest, dataset=dataset),
        [],
        extra_counts={
            "input": {"problems": input_problems, "skipped_rows": skipped_rows, "duplicate_rows": duplicate_rows}
        },
    )
    data_root = resolve_root(root)
    return BuildSummary(
        build_id=final.build_id,
        status=final.status,
        root=root,
        manifest_path=data_root.join("builds", final.build_id, "manifest.json"),
        shards_dir=data_root.join("builds", final.build_id),
        shard_files=0,
        problems_total=0,
        problems_failed=0,
        problems_skipped=0,
        input_rows_skipped=skipped_rows,
        batches_total=0,
        batches_reused=0,
        steps=0,
        positive_steps=0,
        tool_checked_steps=0,
        lean_checked_steps=0,
        rollouts=0,
        prompt_tokens=0,
        completion_tokens=0,
        generation_seconds=0.0,
        wall_seconds=0.0,
        failures=(),
        dataset=dataset["name"],
        dataset_plan=dict(dataset.get("plan") or {}),
    )


def live_usage_probe() -> Callable[[], TokenUsage]:
    """Token usage of the models held in this process (live tokens/s with the thread runner)."""
    return PROCESS_RESOURCES.usage


@flow(name="scheduled-build", log_prints=False)
def scheduled_build(
    preset: str | None = None,
    config: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    policy_factory: str | None = None,
) -> BuildSummary:
    """Deployment entry point: a fresh build from a preset and/or a config mapping + overrides.

    Each run gets a new build id; with ``output.dataset`` it labels only what the dataset does
    not hold yet and prints what it planned (new, changed, relabeled, already labeled). The batch
    tasks run on the task runner ``flow.task_runner``
    asks for (the labeling flow runs as a subflow with that runner). ``policy_factory``:
    ``"module:function"`` making a custom Policy from the policy config (None: the built-in
    backends).
    """
    from flows.config_load import config_from_parts

    build_config = config_from_parts(preset, config, overrides or [])
    summary = run_build(build_config, policy_factory=policy_factory, release_resources=False)
    if summary.dataset is not None:  # what a scheduled run did, on the serving process's stdout
        print(
            f"build {summary.build_id} ({summary.status}), "
            f"dataset {dataset_plan_line(summary.dataset, summary.dataset_plan)}",
            flush=True,
        )
    return summary


def make_deployment(
    name: str,
    cron: str,
    preset: str | None = None,
    config: BuildConfig | dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
    timezone_name: str = "UTC",
) -> Any:
    """A ``RunnerDeployment`` of :func:`scheduled_build` on a cron schedule (for ``flow.serve``)."""
    from prefect.schedules import Cron

    try:
        schedule = Cron(cron, timezone=timezone_name)
    except ValueError as error:
        raise ConfigError(f"--cron {cron!r}: {error}") from None
    config_data = config.model_dump(mode="json") if isinstance(config, BuildConfig) else (config or None)
    return scheduled_build.to_deployment(
        name=name,
        schedule=schedule,
        parameters={"preset": preset, "config": config_data, "overrides": list(overrides)},
        description=f"prmforge build ({preset or 'config'}) on cron {cron!r}",
        tags=["prmforge"],
    )
