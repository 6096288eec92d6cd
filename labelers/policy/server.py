"""A minimal OpenAI-compatible HTTP server over any Policy (stdlib only).

Serves one model so several processes (or machines) can share it through the ``openai`` backend:

    python -m labelers.policy.server --model small --port 8000
    # then: policy.backend = "openai", policy.base_url = "http://127.0.0.1:8000/v1", policy.model = "small"

Endpoints: ``GET /v1/models``, ``GET /health`` and ``POST /v1/chat/completions`` with the OpenAI
fields ``model, messages, n, max_tokens, temperature, top_p, stop, seed`` and vLLM's extras
``continue_final_message`` / ``add_generation_prompt`` (continue the last assistant message
verbatim). Each choice also carries ``completion_tokens`` (not in the OpenAI schema) so clients
can count tokens per completion exactly. Streaming and ``/v1/completions`` are not served.

Requests are handled by one thread each; a single generation thread takes every request waiting
at that moment and sends them to the policy in one ``generate`` call, so concurrent clients are
batched (and the embedded policy can reuse their shared prompt prefixes).

Limits (:class:`ServerLimits`; the server binds to loopback unless told otherwise): a request body
larger than ``max_body_bytes`` gets 413 unread (no ``Content-Length``: 411); ``n``,
``max_tokens``, the number and length of ``stop`` strings and of ``messages`` are capped (400
beyond); each connection has a socket timeout (``socket_timeout_s``: a client that stops sending
or reading is dropped) and at most ``max_connections`` are open (more are closed at once);
requests wait in a queue of ``max_queue`` (429 with ``Retry-After`` when it is full) and at most
``generation_timeout_s`` for their batch (504). With ``api_key`` set, every route but
``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise); the command line reads the
key from the environment variable named by ``--api-key-env`` so it never shows in ``ps``.

Why this server rather than llama-cpp-python's ``[server]`` extra or ``llama-server``: it batches
concurrent clients into one ``generate`` call of any prmforge Policy (the embedded policy's
prefix reuse, or a scripted policy in tests), serves vLLM's ``continue_final_message`` and
per-choice ``completion_tokens`` that the ``openai`` backend relies on, and adds no dependency.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from labelers.policy.base import ChatMessage, GenerationRequest, GenerationResult, Policy

_ROLES = ("system", "user", "assistant")


class BadRequest(Exception):
    """A request body the server cannot serve (answered with HTTP 400)."""


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for, and how long and how many clients the server waits on."""

    max_body_bytes: int = 1 << 20
    max_n: int = 16
    max_tokens: int = 4096
    max_stop: int = 8  # stop strings per request (the OpenAI API allows 4; vLLM more)
    max_stop_chars: int = 128
    max_messages: int = 256
    socket_timeout_s: float = 30.0  # per blocking read/write on a connection
    max_connections: int = 64
    max_queue: int = 64  # requests waiting for the generation thread
    generation_timeout_s: float = 600.0


def request_from_chat_body(body: dict[str, Any], limits: ServerLimits | None = None) -> GenerationRequest:
    """The GenerationRequest an OpenAI chat-completions body asks for, within ``limits``."""
    limits = limits or ServerLimits()
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    if len(messages) > limits.max_messages:
        raise BadRequest(f"at most {limits.max_messages} messages per request")
    chat = []
    for position, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise BadRequest(f"messages[{position}] needs a role in {_ROLES} and a string content")
        chat.append(ChatMessage(message["role"], message["content"]))
    prefix = ""
    if body.get("continue_final_message"):
        if chat[-1].role != "assistant":
            raise BadRequest("continue_final_message needs the last message to be the assistant's")
        if body.get("add_generation_prompt", True) is not False:
            raise BadRequest("continue_final_message needs add_generation_prompt = false")
        prefix = chat.pop().content
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings")
    if len(stop) > limits.max_stop or any(len(s) > limits.max_stop_chars for s in stop):
        raise BadRequest(f"at most {limits.max_stop} stop strings of at most {limits.max_stop_chars} characters")
    try:
        n = int(body.get("n", 1))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        request = GenerationRequest(
            messages=tuple(chat),
            assistant_prefix=prefix,
            n=n,
            max_tokens=max_tokens,
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            stop=tuple(stop),
            seed=None if body.get("seed") is None else int(body["seed"]),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"bad sampling field: {exc}") from None
    if not 1 <= n <= limits.max_n:
        raise BadRequest(f"'n' must be between 1 and {limits.max_n}")
    if not 1 <= max_tokens <= limits.max_tokens:
        raise BadRequest(f"'max_tokens' must be between 1 and {limits.max_tokens}")
    return request


def chat_response_body(result: GenerationResult, model: str) -> dict[str, Any]:
    completion_tokens = sum(c.completion_tokens for c in result.completions)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
            }
            for i, c in enumerate(result.completions)
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": result.prompt_tokens + completion_tokens,
        },
    }


@dataclass
class BatchStats:
    """What the generation thread did (for tests and benchmarks)."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class QueueFull(Exception):
    """The generation queue is full (answered with HTTP 429)."""


class _Batcher:
    """One generation thread: drains every queued request into one ``policy.generate`` call."""

    def __init__(self, policy: Policy, max_batch: int, max_queue: int = 0) -> None:
        self._policy = policy
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[GenerationRequest, Future]] = queue.Queue(maxsize=max_queue)
        self._stopping = threading.Event()
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name="prmforge-generate", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Future:
        pending: Future = Future()
        try:
            self._queue.put_nowait((request, pending))
        except queue.Full:
            raise QueueFull from None
        return pending

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self.stats.lock:
                self.stats.batches += 1
                self.stats.requests += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                results = self._policy.generate([request for request, _ in batch])
            except Exception as exc:  # answer every waiting client rather than hang them
                for _, pending in batch:
                    pending.set_exception(exc)
                continue
            for (_, pending), result in zip(batch, results):
                pending.set_result(result)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A threading server that closes connections beyond ``max_connections`` at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ModelServer:
    """An OpenAI-compatible server for ``policy`` on ``host:port`` (port 0 = a free port)."""

    def __init__(
        self, policy: Policy, *, host: str = "127.0.0.1", port: int = 0, served_model_name: str | None = None,
        max_batch: int = 64, limits: ServerLimits | None = None, api_key: str | None = None,
    ) -> None:
        self.policy = policy
        self.model_name = served_model_name or policy.model_id
        self.limits = limits or ServerLimits()
        self._api_key = api_key or None
        self._batcher = _Batcher(policy, max_batch, self.limits.max_queue)
        self._httpd = _BoundedHTTPServer((host, port), _make_handler(self), self.limits.max_connections)
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ModelServer":
        """Serve on a background thread."""
        self._serving = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="prmforge-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._serving:  # shutdown() waits for serve_forever, which must have started
            self._httpd.shutdown()
            self._serving = False
        self._httpd.server_close()
        self._batcher.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the key (always, when there is none)."""
        if self._api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._api_key.encode())

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for a chat-completions request."""
        if body.get("model") != self.model_name:
            return 404, _error(f"The model `{str(body.get('model'))[:100]}` does not exist.", "NotFoundError", 404)
        try:
            request = request_from_chat_body(body, self.limits)
        except BadRequest as exc:
            return 400, _error(str(exc), "BadRequestError", 400)
        try:
            pending = self._batcher.submit(request)
        except QueueFull:
            return 429, _error(f"server busy: {self.limits.max_queue} requests already wait; retry later",
                               "RateLimitError", 429)
        try:
            result = pending.result(timeout=self.limits.generation_timeout_s)
        except TimeoutError:
            return 504, _error("generation did not finish in time", "TimeoutError", 504)
        except Exception as exc:
            return 500, _error(f"generation failed: {type(exc).__name__}: {exc}", "InternalServerError", 500)
        if not result.ok:
            return 400, _error(result.error or "generation failed", "BadRequestError", 400)
        return 200, chat_response_body(result, self.model_name)


def _error(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


def _make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections
        timeout = server.limits.socket_timeout_s  # StreamRequestHandler sets it on the socket

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
            return

        def _send(self, status: int, payload: dict[str, Any], close: bool = False,
                  headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(data)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                # The client gave up (its timeout) before the batch finished; nothing to answer.
                self.close_connection = True

        def _authorized(self, close: bool = False) -> bool:
            if server.authorized(self.headers.get("Authorization")):
                return True
            self._send(401, _error("missing or wrong bearer token", "AuthenticationError", 401), close=close,
                       headers={"WWW-Authenticate": "Bearer"})
            return False

        def do_GET(self) -> None:
            if self.path != "/health" and not self._authorized():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": server.model_name, "object": "model", "owned_by": "prmforge"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, _error(f"no route {self.path}", "NotFoundError", 404))

        def do_POST(self) -> None:
            if self.headers.get("Transfer-Encoding"):
                self._send(411, _error("send a Content-Length (chunked bodies are not read)", "BadRequestError", 411),
                           close=True)
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._send(411, _error("a POST needs a Content-Length", "BadRequestError", 411), close=True)
                return
            if length < 0 or length > server.limits.max_body_bytes:
                # The body is not read: the connection closes after this answer.
                self._send(413, _error(f"request body over {server.limits.max_body_bytes} bytes", "BadRequestError",
                                       413), close=True)
                return
            if not self._authorized(close=True):  # before reading: an unknown client's body is not read
                return
            try:
                raw = self.rfile.read(length)
            except (TimeoutError, ConnectionError):
                self.close_connection = True
                return
            if len(raw) < length:
                self.close_connection = True  # the client closed before sending the whole body
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(
                    404, _error(f"no route {self.path} (this server serves /v1/chat/completions)", "NotFoundError", 404)
                )
                return
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("body is not a JSON object")
            except ValueError as exc:
                self._send(400, _error(f"invalid JSON: {exc}", "BadRequestError", 400))
                return
            status, payload = server.chat(body)
            self._send(status, payload, headers={"Retry-After": "1"} if status == 429 else None)

    return Handler


def main(argv: list[str] | None = None) -> int:
    from data_schemas.errors import PrmforgeError
    from labelers.policy.embedded import EmbeddedPolicy

    parser = argparse.ArgumentParser(description="Serve an embedded GGUF model over an OpenAI-compatible API.")
    parser.add_argument("--model", default="better", help="preset (small, better) or a .gguf path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port")
    parser.add_argument("--served-model-name", default=None, help="name clients use (default: --model)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--api-key-env", default=None, metavar="VAR",
                        help="require 'Authorization: Bearer <key>', the key read from environment variable VAR")
    parser.add_argument("--max-queue", type=int, default=ServerLimits.max_queue,
                        help="requests that may wait for generation (more get HTTP 429)")
    # Which requests share a batch depends on when they arrive; batched decoding can round a
    # row differently in another batch (docs/generation.md, "Seeds and determinism"), so the
    # server decodes one sequence at a time unless asked: then a seeded request gives the same
    # text however the requests were timed.
    parser.add_argument("--decode", choices=("sequential", "batched"), default="sequential",
                        help="sequential (default: texts independent of request timing) or batched (faster)")
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: --api-key-env {args.api_key_env}: that environment variable is unset or empty",
                  file=sys.stderr)
            return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {args.host} without a bearer token (--api-key-env); anyone who can reach "
              "the port can use the model", file=sys.stderr)
    try:
        policy = EmbeddedPolicy(args.model, n_ctx=args.n_ctx, n_threads=args.threads, decode=args.decode)
    except PrmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limits = ServerLimits(max_queue=max(1, args.max_queue))
    server = ModelServer(policy, host=args.host, port=args.port, served_model_name=args.served_model_name or args.model,
                         limits=limits, api_key=api_key)
    # The first stdout line tells a parent process (tests, scripts) where to connect.
    print(f"serving {server.model_name} at {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        policy.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
