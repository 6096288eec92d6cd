"""The Lean verifier: states per step, the unavailable path (warned once), doctor, factory; and,
where a toolchain and a Mathlib project exist (env PRMFORGE_LEAN_PROJECT), real Lean runs.

Without Lean, the step-state logic is exercised through ``RuleBackendVerifier``, a verifier whose
backend answers declarations by a fixed rule (NOT Lean): it tests how outcomes become LeanChecks,
not whether Lean proves anything.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from data_schemas.errors import ConfigError
from labelers.config import LeanConfig
from labelers.policy.base import Completion, GenerationRequest, GenerationResult, TokenUsage
from labelers.verify.base import LeanState, StepContext
from labelers.verify.lean import (
    BatchLeanVerifier,
    DisabledLeanVerifier,
    FormalLeanVerifier,
    UnavailableLeanVerifier,
    doctor_check,
    make_lean_verifier,
    probe_lean,
)
from labelers.verify.lean_runner import Declaration, DeclOutcome

GOLDEN = Path(__file__).parent / "data" / "lean_golden.jsonl"
NO_LEAN_ENV = {"PATH": "/nonexistent-bin", "HOME": "/nonexistent-home"}


def _steps(*texts: str) -> list[StepContext]:
    return [StepContext("Janet has 16 eggs ...", tuple(texts[:i]), text) for i, text in enumerate(texts)]


# ---------------------------------------------------------------------------------------------
# Without a toolchain


def test_enabled_without_toolchain_gives_lean_unavailable_for_every_step_and_warns_once(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="prmforge.lean")
    verifier = make_lean_verifier(LeanConfig(enabled=True), env=NO_LEAN_ENV)
    assert isinstance(verifier, UnavailableLeanVerifier)
    steps = _steps("16 - 3 - 4 = <<16-3-4=9>>9 eggs", "9 * 2 = <<9*2=18>>18 dollars", "So she earns 18.")
    first = verifier.check_steps(steps)
    second = verifier.check_steps(steps)
    assert [c.state for c in first + second] == [LeanState.LEAN_UNAVAILABLE] * 6
    assert all("no Lean toolchain" in (c.message or "") for c in first)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lean_unavailable" in warnings[0].getMessage()
    assert verifier.unavailable_reason is not None and "elan" in verifier.unavailable_reason
    verifier.close()


def test_disabled_config_gives_disabled_states() -> None:
    verifier = make_lean_verifier(LeanConfig(enabled=False))
    assert isinstance(verifier, DisabledLeanVerifier) and verifier.unavailable_reason is None
    assert [c.state for c in verifier.check_steps(_steps("1 + 1 = 2"))] == [LeanState.DISABLED]


def test_leandojo_backend_without_the_package_is_unavailable() -> None:
    try:
        import lean_dojo  # noqa: F401

        pytest.skip("lean-dojo is installed here; this checks the missing-package path")
    except ImportError:
        pass
    verifier = make_lean_verifier(LeanConfig(enabled=True, backend="leandojo"))
    assert isinstance(verifier, UnavailableLeanVerifier)
    assert "prmforge[lean]" in (verifier.unavailable_reason or "")
    assert verifier.check_steps(_steps("1 + 1 = 2"))[0].state == LeanState.LEAN_UNAVAILABLE


# ---------------------------------------------------------------------------------------------
# Doctor


def test_doctor_reports_missing_toolchain_with_setup_hint() -> None:
    item = doctor_check(LeanConfig(), env=NO_LEAN_ENV)
    assert item.name == "Lean 4" and not item.ok
    assert "no Lean toolchain" in item.detail and "lean and lake not on PATH" in item.detail
    assert item.hint is not None
    for piece in ("elan", "lake new", "math", "lake exe cache get", "PRMFORGE_LEAN_PROJECT", "lean.project"):
        assert piece in item.hint


def _fake_toolchain(
    directory: Path, version_line: str = "Lean (version 4.21.0, x86_64-unknown-linux-gnu, commit 6741444a, Release)"
) -> Path:
    """FAKE ``lean``/``lake`` executables that only answer ``--version`` (doctor test only)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    for name, line in (("lean", version_line), ("lake", "Lake version 5.0.0-6741444 (Lean version 4.21.0)")):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\nprint({line!r})\n")
        path.chmod(0o755)
    return bin_dir


def _fake_mathlib_project(directory: Path, built: bool = True) -> Path:
    project = directory / "proj"
    mathlib = project / ".lake" / "packages" / "mathlib"
    (mathlib / ".lake" / "build" / "lib" / "lean").mkdir(parents=True)
    (project / "lakefile.toml").write_text('name = "proj"\n[[require]]\nname = "mathlib"\n')
    (project / "lean-toolchain").write_text("leanprover/lean4:v4.21.0\n")
    if built:
        (mathlib / ".lake" / "build" / "lib" / "lean" / "Mathlib.olean").write_bytes(b"")
    return project


def test_doctor_finds_toolchain_and_project_on_a_faked_path(tmp_path: Path) -> None:
    bin_dir = _fake_toolchain(tmp_path)
    project = _fake_mathlib_project(tmp_path)
    env = {"PATH": str(bin_dir), "PRMFORGE_LEAN_PROJECT": str(project)}
    item = doctor_check(LeanConfig(), env=env)
    assert item.ok, item.detail
    assert "Lean (version 4.21.0" in item.detail and str(project) in item.detail and item.hint is None
    # lean.project in the config wins over the environment variable.
    other = _fake_mathlib_project(tmp_path / "other")
    assert str(other) in doctor_check(LeanConfig(project=str(other)), env=env).detail
    # The factory builds the batch verifier there (it does not run Lean until asked).
    verifier = make_lean_verifier(LeanConfig(enabled=True), env=env)
    assert isinstance(verifier, BatchLeanVerifier) and verifier.unavailable_reason is None
    verifier.close()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("no_project", "no Mathlib project configured"),
        ("no_mathlib", "no Mathlib dependency"),
        ("not_built", "lake exe cache get"),
        ("no_lakefile", "no lakefile"),
    ],
)
def test_doctor_explains_what_is_missing_in_the_project(tmp_path: Path, breakage: str, expected: str) -> None:
    bin_dir = _fake_toolchain(tmp_path)
    project = _fake_mathlib_project(tmp_path, built=breakage != "not_built")
    if breakage == "no_mathlib":
        shutil.rmtree(project / ".lake")
    if breakage == "no_lakefile":
        (project / "lakefile.toml").unlink()
    env = {"PATH": str(bin_dir)}
    if breakage != "no_project":
        env["PRMFORGE_LEAN_PROJECT"] = str(project)
    item = doctor_check(LeanConfig(), env=env)
    assert not item.ok and expected in item.detail and "4.21.0" in item.detail
    assert isinstance(make_lean_verifier(LeanConfig(enabled=True), env=env), UnavailableLeanVerifier)


def test_probe_reports_a_broken_lean_binary(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("lean", "lake"):
        (bin_dir / name).write_text(f"#!{sys.executable}\nimport sys\nsys.exit(3)\n")
        (bin_dir / name).chmod(0o755)
    setup = probe_lean(LeanConfig(), env={"PATH": str(bin_dir)})
    assert not setup.usable and "exited with code 3" in (setup.problem or "")


# ---------------------------------------------------------------------------------------------
# Step states through a rule backend (not Lean)


class RuleBackendVerifier(FormalLeanVerifier):
    """Answers declarations by rule instead of Lean: checks pass unless the statement contains
    ``ℝ) ≤ 6`` (a rejected statement); a statement is "true" when its claim holds by Python
    arithmetic on the claim text recorded in the test; the rule table is per test."""

    def __init__(self, config: LeanConfig, rules: dict[str, str], policy=None) -> None:
        super().__init__(config, policy)
        # substring of the declaration -> "proved" | "refuted" | "timeout" | "reject" | "unproved" | "both"
        self.rules = rules
        self.seen: list[list[Declaration]] = []

    def check_declarations(self, declarations: Sequence[Declaration]) -> dict[str, DeclOutcome]:
        self.seen.append(list(declarations))
        out: dict[str, DeclOutcome] = {}
        for d in declarations:
            rule = next((r for key, r in self.rules.items() if key in d.text), "unproved")
            if d.kind == "check":
                out[d.name] = (DeclOutcome("failed", messages=("type mismatch",)) if rule == "reject"
                               else DeclOutcome("ok"))
            elif rule == "timeout":
                out[d.name] = DeclOutcome("timeout", messages=("heartbeats",))
            elif ((d.kind == "prove" and rule in ("proved", "both"))
                  or (d.kind == "refute" and rule in ("refuted", "both"))):
                out[d.name] = DeclOutcome("ok", tactic="norm_num")
            else:
                out[d.name] = DeclOutcome("failed", messages=("norm_num failed",))
        return out


def test_step_states_from_outcomes() -> None:
    rules = {
        "(16 - 3 - 4 : ℤ) = 9": "proved",
        "(9 * 2 : ℕ) = 19": "refuted",
        "(10 * 2 : ℕ) = 20": "proved",
        "(7 + 7 : ℕ) = 14": "timeout",
        "(5 * 5 : ℕ) = 25": "reject",
        "(3 * 3 : ℕ) = 9": "both",
    }
    verifier = RuleBackendVerifier(LeanConfig(enabled=True), rules)
    steps = _steps(
        "She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs.",  # proved
        "She makes 9 * 2 = $<<9*2=19>>19 a day.",  # disproved
        "10 * 2 = 20 and 16 - 3 - 4 = 9, and 9 * 2 = 19.",  # one refuted claim decides
        "It takes 7 + 7 = <<7+7=14>>14 days.",  # timeout
        "So 5 * 5 = 25 squares.",  # Lean rejects the statement
        "Then 3 * 3 = 9.",  # both the claim and its negation: inconsistent
        "She sells the rest at the market.",  # no claim
        "Let x = 5.",  # only binds a value
        "We have t = 2x.",  # equation in unknowns, not an identity
        "And 100 + 1 = 101.",  # neither proved nor refuted
    )
    checks = verifier.check_steps(steps)
    states = [c.state for c in checks]
    assert states == [
        LeanState.PROVED,
        LeanState.DISPROVED,
        LeanState.DISPROVED,
        LeanState.TIMEOUT,
        LeanState.FORMALIZATION_FAILED,
        LeanState.FORMALIZATION_FAILED,
        LeanState.NO_CHECK,
        LeanState.NO_CHECK,
        LeanState.NO_CHECK,
        LeanState.FORMALIZATION_FAILED,
    ]
    proved = checks[0]
    assert proved.tactic == "norm_num"
    assert proved.statement is not None and proved.statement.endswith(": (16 - 3 - 4 : ℤ) = 9 := by norm_num")
    disproved = checks[1]
    assert disproved.statement is not None and "_neg : ¬ ((9 * 2 : ℕ) = 19) := by norm_num" in disproved.statement
    assert "negation" in (disproved.message or "")
    assert "Lean rejected the statement" in (checks[4].message or "")
    assert "inconsistent" in (checks[5].message or "")
    assert "unproved" in (checks[9].message or "")
    # One backend call for the whole list of steps, each statement once.
    assert len(verifier.seen) == 1
    names = [d.name for d in verifier.seen[0]]
    assert len(names) == len(set(names))


class CannedFormalizer:
    """A Policy at the model boundary that returns fixed replies (for the LLM path's plumbing)."""

    model_id = "canned-formalizer"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.usage = TokenUsage()
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.requests.extend(requests)
        out = []
        for request in requests:
            step = request.messages[-1].content.split("Step to formalize:", 1)[1]
            reply = next((r for key, r in self.replies.items() if key in step), None)
            if reply is None:
                out.append(GenerationResult(request, (), 10, error="no reply scripted"))
            else:
                out.append(GenerationResult(request, (Completion(reply, "stop", 5),), 10))
        return out

    def close(self) -> None:
        return None


def test_llm_formalization_is_used_only_where_no_template_fits() -> None:
    policy = CannedFormalizer(
        {
            "The triangle is isosceles": (
                "```lean\ntheorem s (a b : ℝ) (h : a = 3) (hb : b = 3) : a = b := by\n  sorry\n```"
            ),
            "Nothing to see": "NO_CHECK",
            "Bad idea": "theorem s : 1 = 1 := by\n  #eval IO.println 1\n  sorry",
        }
    )
    rules = {"a = b": "proved", "(2 + 2 : ℕ) = 4": "proved"}
    verifier = RuleBackendVerifier(LeanConfig(enabled=True, llm_formalize=True), rules, policy)
    checks = verifier.check_steps(_steps("The triangle is isosceles.", "2 + 2 = 4", "Nothing to see here.",
                                         "Bad idea."))
    assert [c.state for c in checks] == [LeanState.PROVED, LeanState.PROVED, LeanState.NO_CHECK,
                                         LeanState.FORMALIZATION_FAILED]
    assert "(a b : ℝ) (h : a = 3) (hb : b = 3) : a = b := by norm_num" in (checks[0].statement or "")
    assert "LLM formalization rejected" in (checks[3].message or "")  # the proof is not just `sorry`
    assert len(policy.requests) == 3  # the templated step was not sent to the model
    assert all(r.temperature == 0.0 and r.seed is not None for r in policy.requests)
    # With the flag off the policy is never asked.
    quiet = CannedFormalizer({})
    off = RuleBackendVerifier(LeanConfig(enabled=True), rules, quiet)
    assert off.check_steps(_steps("The triangle is isosceles."))[0].state == LeanState.NO_CHECK
    assert quiet.requests == []


# ---------------------------------------------------------------------------------------------
# lean-dojo (optional extra)


def test_leandojo_verifier_needs_the_package() -> None:
    pytest.importorskip(
        "lean_dojo", reason="lean-dojo (prmforge[lean]) is not installed here; its backend needs a traced repo"
    )
    from labelers.verify.lean import LeanDojoVerifier

    with pytest.raises(ConfigError):
        LeanDojoVerifier(LeanConfig(enabled=True, backend="leandojo"))


# ---------------------------------------------------------------------------------------------
# Real Lean (skipped without a toolchain and a Mathlib project)

_SETUP = probe_lean(LeanConfig())
needs_lean = pytest.mark.skipif(
    not _SETUP.usable,
    reason=f"needs a Lean 4 toolchain and a Mathlib project (PRMFORGE_LEAN_PROJECT): {_SETUP.problem}"
)


@pytest.mark.lean
@pytest.mark.slow
@needs_lean
def test_real_lean_proves_true_and_refutes_corrupted_golden_statements(tmp_path: Path) -> None:
    verifier = make_lean_verifier(LeanConfig(enabled=True, batch_size=32), default_cache_dir=tmp_path)
    assert isinstance(verifier, BatchLeanVerifier)
    from test_lean_formalize import _claim, claim_truth  # the golden set's sympy truth values

    records = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    chosen = []
    for r in records:
        if r["source"] != "gsm8k":
            continue
        truths = [claim_truth(_claim(r["claims"][e["claim"]])) for e in r["expected"] if "statement" in e]
        if any("failed" in e for e in r["expected"]):
            continue
        if (r["corrupted"] and False in truths) or (not r["corrupted"] and all(truths)):
            chosen.append((r, truths))
    chosen = chosen[:40]
    # The verifier reads the stored claims' step text; a corrupted record's claims are not in its
    # text, so those are checked as statements below instead of through check_steps.
    plain = [(r, t) for r, t in chosen if not r["corrupted"]]
    checks = verifier.check_steps([StepContext("q", (), r["step_text"]) for r, _ in plain])
    for (record, _), check in zip(plain, checks):
        assert check.state == LeanState.PROVED, (record["step_text"], check)
    from labelers.verify.lean import _StepPlan, step_check
    from labelers.verify.lean_formalize import step_formalizations
    from labelers.verify.lean_runner import declarations_for

    for record, _ in [(r, t) for r, t in chosen if r["corrupted"]]:
        results = step_formalizations([_claim(c) for c in record["claims"]])
        plan = _StepPlan([x.formalization for x in results if x.formalization], [])
        decls = [d for f in plan.formalizations for d in declarations_for(f, verifier.config.tactics)]
        check = step_check(plan, verifier.check_declarations(decls))
        assert check.state == LeanState.DISPROVED, (record["claims"], check)
    # A rerun is answered from the cache.
    runs = verifier.checker.stats.lean_runs
    verifier.check_steps([StepContext("q", (), r["step_text"]) for r, _ in plain])
    assert verifier.checker.stats.lean_runs == runs
    verifier.close()


@pytest.mark.lean
@pytest.mark.slow
@needs_lean
def test_real_lean_elaborates_every_golden_statement_with_one_sorry(tmp_path: Path) -> None:
    from labelers.verify.lean_formalize import make_formalization, split_signature
    from labelers.verify.lean_runner import BatchChecker, LeanCache, declarations_for

    records = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    decls = []
    for r in records:
        for e in r["expected"]:
            if "statement" in e:
                head = e["statement"].split(" ", 2)[2]
                binders, prop = split_signature(head) if not head.startswith(":") else ("", head[1:].strip())
                form = make_formalization(binders, prop, negatable=e["negatable"], origin="template", claim_text="")
                decls.append(declarations_for(form, ("norm_num",))[0])
    checker = BatchChecker(_SETUP.project, lake=_SETUP.lake or "lake", batch_size=200, cache=LeanCache(None))
    results = checker.check(decls)
    rejected = {d.text: results[d.name] for d in decls if results[d.name].status != "ok"}
    assert not rejected, list(rejected.items())[:5]


def test_leandojo_answers_map_like_batch_messages() -> None:
    """lean-dojo's answer types, mirrored here (the package is not installed): LeanError holds the
    error text, CommandState the other messages as text lines."""
    from dataclasses import dataclass as _dc
    from types import SimpleNamespace

    from labelers.verify.lean import _dojo_outcome

    @_dc(frozen=True)
    class LeanError:
        error: str

    @_dc(frozen=True)
    class CommandState:
        id: int
        message: str | None = None

    module = SimpleNamespace(LeanError=LeanError, CommandState=CommandState)
    check = Declaration("t_chk", "check", "theorem t_chk : 1 = 1 := by\n  sorry")
    prove = Declaration("t", "prove", "theorem t : 1 = 1 := by ...")
    baseline = ["declaration uses 'sorry'"]  # a sorry earlier in the traced file
    assert _dojo_outcome(check, CommandState(1, "declaration uses 'sorry'\ndeclaration uses 'sorry'"), module,
                         baseline).status == "ok"
    assert _dojo_outcome(check, CommandState(1, "declaration uses 'sorry'"), module, baseline).status == "failed"
    assert _dojo_outcome(prove, CommandState(2, "prmforge:closed-by:omega"), module).tactic == "omega"
    failed = _dojo_outcome(prove, LeanError("unsolved goals\n⊢ False"), module)
    assert failed.status == "failed" and "unsolved goals" in failed.messages[0]
    timeout = _dojo_outcome(
        prove, LeanError("(deterministic) timeout at `whnf`, maximum number of heartbeats (200000)"), module
    )
    assert timeout.status == "timeout"
