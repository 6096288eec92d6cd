"""One token from one row of logits: llama.cpp's ``temp -> top_p -> dist`` chain, with the nucleus
found in numpy.

llama.cpp's top-p sampler (``llama_sampler_init_top_p``) normalizes over the whole vocabulary and
then sorts it (151,936 entries for Qwen2.5): about 1.4 ms per sequence and token on the 2-core
EPYC, the largest part of the batch decoder's sampling time. The nucleus is a short prefix of
that order, so :func:`nucleus` sorts only the tokens that can belong to it and hands them to a
chain holding just ``dist(seed)``, which draws from the same candidates in the same order with
the same generator: the same token as the full chain (tests/test_sampling.py compares them on
peaked and flat distributions). About 0.6 ms, most of it one float32 sum.

With T the temperature, ``s = logits / T`` and ``w_i = exp(s_i - max s)``, ``Z = sum w_i``:
the nucleus is the shortest prefix of the tokens in descending ``s`` whose probabilities
``w_i / Z`` add up to at least ``top_p`` (all tokens when rounding keeps the sum below it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data

# How the batch decoder samples (labelers/policy/batch_decoder.py): ``nucleus`` from copied logits
# with the nucleus found here, ``buffers`` from copied logits with llama.cpp's whole chain,
# ``serial`` with ``llama_sampler_sample`` one sequence after another. All draw the same tokens.
SamplingMode = Literal["nucleus", "buffers", "serial"]


def make_chain(lib: Any, temperature: float, top_p: float, seed: int, *, nucleus_in_numpy: bool) -> Any:
    """A sampler chain for one sequence: greedy at temperature 0, else ``temp -> top_p ->
    dist(seed)`` (temperature first, then the nucleus of the scaled distribution, as vLLM and
    the OpenAI API define top_p). With ``nucleus_in_numpy`` the chain is ``dist(seed)`` alone and
    :func:`draw` applies temperature and nucleus before it."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if temperature <= 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if not nucleus_in_numpy:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        if top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def nucleus(scaled: np.ndarray, top_p: float) -> np.ndarray:
    """Token ids of the top-p nucleus of ``scaled`` (logits divided by the temperature, float32),
    most probable first (formula in the module docstring).

    Rounding as llama.cpp's top-p sampler: ``Z`` is summed in float32 in id order, the
    probabilities ``w_i / Z`` are float32 and their running sum is float32 in descending order.
    Only tokens with ``w_i >= tau * Z`` are sorted; every other token is less probable than all
    of them, so when their running sum reaches ``top_p`` the nucleus lies among them. Otherwise
    ``tau`` is lowered (1e-4, 1e-7, ... then 0: every token)."""
    weights = np.exp(scaled - scaled.max())
    total = np.cumsum(weights, dtype=np.float32)[-1]  # sequential, as llama.cpp's softmax adds
    target = np.float32(top_p)
    tau = 1e-4
    while True:
        candidates = np.flatnonzero(weights >= total * np.float32(tau)) if tau > 0 else np.arange(scaled.size)
        order = candidates[np.argsort(-scaled[candidates], kind="stable")]
        mass = np.cumsum(weights[order] / total, dtype=np.float32)
        reached = np.flatnonzero(mass >= target)
        if reached.size:
            return order[: int(reached[0]) + 1]
        if tau == 0:
            return order
        tau = tau * 1e-3 if tau > 1e-12 else 0.0


@dataclass
class CandidateBuffer:
    """One sequence's candidate array (``llama_token_data[n_vocab]``) and a copy of its logits."""

    data: Any
    view: np.ndarray  # the candidates as a numpy record array (shares memory with ``data``)
    logits: np.ndarray

    @classmethod
    def allocate(cls, lib: Any, n_vocab: int) -> "CandidateBuffer":
        data = (lib.llama_token_data * n_vocab)()
        return cls(data, np.frombuffer(data, dtype=TOKEN_DATA), np.empty(n_vocab, dtype=np.float32))


def draw(lib: Any, chain: Any, buffer: CandidateBuffer, ids: np.ndarray, temperature: float, top_p: float,
         *, nucleus_in_numpy: bool) -> int:
    """The next token from ``buffer.logits`` by ``chain`` (made by :func:`make_chain` with the same
    ``nucleus_in_numpy``), then accepted by the chain: what ``llama_sampler_sample`` does after
    it reads the logits. Touches only this buffer and chain (safe on a worker thread)."""
    view, logits = buffer.view, buffer.logits
    kept = None
    if nucleus_in_numpy and temperature > 0:
        np.divide(logits, np.float32(temperature), out=logits)  # llama.cpp's temp: logit / T
        if top_p < 1.0:
            kept = nucleus(logits, top_p)
    if kept is None:
        # Candidates {id, logit, 0} in id order, unsorted, as llama_sampler_sample builds them.
        size, is_sorted = ids.size, False
        view["id"] = ids
        view["logit"] = logits
        view["p"] = 0.0
    else:
        size, is_sorted = kept.size, True
        view["id"][:size] = kept
        view["logit"][:size] = logits[kept]
        view["p"][:size] = 0.0
    candidates = lib.llama_token_data_array(ctypes.cast(buffer.data, lib.llama_token_data_p), size, -1, is_sorted)
    lib.llama_sampler_apply(chain, ctypes.byref(candidates))
    if not 0 <= candidates.selected < candidates.size:
        raise RuntimeError(f"the sampler selected no token (index {candidates.selected})")
    token = candidates.data[candidates.selected].id
    lib.llama_sampler_accept(chain, token)
    return token
