"""What flash attention saves the batched decoder, and that texts do not depend on the thread count.

    python benchmarks/bench_flash_attention.py            # 1.5B preset, widths 1, 4, 16
    python benchmarks/bench_flash_attention.py --quick    # 0.5B preset, widths 1, 4, 32 tokens

The batched decoder (labelers/policy/batch_decoder.py) decodes with llama.cpp's flash attention
(its default on a CPU). Its CPU kernel splits the keys of a one-token batch among the threads
and adds the parts up in an order that depends on the thread count, so the decoder pads such
batches with a second token (``BatchDecoder._fill_batch``): the default thread count follows the
machine's load (labelers/policy/threads.py) and must not change the texts. For each batch width
(that many sampled completions of distinct prompts of about 400 tokens -- worked examples and a
question, as a labeling pass holds many distinct problems -- decoded together) this prints

- tokens/s with flash attention on (the default) and off at all usable cores, and on/off;
- how many of the width's texts are equal with 1 thread and with all cores, each setting.

Figures are wall-clock on whatever machine runs it (run it alone; other load changes them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data_schemas.problems import bundled_problems_path, load_problems  # noqa: E402
from labelers.policy.base import ChatMessage, GenerationRequest  # noqa: E402
from labelers.policy.batch_decoder import BatchDecoder, DecodeJob  # noqa: E402
from labelers.policy.embedded import EmbeddedPolicy, ModelPool, completion_seed  # noqa: E402
from labelers.policy.threads import usable_cores  # noqa: E402


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.4g}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def jobs(policy: EmbeddedPolicy, width: int, max_tokens: int) -> list[DecodeJob]:
    """``width`` distinct prompts (3 worked examples and a question of the bundled problems
    each), one sampled completion per prompt."""
    problems = load_problems(bundled_problems_path()).problems  # GSM8K rows, then MATH rows
    prompts = []
    for i in range(width):
        # Four problems a prompt; each lap over the file starts one problem later, so the prompts
        # of one width stay distinct (a repeated prompt would be served from the prompt cache).
        first = 4 * i + 4 * i // len(problems)
        shown = [problems[(first + j) % len(problems)] for j in range(3)]
        examples = "\n\n".join(f"Q: {problem.question}\nA: {problem.reference_solution}" for problem in shown)
        question = problems[(first + 3) % len(problems)].question
        prompts.append(policy._renderer.tokens(GenerationRequest((
            ChatMessage("system", "Worked examples:\n\n" + examples), ChatMessage("user", question)))))
    return [DecodeJob(tuple(prompt), (completion_seed(7, i),), max_tokens, 0.8, 0.95)
            for i, prompt in enumerate(prompts)]


def decode(policy: EmbeddedPolicy, threads: int, flash: bool, work: list[DecodeJob]) -> tuple[list[str], float]:
    """Texts of one fresh decoder run and its generated tokens per second."""
    decoder = BatchDecoder(policy._loaded.llama, max_sequences=32, kv_cells=16384, n_threads=threads,
                           n_ctx_per_sequence=4096, flash_attention=flash)
    started = time.perf_counter()
    outcomes = decoder.run(work)
    seconds = time.perf_counter() - started
    texts = [done.text for outcome in outcomes for done in outcome.completions if done is not None]
    return texts, decoder.cost.generated_tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5B preset, widths 1 and 4, 32 tokens")
    parser.add_argument("--model", default=None, help="embedded preset or GGUF path (default: better; --quick: small)")
    parser.add_argument("--widths", default=None, help="batch widths, comma-separated (default 1,4,16)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per completion (default 128)")
    args = parser.parse_args()
    model = args.model or ("small" if args.quick else "better")
    widths = [int(w) for w in (args.widths or ("1,4" if args.quick else "1,4,16")).split(",")]
    max_tokens = args.max_tokens or (32 if args.quick else 128)
    cores = usable_cores()
    pool = ModelPool()
    policies = {threads: EmbeddedPolicy(model, n_ctx=4096, n_threads=threads, pool=pool) for threads in {1, cores}}
    print(f"model {policies[cores].model_id}, {cores} usable cores, {max_tokens} tokens per completion", flush=True)
    print("width | prompt tokens | tok/s flash on | tok/s flash off | on/off | texts equal 1 vs "
          f"{cores} threads: on | off", flush=True)
    for width in widths:
        work = jobs(policies[cores], width, max_tokens)
        speed, equal = {}, {}
        for flash in (True, False):
            texts, speed[flash] = decode(policies[cores], cores, flash, work)
            one_thread, _ = decode(policies[1], 1, flash, work) if cores > 1 else (texts, 0.0)
            equal[flash] = sum(a == b for a, b in zip(texts, one_thread))
        print(f"{width} | {sum(len(job.prompt) for job in work)} | {speed[True]:.1f} | {speed[False]:.1f} | "
              f"{speed[True] / speed[False]:.3f} | {equal[True]}/{width} | {equal[False]}/{width}", flush=True)
        figure(f"flash_attention_on_over_off_width_{width}", speed[True] / speed[False], "ratio of tok/s")
        figure(f"texts_equal_across_threads_width_{width}", equal[True] / width, "share", ">= 1")
    pool.close()


if __name__ == "__main__":
    main()
