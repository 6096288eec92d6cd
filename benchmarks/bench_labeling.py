"""Label quality and rollout cost of the labeling core on an error-injected GSM8K set.

Data: ``--problems`` GSM8K test problems (tests/data/gsm8k_test.jsonl, a seeded sample); in
half of them one arithmetic slip is injected and carried forward (tests/support/gsm8k_slips.py:
the final answer becomes wrong, the slip step is the only false computation), the others keep
the reference solution. The truth is the slip index (ProcessBench ``label``) or -1.

Policy for rollouts: the scripted policy (tests/support/scripted_policy.py), per problem a
success rate ``p_correct`` drawn uniformly from [0.3, 0.95] (rollouts from a clean prefix reach
gold with that probability), ``recovery_rate`` 0.05 (a rollout from a wrong prefix still reaches
gold), ``step_error_rate`` 0.3 (MCTS expansions diverge into a slip). So MC labels are noisy in
both directions, as with a real policy. With ``--real-model`` a few problems are also labeled
with the embedded small model (llama.cpp, CPU) when llama_cpp and the model parts are installed.

Printed, per signal: ProcessBench scores of the earliest error (acc_err = exact index on
erroneous solutions, acc_cor = no error found on correct ones, F1 = harmonic mean) and rollouts
spent per labeled step; then the MCTS build (label_batch) on the same problems: completions
per labeled step (expansions + simulations + MC) and the same scores on the paths MCTS found
(truth = first step differing from the reference solution, -1 when none).

Run: ``python benchmarks/bench_labeling.py`` (about a minute on 2 cores);
``python benchmarks/bench_labeling.py --real-model --real-problems 2`` adds the model run;
``--quick``: 40 problems instead of 100.

Figures are also printed as ``FIGURE<TAB>name<TAB>value<TAB>unit<TAB>goal`` lines
(benchmarks/run_all.py convention). The scripted-policy figures are named ``labeling.simulated.*``
and carry ``scripted policy`` in their scale: they measure the algorithms, not a model.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_schemas.records import Problem  # noqa: E402
from labelers.config import BuildConfig, ToolConfig  # noqa: E402
from labelers.identity import normalize_text, problem_id  # noqa: E402
from labelers.pipeline import BatchResult, label_batch, label_given_solutions  # noqa: E402
from labelers.verify.tool import ToolStepVerifier  # noqa: E402
from tests.support.gsm8k_slips import first_slip, inject_slip, reference_steps, slip_candidates  # noqa: E402
from tests.support.scripted_policy import ScriptedPolicy, ScriptedProblem  # noqa: E402

GSM8K = ROOT / "tests" / "data" / "gsm8k_test.jsonl"


@dataclass
class Item:
    problem: Problem
    script: ScriptedProblem
    steps: list[str]
    label: int  # first error index, -1 = correct


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None or value != value else f"{value:.3f}"  # NaN -> not measured
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def build_set(count: int, seed: int) -> list[Item]:
    rows = [json.loads(line) for line in GSM8K.open()]
    rng = random.Random(seed)
    chosen = rng.sample(range(len(rows)), count)
    items = []
    for position, row_index in enumerate(chosen):
        row = rows[row_index]
        item_rng = random.Random(f"{seed}:{row_index}")
        correct, gold = reference_steps(row["answer"])
        slip = first_slip(row["answer"], item_rng) if position % 2 == 0 else None
        # Wrong solutions the policy may follow: the injected one plus slips at other steps.
        wrong = [slip.steps] if slip else []
        for index in slip_candidates(row["answer"]):
            extra = inject_slip(row["answer"], index, item_rng)
            if extra is not None and extra.steps not in wrong:
                wrong.append(extra.steps)
            if len(wrong) >= 3:
                break
        script = ScriptedProblem(
            row["question"], gold, tuple(correct), tuple(wrong),
            p_correct=item_rng.uniform(0.3, 0.95), step_error_rate=0.3, recovery_rate=0.05,
        )
        problem = Problem(problem_id(row["question"], "gsm8k"), "gsm8k", row["question"], gold,
                          source_row=row_index + 1)
        steps = list(slip.steps) if slip else list(correct)
        items.append(Item(problem, script, steps, slip.error_index if slip else -1))
    return items


def scores(pairs: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    """(acc_err, acc_cor, F1) over (truth, predicted) first-error pairs (ProcessBench)."""
    erroneous = [(t, p) for t, p in pairs if t >= 0]
    correct = [(t, p) for t, p in pairs if t < 0]
    acc_err = sum(t == p for t, p in erroneous) / len(erroneous) if erroneous else float("nan")
    acc_cor = sum(p < 0 for _, p in correct) / len(correct) if correct else float("nan")
    f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor) if acc_err + acc_cor > 0 else 0.0
    return acc_err, acc_cor, f1


def predicted_first_errors(result: BatchResult) -> dict[str, int]:
    """path_id -> first step labeled bad (-1 when none)."""
    first: dict[str, int] = {}
    for row in sorted(result.steps, key=lambda r: (r.path_id, r.step_index)):
        first.setdefault(row.path_id, -1)
        if not row.fused_label and first[row.path_id] < 0:
            first[row.path_id] = row.step_index
    return first


def run_given(items, config, policy, tool) -> tuple[BatchResult, float]:
    started = time.perf_counter()
    result = label_given_solutions([i.problem for i in items], [[i.steps] for i in items], config, policy, tool, None,
                                   "bench")
    return result, time.perf_counter() - started


def report_given(name: str, items, result: BatchResult, seconds: float) -> tuple[float, float]:
    """Prints one row; returns (F1, rollouts per labeled step)."""
    by_problem = {r.problem_id: r.path_id for r in result.steps}
    first = predicted_first_errors(result)
    pairs = [(i.label, first.get(by_problem.get(i.problem.problem_id, ""), -1)) for i in items]
    failed = [o for o in result.outcomes if o.status != "labeled"]
    steps = sum(len(i.steps) for i in items)
    rollouts = sum(o.rollouts for o in result.outcomes)
    acc_err, acc_cor, f1 = scores(pairs)
    print(
        f"  {name:<34} acc_err {acc_err:6.3f}  acc_cor {acc_cor:6.3f}  F1 {f1:6.3f}  "
        f"rollouts/step {rollouts / steps:6.2f}  ({rollouts} rollouts, {steps} steps, {seconds:5.1f} s"
        f"{', ' + str(len(failed)) + ' failed' if failed else ''})"
    )
    return f1, rollouts / steps


def true_first_error(steps: Sequence[str], reference: Sequence[str]) -> int:
    for index, step in enumerate(steps):
        if index >= len(reference) or normalize_text(step) != normalize_text(reference[index]):
            return index
    return -1


def section_scripted(items: list[Item], seed: int, k: int) -> None:
    wrong = sum(i.label >= 0 for i in items)
    print(f"Error-injected GSM8K: {len(items)} problems, {wrong} with one slip carried forward, "
          f"{len(items) - wrong} correct")
    print(f"Scripted policy: p_correct ~ U[0.3, 0.95] per problem, recovery 0.05; k = {k}\n")
    base = BuildConfig(seed=seed).with_overrides({"search.mc_rollouts": k, "fuse.after_first_error": "negative"})
    scripts = [i.script for i in items]
    scale = f"[{len(items)} error-injected GSM8K, k={k}, scripted policy]"
    with ToolStepVerifier(ToolConfig()) as tool:
        print("Given solutions (label_given_solutions):")
        runs = [
            ("MC only, per-step (Math-Shepherd)", "mc_per_step",
             {"fuse.rule": "mc", "search.first_error_search": False, "search.mc_early_stop": 0}, False),
            ("MC only, per-step + early stop 4", "mc_per_step_early_stop",
             {"fuse.rule": "mc", "search.first_error_search": False, "search.mc_early_stop": 4}, False),
            ("MC only, binary search (OmegaPRM)", "mc_binary",
             {"fuse.rule": "mc", "search.first_error_search": True, "search.mc_early_stop": 0}, False),
            ("MC only, binary + early stop 4", "mc_binary_early_stop",
             {"fuse.rule": "mc", "search.first_error_search": True, "search.mc_early_stop": 4}, False),
            ("tool only", "tool_only", {"fuse.rule": "tool"}, True),
            ("hybrid, per-step MC", "hybrid_per_step",
             {"fuse.rule": "hybrid", "search.first_error_search": False, "search.mc_early_stop": 0}, True),
            ("hybrid, per-step MC, MC after disproved", "hybrid_per_step_no_skip",
             {"fuse.rule": "hybrid", "search.first_error_search": False, "search.mc_early_stop": 0,
              "search.skip_mc_after_disproved": False}, True),
            ("hybrid, binary + early stop, MC after disproved", "hybrid_binary_early_stop_no_skip",
             {"fuse.rule": "hybrid", "search.first_error_search": True, "search.mc_early_stop": 4,
              "search.skip_mc_after_disproved": False}, True),
            ("hybrid, binary search + early stop", "hybrid_binary_early_stop",
             {"fuse.rule": "hybrid", "search.first_error_search": True, "search.mc_early_stop": 4}, True),
        ]
        measured = []
        for name, key, overrides, with_tool in runs:
            result, seconds = run_given(items, base.with_overrides(overrides), ScriptedPolicy(scripts),
                                        tool if with_tool else None)
            measured.append((key, *report_given(name, items, result, seconds)))
        for key, f1, _per_step in measured:
            figure(f"labeling.simulated.{key}.earliest_error_f1 {scale}", f1, "F1 (ProcessBench)")
        for key, _f1, per_step in measured:
            if key != "tool_only":
                figure(f"labeling.simulated.{key}.rollouts_per_labeled_step {scale}", per_step, "rollouts/step")
        by_key = {key: (f1, per_step) for key, f1, per_step in measured}
        hybrid_f1, hybrid_cost = by_key["hybrid_binary_early_stop"]
        mc_f1, mc_cost = by_key["mc_per_step"]
        figure(f"hybrid_rollouts_per_labeled_step {scale}", hybrid_cost, "rollouts/step")
        figure(f"hybrid_rollouts_ratio_to_per_step_mc {scale}", hybrid_cost / mc_cost, "x", "<= 0.25")
        figure(f"hybrid_f1_minus_per_step_mc_f1 {scale}", hybrid_f1 - mc_f1, "F1", ">= 0")
        before_f1, before_cost = by_key["hybrid_binary_early_stop_no_skip"]
        figure(f"hybrid_rollouts_after_disproved_skip_ratio {scale}", hybrid_cost / before_cost, "x (skip on / off)",
               "<= 1")

        print("\nMCTS build (label_batch, default search config: 8 rounds, 3 children, stop at 3+3 paths):")
        for name, overrides in [
            ("MCTS + hybrid (binary on wrong paths)", {}),
            ("MCTS + hybrid, consensus filter", {"fuse.consensus_filter": True}),
        ]:
            config = base.with_overrides({"fuse.after_first_error": "truncate", **overrides})
            policy = ScriptedPolicy(scripts)
            started = time.perf_counter()
            result = label_batch([i.problem for i in items], config, policy, tool, None, "bench")
            seconds = time.perf_counter() - started
            kinds = {"expand": 0, "rollout": 0, "mc": 0}
            for request in policy.requests:
                kinds[request.tag.split("/")[1]] += request.n
            rows = len(result.steps)
            reference = {i.problem.problem_id: i.script.correct_steps for i in items}
            paths: dict[str, list] = {}
            for row in sorted(result.steps, key=lambda r: (r.path_id, r.step_index)):
                paths.setdefault(row.path_id, []).append(row)
            nodes = {(n.problem_id, n.node_id): n for n in result.nodes}
            pairs = []
            for path_id, rows_of_path in paths.items():
                # Rows stop at the first labeled error: the full path is the node chain of its leaf.
                pid, leaf = path_id.split(":", 1)
                chain, node = [], nodes[(pid, leaf)]
                while node.parent_id is not None:
                    chain.append(node.step_text)
                    node = nodes[(pid, node.parent_id)]
                truth = true_first_error(chain[::-1], reference[pid])
                predicted = next((r.step_index for r in rows_of_path if not r.fused_label), -1)
                pairs.append((truth, predicted))
            acc_err, acc_cor, f1 = scores(pairs)
            total = sum(kinds.values())
            key = "mcts_hybrid_consensus" if overrides else "mcts_hybrid"
            print(
                f"  {name:<38} {len(paths)} paths, {rows} step rows; completions/step {total / max(rows, 1):6.2f} "
                f"(expand {kinds['expand']}, simulate {kinds['rollout']}, MC {kinds['mc']}); "
                f"MC rollouts/step {kinds['mc'] / max(rows, 1):5.2f}; {seconds:5.1f} s"
            )
            print(
                f"  {'':<38} first error on MCTS paths: acc_err {acc_err:6.3f}  acc_cor {acc_cor:6.3f}  F1 {f1:6.3f}; "
                f"counters: dropped_consensus {result.counters.get('paths_dropped_consensus', 0)}, "
                f"no_consensus {result.counters.get('paths_no_consensus', 0)}, "
                f"merged {result.counters.get('merged_duplicate_steps', 0)}"
            )
            figure(f"labeling.simulated.{key}.completions_per_labeled_step {scale}", total / max(rows, 1),
                   "completions/step (expand + simulate + MC)")
            figure(f"labeling.simulated.{key}.mc_rollouts_per_labeled_step {scale}", kinds["mc"] / max(rows, 1),
                   "rollouts/step")
            figure(f"labeling.simulated.{key}.earliest_error_f1_on_mcts_paths {scale}", f1, "F1 (ProcessBench)")


def section_real(items: list[Item], seed: int, count: int, k: int, max_tokens: int, threads: int,
                 parts: set[str]) -> None:
    try:
        import llama_cpp  # noqa: F401

        from labelers.config import EmbeddedPolicyConfig
        from labelers.policy.factory import make_policy
    except ImportError as error:
        print(f"\nReal model: skipped ({error})")
        return
    # The shortest solutions: each rollout costs seconds on a shared CPU.
    by_length = sorted(items, key=lambda i: (len(i.steps), i.problem.problem_id))
    chosen = ([i for i in by_length if i.label >= 0][: (count + 1) // 2]
              + [i for i in by_length if i.label < 0][: count // 2])
    policy_config = EmbeddedPolicyConfig(model="small", n_threads=threads, n_ctx=2048,
                                         max_solution_tokens=max_tokens, max_step_tokens=80)
    try:
        policy = make_policy(policy_config)
    except Exception as error:  # noqa: BLE001 - optional section
        print(f"\nReal model: skipped ({error})")
        return
    print(
        f"\nReal model {policy.model_id} (llama.cpp, {threads} threads, shared 2-core machine), "
        f"{len(chosen)} problems, "
        f"k = {k}, max {max_tokens} tokens per rollout:"
    )
    base = BuildConfig(seed=seed, policy=policy_config).with_overrides(
        {"search.mc_rollouts": k, "search.mc_early_stop": 0, "fuse.after_first_error": "negative"}
    )
    with ToolStepVerifier(ToolConfig()) as tool:
        for name, overrides, with_tool in [
            ("tool only", {"fuse.rule": "tool"}, True),
            ("hybrid, binary search", {"fuse.rule": "hybrid", "search.first_error_search": True}, True),
        ] if "given" in parts else []:
            result, seconds = run_given(chosen, base.with_overrides(overrides), policy, tool if with_tool else None)
            report_given(name, chosen, result, seconds)
            for row in sorted(result.steps, key=lambda r: (r.problem_id, r.step_index)):
                mc = (f"{row.mc_correct}/{row.mc_total}" if row.mc_total is not None
                      else ("inferred" if row.mc_inferred else "-"))
                print(f"      {row.problem_id[:8]} step {row.step_index}: tool {row.tool_verdict:<12} MC {mc:<8} "
                      f"-> {'+' if row.fused_label else '-'} ({row.label_source})")
        if "mcts" in parts:
            # One problem, one MCTS iteration (2 children, their simulations) + MC on wrong paths.
            config = base.with_overrides(
                {"search.rounds": 2, "search.children_per_expansion": 2, "search.max_depth": 6,
                 "fuse.after_first_error": "truncate"}
            )
            started = time.perf_counter()
            result = label_batch([chosen[-1].problem], config, policy, tool, None, "bench-real")
            seconds = time.perf_counter() - started
            outcome = result.outcomes[0]
            print(
                f"  MCTS label_batch, 1 problem, 2 rounds x 2 children: status {outcome.status} "
                f"{outcome.failed_stage or ''} {outcome.error or ''}; {len(result.nodes)} nodes, "
                f"{outcome.num_paths} paths, {outcome.num_steps} step rows, {outcome.rollouts} completions, "
                f"{outcome.completion_tokens} completion tokens, {seconds:.0f} s"
            )
            for node in result.nodes:
                print(
                    f"      {node.node_id:<10} N={node.visits} W={node.value_sum:+.3f} terminal={node.is_terminal} "
                    f"answer={node.final_answer} gold={node.reached_gold} tool={node.tool_verdict} "
                    f"| {node.step_text[:70]!r}"
                )
            for row in result.steps:
                print(f"      row {row.path_id.split(':')[1]} step {row.step_index}: {row.tool_verdict}, "
                      f"MC {row.mc_correct}/{row.mc_total} -> {'+' if row.fused_label else '-'} ({row.label_source})")
    policy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=None, help="GSM8K problems (default 100, --quick 40)")
    parser.add_argument("--quick", action="store_true", help="reduced run: 40 problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--real-model", action="store_true")
    parser.add_argument("--real-problems", type=int, default=2)
    parser.add_argument("--real-k", type=int, default=2)
    parser.add_argument("--real-max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real-parts", default="given,mcts",
                        help="comma list: given (given solutions), mcts (label_batch)")
    parser.add_argument("--skip-scripted", action="store_true")
    args = parser.parse_args()
    if args.problems is None:
        args.problems = 40 if args.quick else 100
    items = build_set(args.problems, args.seed)
    if not args.skip_scripted:
        section_scripted(items, args.seed, args.k)
    if args.real_model:
        parts = set(args.real_parts.split(","))
        section_real(items, args.seed, args.real_problems, args.real_k, args.real_max_tokens, args.threads, parts)


if __name__ == "__main__":
    main()
