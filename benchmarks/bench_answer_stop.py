"""What stopping rollouts at their answer saves, and whether it changes any rollout's answer.

    flock /tmp/prmforge-llm.lock python benchmarks/bench_answer_stop.py --set SET.jsonl \
        [--model better] [--solutions 10] [--k 4] [--max-tokens 512] [--threads 2]

From the first ``--solutions`` solutions of a ProcessBench-format set (with ``gold_answer``), one
prefix each (the first half of its steps), ``--k`` rollouts are generated twice with the embedded
batched policy and the same seeds: once running to EOS / ``--max-tokens`` (``stop_at_answer``
off, the earlier behaviour) and once stopping at the answer (labelers.answers.answer_end).
Printed as FIGURE lines:

- ``answer_stop.tokens_per_rollout.full`` / ``.stopped`` and their ratio;
- ``answer_stop.answer_kept``: share of full rollouts whose extracted answer (no last-number
  fallback, as the labeler reads it) equals that of the same text cut by answer_end -- the cut
  itself changes nothing when this is 1;
- ``answer_stop.reaches_gold_agreement``: share of rollout pairs (same seed) that agree on
  "reaches gold" between the two runs (below 1 only where the texts differ after the batches
  changed, docs/generation.md "Seeds and determinism");
- seconds of each run.

The set is read where it lies; nothing of it is copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelers.answers import answer_end, answers_equal, extract_final_answer  # noqa: E402
from labelers.policy.base import GenerationRequest  # noqa: E402
from labelers.policy.prompts import assistant_prefix, solution_messages  # noqa: E402


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.3f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, required=True)
    parser.add_argument("--model", default="better")
    parser.add_argument("--solutions", type=int, default=10)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from labelers.policy.embedded import EmbeddedPolicy

    rows = [json.loads(line) for line in args.set.read_text().splitlines() if line.strip()][: args.solutions]
    if not rows or any("gold_answer" not in r for r in rows):
        sys.exit("error: the set needs records with gold_answer")
    policy = EmbeddedPolicy(args.model, n_threads=args.threads)
    runs = {}
    for stop in (False, True):
        requests = [GenerationRequest(solution_messages(r["problem"]),
                                      assistant_prefix(r["steps"][: len(r["steps"]) // 2]),
                                      n=args.k, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95, seed=1000 + i,
                                      stop_at_answer=stop)
                    for i, r in enumerate(rows)]
        started = time.perf_counter()
        results = policy.generate(requests)
        seconds = time.perf_counter() - started
        runs[stop] = (results, seconds)
        tokens = [c.completion_tokens for r in results for c in r.completions]
        print(f"  stop_at_answer={stop}: {len(tokens)} rollouts, {sum(tokens)} tokens in {seconds:.0f} s "
              f"({sum(tokens) / seconds:.1f} tok/s)", flush=True)
        figure(f"answer_stop.tokens_per_rollout.{'stopped' if stop else 'full'} [{args.model}, {len(rows)} prefixes x "
               f"{args.k}, max {args.max_tokens}]", sum(tokens) / len(tokens), "tokens")
        figure(f"answer_stop.seconds.{'stopped' if stop else 'full'} [{args.model}, {args.threads} threads]",
               seconds, "s")
    full, _ = runs[False]
    stopped, _ = runs[True]
    kept = total = agree = 0

    def gold(text: str, gold_answer) -> bool:
        answer = extract_final_answer(text, allow_fallback=False)
        return answer is not None and answers_equal(answer, gold_answer)

    for row, a, b in zip(rows, full, stopped):
        for x, y in zip(a.completions, b.completions):
            end = answer_end(x.text)
            cut = x.text if end is None else x.text[:end]
            total += 1
            kept += (extract_final_answer(x.text, allow_fallback=False)
                     == extract_final_answer(cut, allow_fallback=False))
            agree += gold(x.text, row["gold_answer"]) == gold(y.text, row["gold_answer"])
    full_tokens = sum(c.completion_tokens for r in full for c in r.completions)
    stopped_tokens = sum(c.completion_tokens for r in stopped for c in r.completions)
    figure("answer_stop.tokens_ratio [stopped / full, same seeds]", stopped_tokens / full_tokens, "x")
    figure(f"answer_stop.answer_kept [{total} full rollouts: "
           "answer of the text = answer of the text cut by answer_end]",
           kept / total, "share", "1")
    figure(f"answer_stop.reaches_gold_agreement [{total} rollout pairs, same seeds]", agree / total, "share")
    policy.close()


if __name__ == "__main__":
    main()
