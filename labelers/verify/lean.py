"""Lean 4 step verification (Safe): formalize each step's claims, prove them or their negation.

Per step (:class:`~labelers.verify.base.StepContext`):

1. the claims of the step (:func:`labelers.verify.claims.extract_claims`) become Lean statements
   through deterministic templates (:mod:`labelers.verify.lean_formalize`); when no template fits
   and ``LeanConfig.llm_formalize`` is on, the policy is asked for a theorem with ``sorry``
   (or ``NO_CHECK``);
2. every statement is checked through a backend (:mod:`labelers.verify.lean_runner`: batch files
   compiled with ``lake env lean --json``; or lean-dojo's command mode): the statement must
   elaborate with exactly one ``sorry``; then each tactic of ``LeanConfig.tactics`` is tried on
   it and on its negation;
3. the step gets one :class:`~labelers.verify.base.LeanCheck`:

   ============================  =============================================================
   state                         when
   ============================  =============================================================
   ``proved``                    every statement of the step was proved
   ``disproved``                 the negation of at least one statement was proved
   ``no_check``                  the step has no checkable claim (or the model said NO_CHECK)
   ``formalization_failed``      a claim has no statement that Lean accepts, or a statement
                                 was neither proved nor refuted ("unproved" in the message)
   ``timeout``                   Lean ran out of time (heartbeats or the process limit)
   ``lean_unavailable``          no toolchain / Mathlib project (stated once, see below)
   ``disabled``                  Lean verification is off in this build
   ============================  =============================================================

Without a toolchain a build still runs: :func:`make_lean_verifier` returns an
:class:`UnavailableLeanVerifier` that logs ONE warning and exposes ``unavailable_reason`` for the
build summary, and every step gets ``lean_unavailable``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data_schemas.errors import ConfigError
from labelers.config import LeanConfig
from labelers.diagnostics import DoctorCheck, DoctorItem
from labelers.identity import derive_seed, prefix_hash
from labelers.policy.base import GenerationRequest, Policy
from labelers.verify.base import LeanCheck, LeanState, StepContext
from labelers.verify.lean_formalize import (
    Formalization,
    LlmFormalization,
    TemplateResult,
    formalization_messages,
    parse_formalization_reply,
    step_formalizations,
)
from labelers.verify.lean_runner import (
    TRACE_PREFIX,
    BatchChecker,
    Declaration,
    DeclOutcome,
    LeanCache,
    LeanMessage,
    declarations_for,
    outcome_from_messages,
)

log = logging.getLogger("prmforge.lean")

PROJECT_ENV = "PRMFORGE_LEAN_PROJECT"
SETUP_HINT = (
    "install elan (curl https://raw.githubusercontent.com/leanprover/elan/master/elan-init.sh -sSf | sh), "
    "create a Mathlib project (lake new prmforge_lean math; cd prmforge_lean; lake exe cache get), "
    f"then set lean.project or {PROJECT_ENV} to its path (docs/lean.md)"
)

# "unchecked": a statement over free symbols that is not an identity (an equation in unknowns,
# "t = 2 * x"): it says nothing about the step either way, like a step without claims.
ClaimState = Literal["proved", "disproved", "unproved", "unchecked", "formalization_failed", "timeout", "unavailable"]


# ---------------------------------------------------------------------------------------------
# Toolchain and project discovery


@dataclass(frozen=True)
class LeanSetup:
    """What was found of a Lean installation; ``problem`` is None when it is usable."""

    lean: str | None
    lake: str | None
    version: str | None
    project: Path | None
    problem: str | None

    @property
    def usable(self) -> bool:
        return self.problem is None


def resolve_project(config: LeanConfig | None, env: Mapping[str, str] | None = None) -> Path | None:
    environ = os.environ if env is None else env
    raw = (config.project if config is not None else None) or environ.get(PROJECT_ENV)
    return Path(raw).expanduser() if raw else None


def project_problem(project: Path) -> str | None:
    """Why ``project`` is not a Lake project with a built Mathlib, or None."""
    if not project.is_dir():
        return f"Lean project {project} does not exist"
    if not any((project / name).is_file() for name in ("lakefile.lean", "lakefile.toml")):
        return f"{project} has no lakefile.lean or lakefile.toml"
    mathlib = project / ".lake" / "packages" / "mathlib"
    if not mathlib.is_dir():
        return f"{project} has no Mathlib dependency (.lake/packages/mathlib missing; run lake update)"
    built = [
        mathlib / ".lake" / "build" / "lib" / "Mathlib.olean",
        mathlib / ".lake" / "build" / "lib" / "lean" / "Mathlib.olean",
    ]
    if not any(p.is_file() for p in built):
        return f"Mathlib in {project} is not built (run lake exe cache get in the project)"
    return None


def probe_lean(config: LeanConfig | None = None, env: Mapping[str, str] | None = None) -> LeanSetup:
    """Find ``lean`` and ``lake`` on PATH, ask ``lean --version``, check the project."""
    environ = dict(os.environ if env is None else env)
    search_path = environ.get("PATH", "")
    lean = shutil.which("lean", path=search_path)
    lake = shutil.which("lake", path=search_path)
    project = resolve_project(config, environ)
    if lean is None or lake is None:
        missing = " and ".join(n for n, p in (("lean", lean), ("lake", lake)) if p is None)
        return LeanSetup(lean, lake, None, project, f"no Lean toolchain: {missing} not on PATH")
    try:
        done = subprocess.run([lean, "--version"], capture_output=True, text=True, timeout=30, env=environ)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return LeanSetup(lean, lake, None, project, f"lean --version failed: {exc}")
    version = (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""
    if done.returncode != 0 or not version:
        return LeanSetup(lean, lake, None, project, f"lean --version exited with code {done.returncode}")
    if project is None:
        return LeanSetup(lean, lake, version, None, f"no Mathlib project configured (lean.project or {PROJECT_ENV})")
    problem = project_problem(project)
    return LeanSetup(lean, lake, version, project, problem)


def doctor_check(config: LeanConfig | None = None, env: Mapping[str, str] | None = None) -> DoctorItem:
    """Whether Lean 4 verification can run here, and how to set it up when it cannot."""
    setup = probe_lean(config, env)
    if setup.usable:
        return DoctorItem("Lean 4", True, f"{setup.version}; lake at {setup.lake}; Mathlib project {setup.project}")
    found = f" (found {setup.version})" if setup.version else ""
    return DoctorItem("Lean 4", False, f"{setup.problem}{found}", SETUP_HINT)


# What ``prmforge doctor`` checks for Lean (registered in labelers/doctor.py): a toolchain and a
# Mathlib project, not Python distributions (lean-dojo only for its optional backend).
DOCTOR_CHECK = DoctorCheck("Lean 4", doctor_check)


# ---------------------------------------------------------------------------------------------
# Verifiers


class DisabledLeanVerifier:
    """Lean verification is off in this build: every step is ``disabled``."""

    unavailable_reason: str | None = None

    def check_steps(self, steps: Sequence[StepContext]) -> list[LeanCheck]:
        return [LeanCheck(LeanState.DISABLED) for _ in steps]

    def close(self) -> None:
        return None


class UnavailableLeanVerifier:
    """Lean was asked for but cannot run: every step is ``lean_unavailable``; said once."""

    def __init__(self, reason: str) -> None:
        self.unavailable_reason = reason
        log.warning("Lean verification unavailable, steps are recorded as lean_unavailable: %s", reason)

    def check_steps(self, steps: Sequence[StepContext]) -> list[LeanCheck]:
        return [LeanCheck(LeanState.LEAN_UNAVAILABLE, message=self.unavailable_reason) for _ in steps]

    def close(self) -> None:
        return None


@dataclass
class _StepPlan:
    """A step's statements (template or LLM) and the claims that could not be formalized."""

    formalizations: list[Formalization]
    failures: list[str]
    no_check_reason: str | None = None


@dataclass(frozen=True)
class ClaimResult:
    state: ClaimState
    formalization: Formalization
    tactic: str | None = None
    detail: str | None = None


def claim_result(form: Formalization, outcomes: Mapping[str, DeclOutcome]) -> ClaimResult:
    """One statement's result from its check / prove / refute outcomes."""
    check = outcomes[f"{form.name}_chk"]
    prove = outcomes[form.name]
    refute = outcomes.get(f"{form.name}_neg")
    for outcome in (check, prove, refute):
        if outcome is not None and outcome.status == "unavailable":
            return ClaimResult("unavailable", form, detail="; ".join(outcome.messages))
    if check.status == "timeout":
        return ClaimResult("timeout", form, detail="; ".join(check.messages))
    if check.status != "ok":
        return ClaimResult(
            "formalization_failed", form, detail="Lean rejected the statement: " + "; ".join(check.messages)
        )
    proved = prove.status == "ok"
    refuted = refute is not None and refute.status == "ok"
    if proved and refuted:
        return ClaimResult(
            "formalization_failed",
            form,
            detail="both the statement and its negation were proved (inconsistent hypotheses)",
        )
    if proved:
        return ClaimResult("proved", form, tactic=prove.tactic)
    if refuted:
        return ClaimResult("disproved", form, tactic=refute.tactic if refute else None)
    if prove.status in ("timeout", "crashed") or (refute is not None and refute.status in ("timeout", "crashed")):
        detail = "; ".join(prove.messages + (refute.messages if refute else ()))
        return ClaimResult("timeout", form, detail=detail)
    if not form.negatable:
        return ClaimResult("unchecked", form, detail="not an identity in its free symbols")
    return ClaimResult("unproved", form, detail="unproved: no tactic closed the statement or its negation")


def _statement_line(result: ClaimResult) -> str:
    form = result.formalization
    if result.state == "proved" and result.tactic:
        return f"{form.statement} := by {result.tactic}"
    if result.state == "disproved" and result.tactic:
        return f"theorem {form.name}_neg {form.negated_signature} := by {result.tactic}"
    return f"{form.statement} := sorry"


def step_check(plan: _StepPlan, outcomes: Mapping[str, DeclOutcome]) -> LeanCheck:
    """Aggregate a step's statements into one LeanCheck (see the module doc for the rules)."""
    if not plan.formalizations:
        if plan.failures:
            return LeanCheck(LeanState.FORMALIZATION_FAILED, message="; ".join(plan.failures))
        return LeanCheck(LeanState.NO_CHECK, message=plan.no_check_reason or "no checkable claim")
    all_results = [claim_result(f, outcomes) for f in plan.formalizations]
    results = [r for r in all_results if r.state != "unchecked"]
    if not results and not plan.failures:
        return LeanCheck(
            LeanState.NO_CHECK,
            statement="\n".join(_statement_line(r) for r in all_results),
            message="only equations in unknowns, none of them an identity",
        )
    statement = "\n".join(_statement_line(r) for r in all_results)
    tactics = [r.tactic for r in results if r.tactic]
    disproved = [r for r in results if r.state == "disproved"]
    if disproved:
        first = disproved[0]
        return LeanCheck(
            LeanState.DISPROVED,
            statement=statement,
            tactic=first.tactic,
            message=(
                f"negation of {first.formalization.name} proved by {first.tactic}: "
                f"{first.formalization.claim_text}"
            ),
        )
    if not plan.failures and all(r.state == "proved" for r in results):
        closing = ", ".join(dict.fromkeys(tactics))
        return LeanCheck(LeanState.PROVED, statement=statement, tactic=closing, message=f"proved by {closing}")
    for state, lean_state in (("unavailable", LeanState.LEAN_UNAVAILABLE), ("timeout", LeanState.TIMEOUT)):
        hit = [r for r in results if r.state == state]
        if hit:
            return LeanCheck(lean_state, statement=statement, message="; ".join(r.detail or state for r in hit))
    details = [f"{r.formalization.name}: {r.detail}" for r in results if r.state != "proved"]
    proved = sum(r.state == "proved" for r in results)
    summary = f"{proved} of {len(results) + len(plan.failures)} claims proved"
    return LeanCheck(
        LeanState.FORMALIZATION_FAILED,
        statement=statement,
        tactic=", ".join(dict.fromkeys(tactics)) or None,
        message="; ".join([summary, *details, *plan.failures]),
    )


class FormalLeanVerifier:
    """Formalize + check through a backend; subclasses implement :meth:`check_declarations`."""

    def __init__(self, config: LeanConfig, policy: Policy | None = None) -> None:
        self.config = config
        self.policy = policy if config.llm_formalize else None
        if config.llm_formalize and policy is None:
            log.warning("lean.llm_formalize is on but no policy was given: templates only")

    @property
    def unavailable_reason(self) -> str | None:
        return None

    def check_declarations(self, declarations: Sequence[Declaration]) -> dict[str, DeclOutcome]:
        raise NotImplementedError

    def plan_steps(self, steps: Sequence[StepContext]) -> list[_StepPlan]:
        """Template statements for every step, then one policy call for the steps that need it."""
        from labelers.verify.claims import extract_claims

        plans: list[_StepPlan] = []
        needs_llm: list[int] = []
        for index, step in enumerate(steps):
            try:
                results: list[TemplateResult] = step_formalizations(extract_claims(step.step))
            except Exception as exc:  # a claim extractor bug must not lose the step
                results = [TemplateResult(None, reason=f"claim extraction failed: {exc}")]
            forms = [r.formalization for r in results if r.formalization is not None]
            failures = [r.reason or "no template" for r in results if r.formalization is None and not r.skipped]
            plan = _StepPlan(forms, failures)
            if not forms and self.policy is not None:
                needs_llm.append(index)
            plans.append(plan)
        if needs_llm and self.policy is not None:
            self._formalize_with_policy(steps, plans, needs_llm)
        return plans

    def _formalize_with_policy(self, steps: Sequence[StepContext], plans: list[_StepPlan], indices: list[int]) -> None:
        assert self.policy is not None
        requests = []
        for index in indices:
            step = steps[index]
            key = prefix_hash(step.question, (*step.previous_steps, step.step))
            requests.append(
                GenerationRequest(
                    messages=formalization_messages(step),
                    n=1,
                    max_tokens=self.config.formalize_max_tokens,
                    temperature=0.0,
                    top_p=1.0,
                    seed=derive_seed(0, key, ("lean-formalize",)),
                    tag=f"lean/formalize/{index}",
                )
            )
        try:
            results = self.policy.generate(requests)
        except Exception as exc:  # the model backend failed: those steps stay unformalized
            for index in indices:
                plans[index].failures.append(f"LLM formalization failed: {type(exc).__name__}: {exc}")
            return
        for index, result in zip(indices, results):
            plan = plans[index]
            if not result.ok or not result.completions:
                plan.failures.append(f"LLM formalization failed: {result.error or 'no completion'}")
                continue
            parsed: LlmFormalization = parse_formalization_reply(
                result.completions[0].text, steps[index].step.strip()[:200]
            )
            if parsed.formalization is not None:
                plan.formalizations.append(parsed.formalization)
                plan.failures.clear()  # the model's statement replaces the claims no template fitted
            elif parsed.no_check and not plan.failures:
                plan.no_check_reason = "the model answered NO_CHECK"
            else:
                plan.failures.append(
                    f"LLM formalization rejected: {parsed.reason or 'NO_CHECK for a step with claims'}"
                )

    def check_steps(self, steps: Sequence[StepContext]) -> list[LeanCheck]:
        plans = self.plan_steps(steps)
        declarations: dict[str, Declaration] = {}  # a statement shared by steps is checked once
        for plan in plans:
            for form in plan.formalizations:
                for decl in declarations_for(form, self.config.tactics):
                    declarations.setdefault(decl.name, decl)
        outcomes = self.check_declarations(list(declarations.values())) if declarations else {}
        return [step_check(plan, outcomes) for plan in plans]

    def close(self) -> None:
        return None


class BatchLeanVerifier(FormalLeanVerifier):
    """The default backend: batch files compiled with ``lake env lean --json`` in the project."""

    def __init__(
        self, config: LeanConfig, setup: LeanSetup, policy: Policy | None = None, cache_dir: Path | None = None
    ) -> None:
        super().__init__(config, policy)
        assert setup.project is not None and setup.lake is not None
        self.setup = setup
        self.cache = LeanCache(cache_dir / "lean-outcomes.sqlite" if cache_dir is not None else None)
        self.checker = BatchChecker(
            setup.project,
            lake=setup.lake,
            batch_size=config.batch_size * 3,  # up to three declarations per statement
            batch_timeout_s=config.batch_timeout_s,
            statement_timeout_s=config.statement_timeout_s,
            memory_mb=config.memory_mb,
            cache=self.cache,
        )
        self._lock = threading.Lock()

    @property
    def unavailable_reason(self) -> str | None:
        return self.checker.unavailable_reason

    def check_declarations(self, declarations: Sequence[Declaration]) -> dict[str, DeclOutcome]:
        with self._lock:  # one Lean process per verifier at a time (Mathlib uses GBs of memory)
            return self.checker.check(declarations)

    def close(self) -> None:
        self.cache.close()


class LeanDojoVerifier(FormalLeanVerifier):
    """lean-dojo's command mode against a traced repo (optional extra ``prmforge[lean]``).

    Every declaration runs as one command from the initial command state of
    ``(repo, leandojo_file, leandojo_line)``, so no statement sees another.
    """

    def __init__(self, config: LeanConfig, policy: Policy | None = None, cache_dir: Path | None = None) -> None:
        super().__init__(config, policy)
        import lean_dojo  # the optional extra; make_lean_verifier checked that it imports

        if not (config.leandojo_repo and config.leandojo_commit and config.leandojo_file):
            raise ConfigError(
                "lean.backend = 'leandojo' needs lean.leandojo_repo, lean.leandojo_commit and lean.leandojo_file"
            )
        self._dojo_module = lean_dojo
        self.repo = lean_dojo.LeanGitRepo(config.leandojo_repo, config.leandojo_commit)
        self.entry = (self.repo, Path(config.leandojo_file), config.leandojo_line)
        self.environment = (
            f"leandojo:{config.leandojo_repo}@{config.leandojo_commit}:{config.leandojo_file}:{config.leandojo_line}"
        )
        self.cache = LeanCache(cache_dir / "lean-outcomes.sqlite" if cache_dir is not None else None)
        self._lock = threading.Lock()

    def check_declarations(self, declarations: Sequence[Declaration]) -> dict[str, DeclOutcome]:
        unique = {d.name: d for d in declarations}
        keys = {n: LeanCache.entry_key(self.environment, d) for n, d in unique.items()}
        cached = self.cache.get_many(list(keys.values()))
        results = {n: cached[keys[n]] for n in unique if keys[n] in cached}
        pending = [d for n, d in unique.items() if n not in results]
        with self._lock:
            fresh = self._run_commands(pending)
        self.cache.put_many({keys[n]: o for n, o in fresh.items()})
        results.update(fresh)
        return results

    def _run_commands(self, pending: list[Declaration]) -> dict[str, DeclOutcome]:
        dojo_mod: Any = self._dojo_module
        results: dict[str, DeclOutcome] = {}
        while pending:
            try:
                with dojo_mod.Dojo(self.entry, timeout=int(self.config.statement_timeout_s)) as (dojo, initial):
                    # The command state's message log may already hold messages of the file
                    # above the entry line: those are subtracted from every answer.
                    probe = dojo.run_cmd(initial, "example : True := trivial")
                    baseline = _message_lines(getattr(probe, "message", None))
                    while pending:
                        decl = pending[0]
                        try:
                            response = dojo.run_cmd(initial, decl.text)
                        except dojo_mod.DojoTacticTimeoutError:
                            results[decl.name] = DeclOutcome("timeout", messages=("lean-dojo command timed out",))
                            pending.pop(0)
                            break  # the REPL is stuck: start a fresh Dojo for the rest
                        except dojo_mod.DojoCrashError as exc:
                            results[decl.name] = DeclOutcome("crashed", messages=(f"lean-dojo crashed: {exc}",))
                            pending.pop(0)
                            break
                        results[decl.name] = _dojo_outcome(decl, response, dojo_mod, baseline)
                        pending.pop(0)
            except dojo_mod.DojoInitError as exc:
                reason = f"lean-dojo could not start: {exc}"
                log.warning("Lean verification unavailable: %s", reason)
                for decl in pending:
                    results[decl.name] = DeclOutcome("unavailable", messages=(reason,))
                return results
        return results

    def close(self) -> None:
        self.cache.close()


def _message_lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _dojo_outcome(decl: Declaration, response: Any, dojo_mod: Any, baseline: Sequence[str] = ()) -> DeclOutcome:
    """lean-dojo answers a command with LeanError(error) (the error messages) or
    CommandState(message) (the other messages, as text): the same rules as the batch messages.
    ``baseline``: message lines every answer carries (from the file before the entry line)."""
    if isinstance(response, dojo_mod.LeanError):
        messages = [LeanMessage("error", 0, 0, response.error)]
    else:
        lines = _message_lines(response.message)
        for old in baseline:
            if old in lines:
                lines.remove(old)
        messages = [
            LeanMessage("warning" if "declaration uses 'sorry'" in line else "information", 0, 0, line)
            for line in lines
        ]
        # A trace line may carry a position prefix ("<stdin>:3:2: prmforge:...").
        messages = [
            LeanMessage(m.severity, 0, 0, m.data[m.data.index(TRACE_PREFIX) :]) if TRACE_PREFIX in m.data else m
            for m in messages
        ]
    outcome = outcome_from_messages(decl.kind, messages)
    if outcome is None:
        return DeclOutcome("failed", messages=("lean-dojo reported neither an error nor a result",))
    return outcome


def make_lean_verifier(
    config: LeanConfig,
    policy: Policy | None = None,
    *,
    default_cache_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> DisabledLeanVerifier | UnavailableLeanVerifier | BatchLeanVerifier | LeanDojoVerifier:
    """The verifier for ``config``: disabled, unavailable (no toolchain/project), batch or lean-dojo.

    ``default_cache_dir`` is used when ``config.cache_dir`` is unset (the flow passes
    ``<output root>/.cache/lean``); with neither, outcomes are cached in memory only.
    """
    if not config.enabled:
        return DisabledLeanVerifier()
    raw_cache = config.cache_dir or default_cache_dir
    cache_dir = Path(raw_cache).expanduser() if raw_cache else None
    if cache_dir is not None and "://" in str(raw_cache):
        cache_dir = None  # a remote output root: keep the cache in memory
    if config.backend == "leandojo":
        try:
            import lean_dojo  # noqa: F401
        except ImportError:
            return UnavailableLeanVerifier("lean-dojo is not installed (pip install 'prmforge[lean]')")
        return LeanDojoVerifier(config, policy, cache_dir)
    setup = probe_lean(config, env)
    if not setup.usable:
        return UnavailableLeanVerifier(f"{setup.problem}; {SETUP_HINT}")
    return BatchLeanVerifier(config, setup, policy, cache_dir)
