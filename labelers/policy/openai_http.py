"""A policy that calls an OpenAI-compatible server (vLLM, SGLang, prmforge's own server) over HTTP.

Prompt format: every request goes to ``/v1/chat/completions`` so the *server* renders the chat
with the model's own template. A request with an ``assistant_prefix`` adds it as a final
assistant message and sets vLLM's extras ``continue_final_message: true,
add_generation_prompt: false``: the server continues that message verbatim and returns only
the continuation. (vLLM >= 0.6.2, SGLang and ``labelers.policy.server`` support these extras;
a server that ignores them would start a new assistant turn instead of continuing.) The
alternative, ``/v1/completions`` with a prompt rendered here, would need the model's chat
template on the client; asking the server keeps one source of truth.

Concurrency: the requests of one ``generate`` call run on a thread pool of ``max_concurrency``
threads sharing one httpx connection pool. Each request has its own timeout and is retried with
exponential backoff (``backoff_s * 2**attempt``, capped at ``max_backoff_s``, or the server's
``Retry-After``) on HTTP 429, 5xx, timeouts and connection errors, at most ``max_retries`` times.

Before the first request the client checks ``GET /v1/models`` once: an unreachable server or a
model name the server does not serve is a PrmforgeError (one clear line), not a batch of failed
requests.

Token counts: ``usage`` gives prompt and total completion tokens exactly. Per completion the
client uses the choice's ``token_ids`` (vLLM with ``return_token_ids``) or ``completion_tokens``
(prmforge's server) when the server sends them; otherwise the exact total is split evenly over the
n choices (the OpenAI schema has no per-choice count).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from data_schemas.errors import PrmforgeError
from labelers.policy.base import Completion, GenerationRequest, GenerationResult, TokenUsage, cut_at_answer
from labelers.policy.usage import record_usage

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class ServerUnavailableError(PrmforgeError):
    """The OpenAI-compatible server cannot be reached or does not serve the model."""


def chat_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The JSON body of ``/v1/chat/completions`` for ``request``."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": request.n,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed % (2**63)
    if request.assistant_prefix:
        messages.append({"role": "assistant", "content": request.assistant_prefix})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def parse_chat_response(request: GenerationRequest, payload: dict[str, Any]) -> GenerationResult:
    """A GenerationResult from a chat-completions response body."""
    choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = payload.get("usage") or {}
    total = int(usage.get("completion_tokens") or 0)
    even = _split_evenly(total, len(choices)) if choices else []
    completions = []
    for choice, fallback in zip(choices, even):
        if isinstance(choice.get("token_ids"), list):
            tokens = len(choice["token_ids"])
        elif isinstance(choice.get("completion_tokens"), int):
            tokens = choice["completion_tokens"]
        else:
            tokens = fallback
        text = (choice.get("message") or {}).get("content") or ""
        completions.append(
            cut_at_answer(request, Completion(
                text=text, finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                completion_tokens=tokens))
        )
    if len(completions) != request.n:
        return GenerationResult(request, (), int(usage.get("prompt_tokens") or 0),
                                error=f"server returned {len(completions)} choices, asked for {request.n}")
    return GenerationResult(request, tuple(completions), int(usage.get("prompt_tokens") or 0))


def _server_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(payload, dict) and payload.get("message"):  # vLLM's ErrorResponse shape
        return str(payload["message"])
    return response.text[:300]


class OpenAIHttpPolicy:
    """A Policy over an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 16,
        request_timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        """``base_url`` ends with the API version, e.g. ``http://127.0.0.1:8000/v1``."""
        self.base_url = base_url.rstrip("/")
        self._model = model
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(request_timeout_s, connect=min(connect_timeout_s, request_timeout_s)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="prmforge-http")
        self._checked = False
        self._lock = threading.Lock()
        self.usage = TokenUsage()
        self.retries = 0  # requests re-sent after a retryable failure

    @property
    def model_id(self) -> str:
        return self._model

    def _backoff(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("Retry-After")
            if retry_after is not None:
                try:
                    return min(float(retry_after), self._max_backoff_s)
                except ValueError:
                    pass
        return min(self._backoff_s * 2**attempt, self._max_backoff_s)

    def served_models(self) -> list[str] | None:
        """Model ids from ``GET /models`` (None when the server has no such route).

        Raises ServerUnavailableError when the server cannot be reached after the retries.
        """
        url = f"{self.base_url}/models"
        for attempt in range(self._max_retries + 1):
            try:
                response = self._client.get(url)
            except httpx.TransportError as exc:
                if attempt < self._max_retries:
                    time.sleep(self._backoff(attempt, None))
                    continue
                raise ServerUnavailableError(
                    f"cannot reach {self.base_url} — is the server running? ({type(exc).__name__}: {exc})"
                ) from None
            if response.status_code in _RETRY_STATUS and attempt < self._max_retries:
                time.sleep(self._backoff(attempt, response))
                continue
            if response.status_code == 404:
                return None
            if response.status_code in (401, 403):
                raise ServerUnavailableError(
                    f"{self.base_url} refused the request (HTTP {response.status_code}): set policy.api_key"
                )
            if response.status_code != 200:
                raise ServerUnavailableError(
                    f"{url} answered HTTP {response.status_code}: {_server_message(response)}"
                )
            try:
                return [str(entry["id"]) for entry in response.json()["data"]]
            except (ValueError, KeyError, TypeError):
                return None
        raise AssertionError("unreachable: the loop returns or raises")

    def check_server(self) -> None:
        """Raise ServerUnavailableError unless the server is up and serves this model."""
        models = self.served_models()
        if models is not None and self._model not in models:
            raise ServerUnavailableError(
                f"model '{self._model}' is not served at {self.base_url}; it serves: {', '.join(models) or 'nothing'}"
            )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._checked:
            self.check_server()
            self._checked = True
        started = time.perf_counter()
        results = list(self._pool.map(self._run, requests))
        with self._lock:
            record_usage(self.usage, results, time.perf_counter() - started)
        return results

    def _run(self, request: GenerationRequest) -> GenerationResult:
        url = f"{self.base_url}/chat/completions"
        body = chat_body(request, self._model)
        failure = "no attempt made"
        for attempt in range(self._max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
            response: httpx.Response | None = None
            try:
                response = self._client.post(url, json=body)
            except httpx.TimeoutException as exc:
                failure = f"timed out ({type(exc).__name__}) calling {url}"
            except httpx.TransportError as exc:
                failure = f"cannot reach {self.base_url} — is the server running? ({type(exc).__name__}: {exc})"
            else:
                if response.status_code == 200:
                    try:
                        return parse_chat_response(request, response.json())
                    except (ValueError, TypeError, AttributeError) as exc:
                        return GenerationResult(request, (), 0, error=f"unreadable response from {url}: {exc}")
                failure = f"HTTP {response.status_code} from {url}: {_server_message(response)}"
                if response.status_code not in _RETRY_STATUS:
                    return GenerationResult(request, (), 0, error=failure)
            if attempt < self._max_retries:
                time.sleep(self._backoff(attempt, response))
        return GenerationResult(request, (), 0, error=f"{failure} (after {self._max_retries} retries)")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
