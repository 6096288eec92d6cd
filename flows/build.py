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

Datasets: ``run_build`` first plans a build of ``output.dataset`` (flows/dataset_plans.py): under the
dataset lock it keeps only the problems the dataset does not hold under the same labeling key,
writes the running manifest with that plan and a claim; the flow then labels the planned
problems (on resume too), and the claim is renewed until the build ends.

Resume: ``label-batch`` results are cached and persisted under the build's directory, keyed on
(build id, batch problem ids, config hash, code version, policy factory). A rerun of the same
build id skips every batch whose shards the manifest lists with matching checksums, takes the
cached rows of batches labeled but not written, and labels only the rest. Shard names are
deterministic, so no row is ever written twice.

Code: :mod:`flows.build_batches` (problem files, problems, batches, build ids),
:mod:`flows.build_tasks` (the ``label-batch`` and ``write-shards`` tasks, the resume cache key,
failed and already-written batches), :mod:`flows.build_flow` (the flow, :func:`run_build`, dataset
build start and abandonment); this module holds the deployment (:func:`scheduled_build`, the
entry point ``flows/build.py:scheduled_build`` in prefect.yaml, and :func:`make_deployment`) and
re-exports the names other code imports from ``flows.build``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow

from data_schemas.errors import ConfigError
from flows.build_batches import (  # noqa: F401 - re-exported: flows.build's names before the split
    Batch,
    code_version,
    load_build_problems,
    make_batches,
    new_build_id,
    problem_files,
    unused_build_id,
)
from flows.build_flow import (  # noqa: F401 - re-exported
    _existing_manifest,
    _nothing_new,
    _open_manifest,
    abandon_dataset_build,
    build_dataset,
    live_tokens_probe,
    run_build,
    start_dataset_build,
)
from flows.build_tasks import (  # noqa: F401 - re-exported
    FAILED_STAGE_TASK,
    RESULTS_DIRNAME,
    LabeledBatch,
    _retry_unless_user_error,
    batch_cache_key,
    failed_batch,
    label_batch_task,
    results_storage,
    write_shards_task,
    written_batch,
)
from flows.progress import BuildSummary, dataset_plan_line
from labelers.config import BuildConfig


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
    tasks run on the task runner ``flow.task_runner`` asks for (the labeling flow runs as a subflow
    with that runner). ``policy_factory``: ``"module:function"`` making a custom Policy from the
    policy config (None: the built-in backends).
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
