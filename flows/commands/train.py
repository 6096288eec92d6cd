"""prmforge CLI: ``prmforge train`` — a PRM from a build or an export, with the pinned trainer.

The work is done in labelers/training.py (a thin wrapper over trl 1.13.0); this module only
parses flags, exports a build when given one, and prints the result. torch/transformers/trl are
imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from data_schemas.errors import InputError, PrmforgeError


def train(
    base_model: str = typer.Option(
        ..., "--base-model", help="Local model directory or hub id (e.g. Qwen/Qwen2.5-Math-1.5B-Instruct)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Directory for the trained model, tokenizer and prmforge_train.json.", file_okay=False
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A prmforge export (trl or generative; Parquet or JSONL). Default: export the builds under --root.",
        dir_okay=False,
    ),
    root: str = typer.Option("prmforge-data", "--root", help="Data root to export from when --data is not given."),
    builds: list[str] | None = typer.Option(
        None, "--build", help="Build id to train on (repeatable; default: all complete builds)."
    ),
    format: str = typer.Option(
        "trl",
        "--format",
        "-f",
        help=(
            "trl (PRMTrainer, token-classification PRM) or generative (SFTTrainer on chat messages); "
            "math-shepherd only with --check-only."
        ),
    ),
    consensus: bool = typer.Option(False, "--consensus", help="Export only consensus paths (recommended)."),
    min_confidence: int | None = typer.Option(
        None,
        "--min-confidence",
        help="Export: cut paths at steps with disagreeing signals or fewer than N rollouts.",
        min=1,
    ),
    epochs: float = typer.Option(1.0, "--epochs", help="Training epochs (ignored with --max-steps)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimizer steps.", min=1),
    learning_rate: float = typer.Option(1e-5, "--learning-rate", help="AdamW learning rate."),
    batch_size: int = typer.Option(4, "--batch-size", help="Per-device batch size.", min=1),
    max_length: int = typer.Option(1024, "--max-length", help="Tokens per example (longer ones are cut).", min=8),
    gradient_checkpointing: bool = typer.Option(
        True,
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Trade compute for memory (trl's default: on).",
    ),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    check_only: bool = typer.Option(
        False, "--check-only", help="Only tokenize the export as the trainer would and check the label positions."
    ),
) -> None:
    r"""Train a PRM on prmforge data with trl 1.13.0 (needs the train extra: pip install -e '.\[train]')."""
    from labelers.config import TrainConfig
    from labelers.training import (
        check_prm_dataset,
        check_step_tags,
        export_format,
        load_tokenizer,
        read_export,
        require_training_packages,
    )

    if format not in ("trl", "generative", "math-shepherd"):
        raise InputError(f"--format must be trl, generative or math-shepherd, got {format!r}")
    if format == "math-shepherd" and not check_only:
        raise InputError(
            "math-shepherd exports are trained with OpenRLHF (docs/training.md); "
            "prmforge train --check-only checks the tokenizer"
        )
    require_training_packages()
    if data is None:
        data = out / f"train-{format}.parquet"
        _export_build(root, builds, format, str(data), consensus, min_confidence)
    records, metadata = read_export(data)
    found = export_format(records, metadata, data)
    if found != format:
        raise InputError(f"{data} is a {found} export; pass --format {found}")
    settings = TrainConfig(
        format="trl" if format == "math-shepherd" else format, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
        gradient_checkpointing=gradient_checkpointing, seed=seed,
    )
    if check_only:
        tokenizer = load_tokenizer(base_model)
        if format == "math-shepherd":
            count = check_step_tags(records, tokenizer)
            typer.echo(f"ok: {len(records)} record(s), {count} step tags, each one token carrying its step's label")
        elif format == "trl":
            count = check_prm_dataset(records, tokenizer, settings)
            typer.echo(
                f"ok: {len(records)} record(s), {count} labeled tokens, each on a step separator with its step's label"
            )
        else:
            typer.echo(f"ok: {len(records)} record(s) with chat messages (nothing to align)")
        return
    from labelers.training import train as run_training

    typer.echo(f"training {base_model} on {len(records)} {format} record(s) from {data} ...")
    result = run_training(records, base_model, out, settings)
    losses = result.losses
    typer.echo(
        f"trained {result.global_steps} step(s) in {result.seconds:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
        f"saved to {out}"
        + (f"; {result.labeled_tokens} step labels checked on their separator tokens" if result.labeled_tokens else "")
    )


def _export_build(root: str, builds: list[str] | None, format: str, out: str, consensus: bool,
                  min_confidence: int | None) -> None:
    from data_schemas.catalog import Catalog
    from data_schemas.export import export_paths

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with Catalog(root, build_id=builds or None) as catalog:
        if not catalog.build_ids:
            raise PrmforgeError(f"no complete builds under {root}")
        result = export_paths(catalog, format, out, consensus=consensus, min_confidence=min_confidence)
    typer.echo(
        f"exported {result.records} {format} record(s) ({result.steps} steps) "
        f"from {', '.join(catalog.build_ids)} to {out}"
    )
    for note in result.notes:
        typer.echo(f"note: {note}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.command("train")(train)
