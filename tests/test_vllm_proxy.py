"""vLLM on a pod sits on loopback behind our bearer-token proxy, which forwards only the routes we serve.

vLLM cannot run here (no CUDA): ``tests/fixtures/fake_vllm.py`` stands in for ``vllm serve``, a real
HTTP server with vLLM's routes and its key rules (``/v1/*`` guarded, ``/invocations``, ``/tokenize``,
``/metrics``, … open). :class:`VllmServer` launches it exactly as it would launch vLLM (same argv
builder, token in the environment) and publishes it through the proxy, as on a pod (``0.0.0.0``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from compute.serving.vllm_server import VllmServer
from jobs.serve import ServeConfig
from tests.fixtures.fake_vllm import OPEN_ROUTES

FAKE_VLLM = (sys.executable, "-m", "tests.fixtures.fake_vllm")
MODEL = "org/model"
REPO = Path(__file__).resolve().parents[1]


class FakeVllm:
    def __init__(self, log_path: Path):
        self.log_path = log_path

    def entries(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def paths_reached(self) -> list[str]:
        return [entry["path"] for entry in self.entries() if "path" in entry]


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def pod_server(tmp_path_factory, token):
    """``VllmServer`` as the serve stage makes it on a pod (all interfaces), over the fake vLLM."""
    root = tmp_path_factory.mktemp("vllm")
    log = root / "fake-vllm.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAKE_VLLM_LOG", str(log))
        server = VllmServer(
            ServeConfig(model=MODEL),
            model_path=root,
            adapter_paths={},
            api_key=token,
            host="0.0.0.0",
            port=0,  # the pod publishes 8000; any free port here
            log_path=root / "vllm.log",
            executable=FAKE_VLLM,
        )
    server.start(timeout=60)
    yield server, FakeVllm(log)
    server.stop()


def raw_status(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> int:
    """The status of one request sent as written (no client-side path normalisation)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: pod", "Content-Length: 2", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n{}").encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split()[1])


def test_vllm_listens_on_loopback_on_a_port_of_its_own_and_the_proxy_on_the_published_one(pod_server, token):
    server, fake = pod_server
    (started,) = [entry for entry in fake.entries() if "argv" in entry]
    argv = started["argv"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert int(argv[argv.index("--port") + 1]) == server.upstream_port != server.port
    assert started["api_key_in_env"] and token not in " ".join(argv)
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


def test_the_stand_in_is_as_open_as_vllm_which_is_why_vllm_stays_on_loopback(pod_server):
    server, _ = pod_server
    # What anyone reaching vLLM's own port gets: completions and more, no key asked.
    assert httpx.post(f"{server.upstream_url}/invocations", json={"prompt": "hi"}).status_code == 200
    assert httpx.get(f"{server.upstream_url}/metrics").status_code == 200
    assert httpx.get(f"{server.upstream_url}/v1/models").status_code == 401


@pytest.mark.parametrize("path", [*OPEN_ROUTES, "/metrics", "/docs", "/openapi.json", "/v1/embeddings"])
def test_vllms_unguarded_routes_are_refused_without_the_token_and_never_reach_vllm(pod_server, token, path):
    server, fake = pod_server
    before = len(fake.paths_reached())
    without = httpx.post(f"{server.url}{path}", json={"prompt": "hi", "model": MODEL})
    assert without.status_code == 401 and without.json()["error"]["code"] == "invalid_api_key"
    with_token = httpx.post(f"{server.url}{path}", json={}, headers={"Authorization": f"Bearer {token}"})
    assert with_token.status_code == 404  # not a route we serve, token or not
    assert httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert len(fake.paths_reached()) == before


def test_unauthenticated_invocations_against_the_proxy_is_refused(pod_server):
    server, fake = pod_server
    before = len(fake.paths_reached())
    body = {"model": MODEL, "prompt": "completions without a key, the open vLLM issue"}
    assert httpx.post(f"{server.url}/invocations", json=body).status_code == 401
    assert len(fake.paths_reached()) == before


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../invocations",
        "/v1/completions/../../invocations",
        "/v1/completions%2F..%2F..%2Finvocations",
        "//invocations",
        "/V1/models",
        "/v1/models/",
        "/v1/models/../../metrics",
        "http://127.0.0.1/invocations",
    ],
)
def test_paths_written_to_slip_past_the_route_list_do_not_reach_vllm(pod_server, token, target):
    server, fake = pod_server
    before = len(fake.paths_reached())
    assert raw_status(server.port, "POST", target) == 401
    assert raw_status(server.port, "POST", target, {"Authorization": f"Bearer {token}"}) == 404
    assert len(fake.paths_reached()) == before


def test_without_the_right_token_no_v1_route_answers_and_health_needs_none(pod_server, token):
    server, _ = pod_server
    assert httpx.get(f"{server.base_url}/models").status_code == 401
    assert (
        httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {token}x"}).status_code
        == 401
    )
    assert (
        httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Basic {token}"}).status_code == 401
    )
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_the_routes_we_serve_reach_vllm_with_the_token(pod_server, token):
    server, fake = pod_server
    headers = {"Authorization": f"Bearer {token}"}
    before = len(fake.entries())
    models = httpx.get(f"{server.base_url}/models", headers=headers)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == MODEL
    completion = httpx.post(
        f"{server.base_url}/completions", json={"model": MODEL, "prompt": "hi"}, headers=headers
    )
    assert completion.json()["choices"][0]["text"] == "hello"
    assert "x-request-id" in completion.headers
    with httpx.stream(
        "POST",
        f"{server.base_url}/chat/completions",
        json={"model": MODEL, "messages": [], "stream": True},
        headers=headers,
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and len(events) == 4
    reached = fake.entries()[before:]
    assert [entry["path"] for entry in reached] == ["/v1/models", "/v1/completions", "/v1/chat/completions"]
    assert all(entry["authorized"] for entry in reached)  # vLLM's own key check still passes


def test_a_hostile_request_is_refused_at_the_proxy(pod_server, token):
    server, fake = pod_server
    headers = {"Authorization": f"Bearer {token}"}
    before = len(fake.paths_reached())
    many = httpx.post(
        f"{server.base_url}/completions",
        json={"model": MODEL, "prompt": ["a"] * 100_000, "n": 128},
        headers=headers,
    )
    assert many.status_code == 400 and "max_sequences" in many.json()["error"]["message"]
    huge = httpx.post(
        f"{server.base_url}/completions",
        content=b'{"prompt": "' + b"x" * (50 * 1024 * 1024) + b'"}',
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"]["message"]
    assert len(fake.paths_reached()) == before


def test_a_vllm_failure_reaches_the_client_as_a_500_with_a_request_id_only(pod_server, token, caplog):
    server, _ = pod_server
    response = httpx.post(
        f"{server.base_url}/completions",
        json={"model": MODEL, "prompt": "boom"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 500
    assert response.headers["x-request-id"] in response.json()["error"]["message"]
    assert "engine-internal-secret" not in response.text and "Traceback" not in response.text
    assert any("engine-internal-secret" in record.getMessage() for record in caplog.records)


def test_a_client_that_leaves_a_stream_makes_vllm_stop_sending(pod_server, token):
    server, fake = pod_server
    body = {"model": MODEL, "prompt": "slow", "stream": True}
    with httpx.stream(
        "POST", f"{server.base_url}/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as stream:
        lines = stream.iter_lines()
        next(lines)
        next(lines)
    deadline = time.monotonic() + 10
    while not [entry for entry in fake.entries() if "aborted" in entry] and time.monotonic() < deadline:
        time.sleep(0.1)
    (aborted,) = [entry for entry in fake.entries() if "aborted" in entry]
    assert aborted["after_chunks"] < 300  # of 600: the upstream request was closed, not read to its end


def test_activity_is_read_from_vllms_metrics_on_loopback_not_through_the_proxy(pod_server):
    server, fake = pod_server
    assert server.shutdown_reason() is None
    assert "/metrics" in fake.paths_reached()


def test_the_serve_gpu_stage_declares_the_port_it_publishes():
    """RunPod routes https://<pod>-8000.proxy.runpod.net only to a declared port: prefect.yaml declares it."""
    import anyio

    from compute.serving.stage import POD_PORT
    from infra.worker.runpod_worker import RunPodJobConfiguration, RunPodWorker

    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    (serve,) = [
        d for d in deployments if d["name"] == "api" and d["entrypoint"] == "flows.gpu_stage:gpu_stage"
    ]
    template = RunPodWorker.get_default_base_job_template()
    configuration = anyio.run(
        lambda: RunPodJobConfiguration.from_template_and_values(template, serve["job_variables"])
    )
    assert f"{POD_PORT}/http" in configuration.ports


def test_stopping_closes_both_ports(tmp_path, token):
    server = VllmServer(
        ServeConfig(model=MODEL),
        model_path=tmp_path,
        adapter_paths={},
        api_key=token,
        host="127.0.0.1",
        port=0,
        log_path=tmp_path / "vllm.log",
        executable=FAKE_VLLM,
    ).start(timeout=60)
    ports = (server.port, server.upstream_port)
    assert httpx.get(f"{server.url}/health").status_code == 200
    server.stop()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not server.running and os.path.exists(tmp_path / "vllm.log")
