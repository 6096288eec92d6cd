"""Label quality on an error-injection set: ProcessBench F1 of tool-only, MC-only and hybrid
labels, and rollouts per labeled step of per-step MC vs first-error binary search.

1. Builds the injected set from tests/data/gsm8k_test.jsonl (``--n-error`` corrupted +
   ``--n-correct`` correct reference solutions, ``--seed``).
2. Tool-only labels on the whole set (no model).
3. With the policy (``--backend``/``--model``; default the embedded llama.cpp "small" 0.5B model):
   MC per-step (Math-Shepherd: ``--k`` rollouts from every prefix), MC binary (OmegaPRM
   first-error search on solutions whose final answer is wrong; solutions that reach the gold
   answer are inferred all-positive) and hybrid (tool + MC binary, fused by rule ``hybrid``) on
   a seeded subset of ``--mc-n-error`` + ``--mc-n-correct`` solutions of the same set (the first
   ones of each kind in the set's shuffled order). Every figure name carries the scale it was
   measured at. ``--skip-model`` runs step 2 only.

``--simulate`` adds the three MC runs on the WHOLE set with the scripted test policy
(tests/support/scripted_policy.py; figures ``eval.simulated.*``, no goals): they show what the
labeling algorithms do at full scale and k = 8 with a policy of known behaviour, never what a
model does.

Identical generation requests (same prompt, prefix, n, seed) are answered once and reused across
the three model runs (a memo in front of the policy): the labelers request the same prefixes with
the same derived seeds, so reuse changes no label. Rollout counts are what each labeler asked
for (the pipeline's accounting), not what the memo saved.

Prints FIGURE lines (benchmarks/run_all.py convention) after a human-readable table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labelers.config import BuildConfig  # noqa: E402
from labelers.evaluation import runner  # noqa: E402
from labelers.evaluation.inject import build_injection_set, read_gsm8k  # noqa: E402
from labelers.evaluation.processbench import BenchRecord, record_from_json  # noqa: E402
from labelers.policy.base import GenerationRequest, GenerationResult, Policy, TokenUsage  # noqa: E402


def figure(name: str, value: float | int | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


@dataclass
class MemoPolicy:
    """Answers a request seen before from memory (same messages, prefix, n, sampling, seed)."""

    inner: Policy
    usage: TokenUsage = field(default_factory=TokenUsage)
    memo: dict[tuple, GenerationResult] = field(default_factory=dict)
    generated_completions: int = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @staticmethod
    def _key(request: GenerationRequest) -> tuple:
        return (request.messages, request.assistant_prefix, request.n, request.max_tokens, request.temperature,
                request.top_p, request.stop, request.seed)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        fresh = [r for r in requests if self._key(r) not in self.memo]
        unique: dict[tuple, GenerationRequest] = {}
        for request in fresh:
            unique.setdefault(self._key(request), request)
        if unique:
            results = self.inner.generate(list(unique.values()))
            for key, result in zip(unique, results):
                if result.error is None:
                    self.memo[key] = result
                    self.generated_completions += len(result.completions)
                else:
                    self.memo.setdefault(key, result)
        answered = []
        for request in requests:
            result = self.memo[self._key(request)]
            answered.append(GenerationResult(request, result.completions, result.prompt_tokens, result.error))
            self.usage.requests += 1
            self.usage.completions += len(result.completions)
            self.usage.prompt_tokens += result.prompt_tokens
            self.usage.completion_tokens += sum(c.completion_tokens for c in result.completions)
        return answered

    def close(self) -> None:
        self.inner.close()


def subset(records: Sequence[BenchRecord], n_error: int, n_correct: int) -> list[BenchRecord]:
    errors = [r for r in records if r.label >= 0][:n_error]
    correct = [r for r in records if r.label < 0][:n_correct]
    chosen = {r.id for r in errors + correct}
    return [r for r in records if r.id in chosen]


def print_row(result: runner.SignalResult, scale: str) -> None:
    s, r = result.score, result.run
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{r.signal:7s} {r.mc_mode or '-':9s} {scale:38s} acc_err {fmt(s.acc_err)} acc_cor {fmt(s.acc_cor)} "
          f"F1 {fmt(s.f1)} acc_err_before_last {fmt(s.acc_err_before_last)} (n={s.n_error_before_last}) "
          f"stepP {fmt(s.step_precision)} stepR {fmt(s.step_recall)} rollouts {r.rollouts} "
          f"per-step {fmt(r.rollouts_per_step)} failed {len(r.failures)} {r.wall_seconds:.1f}s "
          f"by_kind {s.by_corruption}",
          flush=True)


def simulate(records: list[BenchRecord], sources: list, config: BuildConfig, tool, args) -> None:
    """MC per-step, MC binary and hybrid on the whole set with the scripted policy."""
    from labelers.evaluation.inject import parse_reference
    from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem

    by_row = {source.source_row: source for source in sources}
    problems = []
    for record in records:
        source = by_row[record.extra["source_row"]]
        reference = parse_reference(source.question, source.answer, source.source_row).render()
        wrong = (record.steps,) if record.label >= 0 else ()
        problems.append(ScriptedProblem(record.problem, record.gold_answer, tuple(reference), wrong,
                                        p_correct=args.sim_p_correct, recovery_rate=args.sim_recovery))
    sim_config = config.with_overrides({"search.mc_early_stop": 0})
    scale = (f"{args.n_error}+{args.n_correct} GSM8K, SCRIPTED policy p_correct={args.sim_p_correct} "
             f"recovery={args.sim_recovery}, k={args.k}")
    results = {}
    for name, signal, mode, with_tool in (("mc_per_step", "mc", "per-step", False),
                                          ("mc_binary", "mc", "binary", False),
                                          ("hybrid", "hybrid", "binary", True)):
        run = runner.run_mc(records, signal, sim_config, ScriptedPolicy(problems), tool if with_tool else None, None,
                            mode, args.k)
        results[name] = runner.evaluate(records, run)
        print_row(results[name], "simulated (scripted policy)")
        # No goals on simulated figures: a simulation meeting a goal says nothing about a model.
        figure(f"eval.simulated.{name}.f1 [{scale}]", results[name].score.f1, "F1", "")
        figure(f"eval.simulated.{name}.rollouts_per_step [{scale}]", results[name].run.rollouts_per_step,
               "rollouts/step", "")
    per_step_rollouts = results["mc_per_step"].run.rollouts
    ratio = results["hybrid"].run.rollouts / per_step_rollouts if per_step_rollouts else None
    figure(f"eval.simulated.hybrid_vs_per_step_mc.rollout_ratio [{scale}]", ratio, "x", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-error", type=int, default=300)
    parser.add_argument("--n-correct", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mc-n-error", type=int, default=6, help="Erroneous solutions labeled with the model.")
    parser.add_argument("--mc-n-correct", type=int, default=6, help="Correct solutions labeled with the model.")
    parser.add_argument("--k", type=int, default=8, help="Rollouts per estimated prefix (Math-Shepherd: 8).")
    parser.add_argument("--backend", default="embedded")
    parser.add_argument("--model", default="small", help="Embedded preset (small, better), GGUF path, or served model.")
    parser.add_argument("--base-url", default=None, help="openai backend: server URL.")
    parser.add_argument("--max-solution-tokens", type=int, default=320)
    parser.add_argument("--threads", type=int, default=None, help="Embedded: llama.cpp threads.")
    parser.add_argument("--skip-model", action="store_true", help="Tool-only figures (no policy).")
    parser.add_argument("--simulate", action="store_true",
                        help="Also run MC/hybrid on the WHOLE set with the scripted test policy (a simulation of a "
                             "policy, figures named eval.simulated.*: they measure the labeling algorithms, "
                             "not a model).")
    parser.add_argument("--sim-p-correct", type=float, default=0.8,
                        help="Scripted: a rollout from a clean prefix reaches gold.")
    parser.add_argument("--sim-recovery", type=float, default=0.1,
                        help="Scripted: a rollout from a wrong prefix still reaches gold.")
    parser.add_argument("--quick", action="store_true",
                        help="60 + 60 solutions for tool-only and the simulation; "
                             "1 + 1 solutions, k = 2 for the model runs.")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_error, args.n_correct, args.mc_n_error, args.mc_n_correct, args.k = 60, 60, 1, 1, 2
        args.simulate = True

    sources = read_gsm8k(REPO / "tests" / "data" / "gsm8k_test.jsonl")
    rows, summary = build_injection_set(sources, args.n_error, args.n_correct, args.seed)
    records = [record_from_json(row, f"record {i}") for i, row in enumerate(rows)]
    print(f"set: {args.n_error} injected ({summary.kinds}; {summary.errors_in_last_step} in the last step) + "
          f"{args.n_correct} correct GSM8K solutions, seed {args.seed}, {sum(len(r.steps) for r in records)} steps",
          flush=True)

    config = BuildConfig(seed=args.seed).with_overrides({"tool.workers": 1})
    from labelers.verify.tool import ToolStepVerifier

    scale_tool = f"{args.n_error}+{args.n_correct} GSM8K"
    with ToolStepVerifier(config.tool) as tool:
        tool_result = runner.evaluate(records, runner.run_tool(records, tool))
        print_row(tool_result, scale_tool)
        figure(f"eval.tool.f1 [{scale_tool}]", tool_result.score.f1, "F1", "")
        figure(f"eval.tool.acc_err [{scale_tool}]", tool_result.score.acc_err, "accuracy", "")
        figure(f"eval.tool.acc_cor [{scale_tool}]", tool_result.score.acc_cor, "accuracy", "")
        figure(f"eval.tool.acc_err_before_last_step [{scale_tool}]", tool_result.score.acc_err_before_last,
               "accuracy", "")
        figure(f"eval.tool.seconds_per_step [{scale_tool}]",
               tool_result.run.wall_seconds / max(1, tool_result.run.labeled_steps), "s/step", "")
        if args.simulate:
            simulate(records, sources, config, tool, args)
        if args.skip_model:
            return 0

        from labelers.policy.factory import make_policy

        policy_overrides: dict[str, object] = {
            "policy.backend": args.backend, "policy.model": args.model,
            "policy.max_solution_tokens": args.max_solution_tokens, "search.mc_early_stop": 0,
        }
        if args.base_url:
            policy_overrides["policy.base_url"] = args.base_url
        if args.threads:
            policy_overrides["policy.n_threads"] = args.threads
        config = config.with_overrides(policy_overrides)
        small = subset(records, args.mc_n_error, args.mc_n_correct)
        policy = MemoPolicy(make_policy(config.policy))
        scale = f"{args.mc_n_error}+{args.mc_n_correct} GSM8K, {args.backend} {policy.model_id}, k={args.k}"
        try:
            started = time.perf_counter()
            tool_small = runner.evaluate(small, runner.run_tool(small, tool))
            per_step = runner.evaluate(small, runner.run_mc(small, "mc", config, policy, None, None, "per-step",
                                                            args.k))
            binary = runner.evaluate(small, runner.run_mc(small, "mc", config, policy, None, None, "binary", args.k))
            hybrid = runner.evaluate(small, runner.run_mc(small, "hybrid", config, policy, tool, None, "binary",
                                                          args.k))
            elapsed = time.perf_counter() - started
        finally:
            policy.close()
    for result in (tool_small, per_step, binary, hybrid):
        print_row(result, scale)
    print(f"model runs: {elapsed:.0f} s, {policy.generated_completions} completions generated "
          f"(the rest reused from identical requests)", flush=True)
    figure(f"eval.tool.f1 [{args.mc_n_error}+{args.mc_n_correct} subset]", tool_small.score.f1, "F1", "")
    figure(f"eval.mc_per_step.f1 [{scale}]", per_step.score.f1, "F1", "")
    figure(f"eval.mc_binary.f1 [{scale}]", binary.score.f1, "F1", "")
    # The F1 goal is set for 300 + 300 solutions; on a small subset one solution moves
    # acc_err by a lot, so the goal is shown but not checked there.
    full_scale = args.mc_n_error >= 300 and args.mc_n_correct >= 300
    f1_goal = ">= 0.90" if full_scale else ">= 0.90 at 300+300 (not checked at this scale)"
    figure(f"eval.hybrid.f1 [{scale}]", hybrid.score.f1, "F1", f1_goal)
    for name, result in (("mc_per_step", per_step), ("mc_binary", binary), ("hybrid", hybrid)):
        figure(f"eval.{name}.acc_err_before_last_step [{scale}]", result.score.acc_err_before_last, "accuracy", "")
    figure(f"eval.mc_per_step.rollouts_per_step [{scale}]", per_step.run.rollouts_per_step, "rollouts/step", "")
    figure(f"eval.mc_binary.rollouts_per_step [{scale}]", binary.run.rollouts_per_step, "rollouts/step", "")
    ratio = hybrid.run.rollouts / per_step.run.rollouts if per_step.run.rollouts else None
    figure(f"eval.hybrid_vs_per_step_mc.rollout_ratio [{scale}]", ratio, "x", "<= 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
