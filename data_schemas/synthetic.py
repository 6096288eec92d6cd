"""Deterministic synthetic rows, valid by the schemas, for storage tests and benchmarks.

The rows are internally consistent the way real builds are: a wrong path has one first error,
steps before it are positive and steps from it on negative; the fused label equals the
Math-Shepherd hard label (mc_correct > 0); outcome counts equal the step rows written. They carry
no meaning beyond that: they exist to exercise shards, catalog, stats and exports without a model.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from data_schemas.records import NodeRow, ProblemOutcome, StepRow

GENERATOR_MODEL = "synthetic/none"
LEAN_STATES = ("proved", "disproved", "no_check", "formalization_failed", "lean_unavailable")


@dataclass(frozen=True)
class SyntheticBatch:
    """The rows one labeled batch would produce."""

    steps: list[StepRow]
    nodes: list[NodeRow]
    outcomes: list[ProblemOutcome]


def _hash(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _tool_verdict(rng: random.Random, good: bool) -> str:
    roll = rng.random()
    if good:
        return "correct" if roll < 0.6 else ("unverifiable" if roll < 0.95 else "incorrect")
    return "incorrect" if roll < 0.6 else ("unverifiable" if roll < 0.9 else "correct")


def synthetic_batch(
    build_id: str,
    source: str,
    batch_index: int,
    num_problems: int = 4,
    paths_per_problem: int = 3,
    max_steps: int = 6,
    seed: int = 0,
    failed_every: int = 7,
) -> SyntheticBatch:
    """Rows for ``num_problems`` problems; every ``failed_every``-th problem (globally) fails.

    Same arguments -> same rows (a private ``random.Random`` seeded from the arguments).
    """
    rng = random.Random(_hash(seed, build_id, source, batch_index))
    steps: list[StepRow] = []
    nodes: list[NodeRow] = []
    outcomes: list[ProblemOutcome] = []
    for local_index in range(num_problems):
        global_index = batch_index * num_problems + local_index
        problem_id = _hash("problem", source, global_index)
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        question = f"Problem {global_index} of {source}: what is {a} * {b} + {a}?"
        gold = str(a * b + a)
        if failed_every and global_index % failed_every == failed_every - 1:
            outcomes.append(
                ProblemOutcome(build_id, problem_id, source, question, gold, "failed", "sample",
                               "synthetic failure: policy returned no completion", 0, 0, 0, 0, 0,
                               rng.randint(50, 200), 0, round(rng.uniform(0.1, 2.0), 3))
            )
            continue
        nodes.append(NodeRow(build_id, problem_id, source, "root", None, 0, "", _hash(question), paths_per_problem,
                             0.0, None, False, None, None, None, None))
        problem_steps = positive = rollouts = 0
        for path_number in range(paths_per_problem):
            path_id = f"path-{path_number}"
            num_steps = rng.randint(2, max_steps)
            correct_path = rng.random() < 0.5
            first_error = None if correct_path else rng.randrange(num_steps)
            final_answer = gold if correct_path else str(a * b + a + rng.randint(1, 9))
            parent = "root"
            prefix = question
            path_rows = []
            for index in range(num_steps):
                good = first_error is None or index < first_error
                node_id = f"n{path_number}.{index}"
                # Stored like labelers.policy.prompts.clean_step leaves it: no "Step k:" label.
                text = f"{a} * {b} + {index} gives {a * b + index if good else a * b + 2 * index + 1}."
                if index == num_steps - 1:
                    text += f" The answer is {final_answer}."
                prefix = prefix + "\n" + text
                mc_total = 8
                mc_correct = rng.randint(1, 8) if good else 0
                inferred = rng.random() < 0.3
                verdict = _tool_verdict(rng, good)
                lean_state = LEAN_STATES[rng.randrange(len(LEAN_STATES))]
                agree = verdict == "unverifiable" or (verdict == "correct") == good
                token = "\\boxed{+}" if good else "\\boxed{-}"
                path_rows.append(dict(
                    node_id=node_id, step_index=index, step_text=text, prefix_hash=_hash(prefix),
                    tool_verdict=verdict,
                    tool_kind="none" if verdict == "unverifiable" else ("sympy" if index % 2 else "python"),
                    tool_evidence=(None if verdict == "unverifiable"
                                   else f'{{"claims": ["{a}*{b}"], "ok": {str(verdict == "correct").lower()}}}'),
                    lean_state=lean_state,
                    lean_statement=(f"theorem s{index} : ({a} : ℤ) * {b} = {a * b} := by sorry"
                                    if lean_state in ("proved", "disproved") else None),
                    lean_message="norm_num" if lean_state == "proved" else None,
                    mc_correct=mc_correct, mc_total=mc_total, mc_value=mc_correct / mc_total, mc_inferred=inferred,
                    hard_label=mc_correct > 0,
                    fused_reward=round(mc_correct / mc_total if good else -1.0 + 0.1 * index, 6),
                    fused_label=good, label_source="mc" if verdict == "unverifiable" else "tool+mc",
                    signals_agree=agree,
                    rationale=f"Check: {a} * {b} + {index} = {a * b + index}; "
                              f"the step is {'right' if good else 'wrong'}.\nVerdict: {token}",
                    is_first_error=index == first_error,
                ))
                nodes.append(NodeRow(build_id, problem_id, source, node_id, parent, index + 1, text, _hash(prefix),
                                     rng.randint(1, 9), round(rng.uniform(-2, 4), 6), round(rng.uniform(-1, 1), 6),
                                     index == num_steps - 1, final_answer if index == num_steps - 1 else None,
                                     correct_path if index == num_steps - 1 else None, verdict, mc_correct / mc_total))
                parent = node_id
            consensus = all(row["signals_agree"] for row in path_rows)
            path_seed = int(_hash(seed, problem_id, path_id), 16) % (2**62)
            for row in path_rows:
                steps.append(StepRow(build_id=build_id, problem_id=problem_id, source=source, path_id=path_id,
                                     num_steps=num_steps, consensus=consensus, path_final_answer=final_answer,
                                     path_correct=correct_path, generator_model=GENERATOR_MODEL, seed=path_seed, **row))
                positive += row["fused_label"]
            problem_steps += num_steps
            rollouts += 1 + 8 * num_steps
        outcomes.append(
            ProblemOutcome(build_id, problem_id, source, question, gold, "labeled", None, None, paths_per_problem,
                           problem_steps, positive, problem_steps - positive, rollouts,
                           rollouts * 120, rollouts * 60, round(rng.uniform(0.5, 20.0), 3))
        )
    return SyntheticBatch(steps, nodes, outcomes)


def write_synthetic_build(
    root: Any,
    build_id: str,
    num_batches: int = 4,
    sources: tuple[str, ...] = ("gsm8k", "math500"),
    status: str = "complete",
    seed: int = 0,
    **batch_options: Any,
) -> Any:
    """Write a whole synthetic build (shards + manifest); returns the final :class:`Manifest`.

    ``status="running"`` leaves the start-of-build manifest in place (an incomplete build).
    Batches alternate between ``sources``.
    """
    from data_schemas.manifest import finish_build, start_build
    from data_schemas.shards import ShardWriter

    config = {"name": "synthetic", "seed": seed, "num_batches": num_batches, "sources": list(sources), **batch_options}
    manifest = start_build(root, build_id, config, policy_model=GENERATOR_MODEL)
    writer = ShardWriter(root, build_id)
    shards = []
    for batch_index in range(num_batches):
        source = sources[batch_index % len(sources)]
        batch = synthetic_batch(build_id, source, batch_index, seed=seed, **batch_options)
        shards += writer.write_batch(source, f"b{batch_index:05d}", batch.steps, batch.nodes, batch.outcomes)
    if status == "running":
        return manifest
    return finish_build(root, manifest, shards, status=status)
