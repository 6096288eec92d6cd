"""Generation throughput of the policy backends, and greedy GSM8K accuracy of the presets.

    python benchmarks/bench_generation.py                      # embedded + http + better
    python benchmarks/bench_generation.py --sections gsm8k --gsm8k-problems 10
    python benchmarks/bench_generation.py --sections vllm --vllm-model Qwen/Qwen2.5-1.5B-Instruct

Sections:
  batched   8 rollouts x 4 nested prefixes, 128 new tokens each, decoded one sequence at a time
            (llama-cpp-python's loop) and then all together (labelers/policy/batch_decoder.py):
            rollouts/s of each and the ratio, against the decode ceiling of one full step; then the
            same rollouts through a quarter as many decoder slots (sequences wait for free slots,
            as in a labeling pass), against the ceiling of that width. 1.5B preset (--quick: 0.5B).
  embedded  0.5B preset: completion tokens/s for one greedy completion, and k=8 sampled rollouts
            from one solution prefix with llama.cpp prefix reuse on and off (ratio).
  better    1.5B preset: completion tokens/s for one greedy completion.
  http      the prmforge OpenAI-compatible server (subprocess, 0.5B) driven by the HTTP policy:
            requests/s at concurrency 1, 4 and 16 with short completions.
  gsm8k     greedy solutions of the first N GSM8K test problems per preset; answers checked with
            labelers.answers.
  vllm      (GPU) 256 prefixes x 8 rollouts through VllmPolicy with prefix caching on vs off.

Figures are wall-clock on whatever machine runs the script; it prints the CPU count and load.
Each figure is also printed as a ``FIGURE<TAB>name<TAB>value<TAB>unit<TAB>goal`` line
(benchmarks/run_all.py convention). ``--quick``: sections batched (0.5B), embedded and http only (no 1.5B load),
32-token completions instead of 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from labelers.policy.base import GenerationRequest  # noqa: E402
from labelers.policy.prompts import STEP_STOP, assistant_prefix, solution_messages  # noqa: E402

QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
    "per fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)
PREFIX_STEPS = [
    "Janet's ducks lay 16 eggs per day.",
    "She eats 3 eggs for breakfast, so 16 - 3 = 13 eggs remain.",
    "She bakes muffins with 4 eggs, so 13 - 4 = 9 eggs remain.",
]


def _gsm8k(limit: int, offset: int = 0) -> list:
    from data_schemas.problems import load_problems

    problems = load_problems(REPO_ROOT / "tests" / "data" / "gsm8k_test.jsonl", format="gsm8k").problems
    return problems[offset:offset + limit]


THREADS: list[int] = []  # set once from --threads in main(); read by the sections


def _threads() -> int:
    return THREADS[0]


def figure(name: str, value: float | None, unit: str, goal: str = "") -> None:
    shown = "-" if value is None else f"{value:.3f}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def _machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def bench_single(model: str, max_tokens: int) -> None:
    from labelers.policy.embedded import EmbeddedPolicy

    policy = EmbeddedPolicy(model, n_ctx=2048, n_threads=_threads())
    request = GenerationRequest(solution_messages(QUESTION), n=1, max_tokens=max_tokens, temperature=0.0, seed=0)
    policy.generate([GenerationRequest(solution_messages("1+1?"), max_tokens=2, temperature=0.0)])  # warm-up
    started = time.perf_counter()
    [result] = policy.generate([request])
    seconds = time.perf_counter() - started
    tokens = result.completions[0].completion_tokens
    print(f"  {policy.model_id}: 1 greedy completion, prompt {result.prompt_tokens} tok, "
          f"{tokens} completion tok in {seconds:.2f} s = {tokens / seconds:.1f} tok/s (prompt eval included)")
    figure(f"generation.embedded.{model}.single_completion [{policy.model_id}, greedy, {tokens} tok, "
           f"{_threads()} threads]", tokens / seconds, "tok/s")
    policy.close()


def bench_rollouts(model: str, k: int, max_tokens: int) -> None:
    from labelers.policy.embedded import EmbeddedPolicy, ModelPool

    pool = ModelPool()
    request = GenerationRequest(solution_messages(QUESTION), assistant_prefix(PREFIX_STEPS), n=k,
                                max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=1)
    rates = {}
    for reuse in (True, False):
        policy = EmbeddedPolicy(model, n_ctx=2048, n_threads=_threads(), pool=pool, reuse_prefix=reuse,
                                decode="sequential")
        policy.generate([GenerationRequest(solution_messages("1+1?"), max_tokens=2, temperature=0.0)])
        evaluated_before = policy.evaluated_prompt_tokens
        started = time.perf_counter()
        [result] = policy.generate([request])
        seconds = time.perf_counter() - started
        tokens = sum(c.completion_tokens for c in result.completions)
        rates[reuse] = tokens / seconds
        print(f"  k={k} rollouts, prefix reuse {'on ' if reuse else 'off'}: prompt {result.prompt_tokens} tok, "
              f"prompt tokens evaluated {policy.evaluated_prompt_tokens - evaluated_before}, "
              f"{tokens} completion tok in {seconds:.2f} s = {rates[reuse]:.1f} tok/s")
        figure(f"generation.embedded.{model}.rollouts_k{k}.reuse_{'on' if reuse else 'off'} [one prefix, "
               f"max {max_tokens} tok each, {_threads()} threads]", rates[reuse], "tok/s")
    print(f"  prefix reuse speed-up (tok/s on / off): {rates[True] / rates[False]:.2f}x")
    figure(f"generation.embedded.{model}.rollouts_k{k}.reuse_ratio [max {max_tokens} tok each]",
           rates[True] / rates[False], "x (tok/s on / off)", "> 1")
    pool.close()


def bench_batched(model: str, k: int, prefixes: int, max_tokens: int) -> None:
    """k rollouts x ``prefixes`` nested prefixes, sequential vs batched decoding, same seeds."""
    from labelers.policy.embedded import EmbeddedPolicy, ModelPool

    pool = ModelPool()
    scaffold = PREFIX_STEPS + ["She sells 9 eggs at $2 each."]
    requests = [GenerationRequest(solution_messages(QUESTION), assistant_prefix(scaffold[:i + 1]), n=k,
                                  max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=100 + i)
                for i in range(prefixes)]
    rates = {}
    token_rates = {}
    texts = {}
    usage = {}
    # name -> (decode, sampling): the default (batched, nucleus in numpy) and its peers
    modes = {"sequential": ("sequential", "nucleus"), "batched": ("batched", "nucleus"),
             "batched-llama-top-p": ("batched", "buffers"), "batched-serial-sampling": ("batched", "serial")}
    for decode, (decode_mode, sampling) in modes.items():
        policy = EmbeddedPolicy(model, n_ctx=2048, n_threads=_threads(), pool=pool, decode=decode_mode,
                                sampling=sampling)
        policy.generate([GenerationRequest(solution_messages("1+1?"), max_tokens=2, temperature=0.0)])  # warm-up
        before = dataclasses.replace(policy.usage)
        started = time.perf_counter()
        results = policy.generate(requests)
        seconds = time.perf_counter() - started
        usage[decode] = (policy.usage.decode_seconds - before.decode_seconds,
                         policy.usage.sampling_seconds - before.sampling_seconds,
                         policy.usage.stop_check_seconds - before.stop_check_seconds)
        rollouts = sum(len(r.completions) for r in results)
        tokens = sum(c.completion_tokens for r in results for c in r.completions)
        rates[decode] = rollouts / seconds
        token_rates[decode] = tokens / seconds
        texts[decode] = [c.text for r in results for c in r.completions]
        if decode != "sequential":
            print(f"  {decode}: decode {usage[decode][0]:.2f} s, sampling {usage[decode][1]:.2f} s, "
                  f"token pieces and stops {usage[decode][2]:.2f} s, rest {seconds - sum(usage[decode]):.2f} s")
        print(f"  {decode:10s}: {prefixes} prefixes ({min(r.prompt_tokens for r in results)}-"
              f"{max(r.prompt_tokens for r in results)} prompt tok) x {k} rollouts, {tokens} completion tok "
              f"in {seconds:.1f} s = {rates[decode]:.2f} rollouts/s, {tokens / seconds:.1f} tok/s", flush=True)
        policy.close()
    same = sum(a == b for a, b in zip(texts["sequential"], texts["batched"]))
    print(f"  texts equal in both modes (same seeds): {same}/{len(texts['batched'])}")
    shape = f"[{model}, {prefixes} prefixes x {k} rollouts, {max_tokens} tok, {_threads()} threads]"
    figure(f"embedded_rollouts_per_s_sequential {shape}", rates["sequential"], "rollouts/s")
    figure(f"embedded_rollouts_per_s_batched {shape}", rates["batched"], "rollouts/s")
    figure(f"embedded_batched_speedup {shape}", rates["batched"] / rates["sequential"], "x", ">= 4")
    figure(f"embedded_rollouts_per_s_batched_serial_sampling {shape}", rates["batched-serial-sampling"], "rollouts/s")
    figure(f"embedded_sampling_seconds_parallel_vs_serial {shape}",
           usage["batched"][1] / usage["batched-serial-sampling"][1],
           "x (sampling seconds, parallel from copied logits / llama_sampler_sample one by one)")
    figure(f"embedded_sampling_seconds_nucleus_vs_llama_top_p {shape}",
           usage["batched"][1] / usage["batched-llama-top-p"][1],
           "x (sampling seconds, nucleus found in numpy / llama.cpp's top-p sampler, both parallel)")
    same_sampling = sum(a == b for a, b in zip(texts["batched"], texts["batched-serial-sampling"]))
    print(f"  texts equal with parallel and serial sampling: {same_sampling}/{len(texts['batched'])}")
    same_top_p = sum(a == b for a, b in zip(texts["batched"], texts["batched-llama-top-p"]))
    print(f"  texts equal with the numpy nucleus and llama.cpp's top-p: {same_top_p}/{len(texts['batched'])}")
    ceiling = decode_ceiling(pool, model, k * prefixes)
    speedup = rates["batched"] / rates["sequential"]
    print(f"  batched speed-up {speedup:.2f}x = {speedup / ceiling:.0%} of the decode ceiling {ceiling:.2f}x")
    figure(f"embedded_batched_share_of_ceiling {shape}", speedup / ceiling, "x (speedup / decode ceiling)", ">= 0.9")
    bench_batch_kept_full(pool, model, requests, token_rate_sequential=token_rates["sequential"],
                          slots=(k * prefixes) // 4)
    pool.close()


def bench_batch_kept_full(pool, model: str, requests: list[GenerationRequest], *, token_rate_sequential: float,
                          slots: int) -> None:
    """The same rollouts through ``slots`` decoder sequences, a quarter of their number: sequences wait and
    take the slots others free, as in a labeling pass (many more rollouts than slots). The one-shot shape
    above cannot show that: its batch only shrinks after the first rollout ends. Compared in tokens/s
    (texts, hence rollout lengths, differ with batch composition) with the sequential run, and with the
    decode ceiling of a ``slots``-wide step."""
    from labelers.policy.embedded import EmbeddedPolicy

    policy = EmbeddedPolicy(model, n_ctx=2048, n_threads=_threads(), pool=pool, max_sequences=slots)
    policy.generate([GenerationRequest(solution_messages("1+1?"), max_tokens=2, temperature=0.0)])  # warm-up
    before = dataclasses.replace(policy.usage)
    started = time.perf_counter()
    results = policy.generate(requests)
    seconds = time.perf_counter() - started
    steps = policy.usage.decode_steps - before.decode_steps
    sampled = policy.usage.sampled_tokens - before.sampled_tokens
    tokens = sum(c.completion_tokens for r in results for c in r.completions)
    rollouts = sum(len(r.completions) for r in results)
    shape = f"[{model}, {rollouts} rollouts through {slots} slots, {_threads()} threads]"
    speedup = tokens / seconds / token_rate_sequential
    decode = policy.usage.decode_seconds - before.decode_seconds
    sampling = policy.usage.sampling_seconds - before.sampling_seconds
    print(f"  batched, {slots} slots: {tokens} completion tok in {seconds:.1f} s = {tokens / seconds:.1f} tok/s, "
          f"{sampled / steps:.1f} sequences per decode step (of {slots}); {steps} steps, decode {decode:.2f} s "
          f"({decode / steps * 1000:.0f} ms a step), sampling {sampling:.2f} s")
    policy.close()
    ceiling = decode_ceiling(pool, model, slots)
    print(f"  batched speed-up with waiting sequences (tok/s / sequential tok/s) {speedup:.2f}x = "
          f"{speedup / ceiling:.0%} of the decode ceiling {ceiling:.2f}x")
    figure(f"embedded_batched_speedup_kept_full {shape}", speedup, "x (tok/s / sequential tok/s)")
    figure(f"embedded_batched_share_of_ceiling_kept_full {shape}", speedup / ceiling,
           "x (speedup / decode ceiling)", ">= 0.9")


def decode_ceiling(pool, model: str, width: int, prompt_tokens: int = 160, steps: int = 6) -> float:
    """What the kernels allow a batched step, sampling and scheduling left out: the tokens/s of
    one ``llama_decode`` of ``width`` tokens (one per sequence, after a shared prompt of
    ``prompt_tokens``, logits for every row as sampling needs) over one-token decodes.
    Median of ``steps`` decodes each."""
    import llama_cpp

    from labelers.policy.model_files import resolve_model

    path, _ = resolve_model(model, None)
    llama = pool.get(path, 2048, _threads()).llama
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 4096, 512, 512
    params.n_seq_max, params.kv_unified = width, True
    params.n_threads = params.n_threads_batch = _threads()
    ctx = llama_cpp.llama_init_from_model(llama.model, params)
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, width)

    def fill(rows: list[tuple[int, int, list[int], bool]]) -> None:
        for row, (token, pos, seq_ids, logits) in enumerate(rows):
            batch.token[row], batch.pos[row], batch.n_seq_id[row], batch.logits[row] = token, pos, len(seq_ids), logits
            for slot, seq_id in enumerate(seq_ids):
                batch.seq_id[row][slot] = seq_id
        batch.n_tokens = len(rows)

    try:
        fill([(100 + i, i, list(range(width)), i == prompt_tokens - 1) for i in range(prompt_tokens)])
        llama_cpp.llama_decode(ctx, batch)
        seconds = {}
        for size in (1, width):
            times = []
            for step in range(steps):
                fill([(200 + seq, prompt_tokens + step, [seq], True) for seq in range(size)])
                started = time.perf_counter()
                llama_cpp.llama_decode(ctx, batch)
                times.append(time.perf_counter() - started)
            for seq in range(size):
                llama_cpp.llama_memory_seq_rm(memory, seq, prompt_tokens, -1)
            seconds[size] = sorted(times)[steps // 2]
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    ceiling = seconds[1] * width / seconds[width]
    print(f"  decode ceiling: one decode of {width} tokens (logits for all) {seconds[width] * 1000:.0f} ms, "
          f"one token {seconds[1] * 1000:.1f} ms: {ceiling:.2f}x the tokens/s (no sampling, full batch)")
    figure(f"embedded_decode_ceiling [{model}, {width} sequences, logits for every row, {_threads()} threads]",
           ceiling, f"x (tok/s of one {width}-token decode / one-token decodes)")
    return ceiling


def bench_http(levels: tuple[int, ...], requests_per_level: int, max_tokens: int) -> None:
    from labelers.policy.openai_http import OpenAIHttpPolicy

    server = subprocess.Popen(
        [sys.executable, "-m", "labelers.policy.server", "--model", "small", "--port", "0", "--n-ctx", "2048",
         "--threads", str(_threads())],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        url = server.stdout.readline().strip().rsplit(" at ", 1)[1]
        problems = _gsm8k(requests_per_level)
        requests = [GenerationRequest(solution_messages(p.question), assistant_prefix([]), n=1,
                                      max_tokens=max_tokens, temperature=0.8, stop=STEP_STOP, seed=i)
                    for i, p in enumerate(problems)]
        warm = OpenAIHttpPolicy(url, "small")
        warm.generate(requests[:1])
        warm.close()
        for level in levels:
            policy = OpenAIHttpPolicy(url, "small", max_concurrency=level)
            started = time.perf_counter()
            results = policy.generate(requests)
            seconds = time.perf_counter() - started
            failed = sum(1 for r in results if not r.ok)
            tokens = policy.usage.completion_tokens
            print(f"  concurrency {level:2d}: {len(requests)} requests in {seconds:.2f} s = "
                  f"{len(requests) / seconds:.2f} req/s, {tokens / seconds:.1f} completion tok/s, failed {failed}")
            figure(f"generation.http.concurrency_{level} [{len(requests)} requests, max {max_tokens} tok, "
                   f"server 0.5B, failed {failed}]", len(requests) / seconds, "req/s")
            policy.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def bench_gsm8k(presets: list[str], limit: int, offset: int, max_tokens: int) -> None:
    from labelers.answers import answers_equal, extract_final_answer
    from labelers.policy.embedded import EmbeddedPolicy

    problems = _gsm8k(limit, offset)
    print(f"  GSM8K test problems {offset}..{offset + len(problems) - 1}, max {max_tokens} tokens, greedy")
    for preset in presets:
        policy = EmbeddedPolicy(preset, n_ctx=2048, n_threads=_threads())
        requests = [GenerationRequest(solution_messages(p.question), assistant_prefix([]), n=1,
                                      max_tokens=max_tokens, temperature=0.0, seed=0) for p in problems]
        started = time.perf_counter()
        results = policy.generate(requests)
        seconds = time.perf_counter() - started
        marks = []
        for problem, result in zip(problems, results):
            answer = extract_final_answer(result.completions[0].text) if result.ok else None
            marks.append(answer is not None and answers_equal(answer, problem.gold_answer))
        solved = sum(marks)
        tokens = policy.usage.completion_tokens
        print(f"  {preset} ({policy.model_id}): {solved}/{len(problems)} solved greedily "
              f"[{''.join('x' if m else '.' for m in marks)}]; "
              f"{tokens} completion tok in {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
        policy.close()


def bench_vllm(model: str, prefixes: int, k: int, max_tokens: int, caching: bool | None) -> None:
    """``caching`` None runs both settings, each in a fresh process."""
    if importlib.util.find_spec("vllm") is None:
        print("  skipped: vllm is not installed (pip install 'prmforge[vllm]' on a CUDA machine)")
        return
    from labelers.policy.vllm_backend import VllmPolicy, gpu_visible

    visible, found = gpu_visible()
    if not visible:
        print(f"  skipped: no CUDA GPU ({found})")
        return
    problems = _gsm8k(max(1, prefixes // 4))
    # 4 prefixes per problem (0..3 steps of a fixed scaffold) -> nested prefixes share blocks.
    requests = []
    for i in range(prefixes):
        problem = problems[i // 4 % len(problems)]
        steps = [f"Let me restate the problem: {problem.question[:80]}"] * (i % 4)
        requests.append(GenerationRequest(solution_messages(problem.question), assistant_prefix(steps), n=k,
                                          max_tokens=max_tokens, temperature=0.8, seed=i))
    if caching is None:
        # One process per setting: vLLM does not reliably give GPU memory back within a process.
        for setting in ("on", "off"):
            subprocess.run([sys.executable, __file__, "--sections", "vllm", "--vllm-caching", setting,
                            "--vllm-model", model, "--vllm-prefixes", str(prefixes), "--rollouts", str(k),
                            "--max-tokens", str(max_tokens)], check=True)
        return
    policy = VllmPolicy(model, enable_prefix_caching=caching, gpu_memory_utilization=0.8)
    policy.generate(requests[:4])  # warm-up (CUDA graphs, first blocks)
    started = time.perf_counter()
    results = policy.generate(requests)
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for r in results for c in r.completions)
    prompt = sum(r.prompt_tokens for r in results)
    print(f"  prefix caching {'on ' if caching else 'off'}: {prefixes} prefixes x {k} rollouts, "
          f"{prompt} prompt tok, {tokens} completion tok in {seconds:.2f} s = {tokens / seconds:.0f} tok/s "
          f"= {prefixes / seconds:.1f} prefixes/s", flush=True)
    figure(f"generation.vllm.caching_{'on' if caching else 'off'} [{model}, {prefixes} prefixes x {k}, "
           f"max {max_tokens} tok]", prefixes * k / seconds, "rollouts/s")
    policy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: sections embedded,http (unless --sections is given), 32-token completions")
    parser.add_argument("--sections", default=None,
                        help="comma list of: batched, embedded, better, http, gsm8k, vllm")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="completion length of the throughput runs (default 64, --quick 32)")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--http-requests", type=int, default=16)
    parser.add_argument("--http-max-tokens", type=int, default=8)
    parser.add_argument("--gsm8k-problems", type=int, default=10)
    parser.add_argument("--gsm8k-offset", type=int, default=0, help="first GSM8K test problem")
    parser.add_argument("--gsm8k-max-tokens", type=int, default=400)
    parser.add_argument("--vllm-model", default="Qwen/Qwen2.5-1.5B-Instruct")
    parser.add_argument("--vllm-prefixes", type=int, default=256)
    parser.add_argument("--vllm-caching", choices=("on", "off"), default=None, help="one setting only (internal)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the policy's default)")
    args = parser.parse_args()
    if args.sections is None:
        args.sections = "batched,embedded,http" if args.quick else "batched,embedded,better,http"
    if args.max_tokens is None:
        args.max_tokens = 32 if args.quick else 64
    from labelers.policy.threads import default_threads

    THREADS.append(args.threads or default_threads())
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    print(f"machine: {_machine()}; llama.cpp threads: {_threads()}")
    for section in sections:
        print(f"[{section}]")
        if section == "batched":
            # The shape: 8 rollouts x 4 prefixes, 128 new tokens each; --quick on the 0.5B model.
            bench_batched("small" if args.quick else "better", args.rollouts, 4, 128)
        elif section == "embedded":
            bench_single("small", args.max_tokens)
            # Rollout-like (long completions) and expansion-like (one short step) shapes.
            bench_rollouts("small", args.rollouts, args.max_tokens // 2)
            bench_rollouts("small", args.rollouts, 8)
        elif section == "better":
            bench_single("better", args.max_tokens)
        elif section == "http":
            bench_http((1, 4, 16), args.http_requests, args.http_max_tokens)
        elif section == "gsm8k":
            bench_gsm8k(["small", "better"], args.gsm8k_problems, args.gsm8k_offset, args.gsm8k_max_tokens)
        elif section == "vllm":
            caching = None if args.vllm_caching is None else args.vllm_caching == "on"
            bench_vllm(args.vllm_model, args.vllm_prefixes, args.rollouts, args.max_tokens, caching)
        else:
            parser.error(f"unknown section {section!r}")
    print(f"machine after: {_machine()}")


if __name__ == "__main__":
    main()
