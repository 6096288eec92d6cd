"""The ``build-dataset`` flow and how a build is run: :func:`build_dataset`, :func:`run_build`.

flows/build.py describes the walk of one build. Here: the flow itself (batches -> ``label-batch``
tasks -> ``write-shards`` -> manifest), :func:`run_build` (task runner, dataset plan and claim,
releasing the models), and the dataset build's start (:func:`start_dataset_build`: plan first,
before any model loads) and abandonment (:func:`abandon_dataset_build`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.futures import as_completed

from data_schemas.datasets import ClaimHeartbeat, remove_claim
from data_schemas.errors import ConfigError, PrmforgeError
from data_schemas.manifest import Manifest, finish_build, read_manifest, start_build, write_manifest
from data_schemas.records import ProblemOutcome, StepRow
from data_schemas.shards import ShardInfo, ShardWriter, resolve_root
from flows.build_batches import Batch, load_build_problems, make_batches, new_build_id, unused_build_id
from flows.build_tasks import (
    LabeledBatch,
    _retry_unless_user_error,
    failed_batch,
    label_batch_task,
    results_storage,
    write_shards_task,
    written_batch,
)
from flows.dataset_plans import commit_section, plan_dataset_build, planned_problems, refuse_complete
from flows.progress import BuildProgress, BuildSummary
from flows.resources import PROCESS_RESOURCES, PolicyFactorySpec
from flows.runners import make_task_runner
from labelers.config import BuildConfig
from labelers.pipeline import gold_reach
from labelers.policy.base import TokenUsage
from labelers.policy.usage import CostProfile, cpu_seconds
from labelers.signals.mc import MC


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
    if manifest.dataset is not None:  # a dataset build labels what its plan chose (flows/dataset_plans.py)
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
    reach = gold_reach(steps_seen) if MC.runs(config) else None
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
            **({"gold_reach": reach._asdict()} if reach is not None else {}),
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
        gold_reach=reach,
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
    """Plan a new build of ``config.output.dataset`` (flows/dataset_plans.py) before any model loads.

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


def live_tokens_probe() -> Callable[[], int]:
    """Tokens the models held in this process have sampled so far, runs in progress included
    (live tokens/s with the thread runner)."""
    return PROCESS_RESOURCES.live_tokens
