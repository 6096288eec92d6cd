"""The vLLM policy: an in-process ``vllm.LLM`` on a GPU (extra ``prmforge[vllm]``).

All requests of a round go to vLLM in ONE ``LLM.generate`` call, each as token ids (the chat
rendered with the tokenizer's ``apply_chat_template(..., add_generation_prompt=True)`` plus the
assistant prefix) with its own ``SamplingParams(n=k, seed=...)``. vLLM's automatic prefix caching
(``enable_prefix_caching=True``) then shares the KV blocks of common prompt prefixes: the k
rollouts of a prefix, and nested prefixes of one tree, compute each shared block once.

vllm is imported only when a VllmPolicy is created (it imports torch, which the rest of prmforge
never does).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from data_schemas.errors import PrmforgeError
from labelers.diagnostics import DoctorCheck, DoctorItem
from labelers.policy.base import Completion, GenerationRequest, GenerationResult, TokenUsage, cut_at_answer
from labelers.policy.usage import record_usage


def gpu_visible() -> tuple[bool, str]:
    """(a CUDA GPU is visible, what was found), asked from ``nvidia-smi`` so torch is not imported."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "nvidia-smi not found (no NVIDIA driver)"
    try:
        listing = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nvidia-smi failed: {exc}"
    gpus = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    if listing.returncode != 0 or not gpus:
        return False, f"nvidia-smi lists no GPU ({listing.stderr.strip() or 'exit ' + str(listing.returncode)})"
    return True, "; ".join(gpus)


def _completion_seed(request: GenerationRequest) -> int | None:
    # vLLM draws the n samples of one request from one generator seeded with this value.
    return request.seed % (2**63) if request.seed is not None else None


class VllmPolicy:
    """A Policy over ``vllm.LLM`` (GPU)."""

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float = 0.85,
        enable_prefix_caching: bool = True,
        max_model_len: int | None = None,
        seed: int = 0,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise PrmforgeError(
                f"the vllm backend needs vllm ({exc}); install it on a CUDA machine with: pip install 'prmforge[vllm]'"
            ) from None
        visible, found = gpu_visible()
        if not visible:
            raise PrmforgeError(f"the vllm backend needs a CUDA GPU: {found}; use policy.backend = 'embedded' on CPU")
        self._vllm = vllm
        self._model_id = model
        self._llm = vllm.LLM(
            model=model,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            **(llm_kwargs or {}),
        )
        self._tokenizer = self._llm.get_tokenizer()
        self.usage = TokenUsage()

    @property
    def model_id(self) -> str:
        return self._model_id

    def render(self, request: GenerationRequest) -> str:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + request.assistant_prefix

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        # The rendered template already holds any BOS token: add no special tokens again.
        return list(self._tokenizer.encode(self.render(request), add_special_tokens=False))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        results: list[GenerationResult | None] = [None] * len(requests)
        prompts: list[dict[str, list[int]]] = []
        params = []
        positions: list[int] = []
        for index, request in enumerate(requests):
            try:
                tokens = self._prompt_tokens(request)
                sampling = self._vllm.SamplingParams(
                    n=request.n,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    max_tokens=request.max_tokens,
                    stop=list(request.stop) or None,
                    seed=_completion_seed(request),
                )
            except Exception as exc:  # a bad request fails alone
                results[index] = GenerationResult(request, (), 0, error=f"{type(exc).__name__}: {exc}")
                continue
            prompts.append({"prompt_token_ids": tokens})  # a vllm.inputs.TokensPrompt
            params.append(sampling)
            positions.append(index)
        if prompts:
            outputs = self._generate_all(prompts, params)
            for prompt, index, output in zip(prompts, positions, outputs):
                request = requests[index]
                if isinstance(output, str):  # the error of a request vLLM refused
                    results[index] = GenerationResult(request, (), len(prompt["prompt_token_ids"]), error=output)
                    continue
                completions = tuple(
                    cut_at_answer(request, Completion(
                        text=choice.text,
                        finish_reason="length" if choice.finish_reason == "length" else "stop",
                        completion_tokens=len(choice.token_ids),
                    ))
                    for choice in output.outputs
                )
                results[index] = GenerationResult(request, completions, len(output.prompt_token_ids))
        finished = [r for r in results if r is not None]
        record_usage(self.usage, finished, time.perf_counter() - started)
        return finished

    def _generate_all(self, prompts: list[dict[str, list[int]]], params: list[Any]) -> list[Any]:
        """One ``LLM.generate`` call for the whole round; if vLLM rejects the batch (e.g. one prompt
        longer than max_model_len), each request is retried alone so only the bad one fails."""
        try:
            return list(self._llm.generate(prompts, params, use_tqdm=False))
        except (ValueError, TypeError):
            outputs: list[Any] = []
            for prompt, sampling in zip(prompts, params):
                try:
                    outputs.append(self._llm.generate([prompt], [sampling], use_tqdm=False)[0])
                except (ValueError, TypeError) as exc:
                    outputs.append(f"{type(exc).__name__}: {exc}")
            return outputs

    def close(self) -> None:
        # vLLM frees GPU memory when the engine is garbage-collected.
        self._llm = None


def doctor_check() -> DoctorItem:
    """Is vllm installed and a CUDA GPU visible (nothing is imported or loaded)."""
    installed = importlib.util.find_spec("vllm") is not None
    visible, found = gpu_visible()
    version = importlib.metadata.version("vllm") if installed else None
    detail = f"vllm {version}" if installed else "vllm not installed"
    detail += f"; GPU: {found}"
    hint = None
    if not installed:
        hint = "on a CUDA machine: pip install 'prmforge[vllm]'"
    elif not visible:
        hint = "vllm needs an NVIDIA GPU with a working driver (nvidia-smi)"
    return DoctorItem(name="vLLM / GPU", ok=installed and visible, detail=detail, hint=hint)


# What ``prmforge doctor`` checks for this backend (registered in labelers/doctor.py).
DOCTOR_CHECK = DoctorCheck(
    "vLLM / GPU", doctor_check, requires=("vllm",), install_hint="on a CUDA machine: pip install 'prmforge[vllm]'"
)
