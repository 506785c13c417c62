"""The transformers OpenAI-compatible server against hostile and unlucky clients, over real HTTP on
loopback: work bounded before any generation, bodies bounded, no exception text sent back, a client
that leaves stops its generation, and ``/health`` answers however many requests wait."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time

import httpx
import pytest

from compute.generation.transformers_backend import TransformersGenerator
from compute.serving.protocol import RequestLimits
from compute.serving.server import TransformersOpenAIServer
from jobs.serve import ServeConfig

QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]
FIFTY_MB = 50 * 1024 * 1024
# Looks like what an exception from a storage client or a library may carry: never for the client.
INTERNAL_DETAIL = "s3://team-bucket/key?X-Amz-Signature=internal-secret-0123 in /opt/ow/internal/module.py"


@pytest.fixture(scope="module")
def api_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def served(tiny_model_dir, api_key):
    """The tiny model with the default request limits."""
    config = ServeConfig(model="org/tiny", max_model_len=2048)
    with TransformersOpenAIServer(config, model_path=tiny_model_dir, api_key=api_key) as server:
        yield server


@pytest.fixture(scope="module")
def small_limits(tiny_model_dir, api_key):
    """The tiny model with limits a deployment chose for itself."""
    limits = RequestLimits(max_body_bytes=4096, max_sequences=4, max_generated_tokens=64)
    config = ServeConfig(model="org/tiny", max_model_len=2048)
    with TransformersOpenAIServer(
        config, model_path=tiny_model_dir, api_key=api_key, limits=limits
    ) as server:
        yield server


@pytest.fixture
def generations(monkeypatch):
    """Every batch generation the server starts, recorded."""
    calls: list[int] = []
    original = TransformersGenerator.generate

    def recording(self, prompts, settings, adapter=None):
        calls.append(len(prompts) * settings.n)
        return original(self, prompts, settings, adapter)

    monkeypatch.setattr(TransformersGenerator, "generate", recording)
    return calls


def post(server, path: str, body, api_key: str, **options) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=options.pop("timeout", 60),
        **options,
    )


def greedy(server, api_key: str, max_tokens: int = 4) -> httpx.Response:
    return post(
        server,
        "/chat/completions",
        {"model": "org/tiny", "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0},
        api_key,
    )


# -- work one request may ask for ---------------------------------------------------------------------


def test_100000_prompts_times_n_128_is_refused_naming_the_limit_before_anything_is_generated(
    served, api_key, generations
):
    started = time.monotonic()
    response = post(
        served,
        "/completions",
        {"model": "org/tiny", "prompt": ["a"] * 100_000, "n": 128, "max_tokens": 1},
        api_key,
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_completions" and error["param"] == "n"
    assert (
        "12800000 completions" in error["message"]
        and "at most 256 per request (max_sequences)" in error["message"]
    )
    assert generations == [] and time.monotonic() - started < 20
    assert greedy(served, api_key).status_code == 200  # and the server is fine


def test_n_10000_is_refused_naming_n(served, api_key, generations):
    response = post(
        served, "/chat/completions", {"model": "org/tiny", "messages": QUESTION, "n": 10_000}, api_key
    )
    assert response.status_code == 400 and "n:" in response.json()["error"]["message"]
    assert generations == []


def test_a_deployment_sets_its_own_limits_and_each_refusal_names_the_one_it_hit(
    small_limits, api_key, generations
):
    too_many = post(
        small_limits, "/completions", {"model": "org/tiny", "prompt": ["a", "b", "c"], "n": 2}, api_key
    )
    assert too_many.status_code == 400
    assert (
        "6 completions" in too_many.json()["error"]["message"]
        and "at most 4" in too_many.json()["error"]["message"]
    )

    too_long = post(
        small_limits,
        "/chat/completions",
        {"model": "org/tiny", "messages": QUESTION, "n": 2, "max_tokens": 40},
        api_key,
    )
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "too_many_tokens" and "80 generated tokens" in error["message"]
    assert "at most 64 per request (max_generated_tokens)" in error["message"]

    # A chat request without max_tokens may fill the context: that is what counts against the limit.
    unbounded = post(small_limits, "/chat/completions", {"model": "org/tiny", "messages": QUESTION}, api_key)
    assert unbounded.status_code == 400 and unbounded.json()["error"]["code"] == "too_many_tokens"

    big = post(small_limits, "/completions", {"model": "org/tiny", "prompt": "x" * 5000}, api_key)
    assert big.status_code == 413 and "at most 4096 bytes (max_body_bytes)" in big.json()["error"]["message"]
    assert generations == []

    within = post(
        small_limits,
        "/completions",
        {"model": "org/tiny", "prompt": ["a", "b"], "n": 2, "max_tokens": 16},
        api_key,
    )
    assert within.status_code == 200 and len(within.json()["choices"]) == 4


# -- request bodies ---------------------------------------------------------------------------------


def test_a_50_mb_body_is_refused_with_413_naming_the_limit(served, api_key, generations):
    response = httpx.post(
        f"{served.base_url}/completions",
        content=b'{"model": "org/tiny", "prompt": "' + b"x" * FIFTY_MB + b'"}',
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert f"at most {8 * 1024 * 1024} bytes (max_body_bytes)" in error["message"]
    assert generations == []


def test_a_50_mb_body_without_a_length_is_refused_too(served, api_key):
    def chunks():
        yield b'{"model": "org/tiny", "prompt": "'
        for _ in range(50):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(
        f"{served.base_url}/completions",
        content=chunks(),  # sent chunked: the server learns the size only by reading
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and "max_body_bytes" in response.json()["error"]["message"]


def test_a_body_announced_at_10_gb_is_refused_before_it_is_sent(served, api_key):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api_key}\r\nContent-Length: {10 * 1024**3}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_body_from_a_client_without_the_token_is_not_read(served):
    response = httpx.post(f"{served.base_url}/completions", content=b"x" * FIFTY_MB, timeout=60)
    assert response.status_code == 401


# -- errors -----------------------------------------------------------------------------------------


def test_an_internal_error_is_answered_500_with_a_request_id_and_no_detail(
    served, api_key, monkeypatch, caplog
):
    def broken(self, prompts, settings, adapter=None):
        raise RuntimeError(INTERNAL_DETAIL)

    monkeypatch.setattr(TransformersGenerator, "generate", broken)
    with caplog.at_level(logging.ERROR):
        response = greedy(served, api_key)

    assert response.status_code == 500
    error = response.json()["error"]
    request_id = response.headers["x-request-id"]
    assert error["type"] == "server_error" and f"request id {request_id}" in error["message"]
    for leak in ("internal-secret", "/opt/ow", "RuntimeError", "Traceback", "module.py"):
        assert leak not in response.text
    logged = [record for record in caplog.records if request_id in record.getMessage()]
    assert logged and INTERNAL_DETAIL in logged[0].exc_text  # the operator finds it under the id
    monkeypatch.undo()
    assert greedy(served, api_key).status_code == 200  # the next request is served


def test_an_error_while_streaming_sends_the_request_id_and_no_detail(served, api_key, monkeypatch):
    def broken(self, prompt, settings, adapter=None):
        raise RuntimeError(INTERNAL_DETAIL)
        yield  # a generator, as the real one

    monkeypatch.setattr(TransformersGenerator, "stream", broken)
    body = {"model": "org/tiny", "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST",
        f"{served.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
        request_id = response.headers["x-request-id"]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "server_error" and request_id in error["message"]
    assert "internal-secret" not in "".join(events) and "RuntimeError" not in "".join(events)


def test_every_path_but_health_needs_the_token(served):
    assert httpx.get(f"{served.url}/health").status_code == 200
    for path in ("/v1/models", "/metrics", "/invocations", "/tokenize", "/docs", "/nowhere"):
        assert httpx.get(f"{served.url}{path}").status_code == 401, path


# -- clients that leave, and health under load ---------------------------------------------------------


def test_a_client_that_leaves_an_unstreamed_request_stops_its_generation(served, api_key):
    # ~1900 tokens take the tiny model 1.5 s (a fast core) to tens of seconds; the client gives up after 0.3.
    body = {
        "model": "org/tiny",
        "messages": QUESTION,
        "max_tokens": 1900,
        "min_tokens": 1900,
        "temperature": 0,
    }
    with pytest.raises(httpx.ReadTimeout):
        post(served, "/chat/completions", body, api_key, timeout=0.3)
    started = time.monotonic()
    assert greedy(served, api_key).status_code == 200
    assert time.monotonic() - started < 8


def test_health_answers_while_many_requests_wait_for_a_long_generation(served, api_key):
    # A long stream holds the engine; 48 more requests wait for it (more than the shared thread pool's 40).
    body = {"model": "org/tiny", "messages": QUESTION, "max_tokens": 1900, "min_tokens": 1900, "stream": True}
    short = {"model": "org/tiny", "messages": QUESTION, "max_tokens": 1, "temperature": 0}
    headers = {"Authorization": f"Bearer {api_key}"}
    answers: list[int] = []
    with httpx.Client(
        base_url=served.base_url, headers=headers, timeout=120, limits=httpx.Limits(max_connections=64)
    ) as client:

        def wait_for_a_short_answer() -> None:
            answers.append(client.post("/chat/completions", json=short).status_code)

        waiting = [threading.Thread(target=wait_for_a_short_answer) for _ in range(48)]
        with client.stream("POST", "/chat/completions", json=body) as long_stream:
            events = long_stream.iter_lines()
            next(events)  # generating
            for thread in waiting:
                thread.start()
            time.sleep(1)  # all of them arrived and wait

            # Answered on the event loop, not after the long generation (tens of seconds) and every waiting request.
            health = httpx.get(f"{served.url}/health", timeout=10)
            models = httpx.get(f"{served.base_url}/models", headers=headers, timeout=10)
            assert health.json() == {"status": "ok"} and models.status_code == 200
            assert answers == []  # the long generation was still running meanwhile
            assert served.in_flight >= 1
        for thread in waiting:  # the stream is closed: its generation stops and the others run
            thread.join(120)
    assert answers == [200] * 48
