"""The ``runpod`` work pool's contract: its registered type and template, configurations built from
them, ``kill_infrastructure``, and the orphan sweep against real Prefect and the emulator."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import uuid

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import InfrastructureNotFound
from prefect.states import Completed, Running
from pydantic import ValidationError

from blocks.runpod import RunPodCredentials
from infra import bounds
from infra.runpod.api import RunPodClient
from infra.runpod.models import PodSpec
from infra.worker.pod_spec import WORK_POOL_ENV, pod_name_for
from infra.worker.pod_sweep import sweep_orphaned_pods
from infra.worker.runpod_worker import (
    SWEEP_INTERVAL_ENV,
    RunPodJobConfiguration,
    RunPodWorker,
    _sweep_interval_seconds,
)
from tests.fixtures.runpod import runpod_base_job_template


def test_prefect_finds_the_runpod_worker_type_and_its_default_template(prefect_server):
    pool = f"cli-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "runpod"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        created = client.read_work_pool(pool)
        client.delete_work_pool(pool)
    assert created.type == "runpod"
    assert created.base_job_template == RunPodWorker.get_default_base_job_template()


def test_every_pool_variable_has_a_default_or_is_optional_and_a_description():
    properties = RunPodWorker.get_default_base_job_template()["variables"]["properties"]
    assert {
        "image",
        "gpu_types",
        "gpu_count",
        "cloud_type",
        "container_disk_gb",
        "volume_gb",
        "network_volume_id",
        "data_center_id",
        "ports",
        "env",
        "ttl_hours",
        "max_run_hours",
        "allowed_cuda_versions",
        "allowed_hardware",
        "capacity_wait_minutes",
        "capacity_retry_seconds",
        "final_state_grace_seconds",
        "min_vram_gb",
        "runpod_credentials",
        "poll_interval_seconds",
    } <= set(properties)
    assert not [name for name, schema in properties.items() if not schema.get("description")]
    assert properties["ttl_hours"]["default"] == 24 and properties["min_vram_gb"]["default"] == 0


def test_configuration_from_the_real_template_resolves_credentials_and_overrides(prefect_server):
    block_id = RunPodCredentials(api_key="rpa_template_test", api_base_url="http://127.0.0.1:9/").save(
        f"template-{uuid.uuid4().hex[:8]}"
    )
    template = runpod_base_job_template(block_id)
    values = {"min_vram_gb": 40, "gpu_count": 2, "env": {"OW_STORE_BLOCK": "team-s3"}, "ports": ["8000/http"]}

    configuration = anyio.run(lambda: RunPodJobConfiguration.from_template_and_values(template, values))

    assert configuration.min_vram_gb == 40 and configuration.gpu_count == 2
    assert configuration.env == {"OW_STORE_BLOCK": "team-s3"}
    assert configuration.ports == ["8000/http"] and configuration.ttl_hours == 24
    assert configuration.runpod_credentials.api_key.get_secret_value() == "rpa_template_test"
    assert configuration.runpod_credentials.api_base_url == "http://127.0.0.1:9"
    assert "rpa_template_test" not in repr(configuration)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"ports": ["22"]}, "ports"),
        ({"gpu_types": []}, "gpu_types"),
        ({"gpu_types": [" "]}, "gpu_types"),
        ({"cloud_type": "PRIVATE"}, "cloud_type"),
        ({"ttl_hours": 0}, "ttl_hours"),
        ({"min_vram_gb": -1}, "min_vram_gb"),
        ({"gpu_prices": {"NVIDIA A40": -0.1}}, "gpu_prices"),
    ],
)
def test_impossible_job_variables_are_refused_naming_the_variable(values, field):
    with pytest.raises(ValidationError, match=field):
        RunPodJobConfiguration(**values)


# -- time settings: finite and within sane bounds (infra.bounds) ------------------------------------

TIME_SETTING_MAXIMA = {
    "ttl_hours": bounds.TTL_HOURS_MAX,
    "max_run_hours": bounds.MAX_RUN_HOURS_MAX,
    "pod_start_timeout_seconds": bounds.POD_START_TIMEOUT_SECONDS_MAX,
    "poll_interval_seconds": bounds.POLL_INTERVAL_SECONDS_MAX,
}


def configuration_from_default_template(values: dict) -> RunPodJobConfiguration:
    template = RunPodWorker.get_default_base_job_template()
    return anyio.run(lambda: RunPodJobConfiguration.from_template_and_values(template, values))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e8, 0, -1])
@pytest.mark.parametrize("field", sorted(TIME_SETTING_MAXIMA))
def test_time_settings_that_are_not_finite_or_out_of_bounds_are_refused_naming_the_variable(field, value):
    with pytest.raises(ValidationError) as refused:
        configuration_from_default_template({field: value})
    assert [error["loc"][0] for error in refused.value.errors()] == [field] * len(refused.value.errors())
    assert field in str(refused.value)


def test_time_settings_at_their_maxima_are_accepted():
    configuration = configuration_from_default_template(dict(TIME_SETTING_MAXIMA))
    assert {field: getattr(configuration, field) for field in TIME_SETTING_MAXIMA} == TIME_SETTING_MAXIMA


def test_the_default_ttl_is_the_one_default_ttl():
    assert configuration_from_default_template({}).ttl_hours == bounds.DEFAULT_TTL_HOURS


@pytest.mark.parametrize(("field", "maximum"), sorted(TIME_SETTING_MAXIMA.items()))
def test_the_pool_form_states_the_bounds_of_each_time_setting(field, maximum):
    schema = RunPodWorker.get_default_base_job_template()["variables"]["properties"][field]
    (number,) = [option for option in schema.get("anyOf", [schema]) if option.get("type") == "number"]
    assert number["exclusiveMinimum"] == 0 and number["maximum"] == maximum
    assert f"at most {maximum:g}" in schema["description"]


@pytest.mark.parametrize("value", ["inf", "nan", "1e8", "3601", "0", "-1", "abc"])
def test_a_bad_sweep_interval_stops_the_worker_at_setup_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(SWEEP_INTERVAL_ENV, value)
    worker = RunPodWorker(work_pool_name="sweep-interval-test")
    with pytest.raises(ValueError, match=f"{SWEEP_INTERVAL_ENV} must be .* at most 3600, got {value!r}"):
        anyio.run(worker.setup)


@pytest.mark.parametrize(("value", "expected"), [(None, 60.0), ("", 60.0), ("2", 2.0), ("3600", 3600.0)])
def test_the_sweep_interval_is_taken_from_the_environment_or_is_60_seconds(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(SWEEP_INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(SWEEP_INTERVAL_ENV, value)
    assert _sweep_interval_seconds() == expected


def configuration_for(emulator) -> RunPodJobConfiguration:
    return RunPodJobConfiguration(
        runpod_credentials=RunPodCredentials(api_key=emulator.api_key, api_base_url=emulator.url)
    )


def test_kill_infrastructure_terminates_the_pod_and_a_missing_pod_is_not_found(runpod_emulator):
    pod_id = RunPodClient(runpod_emulator.api_key, runpod_emulator.url).create_pod(
        PodSpec(
            name=pod_name_for("kill-test", uuid.uuid4()),
            image="img",
            gpu_type_id="NVIDIA A40",
            args="sleep 60",
            env={WORK_POOL_ENV: "kill-test"},
        )
    ).id
    worker = RunPodWorker(work_pool_name="kill-test")
    configuration = configuration_for(runpod_emulator)

    anyio.run(lambda: worker.kill_infrastructure(pod_id, configuration))
    assert runpod_emulator.all_pods[pod_id].status == "TERMINATED"
    with pytest.raises(InfrastructureNotFound, match=pod_id):
        anyio.run(lambda: worker.kill_infrastructure(pod_id, configuration))


def test_the_sweep_ends_the_pools_pods_no_flow_run_needs_and_leaves_the_rest(prefect_server, runpod_emulator):
    pool = f"sweep-{uuid.uuid4().hex[:6]}"
    client = RunPodClient(runpod_emulator.api_key, runpod_emulator.url)

    async def scenario():
        async with get_client() as prefect:
            from prefect import flow

            @flow(name="sweep-subject")
            def subject() -> None: ...

            async def run_in(state):
                return (await prefect.create_flow_run(subject, state=state)).id

            finished, running, stopped_running = (
                await run_in(Completed()),
                await run_in(Running()),
                await run_in(Running()),
            )
            missing = uuid.uuid4()

            def pod_for(flow_run_id, *, pool_name=pool, name=None):
                env = {"OW_RUNPOD_WORK_POOL": pool_name, "PREFECT__FLOW_RUN_ID": str(flow_run_id)}
                spec = PodSpec(
                    name=name or pod_name_for(pool_name, flow_run_id),
                    image="img",
                    gpu_type_id="NVIDIA A40",
                    args="sleep 60",
                    env=env,
                )
                return client.create_pod(spec).id

            pods = {
                "finished": pod_for(finished),
                "running": pod_for(running),
                "missing": pod_for(missing),
                "stopped": pod_for(stopped_running),
                "other pool": pod_for(uuid.uuid4(), pool_name="someone-else"),
                "watched": pod_for(uuid.uuid4()),
                "dev": client.create_pod(
                    PodSpec(name="ow-dev-me-abc123", image="img", gpu_type_id="NVIDIA A40")
                ).id,
            }
            client.stop_pod(pods["stopped"])
            swept = await sweep_orphaned_pods(
                runpod_client=client,
                prefect_client=prefect,
                work_pool_name=pool,
                watched_pod_ids={pods["watched"]},
                logger=logging.getLogger("test"),
            )
            crashed = await prefect.read_flow_run(stopped_running)
            return pods, swept, crashed

    pods, swept, crashed = anyio.run(scenario)

    terminated = {
        label
        for label, pod_id in pods.items()
        if runpod_emulator.all_pods[pod_id].status == "TERMINATED"
    }
    # The finished run's pod still runs and its run ended a moment ago: the worker that launched it may
    # be giving it its final-state grace, so the sweep leaves it (until FINISHED_RUN_GRACE_S has passed;
    # see test_pod_rules for that rule).
    assert terminated == {"missing", "stopped"}
    assert {pod.id for pod, _ in swept} == {pods["missing"], pods["stopped"]}
    assert crashed.state.is_crashed() and pods["stopped"] in crashed.state.message
