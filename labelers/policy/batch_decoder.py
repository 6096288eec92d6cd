"""Many sequences per ``llama_decode``: continuous batching over llama.cpp's low-level API.

One ``llama_decode`` of B tokens costs far less than B single-token decodes on a CPU (the weights
are read once per call, not once per token; docs/generation.md has the figures), so the k
rollouts of a prefix, and the prefixes of every problem of a batch, are decoded together:

- **Sequences.** Each completion is one llama.cpp sequence id (``0 .. max_sequences-1``) with its
  own sampler chain (``temp -> top_p -> dist(seed)``, or greedy at temperature 0), so its text
  depends on its own seed, not on its neighbours' draws.
- **Sampling off the context.** After a decode the main thread copies each live row's logits
  out of the context into that sequence's own buffer; the samplers then run on those buffers
  (``llama_sampler_apply``, exactly what ``llama_sampler_sample`` does after reading the
  logits) on a pool of the decode's thread count. A worker touches only its sequence's buffer
  and sampler chain, never the ``llama_context``. By default (``sampling="nucleus"``) the top-p
  nucleus is found in numpy and only ``dist(seed)`` runs in llama.cpp, which draws the same
  token in less than half the time (:mod:`labelers.policy.sampling`); ``"buffers"`` runs the whole
  chain on the buffer, ``"serial"`` calls ``llama_sampler_sample`` one sequence after another
  (both for comparison).
- **Ownership.** The ``live`` map (sequence id -> :class:`_Live`) owns every sampler: a sequence
  leaves it and its sampler is freed in one place (:meth:`BatchDecoder._release`), so no path
  frees a sampler twice or leaks one.
- **Failures.** A failed step (``llama_decode`` returning an error, or an exception while
  sampling or reading a token) fails the jobs that had a sequence or a prompt in that step;
  the KV cache is cleared and the waiting jobs go on.
- **Prompt cache.** The KV cache is unified: one cell can belong to several sequences. Each
  evaluated prompt is kept under a *cache* sequence id (``max_sequences ..``); a new prompt
  starts from the cached prompt with the longest common prefix (``llama_memory_seq_cp``,
  metadata only, no copy) and evaluates only the rest. The cache holds at most
  ``prompt_cache_cells`` distinct cells (half the KV cache by default; a group that needs cells
  takes them from idle prompts) and, with ``run(keep_prompts=True)``, lives across runs: the
  prompts and prefixes of one labeling pass are evaluated once, not once per round (the policy
  decides when a pass starts). A first-error search's next probe, a prefix or an extension of
  its last one, waits in the queue behind other searches' probes, and its prompt must still be
  there when its turn comes: while groups are live, an idle prompt gives way to a new job only
  when that makes room for one of its completions, and never one a waiting job starts from;
  otherwise those that no waiting job starts from leave first, then the least recently used (in
  use until their last sequence ended).
- **Continuous batching.** Each step decodes one new token for every live sequence plus as many
  admitted prompts' tokens as fit in ``n_batch``. A sequence that finishes (EOS/EOG, a stop
  string, the stop rule, its token limit, the context window) leaves at once, its cells are
  freed, and the next waiting completions take its id. **Streaming** (``run(on_done=...)``): a job
  that finishes is reported at once and the jobs the caller asks for in answer join the same
  run, so requests that depend on earlier answers (the next probe of a first-error search) do
  not wait for the slowest sequence of a round.
- **KV budget.** A group of completions is admitted only while the cells it may need
  (prompt + completions x max_tokens) fit under ``kv_cells`` beside what the live groups may
  need and the prompt cache holds, so ``llama_decode`` never runs out of cells.

Determinism: scheduling depends only on the requests (their order after sorting, their lengths
and seeds) and on the prompt cache a run starts with, so the same runs in the same order give
the same batches, the same floating point and the same texts, with any thread count (a batch
never holds a single token for that: see ``_fill_batch``). Which *other* requests share a
call (or which prompts an earlier run of the pass cached) does change the batches, and the
matrix kernels may round a row differently in a batch of another size: a request's text can
then differ (rarely; docs/generation.md gives the measured rate).
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from labelers.policy.sampling import CandidateBuffer, SamplingMode, draw, make_chain

# A stop rule: given the text so far (called when a line has just ended), the index where the
# text is cut (the completion is finished), or None to go on.
StopRule = Callable[[str], "int | None"]


@dataclass(frozen=True)
class DecodeJob:
    """``len(seeds)`` completions of one tokenized prompt."""

    prompt: tuple[int, ...]
    seeds: tuple[int, ...]  # one sampler seed per completion (uint32)
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    stop_rule: StopRule | None = None  # e.g. labelers.answers.answer_end for rollouts


@dataclass(frozen=True)
class DecodedText:
    text: str  # up to (not including) the first stop string / the stop rule's cut
    finish_reason: Literal["stop", "length"]
    completion_tokens: int  # sampled tokens, the one completing a stop string included, EOG excluded


@dataclass
class JobOutcome:
    completions: list[DecodedText | None]
    error: str | None = None


# Streaming (BatchDecoder.run's on_done): told that job i has finished with its outcome, returns
# the jobs to add to the running batch (none: nothing more to ask).
JobsAfter = Callable[[int, JobOutcome], Sequence[DecodeJob]]


@dataclass
class DecoderCost:
    """Where a decoder's time went (lifetime counters; the policy reports differences)."""

    evaluated_prompt_tokens: int = 0  # prompt tokens decoded, after prefix reuse
    generated_tokens: int = 0  # tokens sampled (EOG included: it was computed)
    decode_calls: int = 0
    decode_seconds: float = 0.0  # inside llama_decode
    sampling_seconds: float = 0.0  # logits copies and samplers
    stop_check_seconds: float = 0.0  # token pieces, stop strings and the stop rule
    failed_steps: int = 0

    def minus(self, earlier: "DecoderCost") -> "DecoderCost":
        return DecoderCost(**{name: getattr(self, name) - getattr(earlier, name) for name in self.__dataclass_fields__})

    def copy(self) -> "DecoderCost":
        return DecoderCost(**{name: getattr(self, name) for name in self.__dataclass_fields__})


@dataclass
class _Group:
    """Completions of one job admitted together: they share the prompt's last logits."""

    job_index: int
    completion_indices: list[int]
    seq_ids: list[int]
    reserved_cells: int  # cells its completions may take (the prompt's are the cache entry's)
    cache_entry: "_CachedPrompt"  # holds the prompt (kept while the group lives: users)
    writes_entry: bool  # the prompt's new cells are tagged with the entry (False: it holds them all)
    prompt_done: int = 0  # prompt tokens already in the KV cache or the batch (reused prefix included)
    remaining: int = 0  # sequences not yet released


@dataclass
class _CachedPrompt:
    """An evaluated prompt kept in the KV cache under its own sequence id."""

    seq_id: int
    tokens: tuple[int, ...]  # its prompt (cells beyond the evaluated part exist once not pending)
    last_used: int
    pending: bool = False  # being evaluated: not a source for other prompts, not evictable
    users: int = 0  # live or admitted groups whose sequences share its cells: not evictable


@dataclass
class _Live:
    """One completion being generated."""

    job_index: int
    completion_index: int
    seq_id: int
    sampler: Any
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[bytes, ...]
    stop_rule: StopRule | None
    pos: int  # position of tokens[-1], the token fed in the next decode
    group: _Group
    logits_index: int  # batch row whose logits this sequence samples from next
    tokens: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)
    finish_reason: Literal["stop", "length"] = "length"
    text: str | None = None  # set when a stop string or the stop rule cut the text


class BatchDecoder:
    """Continuous-batching generation over one llama.cpp model (see the module docstring).

    Owns a llama.cpp context of ``kv_cells`` cells shared by ``max_sequences`` sequences plus up
    to ``cache_slots`` cached prompts. Not thread-safe: the policy calls it under its model lock.
    """

    def __init__(self, llama: Any, *, max_sequences: int, kv_cells: int, n_threads: int, n_ctx_per_sequence: int,
                 n_batch: int = 512, cache_slots: int = 32, prompt_cache_cells: int | None = None,
                 sampling: SamplingMode = "nucleus", flash_attention: bool = True) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.max_sequences = max_sequences
        self.kv_cells = kv_cells
        self.n_ctx_per_sequence = min(n_ctx_per_sequence, kv_cells)
        self.n_batch = max(n_batch, max_sequences + 1)
        # llama.cpp takes at most 256 sequence ids: the completions', the cache's and the pad's.
        self.cache_slots = max(1, min(cache_slots, 255 - max_sequences))
        self._pad_seq_id = max_sequences + self.cache_slots  # see _fill_batch
        # Up to half the cells: groups take precedence (idle prompts give way when a group needs cells,
        # those no waiting job starts from first), so the cap only bounds what idle prompts occupy.
        self.prompt_cache_cells = kv_cells // 2 if prompt_cache_cells is None else prompt_cache_cells
        self.sampling = sampling
        self._nucleus_in_numpy = sampling == "nucleus"
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_cells + 1  # + 1: the pad token's cell (_fill_batch), outside the budget
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = max_sequences + self.cache_slots + 1
        params.kv_unified = True  # shared prompt cells: one cell, several sequence ids
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # Flash attention (llama.cpp's default, AUTO: on for the CPU) costs a quarter less CPU on a
        # labeling pass than without it (docs/generation.md, "Seeds and determinism"); off is for
        # benchmarks/bench_flash_attention.py. A batch of one token would take its split-keys path,
        # whose sums depend on the thread count: _fill_batch never sends one.
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO if flash_attention
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if self._ctx is None:
            raise RuntimeError(
                f"llama.cpp could not create a context of {kv_cells} cells for {max_sequences} sequences"
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, params.n_seq_max)
        self._cache: dict[int, _CachedPrompt] = {}  # cache sequence id -> prompt
        self._clock = 0  # orders cache use (least recently used leaves first)
        self._pieces: dict[int, bytes] = {}  # token -> its text piece (the vocabulary does not change)
        # Sampling a token scans the whole vocabulary (about 1 ms per sequence and token for
        # 151,936 entries) while the decode's threads idle: the samplers run in parallel on
        # the decode's threads (ctypes releases the GIL), each on its own copy of its logits.
        self._samplers = ThreadPoolExecutor(max_workers=n_threads) if n_threads > 1 else None
        self._ids = np.arange(self._n_vocab, dtype=np.int32)
        self._buffers: dict[int, CandidateBuffer] = {}  # seq id -> its candidates and logits
        self.cost = DecoderCost()
        # Lifetime peaks (benchmarks and tests read them).
        self.peak_sequences = 0  # most sequences decoded in one call
        self.peak_reserved_cells = 0  # most KV cells reserved at once (<= kv_cells)

    @property
    def evaluated_prompt_tokens(self) -> int:
        return self.cost.evaluated_prompt_tokens

    @property
    def decode_calls(self) -> int:
        return self.cost.decode_calls

    # -- public ---------------------------------------------------------------------------------

    def run(self, jobs: Sequence[DecodeJob], *, keep_prompts: bool = False,
            on_done: JobsAfter | None = None) -> list[JobOutcome]:
        """Generate every completion of every job; outcomes in job order.

        ``keep_prompts=False``: the KV cache starts empty, so a run's texts do not depend on what
        earlier runs left behind. ``True``: prompts cached by earlier runs are reused (the
        caller guarantees those runs belong to the same labeling pass).

        ``on_done(job_index, outcome)`` (streaming): called as soon as a job's last completion
        finishes (or the job fails); the jobs it returns join this run at once, numbered after
        the jobs given so far, and wait for sequence ids beside the others. The batch then stays
        full while the caller's next requests depend on the answers to its earlier ones (the
        rounds of a first-error search). The returned outcomes cover the added jobs too.
        """
        if not keep_prompts:
            self.forget_prompts()
        jobs = list(jobs)
        outcomes: list[JobOutcome] = []
        waiting: deque[tuple[int, list[int]]] = deque()
        open_jobs: set[int] = set()  # jobs given and not yet reported to on_done
        self._enqueue(jobs, outcomes, waiting, open_jobs)
        free_ids = list(range(self.max_sequences - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        live: dict[int, _Live] = {}  # owns the samplers (see _release)
        admitting: list[_Group] = []
        try:
            while True:
                if on_done is not None:
                    self._report_done(jobs, outcomes, waiting, open_jobs, on_done)
                if not (waiting or live or admitting):
                    break
                try:
                    self._step(jobs, outcomes, waiting, free_ids, live, admitting)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # a failed step fails the jobs in it, not the run
                    self._fail_step(f"{type(exc).__name__}: {exc}", outcomes, waiting, free_ids, live, admitting)
        finally:
            for sequence in list(live.values()):
                self._release(sequence, live, free_ids)
            if admitting:  # interrupted: those prompts' cells are incomplete
                self.forget_prompts()
        for outcome in outcomes:
            if outcome.error is None and any(c is None for c in outcome.completions):
                outcome.error = "generation did not finish"
        return outcomes

    def _enqueue(self, jobs: Sequence[DecodeJob], outcomes: list[JobOutcome], waiting: deque[tuple[int, list[int]]],
                 open_jobs: set[int]) -> None:
        """Give outcomes to the jobs that have none yet and queue them, prompts that share a
        prefix side by side (a job whose prompt cannot fit fails here)."""
        first = len(outcomes)
        outcomes.extend(JobOutcome([None] * len(job.seeds)) for job in jobs[first:])
        open_jobs.update(range(first, len(jobs)))
        for index in sorted(range(first, len(jobs)), key=lambda i: jobs[i].prompt):
            job = jobs[index]
            if not job.seeds:
                continue
            if len(job.prompt) >= self.n_ctx_per_sequence:
                outcomes[index].error = (
                    f"prompt has {len(job.prompt)} tokens, context window is {self.n_ctx_per_sequence}"
                )
                continue
            waiting.append((index, list(range(len(job.seeds)))))

    def _report_done(self, jobs: list[DecodeJob], outcomes: list[JobOutcome], waiting: deque[tuple[int, list[int]]],
                     open_jobs: set[int], on_done: JobsAfter) -> None:
        """Hand every job that has finished since the last step to ``on_done``, in job order,
        and queue the jobs it returns (those may finish at once: an empty or too long prompt)."""
        while True:
            done = sorted(i for i in open_jobs
                          if outcomes[i].error is not None or all(c is not None for c in outcomes[i].completions))
            if not done:
                return
            for index in done:
                open_jobs.discard(index)
                jobs.extend(on_done(index, outcomes[index]))
            self._enqueue(jobs, outcomes, waiting, open_jobs)

    def forget_prompts(self) -> None:
        """Empty the KV cache and the prompt cache."""
        self._lib.llama_memory_clear(self._memory, True)
        self._cache.clear()

    def close(self) -> None:
        if self._samplers is not None:
            self._samplers.shutdown()
            self._samplers = None
        if self._ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None
        self._buffers.clear()

    # -- one step -------------------------------------------------------------------------------

    def _step(self, jobs: Sequence[DecodeJob], outcomes: list[JobOutcome], waiting: deque[tuple[int, list[int]]],
              free_ids: list[int], live: dict[int, _Live], admitting: list[_Group]) -> None:
        """Admit what fits, decode one batch, sample every live sequence, retire the finished."""
        rows_for_prompts = self.n_batch - len(live) - sum(1 for _ in admitting)
        while waiting and free_ids and rows_for_prompts > 0:
            group = self._admit(jobs, waiting, free_ids, live, admitting, outcomes)
            if group is None:
                break
            admitting.append(group)
            rows_for_prompts -= len(jobs[group.job_index].prompt) - group.prompt_done
        if not live and not admitting:
            return  # the head job could never fit (its error is recorded): next job
        rows, started, padded = self._fill_batch(live, admitting, jobs)
        self.peak_sequences = max(self.peak_sequences, len(live) + sum(len(g.seq_ids) for g in admitting))
        reserved = self._reserved(live, admitting) + self._cache_cells()
        self.peak_reserved_cells = max(self.peak_reserved_cells, reserved)
        clock = time.perf_counter()
        try:
            status = self._decode()
        finally:
            if padded:
                self._lib.llama_memory_seq_rm(self._memory, self._pad_seq_id, -1, -1)
        self.cost.decode_seconds += time.perf_counter() - clock
        self.cost.decode_calls += 1
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} with {rows} tokens in the batch")
        for group, logits_row in started:
            admitting.remove(group)
            if group.writes_entry:
                group.cache_entry.pending = False
            for sequence in self._start_group(group, jobs, logits_row):
                live[sequence.seq_id] = sequence
        sequences = list(live.values())
        clock = time.perf_counter()
        tokens = self._sample(sequences)
        self.cost.sampling_seconds += time.perf_counter() - clock
        self.cost.generated_tokens += len(tokens)
        clock = time.perf_counter()
        try:
            for sequence, token in zip(sequences, tokens):
                if not self._advance(sequence, token):
                    self._finish(sequence, outcomes)
                    self._release(sequence, live, free_ids)
        finally:
            self.cost.stop_check_seconds += time.perf_counter() - clock

    def _decode(self) -> int:
        return self._lib.llama_decode(self._ctx, self._batch)

    def _fail_step(self, message: str, outcomes: list[JobOutcome], waiting: deque[tuple[int, list[int]]],
                   free_ids: list[int], live: dict[int, _Live], admitting: list[_Group]) -> None:
        """Fail every job with a sequence or a prompt in the failed step; the rest wait on."""
        self.cost.failed_steps += 1
        failed = {s.job_index for s in live.values()} | {g.job_index for g in admitting}
        for sequence in list(live.values()):
            self._release(sequence, live, free_ids)
        for group in admitting:
            for seq_id in group.seq_ids:
                free_ids.append(seq_id)
        admitting.clear()
        for job_index in failed:
            outcomes[job_index].error = message
            outcomes[job_index].completions = [None] * len(outcomes[job_index].completions)
        kept = [(job_index, rest) for job_index, rest in waiting if job_index not in failed]
        waiting.clear()
        waiting.extend(kept)
        free_ids.sort(reverse=True)  # the same ids in the same order as a fresh run
        self.forget_prompts()  # what the failed decode wrote is unknown

    # -- scheduling -----------------------------------------------------------------------------

    @staticmethod
    def _reserved(live: dict[int, _Live], admitting: Sequence[_Group]) -> int:
        """Cells the live and admitted groups may still need (each group counted once)."""
        groups = {id(s.group): s.group for s in live.values()}
        groups.update({id(g): g for g in admitting})
        return sum(group.reserved_cells for group in groups.values())

    def _admit(self, jobs: Sequence[DecodeJob], waiting: deque[tuple[int, list[int]]], free_ids: list[int],
               live: dict[int, _Live], admitting: list[_Group], outcomes: list[JobOutcome]) -> _Group | None:
        """Take as many waiting completions of the head job as ids and cells allow (or none).

        Cells: every cached prompt (this one included, at full length) counts once
        (:meth:`_cache_cells`), every group its completions' worst case; a cached prompt that
        a live group shares is never evicted, so the sum bounds what the KV cache holds."""
        job_index, remaining = waiting[0]
        job = jobs[job_index]
        prompt = tuple(job.prompt)
        source, shared = self._best_source(prompt)
        if any(min(_common_prefix(jobs[g.job_index].prompt, prompt), len(prompt) - 1) > shared for g in admitting):
            return None  # a prompt being evaluated now holds more of it: admit it after that one
        max_tokens = max(1, min(job.max_tokens, self.n_ctx_per_sequence - len(prompt)))
        exact = source is not None and _common_prefix(source.tokens, prompt) == len(prompt)
        groups_reserved = self._reserved(live, admitting)
        wanted = _Wanted(self, jobs, waiting)
        busy = bool(live or admitting)
        if busy:
            # While groups are live, idle cached prompts give way to this job only where that
            # makes room for a completion, and never the ones waiting jobs start from: the next
            # probe of a first-error search waits behind other searches' probes, and it would
            # evaluate its solution's prompt again (a streamed pass evaluated 1.6x the prompt
            # tokens it needed when every attempt to admit a job that could not fit flushed them).
            room = self.kv_cells - groups_reserved - 1
            if room - self._cache_cells(extra=prompt, keep=(source,)) < max_tokens:
                return None  # the live groups' reservations hold the cells (the usual case): wait
            if room - self._cache_cells(extra=prompt, keep=(source,), spare=wanted.entries()) < max_tokens:
                return None  # only prompts that waiting jobs start from could give way: wait
        entry = source if exact else self._cache_entry_for(prompt, source, shared, wanted)
        if entry is None:
            return None  # every cache slot holds a prompt in use: next step
        while True:
            cached = self._cache_cells(exclude=entry, extra=entry.tokens if exact else prompt)
            available = self.kv_cells - groups_reserved - cached - 1  # - 1: the re-read last token
            fits = min(len(remaining), len(free_ids), max(0, available // max_tokens))
            if fits or not self._evict_one(keep=(entry, source), wanted=wanted, spare_wanted=busy):
                break  # (with nothing live, any idle prompt gives way before a job is refused)
        if fits == 0:
            self._drop_entry(entry)
            if not live and not admitting:  # nothing to wait for: this job can never fit
                waiting.popleft()
                outcomes[job_index].error = (
                    f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) "
                    f"exceed the KV budget of {self.kv_cells} cells"
                )
            return None
        chosen, rest = remaining[:fits], remaining[fits:]
        if rest:
            waiting[0] = (job_index, rest)
        else:
            waiting.popleft()
        seq_ids = [free_ids.pop() for _ in chosen]
        # The cache entry and the group's sequences see the shared prefix by copy (metadata only).
        lib = self._lib
        if not exact:
            if source is not None and entry is not source and shared:
                lib.llama_memory_seq_cp(self._memory, source.seq_id, entry.seq_id, 0, shared)
            lib.llama_memory_seq_rm(self._memory, entry.seq_id, shared, -1)
            entry.tokens = prompt
            entry.pending = True
        entry.users += 1
        entry.last_used = self._tick()
        for seq_id in seq_ids:
            lib.llama_memory_seq_cp(self._memory, entry.seq_id, seq_id, 0, shared)
        while self._cache_cells() > self.prompt_cache_cells and self._evict_one(keep=(entry,), wanted=wanted):
            pass
        return _Group(job_index, chosen, seq_ids, len(chosen) * max_tokens + 1, entry, writes_entry=not exact,
                      prompt_done=shared, remaining=len(chosen))

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _best_source(self, prompt: Sequence[int]) -> tuple[_CachedPrompt | None, int]:
        """The evaluated cached prompt sharing the longest prefix with ``prompt``, and that
        length; at least one token is always evaluated (its logits start the completions)."""
        best, shared = None, 0
        for entry in self._cache.values():
            if entry.pending:
                continue
            count = _common_prefix(entry.tokens, prompt)
            if count > shared:
                best, shared = entry, count
        return best, min(shared, len(prompt) - 1)

    def _cache_entry_for(
        self, prompt: Sequence[int], source: _CachedPrompt | None, shared: int, wanted: "_Wanted"
    ) -> _CachedPrompt | None:
        """The cache sequence that will hold ``prompt``: the source itself when ``prompt``
        extends it and no group shares it (its tokens stay a prefix: nothing is lost), else a
        free slot, else the idle one to lose first (:meth:`_eviction_order`)."""
        if source is not None and shared >= len(source.tokens) - 1 and source.users == 0:
            return source
        used = set(self._cache)
        for seq_id in range(self.max_sequences, self.max_sequences + self.cache_slots):
            if seq_id not in used:
                entry = _CachedPrompt(seq_id, (), self._tick())
                self._cache[seq_id] = entry
                return entry
        idle = [e for e in self._cache.values() if not e.pending and e.users == 0 and e is not source]
        if not idle:
            return None
        victim = self._eviction_order(idle, wanted)[0]
        self._lib.llama_memory_seq_rm(self._memory, victim.seq_id, -1, -1)
        entry = _CachedPrompt(victim.seq_id, (), self._tick())
        self._cache[victim.seq_id] = entry
        return entry

    @staticmethod
    def _eviction_order(idle: list[_CachedPrompt], wanted: "_Wanted | None") -> list[_CachedPrompt]:
        """Idle cached prompts in the order they give way: those no waiting job would start from
        before those one would (the next probe of a first-error search waits in the queue for
        minutes on a CPU while other searches' prompts are admitted), each kind least recently
        used first."""
        needed = wanted.entries() if wanted is not None else frozenset()
        return sorted(idle, key=lambda e: (e.seq_id in needed, e.last_used))

    def _drop_entry(self, entry: _CachedPrompt) -> None:
        """Undo :meth:`_cache_entry_for` for a prompt that was not admitted after all."""
        if not entry.tokens and not entry.pending and entry.users == 0:
            self._cache.pop(entry.seq_id, None)

    def _cache_cells(self, exclude: _CachedPrompt | None = None, extra: Sequence[int] = (),
                     keep: tuple[_CachedPrompt | None, ...] | None = None, spare: frozenset[int] = frozenset()) -> int:
        """Distinct cells the cached prompts hold (``exclude`` left out, ``extra`` added; with
        ``keep``, only those no eviction may take: in use, pending, in ``keep`` or with a sequence
        id in ``spare``). The prompts are copied from one another, so a common prefix is one set
        of cells (+1 per prompt: the last token of a copied prefix may be evaluated again in a
        cell of its own)."""
        entries = [e for e in self._cache.values() if e is not exclude and e.tokens]
        if keep is not None:
            entries = [e for e in entries if e.pending or e.users > 0 or e.seq_id in spare or any(e is k for k in keep)]
        prompts = [tuple(e.tokens) for e in entries]
        if extra:
            prompts.append(tuple(extra))
        prompts.sort()
        total = sum(len(p) + 1 for p in prompts)
        return total - sum(_common_prefix(a, b) for a, b in zip(prompts, prompts[1:]))

    def _evict_one(self, keep: tuple[_CachedPrompt | None, ...], wanted: "_Wanted | None" = None,
                   spare_wanted: bool = False) -> bool:
        """Drop the cached prompt to lose first (:meth:`_eviction_order`) among those no group uses
        and not in ``keep`` (nor, with ``spare_wanted``, one a waiting job starts from)."""
        spared = wanted.entries() if spare_wanted and wanted is not None else frozenset()
        idle = [e for e in self._cache.values()
                if not e.pending and e.users == 0 and e.seq_id not in spared and all(e is not k for k in keep)]
        if not idle:
            return False
        victim = self._eviction_order(idle, wanted)[0]
        self._lib.llama_memory_seq_rm(self._memory, victim.seq_id, -1, -1)
        del self._cache[victim.seq_id]
        return True

    def _fill_batch(self, live: dict[int, _Live], admitting: Sequence[_Group],
                    jobs: Sequence[DecodeJob]) -> tuple[int, list[tuple[_Group, int]], bool]:
        """Write this step's tokens into the batch: one per live sequence, then as much of the
        admitted prompts as fits. Returns the rows, the groups whose prompt ends in it (with
        their logits row) and whether a pad token was added."""
        row = 0
        for sequence in live.values():
            self._put(row, sequence.tokens[-1], sequence.pos, (sequence.seq_id,), True)
            sequence.logits_index = row
            row += 1
        started = []
        for group in admitting:
            if row >= self.n_batch:
                break
            prompt = jobs[group.job_index].prompt
            seq_ids = ((group.cache_entry.seq_id,) if group.writes_entry else ()) + tuple(group.seq_ids)
            end = min(len(prompt), group.prompt_done + self.n_batch - row)
            for pos in range(group.prompt_done, end):
                self._put(row, prompt[pos], pos, seq_ids, pos == len(prompt) - 1)
                row += 1
            self.cost.evaluated_prompt_tokens += end - group.prompt_done
            group.prompt_done = end
            if end == len(prompt):
                started.append((group, row - 1))
        padded = row == 1
        if padded:
            # llama.cpp's CPU flash attention splits the keys of a batch holding one query token
            # (from 512 cells on) among the threads and adds the parts up in an order that depends
            # on how many threads there are: the text of a sequence decoding alone (a run's tail)
            # then changed with the thread count, which the default picks by machine load. A
            # second token, in a sequence of its own that sees only itself and is removed after
            # the decode (_step), sends the batch down the path that gives each query row to one
            # thread; one token more costs about nothing where decoding is memory-bound.
            self._put(row, self._batch.token[0], 0, (self._pad_seq_id,), False)
            row += 1
        self._batch.n_tokens = row
        return row, started, padded

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
        stops = tuple(s.encode("utf-8") for s in job.stop if s)
        started = []
        for completion_index, seq_id in zip(group.completion_indices, group.seq_ids):
            sequence = _Live(
                job_index=group.job_index,
                completion_index=completion_index,
                seq_id=seq_id,
                sampler=make_chain(self._lib, job.temperature, job.top_p, job.seeds[completion_index],
                                   nucleus_in_numpy=self._nucleus_in_numpy),
                temperature=job.temperature,
                top_p=job.top_p,
                max_tokens=max_tokens,
                stop=stops,
                stop_rule=job.stop_rule,
                pos=len(job.prompt) - 1,  # the first sampled token goes to len(prompt)
                group=group,
                logits_index=logits_row,
            )
            started.append(sequence)
        return started

    # -- sampling -------------------------------------------------------------------------------

    def _sample(self, live: Sequence[_Live]) -> list[int]:
        """Each live sequence's next token from the last decode, drawn by its own sampler (so
        the order and the threads do not change any draw)."""
        lib, ctx = self._lib, self._ctx
        if self.sampling == "serial":
            return [lib.llama_sampler_sample(s.sampler, ctx, s.logits_index) for s in live]
        # The main thread alone reads the context: each row's logits into the sequence's buffer.
        size = self._n_vocab * ctypes.sizeof(ctypes.c_float)
        for sequence in live:
            logits = self._buffer(sequence.seq_id).logits
            ctypes.memmove(logits.ctypes.data, lib.llama_get_logits_ith(ctx, sequence.logits_index), size)
        if self._samplers is None or len(live) < 2:
            return [self._draw(s) for s in live]
        return list(self._samplers.map(self._draw, live))

    def _buffer(self, seq_id: int) -> CandidateBuffer:
        buffer = self._buffers.get(seq_id)
        if buffer is None:
            buffer = self._buffers[seq_id] = CandidateBuffer.allocate(self._lib, self._n_vocab)
        return buffer

    def _draw(self, sequence: _Live) -> int:
        """The sequence's next token from its own copy of the logits (labelers.policy.sampling).
        Touches only this sequence's buffer and sampler."""
        return draw(self._lib, sequence.sampler, self._buffer(sequence.seq_id), self._ids, sequence.temperature,
                    sequence.top_p, nucleus_in_numpy=self._nucleus_in_numpy)

    # -- after sampling -------------------------------------------------------------------------

    def _advance(self, sequence: _Live, token: int) -> bool:
        """Append the sequence's sampled ``token``; False when it is finished."""
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            sequence.finish_reason = "stop"
            return False
        sequence.tokens.append(token)
        piece = self._piece(token)
        before = len(sequence.text_bytes)
        sequence.text_bytes.extend(piece)
        if sequence.stop:
            # Only the tail can hold a stop string that this token completed.
            start = max(0, before - max(len(s) for s in sequence.stop) + 1)
            window = bytes(sequence.text_bytes[start:])
            found = [window.find(s) for s in sequence.stop if s in window]
            if found:
                sequence.text = sequence.text_bytes[: start + min(found)].decode("utf-8", errors="ignore")
                sequence.finish_reason = "stop"
                return False
        if sequence.stop_rule is not None and b"\n" in piece:
            text = sequence.text_bytes.decode("utf-8", errors="ignore")
            cut = sequence.stop_rule(text)
            if cut is not None:
                sequence.text = text[:cut]
                sequence.finish_reason = "stop"
                return False
        if len(sequence.tokens) >= sequence.max_tokens:
            sequence.finish_reason = "length"
            return False
        sequence.pos += 1
        return True

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            size = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            if size < 0:  # longer than the buffer: llama.cpp says how long
                buffer = ctypes.create_string_buffer(-size)
                size = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            piece = self._pieces[token] = buffer.raw[:size]
        return piece

    def _finish(self, sequence: _Live, outcomes: list[JobOutcome]) -> None:
        text = sequence.text if sequence.text is not None else sequence.text_bytes.decode("utf-8", errors="ignore")
        outcomes[sequence.job_index].completions[sequence.completion_index] = DecodedText(
            text=text, finish_reason=sequence.finish_reason, completion_tokens=len(sequence.tokens)
        )

    def _release(self, sequence: _Live, live: dict[int, _Live], free_ids: list[int]) -> None:
        """The one place a sequence ends: it leaves ``live`` first (so no later path sees it),
        then its sampler is freed, its cells dropped and its id handed back."""
        if live.pop(sequence.seq_id, None) is not sequence:
            return
        sequence.group.remaining -= 1
        if sequence.group.remaining == 0:
            sequence.group.cache_entry.users -= 1
            sequence.group.cache_entry.last_used = self._tick()  # used until now, not since admission
        self._lib.llama_sampler_free(sequence.sampler)
        sequence.sampler = None
        self._lib.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        free_ids.append(sequence.seq_id)


class _Wanted:
    """The cached prompts that waiting jobs would start from: for each waiting job, the entry
    sharing the longest prefix with its prompt when no other entry shares as much (the system
    prompt, common to all, protects nothing). Worked out once, when an eviction first asks."""

    def __init__(self, decoder: BatchDecoder, jobs: Sequence[DecodeJob], waiting: deque[tuple[int, list[int]]]):
        self._decoder, self._jobs, self._waiting = decoder, jobs, waiting
        self._entries: frozenset[int] | None = None

    def entries(self) -> frozenset[int]:
        if self._entries is None:
            cached = [e for e in self._decoder._cache.values() if e.tokens and not e.pending]
            found: set[int] = set()
            for job_index, _ in self._waiting:
                prompt = self._jobs[job_index].prompt
                shares = sorted(((_common_prefix(e.tokens, prompt), e.seq_id) for e in cached), reverse=True)
                if shares and shares[0][0] > (shares[1][0] if len(shares) > 1 else 0):
                    found.add(shares[0][1])
            self._entries = frozenset(found)
        return self._entries


def _common_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """Length of the common prefix, by binary search on slice equality (compared in C)."""
    cached, prompt = tuple(cached), tuple(prompt)
    high = min(len(cached), len(prompt))
    if cached[:high] == prompt[:high]:
        return high
    low = 0  # cached[:low] == prompt[:low] holds; cached[:high] == prompt[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        if cached[:middle] == prompt[:middle]:
            low = middle
        else:
            high = middle
    return low
