"""The policy interface every sampling stage uses.

A labeler collects all pending requests of a round (expansions and rollouts of every tree in
the batch) and sends them in ONE ``generate`` call; the backend returns one result per request,
in order. A request that fails carries its error in the result, so one bad request never loses
the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """Sample ``n`` completions of one prompt.

    ``messages`` is the chat; ``assistant_prefix`` is text the assistant has already written
    (a step prefix) and the completion continues it verbatim. Backends render the chat with the
    model's template and append the prefix, so nested prefixes share their prompt tokens
    (prefix caching).
    """

    messages: tuple[ChatMessage, ...]
    assistant_prefix: str = ""
    n: int = 1
    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # A rollout to the final answer: stop once the answer is complete (labelers.answers.answer_end:
    # the line holding a closed \\boxed{} or opening with "The answer is"), text cut there.
    stop_at_answer: bool = False
    # The labeling pass the request belongs to (Ledger sets it): consecutive calls of one pass may
    # reuse the prompts an earlier call evaluated (embedded prompt cache); "" = no pass.
    cache_scope: str = ""
    # Free-form tag so the caller can route the result back (e.g. "p3/expand/0.2").
    tag: str = ""


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: Literal["stop", "length", "error"]
    completion_tokens: int


def cut_at_answer(request: GenerationRequest, completion: Completion) -> Completion:
    """``completion`` cut where its answer is complete when ``request.stop_at_answer`` (the
    backends that cannot stop there while decoding, vllm/openai/sequential, cut afterwards: the
    same text the embedded batched decoder stops at; the tokens generated are still counted)."""
    if not request.stop_at_answer:
        return completion
    from labelers.answers import answer_end  # the answer rule lives with the extractor

    cut = answer_end(completion.text)
    if cut is None:
        return completion
    return Completion(completion.text[:cut], "stop", completion.completion_tokens)


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    completions: tuple[Completion, ...]
    prompt_tokens: int
    error: str | None = None  # set when the request failed; completions is then empty

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TokenUsage:
    """Token accounting of a policy over its lifetime (or a build)."""

    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_seconds: float = 0.0
    failed_requests: int = 0
    # Where the time went (embedded batched backend; 0 elsewhere): prompt tokens the model
    # actually evaluated (after prefix/prompt-cache reuse), seconds inside llama_decode, in the
    # samplers, and in stop strings / the answer stop rule.
    evaluated_prompt_tokens: int = 0
    decode_seconds: float = 0.0
    sampling_seconds: float = 0.0
    stop_check_seconds: float = 0.0
    # llama_decode calls and the tokens sampled after them (end-of-generation tokens included):
    # sampled_tokens / decode_steps is the mean number of sequences decoded per step, i.e. how
    # full the batches were (a CPU's batched speed-up needs full batches).
    decode_steps: int = 0
    sampled_tokens: int = 0
    # Seconds spent deciding whether rollouts reach the gold answer (set by the labeling pass).
    answer_check_seconds: float = 0.0
    # The llama.cpp thread counts the embedded backend decoded with (sorted, distinct; empty for
    # remote backends). Not a sum: CPU seconds per token depend on it, and the default follows the
    # machine's load when the model loads (labelers/policy/threads.py), so a cost figure names it.
    decode_threads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.decode_threads = tuple(sorted(set(self.decode_threads)))  # a JSON list read back (journal)

    def add(self, other: "TokenUsage") -> None:
        for name in self.__dataclass_fields__:
            if name == "decode_threads":
                self.decode_threads = tuple(sorted(set(self.decode_threads) | set(other.decode_threads)))
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))


@runtime_checkable
class Policy(Protocol):
    """A batched text generator."""

    @property
    def model_id(self) -> str: ...

    usage: TokenUsage

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in request order."""
        ...

    def close(self) -> None: ...


# Streaming generation: ``on_result(index, result)`` is told the result of request ``index`` as
# soon as it is ready and returns the requests to add (numbered after all requests so far).
ResultHandler = Callable[[int, GenerationResult], Sequence[GenerationRequest]]


@runtime_checkable
class StreamingPolicy(Policy, Protocol):
    """A policy that can take new requests while it generates (the embedded batched decoder):
    requests that depend on earlier answers join the running batch instead of waiting for the
    slowest completion of a call. Any policy can be driven the same way in rounds
    (:func:`generate_in_rounds`)."""

    def generate_streaming(self, requests: Sequence[GenerationRequest], on_result: ResultHandler) -> None:
        """Answer every request, those ``on_result`` adds included, each through ``on_result``."""
        ...


def generate_in_rounds(
    generate: Callable[[Sequence[GenerationRequest]], list[GenerationResult]],
    requests: Sequence[GenerationRequest],
    on_result: ResultHandler,
) -> None:
    """:meth:`StreamingPolicy.generate_streaming` over a plain ``generate``: one call for the
    requests known now, then one for those their answers asked for, and so on."""
    pending = list(requests)
    asked = 0
    while pending:
        results = generate(pending)
        if len(results) != len(pending):
            raise RuntimeError(f"policy returned {len(results)} results for {len(pending)} requests")
        first, asked = asked, asked + len(pending)
        added: list[GenerationRequest] = []
        for offset, result in enumerate(results):
            added.extend(on_result(first + offset, result))
        pending = added
