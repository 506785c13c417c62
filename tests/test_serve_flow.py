"""`api/serve` through the deployment: the official openai client, unmodified, against the CPU server."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import openai
import pytest
from prefect.client.schemas.objects import StateType

from client import runs
from client.api import ApiDeployment, DeploymentError


def port_is_closed(base_url: str) -> bool:
    parsed = urlparse(base_url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parsed.hostname, parsed.port)) != 0


def wait_closed(base_url: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_is_closed(base_url):
            return True
        time.sleep(0.5)
    return False


def test_openai_client_talks_to_base_and_adapters_then_cancellation_closes_the_port(
    ow_stack, tiny_model_dir, trained_sft, tiny_lora_adapters
):
    _, trained_job, _ = trained_sft
    local_adapter = str(tiny_lora_adapters["tests/tiny-lora-a"])
    deployment = ApiDeployment(str(tiny_model_dir), lora_adapters=[trained_job, local_adapter], idle_timeout_seconds=600)
    with deployment as client:
        endpoint = deployment.endpoint
        assert {model.id for model in client.models.list()} == {str(tiny_model_dir), trained_job, local_adapter}
        replies = {}
        for name in (str(tiny_model_dir), trained_job, local_adapter):
            completion = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "What is 2 plus 3?"}], max_tokens=8, temperature=0
            )
            replies[name] = completion.choices[0].message.content
            assert completion.model == name
        assert len(set(replies.values())) == 3, replies  # each adapter really changes the model
        streamed = client.chat.completions.create(
            model=trained_job, messages=[{"role": "user", "content": "What is 2 plus 3?"}], max_tokens=8, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == replies[trained_job]
        text = client.completions.create(model=str(tiny_model_dir), prompt="3 plus 4 is", max_tokens=4, temperature=0)
        assert text.choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=endpoint.base_url, api_key="wrong-token").models.list()
        stage = runs.job_runs(endpoint.job_id, gpu_stage=True)[0]
        assert stage.state.type == StateType.RUNNING
        link = [a for a in ow_stack.artifacts(stage.id) if a.key and a.key.endswith("-endpoint")]
        assert link and endpoint.base_url in link[0].data
    assert wait_closed(endpoint.base_url)
    assert runs.read(stage.id).state.type == StateType.CANCELLED
    assert runs.read(deployment.flow_run_id).state.type in (StateType.CANCELLED, StateType.FAILED)
    assert endpoint.api_key not in ow_stack.logs(stage.id) and endpoint.api_key not in ow_stack.logs(deployment.flow_run_id)
    assert ow_stack.noisy_log_lines(stage.id) == []


def test_idle_timeout_ends_the_flow_runs_and_the_server(ow_stack, tiny_model_dir):
    deployment = ApiDeployment(str(tiny_model_dir), idle_timeout_seconds=8, hard_timeout_seconds=600)
    endpoint = deployment.up()
    client = deployment.client()
    assert client.models.list().data[0].id == str(tiny_model_dir)
    control = runs.wait(deployment.flow_run_id, timeout=180)
    assert control.state.type == StateType.COMPLETED
    assert port_is_closed(endpoint.base_url)
    record = ow_stack.store.read_json(f"jobs/{endpoint.job_id}/result.json")
    assert record["details"]["shutdown_reason"] == "idle"
    from prefect.blocks.system import Secret

    with pytest.raises(ValueError):
        Secret.load(json.loads(ow_stack.store.read_bytes(f"jobs/{endpoint.job_id}/endpoint.json"))["token_secret"])


def test_adapters_of_another_base_model_are_refused_before_any_gpu_stage(ow_stack, tiny_model_dir, tmp_path):
    foreign = tmp_path / "foreign-adapter"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "someone/other-model", "r": 8}))
    before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    with pytest.raises(DeploymentError, match=r"lora_adapters\[0\].*adapter of 'someone/other-model'"):
        ApiDeployment(str(tiny_model_dir), lora_adapters=[str(foreign)]).up()
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == before


def test_a_deployment_cancelled_in_the_ui_takes_its_token_with_it(ow_stack, tiny_model_dir):
    """Cancelled the way Prefect's UI does it (its control run set to Cancelling), not through the client:
    the server stops for good, so its token's Secret is deleted and the endpoint record says cancelled."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    from compute.serving.stage import endpoint_key, token_secret_name

    deployment = ApiDeployment(str(tiny_model_dir), idle_timeout_seconds=600)
    endpoint = deployment.up()
    secret_name = token_secret_name(endpoint.job_id)
    assert Secret.load(secret_name).get() == endpoint.api_key
    [stage] = runs.job_runs(endpoint.job_id, gpu_stage=True)

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(deployment.flow_run_id, Cancelling(), force=True)

    assert ow_stack.wait(stage.id, timeout=180).state.type == StateType.CANCELLED
    assert wait_closed(endpoint.base_url)
    assert ow_stack.store.read_json(endpoint_key(endpoint.job_id))["status"] == "cancelled"
    with pytest.raises(ValueError):
        Secret.load(secret_name)
