"""The numpy nucleus (labelers/policy/sampling.py) against llama.cpp's own top-p sampler: the
same candidates and the same draws, on peaked (language-model-like) and flat distributions."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from labelers.policy.sampling import CandidateBuffer, draw, make_chain, nucleus

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'prmforge[embedded]')")

VOCAB = 151_936  # Qwen2.5's: the size the decoder samples from


def _logits(rng: np.random.Generator, spread: float, peaks: int) -> np.ndarray:
    logits = rng.standard_normal(VOCAB).astype(np.float32) * np.float32(spread)
    logits[rng.integers(0, VOCAB, peaks)] += rng.uniform(0, 30, peaks).astype(np.float32)
    return logits


def _reference_nucleus(scaled: np.ndarray, top_p: float) -> np.ndarray:
    """The definition, in float64 with a full sort."""
    order = np.argsort(-scaled.astype(np.float64), kind="stable")
    probs = np.exp(scaled[order].astype(np.float64) - scaled.max())
    probs /= probs.sum()
    return order[: int(np.searchsorted(np.cumsum(probs), top_p)) + 1]


@pytest.mark.parametrize("spread,peaks", [(2.0, 5), (0.5, 1), (4.0, 30), (1.0, 0)])
def test_the_nucleus_is_the_shortest_most_probable_prefix_reaching_top_p(spread: float, peaks: int) -> None:
    rng = np.random.default_rng(peaks)
    scaled = _logits(rng, spread, peaks) / np.float32(0.8)
    kept = nucleus(scaled, 0.95)
    reference = _reference_nucleus(scaled, 0.95)
    # float32 rounding (llama.cpp's) may move the boundary by a token or two on a flat
    # distribution, never more; the tokens are the most probable ones, most probable first
    assert abs(kept.size - reference.size) <= 2
    common = min(kept.size, reference.size)
    assert np.array_equal(kept[:common], reference[:common])
    assert np.all(np.diff(scaled[kept]) <= 0)


def test_a_flat_distribution_needs_the_lower_thresholds() -> None:
    """No token holds 1e-4 of the mass: the first candidate set is empty, the search widens."""
    scaled = np.zeros(VOCAB, dtype=np.float32)
    scaled[:10] = 0.5
    kept = nucleus(scaled, 0.95)
    assert 0.94 * VOCAB < kept.size <= VOCAB
    assert set(range(10)) <= set(kept[:10].tolist())


def _draws(lib, logits: np.ndarray, temperature: float, top_p: float, seed: int, steps: int,
           nucleus_in_numpy: bool) -> list[int]:
    chain = make_chain(lib, temperature, top_p, seed, nucleus_in_numpy=nucleus_in_numpy)
    buffer = CandidateBuffer.allocate(lib, VOCAB)
    ids = np.arange(VOCAB, dtype=np.int32)
    tokens = []
    try:
        for _ in range(steps):
            buffer.logits[:] = logits  # draw() scales its copy in place
            tokens.append(draw(lib, chain, buffer, ids, temperature, top_p, nucleus_in_numpy=nucleus_in_numpy))
    finally:
        lib.llama_sampler_free(chain)
    return tokens


def test_the_numpy_nucleus_draws_what_llamas_top_p_draws() -> None:
    rng = np.random.default_rng(0)
    compared = differing = 0
    for _ in range(80):
        logits = _logits(rng, float(rng.uniform(0.5, 4.0)), int(rng.integers(0, 30)))
        temperature = float(rng.choice([0.1, 0.7, 0.8, 1.0, 1.3]))
        top_p = float(rng.choice([0.05, 0.9, 0.95, 1.0]))  # 0.05: a one-token nucleus
        seed = int(rng.integers(0, 2**32))
        ours = _draws(llama_cpp, logits, temperature, top_p, seed, 5, nucleus_in_numpy=True)
        llamas = _draws(llama_cpp, logits, temperature, top_p, seed, 5, nucleus_in_numpy=False)
        compared += len(ours)
        differing += sum(a != b for a, b in zip(ours, llamas))
    assert compared == 400 and differing == 0


def _llamas_nucleus_size(lib, logits: np.ndarray, temperature: float, top_p: float) -> int:
    """How many candidates llama.cpp's ``temp -> top_p`` leaves (no draw)."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
    buffer = CandidateBuffer.allocate(lib, VOCAB)
    buffer.view["id"] = np.arange(VOCAB, dtype=np.int32)
    buffer.view["logit"] = logits
    buffer.view["p"] = 0.0
    candidates = lib.llama_token_data_array(ctypes.cast(buffer.data, lib.llama_token_data_p), VOCAB, -1, False)
    lib.llama_sampler_apply(chain, ctypes.byref(candidates))
    lib.llama_sampler_free(chain)
    return candidates.size


def test_the_nucleus_has_the_size_llamas_top_p_keeps() -> None:
    """The boundary, where rounding decides: on flat distributions a nucleus of thousands of
    tokens ends where llama.cpp's float32 sums end it (a pairwise or float64 sum of the weights
    moves it by a few tokens in some of these)."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        logits = _logits(rng, float(rng.uniform(0.3, 2.0)), int(rng.integers(0, 4)))
        temperature = float(rng.choice([1.0, 1.3]))
        top_p = float(rng.choice([0.9, 0.95]))
        scaled = logits / np.float32(temperature)
        assert nucleus(scaled, top_p).size == _llamas_nucleus_size(llama_cpp, logits, temperature, top_p)


def test_greedy_ignores_the_nucleus() -> None:
    logits = _logits(np.random.default_rng(3), 2.0, 5)
    best = int(np.argmax(logits))
    assert _draws(llama_cpp, logits, 0.0, 0.95, 1, 3, nucleus_in_numpy=True) == [best] * 3


def test_a_sampled_draw_follows_the_seed() -> None:
    logits = _logits(np.random.default_rng(4), 0.2, 0)  # flat: many tokens can be drawn
    first = _draws(llama_cpp, logits, 1.0, 0.95, 11, 8, nucleus_in_numpy=True)
    assert first == _draws(llama_cpp, logits, 1.0, 0.95, 11, 8, nucleus_in_numpy=True)
    assert first != _draws(llama_cpp, logits, 1.0, 0.95, 12, 8, nucleus_in_numpy=True)
