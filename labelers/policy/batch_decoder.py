"""Many sequences per ``llama_decode``: continuous batching over llama.cpp's low-level API.

One ``llama_decode`` of B tokens costs far less than B single-token decodes on a CPU (the weights
are read once per call, not once per token; docs/generation.md has the figures), so the k
rollouts of a prefix, and the prefixes of every problem of a batch, are decoded together:

- **Sequences.** Each completion is one llama.cpp sequence id (``0 .. max_sequences-1``) with its
  own sampler chain (``temp -> top_p -> dist(seed)``, or greedy at temperature 0), so its text
  depends on its own seed, not on its neighbours' draws. After each decode the live sequences
  are sampled on a pool of the decode's thread count (ctypes releases the GIL).
- **Shared prompts.** The KV cache is unified: one cell can belong to several sequences. A prompt
  is evaluated once, its tokens tagged with every sequence that continues it; sequence id
  ``max_sequences`` (the *prompt cache*) keeps the last evaluated prompt of the call, and the
  next prompt reuses its longest common prefix by ``llama_memory_seq_cp`` (metadata only, no copy) and
  evaluates only the rest. Prompts are admitted in lexicographic token order, so the nested
  prefixes of one problem follow each other.
- **Continuous batching.** Each step decodes one new token for every live sequence, plus (at
  most) one admitted prompt's tokens, in one call. A sequence that finishes (EOS/EOG, a stop
  string, its token limit, the context window) leaves at once, its cells are freed, and the next
  waiting completion takes its id.
- **KV budget.** A group of completions is admitted only while the cells it may need
  (prompt + completions x max_tokens) fit under ``kv_cells`` beside what live groups may need,
  so ``llama_decode`` never runs out of cells.

Determinism: scheduling depends only on the requests (their order after sorting, their lengths
and seeds), so the same requests give the same batches, the same floating point and the same
texts. Which *other* requests share a call does change the batches, and the matrix kernels may
round a row differently in a batch of another size: a request's text can then differ (rarely;
docs/generation.md gives the measured rate).
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class DecodeJob:
    """``len(seeds)`` completions of one tokenized prompt."""

    prompt: tuple[int, ...]
    seeds: tuple[int, ...]  # one sampler seed per completion (uint32)
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecodedText:
    text: str  # up to (not including) the first stop string
    finish_reason: Literal["stop", "length"]
    completion_tokens: int  # sampled tokens, the one completing a stop string included, EOG excluded


@dataclass
class JobOutcome:
    completions: list[DecodedText | None]
    error: str | None = None


@dataclass
class _Group:
    """Completions of one job admitted together: they share the prompt's last logits."""

    job_index: int
    completion_indices: list[int]
    seq_ids: list[int]
    reserved_cells: int
    prompt_done: int = 0  # prompt tokens already in the batch (reused prefix included)


@dataclass
class _Live:
    """One completion being generated."""

    job_index: int
    completion_index: int
    seq_id: int
    sampler: Any
    max_tokens: int
    stop: tuple[str, ...]
    pos: int  # position of tokens[-1], the token fed in the next decode
    group: _Group
    logits_index: int  # batch row whose logits this sequence samples from next
    tokens: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)
    finish_reason: Literal["stop", "length"] = "length"
    text: str | None = None  # set when a stop string cut the text


class BatchDecoder:
    """Continuous-batching generation over one llama.cpp model (see the module docstring).

    Owns a llama.cpp context of ``kv_cells`` cells shared by ``max_sequences`` sequences plus the
    prompt cache. Not thread-safe: the policy calls it under its model lock.
    """

    def __init__(self, llama: Any, *, max_sequences: int, kv_cells: int, n_threads: int, n_ctx_per_sequence: int, n_batch: int = 512) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.max_sequences = max_sequences
        self.kv_cells = kv_cells
        self.n_ctx_per_sequence = min(n_ctx_per_sequence, kv_cells)
        self.n_batch = max(n_batch, max_sequences + 1)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = max_sequences + 1  # + the prompt cache
        params.kv_unified = True  # shared prompt cells: one cell, several sequence ids
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if self._ctx is None:
            raise RuntimeError(f"llama.cpp could not create a context of {kv_cells} cells for {max_sequences} sequences")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, max_sequences + 1)
        self._cache_seq = max_sequences
        self._cache_tokens: list[int] = []
        # Sampling a token scans the whole vocabulary (about 1 ms per sequence and token for
        # 151,936 entries) while the decode's threads idle; ctypes releases the GIL, so the
        # live sequences are sampled on the decode's threads in parallel.
        self._samplers = ThreadPoolExecutor(max_workers=n_threads) if n_threads > 1 else None
        # Lifetime counters (benchmarks and tests read them).
        self.evaluated_prompt_tokens = 0  # prompt tokens decoded, after prefix reuse
        self.decode_calls = 0
        self.peak_sequences = 0  # most sequences decoded in one call
        self.peak_reserved_cells = 0  # most KV cells reserved at once (<= kv_cells)

    # -- public ---------------------------------------------------------------------------------

    def run(self, jobs: Sequence[DecodeJob]) -> list[JobOutcome]:
        """Generate every completion of every job; outcomes in job order.

        The KV cache starts empty: prompts share cells within a call only, so a call's texts do
        not depend on what earlier calls left behind (a resumed build repeats the rows of an
        uninterrupted one).
        """
        self._reset_memory()
        outcomes = [JobOutcome([None] * len(job.seeds)) for job in jobs]
        waiting: deque[tuple[int, list[int]]] = deque()
        for index in sorted(range(len(jobs)), key=lambda i: jobs[i].prompt):
            job = jobs[index]
            if not job.seeds:
                continue
            if len(job.prompt) >= self.n_ctx_per_sequence:
                outcomes[index].error = f"prompt has {len(job.prompt)} tokens, context window is {self.n_ctx_per_sequence}"
                continue
            waiting.append((index, list(range(len(job.seeds)))))
        free_ids = list(range(self.max_sequences - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        live: list[_Live] = []
        admitting: _Group | None = None
        try:
            while waiting or live or admitting is not None:
                if admitting is None and waiting and free_ids:
                    admitting = self._admit(jobs, waiting, free_ids, self._reserved(live), outcomes)
                    if admitting is None and not live:
                        continue  # the head job can never fit (its error is recorded): next job
                rows = self._fill_batch(live, admitting, jobs)
                self.peak_sequences = max(self.peak_sequences, len(live) + (len(admitting.seq_ids) if admitting else 0))
                reserved = self._reserved(live) + (admitting.reserved_cells if admitting else 0)
                self.peak_reserved_cells = max(self.peak_reserved_cells, reserved)
                status = self._lib.llama_decode(self._ctx, self._batch)
                self.decode_calls += 1
                if status != 0:
                    raise RuntimeError(f"llama_decode returned {status} with {rows} tokens in the batch")
                if admitting is not None and admitting.prompt_done == len(jobs[admitting.job_index].prompt):
                    live.extend(self._start_group(admitting, jobs, logits_row=rows - 1))
                    admitting = None
                still_live = []
                for sequence, token in zip(live, self._sample(live)):
                    if self._advance(sequence, token):
                        still_live.append(sequence)
                    else:
                        self._finish(sequence, outcomes, free_ids)
                live = still_live
        except Exception as exc:  # a failed decode fails the jobs it touched, not the process
            message = f"{type(exc).__name__}: {exc}"
            for sequence in live:
                self._lib.llama_sampler_free(sequence.sampler)
                outcomes[sequence.job_index].error = message
            if admitting is not None:
                outcomes[admitting.job_index].error = message
            for job_index, _ in waiting:
                outcomes[job_index].error = message
            self._reset_memory()
        for outcome in outcomes:
            if outcome.error is None and any(c is None for c in outcome.completions):
                outcome.error = "generation did not finish"
        return outcomes

    def close(self) -> None:
        if self._samplers is not None:
            self._samplers.shutdown()
            self._samplers = None
        if self._ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    # -- scheduling -----------------------------------------------------------------------------

    @staticmethod
    def _reserved(live: Sequence[_Live]) -> int:
        """Cells the groups of the live sequences may still need (each group counted once)."""
        groups = {id(s.group): s.group for s in live}
        return sum(group.reserved_cells for group in groups.values())

    def _admit(self, jobs: Sequence[DecodeJob], waiting: deque[tuple[int, list[int]]], free_ids: list[int],
               groups_reserved: int, outcomes: list[JobOutcome]) -> _Group | None:
        """Take as many waiting completions of the head job as ids and cells allow (or none)."""
        job_index, remaining = waiting[0]
        job = jobs[job_index]
        prompt = job.prompt
        max_tokens = max(1, min(job.max_tokens, self.n_ctx_per_sequence - len(prompt)))
        shared = self._common_prefix(prompt)
        # Cells: the cache keeps `shared` of its tokens plus this prompt; each completion its tokens.
        available = self.kv_cells - groups_reserved - len(prompt)
        fits = min(len(remaining), len(free_ids), max(0, available // max_tokens))
        if fits == 0:
            if groups_reserved == 0:  # nothing live to wait for: this job can never fit
                waiting.popleft()
                outcomes[job_index].error = (
                    f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceed the KV budget of {self.kv_cells} cells"
                )
            return None
        chosen, rest = remaining[:fits], remaining[fits:]
        if rest:
            waiting[0] = (job_index, rest)
        else:
            waiting.popleft()
        seq_ids = [free_ids.pop() for _ in chosen]
        # The prompt cache keeps only the common prefix; the group's sequences see it by copy.
        self._lib.llama_memory_seq_rm(self._memory, self._cache_seq, shared, -1)
        self._cache_tokens = list(prompt[:shared])
        for seq_id in seq_ids:
            self._lib.llama_memory_seq_cp(self._memory, self._cache_seq, seq_id, 0, shared)
        return _Group(job_index, chosen, seq_ids, len(prompt) + len(chosen) * max_tokens, prompt_done=shared)

    def _common_prefix(self, prompt: Sequence[int]) -> int:
        """Tokens of ``prompt`` the cache holds already; at least one token is always evaluated
        (its logits start the completions)."""
        count = 0
        for cached, new in zip(self._cache_tokens, prompt):
            if cached != new:
                break
            count += 1
        return min(count, len(prompt) - 1)

    def _fill_batch(self, live: Sequence[_Live], admitting: _Group | None, jobs: Sequence[DecodeJob]) -> int:
        """Write this step's tokens into the batch: one per live sequence, then as much of the
        admitted prompt as fits. Returns the number of rows."""
        row = 0
        for sequence in live:
            self._put(row, sequence.tokens[-1], sequence.pos, (sequence.seq_id,), True)
            sequence.logits_index = row
            row += 1
        if admitting is not None:
            prompt = jobs[admitting.job_index].prompt
            seq_ids = (self._cache_seq, *admitting.seq_ids)
            end = min(len(prompt), admitting.prompt_done + self.n_batch - row)
            for pos in range(admitting.prompt_done, end):
                self._put(row, prompt[pos], pos, seq_ids, pos == len(prompt) - 1)
                row += 1
            self.evaluated_prompt_tokens += end - admitting.prompt_done
            admitting.prompt_done = end
            self._cache_tokens = list(prompt[:end])
        self._batch.n_tokens = row
        return row

    def _put(self, row: int, token: int, pos: int, seq_ids: Sequence[int], logits: bool) -> None:
        batch = self._batch
        batch.token[row] = token
        batch.pos[row] = pos
        batch.n_seq_id[row] = len(seq_ids)
        for slot, seq_id in enumerate(seq_ids):
            batch.seq_id[row][slot] = seq_id
        batch.logits[row] = 1 if logits else 0

    def _start_group(self, group: _Group, jobs: Sequence[DecodeJob], logits_row: int) -> list[_Live]:
        """The group's prompt is decoded: each completion samples its first token."""
        job = jobs[group.job_index]
        max_tokens = max(1, min(job.max_tokens, self.n_ctx_per_sequence - len(job.prompt)))
        started = []
        for completion_index, seq_id in zip(group.completion_indices, group.seq_ids):
            sequence = _Live(
                job_index=group.job_index,
                completion_index=completion_index,
                seq_id=seq_id,
                sampler=self._make_sampler(job.temperature, job.top_p, job.seeds[completion_index]),
                max_tokens=max_tokens,
                stop=job.stop,
                pos=len(job.prompt) - 1,  # the first sampled token goes to len(prompt)
                group=group,
                logits_index=logits_row,
            )
            started.append(sequence)
        return started

    def _make_sampler(self, temperature: float, top_p: float, seed: int) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            # Temperature first, then the nucleus of the scaled distribution (as vLLM and the
            # OpenAI API define top_p), then a draw from this sequence's own generator.
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
            if top_p < 1.0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _sample(self, live: Sequence[_Live]) -> list[int]:
        """Each live sequence's next token from the last decode, drawn by its own sampler (so
        the order and the threads do not change any draw)."""
        lib, ctx = self._lib, self._ctx
        if self._samplers is None or len(live) < 2:
            return [lib.llama_sampler_sample(s.sampler, ctx, s.logits_index) for s in live]
        # The first logits read after a decode may reorder the outputs inside llama.cpp: done
        # here, once, before the threads only read them.
        lib.llama_get_logits(ctx)
        return list(self._samplers.map(lambda s: lib.llama_sampler_sample(s.sampler, ctx, s.logits_index), live))

    def _advance(self, sequence: _Live, token: int) -> bool:
        """Append the sequence's sampled ``token``; False when it is finished."""
        lib = self._lib
        if lib.llama_vocab_is_eog(self._vocab, token):
            sequence.finish_reason = "stop"
            return False
        sequence.tokens.append(token)
        sequence.text_bytes.extend(self._piece(token))
        if sequence.stop:
            text = sequence.text_bytes.decode("utf-8", errors="ignore")
            cut = min((text.find(stop) for stop in sequence.stop if stop in text), default=-1)
            if cut >= 0:
                sequence.text = text[:cut]
                sequence.finish_reason = "stop"
                return False
        if len(sequence.tokens) >= sequence.max_tokens:
            sequence.finish_reason = "length"
            return False
        sequence.pos += 1
        return True

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:  # longer than the buffer: llama.cpp says how long
            buffer = ctypes.create_string_buffer(-size)
            size = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    def _finish(self, sequence: _Live, outcomes: list[JobOutcome], free_ids: list[int]) -> None:
        text = sequence.text if sequence.text is not None else sequence.text_bytes.decode("utf-8", errors="ignore")
        outcomes[sequence.job_index].completions[sequence.completion_index] = DecodedText(
            text=text, finish_reason=sequence.finish_reason, completion_tokens=len(sequence.tokens)
        )
        self._lib.llama_sampler_free(sequence.sampler)
        self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        free_ids.append(sequence.seq_id)

    def _reset_memory(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)
        self._cache_tokens = []
