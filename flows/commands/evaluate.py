"""prmforge CLI: label-quality evaluation and build reports.

``eval make-set``  error-injection set (GSM8K reference solutions with a known earliest error)
``eval run``       label a ProcessBench-format set with one or several signals (sharing their
                   rollouts), print the ProcessBench scores side by side
``eval compare``   the same as ``eval run`` (kept for scripts written before run took several)

Options follow the CLI's one convention: the input file is ``--input``, config overrides are
``--set key=value`` (as in ``build``).
``report``         a self-contained HTML report of a build, from its shards

The work is done in labelers/evaluation (which signals share which labeling pass:
``runner.run_signals``) and data_schemas/report; this module only parses flags, builds the
policy/verifiers a signal needs, shows progress, prints and writes results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from data_schemas.errors import InputError, PrmforgeError
from flows.commands import interrupt_exit_code, sigterm_as_interrupt
from flows.resources import ConfigResources, ResourceHolder
from labelers.evaluation.journal import DEFAULT_CHUNK, ChunkJournal
from labelers.evaluation.replay import ReplayPolicy

eval_app = typer.Typer(help="Measure label quality: error-injection sets, ProcessBench scores.", no_args_is_help=True)

INPUT_OPTION = typer.Option(..., "--input", "-i", dir_okay=False, help=(
    "ProcessBench-format file (JSON list or JSONL), or processbench:SUBSET (gsm8k, math, olympiadbench, omnimath) "
    "for the published set through datasets."))
GOLD_OPTION = typer.Option(None, "--gold", dir_okay=False, help=(
    "Your gold answers: JSON/JSONL objects with id or problem and gold_answer (or answer). Without it, gold is "
    "joined from the bundled GSM8K test / MATH-500 by problem text, else from a solved sibling solution."))
CONFIG_OPTION = typer.Option(None, "--config", "-c", help="TOML build config (policy, search, tool, fuse sections).",
                             dir_okay=False)
PRESET_OPTION = typer.Option(None, "--preset", "-p", help="Start from a shipped preset: demo, small, gsm8k, math500.")
SET_OPTION = typer.Option(None, "--set", help=(
    "Override one config key: --set policy.temperature=0.7 (repeatable), as in build."))
LABELS_HELP = ("Signals, comma-separated or repeated: tool, lean, mc, hybrid, judge, prm (a trained PRM, --prm DIR), "
               "answer:last / answer:first (baselines: the error is the last step / step 0 when the final answer "
               "is wrong); "
               "mc and hybrid take a mode "
               "(mc:per-step, mc:binary, hybrid:binary). Signals of one mode share one labeling pass "
               "(rollouts, judge); "
               "hybrid gets its own when mc is asked too (MC alone must not see the tool).")
MODEL_OPTION = typer.Option(None, "--model", help=(
    "Policy model for MC rollouts (embedded preset name or GGUF path, vLLM model, served name)."))
BACKEND_OPTION = typer.Option(None, "--backend", help="Policy backend: embedded, vllm or openai.")
MC_MODE_OPTION = typer.Option("per-step", "--mc-mode", help=(
    "MC rollouts from every prefix (per-step) or binary first-error search (binary)."))
K_OPTION = typer.Option(None, "--k", help="Rollouts per estimated prefix (default: search.mc_rollouts of the config).",
                        min=1)
LIMIT_OPTION = typer.Option(None, "--limit", help="Evaluate only the first N records of the set.", min=1)
ERRORS_OPTION = typer.Option(None, "--errors", min=0, help=(
    "With --correct: evaluate the first N erroneous solutions (file order; of those with a gold answer when a "
    "signal needs gold), a balanced set named by two numbers."))
CORRECT_OPTION = typer.Option(None, "--correct", min=0, help="With --errors: the first N correct solutions.")
SEED_OPTION = typer.Option(None, "--seed", help="Seed of the rollouts (default: the config's).")
PRM_OPTION = typer.Option(None, "--prm", help="Directory of a PRM trained by prmforge train (signal prm).",
                          file_okay=False)
CHUNK_OPTION = typer.Option(DEFAULT_CHUNK, "--chunk", min=1, help=(
    "Solutions per labeling call: progress moves per chunk and a crash loses at most one; a larger chunk keeps "
    "more first-error searches in flight, so the decoder's batches are fuller."))
THRESHOLD_OPTION = typer.Option(0.5, "--threshold", help="Signal prm: a step is bad when its P(good) is below this.")


def _check_overrides(overrides: list[str] | None) -> list[str]:
    """``--set`` takes key=value; a bare file name there is the old ``--set FILE`` spelling."""
    for item in overrides or []:
        if "=" not in item:
            looks_like_a_file = Path(item).suffix in (".json", ".jsonl") or Path(item).exists()
            hint = " (the set file is --input now)" if looks_like_a_file else ""
            raise InputError(f"--set takes key=value, got {item!r}{hint}")
    return list(overrides or [])


def _load_config(config_file: Path | None, preset: str | None, overrides: list[str] | None, model: str | None,
                 backend: str | None, seed: int | None) -> Any:
    from flows.config_load import load_build_config

    overrides = _check_overrides(overrides)
    return load_build_config(
        config_file, preset, overrides or [],
        {"policy.model": model, "policy.backend": backend, "seed": seed},
    )


def _read_records(set_file: Path, gold_file: Path | None = None) -> list[Any]:
    """The set's records (a file, or ``processbench:SUBSET``) with gold answers joined where they
    can be known (labelers/evaluation/goldjoin.py). Joined before any cut (_select): a solution
    left out may still tell its siblings the gold answer."""
    from labelers.evaluation.goldjoin import join_gold, load_processbench, load_tables
    from labelers.evaluation.processbench import read_set

    spec = str(set_file)
    records = load_processbench(spec) if spec.startswith("processbench:") else read_set(set_file)
    return join_gold(records, load_tables(gold_file))[0]


def _select(records: list[Any], limit: int | None, errors: int | None, correct: int | None,
            gold_only: bool) -> tuple[list[Any], dict[str, Any] | None]:
    """The records to evaluate: the first ``limit``, or the first ``errors`` erroneous and
    ``correct`` correct ones (of those with a gold answer when ``gold_only``: the others could not
    be scored by the signals asked); and that selection, for ``--out``. Prints what it took."""
    from labelers.evaluation.processbench import first_of_each_class

    if errors is None and correct is None:
        return (records[:limit] if limit is not None else records), None
    if limit is not None:
        raise InputError("--limit and --errors/--correct both choose the records to evaluate: use one of them")
    if errors is None or correct is None:
        given, missing = ("--errors", "--correct") if errors is not None else ("--correct", "--errors")
        raise InputError(f"{given} goes with {missing} (0 leaves a class out)")
    if errors == correct == 0:
        raise InputError("--errors 0 --correct 0 selects no solution")
    pool = [r for r in records if r.gold_answer] if gold_only else records
    among = "with a gold answer" if gold_only else "in the set"
    taken, took_errors, took_correct = first_of_each_class(pool, errors, correct)
    if not taken:
        raise InputError(f"--errors {errors} --correct {correct}: no such solution among the {len(pool)} {among}"
                         + (" (pass --gold FILE for gold answers)" if gold_only and not pool else ""))
    line = (f"selected: the first {took_errors} erroneous + {took_correct} correct solutions (file order) of the "
            f"{len(pool)} {among}")
    short = [f"{took} {kind}" for took, asked, kind in ((took_errors, errors, "erroneous"),
                                                        (took_correct, correct, "correct")) if took < asked]
    typer.echo(line + (f"; fewer than asked: {', '.join(short)}" if short else ""), err=True)
    return taken, {"errors": errors, "correct": correct, "among": among, "erroneous_taken": took_errors,
                   "correct_taken": took_correct}


def _coverage(records: list[Any]) -> Any:
    """Gold coverage of the records evaluated (printed and stored in ``--out``)."""
    from labelers.evaluation.goldjoin import GoldCoverage

    counts: dict[str, int] = {}
    for record in records:
        if record.gold_answer:
            counts[record.gold_source or "file"] = counts.get(record.gold_source or "file", 0) + 1
    return GoldCoverage(len(records), counts)


def parse_signals(text: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"tool,mc:binary,hybrid"`` (or a list of such, from a repeated ``--labels``) ->
    [("tool", None), ("mc", "binary"), ("hybrid", None)]."""
    from labelers.evaluation.runner import ANSWER_MODES, MC_MODES, VALUE_SIGNALS, eval_signals

    parsed: list[tuple[str, str | None]] = []
    chunks = [text] if isinstance(text, str) else text
    items = [piece for chunk in chunks for piece in chunk.split(",") if piece.strip()]
    for item in items:
        name, _, mode = item.strip().partition(":")
        if name not in eval_signals():
            raise InputError(f"--labels: unknown signal {name!r}; choose from {', '.join(eval_signals())}")
        if name == "answer":
            if mode not in ANSWER_MODES:
                modes = ", ".join("answer:" + m for m in ANSWER_MODES)
                raise InputError(f"--labels: {item.strip()!r}: answer takes a mode: {modes}")
        elif mode and (name not in VALUE_SIGNALS or mode not in MC_MODES):
            raise InputError(f"--labels: {item.strip()!r}: a mode ({', '.join(MC_MODES)}) goes only with mc or hybrid")
        if (name, mode or None) in parsed:
            raise InputError(f"--labels: {item.strip()!r} is named twice")
        parsed.append((name, mode or None))
    if not parsed:
        raise InputError("--labels: name at least one signal")
    return parsed


class _EvalResources:
    """The holder's resources (flows/resources.py; builds get theirs from the same holder), with
    the policy and the judge wrapped for evaluation: the passes of one run share their rollouts
    (labelers/evaluation/replay.py) and tell a progress line what they sample (``watch``)."""

    def __init__(self, resources: ConfigResources) -> None:
        self.resources = resources
        self._policy: ReplayPolicy | None = None
        self._judge: ReplayPolicy | None = None
        self._judge_asked = False

    def policy(self) -> ReplayPolicy:
        if self._policy is None:
            self._policy = ReplayPolicy(self.resources.policy())
        return self._policy

    def step_judge(self) -> ReplayPolicy | None:
        """A separate judge model's policy when ``judge.model`` is set, else None (the policy judges)."""
        if not self._judge_asked:
            judge = self.resources.step_judge()
            self._judge = None if judge is None else ReplayPolicy(judge)
            self._judge_asked = True
        return self._judge

    def watch(self, progress: Any) -> None:
        """Feed what the policies sample to ``progress`` (a PassProgress), or stop feeding (None)."""
        for policy in (self._policy, self._judge):
            if policy is not None:
                policy.on_generate = None if progress is None else progress.sampled
        if progress is not None and self._policy is not None:
            # The embedded batched backend counts tokens while a run is in progress.
            progress.watch_tokens(getattr(self._policy, "live_sampled_tokens", None))

    def tool(self) -> Any:
        return self.resources.tool()

    def lean(self) -> Any:
        return self.resources.lean()

    def prm(self) -> Any:
        return self.resources.prm()

    def close(self) -> None:
        self.resources.close()


class _PassLines:
    """How ``eval run`` shows a labeling pass (labelers/evaluation/runner.PassWatch): lines on
    stderr, and a progress line the pass's policies feed while it runs."""

    def __init__(self, resources: _EvalResources) -> None:
        self.resources = resources
        self.progress: Any = None

    def say(self, line: str) -> None:
        typer.echo(line, err=True)

    def open_pass(self, label: str, solutions: int, completions: str = "rollouts") -> None:
        from flows.progress import PassProgress

        self.progress = PassProgress(label, solutions, completions=completions)

    def start_pass(self) -> Any:
        self.resources.watch(self.progress)
        self.progress.start()
        return self.progress.solutions

    def expected(self, per_solution: Sequence[float]) -> None:
        self.progress.expect(per_solution)

    def planned(self, plan: Any, first: int, end: int) -> None:
        self.progress.add_plan(plan, end)

    def close_pass(self) -> None:
        self.progress.stop()
        self.resources.watch(None)
        self.progress = None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(results: Sequence[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("signal", "mode", "k", "model", "err/cor", "acc_err", "acc_cor", "F1", "F1 95% CI", "step P(neg)",
                   "step R(neg)",
                   "rollouts", "rollouts/step", "tokens", "failed", "seconds"):
        table.add_column(column, justify="left" if column in ("signal", "mode", "model") else "right")
    for result in results:
        run, score = result.run, result.score
        table.add_row(
            run.signal, run.mc_mode or "-", _fmt(run.k), run.model_id or "-", f"{score.n_error}/{score.n_correct}",
            _fmt(score.acc_err), _fmt(score.acc_cor), _fmt(score.f1),
            "-" if score.f1_ci is None else f"{score.f1_ci[0]:.3f}-{score.f1_ci[1]:.3f}", _fmt(score.step_precision),
            _fmt(score.step_recall), str(run.rollouts), _fmt(run.rollouts_per_step, 2),
            str(run.prompt_tokens + run.completion_tokens), str(len(run.failures)), _fmt(run.wall_seconds, 1),
        )
    return table


def _write_json(path: Path, payload: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as error:
        raise PrmforgeError(f"cannot write {path}: {error.strerror}") from None


def _payload(set_file: Path, records: Sequence[Any], results: Sequence[Any]) -> dict[str, Any]:
    return {"set": str(set_file), "records": len(records), "results": [r.to_json() for r in results]}


@eval_app.command("make-set")
def make_set(
    out: Path = typer.Option(..., "--out", help="Output file: .json = JSON list (as ProcessBench ships), else JSONL.",
                             dir_okay=False),
    n_error: int = typer.Option(300, "--n-error", help="Solutions with one injected error.", min=0),
    n_correct: int = typer.Option(300, "--n-correct", help="Untouched correct solutions.", min=0),
    n_two_errors: int = typer.Option(0, "--n-two-errors", min=0, help=(
        "Solutions with a reasoning error and a later slip (label: the first; gsm8k only).")),
    n_right_answer: int = typer.Option(0, "--n-right-answer", min=0, help=(
        "Solutions with a slip that is not carried forward: the final answer is right (gsm8k only).")),
    seed: int = typer.Option(0, "--seed", help="Same seed + input = same file."),
    source: str = typer.Option("gsm8k", "--source", help=(
        "gsm8k (all three corruption kinds) or math500 (slips in the final computation).")),
    input_file: Path | None = typer.Option(None, "--input", dir_okay=False, help=(
        "GSM8K JSONL (question, answer) or MATH JSONL (problem, solution, answer); default: the bundled problems.")),
) -> None:
    """Build an error-injection set: solutions with a known earliest wrong step plus correct ones."""
    from labelers.evaluation.inject import build_injection_set, build_math_injection_set, read_gsm8k, read_math
    from labelers.evaluation.processbench import write_set

    if source not in ("gsm8k", "math500"):
        raise InputError(f"--source must be gsm8k or math500, got {source!r}")
    if input_file is None:
        from data_schemas.problems import bundled_problems_path

        input_file = bundled_problems_path()
    if source == "gsm8k":
        records, summary = build_injection_set(read_gsm8k(input_file), n_error, n_correct, seed, source,
                                               n_two_errors, n_right_answer)
    else:
        if n_two_errors or n_right_answer:
            raise InputError("--n-two-errors and --n-right-answer need --source gsm8k (calculator annotations)")
        records, summary = build_math_injection_set(read_math(input_file), n_error, n_correct, seed, source)
    write_set(out, records)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.kinds.items())) or "none"
    extra = f"; {n_two_errors} with two errors" if n_two_errors else ""
    extra += f"; {n_right_answer} with a right final answer despite an error" if n_right_answer else ""
    typer.echo(
        f"wrote {len(records)} solutions to {out} ({n_error} with an injected error{extra}: {kinds}; "
        f"{n_correct} correct); "
        f"{summary.eligible} of {summary.source_rows} reference solutions could take a consistent corruption"
    )


@eval_app.command("run")
def run(
    set_file: Path = INPUT_OPTION,
    labels: list[str] = typer.Option(..., "--labels", help=LABELS_HELP),
    config_file: Path | None = CONFIG_OPTION,
    preset: str | None = PRESET_OPTION,
    overrides: list[str] | None = SET_OPTION,
    model: str | None = MODEL_OPTION,
    backend: str | None = BACKEND_OPTION,
    mc_mode: str = MC_MODE_OPTION,
    k: int | None = K_OPTION,
    limit: int | None = LIMIT_OPTION,
    errors: int | None = ERRORS_OPTION,
    correct: int | None = CORRECT_OPTION,
    seed: int | None = SEED_OPTION,
    out: Path | None = typer.Option(None, "--out", dir_okay=False, help=(
        "Write the scores, costs and per-record failures as JSON. Labeled chunks are kept in OUT.partial meanwhile: "
        "the same command run again after an interruption labels only what is missing.")),
    prm: Path | None = PRM_OPTION,
    threshold: float = THRESHOLD_OPTION,
    gold: Path | None = GOLD_OPTION,
    chunk: int = CHUNK_OPTION,
) -> None:
    """Label a set's steps with one or more signals and score earliest-error identification
    (ProcessBench); signals of one MC mode share their rollouts."""
    signals = parse_signals(labels)
    title = f"ProcessBench score on {set_file.name}" if len(signals) == 1 else f"Signals compared on {set_file.name}"
    _evaluate(set_file, signals, config_file, preset, overrides, model, backend, mc_mode, k, limit, seed, out, title,
              prm, threshold, gold, chunk, errors, correct)


@eval_app.command("compare")
def compare(
    set_file: Path = INPUT_OPTION,
    labels: list[str] = typer.Option(["tool,mc,hybrid"], "--labels", help=LABELS_HELP),
    config_file: Path | None = CONFIG_OPTION,
    preset: str | None = PRESET_OPTION,
    overrides: list[str] | None = SET_OPTION,
    model: str | None = MODEL_OPTION,
    backend: str | None = BACKEND_OPTION,
    mc_mode: str = MC_MODE_OPTION,
    k: int | None = K_OPTION,
    limit: int | None = LIMIT_OPTION,
    errors: int | None = ERRORS_OPTION,
    correct: int | None = CORRECT_OPTION,
    seed: int | None = SEED_OPTION,
    out: Path | None = typer.Option(None, "--out", dir_okay=False, help=(
        "Write all results as JSON (an interrupted run resumes from OUT.partial, as eval run).")),
    prm: Path | None = PRM_OPTION,
    threshold: float = THRESHOLD_OPTION,
    gold: Path | None = GOLD_OPTION,
    chunk: int = CHUNK_OPTION,
) -> None:
    """Several signals on the same set, one table side by side (same as eval run)."""
    _evaluate(set_file, parse_signals(labels), config_file, preset, overrides, model, backend, mc_mode, k, limit,
              seed, out, f"Signals compared on {set_file.name}", prm, threshold, gold, chunk, errors, correct)


def _evaluate(set_file: Path, signals: list[tuple[str, str | None]], config_file: Path | None, preset: str | None,
              overrides: list[str] | None, model: str | None, backend: str | None, mc_mode: str, k: int | None,
              limit: int | None, seed: int | None, out: Path | None, title: str, prm: Path | None = None,
              threshold: float = 0.5, gold_file: Path | None = None, chunk: int = DEFAULT_CHUNK,
              errors: int | None = None, correct: int | None = None) -> None:
    from labelers.evaluation.runner import MC_MODES, gold_signals, run_signals

    if mc_mode not in MC_MODES:
        raise InputError(f"--mc-mode must be one of {', '.join(MC_MODES)}, got {mc_mode!r}")

    gold_free = [(s, m) for s, m in signals if s not in gold_signals()]
    needs_gold = len(gold_free) < len(signals)
    records, selection = _select(_read_records(set_file, gold_file), limit, errors, correct, gold_only=needs_gold)
    coverage = _coverage(records)
    typer.echo(coverage.line(), err=True)
    with_gold = [r for r in records if r.gold_answer]
    without_gold = [r for r in records if not r.gold_answer]
    if needs_gold and not with_gold:
        first = next(s for s, _ in signals if s in gold_signals())
        raise InputError(f"--labels {first} needs gold answers and none of the {len(records)} solutions has one "
                         "(no GSM8K / MATH-500 match, no solved sibling): pass --gold FILE, or use gold-free signals")
    config = _load_config(config_file, preset, overrides, model, backend, seed)
    # The holder builds use too (flows/resources.py): eval and build get the same policy and judge.
    resources = _EvalResources(ResourceHolder().for_config(config, prm_dir=prm))
    watch = _PassLines(resources)
    journal = ChunkJournal(out.with_name(out.name + ".partial")) if out is not None else None
    if journal is not None and journal.held:
        typer.echo(f"resuming: {journal.path} holds {journal.held} labeled chunk(s); those asked again are not "
                   "labeled again", err=True)
    try:
        with sigterm_as_interrupt():  # a scheduler's stop gets the resume line below, as Ctrl-C does
            results = run_signals(with_gold if needs_gold else records, signals, config, mc_mode, k, resources,
                                  watch, threshold, chunk, journal)
            apart = run_signals(without_gold, gold_free, config, mc_mode, k, resources, watch, threshold, chunk,
                                journal) if needs_gold and without_gold and gold_free else []
    except KeyboardInterrupt as interrupt:
        kept = f": {journal.path} keeps {journal.held} labeled chunk(s), the same command resumes from them" \
            if journal is not None else " (with --out, a rerun would resume instead of starting over)"
        typer.echo(f"interrupted{kept}", err=True)
        raise typer.Exit(interrupt_exit_code(interrupt)) from None
    finally:
        resources.close()
    # The table has 16 columns: never squeeze it below a readable width (pipes, CI logs).
    console = Console(width=max(Console().width, 200))
    if needs_gold and without_gold:
        title += f" ({len(with_gold)} solutions with a gold answer)"
    console.print(results_table(results, title))
    if apart:
        apart_title = f"{len(without_gold)} solutions without a gold answer (gold-free signals only)"
        console.print(results_table(apart, apart_title))
    elif needs_gold and without_gold:
        console.print(f"{len(without_gold)} solutions without a gold answer not scored: every signal asked needs gold")
    for result in [*results, *apart]:
        if result.score.by_corruption:
            kinds = ", ".join(f"{kind} {accuracy:.3f}" for kind, accuracy in result.score.by_corruption.items())
            console.print(f"{result.run.signal}: exact-index accuracy by corruption kind: {kinds}")
        for note in result.run.notes:
            console.print(f"{result.run.signal}: {note}")
        if result.run.profile is not None:
            console.print(f"{result.run.signal}: cost profile: {result.run.profile.line()}")
        if result.run.failures:
            first_id, first_error = sorted(result.run.failures.items())[0]
            console.print(f"{result.run.signal}: {len(result.run.failures)} record(s) failed to label "
                          f"(scored as misses); first: {first_id}: {first_error}")
    console.print(coverage.line())
    if out is not None:
        payload = _payload(set_file, records, results)
        payload["gold"] = coverage.to_json()
        # what the sampling and fusion ran with, so a reader (eval rescore) knows which variant a result is
        payload["config"] = {"search": config.search.model_dump(mode="json"),
                             "fuse": config.fuse.model_dump(mode="json")}
        payload["gold_sources"] = {r.id: r.gold_source or "file" for r in records if r.gold_answer}
        if selection is not None:
            payload["selection"] = selection
        if needs_gold and without_gold:
            payload["records"] = len(with_gold)
            payload["results_without_gold"] = [r.to_json() for r in apart]
            payload["records_without_gold"] = len(without_gold)
        _write_json(out, payload)
        console.print(f"wrote {out}" + (f" ({journal.resumed} chunk(s) taken from the interrupted run)"
                                        if journal is not None and journal.resumed else ""))
        if journal is not None:
            journal.remove()


@eval_app.command("rescore")
def rescore(
    set_file: Path = typer.Option(..., "--input", "-i", dir_okay=False, help="The set the stored runs labeled."),
    runs: list[Path] = typer.Option(..., "--runs", dir_okay=False, help="eval run --out files (repeatable)."),
    overrides: list[str] | None = typer.Option(None, "--set", help=(
        "A fusion variant to score besides the standard ones: --set fuse.key=value (repeatable, one variant).")),
    gold: Path | None = GOLD_OPTION,
) -> None:
    """Score fusion variants of stored runs without sampling again (docs/evaluation.md)."""
    from labelers.evaluation.rescore import variant_rows

    payloads = []
    for path in runs:
        try:
            payloads.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"--runs {path}: not a readable eval run --out file ({error})") from None
    extra: dict[str, dict[str, Any]] = {}
    items = _check_overrides(overrides)
    if items:
        off_fusion = [item for item in items if not item.startswith("fuse.")]
        if off_fusion:
            raise InputError(f"--set {off_fusion[0]}: only fuse.* keys change fusion (others change sampling: "
                             "rerun eval run)")
        fuse = _load_config(None, None, items, None, None, None).fuse
        extra[", ".join(items)] = fuse.model_dump()
    records = _read_records(set_file, gold)
    scored = {rid for payload in payloads for result in payload.get("results", []) for rid in result["predictions"]}
    records = [r for r in records if r.id in scored]
    table = Table(title=f"Fusion variants re-scored on {set_file.name} ({len(records)} solutions)")
    for column in ("variant", "n", "acc_err", "acc_cor", "F1", "F1 95% CI", "step P(neg)", "rollouts/solution", "note"):
        table.add_column(column, justify="left" if column in ("variant", "note") else "right")
    for row in variant_rows(records, payloads, extra=extra):
        score = row.score
        table.add_row(row.name, str(row.solutions), _fmt(score.acc_err), _fmt(score.acc_cor), _fmt(score.f1),
                      "-" if score.f1_ci is None else f"{score.f1_ci[0]:.3f}-{score.f1_ci[1]:.3f}",
                      _fmt(score.step_precision), _fmt(row.rollouts_per_solution, 1), row.note)
    Console(width=max(Console().width, 160)).print(table)


def report(
    build_id: str = typer.Argument(..., help="Build id (see prmforge builds)."),
    root: str = typer.Option("prmforge-data", "--root", help="Data root: a directory or a filesystem URI."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write.", dir_okay=False),
) -> None:
    """A self-contained HTML report of a build (figures embedded as PNG)."""
    from data_schemas.report import write_report

    result = write_report(root, build_id, str(out))
    typer.echo(f"wrote {out}: {len(result.figures)} figures ({', '.join(result.figures)})")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
    app.add_typer(eval_app, name="eval")
    app.command("report")(report)
