"""The embedded OpenAI-compatible server's limits (issue 24): body size, n / max_tokens / stop
caps, socket timeouts, a bounded connection count, a bounded queue (429) and the bearer token.

The server runs for real on a free loopback port; the policy behind it is a scripted one (the
true boundary: these tests are about HTTP, not about a model)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from labelers.policy.base import Completion, GenerationResult, TokenUsage
from labelers.policy.openai_http import OpenAIHttpPolicy
from labelers.policy.server import BadRequest, ModelServer, ServerLimits, request_from_chat_body


class _Policy:
    """Echoes; the first generate call waits until ``release`` is set (when ``gate`` is on)."""

    model_id = "m"

    def __init__(self, gate: bool = False) -> None:
        self.usage = TokenUsage()
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not gate:
            self.release.set()

    def generate(self, requests):  # type: ignore[no-untyped-def]
        self.calls.append(len(requests))
        self.entered.set()
        self.release.wait(10)
        return [GenerationResult(r, tuple(Completion("ok", "stop", 1) for _ in range(r.n)), 3) for r in requests]

    def close(self) -> None:
        return


def _body(**fields) -> dict:  # type: ignore[no-untyped-def]
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def _raw(port: int, data: bytes, wait_s: float = 2.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes (or ``wait_s``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as conn:
        conn.sendall(data)
        chunks = []
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def _port(server: ModelServer) -> int:
    return int(server.base_url.split(":")[2].split("/")[0])


def test_body_over_the_cap_is_refused_unread() -> None:
    policy = _Policy()
    limits = ServerLimits(max_body_bytes=2_000)
    with ModelServer(policy, limits=limits) as server:
        big = _body(messages=[{"role": "user", "content": "x" * 5_000}])
        refused = httpx.post(f"{server.base_url}/chat/completions", json=big)
        fits = httpx.post(f"{server.base_url}/chat/completions", json=_body())
        # a declared length far over the cap is answered before any body byte is sent
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000000\r\n\r\n")
        raw = _raw(_port(server), head)
        no_length = _raw(_port(server), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.status_code == 413 and "over 2000 bytes" in refused.json()["error"]["message"]
    assert fits.status_code == 200
    assert raw.startswith(b"HTTP/1.1 413")
    assert no_length.startswith(b"HTTP/1.1 411")
    assert policy.calls == [1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 17}, "'n' must be between 1 and 16"),
        ({"n": 0}, "'n' must be between 1 and 16"),
        ({"max_tokens": 4097}, "'max_tokens' must be between 1 and 4096"),
        ({"max_tokens": 10**30}, "'max_tokens' must be between"),
        ({"stop": [str(i) for i in range(9)]}, "at most 8 stop strings"),
        ({"stop": "x" * 129}, "of at most 128 characters"),
        ({"stop": [1, 2]}, "'stop' must be a string or a list of strings"),
        ({"messages": [{"role": "user", "content": "a"}] * 257}, "at most 256 messages"),
    ],
)
def test_request_caps(fields: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        request_from_chat_body(_body(**fields))


def test_caps_at_the_edge_are_served() -> None:
    request = request_from_chat_body(_body(n=16, max_tokens=4096, stop=["a" * 128] * 8))
    assert request.n == 16 and request.max_tokens == 4096 and len(request.stop) == 8
    policy = _Policy()
    with ModelServer(policy) as server:
        over = httpx.post(f"{server.base_url}/chat/completions", json=_body(n=100))
    assert over.status_code == 400 and "'n' must be between" in over.json()["error"]["message"]
    assert policy.calls == []


def test_a_silent_client_is_dropped_after_the_socket_timeout() -> None:
    with ModelServer(_Policy(), limits=ServerLimits(socket_timeout_s=0.5)) as server:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=5) as conn:
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            assert conn.recv(1024) == b""  # the server closed the connection
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 4.0


def test_connections_beyond_the_bound_are_closed() -> None:
    with ModelServer(_Policy(), limits=ServerLimits(max_connections=2, socket_timeout_s=5)) as server:
        port = _port(server)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        time.sleep(0.2)  # both are being handled (each holds a slot while it waits for a request)
        try:
            third = _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=2.0)
        finally:
            for conn in idle:
                conn.close()
        time.sleep(0.2)
        after = httpx.get(f"{server.base_url.removesuffix('/v1')}/health")
    assert third == b""
    assert after.status_code == 200


def test_full_queue_answers_429() -> None:
    policy = _Policy(gate=True)
    with ModelServer(policy, limits=ServerLimits(max_queue=1)) as server:
        url = f"{server.base_url}/chat/completions"
        answers: list[httpx.Response] = []
        first = threading.Thread(target=lambda: answers.append(httpx.post(url, json=_body(), timeout=20)))
        first.start()
        assert policy.entered.wait(5)  # the first request is generating
        second = threading.Thread(target=lambda: answers.append(httpx.post(url, json=_body(), timeout=20)))
        second.start()
        while server._batcher._queue.qsize() < 1:  # the second waits in the queue
            time.sleep(0.01)
        busy = httpx.post(url, json=_body(), timeout=20)
        policy.release.set()
        first.join(10)
        second.join(10)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert "server busy" in busy.json()["error"]["message"]
    assert sorted(a.status_code for a in answers) == [200, 200]


def test_bearer_token() -> None:
    policy = _Policy()
    with ModelServer(policy, api_key="s3cret") as server:
        url = f"{server.base_url}/chat/completions"
        missing = httpx.post(url, json=_body())
        wrong = httpx.post(url, json=_body(), headers={"Authorization": "Bearer nope"})
        models = httpx.get(f"{server.base_url}/models")
        health = httpx.get(f"{server.base_url.removesuffix('/v1')}/health")
        right = httpx.post(url, json=_body(), headers={"Authorization": "Bearer s3cret"})
        client = OpenAIHttpPolicy(server.base_url, "m", api_key="s3cret", max_retries=0)
        from labelers.policy.base import ChatMessage, GenerationRequest

        result = client.generate([GenerationRequest(messages=(ChatMessage("user", "hi"),), max_tokens=4)])[0]
        client.close()
    assert missing.status_code == 401 and wrong.status_code == 401 and models.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert health.status_code == 200
    assert right.status_code == 200 and json.loads(right.text)["choices"][0]["message"]["content"] == "ok"
    assert result.ok and result.completions[0].text == "ok"
    assert policy.calls == [1, 1]
