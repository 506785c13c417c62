"""What a pod is created with: its env holds only the Prefect settings the pod needs (the worker's
others, its server's auth string, a database URL, …, never reach RunPod, which shows a pod's env in
its console), and the serve GPU stage's pod declares the port its API is published on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_DATABASE_CONNECTION_URL,
    PREFECT_API_KEY,
    PREFECT_SERVER_API_AUTH_STRING,
    temporary_settings,
)

from infra.worker.pod_spec import pod_env
from infra.worker.runpod_worker import RunPodJobConfiguration, RunPodWorker
from tests import runpod_flows
from tests.fixtures.runpod import deploy_to_pool, pods_of, submit, wait_for_flow_run

# What an operator's worker machine holds besides the API address: each would be a leak in a pod.
WORKER_ONLY_SETTINGS = {
    "PREFECT_SERVER_API_AUTH_STRING": "admin:server-side-secret",
    "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://prefect:db-password-secret@db.internal/prefect",
    "PREFECT_CLIENT_CUSTOM_HEADERS": '{"X-Internal-Token": "header-secret"}',
}


@pytest.mark.parametrize(
    ("name", "in_pod"),
    [
        ("PREFECT_API_URL", True),
        ("PREFECT_API_KEY", True),  # the engine in the pod must report to a protected API
        ("PREFECT_API_AUTH_STRING", True),
        ("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", True),
        ("PREFECT_LOGGING_LEVEL", True),
        ("PREFECT__FLOW_RUN_ID", True),
        ("PREFECT__DEPLOYMENT_NAME", True),
        ("PREFECT_SERVER_API_AUTH_STRING", False),
        ("PREFECT_API_DATABASE_CONNECTION_URL", False),
        ("PREFECT_SERVER_DATABASE_PASSWORD", False),
        ("PREFECT_REDIS_MESSAGING_URL", False),
        ("PREFECT_CLIENT_CUSTOM_HEADERS", False),
        ("PREFECT_HOME", False),
        ("PREFECT_PROFILES_PATH", False),
        ("PREFECT_WORKER_QUERY_SECONDS", False),
    ],
)
def test_of_the_workers_prefect_settings_a_pod_gets_only_those_it_needs(name, in_pod):
    env = pod_env({name: "value"}, ttl_hours=1, work_pool_name="gpu", api_base_url=None)
    assert (name in env) is in_pod


def test_a_setting_the_pool_or_deployment_env_sets_on_purpose_reaches_the_pod():
    job_env = {"PREFECT_CLIENT_CUSTOM_HEADERS": '{"X-Proxy": "1"}', "PREFECT_SERVER_API_AUTH_STRING": "a:b"}
    env = pod_env(
        job_env,
        ttl_hours=1,
        work_pool_name="gpu",
        api_base_url=None,
        set_in_job_variables={"PREFECT_CLIENT_CUSTOM_HEADERS"},
    )
    assert env["PREFECT_CLIENT_CUSTOM_HEADERS"] == '{"X-Proxy": "1"}'
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env


def test_a_configuration_prepared_by_a_worker_with_server_secrets_keeps_them_off_the_pod():
    template = RunPodWorker.get_default_base_job_template()
    configuration = anyio.run(
        lambda: RunPodJobConfiguration.from_template_and_values(
            template, {"env": {"OW_STORE_BLOCK": "team-s3"}}
        )
    )
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="attack", work_pool_name="gpu")
    updates = {
        PREFECT_SERVER_API_AUTH_STRING: "admin:server-side-secret",
        PREFECT_API_DATABASE_CONNECTION_URL: WORKER_ONLY_SETTINGS["PREFECT_API_DATABASE_CONNECTION_URL"],
        PREFECT_API_KEY: "pnu_needed_by_the_pod",
        PREFECT_API_AUTH_STRING: "admin:needed-by-the-pod",
    }
    with temporary_settings(updates=updates):
        configuration.prepare_for_flow_run(flow_run)

    env = configuration.env
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env and not [name for name in env if "DATABASE" in name]
    assert "server-side-secret" not in json.dumps(env) and "db-password-secret" not in json.dumps(env)
    assert env["PREFECT_API_KEY"] == "pnu_needed_by_the_pod"
    assert env["PREFECT_API_AUTH_STRING"] == "admin:needed-by-the-pod"
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id) and env["OW_STORE_BLOCK"] == "team-s3"


def test_a_worker_with_server_secrets_in_its_settings_launches_pods_without_them(
    runpod_pool, start_runpod_worker, prefect_server, tmp_path
):
    start_runpod_worker(**WORKER_ONLY_SETTINGS)
    deployment = deploy_to_pool(runpod_flows.record_env, runpod_pool.name)
    seen_path = tmp_path / "seen.json"
    flow_run_id = submit(deployment, {"names": sorted(WORKER_ONLY_SETTINGS), "out_path": str(seen_path)})

    flow_run = wait_for_flow_run(flow_run_id)

    assert flow_run.state.is_completed(), flow_run.state  # what the pod got is enough to run and report
    (pod,) = pods_of(runpod_pool.emulator, flow_run_id)
    sent = json.dumps(pod.create_request)
    leaked = [name for name, value in WORKER_ONLY_SETTINGS.items() if name in pod.env or value in sent]
    assert leaked == [] and not [name for name in pod.env if "DATABASE" in name]
    assert pod.env["PREFECT_API_URL"] == prefect_server
    assert json.loads(seen_path.read_text()) == dict.fromkeys(WORKER_ONLY_SETTINGS)


def test_the_serve_gpu_stages_pod_is_created_declaring_the_port_its_api_is_published_on(reset_runpod_stack):
    from compute.serving.stage import POD_PORT

    stack = reset_runpod_stack
    deployments = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())[
        "deployments"
    ]
    (serve,) = [
        d for d in deployments if d["name"] == "api" and d["entrypoint"] == "flows.gpu_stage:gpu_stage"
    ]
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name, **serve["job_variables"])
    flow_run_id = submit(deployment, {"name": "api"}, min_vram_gb=16)  # as the control tier launches it

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    (pod,) = pods_of(stack.emulator, flow_run_id)
    assert (
        f"{POD_PORT}/http" in pod.ports
    )  # RunPod routes <pod>-8000.proxy.runpod.net only to a declared port
