"""prmforge CLI: ``build`` (run or resume a build), ``builds`` (list them), ``serve`` (on a schedule).

Prefect is imported only inside the commands, after :func:`configure_prefect_environment` has
pointed it at a local home (ephemeral mode, no server) unless the user configured otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from data_schemas.errors import ConfigError
from flows.config_load import load_build_config, parse_override, set_dotted, validate_config
from flows.runners import configure_prefect_environment, parent_bound_api_server
from labelers.config import BuildConfig

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="TOML build config file.", dir_okay=False)
PRESET_OPTION = typer.Option(None, "--preset", "-p", help="Start from a shipped preset: demo, small, gsm8k, math500.")
SET_OPTION = typer.Option(None, "--set", help="Override one config key: --set search.rounds=4 (repeatable).")
PROBLEMS_OPTION = typer.Option(
    None, "--problems", help="Problem file (JSONL/JSON/CSV/Parquet); default: the bundled set."
)
LIMIT_OPTION = typer.Option(None, "--limit", help="Label only the first N problems.", min=1)
MODEL_OPTION = typer.Option(
    None, "--model", help="Policy model (embedded preset name or GGUF path, vLLM model, served name)."
)
BACKEND_OPTION = typer.Option(None, "--backend", help="Policy backend: embedded, vllm or openai.")
SEED_OPTION = typer.Option(None, "--seed", help="Build seed (same seed + inputs + backend = same rows).")
ROOT_OPTION = typer.Option(None, "--root", help="Data root: a directory or a filesystem URI (s3://bucket/prefix).")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Show Prefect's own log lines.")
DATASET_OPTION = typer.Option(
    None,
    "--dataset",
    help="Grow dataset NAME: label only problems it does not hold (default with --preset: the preset's name).",
)
NO_DATASET_OPTION = typer.Option(False, "--no-dataset", help="A standalone build of every problem, in no dataset.")


def with_dataset(config: BuildConfig, dataset: str | None, no_dataset: bool, preset: str | None) -> BuildConfig:
    """``output.dataset``: --dataset, else the config's, else the preset's name; None with --no-dataset."""
    if no_dataset:
        if dataset is not None:
            raise ConfigError("give --dataset NAME or --no-dataset, not both")
        return config.with_overrides({"output.dataset": None})
    chosen = dataset or config.output.dataset or preset
    if chosen is not None:
        from data_schemas.datasets import check_dataset_name

        check_dataset_name(chosen)
    return config.with_overrides({"output.dataset": chosen})


def _flag_values(
    problems: Path | None, limit: int | None, model: str | None, backend: str | None, seed: int | None, root: str | None
) -> dict[str, Any]:
    return {
        "problems.path": str(problems) if problems is not None else None,
        "problems.limit": limit,
        "policy.model": model,
        "policy.backend": backend,
        "seed": seed,
        "output.root": root,
    }


def resume_config(root: str, build_id: str, overrides: list[str]) -> BuildConfig:
    """The config stored in a build's manifest, with ``--set`` overrides that keep its identity.

    Overrides that change the labeling (the config hash) are refused: the resumed build would
    mix rows of two configurations.
    """
    from data_schemas.manifest import read_manifest
    from flows.dataset_plans import refuse_complete

    manifest = read_manifest(root, build_id, allow_incomplete=True)
    data = dict(manifest.config)
    original = validate_config(data)
    for assignment in overrides:
        set_dotted(data, *parse_override(assignment))
    set_dotted(data, "output.root", root)
    config = validate_config(data)
    if config.config_hash() != original.config_hash():
        raise ConfigError(
            f"--set on resume may change only flow.* and output settings; these overrides change the "
            f"labeling of build {build_id!r} (config hash {original.config_hash()} -> {config.config_hash()})"
        )
    refuse_complete(manifest)  # nothing to resume; re-running a dataset build would make old labels look new
    return config


def build(
    config_file: Path | None = CONFIG_OPTION,
    preset: str | None = PRESET_OPTION,
    overrides: list[str] | None = SET_OPTION,
    problems: Path | None = PROBLEMS_OPTION,
    limit: int | None = LIMIT_OPTION,
    model: str | None = MODEL_OPTION,
    backend: str | None = BACKEND_OPTION,
    seed: int | None = SEED_OPTION,
    root: str | None = ROOT_OPTION,
    resume: str | None = typer.Option(
        None, "--resume", help="Continue build BUILD_ID (its own config; finished batches are skipped)."
    ),
    dataset: str | None = DATASET_OPTION,
    no_dataset: bool = NO_DATASET_OPTION,
    relabel: bool = typer.Option(
        False, "--relabel", help="Dataset build: label held problems again (all, or those --where selects)."
    ),
    where: str | None = typer.Option(
        None, "--where", help="With --relabel: SQL predicate over dataset_problems choosing what to relabel."
    ),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Label problems and write a build (Parquet shards + manifest), growing a dataset.

    Every run starts a new build id (<name>-<time>-<config hash>); after a crash or Ctrl-C,
    `prmforge build --resume BUILD_ID --root ROOT` finishes it without relabeling what is done.
    With --dataset NAME (default with --preset: the preset's name) a build labels only the
    problems the dataset does not already hold under the same labeling key.
    """
    if resume is not None:
        if (
            config_file
            or preset
            or any(v is not None for v in (problems, limit, model, backend, seed, dataset, where))
            or relabel
        ):
            raise ConfigError("--resume takes the build's own config; only --root and --set flow.*=... may be given")
        config = resume_config(root or BuildConfig().output.root, resume, list(overrides or []))
    else:
        config = load_build_config(
            config_file=config_file,
            preset=preset,
            overrides=overrides or [],
            flag_values=_flag_values(problems, limit, model, backend, seed, root),
        )
        config = with_dataset(config, dataset, no_dataset, preset)
    configure_prefect_environment(config.output.root, verbose=verbose)
    server = parent_bound_api_server()
    claim = None  # a planned dataset build's running claim (renewed from planning on)
    try:
        from flows.build import (
            abandon_dataset_build,
            live_tokens_probe,
            load_build_problems,
            run_build,
            start_dataset_build,
        )
        from flows.progress import BuildProgress
        from flows.resources import PROCESS_RESOURCES, prewarm
        from labelers.policy.factory import check_policy_runs

        # User mistakes and a llama.cpp that cannot run here end as one line before anything starts.
        load_build_problems(config)
        progress = BuildProgress(
            stream=sys.stdout, live_tokens=live_tokens_probe() if config.flow.task_runner == "threads" else None
        )
        build_id = resume
        if config.output.dataset is not None and resume is None:
            # Planned before the model check: a run with nothing new loads no model, starts no Prefect.
            build_id, nothing_new, claim = start_dataset_build(config, relabel=relabel, relabel_where=where)
            if nothing_new is not None:
                progress.print_summary(nothing_new)
                return
        elif relabel or where is not None:
            raise ConfigError("--relabel and --where apply to a dataset build: give --dataset NAME")
        try:
            check_policy_runs(config.policy)
        except BaseException as error:
            if build_id is not None and resume is None:
                abandon_dataset_build(config, build_id, error, claim)  # release the claim, record why
            raise
        if server is not None:
            server.start()
        if config.flow.task_runner == "threads":  # the tasks run in this process: load while Prefect starts
            prewarm(PROCESS_RESOURCES, config)
        if server is not None:
            server.wait_ready()

        summary = run_build(config, build_id=build_id, progress=progress, claim=claim)
        progress.print_summary(summary)
    finally:
        if claim is not None:
            claim.stop(release=False)  # stopped (and released) by run_build; here only if it never ran
        if server is not None:
            server.stop()


def builds(
    root: str | None = ROOT_OPTION,
) -> None:
    """List the builds under a data root with their status (from their manifests)."""
    from rich.console import Console
    from rich.table import Table

    from data_schemas.manifest import list_builds

    data_root = root or BuildConfig().output.root
    manifests = list_builds(data_root)
    console = Console(highlight=False)
    if not manifests:
        console.print(f"no builds under {data_root}")
        return
    table = Table(title=f"builds under {data_root}", title_justify="left")
    for column in (
        "build id", "dataset", "status", "started (UTC)", "finished", "problems", "failed", "steps", "shards"
    ):
        table.add_column(column)
    for manifest in manifests:
        stages = manifest.counts.get("stages", {})
        running = manifest.status == "running"
        table.add_row(
            manifest.build_id,
            (manifest.dataset or {}).get("name") or "-",
            manifest.status + (" (or interrupted: --resume)" if running else ""),
            manifest.started_at,
            manifest.finished_at or "-",
            str(stages.get("problems", "-")),
            str(manifest.failed_problems) if not running else "-",
            str(stages.get("steps", "-")),
            str(len(manifest.shards)),
        )
    console.print(table)


def serve(
    cron: str = typer.Option(..., "--cron", help='Cron schedule, e.g. "0 3 * * *" (03:00 every day).'),
    config_file: Path | None = CONFIG_OPTION,
    preset: str | None = PRESET_OPTION,
    overrides: list[str] | None = SET_OPTION,
    name: str = typer.Option("prmforge-build", "--name", help="Deployment name."),
    timezone_name: str = typer.Option("UTC", "--timezone", help="Time zone of the cron schedule."),
    dataset: str | None = DATASET_OPTION,
    no_dataset: bool = NO_DATASET_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Run builds on a cron schedule: serves a deployment until stopped (Ctrl-C).

    Each scheduled run is a new build of the dataset (--dataset NAME; default with --preset: the
    preset's name) that labels only new or changed problems. Point PREFECT_API_URL at a Prefect
    server (`prefect server start`) to see runs in the UI.
    """
    from flows.config_load import read_config_file

    config = load_build_config(config_file=config_file, preset=preset, overrides=overrides or [])  # validate now
    config = with_dataset(config, dataset, no_dataset, preset)
    if config.output.dataset is not None:
        overrides = [*(overrides or []), f"output.dataset={json.dumps(config.output.dataset)}"]
    configure_prefect_environment(config.output.root, verbose=verbose)
    server = parent_bound_api_server()
    try:
        from prefect import serve as prefect_serve

        from flows.build import make_deployment

        config_data = read_config_file(config_file) if config_file is not None else None
        if config.output.dataset is None and config_data is not None:  # --no-dataset over the file's output.dataset
            config_data.get("output", {}).pop("dataset", None)
        deployment = make_deployment(
            name, cron, preset=preset, config=config_data, overrides=list(overrides or []), timezone_name=timezone_name
        )
        if server is not None:
            server.wait_ready()
        typer.echo(f"serving deployment scheduled-build/{name} on cron {cron!r} ({timezone_name}); Ctrl-C stops")
        prefect_serve(deployment)
    finally:
        if server is not None:
            server.stop()


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.command("build")(build)
    app.command("builds")(builds)
    app.command("serve")(serve)
