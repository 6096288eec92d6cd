"""Regenerate tests/data/real_text/corpus.jsonl: real model-written solution steps with labels.

    python tests/data/make_real_text_corpus.py                       # PRM800K + Math-Shepherd samples
    nice -n 19 python tests/data/make_real_text_corpus.py --model-solutions 3 --model small
                                                                     # + the embedded model's own solutions

Sources (licences in tests/data/README.md): ``prm800k_sample.jsonl`` (human ratings of GPT-4
steps) and ``math_shepherd_sample.jsonl`` (Math-Shepherd MC labels), both copied unchanged from
the public data sets into tests/data. ``--model-solutions N`` samples one greedy solution to each
of the first N bundled problems with the embedded policy (needs the ``embedded`` extra and a
model extra), splits it into steps and labels each step only by whether the solution's final
answer equals the gold answer (``label_kind = "answer"``). The CPU model is slow: a few problems
take minutes; run it under ``nice -n 19``. Output rows are sorted and the generation is greedy
with a fixed seed, so the same inputs give the same file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from labelers.evaluation.realtext import (  # noqa: E402
    CorpusStep,
    math_shepherd_steps,
    prm800k_steps,
    read_corpus,
    write_corpus,
)

DATA = Path(__file__).resolve().parent
OUT = DATA / "real_text" / "corpus.jsonl"


def model_steps(n: int, model: str, seed: int) -> list[CorpusStep]:
    from data_schemas.problems import bundled_problems_path, load_problems
    from labelers.answers import answers_equal, extract_final_answer
    from labelers.config import EmbeddedPolicyConfig
    from labelers.policy.base import GenerationRequest
    from labelers.policy.factory import make_policy
    from labelers.policy.prompts import solution_messages
    from labelers.steps import split_steps

    problems = load_problems(bundled_problems_path()).problems[:n]
    policy = make_policy(EmbeddedPolicyConfig(model=model))
    try:
        requests = [GenerationRequest(solution_messages(p.question), max_tokens=512, temperature=0.0, seed=seed,
                                      tag=p.problem_id) for p in problems]
        results = policy.generate(requests)
        out: list[CorpusStep] = []
        for problem, result in zip(problems, results, strict=True):
            if not result.ok or not result.completions:
                print(f"{problem.problem_id}: generation failed: {result.error}", file=sys.stderr)
                continue
            text = result.completions[0].text
            steps = split_steps(text)
            final = extract_final_answer(text)
            reaches = final is not None and answers_equal(final, problem.gold_answer)
            for index, step in enumerate(steps):
                out.append(CorpusStep(
                    id=f"embedded/{problem.problem_id}/{index}", source="embedded", generator=policy.model_id,
                    problem=problem.question, previous_steps=tuple(steps[:index]), step=step, label=None,
                    label_kind="answer", reaches_gold=reaches, gold_answer=problem.gold_answer,
                ))
        return out
    finally:
        policy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-solutions", type=int, default=0, help="also add N embedded-model solutions")
    parser.add_argument("--model", default="small", help="embedded model preset or GGUF path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-model-rows", action="store_true",
                        help="keep the embedded-model rows already in the corpus instead of dropping them")
    args = parser.parse_args()
    steps = prm800k_steps(DATA / "prm800k_sample.jsonl") + math_shepherd_steps(DATA / "math_shepherd_sample.jsonl")
    if args.keep_model_rows and OUT.exists():
        steps += [s for s in read_corpus(OUT) if s.source == "embedded"]
    if args.model_solutions:
        steps += model_steps(args.model_solutions, args.model, args.seed)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    count = write_corpus(OUT, sorted(steps, key=lambda s: s.id))
    print(f"wrote {count} steps to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
